"""dbscan_grid against naive.py and scikit-learn's DBSCAN on the fail coordinates."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from backend_fab_kernels.dbscan import dbscan_grid, eps_offsets
from grid_strategies import examples, read_only, wafers
from hypothesis import given
from hypothesis import strategies as st

EPS = st.sampled_from([1.0, 1.2, 1.5, float(np.sqrt(2.0)), 2.0, 2.5, 3.0, 4.2])


@given(wafers(), EPS, st.integers(1, 8))
@examples(0.5)
def test_dbscan_matches_naive_and_sklearn(state, eps, min_samples):
    from sklearn.cluster import DBSCAN

    labels, counts = dbscan_grid(read_only(state), eps, min_samples)
    ref, ref_counts = naive.dbscan_grid(state, eps, min_samples)
    np.testing.assert_array_equal(labels, ref)
    np.testing.assert_array_equal(counts, ref_counts)
    for w in range(state.shape[0]):
        ys, xs = np.nonzero(state[w] == 1)  # raster order
        if xs.size == 0:
            assert counts[w] == 0
            continue
        sk = DBSCAN(eps=eps, min_samples=min_samples).fit(np.c_[xs, ys]).labels_
        # identical partition and numbering (sklearn label + 1), border points included
        np.testing.assert_array_equal(labels[w][ys, xs], np.where(sk >= 0, sk + 1, -1))
        assert (labels[w][state[w] != 1] == 0).all()


def test_eps_offsets_include_the_boundary():
    dx, dy = eps_offsets(1.0)
    assert sorted(zip(dx.tolist(), dy.tolist(), strict=True)) == [
        (-1, 0),
        (0, -1),
        (0, 0),
        (0, 1),
        (1, 0),
    ]
    assert eps_offsets(1.5)[0].size == 9
    assert eps_offsets(float(np.sqrt(2.0)))[0].size == 9


def test_validation():
    with pytest.raises(ValueError, match="eps"):
        dbscan_grid(np.zeros((2, 2), dtype=bool), 0.0)
    with pytest.raises(ValueError, match="min_samples"):
        dbscan_grid(np.zeros((2, 2), dtype=bool), 1.5, 0)
