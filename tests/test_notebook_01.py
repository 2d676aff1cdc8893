"""notebooks/01-yield-bins-pat.ipynb: built by its script, runs top to bottom on the ci fab."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import nbformat
from yield_fixtures import ci_lake

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "01-yield-bins-pat.ipynb"


def _builder():
    spec = importlib.util.spec_from_file_location(
        "build_01", NOTEBOOKS / "build_01_yield_bins_pat.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_is_what_the_script_writes(tmp_path):
    out = tmp_path / "nb.ipynb"
    _builder().main([str(out)])
    assert nbformat.read(out, as_version=4) == nbformat.read(NOTEBOOK, as_version=4)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_notebook_runs_on_the_ci_fab(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    lake = ci_lake()
    # the notebook writes limits and dispositions: give it its own copy of the lake
    import shutil

    copy = tmp_path / "lake"
    shutil.copytree(lake.path, copy)
    monkeypatch.setenv("BACKEND_FAB_LAKE", str(copy))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    images = sum(
        1
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    )
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert images >= 8
    assert os.environ["BACKEND_FAB_LAKE"] == str(copy)
