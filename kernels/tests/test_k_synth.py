"""The synthetic fab's kernels against naive_synth.py: bit for bit, read-only inputs, bad input.

The normal generator is also tested as a distribution (Kolmogorov-Smirnov, moments, tails,
correlations) on fixed keys, so those tests are deterministic.
"""

from __future__ import annotations

import math

import naive_synth as naive
import numpy as np
import pytest
from backend_fab_kernels import synth_kernels
from backend_fab_kernels.synth_kernels import (
    evaluate_parts,
    result_row_count,
    result_rows,
    standard_normal_grid,
    wafer_values,
)
from grid_strategies import read_only
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

FINITE = st.floats(-1e6, 1e6, allow_nan=False, width=64)
SIGMAS = st.floats(-8.0, 8.0, allow_nan=False, width=32)


@st.composite
def lots(draw):
    """Noise and systematic terms of a small lot: 0-3 wafers, 0-6 die, 0-5 tests."""
    w, n, t = draw(st.integers(0, 3)), draw(st.integers(0, 6)), draw(st.integers(0, 5))
    f64 = lambda shape, elems=FINITE: arrays(np.float64, shape, elements=elems)  # noqa: E731
    return (
        draw(arrays(np.float32, (w, n, t), elements=SIGMAS)),
        draw(f64((w, t), st.floats(-3, 3, width=64))),
        draw(f64((n, t), st.floats(-1, 1, width=64))),
        draw(f64((n,), st.floats(-1, 1, width=64))),
        draw(f64((w, t), st.floats(-2, 2, width=64))),
        draw(f64((w, n), st.floats(-1.5, 1.5, width=64))),
        draw(f64((w, t), st.floats(-2, 2, width=64))),
        draw(arrays(np.bool_, (t,))),
        draw(f64((t,), st.floats(1e-4, 10, width=64))),
        draw(f64((t,))),
    )


@given(lots())
def test_wafer_values_match_naive_bit_for_bit(lot):
    z, v = wafer_values(*read_only(*lot))
    z_ref, v_ref = naive.wafer_values(*lot)
    # exact: one rounding per operation in numpy's order (no fused multiply-add)
    np.testing.assert_array_equal(z.view(np.uint32), z_ref.view(np.uint32))
    np.testing.assert_array_equal(v.view(np.uint64), v_ref.view(np.uint64))


@given(lots())
def test_wafer_values_in_place_over_the_noise(lot):
    noise = lot[0].copy()
    w, n, t = noise.shape
    v = np.empty((w * n, t))
    z, v_out = wafer_values(noise, *lot[1:], out=(noise, v))
    z_ref, v_ref = naive.wafer_values(*lot)
    assert z is noise and v_out is v
    np.testing.assert_array_equal(noise, z_ref)
    np.testing.assert_array_equal(v, v_ref)


def test_wafer_values_matches_numpy_on_a_realistic_lot():
    """The numpy expressions the generator used before the kernel, on a wafer-sized lot."""
    rng = np.random.default_rng(5)
    w, n, t = 3, 2000, 22
    noise = rng.standard_normal((w, n, t), dtype=np.float32)
    shift, rad_wt, lin_wt = (rng.normal(0, 1, (w, t)) for _ in range(3))
    site_mean = rng.normal(0, 0.2, (n, t))
    radial, tilt = rng.uniform(-1, 1, n), rng.uniform(-1, 1, (w, n))
    zero = np.zeros(t, dtype=bool)
    zero[[3, 4]] = True
    sigma, nominal = rng.uniform(0.01, 2, t), rng.normal(0, 5, t)
    z_ref = noise.copy()
    z_ref += shift[:, None, :]
    z_ref += site_mean[None]
    z_ref += radial[None, :, None] * rad_wt[:, None, :]
    z_ref += tilt[:, :, None] * lin_wt[:, None, :]
    z_ref[:, :, zero] = 0.0
    v_ref = nominal + sigma * z_ref.reshape(w * n, t)
    z, v = wafer_values(noise, shift, site_mean, radial, rad_wt, tilt, lin_wt, zero, sigma, nominal)
    np.testing.assert_array_equal(z, z_ref)
    np.testing.assert_array_equal(v, v_ref)


