"""The writer/ingest benchmark runs end to end on tiny inputs (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ingest.py"


def test_bench_ingest_smoke(tmp_path):
    out = tmp_path / "bench_ingest.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "STDF write" in done.stdout and "naive encoder anchor" in done.stdout
    assert "ingest --workers 2" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["writer"]["results"] == 400 * 8
    assert figures["ingest"]["files"] == 3
