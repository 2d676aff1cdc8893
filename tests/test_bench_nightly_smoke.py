"""Smoke run of benchmarks/bench_nightly.py (no timing assertions: it must run and report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_nightly.py"


def test_bench_nightly_smoke(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--smoke",
            "--workdir",
            str(tmp_path),
            "--json",
            str(tmp_path / "out.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for expected in (
        "machine:",
        "ingest (2 workers)",
        "[local] night",
        "die/s end to end",
        "peak RSS",
        "per-lot analysis seconds",
    ):
        assert expected in out, out
    data = json.loads((tmp_path / "out.json").read_text())
    run = data["runs"][0]
    assert run["engine"] == "local" and run["lots"] >= 2 and data["ingest"]["die"] > 1000
