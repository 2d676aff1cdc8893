"""Z-PAT stacks, binomial tails, cluster inking and reticle stacks against naive.py."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from backend_fab_kernels.inking import cluster_ink
from backend_fab_kernels.reticle import reticle_stack
from backend_fab_kernels.zstack import binomial_sf, zpat_binomial, zpat_threshold, zstack
from grid_strategies import examples, read_only, wafers
from hypothesis import given
from hypothesis import strategies as st


@given(
    wafers(),
    st.sampled_from([0.0, -5.0, 10.0, 33.3, 50.0, 100.0]),
    st.sampled_from(["bonferroni", "bh"]),
    st.sampled_from([0.01, 0.05, 0.5]),
)
@examples(0.34)
def test_zstack_and_zpat_match_naive(state, threshold, method, alpha):
    fails, tested = zstack(read_only(state))
    ref_f, ref_t = naive.zstack(state)
    np.testing.assert_array_equal(fails, ref_f)
    np.testing.assert_array_equal(tested, ref_t)
    np.testing.assert_array_equal(
        zpat_threshold(fails, state.shape[0], threshold),
        naive.zpat_threshold(ref_f, state.shape[0], threshold),
    )
    if tested.sum() == 0:
        return
    flags, pv = zpat_binomial(fails, tested, alpha, method)
    ref_flags, ref_pv = naive.zpat_binomial(ref_f, ref_t, alpha, method)
    np.testing.assert_allclose(pv, ref_pv, rtol=1e-10, atol=1e-14)
    # decisions may differ only when a p-value sits on a cut (alpha/m, or BH's alpha j/m) within
    # the float tolerance of the log-space sum; otherwise they must agree exactly
    m = int((tested > 0).sum())
    cuts = alpha * np.arange(1, m + 1) / m
    finite = pv[np.isfinite(pv)]
    on_cut = np.isclose(finite[:, None], cuts[None, :], rtol=1e-9, atol=0).any()
    if not on_cut:
        np.testing.assert_array_equal(flags, ref_flags)


@given(st.integers(-2, 40), st.integers(0, 40), st.floats(0, 1))
@examples(0.34)
def test_binomial_sf_matches_exact(k, n, p):
    np.testing.assert_allclose(
        binomial_sf(k, n, p), naive.binomial_sf(k, n, p), rtol=1e-10, atol=1e-300
    )


def test_zpat_threshold_galaxy_rule():
    fails = np.array([[0, 1, 2, 3]], dtype=np.int32)
    # 5 wafers at 50 %: ceil(2.5) = 3 wafers
    np.testing.assert_array_equal(zpat_threshold(fails, 5, 50.0), [[False, False, False, True]])
    assert not zpat_threshold(fails, 5, 0.0).any()  # the default 0 switches the rule off


@given(
    wafers(max_side=14),
    st.sampled_from([1, 2, 5, 20, -10.0, -50.0]),
    st.integers(0, 3),
    st.sampled_from([4, 8]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([3, 5]),
    st.sampled_from([2.0, 5.0, 8.0]),
)
@examples(0.34)
def test_cluster_ink_matches_naive(
    state, min_size, rings, connectivity, ignore_lines, light, window, threshold
):
    kw = dict(
        connectivity=connectivity,
        ignore_lines=ignore_lines,
        light_outline=light,
        window=window,
        threshold=threshold,
    )
    ink = cluster_ink(read_only(state), min_size, rings, **kw)
    np.testing.assert_array_equal(ink, naive.cluster_ink(state, min_size, rings, **kw))
    assert not (ink.astype(bool) & (state != 0)).any()


def test_cluster_ink_outline():
    s = np.zeros((9, 9), dtype=np.int8)
    s[3:6, 3:6] = 1
    ink = cluster_ink(s, min_size=9, rings=1)
    expected = np.zeros((9, 9), dtype=np.uint8)
    expected[2:7, 2:7] = 1
    expected[3:6, 3:6] = 0
    np.testing.assert_array_equal(ink, expected)
    assert cluster_ink(s, min_size=10).sum() == 0
    assert cluster_ink(s, min_size=9, rings=2).sum() == 49 - 9
    line = np.zeros((5, 9), dtype=np.int8)
    line[2, :] = 1
    assert cluster_ink(line, min_size=3).sum() == 0
    assert cluster_ink(line, min_size=3, ignore_lines=False).sum() == 18


@given(wafers(), st.integers(1, 6), st.data())
@examples(0.34)
def test_reticle_stack_matches_naive(state, n_pos, data):
    cells = state.shape[1] * state.shape[2]
    pos = np.array(
        data.draw(st.lists(st.integers(-1, n_pos - 1), min_size=cells, max_size=cells)),
        dtype=np.int64,
    ).reshape(state.shape[1:])
    f, t = reticle_stack(read_only(state), read_only(pos), n_pos)
    rf, rt = naive.reticle_stack(state, pos, n_pos)
    np.testing.assert_array_equal(f, rf)
    np.testing.assert_array_equal(t, rt)


def test_validation():
    s = np.zeros((1, 2, 2), dtype=np.int8)
    with pytest.raises(ValueError, match="position"):
        reticle_stack(s, np.zeros((2, 2), dtype=np.int64), 0)
    with pytest.raises(ValueError, match="position values"):
        reticle_stack(s, np.full((2, 2), 3), 2)
    with pytest.raises(ValueError, match="min_size"):
        cluster_ink(s, min_size=0)
    with pytest.raises(ValueError, match="fails <= tested"):
        zpat_binomial(np.array([2]), np.array([1]))
