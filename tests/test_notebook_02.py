"""notebooks/02-genealogy.ipynb runs top to bottom on the generated `ci` scenario."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02-genealogy.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_02_runs_on_the_ci_scenario(tmp_path, monkeypatch):
    monkeypatch.delenv("BACKEND_FAB_LAKE", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the inline backend shows the figures
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except Exception as exc:  # show which cell failed and why
        pytest.fail(f"notebook 02 failed: {exc}")
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "traced position = ground truth for 100.0%" in text
    assert "round trip exact: True" in text
    assert "best lift" in text
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if "image/png" in out.get("data", {})
    ]
    assert len(images) == 2
    assert os.environ.get("BACKEND_FAB_LAKE") is None
