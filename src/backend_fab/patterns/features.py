"""Die tables -> wafer-map pattern features (one row per wafer), on top of the numba kernels.

The features themselves are defined in :mod:`backend_fab_kernels.wafer_features` (Wu, Jang & Chen,
IEEE TSM 28(1), 2015: 13 density regions, 40 Radon, 6 geometry; plus cluster features from
:mod:`backend_fab_kernels.components`, a join-count correlogram, radial and angular profiles).
This module is the polars side: which rows are die, which die fail, and the grouping by wafer.

Input die table: ``lot_id``, ``wafer_id``, ``x``, ``y`` and the fail flag, taken from

1. a boolean ``fail`` column when there is one (null = fail), else
2. ``hbin``: a die fails when its bin is not in ``pass_bins`` (default ``{1}``; null = fail), else
3. a boolean ``passed`` column (null = fail).

When a ``final`` column is present only rows with ``final`` true are used (the retest that
counts). Null ``lot_id``, ``wafer_id``, ``x`` or ``y`` raise :class:`~backend_fab.errors.
SchemaError`; so does a wafer with the same ``(x, y)`` twice, unless ``duplicates="last"`` keeps the
last row of each position (table order).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl
from backend_fab_kernels.wafer_features import FEATURE_GROUPS, FEATURE_NAMES

from backend_fab.errors import SchemaError

__all__ = [
    "FEATURES_VERSION",
    "FEATURE_GROUPS",
    "FEATURE_NAMES",
    "die_fail_frame",
    "feature_matrix",
    "pattern_features",
]

#: Bumped whenever a feature's definition changes (models trained before are then refused).
FEATURES_VERSION = 2

_KEYS = ("lot_id", "wafer_id")


def _fail_expr(schema: pl.Schema, pass_bins: Iterable[int], bin_column: str) -> pl.Expr:
    if "fail" in schema:
        if schema["fail"] != pl.Boolean:
            raise SchemaError(
                f"die table: column 'fail' must be Boolean, got {schema['fail']}",
                table="die",
                column="fail",
            )
        return pl.col("fail").fill_null(True)
    if bin_column in schema:
        if not schema[bin_column].is_integer():
            raise SchemaError(
                f"die table: column {bin_column!r} must hold integer bins, got {schema[bin_column]}",
                table="die",
                column=bin_column,
            )
        bins = sorted({int(b) for b in pass_bins})
        if not bins:
            raise ValueError("pass_bins must name at least one passing bin")
        return (~pl.col(bin_column).is_in(bins)).fill_null(True)
    if "passed" in schema:
        return (~pl.col("passed")).fill_null(True)
    raise SchemaError(
        f"die table: need a boolean 'fail' column, a bin column ({bin_column!r}) or 'passed' to "
        f"tell failing die; columns are {list(schema)}",
        table="die",
    )


def die_fail_frame(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    pass_bins: Iterable[int] = (1,),
    bin_column: str = "hbin",
) -> pl.LazyFrame:
    """The die table reduced to ``lot_id, wafer_id, x, y, fail`` (lazy; see the module docstring)."""
    lf = die.lazy() if isinstance(die, pl.DataFrame) else die
    if not isinstance(lf, pl.LazyFrame):
        raise TypeError(f"die must be a polars LazyFrame or DataFrame, got {type(die).__name__}")
    schema = lf.collect_schema()
    missing = [c for c in (*_KEYS, "x", "y") if c not in schema]
    if missing:
        raise SchemaError(
            f"die table: missing column(s) {missing}; columns are {list(schema)}", table="die"
        )
    for c in ("x", "y"):
        if not schema[c].is_integer():
            raise SchemaError(
                f"die table: column {c!r} must hold integer die coordinates, got {schema[c]}",
                table="die",
                column=c,
            )
    fail = _fail_expr(schema, pass_bins, bin_column)
    if "final" in schema:
        lf = lf.filter(pl.col("final").fill_null(True))
    return lf.select(
        *_KEYS, pl.col("x").cast(pl.Int64), pl.col("y").cast(pl.Int64), fail.alias("fail")
    )


def feature_matrix(
    df: pl.DataFrame, *, duplicates: str = "raise"
) -> tuple[pl.DataFrame, np.ndarray]:
    """Features of every wafer of a collected ``die_fail_frame``.

    Returns ``(wafers, X)``: ``wafers`` has ``lot_id, wafer_id, n_die, n_fail`` (sorted by lot
    and wafer), ``X`` is ``(n_wafers, len(FEATURE_NAMES))`` float64.
    """
    from backend_fab_kernels.wafer_features import N_FEATURES, wafer_features

    if duplicates not in ("raise", "last"):
        raise ValueError(f"duplicates must be 'raise' or 'last', got {duplicates!r}")
    for c in (*_KEYS, "x", "y"):
        n_null = df.get_column(c).null_count()
        if n_null:
            raise SchemaError(
                f"die table: {n_null} row(s) with a null {c!r}; drop or fix them first",
                table="die",
                column=c,
            )
    if duplicates == "last":
        df = df.unique(subset=[*_KEYS, "x", "y"], keep="last", maintain_order=True)
    if df.height == 0:
        empty = df.select(*_KEYS).with_columns(
            pl.lit(0, dtype=pl.Int64).alias("n_die"), pl.lit(0, dtype=pl.Int64).alias("n_fail")
        )
        return empty, np.empty((0, N_FEATURES))
    # die tables usually arrive grouped by wafer: find the runs, and sort only when a wafer's
    # rows are split (the features do not depend on the order of the die inside a wafer)
    starts, heads = _runs(df)
    if heads.is_duplicated().any():
        df = df.sort(list(_KEYS), maintain_order=True)
        starts, heads = _runs(df)
    offsets = np.append(starts, df.height).astype(np.int64)
    fail = df.get_column("fail").to_numpy()
    wafers = heads.with_columns(
        pl.Series("n_die", np.diff(offsets), dtype=pl.Int64),
        pl.Series("n_fail", np.add.reduceat(fail.astype(np.int64), starts), dtype=pl.Int64),
    )
    x = df.get_column("x").to_numpy()
    y = df.get_column("y").to_numpy()
    try:
        X = wafer_features(x, y, fail, offsets)
    except ValueError as exc:
        if "more than once" in str(exc) or "span" in str(exc):
            w = _wafer_of(exc, offsets)
            where = (
                ""
                if w is None
                else (f" (lot {wafers['lot_id'][w]!r}, wafer {wafers['wafer_id'][w]!r})")
            )
            raise SchemaError(f"die table{where}: {exc}", table="die") from exc
        raise
    order = wafers.with_row_index("_i").sort(list(_KEYS)).get_column("_i").to_numpy()
    return wafers[order], X[order]


def _runs(df: pl.DataFrame) -> tuple[np.ndarray, pl.DataFrame]:
    """Start row of every run of equal (lot_id, wafer_id), and those keys."""
    rle = df.select(pl.struct(*_KEYS).rle_id()).to_series().to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], rle[1:] != rle[:-1])))
    return starts, df.select(*_KEYS)[starts]


def _wafer_of(exc: ValueError, offsets: np.ndarray) -> int | None:
    import re

    m = re.search(r"wafer group (\d+)", str(exc)) or re.search(r"starting at row (\d+)", str(exc))
    if not m:
        return None
    k = int(m.group(1))
    if "starting at row" in m.group(0):
        return int(np.searchsorted(offsets, k, side="right") - 1)
    return k


def pattern_features(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    pass_bins: Iterable[int] = (1,),
    bin_column: str = "hbin",
    duplicates: str = "raise",
) -> pl.LazyFrame:
    """One row per wafer: ``lot_id, wafer_id, n_die, n_fail`` and every pattern feature
    (:data:`FEATURE_NAMES`, float64). Lazy: the work runs when the result is collected.
    """
    lf = die_fail_frame(die, pass_bins=pass_bins, bin_column=bin_column)
    schema = lf.collect_schema()
    out_schema = {
        "lot_id": schema["lot_id"],
        "wafer_id": schema["wafer_id"],
        "n_die": pl.Int64,
        "n_fail": pl.Int64,
        **dict.fromkeys(FEATURE_NAMES, pl.Float64),
    }

    def run(df: pl.DataFrame) -> pl.DataFrame:
        wafers, X = feature_matrix(df, duplicates=duplicates)
        feats = pl.DataFrame(X, schema=list(FEATURE_NAMES), orient="row")
        return pl.concat([wafers, feats], how="horizontal")

    return lf.map_batches(run, schema=out_schema)
