"""notebooks/03-patterns.ipynb runs top to bottom (built by notebooks/build_03_patterns.py)."""

from __future__ import annotations

from helpers import NOTEBOOKS, assert_stored_without_outputs, run_notebook

NOTEBOOK = NOTEBOOKS / "03-patterns.ipynb"


def test_notebook_03_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_notebook_03_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the inline backend shows the figure
    _, text, images = run_notebook(NOTEBOOK, tmp_path)
    assert "features per wafer" in text
    assert "wafers classified as drawn" in text
    assert "own model: out-of-bag accuracy" in text
    assert ("real maps: exact match" in text) or ("skipped" in text)
    assert len(images) == 1
