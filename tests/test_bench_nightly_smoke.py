"""Smoke run of benchmarks/bench_nightly.py (no timing assertions: it must run and report)."""

from __future__ import annotations

from helpers import run_bench


def test_bench_nightly_smoke(tmp_path):
    printed, data = run_bench("nightly", tmp_path, "--workdir", str(tmp_path))
    for expected in (
        "machine:",
        "ingest (2 workers)",
        "[local] night",
        "die/s end to end",
        "peak RSS",
        "per-lot analysis seconds",
    ):
        assert expected in printed, printed
    run = data["runs"][0]
    assert run["engine"] == "local" and run["lots"] >= 2 and data["ingest"]["die"] > 1000