LIMITS = st.one_of(st.floats(-2, 2, width=64), st.just(np.inf), st.just(-np.inf))


@st.composite
def measured_parts(draw):
    p, t = draw(st.integers(0, 8)), draw(st.integers(0, 6))
    values = draw(arrays(np.float64, (p, t), elements=st.one_of(st.floats(-3, 3), st.just(np.nan))))
    lo = draw(arrays(np.float64, (t,), elements=LIMITS))
    hi = draw(arrays(np.float64, (t,), elements=LIMITS))
    idx = draw(st.lists(st.integers(0, max(t - 1, 0)), unique=True, max_size=min(t, 3)))
    override_idx = np.array(idx if t else [], dtype=np.int64)
    override = draw(arrays(np.bool_, (p, override_idx.size)))
    stop = draw(arrays(np.bool_, (p,)))
    return values, lo, hi, override_idx, override, stop


@given(measured_parts())
def test_evaluate_parts_matches_naive(parts):
    got = evaluate_parts(*read_only(*parts))
    want = naive.evaluate_parts(*parts)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@st.composite
def part_sets(draw):
    t = draw(st.integers(0, 5))

    def one_set():
        p = draw(st.integers(0, 6))
        values = draw(
            arrays(np.float64, (p, t), elements=st.one_of(st.floats(-3, 3), st.just(np.nan)))
        )
        failed = draw(arrays(np.bool_, (p, t)))
        n_exec = draw(arrays(np.int64, (p,), elements=st.integers(0, t)))
        return values, failed, n_exec

    a, b = one_set(), one_set()
    n_src = a[2].size + b[2].size
    order = np.array(
        draw(st.lists(st.integers(0, n_src - 1), max_size=10)) if n_src else [], dtype=np.int64
    )
    test_num = draw(arrays(np.int64, (t,), elements=st.integers(0, 10**6)))
    lo = draw(arrays(np.float64, (t,), elements=LIMITS))
    hi = draw(arrays(np.float64, (t,), elements=LIMITS))
    payload = draw(arrays(np.uint32, (t, 4)))
    return (*a, *b, order, test_num, lo, hi, payload)


@given(part_sets())
def test_result_rows_match_naive(args):
    got = result_rows(*read_only(*args))
    want = naive.result_rows(*args)
    assert got[0].size == result_row_count(args[2], args[5], args[6])
    for g, w in zip(got, want, strict=True):
        if g.dtype == np.float64:
            np.testing.assert_array_equal(g.view(np.uint64), w.view(np.uint64))  # NaN kept
        else:
            np.testing.assert_array_equal(g, w)


@given(part_sets())
def test_result_rows_fill_given_buffers(args):
    n = result_row_count(args[2], args[5], args[6])
    layout = [np.int64, np.int64, np.uint32, np.float64, np.int16, np.int16, np.bool_]
    out = tuple(np.empty((n, 4) if k == 2 else n, dtype=d) for k, d in enumerate(layout))
    got = result_rows(*args, out=out)
    want = naive.result_rows(*args)
    for k in range(7):
        assert got[k] is out[k]
        np.testing.assert_array_equal(out[k], want[k])


