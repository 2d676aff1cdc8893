"""``classify_wafers``: die table in, one pattern class per wafer out (lazy)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl

from backend_fab.errors import PatternModelError

__all__ = ["DEFAULT_THRESHOLD", "UNKNOWN", "classify_wafers", "resolve_model"]

#: Below this calibrated probability a wafer is answered ``"unknown"`` (see ``evaluate.py`` for
#: the coverage / accuracy trade-off it gives on synthetic and real maps).
DEFAULT_THRESHOLD = 0.4
#: The answer for a wafer no class fits well enough.
UNKNOWN = "unknown"


def resolve_model(model=None):
    """``None`` -> the shipped default model; a path -> :meth:`WaferPatternClassifier.load`;
    a fitted :class:`WaferPatternClassifier` as is. Checks that it was trained on the
    pattern features."""
    from backend_fab.patterns.features import FEATURE_NAMES
    from backend_fab.patterns.model import WaferPatternClassifier, default_model

    if model is None:
        model = default_model()
    elif isinstance(model, str | Path):
        model = WaferPatternClassifier.load(model)
    if not hasattr(model, "predict_proba") or not hasattr(model, "classes_"):
        raise PatternModelError(
            f"model must be a fitted WaferPatternClassifier or a path to one, got {type(model).__name__}"
        )
    names = getattr(model, "feature_names_in_", None)
    if names is not None and list(names) != list(FEATURE_NAMES):
        raise PatternModelError(
            "the model was trained on other features than backend_fab.patterns.FEATURE_NAMES; "
            "retrain it on pattern_features() output"
        )
    if getattr(model, "n_features_in_", len(FEATURE_NAMES)) != len(FEATURE_NAMES):
        raise PatternModelError(
            f"the model expects {model.n_features_in_} features, the pattern features are "
            f"{len(FEATURE_NAMES)}; retrain it on pattern_features() output"
        )
    return model


def classify_wafers(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    model=None,
    threshold: float | None = DEFAULT_THRESHOLD,
    pass_bins: Iterable[int] = (1,),
    bin_column: str = "hbin",
    top: int = 3,
    duplicates: str = "raise",
) -> pl.LazyFrame:
    """Classify the failure pattern of every wafer of a die table (WM-811K classes).

    ``die``: columns ``lot_id``, ``wafer_id``, ``x``, ``y`` and ``hbin`` (a die passes when its
    bin is in ``pass_bins``, default ``{1}``) or a boolean ``fail`` column; details in
    :mod:`backend_fab.patterns.features`. ``model``: ``None`` for the shipped model, a path to a
    saved model, or a fitted :class:`~backend_fab.patterns.WaferPatternClassifier`. Wafers whose best
    calibrated probability is below ``threshold`` get ``pattern_class = "unknown"`` (``None``:
    always a class).

    Returns a LazyFrame (the work runs on collect), one row per wafer, sorted by lot and wafer:
    ``lot_id``, ``wafer_id``, ``n_die``, ``fail_fraction``, ``pattern_class`` (String),
    ``probability`` (calibrated probability of the best class), ``runner_up`` and
    ``runner_up_probability`` (the second class), ``top_features`` (List[String]: the ``top``
    features that pushed the best class most, by forest contribution).
    """
    from backend_fab.patterns.features import FEATURE_NAMES, die_fail_frame, feature_matrix

    if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must lie in [0, 1] or be None, got {threshold!r}")
    if int(top) < 0:
        raise ValueError(f"top must be >= 0, got {top!r}")
    clf = resolve_model(model)
    lf = die_fail_frame(die, pass_bins=pass_bins, bin_column=bin_column)
    schema = lf.collect_schema()
    out_schema = {
        "lot_id": schema["lot_id"],
        "wafer_id": schema["wafer_id"],
        "n_die": pl.Int64,
        "fail_fraction": pl.Float64,
        "pattern_class": pl.String,
        "probability": pl.Float64,
        "runner_up": pl.String,
        "runner_up_probability": pl.Float64,
        "top_features": pl.List(pl.String),
    }
    names = list(FEATURE_NAMES)
    classes = np.asarray([str(c) for c in clf.classes_], dtype=object)
    by_name = getattr(clf, "feature_names_in_", None) is not None

    def run(df: pl.DataFrame) -> pl.DataFrame:
        wafers, X = feature_matrix(df, duplicates=duplicates)
        n = wafers.height
        if n == 0:
            return pl.DataFrame(schema=out_schema)
        Xin = pl.DataFrame(X, schema=names, orient="row") if by_name else X
        proba = clf.predict_proba(Xin)
        order = np.argsort(-proba, axis=1, kind="stable")
        best = order[:, 0]
        p_best = proba[np.arange(n), best]
        label = classes[best].copy()
        if threshold is not None:
            label[p_best < float(threshold)] = UNKNOWN
        if proba.shape[1] > 1:
            second = order[:, 1]
            runner = classes[second]
            p_second = proba[np.arange(n), second]
        else:
            runner = np.full(n, None, dtype=object)
            p_second = np.full(n, np.nan)
        if top > 0:
            _, explained = clf.explain(Xin, top=top)
            tops = [[names[j] for j, _ in row] for row in explained]
        else:
            tops = [[] for _ in range(n)]
        return wafers.select(
            "lot_id",
            "wafer_id",
            "n_die",
            (pl.col("n_fail") / pl.col("n_die")).alias("fail_fraction"),
        ).with_columns(
            pl.Series("pattern_class", label.tolist(), dtype=pl.String),
            pl.Series("probability", p_best, dtype=pl.Float64),
            pl.Series("runner_up", runner.tolist(), dtype=pl.String),
            pl.Series("runner_up_probability", p_second, dtype=pl.Float64),
            pl.Series("top_features", tops, dtype=pl.List(pl.String)),
        )

    return lf.map_batches(run, schema=out_schema)
