"""backend-fab: back-end semiconductor yield analytics (wafer sort, assembly, final test).

``import backend_fab as bf`` is light: submodules load on first use, and neither matplotlib nor
scikit-learn is imported until a figure or a classifier is asked for.
"""

from __future__ import annotations

import importlib

from backend_fab import frame as _frame  # noqa: F401  (registers df.fab / lf.fab)
from backend_fab.errors import (
    BackendFabError,
    LakeError,
    RecipeError,
    SchemaError,
    StdfError,
)

__version__ = "0.1.0"

# public name -> module that defines it; resolved lazily by __getattr__
_LAZY = {
    "Lake": "backend_fab.lake",
    "validate": "backend_fab.schema",
    "read_stdf": "backend_fab.io.stdf",
    "iter_stdf": "backend_fab.io.stdf",
    "write_stdf": "backend_fab.io.stdf_write",
    "write_records": "backend_fab.io.stdf_write",
    "ingest_paths": "backend_fab.ingest",
    "StdfData": "backend_fab.io.stdf",
    "generate_fab": "backend_fab.synth",
    "run_pat": "backend_fab.pat",
    "classify_wafers": "backend_fab.patterns",
    "WaferPatternClassifier": "backend_fab.patterns",
    "read_e142": "backend_fab.io.maps",
    "write_e142": "backend_fab.io.maps",
    "read_g85": "backend_fab.io.maps",
    "write_g85": "backend_fab.io.maps",
    "read_sinf": "backend_fab.io.maps",
    "run_nightly": "backend_fab.nightly",
    "trace": "backend_fab.genealogy",
    "screen_effectiveness": "backend_fab.genealogy",
}

_SUBMODULES = {
    "schema",
    "lake",
    "synth",
    "wafer",
    "bins",
    "limits",
    "pat",
    "spatial",
    "genealogy",
    "assembly",
    "nightly",
    "report",
    "plot",
    "frame",
    "engines",
    "kernels",
    "io",
    "patterns",
}

__all__ = [
    "BackendFabError",
    "LakeError",
    "RecipeError",
    "SchemaError",
    "StdfError",
    "__version__",
    *sorted(_LAZY),
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"backend_fab.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'backend_fab' has no attribute {name!r}")
