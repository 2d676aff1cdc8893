"""Kernels of the synthetic fab: parametric values, limit evaluation, result rows.

A tester writes, for each part in the order it was tested, one result record per test it
executed, in flow order (STDF PTR/FTR records between a PIR and a PRR). The synthetic fab holds
each insertion's measurements as part x test matrices, first pass and retests apart;
:func:`result_rows` writes the flat, canonical ``results`` columns straight from them in one pass:
no boolean-mask extraction, concatenation or per-wafer interleaving of intermediate copies.

Executed tests are a prefix of the flow: a part executes its first ``n_exec`` tests (every test,
or only the continuity test when that stops the part). :func:`evaluate_parts` decides, for a part x
test matrix of measured values, which tests fail, how many tests each part executed and its first
failing test (which sets its soft bin). :func:`wafer_values` adds the systematic parts of a lot's
parametric model (lot and wafer shifts, site offsets, radial and linear gradients) to its noise.
:func:`standard_normal_grid` draws that noise: counter-based standard normals (SplitMix64 words
through a 256-layer ziggurat), one reproducible stream per key.
"""

from __future__ import annotations

import math
import operator

import numba
import numpy as np

from backend_fab_kernels._config import JIT
from backend_fab_kernels._core import as_array, check_out

__all__ = [
    "evaluate_parts",
    "result_row_count",
    "result_rows",
    "standard_normal_grid",
    "wafer_values",
]

#: STDF TEST_FLG bit 7: the test failed.
TEST_FAILED = 0x80
#: STDF PARM_FLG bits 3 and 4: the value is above the high / below the low limit.
PARM_HIGH = 0x08
PARM_LOW = 0x10


@numba.njit(**JIT)
def _copy_part(values, failed, s, k, p, r, test_num, lo, hi, payload, outs, fail_count):
    part_seq, num, words, value, test_flags, parm_flags, passed = outs
    for t in range(k):
        v = values[s, t]
        part_seq[r] = p
        num[r] = test_num[t]
        words[r, 0] = payload[t, 0]
        words[r, 1] = payload[t, 1]
        value[r] = v
        if failed[s, t]:
            passed[r] = False
            test_flags[r] = TEST_FAILED
            parm = 0
            if v > hi[t]:
                parm |= PARM_HIGH
            if v < lo[t]:
                parm |= PARM_LOW
            parm_flags[r] = parm
            fail_count[t] += 1
        else:
            passed[r] = True
            test_flags[r] = 0
            parm_flags[r] = 0
        r += 1
    return r


@numba.njit(**JIT)
def _result_rows(
    values_a,
    failed_a,
    n_exec_a,
    values_b,
    failed_b,
    n_exec_b,
    order,
    test_num,
    lo,
    hi,
    payload,
    outs,
    exec_count,
    fail_count,
):
    na = values_a.shape[0]
    n_tests = test_num.size
    parts_with = np.zeros(n_tests + 1, dtype=np.int64)  # parts by number of tests executed
    r = 0
    for p in range(order.size):
        s = order[p]
        if s < na:
            k = n_exec_a[s]
            r = _copy_part(
                values_a, failed_a, s, k, p, r, test_num, lo, hi, payload, outs, fail_count
            )
        else:
            k = n_exec_b[s - na]
            r = _copy_part(
                values_b, failed_b, s - na, k, p, r, test_num, lo, hi, payload, outs, fail_count
            )
        parts_with[k] += 1
    # test t ran on every part that executed more than t tests
    running = 0
    for t in range(n_tests - 1, -1, -1):
        running += parts_with[t + 1]
        exec_count[t] = running


