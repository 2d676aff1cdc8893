"""Map rules of the PAT engine on the dense die grids: NNR, cluster inking, reticle, Z-PAT.

Each function takes the engine's context and grid (:mod:`backend_fab.pat.engine`), calls the
``backend_fab_kernels`` kernel that does the geometry, applies the recipe's statistics and returns
findings for good die only.
"""

from __future__ import annotations

import numpy as np

from backend_fab.pat import _kernels as K


def nnr(ctx, grid, vals, limit_rows) -> list:
    """Nearest-neighbour residual screen (DOMAIN.md §2.4).

    Per test, the good die's values go on the grid (failing die are not neighbours: their values
    can be anything); residual = value - median of the location-averaged neighbourhood
    (:func:`backend_fab_kernels.nnr.nnr_residuals`); each wafer's residuals of good die (at least
    ``min_residuals``) give limits (mean ± k·σ, robust, or IQR) and good die outside are flagged.
    """
    from backend_fab_kernels.nnr import nnr_residuals

    from backend_fab.pat.engine import _f, _finding

    p = ctx.recipe.rule("nnr")
    n_w = ctx.wafers.height
    n_d = ctx.good.size
    wanted = set(p["tests"])
    codes = [t for t in range(vals.tests.size) if (not wanted or int(vals.tests[t]) in wanted)]
    if not codes:
        ctx.notes.append("nnr: none of the recipe's NNR tests has values")
        return []
    has_xy = grid.ix >= 0
    good = ctx.good.astype(bool) & has_xy
    out = []
    for t in codes:
        s, e = vals.offsets[t * n_w], vals.offsets[(t + 1) * n_w]
        d = vals.die[s:e]
        v = vals.values[s:e]
        keep = good[d]
        d, v = d[keep], v[keep]
        plane = np.full(grid.shape, np.nan)
        plane[ctx.wafer[d], grid.iy[d], grid.ix[d]] = v
        res_grid = nnr_residuals(
            plane, window=p["window"], la_percent=100.0 * p["location_averaging"]
        )
        resid = np.full(n_d, np.nan)
        resid[d] = res_grid[ctx.wafer[d], grid.iy[d], grid.ix[d]]
        pop = np.isfinite(resid).astype(np.uint8)
        die_idx = np.arange(n_d, dtype=np.int64)
        n_pop, center, spread, lo, hi = K.group_limits(
            resid, die_idx, ctx.wafer_offsets, pop, p["method"], p["k"], p["min_residuals"]
        )
        flags = K.flag_outside(resid, die_idx, ctx.wafer_offsets, pop, lo, hi)
        idx = np.flatnonzero(flags)
        w_of = ctx.wafer[idx]
        for w in range(n_w):
            limit_rows.append(
                {
                    "rule": "nnr",
                    "product": ctx.wafers["product"][w],
                    "lot_id": ctx.wafers["lot_id"][w],
                    "wafer_id": ctx.wafers["wafer_id"][w],
                    "test_num": int(vals.tests[t]),
                    "pin": int(vals.pins[t]),
                    "n": int(n_pop[w]),
                    "center": _f(center[w]),
                    "spread": _f(spread[w]),
                    "lo_limit": _f(lo[w]),
                    "hi_limit": _f(hi[w]),
                    "method": p["method"],
                    "shape": None,
                }
            )
        out.append(
            _finding(
                "nnr",
                ctx.recipe,
                idx,
                np.full(idx.size, int(vals.tests[t])),
                resid[idx],
                lo[w_of],
                hi[w_of],
                quantity="residual (value - neighbourhood median)",
            )
        )
    return out


def _state_rows(ctx, grid, rule):
    from backend_fab.pat.engine import _bad_bins

    return grid.state(ctx, _bad_bins(ctx, rule))


def cluster(ctx, grid) -> list:
    """Cluster ("potato") inking: good die around large clusters of bad die (DOMAIN.md §2.6),
    :func:`backend_fab_kernels.inking.cluster_ink`."""
    from backend_fab_kernels.inking import cluster_ink

    from backend_fab.pat.engine import _finding

    p = ctx.recipe.rule("cluster")
    state = _state_rows(ctx, grid, "cluster")
    ink = cluster_ink(
        state,
        p["min_size"],
        p["outline"],
        connectivity=p["connectivity"],
        ignore_lines=p["ignore_lines"],
        light_outline=p["light_outline"],
        threshold=p["light_threshold"],
        edge_scale=p["edge_scale"],
    )
    idx = np.flatnonzero(grid.at(ctx, ink).astype(bool) & (ctx.good == 1))
    return [_finding("cluster", ctx.recipe, idx)]


