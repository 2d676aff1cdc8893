"""Geographic screens on die tables: GDBN, NNR, Z-PAT and cluster inking.

Each function takes a die (or results) table as a LazyFrame and returns it, lazily, with result
columns added to every row; the work runs lot by lot (``group_by("lot_id").map_groups``), so the
output comes lot after lot. Rows that are not placed on the grid (``final`` false, or a null x/y
under ``null_xy="drop"``) get null results. Coordinates must be canonical
(:func:`backend_fab.wafer.canonical_xy`). The kernels and their definitions are in
``backend_fab_kernels`` (``gdbn``, ``nnr``, ``zstack``, ``inking``); bins map to good/bad as in
:mod:`backend_fab.kernels.grids`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from backend_fab.errors import KernelInputError
from backend_fab.layout import Layout

__all__ = ["cluster_ink_flags", "gdbn_flags", "nnr_table", "ring_mask", "zpat_flags"]

#: Cells of one NNR call (tests x wafers x ny x nx); larger lots run in chunks of tests.
NNR_CHUNK_CELLS = 25_000_000


def _placed(df: pl.DataFrame, final_only: bool) -> np.ndarray:
    if final_only and "final" in df.columns:
        return df.get_column("final").fill_null(True).to_numpy()
    return np.ones(df.height, dtype=bool)


def _grid_rows(df, final_only, **kw):
    """(WaferGrid, LotStack, placed mask) of one lot's frame."""
    from backend_fab.wafer import stack_from_frame

    placed = _placed(df, final_only)
    sub = df.filter(pl.Series(placed)) if not placed.all() else df
    wg, stack = stack_from_frame(sub, **kw)
    return wg, stack, placed


def _spread(placed: np.ndarray, values: np.ndarray, dtype) -> pl.Series:
    """Per placed row values -> a full-length series with nulls for rows not placed."""
    out = np.zeros(placed.size, dtype=values.dtype)
    out[placed] = values
    s = pl.Series(out).cast(dtype)
    if placed.all():
        return s
    return pl.select(pl.when(pl.Series(placed)).then(s).otherwise(None)).to_series()


def ring_mask(grid, rings: tuple[str, int]) -> np.ndarray:
    """(ny, nx) bool mask of the cells in the outer or inner rings of a lot's grid.

    ``rings = ("outer", n)``: rings 0..n-1 (the outermost ``n`` rings of die); ``("inner", n)``:
    rings ``>= n``. Rings come from the layout (:meth:`Layout.ring_index`) when the grid has one,
    else from the union of the lot's die positions (the same peeling definition).
    """
    side, n = rings
    if side not in ("outer", "inner") or not isinstance(n, int) or n < 0:
        raise ValueError(f"ring_mask: rings must be ('outer' | 'inner', n >= 0), got {rings!r}")
    if grid.layout is not None:
        ring = grid.ring_grid()
    else:
        from scipy import ndimage

        present = grid.die_mask().any(axis=0)
        padded = np.pad(present, 1)
        dist = ndimage.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1]
        ring = np.where(present, dist - 1, -1)
    return (ring >= 0) & (ring < n) if side == "outer" else ring >= n


def _with(df: pl.DataFrame, cols: dict[str, pl.Series]) -> pl.DataFrame:
    return df.with_columns([s.alias(name) for name, s in cols.items()])


def gdbn_flags(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    algorithm: str = "squeeze",
    window: int = 3,
    fail_count: int = 2,
    ring_weights=None,
    threshold: float = 8.0,
    edge: str | None = None,
    edge_scale: float = 1.1,
    edge_type: str = "both",
    rings: tuple[str, int] | None = None,
    layout: Layout | None = None,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    final_only: bool = True,
) -> pl.LazyFrame:
    """GDBN (DOMAIN §2.3) on a die table: adds ``gdbn_score`` (Float64: bad-neighbour count or
    weighted sum, edge scaling applied; null for die that are not candidates) and ``gdbn_flag``
    (Boolean: a good die in a bad neighbourhood).

    Parameters as :func:`backend_fab_kernels.gdbn.gdbn`; ``rings`` restricts the candidates to
    ``("outer", n)`` / ``("inner", n)`` rings (:func:`ring_mask`). Bad bins default to
    "everything but the pass bins" (Galaxy "0, 2-65535" with pass bin 1).
    """
    from backend_fab_kernels.gdbn import gdbn

    def run(df: pl.DataFrame) -> pl.DataFrame:
        wg, stack, placed = _grid_rows(
            df, final_only, kind="state", bin_column=bin_column, pass_bins=pass_bins,
            bad_bins=bad_bins, layout=layout, null_xy=null_xy, duplicates=duplicates,
        )  # fmt: skip
        mask = ring_mask(wg, rings) if rings is not None else None
        flags, score = gdbn(
            wg.grid, algorithm, window=window, fail_count=fail_count, ring_weights=ring_weights,
            threshold=threshold, edge=edge, edge_scale=edge_scale, edge_type=edge_type,
            ring_mask=mask, return_score=True,
        )  # fmt: skip
        f = stack.gather(flags, fill=0).astype(bool)
        s = stack.gather(score, fill=np.nan)
        s_series = _spread(placed, s, pl.Float64).fill_nan(None)
        on = _spread(placed, stack.on_grid, pl.Boolean)
        flag = _spread(placed, f, pl.Boolean)
        flag = pl.select(pl.when(on).then(flag).otherwise(None)).to_series()
        return _with(df, {"gdbn_score": s_series, "gdbn_flag": flag})

    return _per_lot(die, run, {"gdbn_score": pl.Float64, "gdbn_flag": pl.Boolean})


