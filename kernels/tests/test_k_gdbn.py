"""GDBN squeeze and weighting against naive.py, on every edge policy, window and mask."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from backend_fab_kernels.gdbn import gdbn, gdbn_weights
from grid_strategies import examples, read_only, wafers
from hypothesis import given
from hypothesis import strategies as st

SETTINGS = st.fixed_dictionaries(
    {
        "algorithm": st.sampled_from(["squeeze", "weighting"]),
        "window": st.sampled_from([3, 3, 5, 7]),
        "fail_count": st.integers(1, 5),
        "threshold": st.sampled_from([1.0, 3.0, 4.5, 8.0, 12.0]),
        "edge": st.sampled_from([None, "ignore", "good", "bad", "scale"]),
        "edge_scale": st.sampled_from([1.1, 1.5, 0.5, 2.0]),
        "edge_type": st.sampled_from(["adjacent", "corner", "both"]),
        # integer and dyadic weights: sums are exact in any order
        "ring_weights": st.sampled_from([None, [(2, 1)], [(3, 1), (1, 0.5)], [(1, 1), (2, 0)]]),
    }
)


@given(wafers(max_side=12), SETTINGS, st.booleans(), st.data())
@examples(0.5)
def test_gdbn_matches_naive(state, kw, use_mask, data):
    h = kw["window"] // 2
    if kw["ring_weights"] is not None and len(kw["ring_weights"]) > h:
        kw["ring_weights"] = kw["ring_weights"][:h]
    mask = None
    if use_mask:
        cells = state.shape[1] * state.shape[2]
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=cells, max_size=cells))).reshape(
            state.shape[1:]
        )
    ro = read_only(state)
    flags = gdbn(ro, ring_mask=mask, **kw)
    flags_s, score = gdbn(ro, ring_mask=mask, return_score=True, **kw)
    ref_flags, ref_score = naive.gdbn(state, ring_mask=mask, return_score=True, **kw)
    np.testing.assert_array_equal(flags, ref_flags)  # the bit-parallel 3x3 path
    np.testing.assert_array_equal(flags_s, ref_flags)  # the direct path
    np.testing.assert_array_equal(score, ref_score)


def test_squeeze_needs_an_opposite_pair():
    s = np.zeros((5, 5), dtype=np.int8)
    s[2, 1] = 1  # left
    s[3, 1] = 1  # top-left: two bad neighbours on one side
    assert gdbn(s)[2, 2] == 0
    s[2, 3] = 1  # right: L and R
    assert gdbn(s)[2, 2] == 1
    assert gdbn(s, fail_count=4)[2, 2] == 0
    one = np.zeros((3, 3), dtype=np.int8)
    one[0, 0] = 1
    assert gdbn(one, fail_count=1, edge="good")[1, 1] == 1


def test_weighting_defaults_and_edge_scale():
    s = np.zeros((5, 5), dtype=np.int8)
    s[2, 1] = s[2, 3] = s[1, 2] = 1  # three adjacent: 6 < 8
    assert gdbn(s, "weighting")[2, 2] == 0
    s[3, 3] = s[3, 1] = 1  # two diagonals: 8
    flags, score = gdbn(s, "weighting", return_score=True)
    assert flags[2, 2] == 1 and score[2, 2] == 8.0
    edge = np.full((3, 4), -1, dtype=np.int8)
    edge[:, 1:] = 0
    # die (x=1, y=1) has off-wafer neighbours at x=0: 3 bad adjacent + 1 bad diagonal = 7
    edge[1, 2] = edge[0, 1] = edge[2, 1] = edge[0, 2] = 1
    f, sc = gdbn(edge, "weighting", threshold=7.5, return_score=True)  # 7 * 1.1 = 7.7 >= 7.5
    assert f[1, 1] == 1 and sc[1, 1] == pytest.approx(7.7)
    assert gdbn(edge, "weighting", threshold=7.5, edge="good")[1, 1] == 0
    assert gdbn(edge, "weighting", threshold=7.5, edge="ignore")[1, 1] == 0
    assert gdbn(edge, "weighting", threshold=7.5, edge="bad")[1, 1] == 1  # + 3 off-wafer: 2 + 1 + 1


def test_weights_matrix():
    w = gdbn_weights(5, [(2, 1)])
    assert w[2, 2] == 0 and w[2, 3] == 2 and w[3, 3] == 1 and w[0, 0] == 1 and w[0, 2] == 1
    with pytest.raises(ValueError, match="rings"):
        gdbn_weights(3, [(2, 1), (1, 1)])


def test_validation():
    s = np.zeros((3, 3), dtype=np.int8)
    with pytest.raises(ValueError, match="algorithm"):
        gdbn(s, "median")
    with pytest.raises(ValueError, match="window"):
        gdbn(s, window=4)
    with pytest.raises(ValueError, match="edge"):
        gdbn(s, edge="wrap")
    with pytest.raises(ValueError, match="state codes"):
        gdbn(np.full((3, 3), 2, dtype=np.int8))
    with pytest.raises(TypeError, match="integer codes"):
        gdbn(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="ring_mask"):
        gdbn(s, ring_mask=np.ones((2, 2), dtype=bool))
