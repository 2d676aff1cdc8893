"""Genealogy building blocks on small hand-made frames: ECID, trace order, lineage, GDBN, screens."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from backend_fab import genealogy as G
from backend_fab import schema
from backend_fab.errors import GenealogyError


def test_decode_ecid_default_and_custom_patterns():
    f = pl.DataFrame({"ecid": ["LOT1:07:-12:5", "garbage", None, "L:W:+3:-4"]})
    out = f.select(G.decode_ecid().alias("d")).unnest("d")
    assert out.rows() == [
        ("LOT1", "07", -12, 5),
        (None, None, None, None),
        (None,) * 4,
        ("L", "W", 3, -4),
    ]
    custom = r"^(?P<lot>\w{6})(?P<wafer>\d{2})X(?P<x>\d{3})Y(?P<y>\d{3})$"
    g = pl.DataFrame({"ecid": ["ABCDEF07X012Y003"]}).select(
        G.decode_ecid(pattern=custom).alias("d")
    )
    assert g.unnest("d").row(0) == ("ABCDEF", "07", 12, 3)
    with pytest.raises(ValueError, match="lacks the named group"):
        G.decode_ecid(pattern=r"(?P<lot>.*)")


def _units(rows):
    base = {c: None for c in schema.table("units").columns}
    frame = [base | {"insertion": "FT1", "passed": True, "run_id": "r"} | r for r in rows]
    return schema.conform("units", pl.DataFrame(frame, infer_schema_length=None))


def _edges(rows):
    base = {c: None for c in schema.table("genealogy").columns}
    frame = [base | {"qty": 1, "source": "test", "run_id": "r"} | r for r in rows]
    frame = [r | {"edge_id": f"e{i}"} for i, r in enumerate(frame)]
    return schema.conform("genealogy", pl.DataFrame(frame, infer_schema_length=None))


def test_trace_takes_unit_id_then_position_then_ecid_then_units_columns():
    units = _units(
        [
            {"unit_id": "U1", "ecid": "F1:01:9:9", "strip_id": "S", "row": 0, "col": 0},
            {"unit_id": "U2", "ecid": "F1:01:2:2", "strip_id": "S", "row": 0, "col": 1},
            {"unit_id": "U3", "ecid": "F1:01:3:3"},
            {
                "unit_id": "U4",
                "traced_lot_id": "F9",
                "traced_wafer_id": "09",
                "traced_x": 4,
                "traced_y": 4,
            },
            {"unit_id": "U5"},
        ]
    )
    edges = _edges(
        [
            {
                "relation": "transfer",
                "from_lot_id": "F1",
                "from_wafer_id": "01",
                "from_x": 1,
                "from_y": 1,
                "assembly_lot_id": "A",
                "strip_id": "S",
                "row": 0,
                "col": 0,
                "unit_id": "U1",
            },
            {
                "relation": "transfer",
                "from_lot_id": "F1",
                "from_wafer_id": "01",
                "from_x": 2,
                "from_y": 2,
                "assembly_lot_id": "A",
                "strip_id": "S",
                "row": 0,
                "col": 1,
            },
        ]
    )
    out = G.trace(units.lazy(), edges.lazy()).collect().sort("unit_id")
    assert out.select("unit_id", "lot_id", "wafer_id", "x", "y", "trace_source").rows() == [
        ("U1", "F1", "01", 1, 1, "unit_id"),
        ("U2", "F1", "01", 2, 2, "position"),
        ("U3", "F1", "01", 3, 3, "ecid"),
        ("U4", "F9", "09", 4, 4, "units"),
        ("U5", None, None, None, None, None),
    ]
    # U1's ECID names another die than its genealogy: flagged
    assert out.get_column("trace_conflict").to_list() == [True, False, False, False, False]
    filled = G.traced_units(units.lazy(), edges.lazy()).collect()
    assert filled.columns == schema.table("units").columns
    schema.validate("units", filled)
    assert filled.sort("unit_id").get_column("traced_x").to_list() == [1, 2, 3, 4, None]


def test_lot_lineage_multi_level_fractions_and_cycles():
    edges = _edges(
        [
            {"relation": "merge", "from_lot_id": "F1", "assembly_lot_id": "A1", "qty": 60},
            {"relation": "merge", "from_lot_id": "F2", "assembly_lot_id": "A1", "qty": 40},
            {"relation": "split", "from_lot_id": "A1", "assembly_lot_id": "S1", "qty": 30},
            {"relation": "split", "from_lot_id": "A1", "assembly_lot_id": "S2", "qty": 70},
            {"relation": "merge", "from_lot_id": "S1", "assembly_lot_id": "R1", "qty": 30},
            {"relation": "merge", "from_lot_id": "F3", "assembly_lot_id": "R1", "qty": 10},
        ]
    )
    lineage = G.lot_lineage(edges)
    r1 = {
        (r["ancestor_lot_id"], r["depth"]): r["fraction"]
        for r in lineage.filter(pl.col("lot_id") == "R1").iter_rows(named=True)
    }
    assert r1 == pytest.approx(
        {("S1", 1): 0.75, ("F3", 1): 0.25, ("A1", 2): 0.75, ("F1", 3): 0.45, ("F2", 3): 0.3}
    )
    cyc = pl.concat(
        [
            edges,
            _edges([{"relation": "split", "from_lot_id": "R1", "assembly_lot_id": "F1", "qty": 1}]),
        ]
    )
    with pytest.raises(GenealogyError, match="descends from itself"):
        G.lot_lineage(cyc)


def _naive_scores(cells, weights):
    """Sum of weights of failing 8-neighbours of each passing cell (dict based)."""
    status = {(w, x, y): ok for w, x, y, ok in cells}
    out = {}
    for (w, x, y), ok in status.items():
        if not ok:
            continue
        score = 0.0
        n_bad = 0
        for (dx, dy), wt in weights.items():
            if status.get((w, x + dx, y + dy)) is False:
                score += wt
                n_bad += 1
        out[(w, x, y)] = (score, n_bad)
    return out


@st.composite
def wafers(draw):
    """1-4 wafers of unique (x, y) die with pass/fail, empty wafers included."""
    cells = []
    for w in range(draw(st.integers(1, 4))):
        xy = draw(st.sets(st.tuples(st.integers(-5, 5), st.integers(-5, 5)), max_size=60))
        for x, y in xy:
            cells.append((f"{w:02d}", x, y, draw(st.booleans())))
    return cells


@given(cells=wafers(), weights=st.sampled_from([None, {(0, 1): 1.0, (0, -1): 1.0}]))
def test_neighbourhood_scores_match_the_naive_count(cells, weights):
    die = pl.DataFrame(
        {
            "lot_id": ["L"] * len(cells),
            "wafer_id": [c[0] for c in cells],
            "x": [c[1] for c in cells],
            "y": [c[2] for c in cells],
            "passed": [c[3] for c in cells],
        },
        schema={
            "lot_id": pl.String,
            "wafer_id": pl.String,
            "x": pl.Int32,
            "y": pl.Int32,
            "passed": pl.Boolean,
        },
    )
    got = G.neighbourhood_scores(die.lazy(), weights=weights).collect()
    want = _naive_scores(cells, weights or G.GALAXY_WEIGHTS)
    assert got.height == len(want)
    for r in got.iter_rows(named=True):
        assert (r["score"], r["n_bad"]) == want[(r["wafer_id"], r["x"], r["y"])]


def test_screen_effectiveness_counts_by_hand():
    die = [("L", "01", x, 0) for x in range(10)]
    failed = {0, 1, 2}  # three later fails among ten traced die
    traced = pl.DataFrame(
        {
            "unit_id": [f"U{i}" for i in range(10)],
            "insertion": ["FT1"] * 10,
            "lot_id": [d[0] for d in die],
            "wafer_id": [d[1] for d in die],
            "x": [d[2] for d in die],
            "y": [d[3] for d in die],
            "passed": [i not in failed for i in range(10)],
        },
        schema_overrides={"x": pl.Int32, "y": pl.Int32},
    )
    flags = pl.DataFrame(
        {
            "lot_id": "L",
            "wafer_id": "01",
            "x": [0, 1, 5, 1, 2, 7, 42],
            "y": 0,
            "rule": ["A", "A", "A", "B", "B", "B", "B"],
        }
    )
    rep = G.screen_effectiveness(flags, traced)
    rows = {r["screen"]: r for r in rep.iter_rows(named=True)}
    a = rows["A"]
    assert (a["n_die"], a["n_fails"], a["n_flagged"], a["caught"], a["overkill"], a["escapes"]) == (
        10,
        3,
        3,
        2,
        1,
        1,
    )
    assert a["lift"] == pytest.approx((2 / 3) / 0.3)
    assert a["random_expected_caught"] == pytest.approx(0.9)
    assert a["p_value"] == pytest.approx(stats.hypergeom.sf(1, 10, 3, 3))
    assert rows["B"]["n_flagged"] == 3  # the flag at x=42 has no traced unit
    assert (rows["A | B"]["n_flagged"], rows["A | B"]["caught"]) == (5, 3)
    assert (rows["A & B"]["n_flagged"], rows["A & B"]["caught"]) == (1, 1)
    assert rows["any"]["n_flagged"] == 5
    scores = pl.DataFrame(
        {
            "lot_id": "L",
            "wafer_id": "01",
            "x": list(range(10)),
            "y": 0,
            "score": [9.0, 8, 1, 0, 0, 3, 0, 0, 0, 0],
        }
    )
    curve = G.screen_tradeoff(scores, traced, thresholds=[1, 3, 8])
    assert curve.get_column("n_flagged").to_list() == [4, 3, 2]
    assert curve.get_column("caught").to_list() == [3, 2, 2]
    assert curve.get_column("random_catch_rate").to_list() == pytest.approx([0.4, 0.3, 0.2])
    with pytest.raises(GenealogyError, match="no traced unit"):
        G.screen_effectiveness(flags, traced.with_columns(pl.lit(None, dtype=pl.Int32).alias("x")))


def test_fab_namespace_aliases_reach_the_genealogy_and_assembly_functions():
    import backend_fab.frame  # noqa: F401

    units = _units([{"unit_id": "U1", "ecid": "F1:01:3:3", "passed": False}])
    traced = units.fab.trace()  # DataFrame in, DataFrame out
    assert isinstance(traced, pl.DataFrame) and traced.row(0, named=True)["x"] == 3
    stacked = traced.lazy().fab.fails_on_wafer()
    assert isinstance(stacked, pl.LazyFrame)
    assert stacked.collect().select("x", "y", "n_units", "n_failed").row(0) == (3, 3, 1, 1)
    for alias in ("step_yields", "rolled_yield", "reject_pareto", "commonality", "screen_tradeoff"):
        assert alias in dir(units.fab)


def test_edges_from_ecid_build_the_die_level_genealogy():
    units = _units(
        [
            {
                "unit_id": "U1",
                "ecid": "F1:01:1:2",
                "assembly_lot_id": "A",
                "strip_id": "S",
                "row": 0,
                "col": 0,
            },
            {"unit_id": "U1", "insertion": "PBI", "ecid": "F1:01:1:2", "assembly_lot_id": "A"},
            {"unit_id": "U2", "ecid": None},
            {"unit_id": "U3", "ecid": "F1:02:-3:0"},
        ]
    )
    edges = G.edges_from_ecid(units)
    assert edges.sort("unit_id").select(
        "unit_id", "from_wafer_id", "from_x", "from_y", "source"
    ).rows() == [
        ("U1", "01", 1, 2, "ECID"),
        ("U3", "02", -3, 0, "ECID"),
    ]
    traced = G.trace(units.lazy(), edges.lazy(), ecid_pattern=None).collect()
    assert traced.get_column("x").to_list() == [1, 1, None, -3]
    twice = pl.concat([units, _units([{"unit_id": "U9", "ecid": "F1:02:-3:0"}])])
    with pytest.raises(GenealogyError, match=r"x=-3, y=0 is read by two units"):
        G.edges_from_ecid(twice)