def _per_lot(die, fn, new: dict) -> pl.LazyFrame:
    lf = die.lazy()
    schema = lf.collect_schema()
    if "lot_id" not in schema:
        raise KernelInputError("die table: missing column 'lot_id'")
    out = dict(schema)
    out.update(new)
    return lf.group_by("lot_id").map_groups(fn, schema=out)


def zpat_flags(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    threshold_pct: float | None = None,
    alpha: float | None = None,
    method: str = "bonferroni",
    layout: Layout | None = None,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    final_only: bool = True,
) -> pl.LazyFrame:
    """Z-PAT (DOMAIN §2.5) on a die table: adds ``zpat_fail_count`` (Int32: wafers of the lot
    failing at the die's location), ``zpat_p_value`` (Float64: binomial upper tail at the lot
    fail rate) and ``zpat_flag`` (Boolean: the location is rejected).

    Give ``threshold_pct`` (Galaxy rule: reject when the count reaches ``ceil(N·T/100)``; ``<= 0``
    is off), or ``alpha`` (binomial rule, ``method`` "bonferroni" or "bh"), or both (either
    rejects). The PAT engine decides whether to ink the location on every wafer or only where the
    die is still good.
    """
    from backend_fab_kernels.zstack import zpat_binomial, zpat_threshold, zstack

    if threshold_pct is None and alpha is None:
        raise ValueError("zpat_flags: give threshold_pct, alpha, or both")

    def run(df: pl.DataFrame) -> pl.DataFrame:
        wg, stack, placed = _grid_rows(
            df, final_only, kind="state", bin_column=bin_column, pass_bins=pass_bins,
            bad_bins=bad_bins, layout=layout, null_xy=null_xy, duplicates=duplicates,
        )  # fmt: skip
        fails, tested = zstack(wg.grid)
        flag = np.zeros(fails.shape, dtype=bool)
        if threshold_pct is not None:
            flag |= zpat_threshold(fails, wg.n_wafers, threshold_pct)
        bin_flags, pv = zpat_binomial(fails, tested, alpha if alpha is not None else 0.05, method)
        if alpha is not None:
            flag |= bin_flags
        planes = np.broadcast_to
        shape = wg.grid.shape
        cnt = stack.gather(planes(fails, shape), fill=0)
        p = stack.gather(planes(pv, shape), fill=np.nan)
        fl = stack.gather(planes(flag, shape), fill=False)
        on = _spread(placed, stack.on_grid, pl.Boolean)

        def null_off(s):
            return pl.select(pl.when(on).then(s).otherwise(None)).to_series()

        return _with(
            df,
            {
                "zpat_fail_count": null_off(_spread(placed, cnt, pl.Int32)),
                "zpat_p_value": null_off(_spread(placed, p, pl.Float64)),
                "zpat_flag": null_off(_spread(placed, fl, pl.Boolean)),
            },
        )

    return _per_lot(
        die, run, {"zpat_fail_count": pl.Int32, "zpat_p_value": pl.Float64, "zpat_flag": pl.Boolean}
    )


