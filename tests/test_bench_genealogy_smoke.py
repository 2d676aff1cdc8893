"""The genealogy benchmark runs end to end on tiny inputs (no timing asserted)."""

from __future__ import annotations

from helpers import run_bench


def test_bench_genealogy_smoke(tmp_path):
    printed, figures = run_bench("genealogy", tmp_path, timeout=300)
    assert "E142 read" in printed and "GDBN neighbour weights" in printed
    assert figures["maps"]["die"] > 0 and figures["trace"]["units"] == 2000
    assert figures["strips"]["units"] > 0
