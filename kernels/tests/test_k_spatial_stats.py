"""Join counts, permutation test, Moran's I, runs, quadrats and window counts vs naive.py, and the
analytic join-count moments against simulation."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from backend_fab_kernels import spatial_stats as ss
from grid_strategies import examples, read_only, wafers
from hypothesis import given
from hypothesis import strategies as st

RTOL = 1e-9
ATOL = 1e-9


@given(wafers(), st.sampled_from([4, 8]))
@examples(0.34)
def test_join_counts_match_naive(state, connectivity):
    got = ss.join_counts(read_only(state), connectivity)
    ref = naive.join_counts(state, connectivity)
    for key in ("n_die", "n_fail", "bb", "bw", "ww"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    for key in ("s0", "s1", "s2", "expected_free", "variance_free", "expected", "variance"):
        np.testing.assert_allclose(got[key], ref[key], rtol=RTOL, atol=ATOL, err_msg=key)
    for key in ("z", "z_free"):
        both = np.isfinite(got[key]) & np.isfinite(ref[key])
        np.testing.assert_allclose(
            got[key][both], ref[key][both], rtol=1e-6, atol=1e-6, err_msg=key
        )


@given(wafers(max_side=9), st.sampled_from([4, 8]), st.integers(1, 30), st.integers(0, 2**64 - 1))
@examples(0.34)
def test_permutation_matches_naive(state, connectivity, n_perm, seed):
    got = ss.join_count_permutation(read_only(state), connectivity, n_perm, seed)
    ref = naive.join_count_permutation(state, connectivity, n_perm, seed)
    np.testing.assert_array_equal(got["n_ge"], ref["n_ge"])
    np.testing.assert_array_equal(got["p_value"], ref["p_value"])


def _disk(n=30):
    yy, xx = np.mgrid[0:n, 0:n]
    c = (n - 1) / 2
    return (xx - c) ** 2 + (yy - c) ** 2 <= (n / 2) ** 2


@pytest.mark.parametrize("connectivity", [4, 8])
def test_join_count_moments_match_simulation(connectivity):
    """Free sampling (Bernoulli p) and non-free sampling (a fixed number of fails) on a disk."""
    rng = np.random.default_rng(20240304)
    die = _disk()
    n = int(die.sum())
    sims = 4000
    p = 0.1
    free = np.where(die[None], (rng.random((sims, *die.shape)) < p).astype(np.int8), -1)
    bb_free = ss.join_counts(free, connectivity)["bb"]
    n1 = round(p * n)
    flat = np.zeros((sims, n), dtype=np.int8)
    flat[:, :n1] = 1
    flat = rng.permuted(flat, axis=1)
    fixed = np.full((sims, *die.shape), -1, dtype=np.int8)
    fixed[:, die] = flat
    bb_fixed = ss.join_counts(fixed, connectivity)["bb"]
    ref = ss.join_counts(
        np.where(die, (np.arange(die.size).reshape(die.shape) % 10 == 0).astype(np.int8), -1),
        connectivity,
    )
    s0, s1, s2 = ref["s0"][0], ref["s1"][0], ref["s2"][0]
    e_free = 0.5 * s0 * p * p
    v_free = 0.25 * (s1 * p**2 + (s2 - 2 * s1) * p**3 + (s1 - s2) * p**4)
    one = fixed[:1]
    theory = ss.join_counts(one, connectivity)
    # sampling error of a mean over 4000 draws: sd / sqrt(4000); of a variance: ~ var * sqrt(2 / 4000)
    assert abs(bb_free.mean() - e_free) < 4 * np.sqrt(v_free / sims)
    assert abs(bb_free.var() - v_free) < 4 * v_free * np.sqrt(2 / sims) * 1.5
    assert abs(bb_fixed.mean() - theory["expected"][0]) < 4 * np.sqrt(theory["variance"][0] / sims)
    assert (
        abs(bb_fixed.var() - theory["variance"][0])
        < 4 * theory["variance"][0] * np.sqrt(2 / sims) * 1.5
    )
    print(
        f"conn {connectivity}: free E {e_free:.3f} sim {bb_free.mean():.3f}, Var {v_free:.3f} sim {bb_free.var():.3f}; "
        f"non-free E {theory['expected'][0]:.3f} sim {bb_fixed.mean():.3f}, "
        f"Var {theory['variance'][0]:.3f} sim {bb_fixed.var():.3f}"
    )


def test_domain_anchor_716_die():
    """DOMAIN §3.2: a 716-die circular grid at p = 0.1 gives E = 13.72, Var = 20.73 (rook)."""
    for n in range(28, 34):
        yy, xx = np.mgrid[0:n, 0:n]
        c = (n - 1) / 2
        for r in np.arange(13.0, 17.0, 0.05):
            die = (xx - c) ** 2 + (yy - c) ** 2 <= r * r
            if die.sum() == 716:
                jc = ss.join_counts(np.where(die, 0, -1).astype(np.int8), 4)
                p = 0.1
                e = 0.5 * jc["s0"][0] * p * p
                v = 0.25 * (
                    jc["s1"][0] * p**2
                    + (jc["s2"][0] - 2 * jc["s1"][0]) * p**3
                    + (jc["s1"][0] - jc["s2"][0]) * p**4
                )
                assert e == pytest.approx(13.72, abs=0.3)
                assert v == pytest.approx(20.73, abs=0.6)
                return
    pytest.fail("no 716-die disk found")


@given(wafers(), st.sampled_from([4, 8]), st.booleans(), st.data())
@examples(0.34)
def test_morans_i_matches_naive(state, connectivity, parametric, data):
    if parametric:
        vals = np.array(
            data.draw(st.lists(st.floats(-100, 100), min_size=state.size, max_size=state.size))
        ).reshape(state.shape)
        values = np.where(state >= 0, vals, np.nan)
    else:
        values = np.where(state >= 0, state, np.nan).astype(np.float64)
    got = ss.morans_i(read_only(values), connectivity)
    ref = naive.morans_i(values, connectivity)
    for key in ("n", "expected"):
        np.testing.assert_allclose(got[key], ref[key], rtol=RTOL, atol=ATOL, equal_nan=True)
    for key in ("i", "variance", "z"):
        np.testing.assert_allclose(
            got[key], ref[key], rtol=1e-6, atol=1e-8, equal_nan=True, err_msg=key
        )


@given(wafers())
@examples(0.34)
def test_runs_and_serpentine_match_naive(state):
    seq, off = ss.serpentine_sequences(read_only(state))
    rseq, roff = naive.serpentine_sequences(state)
    np.testing.assert_array_equal(seq, rseq)
    np.testing.assert_array_equal(off, roff)
    got = ss.runs_test(read_only(seq), off)
    ref = naive.runs_test(rseq, roff)
    for key in ("n1", "n2", "runs"):
        np.testing.assert_array_equal(got[key], ref[key])
    for key in ("expected", "variance", "z"):
        np.testing.assert_allclose(got[key], ref[key], rtol=RTOL, atol=ATOL, equal_nan=True)


@given(wafers(), st.integers(1, 4), st.integers(1, 4), st.sampled_from([1.0, 0.5, 0.1]))
@examples(0.34)
def test_quadrats_and_dispersion_match_naive(state, qx, qy, fill):
    f, d, off = ss.quadrat_counts(read_only(state), qx, qy, fill)
    rf, rd, roff = naive.quadrat_counts(state, qx, qy, fill)
    np.testing.assert_array_equal(f, rf)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(off, roff)
    got = ss.dispersion(state, qx, qy, fill)
    ref = naive.dispersion(state, qx, qy, fill)
    for key in got:
        np.testing.assert_allclose(
            got[key], ref[key], rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=key
        )


@given(wafers())
@examples(0.34)
def test_window_yields_match_naive(state):
    k, win, good = ss.window_yields(read_only(state))
    rk, rwin, rgood = naive.window_yields(state)
    np.testing.assert_array_equal(k, rk)
    np.testing.assert_array_equal(win, rwin)
    np.testing.assert_array_equal(good, rgood)


def test_clustered_map_is_significant_and_random_is_not():
    die = _disk(40)
    clustered = np.where(die, 0, -1).astype(np.int8)
    clustered[15:25, 15:25] = np.where(die[15:25, 15:25], 1, -1)
    jc = ss.join_counts(clustered)
    assert jc["z"][0] > 10
    assert ss.join_count_permutation(clustered, n_perm=199)["p_value"][0] == pytest.approx(1 / 200)
    assert ss.morans_i(np.where(die, clustered, np.nan).astype(float))["z"][0] > 10
    assert ss.dispersion(clustered)["index"][0] > 3


def test_validation():
    with pytest.raises(ValueError, match="offsets"):
        ss.runs_test(np.zeros(3), np.array([0, 2]))
    with pytest.raises(ValueError, match="n_perm"):
        ss.join_count_permutation(np.zeros((2, 2), dtype=np.int8), n_perm=0)
    with pytest.raises(ValueError, match="min_fill"):
        ss.quadrat_counts(np.zeros((2, 2), dtype=np.int8), min_fill=0)
