"""Yield-model formulas against scalar references and their limiting cases."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from backend_fab_kernels import yield_models as ym
from grid_strategies import examples
from hypothesis import given
from hypothesis import strategies as st

AD = st.lists(st.floats(0, 50), min_size=1, max_size=8)


@given(AD, st.floats(0.05, 50), st.floats(0.5, 10))
@examples(0.34)
def test_models_match_naive(ad, alpha, layers):
    a = np.array(ad)
    np.testing.assert_allclose(ym.poisson_yield(a), naive.poisson_yield(a), rtol=1e-12)
    np.testing.assert_allclose(ym.murphy_yield(a), naive.murphy_yield(a), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(ym.seeds_yield(a), naive.seeds_yield(a), rtol=1e-12)
    np.testing.assert_allclose(
        ym.bose_einstein_yield(a, layers), naive.bose_einstein_yield(a, layers), rtol=1e-9
    )
    np.testing.assert_allclose(
        ym.negative_binomial_yield(a, alpha), naive.negative_binomial_yield(a, alpha), rtol=1e-9
    )
    k = np.array([1, 2, 4, 6, 9])
    np.testing.assert_allclose(
        ym.window_model(k, 0.9, a[0], alpha), naive.window_model(k, 0.9, a[0], alpha), rtol=1e-9
    )


def test_limits():
    a = np.array([0.0, 0.1, 1.0, 3.0])
    np.testing.assert_allclose(ym.negative_binomial_yield(a, np.inf), ym.poisson_yield(a))
    np.testing.assert_allclose(ym.negative_binomial_yield(a, 1.0), ym.seeds_yield(a))
    np.testing.assert_allclose(ym.negative_binomial_yield(a, 1e7), ym.poisson_yield(a), rtol=1e-6)
    assert ym.murphy_yield(0.0) == 1.0
    # for a given AD: Poisson < Murphy < Seeds (more clustering, more yield)
    y = [ym.poisson_yield(1.0), ym.murphy_yield(1.0), ym.seeds_yield(1.0)]
    assert y[0] < y[1] < y[2]
    with pytest.raises(ValueError):
        ym.poisson_yield(-1.0)
    with pytest.raises(ValueError):
        ym.negative_binomial_yield(1.0, 0.0)