def test_bad_input_is_refused_with_the_argument_named():
    v = np.zeros((2, 3))
    f = np.zeros((2, 3), dtype=bool)
    e = np.array([3, 1])
    args = (v, f, e, v[:0], f[:0], e[:0], np.array([0, 1]), np.arange(3), np.zeros(3))
    with pytest.raises(ValueError, match="n_exec must lie"):
        result_rows(v, f, np.array([4, 1]), *args[3:], np.ones(3), np.zeros((3, 4), np.uint32))
    with pytest.raises(ValueError, match="order must index"):
        result_rows(*args[:6], np.array([2]), *args[7:], np.ones(3), np.zeros((3, 4), np.uint32))
    with pytest.raises(ValueError, match="payload"):
        result_rows(*args, np.ones(3), np.zeros((3, 3), np.uint32))
    with pytest.raises(ValueError, match=r"out\[3\]"):
        out = (np.empty(4, np.int64), np.empty(4, np.int64), np.empty((4, 4), np.uint32))
        out += (np.empty(3), np.empty(4, np.int16), np.empty(4, np.int16), np.empty(4, bool))
        result_rows(*args, np.ones(3), np.zeros((3, 4), np.uint32), out=out)
    with pytest.raises(ValueError, match="override_idx"):
        evaluate_parts(v, np.zeros(3), np.ones(3), [1, 1], np.zeros((2, 2), bool), [False] * 2)
    with pytest.raises(ValueError, match="override"):
        evaluate_parts(v, np.zeros(3), np.ones(3), [1], np.zeros((3, 1), bool), [False] * 2)
    with pytest.raises(ValueError, match="out must be"):
        evaluate_parts(v, np.zeros(3), np.ones(3), [], np.zeros((2, 0), bool), [False] * 2, out=f.T)
    with pytest.raises(ValueError, match="site_mean"):
        noise = np.zeros((1, 2, 3), np.float32)
        wafer_values(noise, np.zeros((1, 3)), np.zeros((3, 3)), *([np.zeros(2)] * 7))


# --- standard_normal_grid -----------------------------------------------------------------------

KEYS = st.lists(
    st.one_of(st.sampled_from([0, 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)), max_size=4
)
STARTS = st.one_of(st.integers(0, 5), st.integers(0, 2**62 - 100))


def _u64(keys):
    return np.array(keys, dtype=np.uint64)


def _bits(a):
    return a.view(np.uint32)


@given(KEYS, st.integers(0, 40), STARTS)
def test_standard_normal_grid_matches_naive_bit_for_bit(keys, n, start):
    got = standard_normal_grid(read_only(_u64(keys)), n, start=start)
    want = naive.standard_normal_grid(keys, n, start=start)
    assert got.dtype == np.float32 and got.shape == (len(keys), n)
    np.testing.assert_array_equal(_bits(got), _bits(want))


def test_standard_normal_grid_rare_paths_match_naive():
    """Wedge, tail and retried values, bit for bit, on a fixed key (1.5 % of the values)."""
    key, n = 0x5EED_0F_FAB, 300_000
    got = standard_normal_grid(_u64([key]), n)[0]
    idx = np.union1d(np.flatnonzero(np.abs(got) > 3.0), np.arange(0, n, 20))
    paths, retried = set(), 0
    for j in idx.tolist():
        value, path, words = naive.normal_value_path(key, j)
        assert np.float32(value).view(np.uint32) == got[j].view(np.uint32), j
        paths.add(path)
        retried += words > 1
    assert paths == {"core", "wedge", "tail"} and retried > 0


@given(KEYS, st.integers(0, 30), st.integers(0, 30), STARTS)
def test_standard_normal_grid_chunks_and_rows_are_independent(keys, n1, n2, start):
    """Value j depends on (key, j) only: not on n, the chunking or the other keys."""
    keys = _u64(keys)
    whole = standard_normal_grid(keys, n1 + n2, start=start)
    parts = np.concatenate(
        [
            standard_normal_grid(keys, n1, start=start),
            standard_normal_grid(keys, n2, start=start + n1),
        ],
        axis=1,
    )
    np.testing.assert_array_equal(_bits(whole), _bits(parts))
    for i in range(keys.size):
        np.testing.assert_array_equal(
            _bits(standard_normal_grid(keys[i : i + 1], n1 + n2, start=start)[0]), _bits(whole[i])
        )


def test_standard_normal_grid_fills_out_and_accepts_other_integer_keys():
    keys = np.array([3, 7, 3], dtype=np.int64)
    z = np.empty((3, 4, 5), dtype=np.float32)
    got = standard_normal_grid(keys, 20, out=z.reshape(3, 20))
    assert np.shares_memory(got, z)
    np.testing.assert_array_equal(got, standard_normal_grid([3, 7, 3], 20))
    np.testing.assert_array_equal(got[0], got[2])  # equal keys, equal rows
    assert not np.array_equal(got[0], got[1])
    assert standard_normal_grid([], 5).shape == (0, 5)
    assert standard_normal_grid([2**64 - 1], 0).shape == (1, 0)


def test_ziggurat_tables_close_and_match_the_reference():
    """Every layer has the base strip's area v, and the top layer ends at the mode."""
    r = synth_kernels.ZIGGURAT_R
    f = lambda x: math.exp(-0.5 * x * x)  # noqa: E731
    v = r * f(r) + math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2))
    x = np.asarray(naive._ZIG_X)
    width, k, fx, height = synth_kernels._ziggurat_tables()
    n = synth_kernels.ZIGGURAT_LAYERS
    np.testing.assert_allclose(x[1:n] * (fx[2:] - fx[1:n]), v, rtol=1e-12)
    assert abs(x[n - 1] * (1.0 - f(x[n - 1])) - v) < 1e-13
    np.testing.assert_array_equal(width[:n], x[:n] / 2.0**23)
    np.testing.assert_array_equal(width[n:], -width[:n])
    np.testing.assert_array_equal(k, np.floor(x[1:] / x[:n] * 2.0**23))
    assert k[n - 1] == 0 and np.all(height > 0)


