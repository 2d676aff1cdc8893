"""Smoke run of benchmarks/bench_synth.py (ci scenario): it runs and reports its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_synth.py"


@pytest.mark.timeout(300)
def test_bench_synth_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "die/s" in proc.stdout and "anchor naive" in proc.stdout
    figures = json.loads(out.read_text())
    assert figures["scenario"] == "ci"
    assert figures["die"] > 20_000 and figures["die_per_s_wall"] > 0
    assert figures["naive_die_per_s_cpu"] > 0 and figures["ws_die_per_s_cpu"] > 0
