"""Figures checked by their pixels: a die's colour is its bin's colour, the notch is on the
layout's side, tester axes are flipped into the canonical frame. Every figure of the module is
drawn from the synthetic ``ci`` fab and saved (paths printed) for a look."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from yield_fixtures import ci_lake, ci_pat, die_frame, figure_dir, ws_die

from backend_fab import bins, limits, plot
from backend_fab.errors import BackendFabError
from backend_fab.layout import Layout


def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())


def _pixel_at(fig, ax, x: float, y: float) -> np.ndarray:
    img = _pixels(fig)
    px, py = ax.transData.transform((x, y))
    return img[round(img.shape[0] - py), round(px)]


def _rgb255(rgba) -> np.ndarray:
    return np.round(np.asarray(rgba[:3]) * 255).astype(int)


def _layout(**kw) -> Layout:
    return Layout("P", 24.0, 1.0, 1.0, edge_exclusion_mm=0.0, **kw)


def _wafer(layout: Layout) -> pl.DataFrame:
    xs, ys = layout.gross_die()
    hbin = np.where(xs > 4, 7, np.where(ys > 4, 3, 1))
    hbin[(xs == 2) & (ys == -3)] = 5
    xd, yd = layout.from_canonical(xs, ys)
    return die_frame(
        [
            {"x": int(a), "y": int(b), "hbin": int(h), "part_seq": i}
            for i, (a, b, h) in enumerate(zip(xd, yd, hbin, strict=True))
        ]
    )


@pytest.mark.parametrize("pos_x", ["R", "L"])
def test_a_die_has_the_colour_of_its_bin(pos_x):
    layout = _layout(pos_x=pos_x)
    die = _wafer(layout)
    fig = plot.wafer_map(die, layout=layout, legend=False)
    ax = fig.axes[0]
    for (x, y), b in (((2, -3), 5), ((0, 0), 1), ((6, 0), 7), ((0, 6), 3)):
        got = _pixel_at(fig, ax, x, y)[:3]
        want = _rgb255(plot.bin_color(b))
        assert np.abs(got.astype(int) - want).max() <= 1, (x, y, b, got, want)
    # the bin-5 die sits right of centre in the canonical frame whatever the tester's x axis is
    data_x = die.filter(pl.col("hbin") == 5)["x"][0]
    assert data_x == (2 if pos_x == "R" else -2)


@pytest.mark.parametrize("side", ["D", "U", "L", "R"])
def test_the_notch_is_on_the_layout_side(side):
    layout = _layout(notch=side)
    fig = plot.wafer_map(_wafer(layout), layout=layout, legend=False)
    ax = fig.axes[0]
    r = layout.radius_die[0]
    offsets = {"D": (0, -r - 0.3), "U": (0, r + 0.3), "L": (-r - 0.3, 0), "R": (r + 0.3, 0)}
    for s, (dx, dy) in offsets.items():
        px = _pixel_at(fig, ax, layout.center_x + dx, layout.center_y + dy)[:3]
        is_black = int(px.max()) < 40
        assert is_black == (s == side), (side, s, px)


def test_value_and_disposition_colours():
    lake = ci_lake()
    out = ci_pat()
    die = ws_die(lake)
    lay = lake.scan("layouts").collect()
    layout = Layout.from_row(lay.row(0, named=True))
    final = out.dispositions.filter(pl.col("final_rule"))
    pick = final.row(0, named=True)
    fig = plot.wafer_map(
        die,
        lot_id=pick["lot_id"],
        wafer_id=pick["wafer_id"],
        layout=lay,
        color_by="disposition",
        dispositions=out.dispositions,
        legend=False,
    )
    cx, cy = layout.to_canonical(pick["x"], pick["y"])
    got = _pixel_at(fig, fig.axes[0], float(cx), float(cy))[:3]
    want = _rgb255(plot._rgba(plot.RULE_COLORS[pick["rule"]]))
    assert np.abs(got.astype(int) - want).max() <= 1
    # the die with the highest value of a test takes the top colour of the colormap
    res = lake.scan("results")
    w = die.filter((pl.col("lot_id") == "AXL0001") & (pl.col("wafer_id") == "02")).collect()
    vals = (
        res.filter(pl.col("test_num") == 3002)
        .join(w.filter(pl.col("final")).lazy(), on=["run_id", "part_seq"])
        .collect()
        .sort("value")
    )
    mid = vals.row(vals.height // 2, named=True)
    fig2 = plot.wafer_map(
        die,
        lot_id="AXL0001",
        wafer_id="02",
        layout=lay,
        color_by="value",
        results=res,
        test_num=3002,
    )
    import matplotlib as mpl

    lo, hi = np.quantile(vals["value"].to_numpy(), [0.005, 0.995])
    want2 = _rgb255(mpl.colormaps["viridis"]((mid["value"] - lo) / (hi - lo)))
    got2 = _pixel_at(fig2, fig2.axes[0], *map(float, layout.to_canonical(mid["x"], mid["y"])))[:3]
    assert np.abs(got2.astype(int) - want2).max() <= 2


def test_bad_requests():
    layout = _layout()
    die = _wafer(layout)
    two = pl.concat([die, die.with_columns(wafer_id=pl.lit("W2"), run_id=pl.lit("r2"))])
    with pytest.raises(BackendFabError, match="one wafer"):
        plot.wafer_map(two)
    with pytest.raises(BackendFabError, match="color_by"):
        plot.wafer_map(die, color_by="site")
    with pytest.raises(BackendFabError, match="needs dispositions"):
        plot.wafer_map(die, color_by="disposition")
    with pytest.raises(BackendFabError, match="no die"):
        plot.wafer_map(die, wafer_id="nope")


def test_every_figure_on_the_synthetic_fab():
    lake = ci_lake()
    out = ci_pat()
    die = ws_die(lake)
    lay = lake.scan("layouts").collect()
    runs = lake.scan("runs")
    res = lake.scan("results")
    folder = figure_dir()
    figures = {
        "wafer_hbin": plot.wafer_map(die, lot_id="AXL0002", wafer_id="01", layout=lay),
        "wafer_sbin": plot.wafer_map(
            die, lot_id="AXL0001", wafer_id="03", layout=lay, color_by="sbin"
        ),
        "wafer_value": plot.wafer_map(
            die,
            lot_id="AXL0001",
            wafer_id="01",
            layout=lay,
            color_by="value",
            results=res,
            test_num=3000,
        ),
        "wafer_pat": plot.wafer_map(
            die,
            lot_id="AXL0002",
            wafer_id="02",
            layout=lay,
            color_by="disposition",
            dispositions=out.dispositions,
        ),
        "gallery": plot.lot_gallery(die, lot_id="AXL0002", layout=lay),
        "stacked": plot.stacked_map_figure(
            bins.stacked_map(die.filter(pl.col("lot_id") == "AXL0002"), which="first"), layout=lay
        ),
        "pareto": plot.pareto_figure(
            bins.bin_pareto(die, kind="sbin", bins=lake.scan("bins"), which="first").filter(
                pl.col("lot_id") == "AXL0001"
            )
        ),
        "sites": plot.site_figure(
            bins.site_comparison(die, which="first", layouts=lay, strata="wafer_ring_reticle"),
            group={"lot_id": "AXL0001"},
        ),
        "pat_histogram": plot.pat_histogram(
            out, res, test_num=3001, lot_id="AXL0002", wafer_id="01"
        ),
    }
    tr = bins.yield_trend(die, runs, level="wafer").collect()
    syl = limits.syl_sbl_limits(
        die, runs=runs, level="wafer", min_lots=2, min_points=10, method="normal"
    )
    figures["trend"] = plot.trend_figure(tr, label_by="wafer_id", limits=syl.limits)
    print()
    for name, fig in figures.items():
        img = _pixels(fig)
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert len(np.unique(img.reshape(-1, 4), axis=0)) > 5  # something was drawn
        path = folder / f"{name}.png"
        fig.savefig(path)
        print(f"figure {name}: {path}")
