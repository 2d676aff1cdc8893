"""Smoke run of benchmarks/bench_stdf.py on tiny inputs (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_stdf.py"


@pytest.mark.timeout(600)
def test_bench_stdf_smoke(tmp_path, capsys):
    pytest.importorskip("stdf_convert")
    pytest.importorskip("pystdf")
    spec = importlib.util.spec_from_file_location("bench_stdf", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "figures.json"
    assert bench.main(["--smoke", "--out", str(tmp_path / "files"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    synthetic = report["files"]["synthetic"]
    # the generator wrote what it says, and every tool decoded every PTR of it
    assert synthetic["n_ptr"] > 10_000 and synthetic["n_parts"] > 100
    assert report["pystdf_slice"]["n_ptr"] > 0
    assert report["iter_stdf"]["n_ptr"] > 10_000 and report["iter_stdf"]["peak_rss_mb"] > 0
    printed = capsys.readouterr().out
    assert "ratio read_stdf/stdf-convert" in printed and "[iter_stdf]" in printed