@numba.njit(**JIT)
def _wafer_values(
    noise, shift, site_mean, radial, rad_wt, tilt, lin_wt, zero, sigma, nominal, z, v, rad, lin
):
    n_wafers, n_die, n_tests = noise.shape
    for w in range(n_wafers):
        # the gradient terms go through memory first: every sum below adds a stored float64
        # (one rounding per operation, as numpy's separate passes do; never a fused multiply-add)
        for k in range(n_die):
            for t in range(n_tests):
                rad[k, t] = radial[k] * rad_wt[w, t]
                lin[k, t] = tilt[w, k] * lin_wt[w, t]
        base = w * n_die
        for k in range(n_die):
            for t in range(n_tests):
                if zero[t]:
                    x = np.float32(0.0)
                else:
                    x = np.float32(np.float64(noise[w, k, t]) + shift[w, t])
                    x = np.float32(np.float64(x) + site_mean[k, t])
                    x = np.float32(np.float64(x) + rad[k, t])
                    x = np.float32(np.float64(x) + lin[k, t])
                z[w, k, t] = x
                v[base + k, t] = np.float64(x) * sigma[t]
        for k in range(n_die):
            for t in range(n_tests):
                v[base + k, t] += nominal[t]


def wafer_values(
    noise,
    shift,
    site_mean,
    radial,
    rad_wt,
    tilt,
    lin_wt,
    zero,
    sigma,
    nominal,
    out=None,
):
    """Parametric z-scores and values of a lot: noise plus its systematic parts.

    For wafer ``w``, die ``k``, test ``t`` (all sums in float64, each rounded to float32):
    ``z = (((noise + shift[w, t]) + site_mean[k, t]) + radial[k] * rad_wt[w, t]) + tilt[w, k] *
    lin_wt[w, t]``, and ``z = 0`` on the tests flagged in ``zero``; the value is
    ``nominal[t] + sigma[t] * z`` in float64. Every operation is one IEEE rounding in this order
    (no fused multiply-add), so the result is bit for bit what the same numpy expressions give.

    Parameters
    ----------
    noise : ``(W, N, T)`` float32 standard-normal noise; ``shift`` : ``(W, T)``; ``site_mean`` :
        ``(N, T)``; ``radial`` : ``(N,)``; ``rad_wt`` : ``(W, T)``; ``tilt`` : ``(W, N)``;
        ``lin_wt`` : ``(W, T)``; ``sigma``, ``nominal`` : ``(T,)`` (all float64); ``zero`` :
        ``(T,)`` bool.
    out : optional ``(z, v)``: a ``(W, N, T)`` float32 array (may be ``noise`` itself, updated in
        place) and a ``(W * N, T)`` float64 array, C-contiguous and writeable.

    Returns
    -------
    ``(z, v)``: ``(W, N, T)`` float32 z-scores and ``(W * N, T)`` float64 values.
    """
    noise = as_array("wafer_values noise", noise, np.float32, ndim=3)
    n_wafers, n_die, n_tests = noise.shape
    shapes = {
        "shift": (shift, np.float64, (n_wafers, n_tests)),
        "site_mean": (site_mean, np.float64, (n_die, n_tests)),
        "radial": (radial, np.float64, (n_die,)),
        "rad_wt": (rad_wt, np.float64, (n_wafers, n_tests)),
        "tilt": (tilt, np.float64, (n_wafers, n_die)),
        "lin_wt": (lin_wt, np.float64, (n_wafers, n_tests)),
        "zero": (zero, np.bool_, (n_tests,)),
        "sigma": (sigma, np.float64, (n_tests,)),
        "nominal": (nominal, np.float64, (n_tests,)),
    }
    args = {}
    for name, (a, dtype, shape) in shapes.items():
        arr = as_array(f"wafer_values {name}", a, dtype, ndim=len(shape))
        if arr.shape != shape:
            raise ValueError(
                f"wafer_values: {name} has shape {arr.shape}, expected {shape} for noise of "
                f"shape {noise.shape}"
            )
        args[name] = arr
    if out is None:
        z = np.empty(noise.shape, dtype=np.float32)
        v = np.empty((n_wafers * n_die, n_tests), dtype=np.float64)
    else:
        z = check_out("wafer_values: out z", out[0], np.float32, noise.shape)
        v = check_out("wafer_values: out v", out[1], np.float64, (n_wafers * n_die, n_tests))
    rad = np.empty((n_die, n_tests), dtype=np.float64)
    lin = np.empty((n_die, n_tests), dtype=np.float64)
    _wafer_values(noise, *args.values(), z, v, rad, lin)
    return z, v


