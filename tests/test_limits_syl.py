"""SYL/SBL (AEC-Q002) and static PAT limits: hand cases, monotonicity, versions, evaluation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from backend_fab import limits, schema
from backend_fab.errors import LimitsError

T0 = datetime(2024, 1, 1, tzinfo=UTC)
GOOD = [90, 92, 88, 93, 89, 95, 91, 90]  # good die of 100 per lot
BIN5 = [4, 3, 6, 2, 5, 1, 4, 3]  # bin-5 fails per lot


def _history(good=GOOD, bin5=BIN5, n=100, start=0):
    """One wafer of ``n`` die per lot: good die bin 1, bin-5 fails, the rest bin 7."""
    rows, runs = [], []
    for i, (g, b) in enumerate(zip(good, bin5, strict=True)):
        lot = f"L{start + i:02d}"
        run = f"run-{lot}"
        runs.append(
            {
                "run_id": run,
                "product": "P",
                "lot_id": lot,
                "insertion": "WS1",
                "start_time": T0 + timedelta(days=start + i),
            }
        )
        hb = [1] * g + [5] * b + [7] * (n - g - b)
        for k, h in enumerate(hb):
            rows.append(
                {
                    "run_id": run,
                    "part_seq": k,
                    "product": "P",
                    "lot_id": lot,
                    "wafer_id": "01",
                    "x": k % 10,
                    "y": k // 10,
                    "hbin": h,
                    "sbin": h,
                    "passed": h == 1,
                    "final": True,
                }
            )
    die = schema.conform("die", pl.DataFrame(rows))
    return die.lazy(), schema.conform("runs", pl.DataFrame(runs)).lazy()


def _row(ls, key):
    return ls.limits.filter(pl.col("key") == key).row(0, named=True)


def test_normal_robust_percentile_by_hand():
    die, runs = _history()
    y = np.array(GOOD) / 100
    f5 = np.array(BIN5) / 100
    ls = limits.syl_sbl_limits(die, runs=runs, method="normal", created_at=T0)
    syl = _row(ls, "yield")
    assert syl["limit_type"] == "SYL" and syl["method"] == "normal"
    assert syl["level1_lo"] == pytest.approx(y.mean() - 3 * y.std(ddof=1))
    assert syl["level2_lo"] == pytest.approx(y.mean() - 4 * y.std(ddof=1))
    assert syl["level1_hi"] is None and syl["n_lots"] == 8 and syl["n_points"] == 8
    sbl = _row(ls, "hbin:5")
    assert sbl["level1_hi"] == pytest.approx(f5.mean() + 3 * f5.std(ddof=1))
    assert sbl["level2_hi"] == pytest.approx(f5.mean() + 4 * f5.std(ddof=1))
    assert syl["data_from"] == T0 and syl["data_to"] == T0 + timedelta(days=7)
    assert syl["valid_to"] - syl["valid_from"] == timedelta(days=183)
    rob = limits.syl_sbl_limits(die, runs=runs, method="robust", created_at=T0)
    med = np.median(y)
    mad = 1.4826 * np.median(np.abs(y - med))
    assert _row(rob, "yield")["level1_lo"] == pytest.approx(med - 3 * mad)
    iqr = limits.syl_sbl_limits(die, runs=runs, method="robust", robust="iqr", created_at=T0)
    q1, q3 = np.quantile(y, [0.25, 0.75])
    assert _row(iqr, "yield")["level2_lo"] == pytest.approx(med - 4 * (q3 - q1) / 1.349)
    pct = limits.syl_sbl_limits(die, runs=runs, method="percentile", created_at=T0)
    a1 = stats.norm.sf(3)
    assert _row(pct, "yield")["level1_lo"] == pytest.approx(np.quantile(y, a1))
    assert _row(pct, "hbin:5")["level1_hi"] == pytest.approx(np.quantile(f5, 1 - a1))


def test_count_methods_by_hand():
    die, runs = _history()
    pbar = sum(BIN5) / 800
    a1, a2 = stats.norm.sf(3), stats.norm.sf(4)
    b = limits.syl_sbl_limits(die, runs=runs, method="binomial", created_at=T0)
    sbl = _row(b, "hbin:5")
    c1 = min(c for c in range(101) if stats.binom.sf(c - 1, 100, pbar) <= a1)
    c2 = min(c for c in range(101) if stats.binom.sf(c - 1, 100, pbar) <= a2)
    assert sbl["level1_hi"] == pytest.approx(c1 / 100)
    assert sbl["level2_hi"] == pytest.approx(c2 / 100)
    assert sbl["center"] == pytest.approx(pbar)
    syl = _row(b, "yield")
    gbar = sum(GOOD) / 800
    l1 = max(c for c in range(101) if stats.binom.cdf(c, 100, gbar) <= a1)
    assert syl["level1_lo"] == pytest.approx(l1 / 100)
    p = limits.syl_sbl_limits(die, runs=runs, method="poisson", created_at=T0)
    assert _row(p, "hbin:5")["level1_hi"] == pytest.approx(
        min(c for c in range(101) if stats.poisson.sf(c - 1, 100 * pbar) <= a1) / 100
    )
    assert "yield" in p.skipped["key"].to_list()  # Poisson is for rare bins, not yield
    bb = limits.syl_sbl_limits(die, runs=runs, method="beta_binomial", created_at=T0)
    rho = json.loads(_row(bb, "hbin:5")["parameters"])["rho"]
    assert rho >= 0.0
    # overdispersion widens the limits
    assert _row(bb, "hbin:5")["level2_hi"] >= sbl["level2_hi"]


@settings(max_examples=15)
@given(
    st.sampled_from(["normal", "robust", "percentile", "binomial", "beta_binomial"]),
    st.floats(1.0, 4.0),
    st.floats(0.1, 2.0),
)
def test_limits_are_monotone_in_k(method, k1, dk):
    die, runs = _history()
    lo = limits.syl_sbl_limits(die, runs=runs, method=method, k1=k1, k2=k1 + dk, created_at=T0)
    hi = limits.syl_sbl_limits(
        die, runs=runs, method=method, k1=k1 + dk, k2=k1 + 2 * dk, created_at=T0
    )
    a, b = _row(lo, "yield"), _row(hi, "yield")
    assert b["level1_lo"] <= a["level1_lo"] + 1e-12
    assert a["level2_lo"] <= a["level1_lo"] + 1e-12
    s_a, s_b = _row(lo, "hbin:5"), _row(hi, "hbin:5")
    assert s_b["level1_hi"] >= s_a["level1_hi"] - 1e-12
    assert s_a["level2_hi"] >= s_a["level1_hi"] - 1e-12


def test_minimum_lots_window_and_errors():
    die, runs = _history()
    with pytest.raises(LimitsError, match="need 6 lots"):
        limits.syl_sbl_limits(die, runs=runs, data_from=T0 + timedelta(days=3), created_at=T0)
    ls = limits.syl_sbl_limits(
        die,
        runs=runs,
        data_from=T0 + timedelta(days=1),
        data_to=T0 + timedelta(days=7),
        method="normal",
        created_at=T0,
    )
    y = np.array(GOOD[1:7]) / 100
    assert _row(ls, "yield")["n_lots"] == 6
    assert _row(ls, "yield")["level1_lo"] == pytest.approx(y.mean() - 3 * y.std(ddof=1))
    with pytest.raises(Exception, match="k1 < k2"):
        limits.syl_sbl_limits(die, runs=runs, k1=4, k2=3)
    with pytest.raises(Exception, match="method"):
        limits.syl_sbl_limits(die, runs=runs, method="magic")
    flat, runs2 = _history(good=[90] * 8, bin5=[4] * 8)
    with pytest.raises(LimitsError, match="spread is 0"):
        limits.syl_sbl_limits(flat, runs=runs2, method="normal", created_at=T0)
    # one constant key is skipped, the others still get limits
    part, runs3 = _history(bin5=[4] * 8)
    some = limits.syl_sbl_limits(part, runs=runs3, method="normal", created_at=T0)
    assert some.skipped["key"].to_list() == ["hbin:5"]
    assert set(some.limits["key"]) == {"yield", "hbin:7"}


def test_versions_in_the_lake_and_evaluation(lake):
    die, runs = _history()
    first = limits.syl_sbl_limits(die, runs=runs, method="normal", created_at=T0)
    written = limits.save_limits(lake, first)
    assert set(written["version"]) == {1}
    later = T0 + timedelta(days=30)
    second = limits.syl_sbl_limits(die, runs=runs, method="normal", created_at=later)
    limits.save_limits(lake, second)
    stored = lake.scan("limits").collect()
    v1 = stored.filter((pl.col("key") == "yield") & (pl.col("version") == 1)).row(0, named=True)
    assert v1["valid_to"] == later  # closed by version 2
    current = limits.load_limits(lake, product="P", limit_type="SYL")
    assert current["version"].to_list() == [2]
    at_start = limits.load_limits(lake, at=T0 + timedelta(days=1))
    assert set(at_start["version"]) == {1}
    # a new lot at 70 % yield and 12 % bin 5 hits level 2 of both
    new, _new_runs = _history(good=[70], bin5=[12], start=40)
    ev = limits.evaluate_limits(new, current_limits_all := limits.load_limits(lake))
    assert current_limits_all.height == 3  # SYL yield, SBL hbin:5 and hbin:7
    syl = ev.filter(pl.col("key") == "yield").row(0, named=True)
    assert syl["level"] == 2 and syl["value"] == pytest.approx(0.70)
    assert "below SYL2" in syl["reason"] and "v2" in syl["reason"]
    sbl = ev.filter(pl.col("key") == "hbin:5").row(0, named=True)
    assert sbl["level"] == 2 and "above SBL2" in sbl["reason"]
    lv = limits.limit_levels(ev).row(0, named=True)
    assert (lv["syl_level"], lv["sbl_level"]) == (2, 2)
    ok = limits.evaluate_limits(die, current_limits_all)
    assert ok.filter(pl.col("key") == "yield")["level"].max() <= 1


def test_binomial_evaluation_uses_the_lot_size():
    die, runs = _history()
    lim = limits.syl_sbl_limits(die, runs=runs, method="binomial", created_at=T0).limits
    # same fail fraction, bigger lot: more significant
    small, _ = _history(good=[80], bin5=[10], n=100, start=50)
    big, _ = _history(good=[800], bin5=[100], n=1000, start=60)
    ev_small = (
        limits.evaluate_limits(small, lim).filter(pl.col("key") == "hbin:5").row(0, named=True)
    )
    ev_big = limits.evaluate_limits(big, lim).filter(pl.col("key") == "hbin:5").row(0, named=True)
    assert ev_big["p_value"] < ev_small["p_value"]
    pbar = sum(BIN5) / 800
    assert ev_small["p_value"] == pytest.approx(stats.binom.sf(9, 100, pbar))
    assert ev_big["level"] == 2


def _param_history(n_lots=6, iqr_zero=False):
    rng = np.random.default_rng(3)
    die_rows, res_rows = [], []
    for i in range(n_lots):
        run = f"r{i}"
        for k in range(60):
            hb = 1 if k < 55 else 5
            die_rows.append(
                {
                    "run_id": run,
                    "part_seq": k,
                    "product": "P",
                    "lot_id": f"L{i}",
                    "wafer_id": "01",
                    "x": k,
                    "y": 0,
                    "hbin": hb,
                    "sbin": hb,
                    "passed": hb == 1,
                    "final": True,
                }
            )
            v = 2.0 if iqr_zero else float(rng.normal(10, 1))
            if hb == 5:
                v = 100.0  # failing die never enter the population
            res_rows.append(
                {
                    "run_id": run,
                    "part_seq": k,
                    "test_num": 7,
                    "pin": -1,
                    "value": v,
                    "product": "P",
                    "lot_id": f"L{i}",
                }
            )
    die = schema.conform("die", pl.DataFrame(die_rows))
    res = schema.conform("results", pl.DataFrame(res_rows))
    return die, res


def test_static_pat_limits_by_hand():
    die, res = _param_history()
    ls = limits.static_pat_limits(res.lazy(), die.lazy(), created_at=T0)
    row = ls.limits.row(0, named=True)
    vals = res.join(die.filter(pl.col("hbin") == 1), on=["run_id", "part_seq"])["value"].to_numpy()
    q1, med, q3 = np.quantile(vals, [0.25, 0.5, 0.75])
    assert row["key"] == "test:7" and row["limit_type"] == "SPAT"
    assert row["center"] == pytest.approx(med)
    assert row["spread"] == pytest.approx((q3 - q1) / 1.35)
    assert row["level1_lo"] == pytest.approx(med - 6 * (q3 - q1) / 1.35)
    assert row["level1_hi"] == pytest.approx(med + 6 * (q3 - q1) / 1.35)
    assert row["n_lots"] == 6 and row["n_points"] == 6 * 55
    tests = schema.conform(
        "tests",
        pl.DataFrame(
            {
                "run_id": ["r0"],
                "test_num": [7],
                "kind": ["P"],
                "lo_limit": [8.0],
                "hi_limit": [30.0],
            }
        ),
    )
    clamped = limits.static_pat_limits(res.lazy(), die.lazy(), tests=tests.lazy(), created_at=T0)
    assert clamped.limits["level1_lo"][0] == 8.0  # inside the spec
    assert json.loads(clamped.limits["parameters"][0])["cpk"] == pytest.approx(
        (vals.mean() - 8.0) / (3 * vals.std(ddof=1))
    )
    gated = limits.static_pat_limits(
        res.lazy(), die.lazy(), tests=tests.lazy(), cpk_min=2.0, created_at=T0
    )
    assert gated.limits.height == 0 and "not a PAT candidate" in gated.skipped["reason"][0]
    few = limits.static_pat_limits(res.lazy(), die.lazy(), min_lots=7, created_at=T0)
    assert few.limits.height == 0 and "need 7 lots" in few.skipped["reason"][0]
    flat_die, flat_res = _param_history(iqr_zero=True)
    flat = limits.static_pat_limits(flat_res.lazy(), flat_die.lazy(), created_at=T0)
    assert "IQR = 0" in flat.skipped["reason"][0]
