"""Slow, obviously correct references for backend_fab_kernels.synth_kernels, with its names.

Part by part and test by test in plain Python (lists, Python floats: IEEE double arithmetic, one
rounding per operation), sharing nothing with the numba code.
"""

from __future__ import annotations

import math

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


# --- standard_normal_grid: SplitMix64 counter stream + 256-layer ziggurat, value by value -------

_U64 = (1 << 64) - 1
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
_PRIMARY_SALT = 0x243F6A8885A308D3
_RETRY_SALT = 0x13198A2E03707344
_ZIG_N = 256
_ZIG_R = 3.6541528853610088


def _splitmix_mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def _density(x: float) -> float:
    return math.exp(-0.5 * x * x)


def _ziggurat_edges() -> list[float]:
    """Layer edges x[0..256]: x[0] = v / f(r), x[1] = r, f(x[i+1]) = f(x[i]) + v / x[i], x[256] = 0."""
    r = _ZIG_R
    v = r * _density(r) + math.sqrt(math.pi / 2.0) * math.erfc(r / math.sqrt(2.0))
    x = [v / _density(r), r]
    while len(x) < _ZIG_N:
        x.append(math.sqrt(-2.0 * math.log(v / x[-1] + _density(x[-1]))))
    return [*x, 0.0]


_ZIG_X = _ziggurat_edges()


def normal_value_path(key: int, j: int) -> tuple[float, str, int]:
    """Value j of the stream keyed by key, computed from (key, j) alone.

    Also returns how it was accepted ("core", "wedge" or "tail") and the number of 32-bit words
    tried (more than one when a wedge test rejected).
    """
    stream = _splitmix_mix(key ^ _PRIMARY_SALT)
    word = _splitmix_mix((stream + (j // 2 + 1) * _SPLITMIX_GAMMA) & _U64)
    w = word & 0xFFFFFFFF if j % 2 == 0 else word >> 32
    # value j's own stream for the wedge, tail and retries
    retry = _splitmix_mix(key ^ _RETRY_SALT)
    state = _splitmix_mix((retry + (j + 1) * _SPLITMIX_GAMMA) & _U64)

    def next_word() -> int:
        nonlocal state
        state = (state + _SPLITMIX_GAMMA) & _U64
        return _splitmix_mix(state)

    words = 1
    while True:
        layer, negative, rabs = w % 256, (w >> 8) % 2 == 1, w >> 9
        x = _f32(rabs * (_ZIG_X[layer] / 2.0**23))
        signed = -x if negative else x
        if rabs < math.floor(_ZIG_X[layer + 1] / _ZIG_X[layer] * 2.0**23):
            return signed, "core", words  # inside the layer's core box: under the density
        if layer == 0:
            # Marsaglia's tail method beyond r
            while True:
                u1 = ((next_word() >> 11) + 1) * 2.0**-53
                u2 = ((next_word() >> 11) + 1) * 2.0**-53
                t = -math.log(u1) * (1.0 / _ZIG_R)
                e = -math.log(u2)
                if e + e > t * t:
                    break
            y = _f32(_f32(_ZIG_R) + _f32(t))
            return (-y if negative else y), "tail", words
        u = (next_word() >> 11) * 2.0**-53
        low, high = _density(_ZIG_X[layer]), _density(_ZIG_X[layer + 1])
        if u * (high - low) < _density(x) - low:
            return signed, "wedge", words  # (x, low + u * (high - low)) lies under the density
        w = next_word() & 0xFFFFFFFF
        words += 1


def standard_normal_grid(keys, n, start=0):
    keys = [int(k) for k in keys]
    out = np.zeros((len(keys), n), dtype=np.float32)
    for i, key in enumerate(keys):
        for j in range(n):
            out[i, j] = normal_value_path(key, start + j)[0]
    return out
