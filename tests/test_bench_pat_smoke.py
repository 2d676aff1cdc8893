"""The PAT benchmark runs end to end on a tiny lot (no timing assertions)."""

from __future__ import annotations

from helpers import run_bench


def test_bench_pat_smoke(tmp_path):
    printed, figures = run_bench("pat", tmp_path, timeout=300)
    assert "anchor: plain polars robust DPAT" in printed
    rows = figures["rows"]
    assert [r["what"] for r in rows] == [
        "anchor: plain polars robust DPAT",
        "run_pat, default recipe",
        "run_pat, default recipe, NNR on 2 tests",
    ]
    assert all(r["median_s"] > 0 for r in rows)
    stages = rows[1]["stages_s"]
    assert {"die", "values", "dpat", "nnr", "gdbn", "zpat", "assemble"} <= set(stages)