@numba.njit(**JIT)
def _evaluate_parts(values, lo, hi, override_idx, override, stop, fail, n_exec, first_fail):
    n_parts, n_tests = values.shape
    n_over = override_idx.size
    for p in range(n_parts):
        for t in range(n_tests):
            v = values[p, t]
            # NaN (no value) fails the comparisons: a test without a value fails unless its
            # result comes from ``override``
            fail[p, t] = not (v >= lo[t] and v <= hi[t])
        for j in range(n_over):
            fail[p, override_idx[j]] = override[p, j]
        if n_tests == 0:
            n_exec[p] = 0
            first_fail[p] = -1
            continue
        if stop[p] or fail[p, 0]:
            # the part stops after its first test
            for t in range(1, n_tests):
                fail[p, t] = False
            n_exec[p] = 1
        else:
            n_exec[p] = n_tests
        first = -1
        for t in range(n_tests):
            if fail[p, t]:
                first = t
                break
        first_fail[p] = first


def evaluate_parts(values, lo, hi, override_idx, override, stop, out=None):
    """Fails, executed tests and first failing test of parts measured against test limits.

    A tester runs the tests in flow order; a part whose first test (continuity) fails, or that
    ``stop`` marks (e.g. a part known to be open or shorted), executes only that first test;
    every other part executes every test (the program continues on fail).

    Parameters
    ----------
    values : ``(P, T)`` float64 measured values; a test fails when its value lies outside
        ``[lo, hi]`` (inclusive; NaN fails).
    lo, hi : ``(T,)`` float64 limits (``-inf``/``inf`` when absent).
    override_idx : ``(K,)`` int64 distinct test indices whose fail flags are given by ``override``
        ``(P, K)`` bool instead of the limits (e.g. functional tests, which have no value).
    stop : ``(P,)`` bool, parts that execute only their first test whatever its result.
    out : optional ``(P, T)`` bool C-contiguous writeable array for ``fail``.

    Returns
    -------
    ``(fail, n_exec, first_fail)``: ``(P, T)`` bool fail flags of the executed tests (False
    beyond them), ``(P,)`` int64 number of executed tests (a prefix of the flow), ``(P,)`` int64
    index of the first failing test, ``-1`` when the part passes.
    """
    values = as_array("evaluate_parts values", values, np.float64, ndim=2)
    n_parts, n_tests = values.shape
    lo = as_array("evaluate_parts lo", lo, np.float64, ndim=1)
    hi = as_array("evaluate_parts hi", hi, np.float64, ndim=1)
    if lo.shape != (n_tests,) or hi.shape != (n_tests,):
        raise ValueError(
            f"evaluate_parts: lo {lo.shape} and hi {hi.shape} must be ({n_tests},) for "
            f"values of shape {values.shape}"
        )
    override_idx = as_array("evaluate_parts override_idx", override_idx, np.int64, ndim=1)
    override = as_array("evaluate_parts override", override, np.bool_, ndim=2)
    if override.shape != (n_parts, override_idx.size):
        raise ValueError(
            f"evaluate_parts: override {override.shape} must be ({n_parts}, "
            f"{override_idx.size}) (parts x overridden tests)"
        )
    if override_idx.size and (
        override_idx.min() < 0
        or override_idx.max() >= n_tests
        or np.unique(override_idx).size != override_idx.size
    ):
        raise ValueError(f"evaluate_parts: override_idx must be distinct tests in [0, {n_tests})")
    stop = as_array("evaluate_parts stop", stop, np.bool_, ndim=1)
    if stop.shape != (n_parts,):
        raise ValueError(f"evaluate_parts: stop {stop.shape} must be ({n_parts},)")
    if out is None:
        fail = np.empty((n_parts, n_tests), dtype=np.bool_)
    else:
        fail = check_out("evaluate_parts: out", out, np.bool_, (n_parts, n_tests))
    n_exec = np.empty(n_parts, dtype=np.int64)
    first_fail = np.empty(n_parts, dtype=np.int64)
    _evaluate_parts(values, lo, hi, override_idx, override, stop, fail, n_exec, first_fail)
    return fail, n_exec, first_fail


