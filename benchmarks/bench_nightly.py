"""Benchmark of the whole nightly job: STDF files of a production day -> ingest -> nightly -> report.

    .venv/bin/python benchmarks/bench_nightly.py            # bench-day, local engine and Dask
    .venv/bin/python benchmarks/bench_nightly.py --smoke    # a tiny fab, local engine, seconds

What is measured, per engine (``local``: in-process; ``dask``: a LocalCluster of 2 worker
processes), each on a fresh lake:

* ``ingest``: :func:`backend_fab.ingest.ingest_paths` of the day's STDF files (2 spawn workers);
* the night (:func:`backend_fab.nightly.run_nightly`) by stage: scoring wall time, and inside it
  the per-lot seconds of each analysis summed over lots (load, bins, limits, PAT, spatial,
  patterns, figures; with the Dask engine these run in parallel, so they sum to more than the
  wall time), lake writes and the HTML report;
* die per second (die tested / (ingest + night)), and the peak resident memory of this process
  plus all its child processes (pool and Dask workers), sampled every 0.2 s.

Compile time is kept apart: ``backend-fab warmup`` runs first in a fresh process and its time is
reported on its own (numba's on-disk cache then serves every later process). Anchors measured in
the same run: the 5-minute goal for a production day (ratio = end-to-end time / 300 s), and the
Dask run against the local run (speed-up). Generating the synthetic day and writing its STDF
files is not part of the job (a fab's testers write those) and is cached between runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from backend_fab.machine import describe

GOAL_SECONDS = 300.0

SMOKE_SCENARIO = {
    "name": "bench-smoke",
    "description": "Smoke run of bench_nightly: one small product, 2 lots x 2 wafers.",
    "seed": 7,
    "start": "2024-03-04T06:00:00Z",
    "lot_interval_minutes": 60,
    "products": [
        {
            "name": "SM100",
            "lot_prefix": "SM",
            "wafer_size_mm": 150.0,
            "die_width_mm": 5.0,
            "die_height_mm": 5.0,
            "n_sites": 4,
            "n_tests": 4,
            "lots": 2,
            "wafers_per_lot": 2,
            "short_lot_rate": 0.0,
            "assembly_lot_size": 100000,
        }
    ],
}


class PeakRSS:
    """Peak of (this process + every descendant) resident memory, sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def machine() -> str:
    return describe(("numpy", "polars", "numba", "deltalake", "dask"))


def write_day(scenario, folder: Path) -> tuple[list[Path], dict, float]:
    """The scenario's tester runs as STDF files in ``folder`` (cached: reused when complete)."""
    import polars as pl

    from backend_fab.io.stdf_write import write_stdf
    from backend_fab.synth import generate_fab, load_scenario

    sc = load_scenario(scenario)
    marker = folder / "complete.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        if meta.get("config_hash") == sc.config_hash:
            files = [folder / f for f in meta["files"]]
            if all(f.exists() for f in files):
                return files, meta, 0.0
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    fab = generate_fab(sc)
    layouts = fab.layouts_frame()
    layouts.write_parquet(folder / "layouts.parquet")
    files, n_die, n_results, n_bytes = [], 0, 0, 0
    for run in fab.iter_runs():
        if "die" not in run or run["die"].height == 0:
            continue  # assembly runs: not tester data
        r = run["runs"].row(0, named=True)
        path = folder / f"{r['lot_id']}_{r['insertion']}.stdf"
        data = {
            k: v
            for k, v in run.items()
            if k in ("runs", "wafers", "die", "tests", "results", "bins")
        }
        data["layouts"] = layouts.filter(pl.col("product") == r["product"])
        n_bytes += write_stdf(data, path)
        files.append(path)
        n_die += run["die"].height
        n_results += run["results"].height if "results" in run else 0
    meta = {
        "config_hash": sc.config_hash,
        "scenario": sc.name,
        "files": [f.name for f in files],
        "die": n_die,
        "results": n_results,
        "bytes": n_bytes,
        "seconds": time.perf_counter() - t0,
    }
    marker.write_text(json.dumps(meta, indent=2))
    return files, meta, meta["seconds"]


def warmup_seconds() -> float:
    """``backend-fab warmup`` in a fresh process (numba compiles what its cache lacks)."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "backend_fab.cli", "warmup", "--quiet"], check=False, timeout=1800
    )
    return time.perf_counter() - t0


def ingest_day(files: list[Path], folder: Path, work: Path, workers: int) -> tuple[Path, dict]:
    """Ingest the day's files into a fresh lake (timed, with peak memory)."""
    import polars as pl

    from backend_fab.ingest import ingest_paths
    from backend_fab.lake import Lake

    lake_path = work / "lake-ingested"
    shutil.rmtree(lake_path, ignore_errors=True)
    lake = Lake(lake_path)
    lake.merge("layouts", pl.read_parquet(folder / "layouts.parquet"))
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        ing = ingest_paths(files, lake, workers=workers, progress=False)
        seconds = time.perf_counter() - t0
    if ing.failed:
        raise SystemExit(f"ingest failed: {[(f.path, f.reason) for f in ing.failed][:3]}")
    n_die = lake.scan("die").select(pl.len()).collect().item()
    return lake_path, {"ingest_s": seconds, "die": n_die, "peak_rss_gb": rss.peak / 2**30}


