"""Smoke run of benchmarks/bench_synth.py (ci scenario): it runs and reports its figures."""

from __future__ import annotations

from helpers import run_bench


def test_bench_synth_smoke(tmp_path):
    printed, figures = run_bench("synth", tmp_path, timeout=300)
    assert "wafer-sort die/s" in printed and "tested die/s" in printed
    assert "anchor naive" in printed and "anchor floor" in printed
    assert figures["scenario"] == "ci" and figures["workers"] >= 1
    passes = figures["passes"]
    workers = figures["workers"]
    for label in ("wafer sort", "whole fab"):
        assert passes[f"{label}/1"]["ws_die"] == passes[f"{label}/{workers}"]["ws_die"] > 20_000
    # the whole fab also tests the packaged units, twice (FT1 and PBI)
    assert passes["whole fab/1"]["tested_die"] > passes["whole fab/1"]["ws_die"]
    assert figures["die_per_s_wall"] > 0 and figures["tested_die_per_s_wall"] > 0
    assert figures["naive_die_per_s_cpu"] > 0 and figures["ws_die_per_s_cpu"] > 0