def _row_layout(n):
    """(shape, dtype) of the seven row arrays of ``n`` result rows."""
    return (
        ((n,), np.int64),
        ((n,), np.int64),
        ((n, 4), np.uint32),
        ((n,), np.float64),
        ((n,), np.int16),
        ((n,), np.int16),
        ((n,), np.bool_),
    )


def _check_out(out, n):
    layout = _row_layout(n)
    if not isinstance(out, tuple | list) or len(out) != len(layout):
        raise TypeError(f"result_rows: out must be a tuple of {len(layout)} arrays")
    for k, (a, (shape, dtype)) in enumerate(zip(out, layout, strict=True)):
        check_out(f"result_rows: out[{k}]", a, dtype, shape)


def _part_matrices(name, values, failed, n_exec, n_tests):
    v = as_array(f"{name} values", values, np.float64, ndim=2)
    f = as_array(f"{name} failed", failed, np.bool_, ndim=2)
    e = as_array(f"{name} n_exec", n_exec, np.int64, ndim=1)
    if v.shape[1] != n_tests or f.shape != v.shape or e.shape != (v.shape[0],):
        raise ValueError(
            f"result_rows: {name} values {v.shape}, failed {f.shape} and n_exec {e.shape} must "
            f"be (parts, {n_tests}), (parts, {n_tests}) and (parts,)"
        )
    if e.size and (e.min() < 0 or e.max() > n_tests):
        raise ValueError(f"result_rows: {name} n_exec must lie in [0, {n_tests}]")
    return v, f, e


def result_row_count(n_exec_a, n_exec_b, order) -> int:
    """Number of rows :func:`result_rows` writes for these parts (to size ``out``)."""
    e = np.concatenate(
        [np.asarray(n_exec_a, dtype=np.int64).ravel(), np.asarray(n_exec_b, dtype=np.int64).ravel()]
    )
    return int(e[np.asarray(order, dtype=np.int64)].sum())


