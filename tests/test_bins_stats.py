"""Statistics of backend_fab.bins against hand computations and scipy.stats."""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from yield_fixtures import ci_lake, die_frame, ws_die

from backend_fab import bins
from backend_fab.errors import BackendFabError

# --- Benjamini-Hochberg -----------------------------------------------------------------------


def test_bh_by_hand_and_scipy():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005 0.01 0.03 0.04 -> x m/i: 0.02 0.02 0.04 0.04 -> running min from the top
    assert bins.bh_adjust(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert np.isnan(bins.bh_adjust([np.nan, 0.5])[0])
    assert bins.bh_adjust([np.nan, 0.5])[1] == 0.5


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40))
def test_bh_matches_scipy(ps):
    assert bins.bh_adjust(ps) == pytest.approx(stats.false_discovery_control(ps, method="bh"))


# --- Poisson-binomial -------------------------------------------------------------------------


def _brute_sf(k, p):
    total = 0.0
    for outcome in itertools.product((0, 1), repeat=len(p)):
        if sum(outcome) >= k:
            total += math.prod(pi if o else 1 - pi for o, pi in zip(outcome, p, strict=True))
    return total


@given(st.lists(st.floats(0, 1), min_size=0, max_size=8), st.integers(-1, 9))
def test_poisson_binomial_exact_by_enumeration(p, k):
    got = bins.poisson_binomial_sf([k], [p])[0]
    assert got == pytest.approx(_brute_sf(k, p), abs=1e-12)


def test_poisson_binomial_reduces_to_binomial_and_approximation_is_close():
    assert bins.poisson_binomial_sf([7], [[0.3] * 20])[0] == pytest.approx(
        stats.binom.sf(6, 20, 0.3)
    )
    rng = np.random.default_rng(5)
    p = rng.uniform(0.01, 0.2, 600)
    for k in (30, 50, 70, 90):
        exact = bins.poisson_binomial_sf([k], [p], exact_max=10_000)[0]
        approx = bins.poisson_binomial_sf([k], [p], exact_max=10)[0]
        assert abs(exact - approx) < 0.005


# --- CMH and Mantel-Haenszel ------------------------------------------------------------------

#: Agresti (1990) penicillin and rabbits, as in R's mantelhaen.test examples: per stratum
#: rows (delay none, 1.5 h) x columns (cured, died).
RABBITS = np.array(
    [
        [[0, 6], [0, 5]],
        [[3, 3], [0, 6]],
        [[6, 0], [2, 4]],
        [[5, 1], [6, 0]],
        [[2, 0], [5, 0]],
    ],
    dtype=float,
)


def test_mantel_haenszel_rabbits_by_hand():
    a = RABBITS[:, 0, 0]
    n1 = RABBITS[:, 0].sum(axis=1)
    n2 = RABBITS[:, 1].sum(axis=1)
    m1 = RABBITS[:, :, 0].sum(axis=1)
    m2 = RABBITS[:, :, 1].sum(axis=1)
    n = n1 + n2
    e = (n1 * m1 / n).sum()
    v = (n1 * n2 * m1 * m2 / (n * n * (n - 1))).sum()
    hand = (abs(a.sum() - e) - 0.5) ** 2 / v
    res = bins.mantel_haenszel(RABBITS)
    assert res.statistic == pytest.approx(hand)
    # R: mantelhaen.test(Rabbits) -> "p = 0.047, some evidence for higher cure rate"
    assert round(res.p_value, 3) == 0.047
    d = RABBITS[:, 1, 1]
    b, c = RABBITS[:, 0, 1], RABBITS[:, 1, 0]
    assert res.odds_ratio == pytest.approx((a * d / n).sum() / (b * c / n).sum())
    uncorrected = bins.mantel_haenszel(RABBITS, correct=False)
    assert uncorrected.statistic == pytest.approx((a.sum() - e) ** 2 / v)


