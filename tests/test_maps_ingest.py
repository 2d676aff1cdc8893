"""`backend-fab ingest` of map files and assembly data: tables, idempotency, failures leave nothing."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from backend_fab.cli import main
from backend_fab.genealogy import genealogy_to_e142
from backend_fab.ingest import ingest_paths
from backend_fab.io.maps import (
    BinDefinition,
    E142Document,
    G85Map,
    write_e142,
    write_g85,
)
from backend_fab.lake import Lake

SINF = b"""DEVICE:AX100
LOT:SLOT1
WAFER:03
FNLOC:180
ROWCT:2
COLCT:3
BCEQU:01
RowData:__ 01 0B
RowData:01 01 __
"""

STEPS = """assembly_lot_id,step,qty_in,qty_out,reject_code,reject_qty,equipment,material_lot,shift
A1,SAW,8,8,,,SAW-01,BLD-1,A
A1,WIRE_BOND,8,7,NSOP,1,WB-03,AUW-1,B
"""

UNITS = """unit_id,insertion,ecid,ft_lot_id,assembly_lot_id,strip_id,row,col,site,hbin,sbin
A1-001,FT1,FAB1:01:0:0,A1,A1,A1-S1,0,0,1,1,1
A1-002,FT1,FAB1:01:1:0,A1,A1,A1-S1,0,1,2,7,70
A1-003,FT1,,A1,A1,A1-S1,1,0,1,1,1
"""

GENEALOGY = """relation,from_lot_id,from_wafer_id,from_x,from_y,assembly_lot_id,strip_id,row,col,unit_id,qty
merge,FAB1,01,,,A1,,,,,3
transfer,FAB1,01,0,0,A1,A1-S1,0,0,A1-001,
transfer,FAB1,01,1,0,A1,A1-S1,0,1,A1-002,
transfer,FAB1,01,0,1,A1,A1-S1,1,0,A1-003,
"""


def _wafer_die() -> pl.DataFrame:
    cells = [(x, y) for x in range(-2, 3) for y in range(-2, 3) if abs(x) + abs(y) <= 3]
    return pl.DataFrame(
        {
            "substrate_id": ["FAB1.01"] * len(cells),
            "lot_id": ["FAB1"] * len(cells),
            "x": [c[0] for c in cells],
            "y": [c[1] for c in cells],
            "bin": [1 if (x + y) % 5 else 7 for x, y in cells],
        }
    )


def _good_files(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    wafer = E142Document.from_die(
        _wafer_die(),
        axis_direction="DownRight",
        bins=[BinDefinition("001", "Pass"), BinDefinition("007", "Fail")],
        product_id="AX100",
    )
    files["e142_wafer"] = root / "wafer.xml"
    write_e142(wafer, files["e142_wafer"])
    edges = pl.read_csv(GENEALOGY.encode(), schema_overrides={"from_wafer_id": pl.String})
    strip = genealogy_to_e142(
        edges.with_columns(pl.col("from_x", "from_y", "row", "col").cast(pl.Int32)),
        strip_rows=2,
        strip_cols=2,
        rejected=["A1-002"],
    )
    files["e142_strip"] = root / "strip.xml"
    write_e142(strip, files["e142_strip"])
    g = G85Map(
        rows=[["255", "001", "005"], ["001", "001", "255"]],
        bins=[BinDefinition("001", "Pass"), BinDefinition("005", "Fail")],
        map_attrs={"SubstrateType": "Wafer", "SubstrateId": "02"},
        device_attrs={"LotId": "GLOT", "ProductId": "AX100", "OriginLocation": "3"},
    )
    files["g85"] = root / "w02.g85"
    write_g85(g, files["g85"])
    files["g85_ascii"] = root / "w04.txt"
    g.map_attrs["SubstrateId"] = "04"
    write_g85(g, files["g85_ascii"], ascii=True)
    files["sinf"] = root / "w03.sinf"
    files["sinf"].write_bytes(SINF)
    files["steps"] = root / "steps.csv"
    files["steps"].write_text(STEPS)
    files["units"] = root / "units.csv"
    files["units"].write_text(UNITS)
    files["genealogy"] = root / "genealogy.csv"
    files["genealogy"].write_text(GENEALOGY)
    return files


def test_every_map_and_assembly_format_is_ingested_once(tmp_path):
    files = _good_files(tmp_path / "in")
    lake = Lake(tmp_path / "lake")
    report = ingest_paths([tmp_path / "in"], lake, workers=1, progress=False)
    assert [f.status for f in report.files] == ["added"] * len(files), report.to_frame()
    formats = {Path(f.path).name: f.format for f in report.files}
    assert formats["wafer.xml"] == formats["strip.xml"] == "SEMI E142"
    assert formats["w02.g85"] == formats["w04.txt"] == "SEMI G85"
    assert formats["w03.sinf"] == "SINF"
    assert "assembly steps" in formats["steps.csv"] and "units" in formats["units.csv"]
    assert "genealogy" in formats["genealogy.csv"]

    die = lake.scan("die").collect()
    assert set(die.get_column("lot_id")) == {"FAB1", "GLOT", "SLOT1"}
    fab1 = die.filter(pl.col("lot_id") == "FAB1")
    assert fab1.height == _wafer_die().height and set(fab1.get_column("wafer_id")) == {"01"}
    # data coordinates as the map numbers them (DownRight: y grows down), pos flags say so
    wafers = lake.scan("wafers").collect()
    assert wafers.filter(pl.col("lot_id") == "FAB1").select("pos_x", "pos_y").row(0) == ("R", "D")
    assert set(zip(fab1["x"], fab1["y"], strict=True)) == set(
        zip(_wafer_die()["x"], _wafer_die()["y"], strict=True)
    )
    assert fab1.filter(pl.col("hbin") == 7).get_column("passed").to_list() == [False] * int(
        (_wafer_die()["bin"] == 7).sum()
    )
    sinf = die.filter(pl.col("lot_id") == "SLOT1").sort("x", "y")
    assert sinf.select("x", "y", "hbin", "passed").rows() == [
        (0, 1, 1, True),
        (1, 0, 1, True),
        (1, 1, 1, True),
        (2, 0, 11, False),
    ]
    g = lake.scan("genealogy").collect()
    assert g.filter(pl.col("source") == "E142 TransferMap").height == 3
    assert g.filter(pl.col("source") == "file genealogy.csv").height == 4
    strip_maps = lake.scan("strip_maps").collect()
    assert strip_maps.filter(pl.col("bin_quality") == "Fail").get_column("unit_id").to_list() == [
        "A1-002"
    ]
    assert lake.scan("assembly_steps").collect().height == 2
    units = lake.scan("units").collect().sort("unit_id")
    assert units.get_column("passed").to_list() == [True, False, True]
    runs = lake.scan("runs").collect()
    assert runs.height == len(files) and runs.get_column("run_id").n_unique() == len(files)

    again = ingest_paths([tmp_path / "in"], lake, workers=1, progress=False)
    assert {f.status for f in again.files} == {"already ingested"}
    assert lake.scan("die").collect().height == die.height


def _bad_files(root: Path, good: dict[str, Path]) -> dict[str, tuple[Path, list[str]]]:
    root.mkdir(parents=True, exist_ok=True)
    bad = {}
    wafer = good["e142_wafer"].read_bytes()
    p = root / "truncated.xml"
    p.write_bytes(wafer[: len(wafer) // 2])
    bad["truncated"] = (p, ["truncated.xml", "truncated"])
    p = root / "laughs.xml"
    p.write_bytes(
        b'<?xml version="1.0"?><!DOCTYPE MapData [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><MapData>&b;</MapData>'
    )
    bad["laughs"] = (p, ["laughs.xml", "DOCTYPE"])
    p = root / "dims.g85"
    p.write_bytes(good["g85"].read_bytes().replace(b'Columns="3"', b'Columns="4"'))
    bad["dims"] = (p, ["dims.g85", "Data/Row[1]", "Columns=4"])
    # the strip's TransferMap points to a die the wafer map in the same file does not have
    edges = pl.read_csv(GENEALOGY.encode(), schema_overrides={"from_wafer_id": pl.String})
    edges = edges.with_columns(pl.col("from_x", "from_y", "row", "col").cast(pl.Int32))
    edges = edges.with_columns(
        pl.when(pl.col("unit_id") == "A1-003").then(9).otherwise(pl.col("from_x")).alias("from_x")
    )
    wd = (
        _wafer_die()
        .rename({"substrate_id": "wafer_id", "bin": "hbin"})
        .with_columns(pl.lit("01").alias("wafer_id"))
    )
    doc = genealogy_to_e142(edges, strip_rows=2, strip_cols=2, wafer_die=wd)
    p = root / "missing_die.xml"
    write_e142(doc, p)
    bad["missing"] = (p, ["missing_die.xml", "TransferMap[1]/T[3]", "FX=9 FY=1", "no device"])
    p = root / "dup_units.csv"
    p.write_text(UNITS + "A1-002,FT1,,A1,A1,A1-S1,0,1,2,1,1\n")
    bad["dup"] = (p, ["dup_units.csv", "unit_id='A1-002'", "rows 2, 4"])
    p = root / "bad_steps.csv"
    p.write_text(STEPS.replace("8,7,NSOP", "8,9,NSOP"))
    bad["steps"] = (p, ["bad_steps.csv", "row 2", "qty_out"])
    return bad


def test_bad_map_and_assembly_files_fail_whole_with_named_reasons(tmp_path, capsys):
    good = _good_files(tmp_path / "good")
    bad = _bad_files(tmp_path / "bad", good)
    lake = Lake(tmp_path / "lake")
    report = ingest_paths([tmp_path / "bad"], lake, workers=1, progress=False)
    assert report.exit_code == 1
    by_name = {Path(f.path).name: f for f in report.files}
    for path, needles in bad.values():
        result = by_name[path.name]
        assert result.status == "failed", (path.name, result)
        for needle in needles:
            assert needle in result.reason, (path.name, needle, result.reason)
    # nothing partial: no run and no row of any table reached the lake
    assert lake.scan("runs").collect().height == 0
    for table in ("die", "wafers", "genealogy", "units", "assembly_steps", "strip_maps"):
        assert lake.scan(table).collect().height == 0, table
    code = main(
        ["ingest", str(tmp_path / "bad"), "--lake", str(tmp_path / "lake"), "--workers", "1", "-q"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "missing_die.xml" in err and "dup_units.csv" in err


@pytest.mark.parametrize("workers", [1])
def test_cli_ingest_of_a_good_folder_exits_zero(tmp_path, workers, capsys):
    _good_files(tmp_path / "in")
    code = main(
        [
            "ingest",
            str(tmp_path / "in"),
            "--lake",
            str(tmp_path / "lake"),
            "--workers",
            str(workers),
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
