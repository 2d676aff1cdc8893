"""benchmarks/bench_patterns.py runs end to end on tiny inputs (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_patterns.py"


def test_bench_patterns_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "features + prediction" in proc.stdout
    assert "anchor naive Python features" in proc.stdout
    res = json.loads(out.read_text())
    assert res["wafers"] == 6 and res["threads"] == 1
    assert res["features_plus_prediction"]["wafers_per_s_cpu"] > 0
    assert res["anchor_sklearn_forest"]["speedup_cpu"] > 0
