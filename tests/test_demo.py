"""``backend-fab demo``: synthetic fab -> STDF files -> ingest -> nightly -> report, end to end."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

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
    nights = re.findall(r"night (\d) report: (\S+)", out)
    assert [n for n, _ in nights] == ["1", "2"]
    summaries = [json.loads(Path(html).with_suffix(".json").read_text()) for _, html in nights]
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
    # the later lots arrive in the second night; every lot is scored exactly once
    per_night = [{lot["lot_id"] for lot in s["lots"]} for s in summaries]
    assert per_night[0] and per_night[1] and not per_night[0] & per_night[1]
    assert per_night[0] | per_night[1] == set(scores["lot_id"])
    assert all(s["totals"]["lots_failed"] == 0 for s in summaries)
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
