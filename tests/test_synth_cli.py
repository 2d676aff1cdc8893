"""`backend-fab synth`: lake, STDF files that read back into the same tables, assembly CSV, truth."""

from __future__ import annotations

import gzip

import polars as pl
import pytest

from backend_fab.cli import main
from backend_fab.lake import Lake
from backend_fab.synth import generate_fab


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--scenario", "ci", "--out", str(path), "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def fab():
    return generate_fab("ci")


def test_lake_holds_every_run_layout_and_truth(out, fab):
    lake = Lake(out / "lake")
    runs = lake.scan("runs").collect()
    assert set(runs.get_column("run_id")) == {r["runs"].item(0, "run_id") for r in fab.runs}
    layouts = lake.scan("layouts").collect()
    assert layouts.get_column("gross_die").to_list() == [fab.layouts["AX100"].n_gross]
    for name in ("die", "results", "truth_die", "truth_outliers", "genealogy", "units"):
        assert lake.scan(name).select(pl.len()).collect().item() == fab.table(name).height, name
    # writing the same fab again adds nothing
    again = fab.write_lake(lake)
    assert len(again) == len(fab.runs) and not any(r.added for r in again)


def test_stdf_files_read_back_into_the_same_die(out, fab):
    from backend_fab.io.stdf import read_stdf

    files = sorted((out / "stdf").iterdir())
    names = {f.name for f in files}
    assert "AXL0001_WS1.stdf" in names
    assert any(n.endswith(".stdf.gz") for n in names)
    assert len(files) == sum(
        1 for r in fab.runs if r["runs"].item(0, "insertion") in ("WS1", "FT1", "PBI")
    )
    orders = set()
    for f in files:
        data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        orders.add(data[4])  # FAR.CPU_TYPE: 1 big-endian, 2 little-endian
    assert orders == {1, 2}

    ws = next(r for r in fab.runs if r["runs"].item(0, "lot_id") == "AXL0002")
    back = read_stdf(next(f for f in files if f.name.startswith("AXL0002_WS1")))
    cols = ["part_seq", "wafer_id", "site", "x", "y", "hbin", "sbin", "passed", "retest_index",
            "final", "part_flags", "num_tests"]  # fmt: skip
    assert back.die.select(cols).equals(ws["die"].select(cols))
    assert back.results.height == ws["results"].height
    assert (
        back.bins.sort("kind", "bin", "head", "site")
        .select("kind", "bin", "count")
        .equals(ws["bins"].sort("kind", "bin", "head", "site").select("kind", "bin", "count"))
    )


def test_assembly_files_and_truth_parquet(out, fab):
    from backend_fab.assembly import read_genealogy, read_units

    asm = out / "assembly"
    units = read_units(asm / "AXA0001_FT1_units.csv")
    want = fab.table("units").filter(
        (pl.col("assembly_lot_id") == "AXA0001") & (pl.col("insertion") == "FT1")
    )
    assert units.height == want.height
    assert units.get_column("unit_id").to_list() == want.get_column("unit_id").to_list()
    edges = read_genealogy(asm / "AXA0001_genealogy.csv")
    assert (
        edges.height == fab.table("genealogy").filter(pl.col("assembly_lot_id") == "AXA0001").height
    )
    truth = pl.read_parquet(out / "truth" / "truth_die.parquet")
    assert truth.height == fab.table("truth_die").height and "run_id" not in truth.columns


def test_unknown_scenario_exits_2(tmp_path, capsys):
    assert main(["synth", "--scenario", "nope", "--out", str(tmp_path), "--quiet"]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err
