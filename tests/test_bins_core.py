"""Yield rollups, retests, Paretos and recovery: hand-computed cases and hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yield_fixtures import die_frame

from backend_fab import bins, schema
from backend_fab.errors import BackendFabError


def _lot() -> pl.DataFrame:
    """Two wafers; W1 has a recovered retest (bin 5 -> 1) and a failed retest (3 -> 3) in a
    second run, W2 has a within-run retest (superseded instance marked final=false)."""
    return die_frame(
        [
            # W1, first run
            {"wafer_id": "W1", "x": 0, "y": 0, "hbin": 1, "site": 0},
            {"wafer_id": "W1", "x": 1, "y": 0, "hbin": 5, "site": 1},
            {"wafer_id": "W1", "x": 2, "y": 0, "hbin": 3, "site": 0},
            {"wafer_id": "W1", "x": 3, "y": 0, "hbin": 1, "site": 1},
            # W2, first run: (1, 0) fails then passes inside the same run
            {"wafer_id": "W2", "x": 0, "y": 0, "hbin": 1, "site": 0},
            {"wafer_id": "W2", "x": 1, "y": 0, "hbin": 5, "site": 1, "final": False},
            {"wafer_id": "W2", "x": 1, "y": 0, "hbin": 1, "site": 1, "retest_index": 1},
            {"wafer_id": "W2", "x": 2, "y": 0, "hbin": 2, "site": 0},
            # W1 retest run
            {
                "run_id": "r2",
                "part_seq": 0,
                "wafer_id": "W1",
                "x": 1,
                "y": 0,
                "hbin": 1,
                "site": 0,
                "retest_index": 1,
            },
            {
                "run_id": "r2",
                "part_seq": 1,
                "wafer_id": "W1",
                "x": 2,
                "y": 0,
                "hbin": 3,
                "site": 0,
                "retest_index": 1,
            },
        ]
    )


def test_yield_summary_by_hand():
    die = _lot()
    w = bins.yield_summary(die.lazy(), level="wafer").collect()
    w1 = w.filter(pl.col("wafer_id") == "W1").row(0, named=True)
    assert (w1["n_tested"], w1["n_good"], w1["n_first_pass"], w1["n_good_first_pass"]) == (
        4,
        3,
        4,
        2,
    )
    assert (w1["n_retested"], w1["n_recovered"]) == (2, 1)
    assert w1["yield_final"] == pytest.approx(0.75)
    assert w1["yield_first_pass"] == pytest.approx(0.5)
    assert w1["retest_rate"] == pytest.approx(0.5)
    assert w1["recovery_rate"] == pytest.approx(0.5)
    assert w1["yield_lift"] == pytest.approx(0.25)
    w2 = w.filter(pl.col("wafer_id") == "W2").row(0, named=True)
    assert (w2["n_tested"], w2["n_good"], w2["n_good_first_pass"], w2["n_recovered"]) == (
        3,
        2,
        1,
        1,
    )
    lot = bins.yield_summary(die.lazy(), level="lot").collect().row(0, named=True)
    assert (lot["n_tested"], lot["n_good"], lot["n_wafers"]) == (7, 5, 2)
    assert lot["yield_final"] == pytest.approx(5 / 7)
    assert lot["mean_wafer_yield"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert lot["n_gross"] is None
    layouts = pl.DataFrame({"product": ["P"], "gross_die": [10]})
    g = bins.yield_summary(die.lazy(), level="lot", layouts=layouts.lazy()).collect()
    assert g["n_gross"][0] == 20
    assert g["yield_gross"][0] == pytest.approx(5 / 20)
    everything = bins.yield_summary(die.lazy(), level="all", layouts=layouts.lazy()).collect()
    assert everything.height == 1 and everything["n_gross"][0] == 20


def test_pass_bins_and_sites():
    die = _lot()
    # bin 2 counted good as well
    w = bins.yield_summary(die.lazy(), level="lot", pass_bins=[1, 2]).collect()
    assert w["n_good"][0] == 6
    # a unit is counted at the site of its final instance
    by_site = bins.yield_summary(die.lazy(), level="lot", by=["site"]).collect()
    assert by_site["n_tested"].sum() == 7
    s0 = by_site.filter(pl.col("site") == 0).row(0, named=True)
    assert (
        s0["n_tested"] == 5
    )  # W1 (0,0), W1 (1,0) retested on site 0, W1 (2,0), W2 (0,0), W2 (2,0)


def test_time_windows_need_runs():
    die = _lot()
    with pytest.raises(BackendFabError, match="needs runs"):
        bins.yield_summary(die.lazy(), level="product", every="1w").collect()
    from datetime import UTC, datetime

    runs = schema.conform(
        "runs",
        pl.DataFrame(
            {
                "run_id": ["r1", "r2"],
                "insertion": ["WS1", "WS1"],
                "start_time": [datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 12, tzinfo=UTC)],
            }
        ),
    )
    out = bins.yield_summary(die.lazy(), level="product", runs=runs.lazy(), every="1w").collect()
    # the lot starts in the week of 2024-03-04: one window, the retests included
    assert out.height == 1 and out["n_tested"][0] == 7
    assert out["period"][0] == datetime(2024, 3, 4, tzinfo=UTC)


def test_pareto_and_names():
    die = _lot()
    binsf = schema.conform(
        "bins",
        pl.DataFrame(
            {
                "run_id": ["r1", "r1", "r2"],
                "kind": ["H", "H", "H"],
                "bin": [3, 5, 3],
                "head": [1, 1, 1],
                "site": [255, 255, 255],
                "count": [1, 1, 1],
                "pass_fail": ["F", "F", "F"],
                "name": ["LEAK", "CONT", "LEAK"],
            }
        ),
    )
    final = bins.bin_pareto(die.lazy(), bins=binsf.lazy()).collect()
    assert final["bin"].to_list() == [2, 3]  # ties by count broken by bin number
    assert final["count"].to_list() == [1, 1]
    assert final["n_fail"][0] == 2 and final["count"].sum() == 2
    assert final["name"].to_list() == [None, "LEAK"]
    assert final["cum_share"].to_list() == pytest.approx([0.5, 1.0])
    first = bins.bin_pareto(die.lazy(), which="first").collect()
    assert dict(zip(first["bin"], first["count"], strict=True)) == {5: 2, 2: 1, 3: 1}
    assert first["rank"].to_list() == [1, 2, 3]
    assert first["fraction"][0] == pytest.approx(2 / 7)
    every = bins.bin_pareto(die.lazy(), which="all", include_pass=True, kind="sbin").collect()
    assert every["count"].sum() == die.height


def test_retest_recovery_per_bin():
    out = bins.retest_recovery(_lot().lazy()).collect()
    b5 = out.filter(pl.col("bin") == 5).row(0, named=True)
    assert (b5["n_failed"], b5["n_retested"], b5["n_recovered"]) == (2, 2, 2)
    assert b5["recovery_rate"] == 1.0 and b5["final_bins"] == "1:2"
    b3 = out.filter(pl.col("bin") == 3).row(0, named=True)
    assert (b3["n_retested"], b3["n_recovered"], b3["recovery_rate"]) == (1, 0, 0.0)
    b2 = out.filter(pl.col("bin") == 2).row(0, named=True)
    assert b2["n_retested"] == 0 and b2["recovery_rate"] is None


def test_bad_arguments_name_the_problem():
    lf = _lot().lazy()
    with pytest.raises(BackendFabError, match="level"):
        bins.yield_summary(lf, level="week")
    with pytest.raises(BackendFabError, match="bin kind"):
        bins.bin_pareto(lf, kind="xbin")
    with pytest.raises(BackendFabError, match="which"):
        bins.select_instances(lf, "last")
    with pytest.raises(BackendFabError, match="pass_bins is empty"):
        bins.yield_summary(lf, pass_bins=[])


# --- properties -------------------------------------------------------------------------------


@st.composite
def lots(draw):
    """1-3 wafers of unique (x, y) on a 6x6 grid, bins 1/2/3/5, some die retested."""
    rows = []
    seq = 0
    for w in range(draw(st.integers(1, 3))):
        cells = draw(st.sets(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=20))
        for x, y in sorted(cells):
            hb = draw(st.sampled_from([1, 1, 1, 2, 3, 5]))
            rows.append(
                {
                    "wafer_id": f"W{w}",
                    "x": x,
                    "y": y,
                    "hbin": hb,
                    "part_seq": seq,
                    "site": draw(st.integers(0, 3)),
                }
            )
            seq += 1
            if hb != 1 and draw(st.booleans()):
                rows.append(
                    {
                        "run_id": "r2",
                        "wafer_id": f"W{w}",
                        "x": x,
                        "y": y,
                        "hbin": draw(st.sampled_from([1, hb])),
                        "part_seq": seq,
                        "retest_index": 1,
                        "site": 0,
                    }
                )
                seq += 1
    return die_frame(rows) if rows else schema.table("die").empty()


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort(df.columns, nulls_last=True)


@settings(max_examples=25)
@given(lots(), st.randoms(use_true_random=False))
def test_properties_of_rollups(die, rnd):
    lf = die.lazy()
    y = bins.yield_summary(lf, level="wafer").collect()
    for col in ("yield_final", "yield_first_pass", "retest_rate", "recovery_rate"):
        vals = y[col].drop_nulls().to_list()
        assert all(0.0 <= v <= 1.0 for v in vals)
    par = bins.bin_pareto(lf, level="wafer").collect()
    fails = y.select("wafer_id", (pl.col("n_tested") - pl.col("n_good")).alias("f"))
    got = (
        par.group_by("wafer_id").agg(pl.col("count").sum()).join(fails, on="wafer_id", how="right")
    )
    assert got["count"].fill_null(0).to_list() == got["f"].to_list()
    # permuting the rows changes nothing
    order = list(range(die.height))
    rnd.shuffle(order)
    shuffled = die[order].lazy() if die.height else lf
    assert _sorted(bins.yield_summary(shuffled, level="wafer").collect()).equals(_sorted(y))
    assert _sorted(bins.bin_pareto(shuffled, level="wafer").collect()).equals(_sorted(par))
    rr = bins.retest_recovery(lf).collect()
    assert _sorted(bins.retest_recovery(shuffled).collect()).equals(_sorted(rr))
    if y.height:
        lot = bins.yield_summary(lf, level="all").collect().row(0, named=True)
        assert lot["n_tested"] == y["n_tested"].sum()
        assert math.isclose(lot["yield_final"], y["n_good"].sum() / y["n_tested"].sum())
        assert np.all(rr["n_recovered"].to_numpy() <= rr["n_retested"].to_numpy())
