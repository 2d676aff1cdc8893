"""``backend-fab demo``: synthetic fab -> STDF files -> ingest -> nightly -> report, end to end."""

from __future__ import annotations

import json
import re
import textwrap

import polars as pl
import pytest

from backend_fab.cli import main
from backend_fab.lake import Lake

TINY = textwrap.dedent(
    """
    name = "tiny-demo"
    description = "test_demo: one small product, 2 lots x 2 wafers"
    seed = 11
    start = 2024-03-04T06:00:00Z
    lot_interval_minutes = 60

    [[products]]
    name = "TD100"
    lot_prefix = "TD"
    wafer_size_mm = 150.0
    die_width_mm = 6.0
    die_height_mm = 6.0
    n_sites = 2
    n_tests = 3
    lots = 2
    wafers_per_lot = 2
    short_lot_rate = 0.0
    assembly_lot_size = 100000
    """
)


def test_demo_runs_the_main_job_end_to_end_and_twice_is_a_no_op(tmp_path, capsys):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    lake, report = tmp_path / "lake", tmp_path / "report"
    args = ["demo", "--lake", str(lake), "--report", str(report), "--scenario", str(scenario), "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    html = re.search(r"report: (\S+)", out).group(1)
    assert html.endswith(".html") and (report / html.split("/")[-1]).exists()
    files = sorted(p.name for p in (lake / "_landing" / "tiny-demo").iterdir())
    assert files and all(f.endswith(".stdf") for f in files)
    lk = Lake(lake)
    runs = lk.read("runs")
    assert runs.height == len(files)  # every tester file ingested as one run
    assert set(
        runs["source_path"].map_elements(lambda p: p.split("/")[-1], return_dtype=pl.String)
    ) == set(files)
    scores = lk.read("scores").filter(pl.col("wafer_id") == "")
    assert set(scores["lot_id"]) == set(runs["lot_id"])  # wafer-sort and final-test lots scored
    summary = json.loads((report / "latest.json").read_text())
    assert (
        summary["totals"]["lots_scored"] == scores.height and summary["totals"]["lots_failed"] == 0
    )
    # a second demo: files already there and ingested, lots already scored
    assert main(args) == 0
    assert json.loads((report / "latest.json").read_text())["totals"]["lots_scored"] == 0
    assert lk.read("scores").height == lk.read("scores").unique().height


@pytest.mark.nightly
def test_demo_scenario_end_to_end(tmp_path):
    lake, report = tmp_path / "lake", tmp_path / "report"
    assert main(["demo", "--lake", str(lake), "--report", str(report), "-q"]) == 0
    summary = json.loads((report / "latest.json").read_text())
    assert summary["totals"]["lots_scored"] > 10 and summary["totals"]["alarms"] > 0
