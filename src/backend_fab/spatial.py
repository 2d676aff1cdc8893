"""Clusters, spatial statistics, stacked maps and yield models on die tables.

Every function takes a die table (``lot_id``, ``wafer_id``, canonical ``x``, ``y``, a bin column
or ``passed``) and works lot by lot on the dense grids of :mod:`backend_fab.wafer`. Pipelines
(LazyFrame in, LazyFrame out, no collect) run the numba kernels of ``backend_fab_kernels``
inside ``group_by("lot_id").map_groups``; the yield-model fits return plain results.

* :func:`cluster_table` / :func:`cluster_labels`: connected components (4/8) or DBSCAN clusters of
  the failing die and their features (DOMAIN §3.1);
* :func:`wafer_spatial_stats`: join-count BB with analytic z (non-free sampling) and a
  permutation p-value, Moran's I, runs test, quadrat dispersion, cluster counts (DOMAIN §3.2-3.3);
* :func:`stacked_fail_rate`, :func:`reticle_fail_rate`: stacked maps with a binomial significance
  layer (DOMAIN §1.3);
* :func:`window_method`, :func:`fit_yield_model`, :func:`compare_yield_models`: Y0, D0 and the
  clustering parameter alpha (DOMAIN §3.3-3.4). scipy is imported inside these functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import polars as pl

from backend_fab.errors import KernelInputError
from backend_fab.layout import Layout

__all__ = [
    "CLUSTER_COLUMNS",
    "cluster_labels",
    "cluster_table",
    "compare_yield_models",
    "fit_yield_model",
    "reticle_fail_rate",
    "stacked_fail_rate",
    "wafer_spatial_stats",
    "window_method",
]

_GRID_KW = ("layout", "bin_column", "pass_bins", "bad_bins", "null_xy", "duplicates", "final_only")


def _lot_frames(die, fn, schema: dict) -> pl.LazyFrame:
    lf = die.lazy()
    names = lf.collect_schema().names()
    for col in ("lot_id", "wafer_id", "x", "y"):
        if col not in names:
            raise KernelInputError(f"die table: missing column {col!r}")
    return lf.group_by("lot_id").map_groups(fn, schema=schema)


def _grid(df: pl.DataFrame, grid_kw: dict):
    from backend_fab.wafer import stack_from_frame

    final_only = grid_kw.get("final_only", True)
    if final_only and "final" in df.columns:
        df = df.filter(pl.col("final").fill_null(True))
    kw = {k: v for k, v in grid_kw.items() if k != "final_only"}
    return (*stack_from_frame(df, kind="state", **kw), df)


def _lot_dtypes(die) -> tuple[pl.DataType, pl.DataType]:
    schema = die.lazy().collect_schema()
    return schema.get("lot_id", pl.String), schema.get("wafer_id", pl.String)


# --- clusters ---------------------------------------------------------------------------------

#: Columns of :func:`cluster_table` after ``lot_id``, ``wafer_id``, ``cluster``.
CLUSTER_COLUMNS: dict[str, pl.DataType] = {
    "size": pl.Int64,
    "x_min": pl.Int32,
    "x_max": pl.Int32,
    "y_min": pl.Int32,
    "y_max": pl.Int32,
    "centroid_x": pl.Float64,
    "centroid_y": pl.Float64,
    "radius": pl.Float64,
    "angle": pl.Float64,
    "radius_min": pl.Float64,
    "radius_max": pl.Float64,
    "angular_span": pl.Float64,
    "eccentricity": pl.Float64,
    "linearity": pl.Float64,
    "major_axis": pl.Float64,
    "minor_axis": pl.Float64,
    "solidity": pl.Float64,
    "touches_edge": pl.Boolean,
}


def _labels(grid: np.ndarray, method: str, connectivity: int, eps: float, min_samples: int):
    if method == "components":
        from backend_fab_kernels.components import label_components

        return label_components(grid, connectivity)
    if method == "dbscan":
        from backend_fab_kernels.dbscan import dbscan_grid

        return dbscan_grid(grid, eps, min_samples)
    raise ValueError(f"clusters: method must be 'components' or 'dbscan', got {method!r}")


def cluster_table(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    method: str = "components",
    connectivity: int = 8,
    eps: float = 1.5,
    min_samples: int = 3,
    min_size: int = 1,
    layout: Layout | None = None,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    final_only: bool = True,
) -> pl.LazyFrame:
    """One row per cluster of failing die, with its features.

    ``method="components"`` (default): connected regions of bad die, ``connectivity`` 8 (queen)
    or 4 (rook). ``method="dbscan"``: DBSCAN with ``eps`` die pitches and ``min_samples`` (noise
    is not a cluster). Clusters smaller than ``min_size`` die are dropped.

    Columns: ``lot_id``, ``wafer_id``, ``cluster`` (Int32, the label of :func:`cluster_labels`)
    and :data:`CLUSTER_COLUMNS`: bounding box and centroid in canonical die coordinates; ``radius``
    (centroid r/R), ``angle`` (degrees CCW from +x), ``radius_min``/``radius_max``,
    ``angular_span``, ``eccentricity``, ``linearity`` (0 round .. 1 a straight scratch),
    ``major_axis``/``minor_axis`` (die pitches), ``solidity`` and ``touches_edge``. The wafer
    centre and radius come from the layout when given, else from the lot's die extent.
    """
    from backend_fab_kernels.components import FEATURE_NAMES, component_features

    grid_kw = dict(
        zip(
            _GRID_KW,
            (layout, bin_column, pass_bins, bad_bins, null_xy, duplicates, final_only),
            strict=True,
        )
    )
    lot_t, wafer_t = _lot_dtypes(die)
    schema = {"lot_id": lot_t, "wafer_id": wafer_t, "cluster": pl.Int32, **CLUSTER_COLUMNS}

    def run(df: pl.DataFrame) -> pl.DataFrame:
        wg, _, _ = _grid(df, grid_kw)
        labels, n = _labels(wg.grid, method, connectivity, eps, min_samples)
        feats, _ = component_features(np.maximum(labels, 0), n, wg.grid, wg.center(), wg.radius())
        f = {name: feats[:, i] for i, name in enumerate(FEATURE_NAMES)}
        keep = f["size"] >= min_size
        w = f["wafer"].astype(np.int64)[keep]
        out = {
            "lot_id": pl.Series([wg.lot_id] * int(keep.sum()), dtype=lot_t),
            "wafer_id": pl.Series([wg.wafer_ids[i] for i in w], dtype=wafer_t),
            "cluster": pl.Series(f["label"][keep].astype(np.int32)),
        }
        shift = {
            "x_min": wg.x0,
            "x_max": wg.x0,
            "y_min": wg.y0,
            "y_max": wg.y0,
            "centroid_x": wg.x0,
            "centroid_y": wg.y0,
        }
        for name, dtype in CLUSTER_COLUMNS.items():
            v = f[name][keep] + shift.get(name, 0)
            out[name] = (
                pl.Series(name, v).cast(dtype) if dtype != pl.Boolean else pl.Series(name, v > 0)
            )
        return pl.DataFrame(out, schema=schema)

    return _lot_frames(die, run, schema)


def cluster_labels(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    method: str = "components",
    connectivity: int = 8,
    eps: float = 1.5,
    min_samples: int = 3,
    layout: Layout | None = None,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    final_only: bool = True,
) -> pl.LazyFrame:
    """The die table with a ``cluster`` column (Int32): 0 = not a failing die, -1 = DBSCAN noise,
    ``k >= 1`` = the cluster's label (as in :func:`cluster_table`); null for rows not placed on
    the grid (non-final rows, null x/y)."""
    grid_kw = dict(
        zip(
            _GRID_KW,
            (layout, bin_column, pass_bins, bad_bins, null_xy, duplicates, final_only),
            strict=True,
        )
    )
    lf = die.lazy()
    schema = dict(lf.collect_schema())
    schema["cluster"] = pl.Int32

    def run(df: pl.DataFrame) -> pl.DataFrame:
        from backend_fab.kernels.screens import _grid_rows, _spread

        wg, stack, placed = _grid_rows(
            df, final_only, kind="state", **{k: v for k, v in grid_kw.items() if k != "final_only"}
        )
        labels, _ = _labels(wg.grid, method, connectivity, eps, min_samples)
        lab = stack.gather(labels, fill=0)
        on = _spread(placed, stack.on_grid, pl.Boolean)
        col = _spread(placed, lab.astype(np.int32), pl.Int32)
        return df.with_columns(
            pl.select(pl.when(on).then(col).otherwise(None)).to_series().alias("cluster")
        )

    return _lot_frames(lf, run, schema)


# --- spatial statistics ------------------------------------------------------------------------

STATS_COLUMNS: dict[str, pl.DataType] = {
    "n_die": pl.Int64,
    "n_fail": pl.Int64,
    "fail_rate": pl.Float64,
    "bb": pl.Int64,
    "bb_expected": pl.Float64,
    "bb_variance": pl.Float64,
    "bb_z": pl.Float64,
    "bb_p_normal": pl.Float64,
    "bb_p_perm": pl.Float64,
    "clustered": pl.Boolean,
    "morans_i": pl.Float64,
    "morans_z": pl.Float64,
    "runs": pl.Int64,
    "runs_z": pl.Float64,
    "dispersion_index": pl.Float64,
    "dispersion_p": pl.Float64,
    "nb_alpha": pl.Float64,
    "n_clusters": pl.Int64,
    "largest_cluster": pl.Int64,
}


def _normal_sf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return np.where(np.isnan(z), np.nan, ndtr(-np.nan_to_num(z)))


def wafer_spatial_stats(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    connectivity: int = 4,
    n_perm: int = 999,
    seed: int = 0,
    alpha: float = 0.01,
    quadrat: tuple[int, int] = (3, 3),
    order: str | None = None,
    cluster_connectivity: int = 8,
    layout: Layout | None = None,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    final_only: bool = True,
) -> pl.LazyFrame:
    """Spatial randomness statistics per wafer (DOMAIN §3.2-3.3), one row per wafer.

    * join-count BB with its non-free-sampling mean, variance and z; ``bb_p_normal`` is the
      one-sided normal p-value of z, ``bb_p_perm`` the permutation p-value from ``n_perm``
      shuffles of the wafer's fails (``n_perm=0`` skips it, leaving null);
    * ``clustered``: ``bb_p_perm < alpha`` (``bb_p_normal`` when ``n_perm=0``), default alpha 0.01;
    * Moran's I of the 0/1 fail map and its randomisation z;
    * runs test along ``order`` (a column giving the probing order, e.g. ``part_seq``; default a
      serpentine over the grid rows): ``runs`` and ``runs_z`` (z << 0 = streaks);
    * quadrat dispersion in ``quadrat`` blocks (whole blocks only): index, χ² p-value, NB alpha;
    * ``n_clusters``/``largest_cluster``: connected components (``cluster_connectivity``).
    """
    from backend_fab_kernels.components import label_components
    from backend_fab_kernels.spatial_stats import (
        dispersion,
        join_count_permutation,
        join_counts,
        morans_i,
        runs_test,
        serpentine_sequences,
    )

    grid_kw = dict(
        zip(
            _GRID_KW,
            (layout, bin_column, pass_bins, bad_bins, null_xy, duplicates, final_only),
            strict=True,
        )
    )
    lot_t, wafer_t = _lot_dtypes(die)
    schema = {"lot_id": lot_t, "wafer_id": wafer_t, **STATS_COLUMNS}
    if order is not None and order not in die.lazy().collect_schema().names():
        raise KernelInputError(
            f"wafer_spatial_stats: order column {order!r} is not in the die table"
        )

    def run(df: pl.DataFrame) -> pl.DataFrame:
        from scipy.stats import chi2

        wg, stack, used = _grid(df, grid_kw)
        st = wg.grid
        jc = join_counts(st, connectivity)
        if n_perm > 0:
            pp = join_count_permutation(st, connectivity, n_perm, seed)["p_value"]
            pp = np.where((jc["n_fail"] > 0) & (jc["n_fail"] < jc["n_die"]), pp, np.nan)
        else:
            pp = np.full(st.shape[0], np.nan)
        p_norm = _normal_sf(jc["z"])
        decide = pp if n_perm > 0 else p_norm
        mi = morans_i(np.where(st >= 0, st, np.nan).astype(np.float64), connectivity)
        if order is None:
            seq, off = serpentine_sequences(st)
        else:
            seq, off = _probe_sequences(used, stack, order, bin_column, pass_bins, bad_bins)
        rt = runs_test(seq, off)
        disp = dispersion(st, quadrat[0], quadrat[1])
        with np.errstate(invalid="ignore"):
            disp_p = np.where(
                np.isfinite(disp["chi2"]), chi2.sf(disp["chi2"], disp["n_quadrats"] - 1), np.nan
            )
        labels, n_lab = label_components(st, cluster_connectivity)
        flat = labels.reshape(st.shape[0], -1)
        largest = np.array(
            [
                int(np.bincount(row[row > 0]).max()) if n else 0
                for row, n in zip(flat, n_lab, strict=True)
            ],
            dtype=np.int64,
        )
        n_die = jc["n_die"]
        data = {
            "lot_id": pl.Series([wg.lot_id] * st.shape[0], dtype=lot_t),
            "wafer_id": pl.Series(list(wg.wafer_ids), dtype=wafer_t),
            "n_die": n_die,
            "n_fail": jc["n_fail"],
            "fail_rate": np.where(n_die > 0, jc["n_fail"] / np.maximum(n_die, 1), np.nan),
            "bb": jc["bb"],
            "bb_expected": jc["expected"],
            "bb_variance": jc["variance"],
            "bb_z": jc["z"],
            "bb_p_normal": p_norm,
            "bb_p_perm": pp,
            "clustered": np.nan_to_num(decide, nan=1.0) < alpha,
            "morans_i": mi["i"],
            "morans_z": mi["z"],
            "runs": rt["runs"],
            "runs_z": rt["z"],
            "dispersion_index": disp["index"],
            "dispersion_p": disp_p,
            "nb_alpha": disp["alpha"],
            "n_clusters": n_lab,
            "largest_cluster": largest,
        }
        out = pl.DataFrame(data, schema=schema)
        return out.with_columns(pl.col(pl.Float64).fill_nan(None))

    return _lot_frames(die, run, schema)


def _probe_sequences(df, stack, order, bin_column, pass_bins, bad_bins):
    from backend_fab.kernels.grids import bad_die

    bad = bad_die(df, bin_column=bin_column, pass_bins=pass_bins, bad_bins=bad_bins)
    ok = stack.on_grid
    w = stack.wafer[ok]
    key = df.get_column(order).to_numpy()[ok]
    idx = np.lexsort((key, w))
    seq = bad[ok][idx].astype(np.uint8)
    counts = np.bincount(w, minlength=len(stack.wafer_ids))
    off = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=off[1:])
    return seq, off


# --- stacked maps ------------------------------------------------------------------------------


def _bh(p: np.ndarray, alpha: float) -> np.ndarray:
    ok = np.isfinite(p)
    out = np.zeros(p.shape, dtype=bool)
    vals = p[ok]
    m = vals.size
    if m == 0:
        return out
    order = np.argsort(vals, kind="stable")
    passed = vals[order] <= alpha * np.arange(1, m + 1) / m
    k = int(np.nonzero(passed)[0].max()) + 1 if passed.any() else 0
    hit = np.zeros(m, dtype=bool)
    hit[order[:k]] = True
    out[ok] = hit
    return out


def stacked_fail_rate(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    alpha: float = 0.05,
    layout: Layout | None = None,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    final_only: bool = True,
) -> pl.LazyFrame:
    """The stacked (composite) map of each lot: one row per location with a tested die.

    Columns ``lot_id``, ``x``, ``y`` (Int32), ``n_tested``, ``n_fail`` (Int64), ``fail_rate``,
    ``p_value`` (binomial ``P(X >= n_fail | n_tested, lot fail rate)``) and ``hot`` (Boolean:
    Benjamini-Hochberg over the lot's locations at false-discovery rate ``alpha``), DOMAIN §1.3.
    """
    from backend_fab_kernels.zstack import binomial_sf, zstack

    grid_kw = dict(
        zip(
            _GRID_KW,
            (layout, bin_column, pass_bins, bad_bins, null_xy, duplicates, final_only),
            strict=True,
        )
    )
    lot_t, _ = _lot_dtypes(die)
    schema = {
        "lot_id": lot_t, "x": pl.Int32, "y": pl.Int32, "n_tested": pl.Int64, "n_fail": pl.Int64,
        "fail_rate": pl.Float64, "p_value": pl.Float64, "hot": pl.Boolean,
    }  # fmt: skip

    def run(df: pl.DataFrame) -> pl.DataFrame:
        wg, _, _ = _grid(df, grid_kw)
        fails, tested = zstack(wg.grid)
        iy, ix = np.nonzero(tested > 0)
        f = fails[iy, ix].astype(np.int64)
        t = tested[iy, ix].astype(np.int64)
        p_lot = f.sum() / t.sum() if t.sum() else 0.0
        pv = binomial_sf(f, t, np.full(f.shape, p_lot))
        return pl.DataFrame(
            {
                "lot_id": pl.Series([wg.lot_id] * f.size, dtype=lot_t),
                "x": (ix + wg.x0).astype(np.int32),
                "y": (iy + wg.y0).astype(np.int32),
                "n_tested": t,
                "n_fail": f,
                "fail_rate": f / np.maximum(t, 1),
                "p_value": pv,
                "hot": _bh(pv, alpha),
            },
            schema=schema,
        )

    return _lot_frames(die, run, schema)


def reticle_fail_rate(
    die: pl.LazyFrame | pl.DataFrame,
    layout: Layout,
    *,
    alpha: float = 0.05,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    final_only: bool = True,
) -> pl.LazyFrame:
    """The reticle stack of each lot: fail rate per position inside the reticle field.

    Columns ``lot_id``, ``reticle_x``, ``reticle_y`` (Int32), ``n_tested``, ``n_fail``,
    ``fail_rate``, ``p_value`` (binomial upper tail at the lot fail rate) and ``hot``
    (Benjamini-Hochberg at ``alpha`` over the positions).
    """
    from backend_fab_kernels.reticle import reticle_stack
    from backend_fab_kernels.zstack import binomial_sf

    grid_kw = dict(
        zip(
            _GRID_KW,
            (layout, bin_column, pass_bins, bad_bins, null_xy, duplicates, final_only),
            strict=True,
        )
    )
    lot_t, _ = _lot_dtypes(die)
    schema = {
        "lot_id": lot_t, "reticle_x": pl.Int32, "reticle_y": pl.Int32, "n_tested": pl.Int64,
        "n_fail": pl.Int64, "fail_rate": pl.Float64, "p_value": pl.Float64, "hot": pl.Boolean,
    }  # fmt: skip

    def run(df: pl.DataFrame) -> pl.DataFrame:
        wg, _, _ = _grid(df, grid_kw)
        position, n_pos = wg.reticle_position_grid()
        fails, tested = reticle_stack(wg.grid, position, n_pos)
        f = fails.sum(axis=0)
        t = tested.sum(axis=0)
        p_lot = f.sum() / t.sum() if t.sum() else 0.0
        pv = np.where(t > 0, binomial_sf(f, t, np.full(f.shape, p_lot)), np.nan)
        pos = np.arange(n_pos)
        return pl.DataFrame(
            {
                "lot_id": pl.Series([wg.lot_id] * n_pos, dtype=lot_t),
                "reticle_x": (pos % layout.reticle_cols).astype(np.int32),
                "reticle_y": (pos // layout.reticle_cols).astype(np.int32),
                "n_tested": t,
                "n_fail": f,
                "fail_rate": np.where(t > 0, f / np.maximum(t, 1), np.nan),
                "p_value": pv,
                "hot": _bh(pv, alpha),
            },
            schema=schema,
        ).with_columns(pl.col(pl.Float64).fill_nan(None))

    return _lot_frames(die, run, schema)


# --- window method and yield models -----------------------------------------------------------


def _fit_window(k: np.ndarray, windows: np.ndarray, good: np.ndarray) -> tuple[float, float, float]:
    """Binomial maximum likelihood of ``Y_k = Y0 (1 + k λ / α)^(-α)`` over window sizes."""
    from backend_fab_kernels.yield_models import window_model
    from scipy.optimize import minimize

    ok = windows > 0
    k, n, g = k[ok].astype(float), windows[ok].astype(float), good[ok].astype(float)
    if k.size < 3 or g.sum() == 0:
        return (math.nan, math.nan, math.nan)
    y1 = max(g[0] / n[0], 1e-6) if k[0] == 1 else max(g.sum() / n.sum(), 1e-6)

    def nll(theta):
        y0 = 1.0 / (1.0 + math.exp(-theta[0]))
        lam = math.exp(theta[1])
        al = math.exp(theta[2])
        y = np.clip(window_model(k, y0, lam, al), 1e-12, 1 - 1e-12)
        return -float(np.sum(g * np.log(y) + (n - g) * np.log1p(-y)))

    best = None
    for a0 in (0.5, 2.0, 10.0):
        start = np.array([2.0, math.log(max(-math.log(y1), 1e-4)), math.log(a0)])
        res = minimize(
            nll,
            start,
            method="Nelder-Mead",
            options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000},
        )
        if best is None or res.fun < best.fun:
            best = res
    y0 = 1.0 / (1.0 + math.exp(-best.x[0]))
    return (y0, math.exp(best.x[1]), math.exp(best.x[2]))


def window_method(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    shapes: Iterable[tuple[int, int]] | None = None,
    die_area_cm2: float | None = None,
    per: str = "lot",
    layout: Layout | None = None,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    final_only: bool = True,
) -> pl.LazyFrame:
    """Window-method yield model per lot (``per="lot"``, windows pooled over its wafers) or per
    wafer: fit of ``Y_k = Y0 (1 + k λ / α)^(-α)`` (Stapper; DOMAIN §3.3) by binomial maximum
    likelihood over windows of k = 1, 2, 4, 6, 9 die (``shapes``, (columns, rows)).

    Columns: ``lot_id``, ``wafer_id`` (null per lot), ``y0`` (systematic yield), ``lambda``
    (random defects per die, A·D0), ``alpha`` (clustering; large = Poisson), ``d0_per_cm2``
    (``lambda / die_area_cm2``, null without the area) and ``n_windows`` (windows of one die).
    """
    from backend_fab_kernels.spatial_stats import WINDOW_SHAPES, window_yields

    if per not in ("lot", "wafer"):
        raise ValueError(f"window_method: per must be 'lot' or 'wafer', got {per!r}")
    use = tuple(shapes) if shapes is not None else WINDOW_SHAPES
    grid_kw = dict(
        zip(
            _GRID_KW,
            (layout, bin_column, pass_bins, bad_bins, null_xy, duplicates, final_only),
            strict=True,
        )
    )
    lot_t, wafer_t = _lot_dtypes(die)
    schema = {
        "lot_id": lot_t, "wafer_id": wafer_t, "y0": pl.Float64, "lambda": pl.Float64,
        "alpha": pl.Float64, "d0_per_cm2": pl.Float64, "n_windows": pl.Int64,
    }  # fmt: skip

    def run(df: pl.DataFrame) -> pl.DataFrame:
        wg, _, _ = _grid(df, grid_kw)
        k, windows, good = window_yields(wg.grid, use)
        rows = []
        groups = (
            [(None, windows.sum(axis=0), good.sum(axis=0))]
            if per == "lot"
            else [(wg.wafer_ids[i], windows[i], good[i]) for i in range(wg.n_wafers)]
        )
        for wid, nwin, ngood in groups:
            y0, lam, al = _fit_window(k, nwin, ngood)
            d0 = lam / die_area_cm2 if die_area_cm2 else None
            rows.append((wg.lot_id, wid, y0, lam, al, d0, int(nwin[0])))
        return pl.DataFrame(rows, schema=schema, orient="row").with_columns(
            pl.col(pl.Float64).fill_nan(None)
        )

    return _lot_frames(die, run, schema)


def fit_yield_model(
    area_cm2,
    n_good,
    n_tested,
    model: str = "negative_binomial",
    *,
    systematic: bool = False,
    n_layers: float | None = None,
) -> dict[str, float]:
    """Fit a yield model (DOMAIN §3.4) to observed yields by binomial maximum likelihood.

    Parameters
    ----------
    area_cm2 : array of (critical) die areas, one per observation (wafer, lot or product)
    n_good, n_tested : good and tested die per observation
    model : "poisson", "murphy", "seeds", "bose_einstein" (``n_layers`` fixed, default 1) or
        "negative_binomial" (alpha fitted)
    systematic : also fit ``Y0`` in ``Y = Y0 · Y_random`` (needs several die areas to separate)

    Returns dict: ``d0_per_cm2``, ``alpha`` (negative binomial, else NaN), ``y0`` (1 unless
    ``systematic``), ``log_likelihood``, ``aic``, ``n_params``.
    """
    from backend_fab_kernels.yield_models import MODELS
    from scipy.optimize import minimize

    if model not in MODELS:
        raise ValueError(f"fit_yield_model: model must be one of {sorted(MODELS)}, got {model!r}")
    a = np.asarray(area_cm2, dtype=np.float64).ravel()
    g = np.asarray(n_good, dtype=np.float64).ravel()
    n = np.asarray(n_tested, dtype=np.float64).ravel()
    if not (a.size == g.size == n.size) or a.size == 0:
        raise ValueError(
            "fit_yield_model: area_cm2, n_good and n_tested need the same non-zero length"
        )
    if np.any(a <= 0) or np.any(g < 0) or np.any(g > n):
        raise ValueError("fit_yield_model: need area > 0 and 0 <= n_good <= n_tested")
    fn, _ = MODELS[model]
    layers = 1.0 if n_layers is None else float(n_layers)

    def unpack(theta):
        d0 = math.exp(theta[0])
        i = 1
        al = math.nan
        if model == "negative_binomial":
            al = math.exp(theta[i])
            i += 1
        y0 = 1.0 / (1.0 + math.exp(-theta[i])) if systematic else 1.0
        return d0, al, y0

    def predict(theta):
        d0, al, y0 = unpack(theta)
        ad = a * d0
        if model == "negative_binomial":
            y = fn(ad, al)
        elif model == "bose_einstein":
            y = fn(ad, layers)
        else:
            y = fn(ad)
        return np.clip(y0 * y, 1e-12, 1 - 1e-12)

    def nll(theta):
        y = predict(theta)
        return -float(np.sum(g * np.log(y) + (n - g) * np.log1p(-y)))

    ybar = max(min(g.sum() / n.sum(), 1 - 1e-6), 1e-6)
    d_start = max(-math.log(ybar) / float(np.mean(a)), 1e-6)
    starts = [[math.log(d_start)]]
    if model == "negative_binomial":
        starts = [[math.log(d_start), math.log(al0)] for al0 in (0.5, 2.0, 10.0)]
    if systematic:
        starts = [[*s, 3.0] for s in starts]
    best = None
    for s in starts:
        res = minimize(
            nll,
            np.array(s, dtype=float),
            method="Nelder-Mead",
            options={"xatol": 1e-9, "fatol": 1e-10, "maxiter": 5000},
        )
        if best is None or res.fun < best.fun:
            best = res
    d0, al, y0 = unpack(best.x)
    k = len(best.x)
    return {
        "d0_per_cm2": d0,
        "alpha": al,
        "y0": y0,
        "log_likelihood": -float(best.fun),
        "aic": 2 * k + 2 * float(best.fun),
        "n_params": k,
    }


def compare_yield_models(area_cm2, n_good, n_tested, *, systematic: bool = False) -> pl.DataFrame:
    """Fit Poisson, Murphy, Seeds and negative-binomial models; one row per model, best AIC first.

    Columns: ``model``, ``d0_per_cm2``, ``alpha``, ``y0``, ``log_likelihood``, ``aic``,
    ``n_params``.
    """
    rows = []
    for model in ("poisson", "murphy", "seeds", "negative_binomial"):
        r = fit_yield_model(area_cm2, n_good, n_tested, model, systematic=systematic)
        rows.append({"model": model, **r})
    return pl.DataFrame(rows).with_columns(pl.col("alpha").fill_nan(None)).sort("aic")