def result_rows(
    values_a,
    failed_a,
    n_exec_a,
    values_b,
    failed_b,
    n_exec_b,
    order,
    test_num,
    lo,
    hi,
    payload,
    out=None,
):
    """Flat result rows of parts taken, in ``order``, from two part x test matrices.

    Parameters
    ----------
    values_a, failed_a, n_exec_a : ``(Na, T)`` float64 measured values (NaN: no value, e.g. a
        functional test), ``(Na, T)`` bool fail flags, ``(Na,)`` int64 number of tests the part
        executed (its first ``n_exec`` tests in flow order, ``0 <= n_exec <= T``): e.g. the first
        pass of a wafer-sort lot.
    values_b, failed_b, n_exec_b : the same for a second set of ``Nb`` parts (retests; may be
        empty, ``(0, T)``).
    order : ``(P,)`` int64, the source of each output part in output order: ``i < Na`` is part
        ``i`` of the first set, ``Na + j`` part ``j`` of the second. Output part ``p`` gets
        ``part_seq = p``.
    test_num : ``(T,)`` int64 test numbers; ``lo``, ``hi`` : ``(T,)`` float64 limits (``-inf``/
        ``inf`` when absent); ``payload`` : ``(T, 4)`` uint32, 16 bytes copied to every row of the
        test (e.g. the Arrow string-view words of its record kind).
    out : optional tuple of the seven row arrays to fill (C-contiguous, writeable, of the shapes
        and dtypes below), e.g. buffers recycled between calls; new arrays when ``None``.

    Returns
    -------
    ``(part_seq, test_num, words, value, test_flags, parm_flags, passed, exec_count,
    fail_count)``: ``n`` rows (``n = sum(n_exec[source])``) of int64, int64, ``(n, 4)`` uint32,
    float64, int16 (``0x80`` when failed, STDF TEST_FLG bit 7), int16 (failed rows only: ``0x08``
    value above ``hi``, ``0x10`` below ``lo``, STDF PARM_FLG bits 3/4), bool (not failed); and
    per test ``(T,)`` int64 executions and fails. Rows are in output-part order, each part's tests
    in flow order.
    """
    test_num = as_array("result_rows test_num", test_num, np.int64, ndim=1)
    n_tests = test_num.size
    lo = as_array("result_rows lo", lo, np.float64, ndim=1)
    hi = as_array("result_rows hi", hi, np.float64, ndim=1)
    payload = as_array("result_rows payload", payload, np.uint32, ndim=2)
    if lo.size != n_tests or hi.size != n_tests or payload.shape != (n_tests, 4):
        raise ValueError(
            f"result_rows: lo {lo.shape}, hi {hi.shape} and payload {payload.shape} must be "
            f"({n_tests},), ({n_tests},) and ({n_tests}, 4)"
        )
    va, fa, ea = _part_matrices("first", values_a, failed_a, n_exec_a, n_tests)
    vb, fb, eb = _part_matrices("second", values_b, failed_b, n_exec_b, n_tests)
    order = as_array("result_rows order", order, np.int64, ndim=1)
    n_src = va.shape[0] + vb.shape[0]
    if order.size and (order.min() < 0 or order.max() >= n_src):
        raise ValueError(f"result_rows: order must index the {n_src} parts of both sets")
    n = result_row_count(ea, eb, order)
    if out is None:
        out = tuple(np.empty(shape, dtype=dtype) for shape, dtype in _row_layout(n))
    else:
        _check_out(out, n)
    part_seq, num, words, value, test_flags, parm_flags, passed = out
    exec_count = np.zeros(n_tests, dtype=np.int64)
    fail_count = np.zeros(n_tests, dtype=np.int64)
    # the 16-byte payload as two 8-byte words (numpy and the pool align buffers to 16 bytes)
    words8 = words.view(np.uint64)
    payload8 = np.ascontiguousarray(payload).view(np.uint64)
    outs = (part_seq, num, words8, value, test_flags, parm_flags, passed)
    _result_rows(
        va, fa, ea, vb, fb, eb, order, test_num, lo, hi, payload8, outs, exec_count, fail_count
    )
    return part_seq, num, words, value, test_flags, parm_flags, passed, exec_count, fail_count


# --- counter-based standard normals -------------------------------------------------------------
#
# Value j of the stream keyed by k is a pure function of (k, j): the generator never carries state
# from one value to the next, so a grid can be filled in any order, by chunks or by threads, and
# value j does not depend on how many values are asked for.

#: SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): golden-ratio increment and the finaliser
#: multipliers of Stafford's "Mix13", the variant SplitMix64 and Java's SplittableRandom use.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_A = np.uint64(0xBF58476D1CE4E5B9)
_MIX_B = np.uint64(0x94D049BB133111EB)
_SHIFT_A = np.uint64(30)
_SHIFT_B = np.uint64(27)
_SHIFT_C = np.uint64(31)
_SHIFT_HALF = np.uint64(32)
_SHIFT_UNIFORM = np.uint64(11)
_LOW32 = np.uint64(0xFFFFFFFF)
#: Keys are xored with these before seeding, so the primary and the retry streams of one key are
#: unrelated, and keys 0, 1, 2, ... do not start from neighbouring SplitMix64 states.
_PRIMARY_SALT = np.uint64(0x243F6A8885A308D3)  # fractional digits of pi
_RETRY_SALT = np.uint64(0x13198A2E03707344)
_TWO_M53 = 2.0**-53

#: Marsaglia & Tsang's 256-layer ziggurat for f(x) = exp(-x^2 / 2) (J. Stat. Softw. 5(8), 2000):
#: the base strip starts at ``r``; every layer has area ``v``.
ZIGGURAT_LAYERS = 256
ZIGGURAT_R = 3.6541528853610088
_CANDIDATE_BITS = 23
#: Fields of a 32-bit word: layer (bits 0-7), layer and sign (bits 0-8), candidate (bits 9-31).
_LAYER_MASK = ZIGGURAT_LAYERS - 1
_SIGNED_LAYER_MASK = 2 * ZIGGURAT_LAYERS - 1
_CANDIDATE_SHIFT = 9


