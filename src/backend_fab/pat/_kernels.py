"""Numba kernels of the parametric PAT rules: grouping, robust limits, flagging.

numpy and numba only (the kernel contract of ``backend_fab_kernels``): flat arrays plus int64
offsets, ``prange`` over groups, inputs never written. Each public function validates and coerces
its inputs, then calls a private ``@njit`` function.

A *group* is one (scope, test) population, e.g. one wafer x one test. Grouped arrays hold the
values of group g at ``[offsets[g], offsets[g + 1])``; ``g_die`` holds the die index of each value.
"""

from __future__ import annotations

import numba
import numpy as np
from backend_fab_kernels._config import JIT, PARALLEL_JIT
from backend_fab_kernels._core import as_array, check_offsets

__all__ = [
    "METHOD_CODES",
    "flag_outside",
    "group_limits",
    "group_values",
    "locate",
    "quantile_linear",
]

#: Limit methods: robust (median ± k·IQR/1.35), sigma (mean ± k·σ, ddof 1),
#: iqr (Q1 − k·IQR, Q3 + k·IQR).
METHOD_CODES = {"robust": 0, "sigma": 1, "iqr": 2}


# --- grouping ---------------------------------------------------------------------------------


@numba.njit(**JIT)
def _group_values(gid, values, die, n_groups):
    n = gid.size
    counts = np.zeros(n_groups + 1, dtype=np.int64)
    for i in range(n):
        if gid[i] >= 0:
            counts[gid[i] + 1] += 1
    offsets = np.cumsum(counts)
    pos = offsets[:-1].copy()
    g_values = np.empty(offsets[-1], dtype=np.float64)
    g_die = np.empty(offsets[-1], dtype=np.int64)
    for i in range(n):
        g = gid[i]
        if g < 0:
            continue
        p = pos[g]
        g_values[p] = values[i]
        g_die[p] = die[i]
        pos[g] = p + 1
    return offsets, g_values, g_die


def group_values(gid, values, die, n_groups: int):
    """Counting sort of ``values`` (and their ``die`` index) by group id, stable.

    ``gid`` int64 in [0, n_groups), or -1 for a row to leave out; returns
    ``(offsets int64[n_groups + 1], g_values float64, g_die int64)``.
    """
    gid = as_array("gid", gid, np.int64, ndim=1)
    values = as_array("values", values, np.float64, ndim=1)
    die = as_array("die", die, np.int64, ndim=1)
    if not (gid.size == values.size == die.size):
        raise ValueError(
            f"group_values: gid, values and die differ in length "
            f"({gid.size}, {values.size}, {die.size})"
        )
    n_groups = int(n_groups)
    if n_groups < 0:
        raise ValueError(f"group_values: n_groups must be >= 0, got {n_groups}")
    if gid.size and (gid.min() < -1 or gid.max() >= n_groups):
        raise ValueError(f"group_values: group ids must lie in [0, {n_groups}) or be -1")
    return _group_values(gid, values, die, n_groups)


@numba.njit(**JIT)
def _locate(block_starts, block_codes, seq, key, value, lo, size, base, lut, keys, die_wafer, n_w):
    n = seq.size
    gid = np.full(n, -1, dtype=np.int64)
    die = np.full(n, -1, dtype=np.int64)
    n_keys = keys.size
    for b in range(block_codes.size):
        c = block_codes[b]
        if c < 0:
            continue
        c_lo, c_size, c_base = lo[c], size[c], base[c]
        for i in range(block_starts[b], block_starts[b + 1]):
            off = seq[i] - c_lo
            if off < 0 or off >= c_size:
                continue
            d = lut[c_base + off]
            if d < 0 or not np.isfinite(value[i]):
                continue
            # binary search of the test key among the kept keys
            k = key[i]
            a, z = 0, n_keys
            while a < z:
                m = (a + z) // 2
                if keys[m] < k:
                    a = m + 1
                else:
                    z = m
            if a == n_keys or keys[a] != k:
                continue
            gid[i] = a * n_w + die_wafer[d]
            die[i] = d
    return gid, die


