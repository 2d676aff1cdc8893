"""A child process for the lake crash and concurrency tests: builds one run and adds it.

Usage: python lake_writer.py LAKE RUN_ID N_DIE [START_AT_EPOCH]
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import polars as pl

from backend_fab import schema
from backend_fab.lake import Lake


def build_run(run_id: str, n_die: int, lot: str | None = None) -> dict[str, pl.DataFrame]:
    lot = lot or f"LOT-{run_id}"
    n_tests = 5
    runs = schema.conform(
        "runs",
        pl.DataFrame(
            {
                "run_id": [run_id],
                "product": ["P1"],
                "lot_id": [lot],
                "insertion": ["WS1"],
                "start_time": [datetime(2026, 11, 1, tzinfo=UTC)],
                "n_parts": [n_die],
                "status": ["ok"],
            }
        ),
    )
    seq = pl.int_range(0, n_die, dtype=pl.Int64, eager=True).alias("part_seq")
    die = schema.conform(
        "die",
        pl.DataFrame(
            {
                "run_id": [run_id] * n_die,
                "part_seq": seq,
                "product": ["P1"] * n_die,
                "lot_id": [lot] * n_die,
                "wafer_id": ["W01"] * n_die,
                "x": (seq % 100).cast(pl.Int32),
                "y": (seq // 100).cast(pl.Int32),
                "hbin": pl.Series([1] * n_die, dtype=pl.Int32),
                "passed": [True] * n_die,
                "retest_index": pl.Series([0] * n_die, dtype=pl.Int16),
                "final": [True] * n_die,
            }
        ),
    )
    results = schema.conform(
        "results",
        pl.DataFrame(
            {
                "run_id": [run_id] * (n_die * n_tests),
                "part_seq": seq.to_frame()
                .select(pl.col("part_seq").repeat_by(n_tests).explode())
                .to_series(),
                "test_num": pl.Series(list(range(n_tests)) * n_die, dtype=pl.Int64),
                "pin": pl.Series([-1] * (n_die * n_tests), dtype=pl.Int32),
                "kind": ["P"] * (n_die * n_tests),
                "product": ["P1"] * (n_die * n_tests),
                "lot_id": [lot] * (n_die * n_tests),
                "value": pl.Series(range(n_die * n_tests), dtype=pl.Float64),
            }
        ),
    )
    wafers = schema.conform(
        "wafers",
        pl.DataFrame({"run_id": [run_id], "wafer_id": ["W01"], "part_count": [n_die]}),
    )
    bins = schema.conform(
        "bins",
        pl.DataFrame(
            {
                "run_id": [run_id],
                "kind": ["H"],
                "bin": pl.Series([1], dtype=pl.Int32),
                "head": pl.Series([255], dtype=pl.Int16),
                "site": pl.Series([255], dtype=pl.Int16),
                "count": [n_die],
                "pass_fail": ["P"],
                "name": ["PASS"],
            }
        ),
    )
    return {"runs": runs, "wafers": wafers, "die": die, "results": results, "bins": bins}


def main(argv: list[str]) -> int:
    lake_path, run_id, n_die = argv[0], argv[1], int(argv[2])
    tables = build_run(run_id, n_die)
    if len(argv) > 3:
        time.sleep(max(0.0, float(argv[3]) - time.time()))
    lake = Lake(lake_path)
    print("writing", flush=True)
    t0 = time.perf_counter()
    result = lake.add_run(tables)
    print(f"{result.message} in {time.perf_counter() - t0:.3f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