def test_cmh_reduces_to_mh_and_to_pearson():
    gen = bins.cmh_test(RABBITS)
    assert gen.dof == 1
    assert gen.statistic == pytest.approx(bins.mantel_haenszel(RABBITS, correct=False).statistic)
    rng = np.random.default_rng(1)
    for _ in range(5):
        t = rng.integers(1, 40, size=(4, 3)).astype(float)
        n = t.sum()
        res = bins.cmh_test(t[None])
        chi2 = stats.chi2_contingency(t, correction=False).statistic
        assert res.statistic == pytest.approx(chi2 * (n - 1) / n)
        assert res.dof == 6


@settings(max_examples=30)
@given(st.integers(0, 2**32 - 1))
def test_cmh_of_identical_strata_scales(seed):
    """K identical strata of a 3 x 2 table: G and V both scale by K, so Q = K x Q_1."""
    rng = np.random.default_rng(seed)
    t = rng.integers(1, 30, size=(3, 2)).astype(float)
    one = bins.cmh_test(t[None]).statistic
    assert bins.cmh_test(np.stack([t, t, t])).statistic == pytest.approx(3 * one)


def test_cmh_rejects_bad_shapes():
    with pytest.raises(BackendFabError, match="K, R, C"):
        bins.cmh_test(np.zeros((2, 2)))
    with pytest.raises(BackendFabError, match=r"\(K, 2, 2\)"):
        bins.mantel_haenszel(np.zeros((2, 3, 2)))


# --- stacked maps -----------------------------------------------------------------------------


def _stack_die():
    rows = []
    for w in range(6):
        for x in range(4):
            for y in range(3):
                hot = x == 0 and y == 0
                fail = hot or (x + y + w) % 7 == 0
                rows.append({"wafer_id": f"W{w}", "x": x, "y": y, "hbin": 5 if fail else 1})
    return die_frame(rows)


def test_stacked_map_against_binomtest():
    die = _stack_die()
    st_ = bins.stacked_map(die.lazy(), null="lot", fdr=0.05).collect()
    pbar = (die["hbin"] != 1).mean()
    for row in st_.iter_rows(named=True):
        expect = stats.binomtest(row["n_fail"], row["n_tested"], pbar, alternative="greater")
        assert row["p_value"] == pytest.approx(expect.pvalue, rel=1e-9)
    assert st_["q_value"].to_list() == pytest.approx(bins.bh_adjust(st_["p_value"].to_numpy()))
    hot = st_.filter((pl.col("x") == 0) & (pl.col("y") == 0)).row(0, named=True)
    assert hot["n_fail"] == 6 and hot["significant"]
    assert st_["significant"].sum() == 1


def test_stacked_map_per_wafer_null_by_enumeration():
    die = _stack_die()
    st_ = bins.stacked_map(die.lazy(), null="wafer").collect()
    rates = die.group_by("wafer_id").agg((pl.col("hbin") != 1).mean().alias("p")).sort("wafer_id")
    p = rates["p"].to_list()
    row = st_.filter((pl.col("x") == 1) & (pl.col("y") == 1)).row(0, named=True)
    assert row["p_value"] == pytest.approx(_brute_sf(row["n_fail"], p))
    assert row["expected"] == pytest.approx(np.mean(p))
    hot = bins.stacked_hot_spots(die, null="wafer")
    assert hot.select("x", "y").rows() == [(0, 0)]
    fails5 = bins.stacked_map(die.lazy(), fail_bins=[9]).collect()
    assert fails5["n_fail"].sum() == 0
    with pytest.raises(BackendFabError, match="null"):
        bins.stacked_map(die.lazy(), null="pooled")


# --- site-to-site -----------------------------------------------------------------------------


