"""notebooks/01-yield-bins-pat.ipynb: built by its script, runs top to bottom on the ci fab."""

from __future__ import annotations

import importlib.util
import os

import nbformat
from helpers import NOTEBOOKS, assert_stored_without_outputs, run_notebook
from yield_fixtures import ci_lake

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
    assert_stored_without_outputs(NOTEBOOK)


def test_notebook_runs_on_the_ci_fab(tmp_path, monkeypatch):
    import shutil

    lake = ci_lake()
    # the notebook writes limits and dispositions: give it its own copy of the lake
    copy = tmp_path / "lake"
    shutil.copytree(lake.path, copy)
    monkeypatch.setenv("BACKEND_FAB_LAKE", str(copy))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb, _, images = run_notebook(NOTEBOOK, tmp_path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert len(images) >= 8
    assert os.environ["BACKEND_FAB_LAKE"] == str(copy)
