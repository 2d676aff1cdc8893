"""Smoke run of benchmarks/bench_stdf.py on tiny inputs (no timing assertions)."""

from __future__ import annotations

import pytest
from helpers import run_bench


def test_bench_stdf_smoke(tmp_path):
    pytest.importorskip("stdf_convert")
    pytest.importorskip("pystdf")
    printed, report = run_bench("stdf", tmp_path, "--out", str(tmp_path / "files"))
    synthetic = report["files"]["synthetic"]
    # the generator wrote what it says, and every tool decoded every PTR of it
    assert synthetic["n_ptr"] > 10_000 and synthetic["n_parts"] > 100
    assert report["pystdf_slice"]["n_ptr"] > 0
    assert report["iter_stdf"]["n_ptr"] > 10_000 and report["iter_stdf"]["peak_rss_mb"] > 0
    assert "ratio read_stdf/stdf-convert" in printed and "[iter_stdf]" in printed
