"""NNR residuals against naive.py (exact: same float operations, ties resolved the same way)."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from backend_fab_kernels.nnr import nnr_k, nnr_residuals
from grid_strategies import examples, read_only, wafers
from hypothesis import given
from hypothesis import strategies as st


@st.composite
def value_grids(draw):
    state = draw(wafers(max_side=10))
    n_t = draw(st.integers(1, 3))
    cells = n_t * state.size
    # few distinct values: ties in distance and value are common
    pool = draw(st.sampled_from([[0.0, 1.0, 2.0], [-1.5, 0.25, 0.5, 3.0, 7.0], None]))
    if pool is None:
        vals = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=cells, max_size=cells))
    else:
        vals = draw(st.lists(st.sampled_from(pool), min_size=cells, max_size=cells))
    v = np.array(vals, dtype=np.float64).reshape((n_t, *state.shape))
    return np.where(state[None] >= 0, v, np.nan)


@given(
    value_grids(),
    st.sampled_from([3, 5, 7, 15]),
    st.sampled_from([70.0, 50.0, 100.0, 10.0, 33.3]),
    st.integers(1, 6),
)
@examples(0.34)
def test_nnr_matches_naive(values, window, la, min_nb):
    out = nnr_residuals(read_only(values), window, la, min_nb)
    ref = naive.nnr_residuals(values, window, la, min_nb)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(nnr_residuals(values[0], window, la, min_nb), ref[0])


def test_nnr_k_defaults():
    assert nnr_k(5, 70.0) == 18
    assert nnr_k(3, 100.0) == 9
    assert nnr_k(15, 70.0) == 158


def test_nnr_removes_a_smooth_gradient():
    yy, xx = np.mgrid[0:30, 0:30]
    v = 0.1 * xx + 0.05 * yy
    v[15, 15] += 1.0  # an outlier hidden by the gradient's range
    r = nnr_residuals(v)
    assert abs(r[15, 15] - 1.0) < 0.11
    inner = np.abs(r[3:-3, 3:-3])
    inner[12, 12] = 0.0
    assert inner.max() < 0.11


def test_validation():
    with pytest.raises(ValueError, match="window"):
        nnr_residuals(np.zeros((3, 3)), window=17)
    with pytest.raises(ValueError, match="la_percent"):
        nnr_residuals(np.zeros((3, 3)), la_percent=0)
    with pytest.raises(ValueError, match="finite"):
        nnr_residuals(np.full((3, 3), np.inf))