def _site_die(rng, *, bad_site=None, extra=0.0, edge_fail=0.0, edge_site=True, n_wafers=6):
    """Round wafers; the outer zone is probed mostly by site 3 when ``edge_site`` (partial edge
    touchdowns), sites 0-2 elsewhere; fails: 3 % random + ``edge_fail`` in the outer zone +
    ``extra`` on ``bad_site``."""
    xs, ys = np.meshgrid(np.arange(-15, 16), np.arange(-15, 16))
    keep = xs**2 + ys**2 <= 225
    xs, ys = xs[keep], ys[keep]
    base = die_frame([{"x": int(x), "y": int(y), "hbin": 1} for x, y in zip(xs, ys, strict=True)])
    zone = bins.wafer_zones(base, n_rings=3).to_numpy()
    site = np.mod(xs + 2 * ys, 3)
    if edge_site:
        site = np.where((zone == 0) & (np.mod(xs + ys, 3) != 0), 3, site)
    else:
        site = np.mod(xs, 2) + 2 * np.mod(ys, 2)
    rows = []
    for w in range(n_wafers):
        p = 0.03 + edge_fail * (zone == 0) + extra * (site == bad_site)
        fail = rng.random(xs.size) < p
        for i in range(xs.size):
            rows.append(
                {
                    "wafer_id": f"W{w}",
                    "x": int(xs[i]),
                    "y": int(ys[i]),
                    "site": int(site[i]),
                    "hbin": 5 if fail[i] else 1,
                }
            )
    return die_frame(rows)


def test_site_overall_against_scipy():
    rng = np.random.default_rng(11)
    die = _site_die(rng, bad_site=1, extra=0.08, edge_site=False)
    cmp_ = bins.site_comparison(die, strata=None)
    counts = die.group_by("site").agg(n=pl.len(), g=(pl.col("hbin") == 1).sum()).sort("site")
    table = np.column_stack([counts["g"], counts["n"] - counts["g"]])
    ref = stats.chi2_contingency(table, correction=False)
    o = cmp_.overall.row(0, named=True)
    assert o["chi2"] == pytest.approx(ref.statistic)
    assert o["p_value"] == pytest.approx(ref.pvalue)
    assert o["method"] == "chi2"
    assert o["cramers_v"] == pytest.approx(math.sqrt(ref.statistic / table.sum()))
    s1 = cmp_.sites.filter(pl.col("site") == 1).row(0, named=True)
    rest = table.sum(axis=0) - table[1]
    assert s1["p_value"] == pytest.approx(stats.fisher_exact([table[1], rest])[1])
    assert s1["flagged"] and cmp_.flagged()["site"].to_list() == [1]


def test_site_small_counts_use_exact_tests():
    die = die_frame([{"x": i, "y": 0, "site": i % 2, "hbin": 1 if i % 3 else 5} for i in range(12)])
    o = bins.site_comparison(die, strata=None).overall.row(0, named=True)
    assert o["method"] == "fisher"
    g = die.group_by("site").agg(n=pl.len(), g=(pl.col("hbin") == 1).sum()).sort("site")
    assert o["p_value"] == pytest.approx(
        stats.fisher_exact(np.column_stack([g["g"], g["n"] - g["g"]]))[1]
    )
    three = die.with_columns(site=(pl.col("x") % 3).cast(pl.Int16))
    o3 = bins.site_comparison(three, strata=None, mc_samples=999).overall.row(0, named=True)
    assert o3["method"] == "monte-carlo" and 0 < o3["p_value"] <= 1


def test_cmh_separates_a_bad_site_from_an_edge_pattern():
    rng = np.random.default_rng(7)
    # an edge-ring pattern probed mostly by site 3: the raw test blames site 3, CMH by ring not
    edge = bins.site_comparison(_site_die(rng, edge_fail=0.3), strata="wafer_ring")
    raw3 = edge.sites.filter(pl.col("site") == 3).row(0, named=True)
    assert raw3["p_adj"] < 1e-6 and raw3["delta"] < -0.05
    assert not raw3["flagged"] and raw3["confounded"]
    assert edge.flagged().height == 0
    assert edge.overall["cmh_p"][0] > 0.01
    # a real bad site on the same wafers is found by CMH
    bad = bins.site_comparison(
        _site_die(rng, edge_fail=0.3, bad_site=1, extra=0.08), strata="wafer_ring"
    )
    assert bad.flagged()["site"].to_list() == [1]
    assert bad.overall["cmh_p"][0] < 1e-6
    with pytest.raises(BackendFabError, match="strata"):
        bins.site_comparison(_stack_die(), strata="quadrant")