def locate(block_starts, block_codes, seq, key, value, lo, size, base, lut, keys, die_wafer, n_w):
    """Group id (test code x wafers + wafer) and die index of every result row; -1 where the
    row is dropped (part not a final die, test key not in the sorted ``keys``, value not finite).

    Rows come in blocks of one run: block b covers rows ``[block_starts[b], block_starts[b+1])``
    of run ``block_codes[b]`` (-1: not scored). A run c maps part ``seq`` to the die
    ``lut[base[c] + seq - lo[c]]`` when ``0 <= seq - lo[c] < size[c]`` (-1: none).
    """
    block_codes = as_array("block_codes", block_codes, np.int64, ndim=1)
    block_starts = check_offsets("block_starts", block_starts, np.asarray(seq).size)
    if block_starts.size != block_codes.size + 1:
        raise ValueError("locate: block_starts needs one more entry than block_codes")
    seq = as_array("seq", seq, np.int64, ndim=1)
    key = as_array("key", key, np.int64, ndim=1)
    value = as_array("value", value, np.float64, ndim=1)
    if not (seq.size == key.size == value.size):
        raise ValueError("locate: seq, key and value differ in length")
    lo = as_array("lo", lo, np.int64, ndim=1)
    size = as_array("size", size, np.int64, ndim=1)
    base = as_array("base", base, np.int64, ndim=1)
    if not (lo.size == size.size and base.size == lo.size + 1):
        raise ValueError("locate: lo, size need one entry per run and base one more")
    lut = as_array("lut", lut, np.int64, ndim=1)
    if lut.size != base[-1]:
        raise ValueError("locate: lut must hold base[-1] entries")
    if block_codes.size and block_codes.max() >= lo.size:
        raise ValueError("locate: a block code names no run")
    keys = as_array("keys", keys, np.int64, ndim=1)
    if keys.size > 1 and np.any(np.diff(keys) <= 0):
        raise ValueError("locate: keys must be sorted and distinct")
    die_wafer = as_array("die_wafer", die_wafer, np.int64, ndim=1)
    if lut.size and lut.max() >= die_wafer.size:
        raise ValueError("locate: lut names a die outside die_wafer")
    return _locate(
        block_starts, block_codes, seq, key, value, lo, size, base, lut, keys, die_wafer, int(n_w)
    )


# --- selection and quantiles ------------------------------------------------------------------


@numba.njit(**JIT)
def _median3(x, y, z):
    if x < y:
        if y < z:
            return y
        return z if x < z else x
    if x < z:
        return x
    return z if y < z else y


@numba.njit(**JIT)
def _select(a, lo, hi, k):
    """Rearrange a[lo:hi] so that a[k] holds its (k - lo)-th smallest value, smaller-or-equal
    values before it and greater-or-equal after (Hoare partition, median-of-3 pivot, insertion
    sort below 17 values; falls back to a full sort of the range after 64 rounds, so bad pivots
    cannot go quadratic). NaN must not be present."""
    rounds = 0
    while hi - lo > 1:
        if hi - lo <= 16:
            for i in range(lo + 1, hi):
                v = a[i]
                j = i - 1
                while j >= lo and a[j] > v:
                    a[j + 1] = a[j]
                    j -= 1
                a[j + 1] = v
            return
        rounds += 1
        if rounds > 64:
            a[lo:hi] = np.sort(a[lo:hi])
            return
        mid = lo + (hi - lo) // 2
        pivot = _median3(a[lo], a[mid], a[hi - 1])
        i = lo - 1
        j = hi
        while True:
            i += 1
            while a[i] < pivot:
                i += 1
            j -= 1
            while a[j] > pivot:
                j -= 1
            if i >= j:
                break
            t = a[i]
            a[i] = a[j]
            a[j] = t
        # a[lo:j+1] <= pivot <= a[j+1:hi]
        if k <= j:
            hi = j + 1
        else:
            lo = j + 1


