"""benchmarks/bench_patterns.py runs end to end on tiny inputs (no timing assertions)."""

from __future__ import annotations

from helpers import run_bench


def test_bench_patterns_smoke(tmp_path):
    printed, res = run_bench("patterns", tmp_path)
    assert "features + prediction" in printed
    assert "anchor naive Python features" in printed
    assert res["wafers"] == 6 and res["threads"] == 1
    assert res["features_plus_prediction"]["wafers_per_s_cpu"] > 0
    assert res["anchor_sklearn_forest"]["speedup_cpu"] > 0
