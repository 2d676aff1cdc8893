"""Shared, cached inputs for the wafer-pattern tests: a small synthetic set and a model on it."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def small_maps():
    """40 synthetic maps per class on small layouts (120-1500 die), seed 7."""
    from backend_fab.patterns.training import generate_maps

    return generate_maps(40, seed=7, lot_size=20, die_range=(120, 1500))


@lru_cache(maxsize=1)
def small_features() -> np.ndarray:
    return small_maps().features()


@lru_cache(maxsize=1)
def small_model():
    """A 40-tree classifier fitted on :func:`small_maps` with feature names."""
    import polars as pl

    from backend_fab.patterns import FEATURE_NAMES, WaferPatternClassifier

    X = pl.DataFrame(small_features(), schema=list(FEATURE_NAMES), orient="row")
    return WaferPatternClassifier(n_estimators=40, random_state=1).fit(X, small_maps().label)


def disc_layout(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Die (x, y) of a round n x n map, centred on the origin (square die)."""
    c = np.arange(n) - (n - 1) / 2.0
    gx, gy = np.meshgrid(c, c)
    inside = gx**2 + gy**2 <= (n / 2.0) ** 2
    return (gx[inside] + (n - 1) / 2.0).astype(np.int32), (gy[inside] + (n - 1) / 2.0).astype(
        np.int32
    )