@numba.njit(**JIT)
def _quantile(buf, m, q):
    """Linear-interpolation quantile (numpy's default) of buf[:m]; reorders buf."""
    h = q * (m - 1)
    k = int(np.floor(h))
    if k >= m - 1:
        _select(buf, 0, m, m - 1)
        return buf[m - 1]
    _select(buf, 0, m, k)
    lo = buf[k]
    nxt = buf[k + 1]
    for i in range(k + 2, m):
        if buf[i] < nxt:
            nxt = buf[i]
    return lo + (h - k) * (nxt - lo)


@numba.njit(**JIT)
def _min_range(a, lo, hi):
    v = a[lo]
    for i in range(lo + 1, hi):
        if a[i] < v:
            v = a[i]
    return v


@numba.njit(**JIT)
def _quartiles(buf, m):
    """(Q1, median, Q3) of buf[:m] by linear interpolation, reordering buf: one selection for the
    median, then one in each half (a selected median splits buf into <= and >= parts)."""
    hm = 0.5 * (m - 1)
    km = int(np.floor(hm))
    _select(buf, 0, m, km)
    med_lo = buf[km]
    med_hi = _min_range(buf, km + 1, m) if km + 1 < m else med_lo
    med = med_lo + (hm - km) * (med_hi - med_lo)
    h1 = 0.25 * (m - 1)
    k1 = int(np.floor(h1))
    if k1 < km:
        _select(buf, 0, km, k1)
        q1_lo = buf[k1]
        q1_hi = _min_range(buf, k1 + 1, km) if k1 + 1 < km else med_lo
    elif k1 == km:
        q1_lo, q1_hi = med_lo, med_hi
    else:  # pragma: no cover - k1 <= km always
        q1_lo = q1_hi = med_lo
    q1 = q1_lo + (h1 - k1) * (q1_hi - q1_lo)
    h3 = 0.75 * (m - 1)
    k3 = int(np.floor(h3))
    if k3 == km:
        q3_lo, q3_hi = med_lo, med_hi
    else:
        _select(buf, km + 1, m, k3)
        q3_lo = buf[k3]
        q3_hi = _min_range(buf, k3 + 1, m) if k3 + 1 < m else q3_lo
    q3 = q3_lo + (h3 - k3) * (q3_hi - q3_lo)
    return q1, med, q3


def quantile_linear(values, q: float) -> float:
    """The linear-interpolation quantile of a 1-d float array (``np.quantile`` default method),
    by selection in O(n); NaN for an empty array. Does not modify ``values``."""
    v = as_array("values", values, np.float64, ndim=1)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile_linear: q must lie in [0, 1], got {q}")
    if v.size == 0:
        return float("nan")
    return float(_quantile(v.copy(), v.size, float(q)))


# --- limits per group -------------------------------------------------------------------------


@numba.njit(**PARALLEL_JIT)
def _group_limits(g_values, g_die, offsets, die_pop, method, k, min_samples):
    n_groups = offsets.size - 1
    n_pop = np.zeros(n_groups, dtype=np.int64)
    center = np.full(n_groups, np.nan)
    spread = np.full(n_groups, np.nan)
    lo = np.full(n_groups, np.nan)
    hi = np.full(n_groups, np.nan)
    for g in numba.prange(n_groups):
        s, e = offsets[g], offsets[g + 1]
        m = 0
        for i in range(s, e):
            v = g_values[i]
            if die_pop[g_die[i]] and np.isfinite(v):
                m += 1
        n_pop[g] = m
        if m < min_samples or m < 2:
            continue
        buf = np.empty(m, dtype=np.float64)
        j = 0
        for i in range(s, e):
            v = g_values[i]
            if die_pop[g_die[i]] and np.isfinite(v):
                buf[j] = v
                j += 1
        if method == 1:
            mean = 0.0
            for i in range(m):
                mean += buf[i]
            mean /= m
            ss = 0.0
            for i in range(m):
                d = buf[i] - mean
                ss += d * d
            sd = np.sqrt(ss / (m - 1))
            center[g] = mean
            spread[g] = sd
            lo[g] = mean - k * sd
            hi[g] = mean + k * sd
        else:
            q1, med, q3 = _quartiles(buf, m)
            iqr = q3 - q1
            center[g] = med
            spread[g] = iqr / 1.35
            if method == 0:
                lo[g] = med - k * iqr / 1.35
                hi[g] = med + k * iqr / 1.35
            else:
                lo[g] = q1 - k * iqr
                hi[g] = q3 + k * iqr
    return n_pop, center, spread, lo, hi