def test_site_comparison_on_the_synthetic_fab():
    """ci plants a bad probe site (contact fails, recovered by retest) in lot 1 and a reticle
    repeat in lot 2 whose positions alias two sites; stratified CMH on first-pass results finds
    the site and clears the reticle lot."""
    lake = ci_lake()
    truth = lake.scan("truth_lots").collect()
    layouts = lake.scan("layouts").collect()
    cmp_ = bins.site_comparison(
        ws_die(lake), which="first", strata="wafer_ring_reticle", layouts=layouts
    )
    flagged = cmp_.flagged().select("lot_id", "site").rows()
    planted = [
        (r["lot_id"], r["bad_site"])
        for r in truth.iter_rows(named=True)
        if r["bad_site"] is not None
    ]
    assert flagged == planted
    reticle_lot = truth.filter(pl.col("reticle_repeat").is_not_null())["lot_id"][0]
    conf = cmp_.sites.filter((pl.col("lot_id") == reticle_lot) & pl.col("confounded"))
    assert conf.height >= 1  # the raw comparison blames sites; the reticle strata explain it


# --- control charts ---------------------------------------------------------------------------


def test_laney_and_ewma_by_hand():
    p = np.array([0.90, 0.92, 0.88, 0.91, 0.85, 0.93, 0.89])
    n = np.array([1000, 1200, 900, 1100, 1000, 950, 1050])
    frame = pl.DataFrame({"t": np.arange(7), "p": p, "n": n})
    out = bins.control_chart(frame.lazy(), value="p", n="n", order_by="t").collect()
    center = (p * n).sum() / n.sum()
    sig = np.sqrt(center * (1 - center) / n)
    z = (p - center) / sig
    sigma_z = np.abs(np.diff(z)).mean() / 1.128
    assert out["center"][0] == pytest.approx(center)
    assert out["sigma_z"][0] == pytest.approx(sigma_z)
    assert out["laney_lcl"].to_numpy() == pytest.approx(center - 3 * sig * sigma_z)
    assert out["p_ucl"].to_numpy() == pytest.approx(np.minimum(center + 3 * sig, 1))
    e, v = center, 0.0
    for i in range(7):
        e = 0.2 * p[i] + 0.8 * e
        v = 0.64 * v + 0.04 * (sig[i] * sigma_z) ** 2
        assert out["ewma"][i] == pytest.approx(e)
        assert out["ewma_ucl"][i] == pytest.approx(min(1.0, center + 3 * math.sqrt(v)))
    assert out["out_laney"].to_list() == list(
        (p < center - 3 * sig * sigma_z) | (p > center + 3 * sig * sigma_z)
    )
    # without n: an individuals chart
    ind = bins.control_chart(frame.lazy(), value="p", order_by="t").collect()
    mr = np.abs(np.diff(p)).mean() / 1.128
    assert ind["laney_ucl"][0] == pytest.approx(p.mean() + 3 * mr)
    assert ind["p_lcl"].null_count() == 7
    with pytest.raises(BackendFabError, match="lambda"):
        bins.control_chart(frame.lazy(), value="p", order_by="t", lam=0.0)


def test_yield_trend_on_the_synthetic_fab():
    lake = ci_lake()
    tr = bins.yield_trend(ws_die(lake), lake.scan("runs"), level="wafer").collect()
    assert tr.height == 10
    assert tr["start_time"].is_sorted()
    assert tr.select((pl.col("yield") >= 0) & (pl.col("yield") <= 1)).to_series().all()
    assert (tr["laney_lcl"] <= tr["laney_ucl"]).all()
