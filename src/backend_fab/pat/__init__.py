"""PAT engine: static, dynamic and geographic screens driven by a hashed TOML recipe.

``run_pat(lake_or_frames, recipe) -> PatResult`` (see :mod:`backend_fab.pat.engine`);
recipes: :func:`load_recipe`, :func:`default_recipe` (see :mod:`backend_fab.pat.recipe`).
"""

from __future__ import annotations

from backend_fab.pat.engine import (
    SHAPE_FACTORS,
    PatResult,
    classify_shape,
    run_pat,
    run_pat_frames,
)
from backend_fab.pat.recipe import REASON_BITS, RULES, SPEC, Recipe, default_recipe, load_recipe

__all__ = [
    "REASON_BITS",
    "RULES",
    "SHAPE_FACTORS",
    "SPEC",
    "PatResult",
    "Recipe",
    "classify_shape",
    "default_recipe",
    "load_recipe",
    "run_pat",
    "run_pat_frames",
]
