"""Import boundaries: `import backend_fab` is light; the kernels package is numpy + numba only."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('@@' + ' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.rsplit("@@", 1)[1].split())


def _top(mods: set[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


def test_backend_fab_import_is_light():
    tops = _top(_modules_after("import backend_fab, backend_fab.frame, backend_fab.lake"))
    for heavy in ("matplotlib", "sklearn", "dask", "distributed", "scipy"):
        assert heavy not in tops, f"import backend_fab pulled in {heavy}"


def test_kernels_import_only_numpy_and_numba():
    import pkgutil

    import backend_fab_kernels

    names = [m.name for m in pkgutil.iter_modules(backend_fab_kernels.__path__)]
    code = (
        "\n".join(f"import backend_fab_kernels.{n}" for n in names) or "import backend_fab_kernels"
    )
    # numba itself imports scipy when it is installed: judge only what the kernels add
    baseline = _top(_modules_after("import numpy, numba"))
    added = _top(_modules_after(code)) - baseline
    for banned in ("polars", "pyarrow", "sklearn", "matplotlib", "backend_fab", "scipy", "pandas"):
        assert banned not in added, f"backend_fab_kernels imports {banned}"


def test_cli_help_is_quick_and_light():
    tops = _top(_modules_after("from backend_fab.cli import main\nmain(['--help'])"))
    for heavy in ("matplotlib", "sklearn", "dask", "numba", "deltalake"):
        assert heavy not in tops, f"backend-fab --help imports {heavy}"
