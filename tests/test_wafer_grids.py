"""Die tables <-> dense lot grids, coordinate normalisation, geometry (backend_fab.wafer)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend_fab.errors import KernelInputError
from backend_fab.layout import Layout
from backend_fab.wafer import (
    WaferGrid,
    add_geometry,
    canonical_xy,
    gross_die_frame,
    lot_grid,
    lot_grids,
)

LAYOUT = Layout(
    "P1",
    wafer_size_mm=30.0,
    die_width_mm=2.0,
    die_height_mm=2.0,
    edge_exclusion_mm=1.0,
    reticle_cols=3,
    reticle_rows=2,
)


def _die(rows) -> pl.DataFrame:
    """rows: (lot, wafer, x, y, hbin) tuples."""
    return pl.DataFrame(
        rows,
        schema={
            "lot_id": pl.String,
            "wafer_id": pl.String,
            "x": pl.Int32,
            "y": pl.Int32,
            "hbin": pl.Int32,
        },
        orient="row",
    )


@st.composite
def die_tables(draw):
    """1-3 lots of 1-4 wafers, unique (x, y) per wafer, empty wafers and null bins included."""
    rows = []
    for lot in range(draw(st.integers(1, 3))):
        for w in range(draw(st.integers(1, 4))):
            pts = draw(st.sets(st.tuples(st.integers(-6, 6), st.integers(-6, 6)), max_size=40))
            for x, y in sorted(pts, key=lambda p: draw(st.integers(0, 3)) * 100 + p[0]):
                rows.append(
                    (f"L{lot}", f"{w:02d}", x, y, draw(st.sampled_from([1, 1, 1, 2, 7, None])))
                )
    return _die(rows)


@given(die_tables())
def test_grid_round_trip(die):
    grids = lot_grids(die)
    assert [g.lot_id for g in grids] == list(dict.fromkeys(die.get_column("lot_id").to_list()))
    if die.height == 0:
        assert grids == []
        return
    back = pl.concat([g.to_frame() for g in grids])
    expected = die.select(
        "lot_id",
        "wafer_id",
        "x",
        "y",
        pl.when(pl.col("hbin") == 1).then(0).otherwise(1).cast(pl.Int8).alias("state"),
    )
    key = ["lot_id", "wafer_id", "x", "y"]
    assert back.sort(key).equals(expected.sort(key))
    for g in grids:
        part = die.filter(pl.col("lot_id") == g.lot_id)
        assert g.grid.dtype == np.int8 and g.grid.shape[0] == part.get_column("wafer_id").n_unique()
        assert g.x0 == part.get_column("x").min() and g.y0 == part.get_column("y").min()


@given(die_tables())
def test_bin_and_value_grids(die):
    die = die.with_columns((pl.col("x") * 10 + pl.col("y")).cast(pl.Float64).alias("v"))
    for g in lot_grids(die, kind="bin"):
        f = g.to_frame()
        assert g.grid.dtype == np.int32
        part = die.filter(pl.col("lot_id") == g.lot_id).select(
            "wafer_id", "x", "y", pl.col("hbin").fill_null(-2).alias("bin")
        )
        assert (
            f.drop("lot_id")
            .sort("wafer_id", "x", "y")
            .equals(part.sort("wafer_id", "x", "y").with_columns(pl.col("bin").cast(pl.Int32)))
        )
    for g in lot_grids(die, kind="value", value="v"):
        w, iy, ix = np.nonzero(~np.isnan(g.grid))
        np.testing.assert_array_equal(g.grid[w, iy, ix], (ix + g.x0) * 10.0 + iy + g.y0)


def test_null_coordinates_are_dropped_and_counted_or_refused():
    die = _die(
        [("L", "1", 0, 0, 1), ("L", "1", None, 1, 2), ("L", "2", 1, None, 1), ("L", "2", 1, 1, 2)]
    )
    g = lot_grid(die)
    assert g.n_null_xy == 2
    assert int((g.grid >= 0).sum()) == 2
    with pytest.raises(KernelInputError, match="null x or y"):
        lot_grid(die, null_xy="raise")


def test_duplicates_are_refused_or_resolved():
    die = _die([("L", "1", 0, 0, 1), ("L", "1", 0, 0, 5)])
    with pytest.raises(KernelInputError, match=r"2 rows at x=0, y=0"):
        lot_grid(die)
    assert lot_grid(die, duplicates="last").grid[0, 0, 0] == 1
    retest = die.with_columns(pl.Series("final", [False, True]))
    assert lot_grid(retest).grid[0, 0, 0] == 1  # the superseded row is left out


def test_bad_bin_policies():
    die = _die(
        [("L", "1", 0, 0, 1), ("L", "1", 1, 0, 2), ("L", "1", 2, 0, None), ("L", "1", 3, 0, 4)]
    )
    np.testing.assert_array_equal(lot_grid(die).grid[0, 0], [0, 1, 1, 1])
    np.testing.assert_array_equal(lot_grid(die, pass_bins=[1, 2]).grid[0, 0], [0, 0, 1, 1])
    np.testing.assert_array_equal(lot_grid(die, bad_bins=[4]).grid[0, 0], [0, 0, 1, 1])
    passed = die.drop("hbin").with_columns(pl.Series("passed", [True, False, None, True]))
    np.testing.assert_array_equal(lot_grid(passed).grid[0, 0], [0, 1, 1, 0])
    with pytest.raises(KernelInputError, match="neither the bin column"):
        lot_grid(die.drop("hbin"))


def test_garbage_coordinates_are_refused():
    die = _die([("L", "1", -32768, 0, 1), ("L", "1", 32767, 30000, 1)])
    with pytest.raises(KernelInputError, match="probably garbage"):
        lot_grid(die)


def test_layout_widens_the_grid_and_supplies_geometry():
    die = _die([("L", "1", 0, 0, 2), ("L", "1", 1, 0, 1)])
    g = lot_grid(die, layout=LAYOUT)
    x0, x1, y0, y1 = LAYOUT.bounds
    assert (g.x0, g.y0) == (x0, y0) and g.grid.shape == (1, y1 - y0 + 1, x1 - x0 + 1)
    assert g.center() == (LAYOUT.center_x - x0, LAYOUT.center_y - y0)
    assert g.radius() == LAYOUT.radius_die
    ring = g.ring_grid()
    assert ring[0 - y0, 0 - x0] == LAYOUT.ring_index(0, 0)
    pos, n = g.reticle_position_grid()
    assert n == 6 and pos[0 - y0, 1 - x0] == 1
    no_layout = lot_grid(die)
    with pytest.raises(ValueError, match="layout"):
        no_layout.ring_grid()


def test_gross_die_frame_and_add_geometry():
    geo = gross_die_frame(LAYOUT)
    x, y = LAYOUT.gross_die()
    assert geo.height == LAYOUT.n_gross
    np.testing.assert_array_equal(geo.get_column("ring").to_numpy(), LAYOUT.ring_index(x, y))
    np.testing.assert_allclose(
        geo.get_column("edge_distance_mm").to_numpy(), LAYOUT.edge_distance(x, y)
    )
    assert geo.get_column("radius").max() <= 1.0
    die = _die([("L", "1", 0, 0, 1), ("L", "1", 99, 99, 1)])
    out = add_geometry(die.lazy(), LAYOUT)
    assert isinstance(out, pl.LazyFrame)
    out = out.collect()
    assert out.height == 2 and out.get_column("ring")[1] is None
    assert out.get_column("ring")[0] == LAYOUT.ring_index(0, 0)


def test_canonical_xy_from_wcr_fields():
    die = pl.DataFrame(
        {
            "run_id": ["r"] * 4,
            "wafer_id": ["1", "1", "2", "3"],
            "x": pl.Series([3, -2, 3, 3], dtype=pl.Int32),
            "y": pl.Series([1, 5, 1, 1], dtype=pl.Int32),
            "hbin": [1, 1, 1, 1],
        }
    )
    wafers = pl.DataFrame(
        {
            "run_id": ["r", "r", "r"],
            "wafer_id": ["1", "2", "3"],
            "pos_x": ["L", "R", None],
            "pos_y": ["D", "U", None],
            "wafer_flat": ["D", "R", None],
            "center_x": pl.Series([1, 0, None], dtype=pl.Int32),
            "center_y": pl.Series([1, 0, None], dtype=pl.Int32),
        }
    )
    out = canonical_xy(die.lazy(), wafers=wafers, notch="D")
    assert isinstance(out, pl.LazyFrame)
    got = out.collect()
    assert got.columns == die.columns
    # wafer 1: x grows left, y grows down -> signs flip; notch already down
    assert got.row(0)[2:4] == (-3, -1) and got.row(1)[2:4] == (2, -5)
    # wafer 2: notch on the right -> a quarter turn clockwise brings it down: (x, y) -> (y, -x)
    assert got.row(2)[2:4] == (1, -3)
    # wafer 3: nothing known -> unchanged
    assert got.row(3)[2:4] == (3, 1)
    wcr = canonical_xy(die.lazy(), wafers=wafers, origin="wcr").collect()
    assert wcr.row(0)[2:4] == (-2, 0)
    lay = Layout("P", 30.0, 2.0, 2.0, pos_x="L", pos_y="U")
    assert canonical_xy(die.lazy(), layout=lay).collect().row(0)[2:4] == (-3, 1)
    with pytest.raises(ValueError, match="origin"):
        canonical_xy(die.lazy(), origin="centre")


def test_wafer_grid_properties():
    die = _die([("L", "1", 2, 3, 1), ("L", "2", 4, 3, 2)])
    g = lot_grid(die)
    assert isinstance(g, WaferGrid) and g.n_wafers == 2 and g.shape == (2, 1, 3)
    np.testing.assert_array_equal(g.xs, [2, 3, 4])
    np.testing.assert_array_equal(g.ys, [3])
    assert g.center() == (1.0, 0.0)
    with pytest.raises(ValueError, match="one lot"):
        lot_grid(pl.concat([die, die.with_columns(pl.lit("M").alias("lot_id"))]))
    assert (
        lot_grid(pl.concat([die, die.with_columns(pl.lit("M").alias("lot_id"))]), lot_id="M").lot_id
        == "M"
    )
