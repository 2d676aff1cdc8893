"""The spatial benchmark runs end to end on tiny grids (no timing assertions)."""

from __future__ import annotations

from helpers import run_bench


def test_bench_spatial_smoke(tmp_path):
    printed, figures = run_bench("spatial", tmp_path)
    assert "dbscan_grid" in printed and "scipy.ndimage.label" in printed
    rows = figures["rows"]
    kernels = {r["kernel"] for r in rows}
    assert {"gdbn 3x3 squeeze", "label_components 8", "dbscan_grid", "nnr_residuals 5x5"} <= kernels
    assert all(r["rate"] > 0 and r["wall_s"] > 0 for r in rows)
