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
"""

from __future__ import annotations

import numba
import numpy as np

from backend_fab_kernels._config import JIT
from backend_fab_kernels._core import as_array

__all__ = ["evaluate_parts", "result_row_count", "result_rows", "wafer_values"]

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
        z, v = out
        for name, a, dtype, shape in (
            ("z", z, np.float32, noise.shape),
            ("v", v, np.float64, (n_wafers * n_die, n_tests)),
        ):
            if not (
                isinstance(a, np.ndarray)
                and a.shape == shape
                and a.dtype == dtype
                and a.flags.c_contiguous
                and a.flags.writeable
            ):
                raise ValueError(
                    f"wafer_values: out {name} must be a C-contiguous writeable "
                    f"{np.dtype(dtype).name} array of shape {shape}"
                )
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
        fail = out
        if not (
            isinstance(fail, np.ndarray)
            and fail.shape == (n_parts, n_tests)
            and fail.dtype == np.bool_
            and fail.flags.c_contiguous
            and fail.flags.writeable
        ):
            raise ValueError(
                f"evaluate_parts: out must be a C-contiguous writeable bool array of shape "
                f"{(n_parts, n_tests)}"
            )
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
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype:
            raise ValueError(
                f"result_rows: out[{k}] must be a {np.dtype(dtype).name} array of shape {shape}"
            )
        if not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"result_rows: out[{k}] must be C-contiguous and writeable")


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
