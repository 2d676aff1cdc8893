"""``backend-fab demo`` / ``make demo``: the main job end to end on a synthetic fab.

1. Generate the scenario's fab (:func:`backend_fab.synth.generate_fab`, deterministic).
2. Write what the testers would write: one STDF V4 file per wafer-sort and final-test run
   (:func:`backend_fab.io.stdf_write.write_stdf`) into the lake's landing folder
   ``<lake>/_landing/<scenario>/``, and the products' wafer layouts into the lake (plant master
   data, not tester output).
3. Ingest the files (:func:`backend_fab.ingest.ingest_paths`): content-hashed, idempotent.
4. Run the night (:func:`backend_fab.nightly.run_nightly`): score every new lot, write scores,
   dispositions and alarms, and the HTML report.

Running it again re-uses the lake: the files are already ingested and the lots already scored, so
the second night has nothing new and says so. Exit code: 0, or 1 when a file or a lot failed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

STDF_TABLES = ("runs", "wafers", "die", "tests", "results", "bins")


def write_tester_files(fab, folder: Path, *, quiet: bool = True) -> list[Path]:
    """One STDF file per tester run of ``fab`` (runs holding die) in ``folder``; returns them.

    A file that already exists is left alone (the generator is deterministic, so its bytes
    would be the same), which keeps a second ``make demo`` fast.
    """
    import polars as pl

    from backend_fab.io.stdf_write import write_stdf

    folder.mkdir(parents=True, exist_ok=True)
    layouts = fab.layouts_frame()
    files = []
    for run in fab.iter_runs():
        if "die" not in run or run["die"].height == 0:
            continue
        r = run["runs"].row(0, named=True)
        path = folder / f"{r['lot_id']}_{r['insertion']}.stdf"
        if not path.exists():
            data = {k: v for k, v in run.items() if k in STDF_TABLES}
            data["layouts"] = layouts.filter(pl.col("product") == r["product"])
            tmp = path.with_name(path.name + ".part")
            write_stdf(data, tmp)
            tmp.replace(path)
        files.append(path)
        if not quiet:
            print(f"  {path.name}", file=sys.stderr)
    return files


def run_demo(
    lake: str | Path = "fab-lake",
    report: str | Path = "fab-report",
    scenario: str = "demo",
    quiet: bool = False,
) -> int:
    """Synthetic fab -> STDF files -> ingest -> nightly -> report; prints where the report is."""
    from backend_fab.errors import BackendFabError
    from backend_fab.ingest import ingest_paths
    from backend_fab.lake import Lake
    from backend_fab.nightly import run_nightly
    from backend_fab.nightly.log import EventLog
    from backend_fab.synth import generate_fab

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    try:
        lake_obj = Lake(lake)
        fab = generate_fab(scenario)
        landing = Path(lake) / "_landing" / fab.scenario.name
        say(f"[1/4] synthetic fab {fab.scenario.name!r}: writing tester files to {landing}")
        t0 = time.perf_counter()
        files = write_tester_files(fab, landing)
        lake_obj.merge("layouts", fab.layouts_frame())
        say(f"      {len(files)} STDF files ({time.perf_counter() - t0:.1f} s)")

        say(f"[2/4] ingest into {lake}")
        t0 = time.perf_counter()
        ingested = ingest_paths(files, lake_obj, workers=2, progress=not quiet)
        say(f"      {ingested.summary()}")
        for f in ingested.failed:
            say(f"      failed: {f.path}: {f.reason}")

        say("[3/4] nightly: score every new lot")
        night = run_nightly(lake_obj, report_dir=report, log=EventLog(quiet=True))
        say(f"      {night.message} ({night.timings.get('total', 0):.1f} s)")
        for lot, why in night.failed.items():
            say(f"      lot {lot} failed: {why}")
    except BackendFabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say(f"[4/4] done in {time.perf_counter() - t_start:.0f} s")
    html = night.report_html.resolve() if night.report_html else None
    print(f"report: {html}")
    if night.report_json:
        print(f"summary (JSON): {night.report_json.resolve()}")
    return 1 if (ingested.failed or night.failed) else 0