def _ziggurat_tables(n_layers=ZIGGURAT_LAYERS, r=ZIGGURAT_R):
    """Layer edges and acceptance tables of the ziggurat for exp(-x^2 / 2).

    Edges ``x[0] = v / f(r)`` (the base strip's virtual width, tail included), ``x[1] = r`` and
    ``f(x[i + 1]) = f(x[i]) + v / x[i]`` (Marsaglia & Tsang's recurrence), ``x[n] = 0``. Layer ``i``
    is the box ``[0, x[i]) x [f(x[i]), f(x[i + 1])]``; a candidate ``x = u * x[i]`` is accepted at
    once when ``x < x[i + 1]`` (``u * 2^23 < K[i]``), otherwise it goes to the wedge (or, in the
    base strip, the tail).

    Returns ``(W, K, F, D)``: ``(2n,)`` float64 signed widths ``x[i] / 2^23`` (entry ``i + n`` is
    ``-x[i] / 2^23``), ``(n,)`` int64 thresholds ``floor(x[i + 1] / x[i] * 2^23)``, ``(n + 1,)``
    float64 ``f(x[i])`` and ``(n,)`` float64 heights ``f(x[i + 1]) - f(x[i])``.
    """

    def f(x):
        return math.exp(-0.5 * x * x)

    # the base strip: the box [0, r) x [0, f(r)) plus the tail beyond r
    v = r * f(r) + math.sqrt(math.pi / 2.0) * math.erfc(r / math.sqrt(2.0))
    x = [0.0] * (n_layers + 1)
    x[0] = v / f(r)
    x[1] = r
    for i in range(1, n_layers - 1):
        x[i + 1] = math.sqrt(-2.0 * math.log(v / x[i] + f(x[i])))
    x[n_layers] = 0.0
    scale = float(2**_CANDIDATE_BITS)
    width = np.array([xi / scale for xi in x[:n_layers]], dtype=np.float64)
    k = np.array([math.floor(x[i + 1] / x[i] * scale) for i in range(n_layers)], dtype=np.int64)
    fx = np.array([f(xi) for xi in x], dtype=np.float64)
    return np.concatenate([width, -width]), k, fx, fx[1:] - fx[:-1]


_ZIG_W, _ZIG_K, _ZIG_F, _ZIG_D = _ziggurat_tables()
_ZIG_R32 = np.float32(ZIGGURAT_R)
_ZIG_INV_R = 1.0 / ZIGGURAT_R
#: Stream indices stay far from int64 overflow in the kernel's index arithmetic.
_MAX_STREAM_INDEX = 2**62


@numba.njit(**JIT)
def _mix64(z):
    """SplitMix64's finaliser: a bijection of uint64 with full avalanche."""
    z = (z ^ (z >> _SHIFT_A)) * _MIX_A
    z = (z ^ (z >> _SHIFT_B)) * _MIX_B
    return z ^ (z >> _SHIFT_C)


@numba.njit(**JIT)
def _ziggurat_retry(retry_seed, j, w, width, k, fx, height):
    """Value ``j`` whose first word ``w`` fell outside its layer's core.

    Further uniforms come from value ``j``'s own SplitMix64 stream, seeded with
    ``mix(retry_seed + (j + 1) * gamma)``, so the value stays a pure function of (key, j).
    """
    s = _mix64(retry_seed + (np.uint64(j) + np.uint64(1)) * _GAMMA)
    while True:
        layer = w & _LAYER_MASK
        signed = w & _SIGNED_LAYER_MASK
        rabs = w >> _CANDIDATE_SHIFT
        x = np.float32(np.float64(rabs) * width[signed])
        if rabs < k[layer]:
            return x
        if layer == 0:
            # Marsaglia's tail method (1964): r + t with t exponential of rate r, accepted with
            # probability exp(-t^2 / 2); uniforms in (0, 1] keep the logarithms finite
            while True:
                s += _GAMMA
                u1 = np.float64((_mix64(s) >> _SHIFT_UNIFORM) + np.uint64(1)) * _TWO_M53
                s += _GAMMA
                u2 = np.float64((_mix64(s) >> _SHIFT_UNIFORM) + np.uint64(1)) * _TWO_M53
                t = -math.log(u1) * _ZIG_INV_R
                e = -math.log(u2)
                if e + e > t * t:
                    break
            # summed in float32: the rounding of t stops a fused multiply-add
            y = _ZIG_R32 + np.float32(t)
            return -y if signed > _LAYER_MASK else y
        s += _GAMMA
        u = np.float64(_mix64(s) >> _SHIFT_UNIFORM) * _TWO_M53
        # wedge: a point uniform in the layer's box lies under the density; written as
        # u * height < f(x) - f(x[i]) so that no multiply feeds an add (no fused multiply-add,
        # the same roundings as the reference)
        xd = np.float64(x)
        if u * height[layer] < math.exp(-0.5 * xd * xd) - fx[layer]:
            return x
        s += _GAMMA
        w = np.int64(_mix64(s) & _LOW32)