def cluster_ink_flags(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    min_size: float = 50,
    rings: int = 1,
    connectivity: int = 4,
    ignore_lines: bool = True,
    light_outline: bool = False,
    window: int = 3,
    ring_weights=None,
    threshold: float = 8.0,
    edge_scale: float = 1.1,
    layout: Layout | None = None,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    final_only: bool = True,
) -> pl.LazyFrame:
    """Cluster ("potato") inking (DOMAIN §2.6) on a die table: adds ``cluster_ink`` (Boolean: a
    good die in the inked outline of a large bad cluster). Parameters as
    :func:`backend_fab_kernels.inking.cluster_ink`."""
    from backend_fab_kernels.inking import cluster_ink

    def run(df: pl.DataFrame) -> pl.DataFrame:
        wg, stack, placed = _grid_rows(
            df, final_only, kind="state", bin_column=bin_column, pass_bins=pass_bins,
            bad_bins=bad_bins, layout=layout, null_xy=null_xy, duplicates=duplicates,
        )  # fmt: skip
        ink = cluster_ink(
            wg.grid, min_size, rings, connectivity=connectivity, ignore_lines=ignore_lines,
            light_outline=light_outline, window=window, ring_weights=ring_weights,
            threshold=threshold, edge_scale=edge_scale,
        )  # fmt: skip
        on = _spread(placed, stack.on_grid, pl.Boolean)
        fl = _spread(placed, stack.gather(ink, fill=0).astype(bool), pl.Boolean)
        return _with(
            df, {"cluster_ink": pl.select(pl.when(on).then(fl).otherwise(None)).to_series()}
        )

    return _per_lot(die, run, {"cluster_ink": pl.Boolean})


def nnr_table(
    results: pl.LazyFrame | pl.DataFrame,
    *,
    value: str = "value",
    by: Iterable[str] | None = None,
    window: int = 5,
    la_percent: float = 70.0,
    min_neighbours: int = 1,
    null_xy: str = "drop",
    duplicates: str = "raise",
) -> pl.LazyFrame:
    """NNR (DOMAIN §2.4) on a long results table: adds ``nnr_estimate`` and ``nnr_residual``
    (Float64; null where the value is null or the die has too few valued neighbours).

    ``results`` needs ``lot_id``, ``wafer_id``, canonical ``x``, ``y``, the ``value`` column and
    the test key ``by`` (default ``("test_num", "pin")`` when ``pin`` exists, else
    ``("test_num",)``): join the die coordinates to the results first. All tests of a lot run in
    one kernel call (in chunks of tests for large lots). Screening the residuals (mean ± 6σ ...)
    is the PAT engine's job.
    """
    from backend_fab_kernels.nnr import nnr_residuals

    lf = results.lazy()
    names = lf.collect_schema().names()
    keys = list(by) if by is not None else (["test_num", "pin"] if "pin" in names else ["test_num"])
    for col in (*keys, value, "x", "y", "wafer_id"):
        if col not in names:
            raise KernelInputError(f"results table: missing column {col!r} (needed by nnr_table)")

    def run(df: pl.DataFrame) -> pl.DataFrame:
        from backend_fab.kernels.grids import _codes, lot_stack

        tcode, tkeys = _codes(pl.Series(df.select(pl.struct(keys)).to_series()))
        n_t = len(tkeys)
        # one grid per (test, wafer): make the test part of the wafer key for placement
        keyed = df.with_columns(
            (pl.Series(tcode).cast(pl.String) + "\x1f" + pl.col("wafer_id").cast(pl.String)).alias(
                "__tw"
            )
        )
        stack = lot_stack(keyed, wafer_column="__tw", null_xy=null_xy, duplicates=duplicates)
        _, wafer_ids = _codes(df.get_column("wafer_id"))
        n_w = len(wafer_ids)
        vals = df.get_column(value).cast(pl.Float64).fill_null(np.nan).to_numpy()
        wcode, _ = _codes(df.get_column("wafer_id"))
        ok = stack.on_grid
        plane = tcode * n_w + wcode
        cells = max(1, n_w * stack.ny * stack.nx)
        chunk = max(1, NNR_CHUNK_CELLS // cells)
        resid = np.full(df.height, np.nan)
        for t0 in range(0, n_t, chunk):
            t1 = min(n_t, t0 + chunk)
            sel = ok & (tcode >= t0) & (tcode < t1)
            grid = np.full(((t1 - t0) * n_w, stack.ny, stack.nx), np.nan)
            grid[plane[sel] - t0 * n_w, stack.iy[sel], stack.ix[sel]] = vals[sel]
            out = nnr_residuals(grid, window, la_percent, min_neighbours)
            resid[sel] = out[plane[sel] - t0 * n_w, stack.iy[sel], stack.ix[sel]]
        r = pl.Series(resid).fill_nan(None)
        return df.with_columns(
            (pl.col(value).cast(pl.Float64) - r).alias("nnr_estimate"), r.alias("nnr_residual")
        )

    return _per_lot(lf, run, {"nnr_estimate": pl.Float64, "nnr_residual": pl.Float64})
