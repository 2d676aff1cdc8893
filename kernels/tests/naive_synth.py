"""Slow, obviously correct references for backend_fab_kernels.synth_kernels, with its names.

Part by part and test by test in plain Python (lists, Python floats: IEEE double arithmetic, one
rounding per operation), sharing nothing with the numba code.
"""

from __future__ import annotations

import numpy as np


def _f32(x: float) -> float:
    """Round a Python float to float32 (and back to a Python float)."""
    return float(np.float32(x))


def wafer_values(noise, shift, site_mean, radial, rad_wt, tilt, lin_wt, zero, sigma, nominal):
    n_wafers, n_die, n_tests = np.shape(noise)
    z = np.zeros((n_wafers, n_die, n_tests), dtype=np.float32)
    v = np.zeros((n_wafers * n_die, n_tests), dtype=np.float64)
    for w in range(n_wafers):
        for k in range(n_die):
            for t in range(n_tests):
                if zero[t]:
                    x = 0.0
                else:
                    x = _f32(float(noise[w][k][t]) + float(shift[w][t]))
                    x = _f32(x + float(site_mean[k][t]))
                    x = _f32(x + float(radial[k]) * float(rad_wt[w][t]))
                    x = _f32(x + float(tilt[w][k]) * float(lin_wt[w][t]))
                z[w, k, t] = x
                v[w * n_die + k, t] = float(nominal[t]) + float(sigma[t]) * x
    return z, v


def evaluate_parts(values, lo, hi, override_idx, override, stop):
    n_parts, n_tests = np.shape(values)
    over = {int(t): j for j, t in enumerate(override_idx)}
    fail = np.zeros((n_parts, n_tests), dtype=bool)
    n_exec = np.zeros(n_parts, dtype=np.int64)
    first_fail = np.full(n_parts, -1, dtype=np.int64)
    for p in range(n_parts):
        flags = []
        for t in range(n_tests):
            if t in over:
                flags.append(bool(override[p][over[t]]))
            else:
                v = float(values[p][t])
                flags.append(not (lo[t] <= v <= hi[t]))  # NaN: both comparisons False
        executed = n_tests if not (n_tests and (stop[p] or flags[0])) else 1
        n_exec[p] = executed
        for t in range(executed):
            fail[p, t] = flags[t]
            if flags[t] and first_fail[p] < 0:
                first_fail[p] = t
    return fail, n_exec, first_fail


def result_rows(
    values_a, failed_a, n_exec_a, values_b, failed_b, n_exec_b, order, test_num, lo, hi, payload
):
    parts = [(values_a[i], failed_a[i], int(n_exec_a[i])) for i in range(len(n_exec_a))]
    parts += [(values_b[i], failed_b[i], int(n_exec_b[i])) for i in range(len(n_exec_b))]
    rows = []
    n_tests = len(test_num)
    exec_count = [0] * n_tests
    fail_count = [0] * n_tests
    for p, src in enumerate(order):
        vals, fails, k = parts[int(src)]
        for t in range(k):
            v = float(vals[t])
            bad = bool(fails[t])
            parm = 0
            if bad:
                if v > hi[t]:
                    parm |= 0x08
                if v < lo[t]:
                    parm |= 0x10
            rows.append(
                (p, int(test_num[t]), list(payload[t]), v, 0x80 if bad else 0, parm, not bad)
            )
            exec_count[t] += 1
            fail_count[t] += bad
    n = len(rows)
    return (
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.uint32).reshape(n, 4),
        np.array([r[3] for r in rows], dtype=np.float64),
        np.array([r[4] for r in rows], dtype=np.int16),
        np.array([r[5] for r in rows], dtype=np.int16),
        np.array([r[6] for r in rows], dtype=bool),
        np.array(exec_count, dtype=np.int64),
        np.array(fail_count, dtype=np.int64),
    )