def group_limits(
    g_values, g_die, offsets, die_pop, method: str = "robust", k: float = 6.0, min_samples: int = 50
):
    """Limits of every group computed from its population.

    The population of group g: its finite values whose die has ``die_pop[die] != 0`` (e.g. good
    parts not already failed by SPAT). Groups with fewer than ``min_samples`` (and fewer than 2)
    values get NaN limits. Methods (:data:`METHOD_CODES`): ``robust`` median ± k·(Q3-Q1)/1.35
    (AEC-Q001 robust sigma), ``sigma`` mean ± k·σ (ddof 1), ``iqr`` Q1 - k·IQR / Q3 + k·IQR;
    quantiles by linear interpolation. Returns ``(n_pop int64, center, spread, lo, hi)`` per group
    (``spread`` = robust σ, or σ for ``sigma``).
    """
    g_values = as_array("g_values", g_values, np.float64, ndim=1)
    g_die = as_array("g_die", g_die, np.int64, ndim=1)
    if g_die.size != g_values.size:
        raise ValueError("group_limits: g_values and g_die differ in length")
    offsets = check_offsets("offsets", offsets, g_values.size)
    die_pop = as_array("die_pop", die_pop, np.uint8, ndim=1)
    if g_die.size and (g_die.min() < 0 or g_die.max() >= die_pop.size):
        raise ValueError("group_limits: g_die indexes outside die_pop")
    if method not in METHOD_CODES:
        raise ValueError(f"group_limits: method {method!r} unknown; use {sorted(METHOD_CODES)}")
    if not k > 0:
        raise ValueError(f"group_limits: k must be positive, got {k}")
    return _group_limits(
        g_values, g_die, offsets, die_pop, METHOD_CODES[method], float(k), int(min_samples)
    )


@numba.njit(**PARALLEL_JIT)
def _flag_outside(g_values, g_die, offsets, die_cand, lo, hi):
    n_groups = offsets.size - 1
    out = np.zeros(g_values.size, dtype=np.uint8)
    for g in numba.prange(n_groups):
        a, b = lo[g], hi[g]
        has_lo = np.isfinite(a)
        has_hi = np.isfinite(b)
        if not (has_lo or has_hi):
            continue
        for i in range(offsets[g], offsets[g + 1]):
            if not die_cand[g_die[i]]:
                continue
            v = g_values[i]
            if (has_lo and v < a) or (has_hi and v > b):
                out[i] = 1
    return out


def flag_outside(g_values, g_die, offsets, die_cand, lo, hi) -> np.ndarray:
    """uint8 per grouped value: 1 where the die is a candidate (``die_cand[die] != 0``) and the
    value lies strictly outside its group's ``[lo, hi]`` (a NaN bound is no bound; NaN values are
    never flagged)."""
    g_values = as_array("g_values", g_values, np.float64, ndim=1)
    g_die = as_array("g_die", g_die, np.int64, ndim=1)
    if g_die.size != g_values.size:
        raise ValueError("flag_outside: g_values and g_die differ in length")
    offsets = check_offsets("offsets", offsets, g_values.size)
    die_cand = as_array("die_cand", die_cand, np.uint8, ndim=1)
    if g_die.size and (g_die.min() < 0 or g_die.max() >= die_cand.size):
        raise ValueError("flag_outside: g_die indexes outside die_cand")
    lo = as_array("lo", lo, np.float64, ndim=1)
    hi = as_array("hi", hi, np.float64, ndim=1)
    if lo.size != offsets.size - 1 or hi.size != offsets.size - 1:
        raise ValueError("flag_outside: lo and hi need one value per group")
    return _flag_outside(g_values, g_die, offsets, die_cand, lo, hi)