@numba.njit(**JIT)
def _standard_normal_grid(keys, start, out, width, k, fx, height):
    n_rows, n = out.shape
    for r in range(n_rows):
        seed = _mix64(keys[r] ^ _PRIMARY_SALT)
        retry_seed = _mix64(keys[r] ^ _RETRY_SALT)
        h = np.uint64(0)
        for i in range(n):
            j = start + i
            # word c = j // 2 of the row's SplitMix64 stream, mix(seed + (c + 1) * gamma): its low
            # 32 bits drive value 2c, its high 32 bits value 2c + 1
            if j & 1 == 0 or i == 0:
                h = _mix64(seed + np.uint64((j >> 1) + 1) * _GAMMA)
            w = np.int64((h >> (_SHIFT_HALF * np.uint64(j & 1))) & _LOW32)
            # bits 0-7 layer, bit 8 sign, bits 9-31 the candidate (numpy's float32 layout); the
            # fast path is written out here because a call passing the tables costs reference
            # counting on every value: only about 1.5 % of the values take the retry path
            rabs = w >> _CANDIDATE_SHIFT
            if rabs < k[w & _LAYER_MASK]:
                out[r, i] = np.float32(np.float64(rabs) * width[w & _SIGNED_LAYER_MASK])
            else:
                out[r, i] = _ziggurat_retry(retry_seed, j, w, width, k, fx, height)


def standard_normal_grid(keys, n, out=None, *, start=0):
    """Standard normal float32 values, one counter-based stream per key.

    Row ``i`` holds values ``start .. start + n - 1`` of the stream keyed by ``keys[i]``; value
    ``j`` is a pure function of ``(keys[i], j)``: it does not depend on ``n``, on the other keys
    or on how the grid is split into calls, so a lot's noise can be drawn wafer by wafer (one key
    each) or in chunks (``start``) with the same result.

    Method: word ``c`` of a row is ``mix(mix(key ^ salt) + (c + 1) * gamma)`` (SplitMix64, Steele,
    Lea & Flood 2014); its low and high 32 bits drive values ``2c`` and ``2c + 1`` through
    Marsaglia & Tsang's ziggurat (J. Stat. Softw. 5(8), 2000) with 256 layers, ``r = 3.6541528853610088``:
    8 bits choose the layer, 1 bit the sign, 23 bits the candidate (numpy's float32 layout). The
    rare wedge and tail tests (Marsaglia's tail method beyond ``r``) draw from a second SplitMix64
    stream of their own value. The values are exactly standard normal up to the 23-bit grid of
    the candidates (as numpy's ``standard_normal(dtype=np.float32)``); they are not numpy's.

    Parameters
    ----------
    keys : ``(R,)`` uint64 stream keys (any 64-bit value; non-negative integers of another integer
        dtype are accepted), e.g. ``rng.integers(0, 2**63, R, dtype=np.uint64)`` from a lot's
        generator. Equal keys give equal rows.
    n : int >= 0, values per row.
    out : optional ``(R, n)`` float32 C-contiguous writeable array to fill (e.g. a view
        ``z.reshape(W, N * T)`` of a ``(W, N, T)`` noise grid).
    start : int >= 0, index in the streams of the first value (``start + n <= 2^62``).

    Returns
    -------
    ``(R, n)`` float32 array (``out`` when given).
    """
    raw = np.asarray(keys)
    if raw.ndim != 1:
        raise ValueError(f"standard_normal_grid: keys must be 1-d, got shape {raw.shape}")
    if raw.size and raw.dtype.kind not in "ui":
        raise TypeError(
            f"standard_normal_grid: keys must be integers (uint64), got dtype {raw.dtype}"
        )
    if raw.dtype.kind == "i" and raw.size and raw.min() < 0:
        raise ValueError("standard_normal_grid: keys must be non-negative (use uint64 keys)")
    keys = as_array("standard_normal_grid keys", raw.astype(np.uint64, copy=False), np.uint64, 1)
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(
            f"standard_normal_grid: n must be an integer, got {type(n).__name__}"
        ) from None
    try:
        start = operator.index(start)
    except TypeError:
        raise TypeError(
            f"standard_normal_grid: start must be an integer, got {type(start).__name__}"
        ) from None
    if n < 0 or start < 0 or start + n > _MAX_STREAM_INDEX:
        raise ValueError(
            f"standard_normal_grid: need n >= 0, start >= 0 and start + n <= 2**62, got n={n}, "
            f"start={start}"
        )
    shape = (keys.size, n)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    else:
        check_out("standard_normal_grid: out", out, np.float32, shape)
    _standard_normal_grid(keys, start, out, _ZIG_W, _ZIG_K, _ZIG_F, _ZIG_D)
    return out


