"""The PAT benchmark runs end to end on a tiny lot (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pat.py"


@pytest.mark.timeout(300)
def test_bench_pat_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "anchor: plain polars robust DPAT" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["what"] for r in rows] == [
        "anchor: plain polars robust DPAT",
        "run_pat, default recipe",
        "run_pat, default recipe, NNR on 2 tests",
    ]
    assert all(r["median_s"] > 0 for r in rows)
    stages = rows[1]["stages_s"]
    assert {"die", "values", "dpat", "nnr", "gdbn", "zpat", "assemble"} <= set(stages)
