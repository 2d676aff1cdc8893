"""``backend-fab demo`` / ``make demo``: the main job end to end on a synthetic fab.

1. Generate the scenario's fab (:func:`backend_fab.synth.generate_fab`, deterministic).
2. Write what the testers would write: one STDF V4 file per wafer-sort and final-test run
   (:func:`backend_fab.io.stdf_write.write_stdf`) into the lake's landing folder
   ``<lake>/_landing/<scenario>/``, and the products' wafer layouts into the lake (plant master
   data, not tester output).
3. Two nights, as a plant lives them. Night 1: ingest the files of the earlier lots
   (:func:`backend_fab.ingest.ingest_paths`) and score them (:func:`backend_fab.nightly.
   run_nightly`). Night 2: ingest the rest, and score only what is new; its lots are judged
   against SYL/SBL limits from the lots of night 1 (AEC-Q002 needs six earlier lots of a product,
   so products with fewer lots show no SYL/SBL). Each night writes its HTML and JSON report.

Running it again re-uses the lake: the files are already ingested and the lots already scored, so
the nights have nothing new and say so. Exit code: 0, or 1 when a file or a lot failed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

STDF_TABLES = ("runs", "wafers", "die", "tests", "results", "bins")

#: Share of each product's lots (by wafer-sort start) that arrive in the second night.
SECOND_NIGHT_SHARE = 0.25


@dataclass(frozen=True)
class TesterFile:
    path: Path
    product: str
    lot_id: str
    insertion: str
    start_time: datetime | None


def write_tester_files(fab, folder: Path) -> list[TesterFile]:
    """One STDF file per tester run of ``fab`` (runs holding die) in ``folder``.

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
            continue  # assembly runs: not tester data
        r = run["runs"].row(0, named=True)
        path = folder / f"{r['lot_id']}_{r['insertion']}.stdf"
        if not path.exists():
            data = {k: v for k, v in run.items() if k in STDF_TABLES}
            data["layouts"] = layouts.filter(pl.col("product") == r["product"])
            tmp = path.with_name(path.name + ".part")
            write_stdf(data, tmp)
            tmp.replace(path)
        files.append(TesterFile(path, r["product"], r["lot_id"], r["insertion"], r["start_time"]))
    return files


def split_nights(files: list[TesterFile], share: float = SECOND_NIGHT_SHARE):
    """Files of night 1 and of night 2: per product, the last ``share`` of its wafer-sort lots
    (at least one) and every run of the product that starts after the first of them."""
    first, second = [], []
    for product in sorted({f.product for f in files}):
        mine = [f for f in files if f.product == product]
        ws = sorted(
            (f for f in mine if f.insertion.startswith("WS") and f.start_time is not None),
            key=lambda f: f.start_time,
        )
        n_late = max(1, round(len(ws) * share)) if len(ws) > 1 else 0
        cutoff = ws[-n_late].start_time if n_late else None
        for f in mine:
            late = cutoff is not None and f.start_time is not None and f.start_time >= cutoff
            (second if late else first).append(f)
    return first, second


def run_demo(
    lake: str | Path = "fab-lake",
    report: str | Path = "fab-report",
    scenario: str = "demo",
    quiet: bool = False,
) -> int:
    """Synthetic fab -> STDF files -> ingest -> nightly (two nights) -> reports; prints where
    the reports are."""
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
    failed = False
    nights = []
    try:
        lake_obj = Lake(lake)
        fab = generate_fab(scenario)
        landing = Path(lake) / "_landing" / fab.scenario.name
        say(f"[1/3] synthetic fab {fab.scenario.name!r}: tester files in {landing}")
        t0 = time.perf_counter()
        files = write_tester_files(fab, landing)
        lake_obj.merge("layouts", fab.layouts_frame())
        say(f"      {len(files)} STDF files ({time.perf_counter() - t0:.1f} s)")
        for i, part in enumerate(split_nights(files), start=1):
            lots = len({f.lot_id for f in part})
            say(f"[{i + 1}/3] night {i}: ingest {len(part)} files ({lots} lots), then score")
            ingested = ingest_paths([f.path for f in part], lake_obj, workers=2, progress=not quiet)
            say(f"      ingest: {ingested.summary()}")
            for f in ingested.failed:
                say(f"      failed: {f.path}: {f.reason}")
            night = run_nightly(
                lake_obj, report_dir=report, log=EventLog(quiet=True, progress=not quiet)
            )
            say(f"      nightly: {night.message} ({night.timings.get('total', 0):.1f} s)")
            for lot, why in night.failed.items():
                say(f"      lot {lot} failed: {why}")
            failed = failed or bool(ingested.failed or night.failed)
            nights.append(night)
    except BackendFabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say(f"done in {time.perf_counter() - t_start:.0f} s")
    for i, night in enumerate(nights, start=1):
        if night.report_html:
            print(f"night {i} report: {night.report_html.resolve()}")
    last = nights[-1]
    if last.report_json:
        print(f"report: {last.report_html.resolve()}")
        print(f"summary (JSON): {last.report_json.resolve()}")
    return 1 if failed else 0