def bench_engine(engine: str, ingested: Path, work: Path, workers: int) -> dict:
    """The night on a copy of the ingested lake (the copy is not timed)."""
    import io

    from backend_fab.lake import Lake
    from backend_fab.nightly import run_nightly
    from backend_fab.nightly.log import EventLog

    lake_path = work / f"lake-{engine}"
    report = work / f"report-{engine}"
    shutil.rmtree(lake_path, ignore_errors=True)
    shutil.rmtree(report, ignore_errors=True)
    shutil.copytree(ingested, lake_path)
    lake = Lake(lake_path, create=False)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        res = run_nightly(
            lake,
            report_dir=report,
            engine=engine,
            workers=workers,
            log=EventLog(stream=io.StringIO(), tty=False),
        )
        t_night = time.perf_counter() - t0
    if res.failed:
        raise SystemExit(f"nightly failed lots: {res.failed}")
    summary = json.loads(res.report_json.read_text())
    return {
        "engine": engine,
        "night_s": t_night,
        "lots": len(res.scored),
        "wafers": summary["totals"]["wafers"],
        "alarms": res.alarms,
        "timings": {k: round(v, 2) for k, v in res.timings.items()},
        "report_mb": res.report_html.stat().st_size / 2**20,
        "peak_rss_gb": rss.peak / 2**30,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny fab, local engine only")
    ap.add_argument("--scenario", default="bench-day")
    ap.add_argument("--engines", default="local,dask", help="comma-separated: local, process, dask")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "backend-fab-bench-nightly",
        help="STDF files (cached between runs), lakes and reports",
    )
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument(
        "--reuse-lake",
        action="store_true",
        help="skip ingest when an earlier run left its ingested lake (its timing is reported)",
    )
    args = ap.parse_args(argv)
    scenario = SMOKE_SCENARIO if args.smoke else args.scenario
    engines = ["local"] if args.smoke else [e.strip() for e in args.engines.split(",") if e.strip()]
    name = "bench-smoke" if args.smoke else args.scenario
    work = args.workdir / name
    work.mkdir(parents=True, exist_ok=True)

    print(f"machine: {machine()}")
    if args.smoke:
        t_warm = None
        print("compile: not measured in a smoke run")
    else:
        t_warm = warmup_seconds()
        print(f"compile (backend-fab warmup, fresh process): {t_warm:.1f} s")
    files, meta, t_gen = write_day(scenario, work / "stdf")
    mb = meta["bytes"] / 2**20
    print(
        f"day {meta['scenario']}: {len(files)} STDF files, {mb:.0f} MB, {meta['die']:,} die, "
        f"{meta['results']:,} results"
        + (f" (generated in {t_gen:.0f} s)" if t_gen else " (cached)")
    )
    cached = work / "ingest.json"
    if args.reuse_lake and cached.exists() and (work / "lake-ingested" / "lake.json").exists():
        lake_path, ing = work / "lake-ingested", json.loads(cached.read_text())
        print("ingest: re-using the lake ingested by an earlier run, and its timing")
    else:
        lake_path, ing = ingest_day(files, work / "stdf", work, args.workers)
        cached.write_text(json.dumps(ing))
    print(
        f"\ningest ({args.workers} workers): {ing['ingest_s']:.1f} s, {mb / ing['ingest_s']:.1f} MB/s, "
        f"{ing['die'] / ing['ingest_s']:,.0f} die/s; peak RSS {ing['peak_rss_gb']:.2f} GB"
    )
    rows = []
    for engine in engines:
        r = bench_engine(engine, lake_path, work, args.workers)
        r["total_s"] = ing["ingest_s"] + r["night_s"]
        r["die_per_s"] = ing["die"] / r["total_s"]
        rows.append(r)
        t = r["timings"]
        lots = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("lots.")}
        print(
            f"\n[{engine}] night {r['night_s']:.1f} s (discover {t.get('discover', 0):.1f}, limits "
            f"{t.get('limits', 0):.1f}, score {t.get('score', 0):.1f}, write {t.get('write', 0):.1f}, "
            f"report {t.get('report', 0):.1f}): {ing['die'] / r['night_s']:,.0f} die/s | with ingest "
            f"{r['total_s']:.1f} s = {r['total_s'] / GOAL_SECONDS:.2f} x the 5-minute goal, "
            f"{r['die_per_s']:,.0f} die/s end to end"
        )
        print(
            f"[{engine}] {r['lots']} lots, {r['wafers']} wafers, {ing['die']:,} die; peak RSS "
            f"{r['peak_rss_gb']:.2f} GB; report {r['report_mb']:.1f} MB; {r['alarms']} alarms"
        )
        print(
            f"[{engine}] per-lot analysis seconds (summed over lots): "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(lots.items(), key=lambda kv: -kv[1]))
        )
    by = {r["engine"]: r for r in rows}
    if "local" in by and "dask" in by:
        print(
            f"\ndask / local: night {by['local']['night_s'] / by['dask']['night_s']:.2f}x faster, "
            f"end to end {by['local']['total_s'] / by['dask']['total_s']:.2f}x"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "compile_s": t_warm,
                    "day": meta,
                    "ingest": ing,
                    "runs": rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