def reticle(ctx, grid) -> list:
    """Reticle repeats: on each wafer, a position inside the reticle field whose die fail in at
    least ``field_fail_rate`` of the fields (and in ``min_fields`` fields) inks the good die at
    that position (:func:`backend_fab_kernels.reticle.reticle_stack`; layout reticle size)."""
    from backend_fab_kernels.reticle import reticle_stack

    from backend_fab.pat.engine import _finding

    p = ctx.recipe.rule("reticle")
    state = _state_rows(ctx, grid, "reticle")
    products = ctx.wafers["product"].to_numpy()
    ys, xs = np.mgrid[0 : grid.shape[1], 0 : grid.shape[2]]
    out_idx, out_val = [], []
    for prod in np.unique(products):
        lay = ctx.layouts.get(prod)
        if lay is None:
            ctx.notes.append(
                f"reticle: no layout for product {prod!r}: reticle size unknown, skipped"
            )
            continue
        n_pos = lay.reticle_cols * lay.reticle_rows
        if n_pos < 2:
            ctx.notes.append(f"reticle: product {prod!r} has a 1-die reticle field, skipped")
            continue
        wafers = np.flatnonzero(products == prod)
        rx, ry = lay.reticle_xy(xs + grid.x0, ys + grid.y0)
        position = (ry.astype(np.int64) * lay.reticle_cols + rx).astype(np.int64)
        fails, tested = reticle_stack(state[wafers], position, n_pos)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(tested > 0, fails / np.maximum(tested, 1), 0.0)
        bad = (fails >= p["min_fields"]) & (rate >= p["field_fail_rate"])
        if not bad.any():
            continue
        sel = np.flatnonzero(np.isin(ctx.wafer, wafers) & (ctx.good == 1) & (grid.ix >= 0))
        local = np.searchsorted(wafers, ctx.wafer[sel])
        pos = position[grid.iy[sel], grid.ix[sel]]
        hit = bad[local, pos]
        out_idx.append(sel[hit])
        out_val.append(rate[local[hit], pos[hit]])
    if not out_idx:
        return []
    idx = np.concatenate(out_idx)
    order = np.argsort(idx, kind="stable")
    idx = idx[order]
    return [
        _finding(
            "reticle",
            ctx.recipe,
            idx,
            value=np.concatenate(out_val)[order],
            hi=np.full(idx.size, p["field_fail_rate"]),
            quantity="fail rate of the die's reticle position on its wafer",
        )
    ]


def zpat(ctx, grid) -> list:
    """Z-axis PAT: locations that fail on too many wafers of the lot are inked on every wafer
    where the die is still good (DOMAIN.md §2.5; :mod:`backend_fab_kernels.zstack`)."""
    from backend_fab_kernels.zstack import zpat_binomial, zpat_threshold, zstack

    from backend_fab.pat.engine import _finding

    p = ctx.recipe.rule("zpat")
    state = _state_rows(ctx, grid, "zpat")
    lots = ctx.lot_of_wafer
    idx_parts, val_parts, lim_parts = [], [], []
    for lot in np.unique(lots):
        wafers = np.flatnonzero(lots == lot)
        if wafers.size < p["min_wafers"]:
            ctx.notes.append(
                f"zpat: lot {ctx.wafers['lot_id'][int(wafers[0])]!r} has {wafers.size} wafers "
                f"(< min_wafers {p['min_wafers']}), skipped"
            )
            continue
        fails, tested = zstack(state[wafers])
        if p["method"] == "count":
            flags = zpat_threshold(fails, int(wafers.size), p["threshold_pct"])
            value = fails.astype(np.float64)
            limit = float(np.ceil(wafers.size * p["threshold_pct"] / 100.0))
        else:
            flags, value = zpat_binomial(fails, tested, alpha=p["alpha"], method=p["correction"])
            m = int((tested > 0).sum())
            limit = p["alpha"] / max(m, 1) if p["correction"] == "bonferroni" else p["alpha"]
        if not flags.any():
            continue
        sel = np.flatnonzero(np.isin(ctx.wafer, wafers) & (ctx.good == 1) & (grid.ix >= 0))
        hit = flags[grid.iy[sel], grid.ix[sel]]
        idx_parts.append(sel[hit])
        val_parts.append(value[grid.iy[sel[hit]], grid.ix[sel[hit]]])
        lim_parts.append(np.full(int(hit.sum()), limit))
    if not idx_parts:
        return []
    idx = np.concatenate(idx_parts)
    vals = np.concatenate(val_parts)
    lims = np.concatenate(lim_parts)
    if p["method"] == "count":
        return [_finding("zpat", ctx.recipe, idx, value=vals, hi=lims, quantity="failing wafers")]
    return [_finding("zpat", ctx.recipe, idx, value=vals, lo=lims, quantity="p-value")]
