"""Genealogy on the synthetic `ci` fab: 100 % traced through merges and splits, and GDBN pays off."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from backend_fab import genealogy as G
from backend_fab.errors import GenealogyError
from backend_fab.io.maps import read_e142, write_e142
from backend_fab.synth import generate_fab

TRUTH_KEY = ["lot_id", "wafer_id", "x", "y"]


@pytest.fixture(scope="module")
def fab():
    f = generate_fab("ci")
    runs = f.table("runs")
    ws_runs = runs.filter(pl.col("insertion") == "WS1").get_column("run_id")
    return {
        "genealogy": f.table("genealogy"),
        "units": f.table("units"),
        "die": f.table("die"),
        "ws_die": f.table("die").filter(pl.col("run_id").is_in(ws_runs.implode())),
        "truth_units": f.table("truth_units"),
        "truth_die": f.table("truth_die"),
        "layout": f.layouts["AX100"],
    }


def _agreement(traced: pl.DataFrame, truth: pl.DataFrame) -> tuple[int, int, int]:
    """(units, traced, traced equal to the truth) counted per unit row."""
    t = traced.join(
        truth.select("unit_id", *[pl.col(c).alias(f"true_{c}") for c in TRUTH_KEY]),
        on="unit_id",
        how="left",
    )
    traced_rows = t.filter(pl.col("x").is_not_null())
    same = traced_rows.filter(
        pl.all_horizontal(pl.col(c) == pl.col(f"true_{c}") for c in TRUTH_KEY)
    ).height
    return t.height, traced_rows.height, same


def test_every_unit_traces_to_its_true_die(fab, capsys):
    units, g, truth = fab["units"], fab["genealogy"], fab["truth_units"]
    assert g.filter(pl.col("relation") == "split").height > 0  # wafers split across lots
    assert G.lot_lineage(g).filter(pl.col("lot_id") == "AXA0003").height == 2  # a 2-lot merge
    by_unit = G.trace(units.lazy(), g.lazy()).collect()
    n_unit = _agreement(by_unit, truth)
    assert n_unit == (units.height,) * 3
    assert set(by_unit.get_column("trace_source")) == {"unit_id"}
    assert not by_unit.get_column("trace_conflict").any()

    # E142-like genealogy: strip positions only
    positions = g.with_columns(pl.lit(None, dtype=pl.String).alias("unit_id"))
    by_pos = G.trace(units.lazy(), positions.lazy(), ecid_pattern=None).collect()
    assert _agreement(by_pos, truth) == (units.height,) * 3
    assert set(by_pos.get_column("trace_source")) == {"position"}

    # no genealogy: the ECID alone (unreadable ECIDs stay untraced)
    by_ecid = G.trace(units.lazy()).collect()
    n, traced, same = _agreement(by_ecid, truth)
    unreadable = units.get_column("ecid").null_count()
    assert unreadable > 0 and traced == same == n - unreadable
    with capsys.disabled():
        print(
            f"\n[genealogy] ci: {units.height} unit rows, {units['unit_id'].n_unique()} units; "
            f"traced = truth: by unit id {n_unit[2]}/{n_unit[0]}, "
            f"by strip position {units.height}/{units.height}, by ECID {traced}/{n} "
            f"({unreadable} unreadable ECIDs)"
        )


def test_lineage_agrees_with_every_trace_and_catches_a_wrong_one(fab):
    g = fab["genealogy"]
    traced = G.trace(fab["units"].lazy(), g.lazy()).collect()
    assert G.lineage_conflicts(traced, g).height == 0
    lineage = G.lot_lineage(g)
    sums = lineage.group_by("lot_id").agg(pl.col("fraction").sum())
    assert np.allclose(sums.get_column("fraction").to_numpy(), 1.0)
    # a unit of AXA0001 claimed by a wafer that only fed later lots
    wrong = traced.with_columns(
        pl.when(pl.col("unit_id") == "AXA0001-00001")
        .then(pl.lit("AXL0002"))
        .otherwise(pl.col("lot_id"))
        .alias("lot_id")
    )
    bad = G.lineage_conflicts(wrong, g)
    assert set(bad.get_column("unit_id")) == {"AXA0001-00001"}


def test_trace_through_e142_strip_maps_of_every_assembly_lot(fab):
    g, units, truth, ws = fab["genealogy"], fab["units"], fab["truth_units"], fab["ws_die"]
    rejected = truth.filter(pl.col("assembly_reject_step").is_not_null()).get_column("unit_id")
    lineage = G.lot_lineage(g)
    merged = lineage.filter(pl.col("lot_id").is_duplicated()).item(0, "lot_id")
    edges = []
    for (lot,), part in g.group_by(["assembly_lot_id"], maintain_order=True):
        doc = G.genealogy_to_e142(
            part,
            strip_rows=4,
            strip_cols=16,
            rejected=rejected.to_list(),
            # the source wafers' maps (to check every FX/FY) for the lot merged from two fab lots
            wafer_die=ws.filter(pl.col("final")) if lot == merged else None,
            wafer_axis_direction="DownLeft",
            origin_location="LowerRight",
            axis_direction="UpLeft",
        )
        back = read_e142(write_e142(doc), name=f"{lot}.xml")  # checks every T against a die
        assert back == doc
        edges.append(G.edges_from_e142(back))
    e = pl.concat(edges)
    assert e.height == g.filter(pl.col("relation") == "transfer").height
    traced = G.trace(units.lazy(), e.lazy(), ecid_pattern=None).collect()
    assert _agreement(traced, truth) == (units.height,) * 3
    G.check_genealogy(e, fab["die"])


def test_genealogy_errors_name_the_edge(fab):
    g = fab["genealogy"]
    t = g.filter(pl.col("relation") == "transfer")
    dup = pl.concat(
        [
            g,
            t.head(1).with_columns(
                pl.lit("dup-edge").alias("edge_id"), pl.lit(999).cast(pl.Int32).alias("from_x")
            ),
        ]
    )
    with pytest.raises(GenealogyError, match=r"unit receiving two die \(unit_id='AXA0001-00001'\)"):
        G.check_genealogy(dup)
    moved = g.with_columns(
        pl.when(pl.col("unit_id") == "AXA0002-00007")
        .then(99)
        .otherwise(pl.col("from_x"))
        .alias("from_x")
    )
    with pytest.raises(
        GenealogyError, match=r"1 transfer edge\(s\) point to a die wafer sort never tested.*x=99"
    ):
        G.check_genealogy(moved, fab["die"])
    cycle = pl.concat(
        [
            g,
            g.filter(pl.col("relation") == "merge")
            .head(1)
            .with_columns(
                pl.col("assembly_lot_id").alias("from_lot_id"),
                pl.col("from_lot_id").alias("assembly_lot_id"),
                pl.lit("cyc").alias("edge_id"),
            ),
        ]
    )
    with pytest.raises(GenealogyError, match="descends from itself"):
        G.check_genealogy(cycle)


def test_gdbn_catches_more_latent_fails_per_scrapped_die_than_random(fab, capsys):
    from backend_fab.kernels.screens import gdbn_flags

    traced = G.trace(fab["units"].lazy(), fab["genealogy"].lazy()).collect()
    scores = G.neighbourhood_scores(fab["ws_die"].lazy()).collect()
    # the kernels' GDBN (DOMAIN 2.3): Galaxy squeeze (default) and weighting (sum >= 8)
    keys = ["lot_id", "wafer_id", "x", "y"]
    squeeze = gdbn_flags(fab["ws_die"].lazy(), layout=fab["layout"]).collect()
    weighting = gdbn_flags(
        fab["ws_die"].lazy(), algorithm="weighting", threshold=8.0, layout=fab["layout"]
    ).collect()
    # cross-check of two implementations: equal weights, Galaxy's x1.1 on edge die
    both = scores.join(weighting.select(*keys, "gdbn_score"), on=keys, how="left")
    candidates = both.filter(pl.col("gdbn_score").is_not_null())  # the kernel skips off-layout die
    assert candidates.height > 0.95 * both.height
    ratio = candidates.filter(pl.col("score") > 0).select(pl.col("gdbn_score") / pl.col("score"))
    assert set(np.round(ratio.to_series().unique().to_numpy(), 9)) <= {1.0, 1.1}
    flags = pl.concat(
        [
            squeeze.filter(pl.col("gdbn_flag")).select(*keys, pl.lit("GDBN squeeze").alias("rule")),
            weighting.filter(pl.col("gdbn_flag")).select(
                *keys, pl.lit("GDBN weight>=8").alias("rule")
            ),
        ]
    )
    report = G.screen_effectiveness(flags, traced, insertions=["FT1", "PBI"])
    curve = G.screen_tradeoff(scores, traced, thresholds=[1, 2, 3, 4, 5, 6, 8, 10])

    # outcome = the planted latent reliability fails only (truth), the signal GDBN targets
    latent_units = fab["truth_units"].filter(pl.col("latent_fail")).get_column("unit_id")
    latent = traced.with_columns((~pl.col("unit_id").is_in(latent_units.implode())).alias("passed"))
    latent_curve = G.screen_tradeoff(scores, latent, thresholds=[1, 2, 3, 4, 5, 6, 8, 10])

    def shown(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            pl.Series("p_value", [f"{p:.1e}" for p in frame.get_column("p_value")])
        )

    with capsys.disabled():
        cols = [
            "screen",
            "n_die",
            "n_fails",
            "n_flagged",
            "caught",
            "overkill",
            "scrap_rate",
            "catch_rate",
            "fails_per_scrapped",
            "random_fails_per_scrapped",
            "lift",
            "p_value",
        ]
        with pl.Config(tbl_cols=20, tbl_width_chars=220, tbl_rows=30, float_precision=4):
            print("\n[screen] GDBN rules vs FT1/PBI fails (observed outcomes):")
            print(shown(report).select(cols))
            print("[screen] trade-off as the GDBN weight threshold varies (observed outcomes):")
            print(shown(curve).select("threshold", *cols[3:]))
            print("[screen] same curve against the planted latent fails (truth):")
            print(shown(latent_curve).select("threshold", *cols[3:]))

    assert set(report.get_column("screen")) == {
        "GDBN squeeze",
        "GDBN weight>=8",
        "any",
        "GDBN squeeze | GDBN weight>=8",
        "GDBN squeeze & GDBN weight>=8",
    }
    for rule in ("GDBN squeeze", "GDBN weight>=8"):
        row = report.filter(pl.col("screen") == rule).row(0, named=True)
        assert row["lift"] > 1.5 and row["p_value"] < 1e-3, row
    # the planted neighbourhood risk shows: more fails per scrapped die than random scrapping
    mid = curve.filter(pl.col("threshold").is_in([2.0, 3.0, 4.0]))
    assert (mid.get_column("lift") > 1.3).all()
    assert (mid.get_column("p_value") < 1e-3).all()
    lat = latent_curve.filter(pl.col("threshold").is_in([2.0, 3.0, 4.0]))
    assert (lat.get_column("lift") > 1.5).all() and (lat.get_column("p_value") < 1e-3).all()
    # a stricter threshold scraps less
    assert (np.diff(curve.get_column("scrap_rate").to_numpy()) <= 0).all()
    # the arithmetic holds together
    for row in curve.iter_rows(named=True):
        assert row["caught"] + row["overkill"] == row["n_flagged"]
        assert row["caught"] + row["escapes"] == row["n_fails"]
        assert row["random_catch_rate"] == pytest.approx(row["scrap_rate"])

    # the random-scrap baseline is what the method says: shuffled flags give lift about 1
    rng = np.random.default_rng(7)
    outcome_die = traced.filter(pl.col("x").is_not_null()).select(TRUTH_KEY).unique()
    lifts = []
    for _ in range(20):
        pick = rng.random(outcome_die.height) < 0.1
        rand_flags = outcome_die.filter(pl.Series(pick)).with_columns(
            pl.lit("random").alias("rule")
        )
        lifts.append(G.screen_effectiveness(rand_flags, traced).item(0, "lift"))
    assert 0.8 < float(np.mean(lifts)) < 1.2


def test_fails_stack_in_wafer_coordinates(fab):
    traced = G.trace(fab["units"].lazy(), fab["genealogy"].lazy())
    stacked = G.fails_on_wafer(traced, insertions=["FT1", "PBI"]).collect()
    assert stacked.get_column("n_units").sum() == fab["units"].get_column("unit_id").n_unique()
    failed_units = (
        fab["units"]
        .group_by("unit_id")
        .agg((~pl.col("passed")).any().alias("f"))
        .get_column("f")
        .sum()
    )
    assert stacked.get_column("n_failed").sum() == failed_units
    # one product, two lots, ten wafers stacked onto one die grid within the layout
    layout = fab["layout"]
    assert layout.is_gross(
        stacked.get_column("x").to_numpy(), stacked.get_column("y").to_numpy()
    ).all()
    per_insertion = G.fails_on_wafer(traced, by=["insertion"]).collect()
    assert set(per_insertion.get_column("insertion")) == {"FT1", "PBI"}
