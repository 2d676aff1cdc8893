"""Helpers shared by tests: where the shared sample data is, and skipping when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test saying why it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"{path} is absent: the shared sample data sits beside the project checkout only"
        )
    return path


NOTEBOOKS = REPO / "notebooks"


def assert_stored_without_outputs(notebook: Path) -> None:
    """A notebook is committed clean: no outputs, no execution counts."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, notebook.name


def run_notebook(notebook: Path, cwd: Path):
    """Execute ``notebook`` top to bottom in ``cwd`` (a failing cell fails the test, naming the
    notebook and the error); returns ``(nb, text, images)``: the executed notebook, its stream
    and text outputs joined, and its PNG outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    try:
        client.execute()
    except Exception as exc:  # show which cell failed and why
        pytest.fail(f"{notebook.name} failed: {exc}")
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "\n".join(out.get("text", "") for out in outputs)
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    return nb, text, images


BENCHMARKS = REPO / "benchmarks"


def run_bench(name: str, tmp_path: Path, *args: str, timeout: float = 600) -> tuple[str, dict]:
    """Run ``benchmarks/bench_<name>.py --smoke ARGS --json FILE`` in a fresh interpreter; it must
    exit 0. Returns its standard output and the figures it wrote."""
    import json
    import subprocess
    import sys

    out = tmp_path / f"bench_{name}.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / f"bench_{name}.py"),
            "--smoke",
            *args,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout, json.loads(out.read_text())
