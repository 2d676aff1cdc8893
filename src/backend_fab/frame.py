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
    "canonical_xy": "backend_fab.wafer:canonical_xy",
    "add_geometry": "backend_fab.wafer:add_geometry",
    "lot_grids": "backend_fab.wafer:lot_grids",
    "clusters": "backend_fab.spatial:cluster_table",
    "cluster_labels": "backend_fab.spatial:cluster_labels",
    "spatial_stats": "backend_fab.spatial:wafer_spatial_stats",
    "stacked_fail_rate": "backend_fab.spatial:stacked_fail_rate",
    "reticle_fail_rate": "backend_fab.spatial:reticle_fail_rate",
    "window_method": "backend_fab.spatial:window_method",
    "gdbn_flags": "backend_fab.kernels.screens:gdbn_flags",
    "zpat_flags": "backend_fab.kernels.screens:zpat_flags",
    "cluster_ink_flags": "backend_fab.kernels.screens:cluster_ink_flags",
    "nnr": "backend_fab.kernels.screens:nnr_table",
    # bins and yield (backend_fab.bins; figures of backend_fab.plot that take the die table)
    "resolve_retests": "backend_fab.bins:resolve_retests",
    "final_die": "backend_fab.bins:select_instances",
    "yield_summary": "backend_fab.bins:yield_summary",
    "bin_pareto": "backend_fab.bins:bin_pareto",
    "retest_recovery": "backend_fab.bins:retest_recovery",
    "stacked_map": "backend_fab.bins:stacked_map",
    "hot_spots": "backend_fab.bins:stacked_hot_spots",
    "site_comparison": "backend_fab.bins:site_comparison",
    "yield_trend": "backend_fab.bins:yield_trend",
    "control_chart": "backend_fab.bins:control_chart",
    "wafer_map": "backend_fab.plot:wafer_map",
    "lot_gallery": "backend_fab.plot:lot_gallery",
    # limits (backend_fab.limits)
    "syl_sbl_limits": "backend_fab.limits:syl_sbl_limits",
    "evaluate_limits": "backend_fab.limits:evaluate_limits",
    "limit_history": "backend_fab.limits:history_points",
    "static_pat_limits": "backend_fab.limits:static_pat_limits",
    # PAT (backend_fab.pat)
    "pat": "backend_fab.pat:run_pat_frames",
    # genealogy and assembly (backend_fab.genealogy / backend_fab.assembly)
    "trace": "backend_fab.genealogy:trace",
    "traced_units": "backend_fab.genealogy:traced_units",
    "lot_lineage": "backend_fab.genealogy:lot_lineage",
    "lineage_conflicts": "backend_fab.genealogy:lineage_conflicts",
    "fails_on_wafer": "backend_fab.genealogy:fails_on_wafer",
    "neighbourhood_scores": "backend_fab.genealogy:neighbourhood_scores",
    "screen_effectiveness": "backend_fab.genealogy:screen_effectiveness",
    "screen_tradeoff": "backend_fab.genealogy:screen_tradeoff",
    "step_yields": "backend_fab.assembly:step_yields",
    "rolled_yield": "backend_fab.assembly:rolled_yield",
    "reject_pareto": "backend_fab.assembly:reject_pareto",
    "commonality": "backend_fab.assembly:commonality",
    "assembly_outcomes": "backend_fab.assembly:assembly_outcomes",
    "strip_position_effects": "backend_fab.assembly:strip_position_effects",
    "wafer_origin_effects": "backend_fab.assembly:wafer_origin_effects",
    # patterns (backend_fab.patterns)
    "classify_wafers": "backend_fab.patterns.classify:classify_wafers",
    "pattern_features": "backend_fab.patterns.features:pattern_features",
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
