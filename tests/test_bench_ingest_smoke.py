"""The writer/ingest benchmark runs end to end on tiny inputs (no timing asserted)."""

from __future__ import annotations

from helpers import run_bench


def test_bench_ingest_smoke(tmp_path):
    printed, figures = run_bench("ingest", tmp_path)
    assert "STDF write" in printed and "naive encoder anchor" in printed
    assert "ingest --workers 2" in printed
    assert figures["writer"]["results"] == 400 * 8
    assert figures["ingest"]["files"] == 3
