"""Product layouts: gross die, rings, edge distance, reticle positions, table rows."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend_fab import schema
from backend_fab.layout import Layout


def naive_gross(layout: Layout) -> set[tuple[int, int]]:
    """Every die whose four corners lie inside the usable disk, by brute force."""
    out = set()
    w, h = layout.die_width_mm, layout.die_height_mm
    r2 = layout.usable_radius_mm**2
    n = int(layout.radius_mm / min(w, h)) + 3
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            cx = (i - layout.center_x) * w
            cy = (j - layout.center_y) * h
            corners = [(cx + sx * w / 2, cy + sy * h / 2) for sx in (-1, 1) for sy in (-1, 1)]
            if all(a * a + b * b <= r2 for a, b in corners):
                out.add((i, j))
    return out


def naive_rings(cells: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """Peel the set: ring k = cells with an 8-neighbour outside what is left."""
    left = set(cells)
    ring = {}
    k = 0
    while left:
        edge = {
            (i, j)
            for i, j in left
            if any((i + a, j + b) not in left for a in (-1, 0, 1) for b in (-1, 0, 1))
        }
        for c in edge:
            ring[c] = k
        left -= edge
        k += 1
    return ring


layouts = st.builds(
    Layout,
    product=st.just("P"),
    wafer_size_mm=st.sampled_from([100.0, 150.0, 200.0]),
    die_width_mm=st.floats(4.0, 30.0),
    die_height_mm=st.floats(4.0, 30.0),
    edge_exclusion_mm=st.floats(0.0, 6.0),
    reticle_cols=st.integers(1, 6),
    reticle_rows=st.integers(1, 6),
    reticle_offset_x=st.integers(-3, 3),
    reticle_offset_y=st.integers(-3, 3),
    center_x=st.sampled_from([0.0, 0.5, -0.5, 0.25]),
    center_y=st.sampled_from([0.0, 0.5, -0.3]),
)


@given(layouts)
def test_gross_die_and_rings_match_brute_force(layout):
    x, y = layout.gross_die()
    assert x.dtype == np.int32 and y.dtype == np.int32
    got = set(zip(x.tolist(), y.tolist(), strict=True))
    assert len(got) == x.size == layout.n_gross
    assert got == naive_gross(layout)
    rings = naive_rings(got)
    assert layout.ring_index(x, y).tolist() == [
        rings[c] for c in zip(x.tolist(), y.tolist(), strict=True)
    ]
    # order: y then x ascending
    key = y.astype(np.int64) * 100000 + x
    assert np.all(np.diff(key) > 0)
    assert layout.n_rings == max(rings.values()) + 1


@given(layouts)
def test_reticle_position_and_field_rebuild_the_die(layout):
    x, y = layout.gross_die()
    rx, ry = layout.reticle_xy(x, y)
    fx, fy = layout.reticle_field(x, y)
    assert rx.min() >= 0 and rx.max() < layout.reticle_cols
    assert ry.min() >= 0 and ry.max() < layout.reticle_rows
    assert np.array_equal(layout.reticle_offset_x + fx * layout.reticle_cols + rx, x)
    assert np.array_equal(layout.reticle_offset_y + fy * layout.reticle_rows + ry, y)


def test_die_zero_is_at_the_centre_and_axes_point_right_and_up():
    layout = Layout("P", 200.0, 5.0, 4.0, 3.0)
    cx, cy = layout.die_center_mm(np.array([0, 1, 0]), np.array([0, 0, 1]))
    assert cx.tolist() == [0.0, 5.0, 0.0]
    assert cy.tolist() == [0.0, 0.0, 4.0]
    x, y = layout.gross_die()
    assert (0, 0) in set(zip(x.tolist(), y.tolist(), strict=True))
    # symmetric about the centre when the centre sits on die (0, 0)
    assert set(zip(x.tolist(), y.tolist(), strict=True)) == set(
        zip((-x).tolist(), (-y).tolist(), strict=True)
    )
    assert layout.radius_die == (20.0, 25.0)
    u, v = layout.normalized(x, y)
    assert np.hypot(u, v).max() < 1.0


def test_half_pitch_centre_is_symmetric_about_the_die_border():
    layout = Layout("P", 150.0, 6.0, 6.0, 2.0, center_x=0.5)
    x, y = layout.gross_die()
    cells = set(zip(x.tolist(), y.tolist(), strict=True))
    assert cells == {(1 - i, j) for i, j in cells}


def test_edge_distance_and_ring_zero():
    layout = Layout("P", 200.0, 5.0, 5.0, 3.0)
    x, y = layout.gross_die()
    d = layout.edge_distance(x, y)
    assert np.all(d >= math.hypot(2.5, 2.5) - 1e-9)
    rings = layout.ring_index(x, y)
    # the outer ring is nearer the edge than the inner die
    assert d[rings == 0].max() < d[rings >= 3].min()
    assert layout.ring_index(np.array([1000]), np.array([0])).tolist() == [-1]
    assert layout.is_gross(np.array([0, 1000]), np.array([0, 0])).tolist() == [True, False]


def test_canonical_conversion_flips_signs():
    layout = Layout("P", 200.0, 5.0, 5.0, 3.0, pos_x="L", pos_y="D")
    cx, cy = layout.to_canonical(np.array([3, -2]), np.array([1, 4]))
    assert cx.tolist() == [-3, 2] and cy.tolist() == [-1, -4]
    back = layout.from_canonical(cx, cy)
    assert back[0].tolist() == [3, -2] and back[1].tolist() == [1, 4]
    same = Layout("P", 200.0, 5.0, 5.0, 3.0)
    assert same.to_canonical([3], [1])[0].tolist() == [3]


def test_row_conforms_to_the_layouts_table_and_round_trips():
    layout = Layout(
        "PX",
        300.0,
        7.5,
        6.25,
        3.0,
        notch="R",
        pos_y="D",
        reticle_cols=4,
        reticle_rows=3,
        reticle_offset_x=1,
        pass_hbins=(1, 2),
        center_x=0.5,
    )
    row = layout.to_row()
    frame = schema.conform("layouts", pl.DataFrame([row]))
    assert frame.height == 1
    assert set(row) == set(schema.table("layouts").columns)
    assert row["pass_hbins"] == "1,2" and row["gross_die"] == layout.n_gross
    assert Layout.from_row(frame.row(0, named=True)) == layout
    bad = dict(row, gross_die=row["gross_die"] + 1)
    with pytest.raises(ValueError, match="gross_die"):
        Layout.from_row(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"wafer_size_mm": -1.0}, "wafer_size_mm"),
        ({"die_width_mm": 0.0}, "die_width_mm"),
        ({"edge_exclusion_mm": 120.0}, "edge_exclusion_mm"),
        ({"notch": "X"}, "notch"),
        ({"pos_x": "U"}, "pos_x"),
        ({"pos_y": "L"}, "pos_y"),
        ({"reticle_cols": 0}, "reticle_cols"),
        ({"center_x": 0.7}, "center_x"),
        ({"pass_hbins": ()}, "pass_hbins"),
        ({"die_width_mm": 250.0}, "no die fits"),
    ],
)
def test_invalid_layouts_are_refused(kwargs, match):
    args = {"product": "P", "wafer_size_mm": 200.0, "die_width_mm": 5.0, "die_height_mm": 5.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Layout(**args)


def test_gross_die_arrays_are_read_only_and_cached():
    layout = Layout("P", 200.0, 5.0, 5.0, 3.0)
    x, _ = layout.gross_die()
    assert not x.flags.writeable
    assert layout.gross_die()[0] is x
    assert hash(layout) == hash(Layout("P", 200.0, 5.0, 5.0, 3.0))
