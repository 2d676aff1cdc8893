"""Benchmark: the STDF writer and lake ingest.

    .venv/bin/python benchmarks/bench_ingest.py [--smoke] [--json OUT]

Writer: one synthetic wafer-sort run (8 sites, 25 wafers, parametric tests plus 2 functional
tests) written with ``write_stdf``, against two anchors measured in the same run: a naive
writer (one Python ``encode_record`` call per record, the generic field-by-field encoder) on a
slice of the parts, and the reader decoding the same bytes (``read_stdf``). Ingest: a folder of
such files ingested with 1 and 2 worker processes, then again (every file already in the lake:
the cost of hashing), against reading the same files with ``read_stdf`` one after the other.

No numba in the writer; the reader's kernels are compiled (or loaded from the cache) by a
warm-up call that is reported apart. CPU seconds of this process are given beside wall time
because the machine is shared.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl


def synthetic_run(n_parts: int, n_param: int, *, seed: int = 0, lot: str = "L1") -> dict:
    """Canonical tables of one wafer-sort run: 8 sites, 25 wafers, n_param PTR + 2 FTR tests."""
    rng = np.random.default_rng(seed)
    seq = np.arange(n_parts)
    per_wafer = max(1, -(-n_parts // 25))
    die = pl.DataFrame(
        {
            "run_id": "r",
            "part_seq": seq,
            "wafer_id": [f"W{w:02d}" for w in seq // per_wafer],
            "head": 1,
            "site": seq % 8,
            "x": (seq % 90) - 45,
            "y": (seq // 90) % 90 - 45,
            "hbin": np.where(seq % 13 == 0, 5, 1),
            "sbin": np.where(seq % 13 == 0, 50, 1),
            "passed": seq % 13 != 0,
            "part_id": (seq + 1).astype(str),
            "test_time_ms": 120.0,
        }
    )
    n_tests = n_param + 2
    kinds = np.array(["P"] * n_param + ["F", "F"])
    kind = np.tile(kinds, n_parts)
    values = rng.normal(size=n_parts * n_tests).astype(np.float32).astype(np.float64)
    results = pl.DataFrame(
        {
            "run_id": "r",
            "part_seq": np.repeat(seq, n_tests),
            "test_num": np.tile(np.arange(n_tests) + 1000, n_parts),
            "pin": -1,
            "kind": kind,
            "value": np.where(kind == "P", values, np.nan),
            "test_flags": np.where(np.abs(values) > 3, 0x80, 0),
            "parm_flags": 0,
        }
    ).with_columns(pl.col("value").fill_nan(None))
    tests = pl.DataFrame(
        {
            "run_id": "r",
            "test_num": np.arange(n_tests) + 1000,
            "kind": kinds,
            "test_name": [f"T{i}" for i in range(n_tests)],
            "lo_limit": -3.0,
            "hi_limit": 3.0,
            "units": "V",
        }
    )
    runs = pl.DataFrame(
        {"run_id": ["r"], "product": ["PRODA"], "lot_id": [lot], "insertion": ["WS1"]}
    )
    return {"runs": runs, "die": die, "results": results, "tests": tests}


def _timed(fn, repeat: int):
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def _naive_records(run: dict, parts: int) -> list:
    """The same records a tester writes, built as dicts for the generic encoder."""
    die = run["die"].head(parts)
    res = run["results"].filter(pl.col("part_seq") < parts)
    tests = {r["test_num"]: r for r in run["tests"].iter_rows(named=True)}
    by_part: dict[int, list] = {}
    for r in res.iter_rows(named=True):
        by_part.setdefault(r["part_seq"], []).append(r)
    seen: set = set()
    recs = []
    for d in die.iter_rows(named=True):
        recs.append(("PIR", {"HEAD_NUM": d["head"], "SITE_NUM": d["site"]}))
        for r in by_part.get(d["part_seq"], []):
            key = (r["test_num"], d["site"])
            base = {"TEST_NUM": r["test_num"], "HEAD_NUM": d["head"], "SITE_NUM": d["site"],
                    "TEST_FLG": r["test_flags"]}  # fmt: skip
            if r["kind"] == "F":
                recs.append(("FTR", base))
                continue
            fields = {**base, "PARM_FLG": 0, "RESULT": r["value"] or 0.0, "TEST_TXT": "", "ALARM_ID": "",
                      "OPT_FLAG": 0x33}  # fmt: skip
            if key not in seen:
                seen.add(key)
                t = tests[r["test_num"]]
                fields.update(TEST_TXT=t["test_name"], OPT_FLAG=0x0E, RES_SCAL=0, LLM_SCAL=0, HLM_SCAL=0,
                              LO_LIMIT=t["lo_limit"], HI_LIMIT=t["hi_limit"], UNITS=t["units"])  # fmt: skip
            recs.append(("PTR", fields))
        recs.append(("PRR", {"HEAD_NUM": d["head"], "SITE_NUM": d["site"], "PART_FLG": 0,
                             "NUM_TEST": len(by_part.get(d["part_seq"], [])), "HARD_BIN": d["hbin"],
                             "SOFT_BIN": d["sbin"], "X_COORD": d["x"], "Y_COORD": d["y"], "TEST_T": 120,
                             "PART_ID": d["part_id"], "PART_TXT": ""}))  # fmt: skip
    return recs


def bench_writer(n_parts: int, n_param: int, repeat: int) -> dict:
    from backend_fab.io.stdf import read_stdf
    from backend_fab.io.stdf_write import encode_record, write_stdf

    run = synthetic_run(n_parts, n_param)
    n_results = run["results"].height
    t0, c0 = time.perf_counter(), time.process_time()
    first = io.BytesIO()
    n_bytes = write_stdf(run, first)
    first_wall, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    wall, cpu, _ = _timed(lambda: write_stdf(run, io.BytesIO()), repeat)
    data = first.getvalue()
    # naive anchor: the generic encoder, one call per record, on a slice of the parts
    slice_parts = max(8, n_parts // 40)
    recs = _naive_records(run, slice_parts)
    _, n_cpu, _ = _timed(lambda: b"".join(encode_record(n, f, "<") for n, f in recs), 1)
    naive_per_result = n_cpu / max(
        1, run["results"].filter(pl.col("part_seq") < slice_parts).height
    )
    # reader anchor: decode the same bytes (kernels warmed up first)
    read_stdf(data)
    r_wall, r_cpu, decoded = _timed(lambda: read_stdf(data), repeat)
    assert decoded.results.height == n_results
    with tempfile.TemporaryDirectory() as tmp:
        gz_wall, gz_cpu, _ = _timed(lambda: write_stdf(run, Path(tmp) / "run.stdf.gz"), 1)
    return {
        "parts": n_parts, "results": n_results, "bytes": n_bytes,
        "first_wall_s": first_wall, "first_cpu_s": first_cpu,
        "wall_s": wall, "cpu_s": cpu,
        "results_per_s_cpu": n_results / cpu, "mb_per_s_cpu": n_bytes / cpu / 1e6,
        "naive_results_per_s_cpu": 1 / naive_per_result, "naive_slice_parts": slice_parts,
        "read_wall_s": r_wall, "read_cpu_s": r_cpu, "read_results_per_s_cpu": n_results / r_cpu,
        "gz_wall_s": gz_wall, "gz_cpu_s": gz_cpu,
    }  # fmt: skip


def bench_ingest(n_files: int, n_parts: int, n_param: int) -> dict:
    from backend_fab.ingest import ingest_paths
    from backend_fab.io.stdf import read_stdf
    from backend_fab.io.stdf_write import write_stdf

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        drop = tmp / "drop"
        drop.mkdir()
        total = 0
        for i in range(n_files):
            run = synthetic_run(n_parts, n_param, seed=i, lot=f"LOT{i:03d}")
            name = f"lot{i:03d}.stdf" + (".gz" if i % 2 else "")
            total += write_stdf(run, drop / name, "<" if i % 3 else ">")
        files = sorted(drop.iterdir())
        read_stdf(files[0])  # warm the reader's kernels
        t0, c0 = time.perf_counter(), time.process_time()
        for f in files:
            read_stdf(f)
        read_wall, read_cpu = time.perf_counter() - t0, time.process_time() - c0
        out = {
            "files": n_files,
            "expanded_bytes": total,
            "read_only_wall_s": read_wall,
            "read_only_cpu_s": read_cpu,
        }
        for workers in (1, 2):
            lake = tmp / f"lake{workers}"
            t0 = time.perf_counter()
            report = ingest_paths([drop], lake, workers=workers, progress=False)
            out[f"ingest_w{workers}_wall_s"] = time.perf_counter() - t0
            assert report.exit_code == 0 and len(report.added) == n_files, report.summary()
        t0 = time.perf_counter()
        again = ingest_paths([drop], tmp / "lake1", workers=1, progress=False)
        out["reingest_wall_s"] = time.perf_counter() - t0
        assert len(again.already) == n_files
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny inputs, one repetition")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    if args.smoke:
        w = bench_writer(400, 6, 1)
        g = bench_ingest(3, 200, 4)
    else:
        w = bench_writer(100_000, 20, 3)
        g = bench_ingest(8, 20_000, 20)
    mb = w["bytes"] / 1e6
    print(f"STDF write: {w['parts']:,} parts, {w['results']:,} results, {mb:.1f} MB")
    print(f"  first call             {w['first_wall_s']:.2f} s wall, {w['first_cpu_s']:.2f} s CPU")
    print(f"  steady (median)        {w['wall_s']:.2f} s wall, {w['cpu_s']:.2f} s CPU: "
          f"{w['results_per_s_cpu'] / 1e6:.2f} M results/s, {w['mb_per_s_cpu']:.0f} MB/s CPU")  # fmt: skip
    print(f"  naive encoder anchor   {w['naive_results_per_s_cpu'] / 1e6:.3f} M results/s CPU "
          f"-> ours {w['results_per_s_cpu'] / w['naive_results_per_s_cpu']:.1f}x")  # fmt: skip
    print(f"  read_stdf same bytes   {w['read_cpu_s']:.2f} s CPU, {w['read_results_per_s_cpu'] / 1e6:.2f} M results/s "
          f"-> write/read time {w['cpu_s'] / w['read_cpu_s']:.2f}")  # fmt: skip
    print(f"  to .gz (level 6)       {w['gz_wall_s']:.2f} s wall, {w['gz_cpu_s']:.2f} s CPU")
    print(f"ingest: {g['files']} files, {g['expanded_bytes'] / 1e6:.1f} MB expanded")
    print(
        f"  read_stdf one by one   {g['read_only_wall_s']:.2f} s wall (anchor: parse only, no lake)"
    )
    for workers in (1, 2):
        t = g[f"ingest_w{workers}_wall_s"]
        print(
            f"  ingest --workers {workers}     {t:.2f} s wall -> {t / g['read_only_wall_s']:.2f}x the parse-only time"
        )
    print(f"  re-ingest (all known)  {g['reingest_wall_s']:.2f} s wall "
          f"-> {g['reingest_wall_s'] / g['read_only_wall_s']:.2f}x the parse-only time")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"writer": w, "ingest": g}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