def _warmup_lot():
    """A tiny lot (1 wafer, 3 die, 4 tests) in the array layouts the generator passes."""
    w, n, t = 1, 3, 4
    rng = np.random.default_rng(0)
    z = rng.standard_normal((w, n, t)).astype(np.float32)
    f64 = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    values = f64(w * n, t)
    lo, hi = np.full(t, -3.0), np.full(t, 3.0)
    return z, f64, values, lo, hi


def _warmup_wafer_values():
    z, f64, _, _, _ = _warmup_lot()
    w, n, t = z.shape
    args = (z, f64(w, t), f64(n, t), f64(n), f64(w, t), f64(w, n), f64(w, t))
    zero, sigma, nominal = np.zeros(t, dtype=np.bool_), np.ones(t), np.zeros(t)
    out = (np.empty_like(z), np.empty((w * n, t)))
    return (*args, zero, sigma, nominal), {"out": out}


def _warmup_evaluate_parts():
    _, _, values, lo, hi = _warmup_lot()
    parts = values.shape[0]
    over = np.zeros((parts, 1), dtype=np.bool_)
    stop = np.zeros(parts, dtype=np.bool_)
    out = np.empty(values.shape, dtype=np.bool_)
    return (values, lo, hi, np.array([2], dtype=np.int64), over, stop), {"out": out}


def _warmup_result_rows():
    _, _, values, lo, hi = _warmup_lot()
    parts, t = values.shape
    fail = np.zeros(values.shape, dtype=np.bool_)
    n_exec = np.full(parts, t, dtype=np.int64)
    first = (values, fail, n_exec)
    retest = (values[:1].copy(), fail[:1].copy(), n_exec[:1].copy())
    order = np.arange(parts + 1, dtype=np.int64)
    n = result_row_count(first[2], retest[2], order)
    out = tuple(np.empty(shape, dtype=dtype) for shape, dtype in _row_layout(n))
    test_num = np.arange(1, t + 1, dtype=np.int64)
    payload = np.zeros((t, 4), dtype=np.uint32)
    return (*first, *retest, order, test_num, lo, hi, payload), {"out": out}


#: Inputs for ``backend-fab warmup`` (:mod:`backend_fab.warmup`): the generic search cannot guess
#: these kernels' matched shapes.
WARMUP_EXAMPLES = {
    "wafer_values": _warmup_wafer_values,
    "evaluate_parts": _warmup_evaluate_parts,
    "result_rows": _warmup_result_rows,
}
