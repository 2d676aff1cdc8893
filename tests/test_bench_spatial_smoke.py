"""The spatial benchmark runs end to end on tiny grids (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_spatial.py"


def test_bench_spatial_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_spatial", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dbscan_grid" in printed and "scipy.ndimage.label" in printed
    rows = json.loads(out.read_text())["rows"]
    kernels = {r["kernel"] for r in rows}
    assert {"gdbn 3x3 squeeze", "label_components 8", "dbscan_grid", "nnr_residuals 5x5"} <= kernels
    assert all(r["rate"] > 0 and r["wall_s"] > 0 for r in rows)