@pytest.fixture(scope="module")
def two_million():
    """2,000,000 values: 8 rows of consecutive keys (the least scrambled seeds) x 250,000."""
    return standard_normal_grid(np.arange(8, dtype=np.uint64), 250_000).astype(np.float64)


def _within_binomial(count, n, p, sds=5.0):
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def test_standard_normal_grid_is_standard_normal(two_million):
    from scipy import stats

    z = two_million.ravel()
    n = z.size
    assert np.all(np.isfinite(z))
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # moments within 5 standard errors: mean 1/sqrt(n), variance sqrt(2/n), kurtosis sqrt(24/n)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    # tails: |x| > 3 tests the outer layers' wedges, |x| > 4 the tail beyond r = 3.654
    for t in (2.0, 3.0, r_ := synth_kernels.ZIGGURAT_R, 4.0):
        p = 2 * stats.norm.sf(t)
        assert _within_binomial(int(np.sum(np.abs(z) > t)), n, p), t
    assert _within_binomial(int(np.sum(z > r_)), n, stats.norm.sf(r_))  # both signs of the tail


def test_standard_normal_grid_streams_are_uncorrelated(two_million):
    rows = two_million
    m = rows.shape[1]
    corr = np.corrcoef(rows)
    off = corr[~np.eye(rows.shape[0], dtype=bool)]
    assert np.max(np.abs(off)) < 5 / math.sqrt(m)
    for row in rows:
        # lag 1 pairs the two halves of one word, lag 2 neighbouring words
        for lag in (1, 2):
            assert abs(np.corrcoef(row[:-lag], row[lag:])[0, 1]) < 5 / math.sqrt(m)
        # squares too: dependence between layers would show there first
        sq = row * row
        assert abs(np.corrcoef(sq[:-1], sq[1:])[0, 1]) < 5 / math.sqrt(m)


def test_standard_normal_grid_refuses_bad_input():
    with pytest.raises(ValueError, match="keys must be 1-d"):
        standard_normal_grid(np.zeros((2, 2), np.uint64), 3)
    with pytest.raises(TypeError, match="keys must be integers"):
        standard_normal_grid([1.5, 2.0], 3)
    with pytest.raises(ValueError, match="non-negative"):
        standard_normal_grid(np.array([1, -1]), 3)
    with pytest.raises(ValueError, match="n >= 0"):
        standard_normal_grid([1], -1)
    with pytest.raises(TypeError, match="n must be an integer"):
        standard_normal_grid([1], 2.0)
    with pytest.raises(ValueError, match="start >= 0"):
        standard_normal_grid([1], 2, start=-1)
    with pytest.raises(ValueError, match="2\\*\\*62"):
        standard_normal_grid([1], 2, start=2**62)
    for bad in (
        np.empty((1, 3), np.float64),
        np.empty((2, 3), np.float32),
        np.empty((1, 6), np.float32)[:, ::2],
        read_only(np.empty((1, 3), np.float32)),
    ):
        with pytest.raises(ValueError, match="out must be"):
            standard_normal_grid([1], 3, out=bad)
