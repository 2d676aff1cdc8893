"""Spatial statistics on the synthetic fab: planted patterns are found, random maps are not.

The clustering decision is the join-count permutation test of ``wafer_spatial_stats``
(``clustered`` = permutation p-value < alpha = 0.01, rook joins). On maps with independent fails
(WM-811K "none"/"Random") it may flag at most the nominal rate alpha; the tests assert at most
alpha plus three binomial standard errors and print the measured rates at 2, 5, 10 and 20 % fail
rate (anchor, DOMAIN §6: wafermap's regional false findings 2.7 / 5.5 / 5.3 / 0.9 % with BH).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from backend_fab.spatial import cluster_table, wafer_spatial_stats
from backend_fab.synth.patterns import draw_signature, sample_fails

ALPHA = 0.01
RATES = (0.02, 0.05, 0.10, 0.20)


@pytest.fixture(scope="module")
def fab():
    from backend_fab.synth import generate_fab

    fab = generate_fab("ci")
    runs = [r for r in fab.iter_runs() if "truth_wafers" in r and r["die"].height]
    die = pl.concat([r["die"] for r in runs])
    truth = pl.concat([r["truth_wafers"] for r in runs]).select("lot_id", "wafer_id", "pattern")
    cause = pl.concat([r["truth_die"] for r in runs]).select(
        "lot_id", "wafer_id", "x", "y", "cause"
    )
    # the same maps with only the planted signature's fails (reticle repeats, a bad probe site
    # and random fails passed): the shape of the signature itself
    signature = (
        die.join(cause, on=["lot_id", "wafer_id", "x", "y"], how="left")
        .with_columns(hbin=pl.when(pl.col("cause") == "pattern").then(pl.col("hbin")).otherwise(1))
        .drop("cause")
    )
    layout = next(iter(fab.layouts.values()))
    return die, truth, layout, signature


def test_planted_patterns_are_significant(fab):
    die, truth, layout, signature = fab
    # significance on the maps as tested (every cause of failure overlaid)
    stats = (
        wafer_spatial_stats(die.lazy(), layout=layout, n_perm=999)
        .collect()
        .join(truth, on=["lot_id", "wafer_id"])
    )
    # shape features on the signature's own fails: a reticle repeat or a bad site on the same
    # wafer would join the ring's arcs into a cluster reaching inwards
    clusters = (
        cluster_table(signature.lazy(), layout=layout, min_size=3)
        .collect()
        .join(truth, on=["lot_id", "wafer_id"])
    )
    print(
        stats.select(
            "wafer_id", "pattern", "n_fail", "bb_z", "bb_p_perm", "morans_z", "largest_cluster"
        )
    )
    for pattern in ("Edge-Ring", "Center", "Scratch", "Donut", "Edge-Loc", "Loc"):
        rows = stats.filter(pl.col("pattern") == pattern)
        assert rows.height >= 1, pattern
        assert (rows.get_column("bb_z") > 2.33).all(), pattern
        assert rows.get_column("clustered").all(), pattern
    largest = (
        clusters.sort("size", descending=True)
        .group_by("lot_id", "wafer_id", maintain_order=True)
        .first()
    )

    def feature(pattern, name):
        return largest.filter(pl.col("pattern") == pattern).get_column(name).to_numpy()

    # Center: one big blob near the middle, round, away from the edge
    assert (feature("Center", "radius") < 0.3).all()
    assert (feature("Center", "touches_edge") == 0).all()
    assert (feature("Center", "size") > 50).all()
    # Edge-Ring: the fail regions hug the edge (a thin, sparse ring breaks into arcs) and
    # together run a good part of the way round the wafer
    assert (feature("Edge-Ring", "touches_edge") == 1).all()
    assert (feature("Edge-Ring", "radius_min") > 0.75).all()
    for (lot, wafer), arcs in clusters.filter(pl.col("pattern") == "Edge-Ring").group_by(
        "lot_id", "wafer_id"
    ):
        edge = arcs.filter(pl.col("touches_edge") & (pl.col("radius_min") > 0.75))
        share = edge.get_column("size").sum() / arcs.get_column("size").sum()
        span = edge.get_column("angular_span").sum()
        print(
            f"Edge-Ring {lot}/{wafer}: {share:.0%} of clustered fails in edge arcs covering {span:.0f} deg"
        )
        assert share > 0.5 and span > 90
    # Scratch: a long thin region
    assert (feature("Scratch", "linearity") > 0.8).all()
    assert (feature("Scratch", "major_axis") > 4 * feature("Scratch", "minor_axis")).all()


def _random_wafers(layout, rate: float, n: int, seed: int) -> pl.DataFrame:
    x, y = layout.gross_die()
    u, v = layout.normalized(x, y)
    rng = np.random.default_rng(seed)
    frames = []
    for w in range(n):
        kind = "none" if w % 2 else "Random"
        params = {"background": rate} if kind == "none" else {"density": rate}
        prob, _ = draw_signature(kind, u, v, rng, **params)
        fail = sample_fails(prob, rng)
        frames.append(
            pl.DataFrame(
                {
                    "lot_id": f"R{w // 25}",
                    "wafer_id": f"{w % 25:02d}",
                    "x": x,
                    "y": y,
                    "hbin": np.where(fail, 3, 1).astype(np.int32),
                }
            )
        )
    return pl.concat(frames)


def _false_positive_rates(layout, n: int, n_perm: int) -> dict[float, tuple[float, float]]:
    out = {}
    for k, rate in enumerate(RATES):
        die = _random_wafers(layout, rate, n, seed=1000 + k)
        stats = wafer_spatial_stats(
            die.lazy(), layout=layout, n_perm=n_perm, seed=k, alpha=ALPHA
        ).collect()
        perm = float(stats.get_column("clustered").mean())
        normal = float((stats.get_column("bb_p_normal") < ALPHA).mean())
        out[rate] = (perm, normal)
    print(
        f"false-positive rate of 'clustered' (alpha {ALPHA}, {n} random wafers of {layout.n_gross} die per rate)"
    )
    for rate, (perm, normal) in out.items():
        print(f"  fail rate {rate:4.0%}: permutation {perm:6.2%}   normal z > 2.33 {normal:6.2%}")
    return out


def _tolerance(n: int) -> float:
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / n)


def test_random_wafers_flag_at_most_the_nominal_rate(fab):
    _, _, layout, _ = fab
    n = 100
    rates = _false_positive_rates(layout, n, n_perm=199)
    for rate, (perm, _) in rates.items():
        assert perm <= _tolerance(n), rate


@pytest.mark.nightly
def test_random_wafers_false_positive_rate_nightly(fab):
    _, _, layout, _ = fab
    n = 2000
    rates = _false_positive_rates(layout, n, n_perm=999)
    for rate, (perm, _) in rates.items():
        assert perm <= _tolerance(n), rate
