"""The PAT engine's numba kernels against slow, obviously correct references of the same names."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend_fab.pat import _kernels as fast

# --- references -------------------------------------------------------------------------------


def group_values(gid, values, die, n_groups):
    order = np.argsort(gid, kind="stable")
    offsets = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(gid, minlength=n_groups), out=offsets[1:])
    return offsets, values[order], die[order]


def group_limits(g_values, g_die, offsets, die_pop, method="robust", k=6.0, min_samples=50):
    n_groups = offsets.size - 1
    out = [np.zeros(n_groups, dtype=np.int64)] + [np.full(n_groups, np.nan) for _ in range(4)]
    for g in range(n_groups):
        v = g_values[offsets[g] : offsets[g + 1]]
        d = g_die[offsets[g] : offsets[g + 1]]
        v = v[(die_pop[d] != 0) & np.isfinite(v)]
        out[0][g] = v.size
        if v.size < max(min_samples, 2):
            continue
        if method == "sigma":
            c, s = v.mean(), v.std(ddof=1)
            lo, hi = c - k * s, c + k * s
        else:
            q1, c, q3 = np.quantile(v, [0.25, 0.5, 0.75])
            s = (q3 - q1) / 1.35
            lo, hi = (
                (c - k * s, c + k * s)
                if method == "robust"
                else (q1 - k * (q3 - q1), q3 + k * (q3 - q1))
            )
        out[1][g], out[2][g], out[3][g], out[4][g] = c, s, lo, hi
    return tuple(out)


def flag_outside(g_values, g_die, offsets, die_cand, lo, hi):
    out = np.zeros(g_values.size, dtype=np.uint8)
    for g in range(offsets.size - 1):
        for i in range(offsets[g], offsets[g + 1]):
            v = g_values[i]
            if die_cand[g_die[i]] and ((v < lo[g]) or (v > hi[g])):
                out[i] = 1
    return out


def locate(block_starts, block_codes, seq, key, value, lo, size, base, lut, keys, die_wafer, n_w):
    gid = np.full(seq.size, -1, dtype=np.int64)
    die = np.full(seq.size, -1, dtype=np.int64)
    where = {int(k): i for i, k in enumerate(keys)}
    for b, c in enumerate(block_codes):
        for i in range(block_starts[b], block_starts[b + 1]):
            if c < 0 or not (0 <= seq[i] - lo[c] < size[c]) or not np.isfinite(value[i]):
                continue
            d = lut[base[c] + seq[i] - lo[c]]
            if d < 0 or int(key[i]) not in where:
                continue
            gid[i] = where[int(key[i])] * n_w + die_wafer[d]
            die[i] = d
    return gid, die


# --- strategies -------------------------------------------------------------------------------


@st.composite
def grouped(draw):
    """Values (with duplicates and NaN) in 0-6 groups, die indices and population masks."""
    n_groups = draw(st.integers(0, 6))
    n = draw(st.integers(0, 300)) if n_groups else 0
    n_die = draw(st.integers(1, 80))
    gid = np.array(
        draw(st.lists(st.integers(0, max(n_groups - 1, 0)), min_size=n, max_size=n)), dtype=np.int64
    )
    pool = st.one_of(
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
        st.sampled_from([0.0, 1.0, 2.5, np.nan]),
    )
    values = np.array(draw(st.lists(pool, min_size=n, max_size=n)), dtype=np.float64)
    die = np.array(
        draw(st.lists(st.integers(0, n_die - 1), min_size=n, max_size=n)), dtype=np.int64
    )
    pop = np.array(draw(st.lists(st.integers(0, 1), min_size=n_die, max_size=n_die)), np.uint8)
    return gid, values, die, n_groups, pop


def _readonly(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


@given(grouped())
def test_group_values_matches_reference(case):
    gid, values, die, n_groups, _ = case
    _readonly(gid, values, die)
    got = fast.group_values(gid, values, die, n_groups)
    want = group_values(gid, values, die, n_groups)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


@given(
    grouped(), st.sampled_from(["robust", "sigma", "iqr"]), st.integers(2, 12), st.floats(0.5, 8)
)
def test_group_limits_matches_reference(case, method, min_samples, k):
    gid, values, die, n_groups, pop = case
    offsets, gv, gd = group_values(gid, values, die, n_groups)
    _readonly(offsets, gv, gd, pop)
    got = fast.group_limits(gv, gd, offsets, pop, method, k, min_samples)
    want = group_limits(gv, gd, offsets, pop, method, k, min_samples)
    np.testing.assert_array_equal(got[0], want[0])
    for a, b in zip(got[1:], want[1:], strict=True):
        np.testing.assert_allclose(
            a, b, rtol=1e-9, atol=1e-9 * (1 + np.nanmax(np.abs(b), initial=0))
        )
    lo, hi = got[3], got[4]
    flags = fast.flag_outside(gv, gd, offsets, pop, lo, hi)
    np.testing.assert_array_equal(flags, flag_outside(gv, gd, offsets, pop, lo, hi))
    assert gv.flags.writeable is False  # inputs untouched


@given(
    st.lists(
        st.sampled_from([0.0, 1.0, 1.0, 2.0, -3.5]) | st.floats(-10, 10), min_size=1, max_size=200
    ),
    st.floats(0, 1),
)
def test_quantile_linear_matches_numpy(values, q):
    v = np.array(values)
    v.flags.writeable = False
    assert fast.quantile_linear(v, q) == pytest.approx(np.quantile(v, q), rel=1e-12, abs=1e-12)


def test_wrappers_validate():
    with pytest.raises(ValueError, match="differ in length"):
        fast.group_values(np.zeros(3, np.int64), np.zeros(2), np.zeros(3, np.int64), 1)
    with pytest.raises(ValueError, match="group ids"):
        fast.group_values(np.array([0, 5]), np.zeros(2), np.zeros(2, np.int64), 2)
    off = np.array([0, 2], dtype=np.int64)
    with pytest.raises(ValueError, match="method"):
        fast.group_limits(np.zeros(2), np.zeros(2, np.int64), off, np.ones(1, np.uint8), "mad")
    with pytest.raises(ValueError, match="offsets"):
        fast.group_limits(
            np.zeros(2), np.zeros(2, np.int64), np.array([0, 1]), np.ones(1, np.uint8)
        )
    with pytest.raises(ValueError, match="outside die_cand"):
        fast.flag_outside(np.zeros(2), np.array([0, 3]), off, np.ones(1, np.uint8), [0.0], [1.0])
    with pytest.raises(ValueError, match="one value per group"):
        fast.flag_outside(np.zeros(2), np.zeros(2, np.int64), off, np.ones(1, np.uint8), [], [])
    assert np.isnan(fast.quantile_linear([], 0.5))


def test_many_equal_values_stay_linear():
    """A quantised test (few distinct values) must not send the selection quadratic."""
    v = np.repeat(np.arange(4.0), 250_000)
    np.random.default_rng(0).shuffle(v)
    off = np.array([0, v.size], dtype=np.int64)
    out = fast.group_limits(v, np.zeros(v.size, np.int64), off, np.ones(1, np.uint8), "robust")
    assert out[1][0] == np.median(v)


@given(st.data())
def test_locate_matches_reference(data):
    n_runs = data.draw(st.integers(1, 3))
    lo = np.array(data.draw(st.lists(st.integers(0, 5), min_size=n_runs, max_size=n_runs)))
    size = np.array(data.draw(st.lists(st.integers(0, 6), min_size=n_runs, max_size=n_runs)))
    base = np.r_[0, np.cumsum(size)].astype(np.int64)
    n_die = data.draw(st.integers(1, 10))
    lut = np.array(
        data.draw(
            st.lists(st.integers(-1, n_die - 1), min_size=int(base[-1]), max_size=int(base[-1]))
        ),
        dtype=np.int64,
    )
    die_wafer = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n_die, max_size=n_die)))
    n = data.draw(st.integers(0, 40))
    seq = np.array(data.draw(st.lists(st.integers(-2, 12), min_size=n, max_size=n)), np.int64)
    key = np.array(data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)), np.int64)
    value = np.array(
        data.draw(st.lists(st.sampled_from([0.5, -1.0, np.nan, np.inf]), min_size=n, max_size=n))
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
    block_starts = np.array([0, *cuts, n], dtype=np.int64)
    codes = np.array(
        data.draw(
            st.lists(st.integers(-1, n_runs - 1), min_size=len(cuts) + 1, max_size=len(cuts) + 1)
        ),
        dtype=np.int64,
    )
    keys = np.array(sorted(data.draw(st.sets(st.integers(0, 4)))), dtype=np.int64)
    args = (block_starts, codes, seq, key, value, lo, size, base, lut, keys, die_wafer, 3)
    _readonly(seq, key, value, lut)
    got = fast.locate(*args)
    want = locate(*args)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
