"""notebooks/02-genealogy.ipynb runs top to bottom on the generated `ci` scenario."""

from __future__ import annotations

import os

from helpers import NOTEBOOKS, assert_stored_without_outputs, run_notebook

NOTEBOOK = NOTEBOOKS / "02-genealogy.ipynb"


def test_notebook_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_notebook_02_runs_on_the_ci_scenario(tmp_path, monkeypatch):
    monkeypatch.delenv("BACKEND_FAB_LAKE", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the inline backend shows the figures
    _, text, images = run_notebook(NOTEBOOK, tmp_path)
    assert "traced position = ground truth for 100.0%" in text
    assert "round trip exact: True" in text
    assert "best lift" in text
    assert len(images) == 2
    assert os.environ.get("BACKEND_FAB_LAKE") is None
