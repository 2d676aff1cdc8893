"""The genealogy benchmark runs end to end on tiny inputs (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_genealogy.py"


def test_bench_genealogy_smoke(tmp_path):
    out = tmp_path / "bench_genealogy.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "E142 read" in done.stdout and "GDBN neighbour weights" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["maps"]["die"] > 0 and figures["trace"]["units"] == 2000
    assert figures["strips"]["units"] > 0
