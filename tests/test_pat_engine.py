"""The PAT engine: hand-checked rules, precedence, re-binning, determinism, and screening
performance on planted outliers (toy lots and the synthetic ``ci`` fab)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from scipy import stats
from yield_fixtures import ci_lake, ci_pat, die_frame, round_wafer, toy_lot

from backend_fab import schema
from backend_fab.errors import BackendFabError
from backend_fab.layout import Layout
from backend_fab.pat import REASON_BITS, classify_shape, load_recipe, run_pat

ONLY_PARAM = {
    "nnr": {"enabled": False},
    "gdbn": {"enabled": False},
    "cluster": {"enabled": False},
    "reticle": {"enabled": False},
    "zpat": {"enabled": False},
}


def _results(die: pl.DataFrame, values: dict[int, np.ndarray]) -> pl.DataFrame:
    parts = []
    for test_num, v in values.items():
        parts.append(
            pl.DataFrame(
                {
                    "run_id": die["run_id"],
                    "part_seq": die["part_seq"],
                    "test_num": test_num,
                    "pin": -1,
                    "value": v,
                    "product": die["product"],
                    "lot_id": die["lot_id"],
                }
            )
        )
    return schema.conform("results", pl.concat(parts))


def _line_wafer(n_good=100, n_fail=10, wafer="W1", run="r1"):
    rows = [
        {"run_id": run, "wafer_id": wafer, "x": i, "y": 0, "hbin": 1, "part_seq": i}
        for i in range(n_good)
    ]
    rows += [
        {
            "run_id": run,
            "wafer_id": wafer,
            "x": n_good + i,
            "y": 0,
            "hbin": 5,
            "part_seq": n_good + i,
        }
        for i in range(n_fail)
    ]
    return die_frame(rows)


def test_dpat_limits_by_hand():
    die = _line_wafer()
    rng = np.random.default_rng(2)
    v = rng.normal(10.0, 1.0, die.height)
    v[7] = 25.0  # a good die far out
    v[105] = 40.0  # a failing die: never screened, never in the population
    res = _results(die, {100: v})
    out = run_pat({"die": die, "results": res}, ONLY_PARAM)
    pop = v[:100]
    q1, med, q3 = np.quantile(pop, [0.25, 0.5, 0.75])
    lo, hi = med - 6 * (q3 - q1) / 1.35, med + 6 * (q3 - q1) / 1.35
    d = out.dispositions
    assert d.height == 1
    row = d.row(0, named=True)
    assert (row["rule"], row["x"], row["test_num"], row["new_bin"]) == ("dpat", 7, 100, 141)
    assert row["value"] == 25.0 and row["final_rule"] and row["reason_bits"] == REASON_BITS["dpat"]
    assert row["lo_limit"] == pytest.approx(lo) and row["hi_limit"] == pytest.approx(hi)
    assert row["original_hbin"] == 1 and row["recipe_hash"] == out.recipe_hash
    lim = out.limits.filter(pl.col("rule") == "dpat").row(0, named=True)
    assert lim["n"] == 100 and lim["center"] == pytest.approx(med)
    # the die table is re-binned
    rebinned = out.die.filter(pl.col("part_seq") == 7).row(0, named=True)
    assert (rebinned["hbin"], rebinned["sbin"], rebinned["passed"]) == (141, 141, False)
    assert out.die.filter(pl.col("hbin") == 141).height == 1
    # mean ± k sigma and clamping inside the test limits
    sig = run_pat({"die": die, "results": res}, {**ONLY_PARAM, "dpat": {"method": "sigma"}})
    assert sig.limits["hi_limit"][0] == pytest.approx(pop.mean() + 6 * pop.std(ddof=1))
    tests = schema.conform(
        "tests",
        pl.DataFrame(
            {
                "run_id": ["r1"],
                "test_num": [100],
                "kind": ["P"],
                "lo_limit": [9.0],
                "hi_limit": [30.0],
            }
        ),
    )
    clamped = run_pat({"die": die, "results": res, "tests": tests}, ONLY_PARAM)
    assert clamped.limits["lo_limit"][0] == 9.0


def test_small_populations_get_no_dpat_limit():
    die = _line_wafer(n_good=40)
    v = np.r_[np.random.default_rng(1).normal(size=49), 80.0]
    out = run_pat({"die": die, "results": _results(die, {100: v})}, ONLY_PARAM)
    assert out.dispositions.height == 0
    assert any("fewer than 50" in n for n in out.notes)
    lower = run_pat(
        {"die": die, "results": _results(die, {100: v})},
        {**ONLY_PARAM, "dpat": {"min_samples": 30}},
    )
    assert lower.dispositions.height == 0  # the 80.0 belongs to a failing die


def test_spat_from_static_limits_and_nesting():
    die = _line_wafer()
    v = np.clip(np.random.default_rng(3).normal(10.0, 1.0, die.height), 7.5, 12.5)
    v[3] = 13.5  # inside DPAT (±6 robust sigma) but outside the static limits
    res = _results(die, {100: v})
    static = schema.conform(
        "limits",
        pl.DataFrame(
            {
                "product": ["P"],
                "limit_type": ["SPAT"],
                "key": ["test:100"],
                "method": ["robust"],
                "version": [1],
                "scope": ["product"],
                "level1_lo": [7.0],
                "level1_hi": [13.0],
                "valid_from": [datetime(2020, 1, 1, tzinfo=UTC)],
            }
        ),
    )
    out = run_pat({"die": die, "results": res, "limits": static}, ONLY_PARAM)
    spat = out.dispositions.filter(pl.col("rule") == "spat")
    assert spat["x"].to_list() == [3] and spat["hi_limit"][0] == 13.0
    dpat_lim = out.limits.filter(pl.col("rule") == "dpat").row(0, named=True)
    assert dpat_lim["hi_limit"] <= 13.0 and dpat_lim["lo_limit"] >= 7.0
    assert out.dispositions.filter(pl.col("final_rule"))["rule"].to_list() == ["spat"]
    # without static limits SPAT says why it did nothing
    plain = run_pat({"die": die, "results": res}, ONLY_PARAM)
    assert any(n.startswith("spat: no static PAT limits") for n in plain.notes)


def _neighbourhood_die():
    """A 9x9 wafer: die (4, 4) good with bad neighbours left and right (GDBN squeeze),
    and a DPAT outlier on test 100."""
    rows = []
    for x in range(9):
        for y in range(9):
            bad = (x, y) in ((3, 4), (5, 4))
            rows.append({"x": x, "y": y, "hbin": 5 if bad else 1, "part_seq": x * 9 + y})
    die = die_frame(rows)
    v = np.random.default_rng(4).normal(0, 1, die.height)
    v[4 * 9 + 4] = 30.0
    return die, _results(die, {100: v})


def test_precedence_and_every_reason_kept():
    die, res = _neighbourhood_die()
    base = {
        "nnr": {"enabled": False},
        "cluster": {"enabled": False},
        "reticle": {"enabled": False},
        "zpat": {"enabled": False},
    }
    out = run_pat({"die": die, "results": res}, base)
    target = out.dispositions.filter((pl.col("x") == 4) & (pl.col("y") == 4))
    assert sorted(target["rule"].to_list()) == ["dpat", "gdbn"]
    assert set(target["reason_bits"]) == {REASON_BITS["dpat"] | REASON_BITS["gdbn"]}
    assert target.filter(pl.col("final_rule"))["rule"].to_list() == ["dpat"]
    gd = target.filter(pl.col("rule") == "gdbn").row(0, named=True)
    assert gd["test_num"] == -1 and gd["value"] == 2.0 and gd["hi_limit"] == 2.0
    # die above and below the bad pair have 2 bad neighbours in opposite diagonals too
    flagged = set(out.dispositions.filter(pl.col("rule") == "gdbn").select("x", "y").rows())
    assert (4, 4) in flagged
    geo_first = load_recipe(base).replace(
        recipe={
            "precedence": [
                "gdbn",
                "spat",
                "dpat",
                "nnr",
                "iddq_delta",
                "cluster",
                "reticle",
                "zpat",
            ]
        }
    )
    out2 = run_pat({"die": die, "results": res}, geo_first)
    t2 = out2.dispositions.filter((pl.col("x") == 4) & (pl.col("y") == 4) & pl.col("final_rule"))
    assert t2["rule"].to_list() == ["gdbn"] and t2["new_bin"][0] == 143
    assert out2.recipe_hash != out.recipe_hash
    one_per_die = out.dispositions.group_by("run_id", "part_seq").agg(pl.col("final_rule").sum())
    assert (one_per_die["final_rule"] == 1).all()
    # yield loss adds up
    lot = out.yield_loss.filter(pl.col("wafer_id") == "")
    total = lot.filter(pl.col("rule") == "total").row(0, named=True)
    assert total["n_binned"] == lot.filter(pl.col("rule") != "total")["n_binned"].sum()
    assert total["n_binned"] == out.dispositions.filter(pl.col("final_rule")).height
    assert total["yield_after"] == pytest.approx((total["n_good_before"] - total["n_binned"]) / 81)


def test_same_input_same_bytes():
    lot = toy_lot(
        np.random.default_rng(8), n_wafers=3, radius=12, tests=3, outliers=3, fail_rate=0.08
    )
    layout = Layout("P", 30.0, 1.0, 1.0, edge_exclusion_mm=0.0, reticle_cols=3, reticle_rows=2)
    frames = {
        "die": lot["die"],
        "results": lot["results"],
        "layouts": pl.DataFrame([layout.to_row()]),
    }
    a = run_pat(frames)
    shuffled = {
        **frames,
        "die": lot["die"].sample(fraction=1.0, shuffle=True, seed=1),
        "results": lot["results"].sample(fraction=1.0, shuffle=True, seed=2),
    }
    b = run_pat(shuffled)

    def ipc(df):
        buf = io.BytesIO()
        df.write_ipc(buf)
        return buf.getvalue()

    assert a.dispositions.height > 0
    assert ipc(a.dispositions) == ipc(b.dispositions)
    assert ipc(a.yield_loss) == ipc(b.yield_loss)
    assert ipc(a.limits) == ipc(b.limits)
    schema.validate("dispositions", a.dispositions)


def test_map_rules_on_a_constructed_lot():
    """Cluster inking around a blob, a reticle repeat, and a Z-PAT location."""
    layout = Layout("P", 40.0, 1.0, 1.0, edge_exclusion_mm=0.0, reticle_cols=4, reticle_rows=4)
    xs, ys = layout.gross_die()
    rows = []
    n_w = 6
    for w in range(n_w):
        for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist(), strict=True)):
            rx, ry = int(x) % 4, int(y) % 4
            bad = False
            if w == 0 and (x - 6) ** 2 + (y - 6) ** 2 <= 16:  # a 49-die blob plus...
                bad = True
            if w == 0 and (x, y) in ((10, 6), (11, 6), (10, 7)):
                bad = True
            if (rx, ry) == (1, 2) and (x + y + w) % 5 != 0:  # reticle position fails 80 %
                bad = True
            if (x, y) == (-8, -3) and w < 5:  # fails on 5 of 6 wafers
                bad = True
            rows.append(
                {
                    "run_id": f"r{w}",
                    "wafer_id": f"W{w}",
                    "x": int(x),
                    "y": int(y),
                    "hbin": 5 if bad else 1,
                    "part_seq": i,
                }
            )
    die = die_frame(rows)
    frames = {"die": die, "layouts": pl.DataFrame([layout.to_row()])}
    rec = {"gdbn": {"enabled": False}, "cluster": {"min_size": 40}}
    out = run_pat(frames, rec)
    d = out.dispositions
    # Z-PAT inks (-8, -3) on the one wafer where it is still good; the other Z-PAT locations
    # are reticle-repeat positions, which fail on most wafers too
    z = d.filter(pl.col("rule") == "zpat")
    assert ("W5", -8, -3) in set(z.select("wafer_id", "x", "y").rows())
    others = z.filter(pl.col("x") != -8)
    assert ((others["x"] % 4 == 1) & (others["y"] % 4 == 2)).all()
    pbar = die.filter(pl.col("hbin") == 5).height / die.height
    spot = z.filter(pl.col("x") == -8).row(0, named=True)
    assert spot["value"] == pytest.approx(stats.binom.sf(4, 6, pbar), rel=1e-9)
    assert spot["lo_limit"] == pytest.approx(0.05 / die.select("x", "y").unique().height)
    # reticle: good die at position (1, 2) are inked on every wafer, nothing else
    r = d.filter(pl.col("rule") == "reticle")
    assert r.height > 0
    assert (r["x"] % 4 == 1).all() and (r["y"] % 4 == 2).all()
    good_at_pos = die.filter(
        (pl.col("x") % 4 == 1) & (pl.col("y") % 4 == 2) & (pl.col("hbin") == 1)
    )
    assert r.height == good_at_pos.height
    # cluster: only wafer W0 has a cluster of >= 40 die; its outline is inked
    c = d.filter(pl.col("rule") == "cluster")
    assert set(c["wafer_id"]) == {"W0"}
    assert ("W0", 6, 11) in set(c.select("wafer_id", "x", "y").rows())  # just above the blob
    zl = out.yield_loss.filter(pl.col("rule") == "zpat", pl.col("wafer_id") == "")
    assert zl["n_flagged"][0] == z.height


def test_iddq_delta():
    die = _line_wafer(n_good=120, n_fail=0)
    rng = np.random.default_rng(5)
    pre = rng.lognormal(0.0, 0.1, die.height)
    post = pre + rng.normal(0.0, 0.01, die.height)
    post[11] += 0.5  # the stress moved this die's leakage
    res = _results(die, {500: pre, 501: post})
    tests = schema.conform(
        "tests",
        pl.DataFrame(
            {
                "run_id": ["r1", "r1"],
                "test_num": [500, 501],
                "kind": ["P", "P"],
                "test_name": ["IDDQ_PreStrs", "IDDQ_PostStrs"],
            }
        ),
    )
    rec = {**ONLY_PARAM, "dpat": {"enabled": False}}
    out = run_pat({"die": die, "results": res, "tests": tests}, rec)
    d = out.dispositions
    assert d["rule"].to_list() == ["iddq_delta"] and d["x"].to_list() == [11]
    assert d["value"][0] == pytest.approx(post[11] - pre[11])
    assert d["reason_bits"][0] == 8 and d["new_bin"][0] == 147


def test_recall_and_false_rejects_on_a_toy_lot():
    """9-sigma outliers on wafers with a radial gradient of 4 sigmas: DPAT alone misses some
    (the gradient widens the wafer's spread), NNR removes the gradient; together they find
    >= 95 % and flag nothing else (the nominal rate of ±6 sigma on Gaussian data is 2e-9)."""
    lot = toy_lot(
        np.random.default_rng(21),
        n_wafers=4,
        radius=22,
        tests=4,
        outliers=12,
        outlier_sigma=9.0,
        gradient=4.0,
        fail_rate=0.03,
    )
    out = run_pat(
        {"die": lot["die"], "results": lot["results"]},
        {
            "gdbn": {"enabled": False},
            "cluster": {"enabled": False},
            "reticle": {"enabled": False},
            "zpat": {"enabled": False},
        },
    )
    keys = ["lot_id", "wafer_id", "x", "y", "test_num"]
    hits = out.dispositions.filter(pl.col("rule").is_in(["dpat", "nnr"])).select(keys).unique()
    truth = lot["truth"]
    recall = truth.join(hits, on=keys, how="semi").height / truth.height
    assert recall >= 0.95
    false = hits.join(truth, on=keys, how="anti").height
    n_values = lot["results"].height
    nominal = 2 * stats.norm.sf(6) * n_values * 2  # two rules
    assert false <= stats.poisson.ppf(0.999, nominal)


def test_ci_fab_planted_outliers():
    """The synthetic fab plants 6-10 sigma outliers on final-good die (truth_outliers): DPAT per
    wafer and NNR together find >= 95 % of them; on its Gaussian tests nothing else is flagged
    (the nominal false-reject rate of ±6 sigma is 2e-9 per value). On the log-normal leakage
    tests the screens flag latent die (elevated IDDQ, truth_die.iddq_shift_sigma) as well."""
    lake = ci_lake()
    out = ci_pat()
    truth = lake.scan("truth_outliers").collect()
    tdie = lake.scan("truth_die").collect()
    final_good = tdie.filter(pl.col("final_pass")).select("lot_id", "wafer_id", "x", "y")
    planted = truth.join(final_good, on=["lot_id", "wafer_id", "x", "y"], how="semi")
    keys = ["lot_id", "wafer_id", "x", "y", "test_num"]
    param = out.dispositions.filter(pl.col("rule").is_in(["dpat", "nnr"]))
    found = planted.join(param.select(keys).unique(), on=keys, how="semi")
    recall = found.height / planted.height
    print(
        f"\nci: planted outliers on good die {planted.height}, found {found.height} "
        f"(recall {recall:.1%})"
    )
    assert planted.height >= 50 and recall >= 0.95
    gaussian = sorted(set(truth["test_num"]))  # the tests outliers are planted on
    others = param.filter(pl.col("test_num").is_in(gaussian)).join(
        truth.select(keys), on=keys, how="anti"
    )
    n_values = (
        param.height
        and lake.scan("results")
        .filter(pl.col("test_num").is_in(gaussian))
        .select(pl.len())
        .collect()
        .item()
    )
    nominal = 2 * stats.norm.sf(6) * n_values * 2
    assert others.height <= stats.poisson.ppf(0.999, nominal)
    leak = param.filter(~pl.col("test_num").is_in(gaussian)).join(
        tdie.select("lot_id", "wafer_id", "x", "y", "iddq_shift_sigma"),
        on=["lot_id", "wafer_id", "x", "y"],
    )
    if leak.height:
        print(
            f"leakage-test reasons {leak.height}, on latent die "
            f"{leak.filter(pl.col('iddq_shift_sigma') > 0).height}"
        )
        assert leak.filter(pl.col("iddq_shift_sigma") > 0).height / leak.height >= 0.8


def test_ci_fab_result_tables(lake):
    out = ci_pat()
    schema.validate("dispositions", out.dispositions)
    s = out.summary()
    assert set(s["lot_id"]) == {"AXL0001", "AXL0002"}
    assert (s["yield_after"] <= s["yield_before"]).all()
    alarms = out.alarms(raised_at=datetime(2024, 3, 8, tzinfo=UTC))
    schema.validate("alarms", alarms)
    lo1, _lo2 = out.recipe.data["alarm"]["pat_loss"]
    expect = s.filter(pl.col("pat_loss_total") > lo1).height
    assert alarms.height == expect
    assert n_written(out, lake) == out.dispositions.height
    again = out.write(lake)  # replaced, not duplicated
    assert again == out.dispositions.height
    assert lake.scan("dispositions").select(pl.len()).collect().item() == out.dispositions.height


def n_written(out, lake):
    return out.write(lake)


def test_bad_inputs():
    with pytest.raises(BackendFabError, match="needs a Lake or a mapping"):
        run_pat([1, 2])
    with pytest.raises(BackendFabError, match="unknown frame"):
        run_pat({"die": die_frame([{"x": 0, "y": 0, "hbin": 1}]), "dies": None})
    with pytest.raises(BackendFabError, match="'die' frame is required"):
        run_pat({"results": None})
    with pytest.raises(BackendFabError, match="no die to score"):
        run_pat({"die": die_frame([{"x": 0, "y": 0, "hbin": 1}])}, None, lots=["nope"])


def test_shape_classes():
    rng = np.random.default_rng(9)
    assert classify_shape(rng.normal(size=4000)) == "gaussian"
    assert classify_shape(rng.lognormal(0, 0.8, 4000)) == "lognormal"
    assert classify_shape(np.r_[rng.normal(size=2000), rng.normal(8, 1, 2000)]) == "multimodal"
    assert classify_shape(np.clip(rng.normal(size=4000), -0.5, None)) == "clamped_low"
    assert classify_shape(np.clip(rng.normal(size=4000), -0.5, 0.5)) == "double_clamped"
    assert classify_shape(rng.integers(0, 4, 4000)) == "category"
    assert classify_shape(rng.standard_t(3, 4000)) == "two_tails"
    assert classify_shape(np.r_[1.0, 2.0]) == "unknown"
    die = _line_wafer(n_good=400, n_fail=0)
    v = rng.lognormal(0, 0.5, 400)
    v[0] = 30.0
    out = run_pat(
        {"die": die, "results": _results(die, {100: v})},
        {**ONLY_PARAM, "dpat": {"method": "shape"}},
    )
    assert out.limits["shape"][0] == "lognormal"
    assert 0 in out.dispositions["x"].to_list()
    # near factors 3 / 7 for a log-normal population
    pop = v
    q1, med, q3 = np.quantile(pop, [0.25, 0.5, 0.75])
    assert out.limits["hi_limit"][0] == pytest.approx(med + 7 * (q3 - q1) / 1.35)


def test_round_wafer_helper():
    xs, ys = round_wafer(3)
    assert xs.size == 29 and (xs**2 + ys**2 <= 9).all()
