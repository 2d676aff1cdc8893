"""Figures for yield, bins and PAT: wafer maps, galleries, stacked maps, Paretos, trends, sites.

Every function returns a :class:`matplotlib.figure.Figure` drawn with the Agg canvas (no pyplot
state: safe in a batch, in threads and in notebooks; ``fig.savefig(path)`` writes it).
matplotlib is imported inside the functions, so ``import backend_fab`` stays light.

Wafer maps are drawn in the canonical frame of :mod:`backend_fab.layout` (x to the right, y up,
the device side towards the viewer): tester coordinates are converted with the product's layout
(``pos_x``/``pos_y``), and the notch is drawn on the layout's ``notch`` side. Each die is one
square cell of colour :func:`bin_color` (bins), of a colormap (values) or of the PAT rule that
binned it (dispositions), so a die's pixel colour can be read back exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from backend_fab.errors import BackendFabError

__all__ = [
    "NO_DIE_COLOR",
    "RULE_COLORS",
    "bin_color",
    "bin_colors",
    "lot_gallery",
    "pareto_figure",
    "pat_histogram",
    "site_figure",
    "stacked_map_figure",
    "trend_figure",
    "wafer_map",
]

#: Background of the wafer (positions without a die).
NO_DIE_COLOR = (1.0, 1.0, 1.0, 1.0)
#: Pass bins: shades of green, by position in the pass-bin list.
_PASS = ["#2e9e44", "#7bc96f", "#b7e4a7", "#d9f0c9"]
#: Fail bins: a fixed palette (tab20 without its greens), picked by bin number, so a bin keeps its
#: colour in every figure.
_FAIL = [
    "#d62728",
    "#1f77b4",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
]
#: PAT rules: one strong colour each (disposition overlays and PAT-bin maps).
RULE_COLORS: dict[str, str] = {
    "spat": "#000000",
    "dpat": "#e6194b",
    "nnr": "#f58231",
    "iddq_delta": "#911eb4",
    "gdbn": "#4363d8",
    "cluster": "#800000",
    "reticle": "#f032e6",
    "zpat": "#469990",
}


def _canvas(figsize=(6.0, 6.0), dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _rgba(color) -> tuple[float, float, float, float]:
    from matplotlib.colors import to_rgba

    return tuple(float(c) for c in to_rgba(color))


def bin_color(
    bin_: int, pass_bins: Sequence[int] = (1,), pat_bins: Mapping[int, str] | None = None
):
    """RGBA colour of a bin: greens for pass bins, the rule colour for PAT bins (``pat_bins``:
    bin -> rule), else a fixed palette colour chosen by the bin number."""
    pass_bins = list(pass_bins)
    if bin_ in pass_bins:
        return _rgba(_PASS[min(pass_bins.index(bin_), len(_PASS) - 1)])
    if pat_bins and bin_ in pat_bins:
        return _rgba(RULE_COLORS.get(pat_bins[bin_], "#000000"))
    return _rgba(_FAIL[int(bin_) % len(_FAIL)])


def bin_colors(bins: Sequence[int], pass_bins: Sequence[int] = (1,), pat_bins=None) -> dict:
    """``{bin: RGBA}`` for the given bins (see :func:`bin_color`)."""
    return {int(b): bin_color(int(b), pass_bins, pat_bins) for b in bins}


def _default_pat_bins() -> dict[int, str]:
    from backend_fab.pat import default_recipe

    rec = default_recipe()
    return {rec.data[r]["bin"]: r for r in rec.precedence}


# --- geometry ---------------------------------------------------------------------------------


def _layout_for(product: str | None, layout):
    """A Layout from a Layout, a layouts frame (row of the product) or None."""
    if layout is None:
        return None
    from backend_fab.layout import Layout

    if isinstance(layout, Layout):
        return layout
    frame = layout.collect() if isinstance(layout, pl.LazyFrame) else layout
    if not isinstance(frame, pl.DataFrame):
        raise BackendFabError(f"layout must be a Layout or the layouts table, got {type(layout)}")
    rows = frame.filter(pl.col("product") == product) if product is not None else frame
    if rows.height == 0:
        return None
    return Layout.from_row(rows.row(0, named=True))


def _canonical(x: np.ndarray, y: np.ndarray, layout) -> tuple[np.ndarray, np.ndarray]:
    if layout is None:
        return x.astype(np.int64), y.astype(np.int64)
    cx, cy = layout.to_canonical(x, y)
    return cx.astype(np.int64), cy.astype(np.int64)


def _wafer_circle(cx, cy, layout):
    """(centre x, centre y, radius x, radius y, notch side) in die units, canonical frame."""
    if layout is not None:
        rx, ry = layout.radius_die
        return layout.center_x, layout.center_y, rx, ry, layout.notch
    xc = (cx.min() + cx.max()) / 2.0
    yc = (cy.min() + cy.max()) / 2.0
    r = float(np.max(np.hypot(cx - xc, cy - yc))) + 1.0
    return xc, yc, r, r, "D"


def _draw_wafer(ax, cx, cy, rgba, layout, *, notch=True, outline=True):
    """Die cells of colour ``rgba`` (n, 4) at canonical (cx, cy), wafer outline and notch."""
    from matplotlib.patches import Ellipse, Polygon

    x0, x1 = int(cx.min()), int(cx.max())
    y0, y1 = int(cy.min()), int(cy.max())
    img = np.empty((y1 - y0 + 1, x1 - x0 + 1, 4))
    img[:] = NO_DIE_COLOR
    img[cy - y0, cx - x0] = rgba
    ax.imshow(
        img,
        origin="lower",
        extent=(x0 - 0.5, x1 + 0.5, y0 - 0.5, y1 + 0.5),
        interpolation="nearest",
        zorder=1,
    )
    xc, yc, rx, ry, side = _wafer_circle(cx, cy, layout)
    if outline:
        ax.add_patch(
            Ellipse((xc, yc), 2 * rx, 2 * ry, fill=False, edgecolor="#444444", lw=1.0, zorder=2)
        )
    if notch:
        size = 0.06 * max(rx, ry)
        # a filled triangle pointing into the wafer from the notch side
        if side == "D":
            pts = [(xc - size, yc - ry - size), (xc + size, yc - ry - size), (xc, yc - ry + size)]
        elif side == "U":
            pts = [(xc - size, yc + ry + size), (xc + size, yc + ry + size), (xc, yc + ry - size)]
        elif side == "L":
            pts = [(xc - rx - size, yc - size), (xc - rx - size, yc + size), (xc - rx + size, yc)]
        else:
            pts = [(xc + rx + size, yc - size), (xc + rx + size, yc + size), (xc + rx - size, yc)]
        ax.add_patch(Polygon(pts, closed=True, color="#000000", zorder=3))
    pad = 0.12 * max(rx, ry) + 1
    ax.set_xlim(xc - rx - pad, xc + rx + pad)
    ax.set_ylim(yc - ry - pad, yc + ry + pad)
    ax.set_aspect((layout.die_height_mm / layout.die_width_mm) if layout is not None else 1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _final_wafer(die, lot_id, wafer_id) -> pl.DataFrame:
    from backend_fab.bins import select_instances

    lf = die.lazy() if isinstance(die, pl.DataFrame) else die
    if lot_id is not None:
        lf = lf.filter(pl.col("lot_id") == lot_id)
    if wafer_id is not None:
        lf = lf.filter(pl.col("wafer_id") == wafer_id)
    df = select_instances(lf, "final").filter(pl.col("x").is_not_null()).collect()
    if df.height == 0:
        raise BackendFabError(
            f"no die with coordinates for lot {lot_id!r} wafer {wafer_id!r} in the die frame"
        )
    return df


# --- wafer maps -------------------------------------------------------------------------------


def wafer_map(
    die: pl.DataFrame | pl.LazyFrame,
    *,
    lot_id: str | None = None,
    wafer_id: str | None = None,
    color_by: str = "hbin",
    results: pl.DataFrame | pl.LazyFrame | None = None,
    test_num: int | None = None,
    dispositions: pl.DataFrame | None = None,
    layout=None,
    pass_bins: Sequence[int] = (1,),
    cmap: str = "viridis",
    title: str | None = None,
    legend: bool = True,
    ax=None,
    figsize=(7.5, 6.0),
    dpi: int = 100,
):
    """One wafer map.

    ``color_by``: "hbin" or "sbin" (bin colours, :func:`bin_color`; PAT bins of the default
    recipe in their rule colours), "value" (parametric value of ``test_num`` from ``results``,
    colormap ``cmap`` with a colour bar) or "disposition" (good die green, failing die grey, die
    re-binned by PAT in the colour of their final rule, :data:`RULE_COLORS`; needs
    ``dispositions``). ``layout``: a :class:`~backend_fab.layout.Layout` or the layouts table,
    for orientation, wafer outline and notch side. ``die`` is the die table (final instances
    are drawn); select the wafer with ``lot_id``/``wafer_id`` when it holds more.
    """
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    df = _final_wafer(die, lot_id, wafer_id)
    keys = df.select("product", "lot_id", "wafer_id").unique()
    if keys.height != 1:
        raise BackendFabError(
            f"wafer_map draws one wafer; the selection holds {keys.height} "
            "(give lot_id= and wafer_id=)"
        )
    product, lot, wafer = keys.row(0)
    lay = _layout_for(product, layout)
    cx, cy = _canonical(df["x"].to_numpy(), df["y"].to_numpy(), lay)
    standalone = ax is None
    fig = _canvas(figsize, dpi) if standalone else ax.figure
    ax = fig.add_subplot(1, 1, 1) if standalone else ax
    handles = []
    if color_by in ("hbin", "sbin"):
        binv = df[color_by].fill_null(-1).to_numpy()
        pat_bins = _default_pat_bins()
        colors = bin_colors(np.unique(binv), pass_bins, pat_bins)
        rgba = np.array([colors[int(b)] for b in binv]).reshape(-1, 4)
        if legend:
            counts = df.group_by(color_by).len().sort("len", descending=True).head(12)
            for b, n in counts.iter_rows():
                b = -1 if b is None else int(b)
                label = f"{color_by} {b}" + (f" ({pat_bins[b]})" if b in pat_bins else "")
                handles.append(Patch(color=colors[b], label=f"{label}: {n}"))
    elif color_by == "value":
        if results is None or test_num is None:
            raise BackendFabError("color_by='value' needs results= and test_num=")
        res = results.lazy() if isinstance(results, pl.DataFrame) else results
        vals = (
            res.filter((pl.col("test_num") == test_num) & (pl.col("pin").fill_null(-1) < 0))
            .select("run_id", "part_seq", "value")
            .collect()
        )
        joined = df.select("run_id", "part_seq").join(
            vals, on=["run_id", "part_seq"], how="left", maintain_order="left"
        )
        v = joined["value"].to_numpy().astype(np.float64)
        finite = np.isfinite(v)
        if not finite.any():
            raise BackendFabError(f"no value of test {test_num} on this wafer")
        lo, hi = np.quantile(v[finite], [0.005, 0.995])
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
        import matplotlib as mpl

        cm = mpl.colormaps[cmap]
        rgba = np.where(finite[:, None], cm(norm(np.where(finite, v, lo))), (0.8, 0.8, 0.8, 1.0))
        from matplotlib.cm import ScalarMappable

        fig.colorbar(
            ScalarMappable(norm=norm, cmap=cm), ax=ax, shrink=0.7, label=f"test {test_num}"
        )
    elif color_by == "disposition":
        if dispositions is None:
            raise BackendFabError(
                "color_by='disposition' needs dispositions= (PatResult.dispositions)"
            )
        good = df["hbin"].is_in(list(pass_bins)).fill_null(False).to_numpy()
        final = dispositions.filter(pl.col("final_rule")).select("run_id", "part_seq", "rule")
        joined = df.select("run_id", "part_seq").join(
            final, on=["run_id", "part_seq"], how="left", maintain_order="left"
        )
        rules = joined["rule"].to_list()
        rgba = np.empty((df.height, 4))
        rgba[:] = np.where(good[:, None], _rgba(_PASS[0]), _rgba("#b0b0b0"))
        for i, r in enumerate(rules):
            if r is not None:
                rgba[i] = _rgba(RULE_COLORS[r])
        if legend:
            handles.append(Patch(color=_PASS[0], label=f"good: {int(good.sum())}"))
            handles.append(Patch(color="#b0b0b0", label=f"fail: {int((~good).sum())}"))
            for r in RULE_COLORS:
                n = sum(1 for q in rules if q == r)
                if n:
                    handles.append(Patch(color=RULE_COLORS[r], label=f"PAT {r}: {n}"))
    else:
        raise BackendFabError(
            f"color_by={color_by!r} is unknown; use 'hbin', 'sbin', 'value' or 'disposition'"
        )
    _draw_wafer(ax, cx, cy, rgba, lay)
    ax.set_title(title or f"{product} {lot} wafer {wafer} ({color_by})", fontsize=10)
    if handles:
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False
        )
        if standalone:
            fig.subplots_adjust(left=0.02, right=0.7)
    return fig


def lot_gallery(
    die: pl.DataFrame | pl.LazyFrame,
    *,
    lot_id: str | None = None,
    color_by: str = "hbin",
    dispositions: pl.DataFrame | None = None,
    layout=None,
    pass_bins: Sequence[int] = (1,),
    ncols: int = 5,
    panel: float = 2.4,
    dpi: int = 100,
):
    """Every wafer of a lot as a small map (bins or PAT dispositions), in wafer order."""
    lf = die.lazy() if isinstance(die, pl.DataFrame) else die
    if lot_id is not None:
        lf = lf.filter(pl.col("lot_id") == lot_id)
    wafers = lf.select("lot_id", "wafer_id").unique().sort("lot_id", "wafer_id").collect()
    if wafers.height == 0:
        raise BackendFabError(f"lot_gallery: no wafers for lot {lot_id!r}")
    n = wafers.height
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = _canvas((panel * ncols, panel * nrows + 0.4), dpi)
    for i, (lot, wafer) in enumerate(wafers.iter_rows()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        wafer_map(
            lf.filter((pl.col("lot_id") == lot) & (pl.col("wafer_id") == wafer)),
            color_by=color_by,
            dispositions=dispositions,
            layout=layout,
            pass_bins=pass_bins,
            legend=False,
            title=f"{lot} / {wafer}",
            ax=ax,
        )
    fig.suptitle(
        f"lot {lot_id or ', '.join(wafers['lot_id'].unique().sort().to_list())}", fontsize=11
    )
    return fig


def stacked_map_figure(
    stack: pl.DataFrame | pl.LazyFrame,
    *,
    layout=None,
    title: str | None = None,
    cmap: str = "magma_r",
    figsize=(6.5, 6.0),
    dpi: int = 100,
):
    """A stacked fail map (:func:`backend_fab.bins.stacked_map` of one group): fail rate per
    location, significant locations (BH) outlined in cyan squares."""
    import matplotlib as mpl
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    df = stack.collect() if isinstance(stack, pl.LazyFrame) else stack
    if df.height == 0:
        raise BackendFabError("stacked_map_figure: the stack is empty")
    product = df["product"][0] if "product" in df.columns else None
    lay = _layout_for(product, layout)
    cx, cy = _canonical(df["x"].to_numpy(), df["y"].to_numpy(), lay)
    rate = df["fail_rate"].to_numpy()
    norm = Normalize(vmin=0.0, vmax=max(float(rate.max()), 1e-9))
    cm = mpl.colormaps[cmap]
    fig = _canvas(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    _draw_wafer(ax, cx, cy, cm(norm(rate)), lay)
    sig = df["significant"].fill_null(False).to_numpy()
    for x, y in zip(cx[sig], cy[sig], strict=True):
        ax.add_patch(
            Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="#00e5ff", lw=1.2, zorder=4)
        )
    fig.colorbar(ScalarMappable(norm=norm, cmap=cm), ax=ax, shrink=0.7, label="fail rate")
    keys = [c for c in ("lot_id",) if c in df.columns]
    what = f" {df[keys[0]][0]}" if keys else ""
    ax.set_title(
        title or f"stacked fail map{what}: {int(sig.sum())} significant location(s)", fontsize=10
    )
    return fig


# --- charts -----------------------------------------------------------------------------------


def pareto_figure(
    pareto: pl.DataFrame | pl.LazyFrame,
    *,
    top: int = 15,
    pass_bins: Sequence[int] = (1,),
    title: str | None = None,
    figsize=(7.0, 4.0),
    dpi: int = 100,
):
    """Bin Pareto of one group (:func:`backend_fab.bins.bin_pareto`): bars of the fail share per
    bin (bin colours) and the cumulative share."""
    df = pareto.collect() if isinstance(pareto, pl.LazyFrame) else pareto
    df = df.filter(~pl.col("good")).sort("rank").head(top)
    if df.height == 0:
        raise BackendFabError("pareto_figure: no failing bin in the Pareto")
    fig = _canvas(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    bins = df["bin"].to_list()
    labels = [
        f"{b}" + (f"\n{n[:10]}" if n else "")
        for b, n in zip(bins, df["name"].to_list(), strict=True)
    ]
    colors = [bin_color(int(b), pass_bins, _default_pat_bins()) for b in bins]
    xs = np.arange(len(bins))
    ax.bar(xs, df["fraction"].to_numpy() * 100, color=colors, edgecolor="#333333", lw=0.5)
    ax.set_xticks(xs, labels, fontsize=7, rotation=45, ha="right")
    ax.set_ylabel("% of die tested")
    kind = df["kind"][0]
    ax.set_xlabel(kind)
    ax2 = ax.twinx()
    ax2.plot(xs, df["cum_share"].to_numpy() * 100, color="#222222", marker="o", ms=3, lw=1)
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("cumulative % of fails")
    ax.set_title(title or f"{kind} Pareto", fontsize=10)
    fig.tight_layout()
    return fig


def trend_figure(
    trend: pl.DataFrame | pl.LazyFrame,
    *,
    value: str = "yield",
    order_by: str = "start_time",
    label_by: str = "lot_id",
    limits: pl.DataFrame | None = None,
    title: str | None = None,
    figsize=(8.0, 4.8),
    dpi: int = 100,
):
    """Run chart of a :func:`backend_fab.bins.control_chart` / ``yield_trend`` frame: values,
    centre line, Laney p' limits, EWMA with its limits, out-of-control points in red, and the
    SYL level 1 / 2 lines of ``limits`` (rows of the ``limits`` table, key "yield")."""
    df = trend.collect() if isinstance(trend, pl.LazyFrame) else trend
    if df.height == 0:
        raise BackendFabError("trend_figure: the trend is empty")
    df = df.sort(order_by, maintain_order=True)
    fig = _canvas(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(df.height)
    y = df[value].to_numpy()
    ax.plot(xs, y, "o-", color="#1f77b4", ms=4, lw=1, label=value, zorder=3)
    out = df["out_laney"].fill_null(False).to_numpy()
    ax.plot(xs[out], y[out], "o", color="#d62728", ms=7, zorder=4, label="beyond Laney limits")
    ax.plot(xs, df["center"].to_numpy(), color="#333333", lw=1, label="centre")
    ax.step(
        xs,
        df["laney_lcl"].to_numpy(),
        where="mid",
        color="#999999",
        lw=1,
        ls="--",
        label="Laney p'",
    )
    ax.step(xs, df["laney_ucl"].to_numpy(), where="mid", color="#999999", lw=1, ls="--")
    ax.plot(xs, df["ewma"].to_numpy(), color="#ff7f0e", lw=1.2, label="EWMA")
    ax.plot(xs, df["ewma_lcl"].to_numpy(), color="#ff7f0e", lw=0.8, ls=":")
    ax.plot(xs, df["ewma_ucl"].to_numpy(), color="#ff7f0e", lw=0.8, ls=":")
    if limits is not None:
        syl = limits.filter((pl.col("limit_type") == "SYL") & (pl.col("key") == "yield"))
        for row in syl.iter_rows(named=True):
            for lv, color in ((1, "#e6a700"), (2, "#d62728")):
                v = row[f"level{lv}_lo"]
                if v is not None:
                    ax.axhline(
                        v, color=color, lw=1.2, label=f"SYL{lv} ({row['method']} v{row['version']})"
                    )
    if label_by in df.columns:
        ax.set_xticks(xs, df[label_by].cast(pl.String).to_list(), rotation=60, fontsize=7)
    ax.set_ylabel(value)
    ax.set_title(title or f"{value} trend", fontsize=10)
    fig.tight_layout()
    fig.subplots_adjust(bottom=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=4, fontsize=7, frameon=False)
    return fig


def site_figure(
    comparison,
    *,
    group: Mapping | None = None,
    title: str | None = None,
    figsize=(7.0, 4.0),
    dpi: int = 100,
):
    """Yield per probe site with 95 % Wilson intervals from a
    :class:`backend_fab.bins.SiteComparison` (one group, chosen with ``group`` = {key: value}
    when it holds several): flagged sites red, confounded ones (raw difference explained by the
    strata) hatched; the overall chi-square and CMH p-values in the title."""
    sites = comparison.sites
    overall = comparison.overall
    if group:
        for k, v in group.items():
            sites = sites.filter(pl.col(k) == v)
            overall = overall.filter(pl.col(k) == v)
    if sites.height == 0:
        raise BackendFabError("site_figure: no site rows for that group")
    fig = _canvas(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    n = sites["n_tested"].to_numpy().astype(float)
    p = sites["yield"].to_numpy()
    z = 1.96
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    xs = np.arange(sites.height)
    colors = ["#d62728" if f else "#1f77b4" for f in sites["flagged"].to_list()]
    bars = ax.bar(xs, p * 100, color=colors, edgecolor="#333333", lw=0.5)
    for b, conf in zip(bars, sites["confounded"].to_list(), strict=True):
        if conf:
            b.set_hatch("//")
    ax.errorbar(xs, mid * 100, yerr=half * 100, fmt="none", ecolor="#222222", capsize=3)
    ax.set_xticks(xs, [f"site {s}" for s in sites["site"].to_list()], fontsize=8)
    lo = max(0.0, float((p - half).min() * 100) - 2)
    ax.set_ylim(lo, min(100.0, float((p + half).max() * 100) + 1))
    ax.set_ylabel("yield %")
    o = overall.row(0, named=True)
    parts = [f"chi2 p={o['p_value']:.2g} ({o['method']}), V={o['cramers_v']:.3f}"]
    if o.get("cmh_p") is not None:
        parts.append(f"CMH by {o['strata']} p={o['cmh_p']:.2g}")
    ax.set_title(title or "site-to-site yield: " + "; ".join(parts), fontsize=9)
    fig.tight_layout()
    return fig


def pat_histogram(
    result,
    results: pl.DataFrame | pl.LazyFrame,
    *,
    test_num: int,
    lot_id: str | None = None,
    wafer_id: str | None = None,
    pin: int = -1,
    bins: int = 80,
    log: bool = True,
    title: str | None = None,
    figsize=(7.0, 4.0),
    dpi: int = 100,
):
    """Histogram of a test's values on the good final die of a lot or wafer, with the PAT limits
    that applied there (:attr:`PatResult.limits`: SPAT solid black, DPAT dashed red, per rule
    colour) and the values of die PAT flagged on that test marked under the axis."""
    die = result.die.lazy()
    if lot_id is not None:
        die = die.filter(pl.col("lot_id") == lot_id)
    if wafer_id is not None:
        die = die.filter(pl.col("wafer_id") == wafer_id)
    good = set(result.recipe.pass_bins)
    orig = result.dispositions.select("run_id", "part_seq").unique().with_columns(_pat=pl.lit(True))
    d = (
        die.filter(pl.col("final").fill_null(True))
        .join(orig.lazy(), on=["run_id", "part_seq"], how="left", maintain_order="left")
        .filter(pl.col("hbin").is_in(sorted(good)) | pl.col("_pat").fill_null(False))
        .select("run_id", "part_seq")
    )
    res = results.lazy() if isinstance(results, pl.DataFrame) else results
    vals = (
        res.filter((pl.col("test_num") == test_num) & (pl.col("pin").fill_null(-1) == pin))
        .select("run_id", "part_seq", "value")
        .join(d, on=["run_id", "part_seq"], how="inner")
        .collect()
    )
    v = vals["value"].drop_nulls().to_numpy()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise BackendFabError(f"pat_histogram: no values of test {test_num} for that selection")
    fig = _canvas(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(v, bins=bins, color="#9ecae1", edgecolor="#4a7fb0", lw=0.3, log=log)
    # only the limits in the test's own units (NNR and IDDQ-delta limit residuals and deltas)
    lim = result.limits.filter(
        (pl.col("test_num") == test_num)
        & (pl.col("pin") == pin)
        & pl.col("rule").is_in(["spat", "dpat"])
    )
    if lot_id is not None:
        lim = lim.filter(pl.col("lot_id").is_null() | (pl.col("lot_id") == lot_id))
    if wafer_id is not None:
        lim = lim.filter(pl.col("wafer_id").is_null() | (pl.col("wafer_id") == wafer_id))
    seen = set()
    for row in lim.iter_rows(named=True):
        color = RULE_COLORS.get(row["rule"], "#000000")
        style = "-" if row["rule"] == "spat" else "--"
        for side in ("lo_limit", "hi_limit"):
            x = row[side]
            if x is None:
                continue
            label = row["rule"].upper() if row["rule"] not in seen else None
            seen.add(row["rule"])
            ax.axvline(x, color=color, ls=style, lw=1.2, label=label)
    flagged = result.dispositions.filter(pl.col("test_num") == test_num)
    if lot_id is not None:
        flagged = flagged.filter(pl.col("lot_id") == lot_id)
    if wafer_id is not None:
        flagged = flagged.filter(pl.col("wafer_id") == wafer_id)
    for rule, part in flagged.group_by("rule", maintain_order=True):
        if rule[0] in ("dpat", "spat"):
            fx = part["value"].drop_nulls().to_numpy()
            ax.plot(
                fx,
                np.full(fx.size, 0.7),
                "v",
                color=RULE_COLORS[rule[0]],
                ms=6,
                label=f"{rule[0]} outliers: {fx.size}",
            )
    ax.set_xlabel(f"test {test_num}")
    ax.set_ylabel("die")
    ax.legend(fontsize=7)
    where = " ".join(s for s in (lot_id, wafer_id) if s)
    ax.set_title(title or f"test {test_num} {where}: {v.size} good die", fontsize=10)
    fig.tight_layout()
    return fig
