"""Tiny, fully controlled lots for the nightly batch tests (shared by tests/test_nightly*.py).

Each lot: one wafer-sort run of product ``P1`` with ``n_wafers`` wafers of 69 die (a disk of
radius 4.5 die), 4 probe sites, hard bins 1 (pass), 5 and 7 (fail) at a few per cent, one
parametric test (100, spec 0..2) with a planted outlier on a good die, and optionally a 4 x 4
fail cluster on the first wafer.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from backend_fab import schema

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def disk(radius: float = 4.5) -> tuple[np.ndarray, np.ndarray]:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = xx**2 + yy**2 <= radius**2
    return xx[keep].astype(np.int32), yy[keep].astype(np.int32)


def lot_tables(
    lot_id: str,
    *,
    index: int = 0,
    n_wafers: int = 2,
    fail_rate: float = 0.06,
    cluster: bool = False,
    run_suffix: str = "ws1",
    shuffle: int | None = None,
) -> dict[str, pl.DataFrame]:
    """The tables of one run of ``lot_id`` (deterministic for the lot id and ``index``)."""
    rng = np.random.default_rng(zlib.crc32(f"{lot_id}/{run_suffix}".encode()))
    run_id = f"run-{lot_id}-{run_suffix}"
    start = T0 + timedelta(hours=6 * index)
    xs, ys = disk()
    n = xs.size
    die_cols: dict[str, list] = {k: [] for k in ("wafer_id", "x", "y", "site", "hbin", "sbin")}
    for w in range(1, n_wafers + 1):
        fail = rng.random(n) < fail_rate
        if cluster and w == 1:
            fail |= (xs >= 0) & (xs <= 3) & (ys >= -1) & (ys <= 2)  # a 4 x 4 block
        hbin = np.where(fail, np.where(rng.random(n) < 0.6, 5, 7), 1).astype(np.int32)
        die_cols["wafer_id"] += [f"{w:02d}"] * n
        die_cols["x"] += xs.tolist()
        die_cols["y"] += ys.tolist()
        die_cols["site"] += ((xs % 2) * 2 + (ys % 2)).tolist()
        die_cols["hbin"] += hbin.tolist()
        die_cols["sbin"] += (hbin * 10).tolist()
    m = len(die_cols["x"])
    die = pl.DataFrame(
        {
            "run_id": [run_id] * m,
            "part_seq": np.arange(m, dtype=np.int64),
            "product": ["P1"] * m,
            "lot_id": [lot_id] * m,
            "head": pl.Series([1] * m, dtype=pl.Int16),
            **{k: v for k, v in die_cols.items()},
        }
    ).with_columns(
        pl.col("x", "y").cast(pl.Int32),
        pl.col("site").cast(pl.Int16),
        pl.col("hbin", "sbin").cast(pl.Int32),
        passed=pl.col("hbin") == 1,
        retest_index=pl.lit(0, dtype=pl.Int16),
        final=pl.lit(True),
    )
    values = rng.normal(1.0, 0.02, m)
    good_idx = np.flatnonzero(die["hbin"].to_numpy() == 1)
    values[good_idx[3]] = 1.6  # a parametric outlier inside spec
    results = pl.DataFrame(
        {
            "run_id": [run_id] * m,
            "part_seq": np.arange(m, dtype=np.int64),
            "test_num": np.full(m, 100, dtype=np.int64),
            "pin": pl.Series([-1] * m, dtype=pl.Int32),
            "kind": ["P"] * m,
            "product": ["P1"] * m,
            "lot_id": [lot_id] * m,
            "value": values,
            "passed": [True] * m,
        }
    )
    tests = pl.DataFrame(
        {
            "run_id": [run_id],
            "test_num": [100],
            "kind": ["P"],
            "test_name": ["VDD_LEAK"],
            "lo_limit": [0.0],
            "hi_limit": [2.0],
            "units": ["uA"],
        }
    )
    wafers = pl.DataFrame(
        {
            "run_id": [run_id] * n_wafers,
            "wafer_id": [f"{w:02d}" for w in range(1, n_wafers + 1)],
            "product": ["P1"] * n_wafers,
            "lot_id": [lot_id] * n_wafers,
            "part_count": [n] * n_wafers,
        }
    )
    counts = die.group_by("hbin").len().sort("hbin")
    bins = pl.DataFrame(
        {
            "run_id": [run_id] * counts.height,
            "kind": ["H"] * counts.height,
            "bin": counts["hbin"],
            "head": pl.Series([255] * counts.height, dtype=pl.Int16),
            "site": pl.Series([255] * counts.height, dtype=pl.Int16),
            "count": counts["len"].cast(pl.Int64),
            "pass_fail": ["P" if b == 1 else "F" for b in counts["hbin"]],
            "name": [{1: "PASS", 5: "OPEN", 7: "LEAK"}[b] for b in counts["hbin"]],
        }
    )
    runs = pl.DataFrame(
        {
            "run_id": [run_id],
            "product": ["P1"],
            "lot_id": [lot_id],
            "insertion": ["WS1"],
            "start_time": [start],
            "finish_time": [start + timedelta(hours=1)],
            "n_parts": [m],
            "status": ["ok"],
            "ingested_at": [start + timedelta(hours=2)],
        }
    )
    if shuffle is not None:  # the same die in another row order (as a parallel reader may give)
        order = np.random.default_rng(shuffle).permutation(die.height)
        die = die[order]
    return {
        "runs": schema.conform("runs", runs),
        "wafers": schema.conform("wafers", wafers),
        "die": schema.conform("die", die),
        "tests": schema.conform("tests", tests),
        "results": schema.conform("results", results),
        "bins": schema.conform("bins", bins),
    }


def build_lake(path, lots: dict[str, dict] | None = None):
    """A lake holding ``lots`` (lot id -> keyword arguments of :func:`lot_tables`)."""
    from backend_fab.lake import Lake

    lake = Lake(path)
    lots = lots if lots is not None else {"L01": {}, "L02": {"cluster": True}, "L03": {}}
    for i, (lot_id, kwargs) in enumerate(lots.items()):
        lake.add_run(lot_tables(lot_id, index=kwargs.pop("index", i), **kwargs))
    return lake


def table_snapshot(lake, name: str) -> pl.DataFrame:
    """A table without its wall-clock columns, sorted: what must match between two runs."""
    frame = lake.read(name).drop(["scored_at", "raised_at"], strict=False)
    return frame.sort(frame.columns, nulls_last=True)
