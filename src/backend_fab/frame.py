"""The ``fab`` namespaces: ``df.fab.<name>(...)`` / ``lf.fab.<name>(...)``.

Thin aliases over plain functions of the analytics modules (one way to do each thing). The
namespace is registered when this module is imported (``import backend_fab.frame`` or any
``backend_fab`` analytics module that needs it); the modules behind the aliases load lazily.
A LazyFrame method returns what the function returns (a LazyFrame for pipelines); the DataFrame
namespace runs the same function on ``df.lazy()`` and collects LazyFrame results.
"""

from __future__ import annotations

import importlib

import polars as pl

# alias -> "module:function". Each area adds its aliases in its own block.
ALIASES: dict[str, str] = {
    # wafer grids and spatial (backend_fab.wafer / backend_fab.spatial)
    # bins and yield (backend_fab.bins)
    # limits (backend_fab.limits)
    # PAT (backend_fab.pat)
    # genealogy and assembly (backend_fab.genealogy / backend_fab.assembly)
    # patterns (backend_fab.patterns)
}


def _resolve(alias: str):
    module, func = ALIASES[alias].split(":")
    return getattr(importlib.import_module(module), func)


class _FabNamespace:
    def __init__(self, frame):
        self._frame = frame

    def __dir__(self):
        return sorted(ALIASES)

    def __getattr__(self, alias: str):
        if alias not in ALIASES:
            raise AttributeError(
                f"fab has no method {alias!r}; available: {', '.join(sorted(ALIASES))}"
            )
        func = _resolve(alias)
        frame = self._frame
        lazy = frame.lazy() if isinstance(frame, pl.DataFrame) else frame

        def method(*args, **kwargs):
            out = func(lazy, *args, **kwargs)
            if isinstance(frame, pl.DataFrame) and isinstance(out, pl.LazyFrame):
                return out.collect()
            return out

        method.__doc__ = func.__doc__
        method.__name__ = alias
        return method


@pl.api.register_lazyframe_namespace("fab")
class LazyFab(_FabNamespace):
    """``lf.fab``: backend-fab analyses on a LazyFrame."""


@pl.api.register_dataframe_namespace("fab")
class DataFab(_FabNamespace):
    """``df.fab``: backend-fab analyses on a DataFrame (results collected)."""
