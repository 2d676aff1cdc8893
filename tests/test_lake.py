"""The lake: idempotent, atomic runs; replace/merge of derived tables; versions; crashes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from lake_writer import build_run

from backend_fab import schema
from backend_fab.errors import LakeError, SchemaError
from backend_fab.lake import Lake

WRITER = Path(__file__).with_name("lake_writer.py")


def _run_rows(lake: Lake, run_id: str) -> dict[str, int]:
    out = {}
    for name in ("runs", "wafers", "die", "results", "bins"):
        out[name] = (
            lake.scan(name).filter(pl.col("run_id") == run_id).select(pl.len()).collect().item()
        )
    return out


def _complete(n_die: int) -> dict[str, int]:
    return {"runs": 1, "wafers": 1, "die": n_die, "results": 5 * n_die, "bins": 1}


def test_add_run_is_idempotent(lake):
    tables = build_run("r1", 200)
    first = lake.add_run(tables)
    assert first.added and first.rows["die"] == 200
    version = lake.version("die")
    again = lake.add_run(tables)
    assert not again.added
    assert "already in the lake" in again.message
    assert lake.version("die") == version  # nothing was written
    assert _run_rows(lake, "r1") == _complete(200)


def test_scan_of_unwritten_table_is_empty_with_schema(lake):
    frame = lake.scan("dispositions").collect()
    assert frame.height == 0
    assert frame.schema == schema.DISPOSITIONS.empty().schema


def test_add_run_validates_before_writing(lake):
    tables = build_run("r1", 10)
    tables["die"] = tables["die"].with_columns(pl.col("hbin").cast(pl.Int64))
    with pytest.raises(SchemaError, match="'hbin'"):
        lake.add_run(tables)
    assert lake.tables() == []


def test_add_run_rejects_rows_of_another_run(lake):
    tables = build_run("r1", 10)
    tables["die"] = tables["die"].with_columns(pl.lit("r2").alias("run_id"))
    with pytest.raises(SchemaError, match="run_id"):
        lake.add_run(tables)
    assert not lake.has_run("r1") and lake.tables() == []


def test_partial_add_is_invisible_and_replaced(lake):
    """Rows written without the runs marker (a writer that died) are never seen, and the next
    add of that run replaces them instead of duplicating them."""
    tables = build_run("r1", 50)
    lake._write("die", tables["die"], predicate="run_id = 'r1'")
    lake._write("results", tables["results"], predicate="run_id = 'r1'")
    assert lake.scan("die").collect().height == 0
    assert lake.orphans() == {"die": 50, "results": 250}
    assert lake.add_run(tables).added
    assert _run_rows(lake, "r1") == _complete(50)
    assert lake.orphans() == {}


def test_vacuum_removes_orphans(lake):
    lake.add_run(build_run("keep", 20))
    orphan = build_run("dead", 30)
    lake._write("die", orphan["die"], predicate="run_id = 'dead'")
    assert lake.vacuum() == {"die": 30}
    assert lake.orphans() == {}
    assert _run_rows(lake, "keep") == _complete(20)


def test_replace_is_keyed_and_idempotent(lake):
    def scores(lot, n):
        return schema.conform(
            "scores",
            pl.DataFrame(
                {
                    "lot_id": [lot] * n,
                    "recipe_hash": ["h1"] * n,
                    "wafer_id": [f"W{i}" for i in range(n)],
                    "n_tested": list(range(n)),
                }
            ),
        )

    lake.replace("scores", scores("A", 3), by=("lot_id", "recipe_hash"))
    lake.replace("scores", scores("B", 2), by=("lot_id", "recipe_hash"))
    lake.replace("scores", scores("A", 3), by=("lot_id", "recipe_hash"))
    table = lake.read("scores").sort("lot_id", "wafer_id")
    assert table.height == 5
    # fewer rows for A now: the old rows of A go, B stays
    lake.replace("scores", scores("A", 1), by=("lot_id", "recipe_hash"))
    assert lake.read("scores").group_by("lot_id").len().sort("lot_id").to_dicts() == [
        {"lot_id": "A", "len": 1},
        {"lot_id": "B", "len": 2},
    ]
    # an empty result for a key clears it when the key is named
    keys = pl.DataFrame({"lot_id": ["B"], "recipe_hash": ["h1"]})
    lake.replace("scores", scores("B", 0), by=("lot_id", "recipe_hash"), keys=keys)
    assert lake.read("scores").get_column("lot_id").to_list() == ["A"]


def test_replace_quotes_keys(lake):
    frame = schema.conform(
        "scores",
        pl.DataFrame({"lot_id": ["O'Brien lot"], "recipe_hash": ["h"], "wafer_id": [""]}),
    )
    lake.replace("scores", frame, by=("lot_id", "recipe_hash"))
    lake.replace("scores", frame, by=("lot_id", "recipe_hash"))
    assert lake.read("scores").height == 1


def test_merge_upserts_by_keys(lake):
    def limits(value):
        return schema.conform(
            "limits",
            pl.DataFrame(
                {
                    "product": ["P1", "P1"],
                    "limit_type": ["SYL", "SBL"],
                    "key": ["yield", "bin 7"],
                    "method": ["robust", "robust"],
                    "version": pl.Series([1, 1], dtype=pl.Int32),
                    "level1_lo": [value, None],
                }
            ),
        )

    lake.merge("limits", limits(0.9))
    lake.merge("limits", limits(0.8))
    table = lake.read("limits")
    assert table.height == 2
    assert table.filter(pl.col("limit_type") == "SYL").item(0, "level1_lo") == 0.8


def test_state_round_trip(lake):
    assert lake.state_get("nightly") is None
    lake.state_put("nightly", {"lots": {"A": "x"}})
    lake.state_put("nightly", {"lots": {"A": "y"}})
    assert lake.state_get("nightly") == {"lots": {"A": "y"}}


def test_other_schema_version_is_refused(tmp_path):
    Lake(tmp_path / "lake")
    marker = tmp_path / "lake" / "lake.json"
    meta = json.loads(marker.read_text())
    meta["schema_version"] = schema.SCHEMA_VERSION - 1 if schema.SCHEMA_VERSION > 1 else 99
    marker.write_text(json.dumps(meta))
    with pytest.raises(LakeError, match="schema version"):
        Lake(tmp_path / "lake")


def test_non_lake_folder_is_refused(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    with pytest.raises(LakeError, match="not a backend-fab lake"):
        Lake(tmp_path / "stuff")
    with pytest.raises(LakeError, match="no backend-fab lake"):
        Lake(tmp_path / "absent", create=False)


def test_large_tables_are_partitioned(lake):
    lake.add_run(build_run("r1", 10))
    parts = {p.name for p in (lake.path / "die").iterdir() if p.is_dir()}
    assert "product=P1" in parts


def _spawn(lake_path: Path, run_id: str, n_die: int, start_at: float | None = None):
    args = [sys.executable, str(WRITER), str(lake_path), run_id, str(n_die)]
    if start_at is not None:
        args.append(repr(start_at))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_leaves_all_or_nothing(tmp_path):
    """Kill a writer at random moments: the run is either absent or complete, and the next
    add always succeeds."""
    lake_path = tmp_path / "lake"
    Lake(lake_path)
    n_die = 20_000
    rng = random.Random(20261127)
    # time an uninterrupted add first, to spread the kill points over it
    proc = _spawn(lake_path, "timing", n_die)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    duration = float(out.split(" in ")[-1].split()[0])
    seen = {"absent": 0, "complete": 0}
    for i in range(8):
        run_id = f"crash{i}"
        proc = _spawn(lake_path, run_id, n_die)
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(rng.uniform(0.1, 2.5) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        lake = Lake(lake_path)
        rows = _run_rows(lake, run_id)
        if rows["runs"]:
            assert rows == _complete(n_die), rows
            seen["complete"] += 1
        else:
            assert rows == {"runs": 0, "wafers": 0, "die": 0, "results": 0, "bins": 0}, rows
            seen["absent"] += 1
        result = lake.add_run(build_run(run_id, n_die))
        assert result.added == (rows["runs"] == 0)
        assert _run_rows(lake, run_id) == _complete(n_die)
    print(f"\nSIGKILL outcomes over 8 kills: {seen}; uninterrupted add {duration:.2f} s")
    assert Lake(lake_path).read("runs").height == 9


def test_concurrent_writers_lose_nothing(tmp_path):
    lake_path = tmp_path / "lake"
    Lake(lake_path)
    start_at = time.time() + 4.0  # both children import, build, then start together
    procs = [_spawn(lake_path, f"par{i}", 5_000, start_at) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        assert "added" in out
    lake = Lake(lake_path)
    for i in range(2):
        assert _run_rows(lake, f"par{i}") == _complete(5_000)
    assert lake.orphans() == {}


def test_concurrent_writers_of_the_same_run_commit_it_once(tmp_path):
    """Two writers add the same run to a new lake at the same instant, so both may find every
    table absent and create it at once: the run must still be there exactly once. Three rounds,
    each on a new lake (the race is over in milliseconds and does not happen every time)."""
    for round_ in range(3):
        lake_path = tmp_path / f"lake{round_}"
        Lake(lake_path)
        start_at = time.time() + 4.0
        procs = [_spawn(lake_path, "same", 2_000, start_at) for _ in range(2)]
        for p in procs:
            _out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
        lake = Lake(lake_path)
        assert _run_rows(lake, "same") == _complete(2_000), f"round {round_}"
        assert lake.orphans() == {}
