"""Spatial randomness statistics of wafer maps (DOMAIN §3.2-§3.3).

Binary fail maps (state grids, -1 no die / 0 good / 1 bad) and parametric maps (float grids, NaN
= no value). Weights are binary and symmetric between die: rook (4 neighbours) or queen (8).
With ``S0 = Σ_ij w_ij``, ``S1 = ½ Σ_ij (w_ij + w_ji)² = 2 S0`` and
``S2 = Σ_i (Σ_j w_ij + Σ_j w_ji)² = 4 Σ_i d_i²`` (``d_i`` = neighbour count of die i):

* **Join count BB** (fail-fail joins, Cliff & Ord, *Spatial Processes*, 1981, ch. 2):
  ``BB = ½ Σ_ij w_ij x_i x_j``. Free (Bernoulli) sampling with ``p`` = fail fraction:
  ``E = ½ S0 p²``, ``Var = ¼ [S1 p² + (S2 - 2 S1) p³ + (S1 - S2) p⁴]``. Non-free sampling
  (conditioning on the fail count ``n1`` of ``n`` die; falling factorials ``n^(k)``):
  ``E = ½ S0 n1^(2)/n^(2)``, ``Var = ¼ [S1 n1^(2)/n^(2) + (S2 - 2 S1) n1^(3)/n^(3) +
  (S0² + S1 - S2) n1^(4)/n^(4)] - E²``. ``z = (BB - E) / sqrt(Var)``; z > 2.33 is clustering at
  one-sided alpha = 0.01. The permutation test shuffles the fails over the wafer's die.
* **Moran's I** ``= (N / S0) Σ_ij w_ij z_i z_j / Σ_i z_i²``, ``E[I] = -1/(N - 1)``, variance under
  randomisation (Cliff & Ord eq. 1.37).
* **Runs test** (Wald-Wolfowitz) along a path (probing order or serpentine):
  ``E[R] = 2 n1 n2 / n + 1``, ``Var[R] = 2 n1 n2 (2 n1 n2 - n) / (n² (n - 1))``.
* **Quadrat dispersion**: fail counts in ``qx x qy`` blocks; index of dispersion ``ID = s²/m``
  (``(q - 1) ID ~ χ²_{q-1}`` under randomness), negative-binomial ``alpha = m² / (s² - m)``.
* **Window method** counts: the windows of ``k`` die whose die are all good (Stapper; Koren &
  Koren, Proc. IEEE 86(9), 1998); the model fit is in ``backend_fab.spatial``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from backend_fab_kernels._config import JIT, PARALLEL_JIT
from backend_fab_kernels._core import check_offsets
from backend_fab_kernels._grid import as_stack, check_connectivity, state_stack, writable

__all__ = [
    "dispersion",
    "join_count_permutation",
    "join_counts",
    "morans_i",
    "quadrat_counts",
    "runs_test",
    "serpentine_sequences",
    "window_yields",
]

# forward half of the neighbourhood: each unordered pair of die is visited once
_FWD4 = np.array([[1, 0], [0, 1]], dtype=np.int64)
_FWD8 = np.array([[1, 0], [0, 1], [1, 1], [-1, 1]], dtype=np.int64)


def _forward(connectivity: int) -> np.ndarray:
    return _FWD8 if connectivity == 8 else _FWD4


@numba.njit(**JIT)
def _join_counts(state, fwd):
    n_w, ny, nx = state.shape
    out = np.zeros((n_w, 6), dtype=np.int64)  # n_die, n_fail, bb, bw, n_joins, sum d²
    nf = fwd.shape[0]
    for w in range(n_w):
        s = state[w]
        n_die = 0
        n_fail = 0
        bb = 0
        bw = 0
        joins = 0
        d2 = 0
        for y in range(ny):
            for x in range(nx):
                v = s[y, x]
                if v < 0:
                    continue
                n_die += 1
                n_fail += v == 1
                d = 0
                for o in range(nf):
                    for sign in (-1, 1):
                        xx = x + sign * fwd[o, 0]
                        yy = y + sign * fwd[o, 1]
                        if 0 <= xx < nx and 0 <= yy < ny and s[yy, xx] >= 0:
                            d += 1
                            if sign == 1:
                                u = s[yy, xx]
                                joins += 1
                                bb += (v == 1) & (u == 1)
                                bw += (v == 1) != (u == 1)
                d2 += d * d
        out[w, 0] = n_die
        out[w, 1] = n_fail
        out[w, 2] = bb
        out[w, 3] = bw
        out[w, 4] = joins
        out[w, 5] = d2
    return out


def _falling(a: np.ndarray, k: int) -> np.ndarray:
    out = np.ones_like(a, dtype=np.float64)
    for j in range(k):
        out = out * (a - j)
    return out


def join_counts(state, connectivity: int = 4) -> dict[str, np.ndarray]:
    """Join counts and their analytic moments per wafer (formulas in the module docstring).

    Parameters
    ----------
    state : int8 state grid (n_wafers, ny, nx) or (ny, nx): -1 no die, 0 good, 1 bad
    connectivity : 4 (rook, default) or 8 (queen)

    Returns
    -------
    dict of arrays (n_wafers,): ``n_die``, ``n_fail``, ``bb``, ``bw``, ``ww`` (int64 joins),
    ``s0``, ``s1``, ``s2`` (float64), free-sampling ``expected_free``, ``variance_free``,
    ``z_free`` and non-free-sampling ``expected``, ``variance``, ``z``. z is NaN where the
    variance is 0 (no fails, no goods, or no joins).
    """
    st, _ = state_stack("join_counts", state)
    conn = check_connectivity("join_counts", connectivity)
    raw = _join_counts(st, _forward(conn))
    n = raw[:, 0].astype(np.float64)
    n1 = raw[:, 1].astype(np.float64)
    joins = raw[:, 4]
    s0 = 2.0 * joins
    s1 = 2.0 * s0
    s2 = 4.0 * raw[:, 5].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, n1 / np.maximum(n, 1.0), 0.0)
        e_free = 0.5 * s0 * p**2
        v_free = 0.25 * (s1 * p**2 + (s2 - 2 * s1) * p**3 + (s1 - s2) * p**4)
        r2 = np.where(n >= 2, _falling(n1, 2) / _falling(n, 2), 0.0)
        r3 = np.where(n >= 3, _falling(n1, 3) / _falling(n, 3), 0.0)
        r4 = np.where(n >= 4, _falling(n1, 4) / _falling(n, 4), 0.0)
        e_nf = 0.5 * s0 * r2
        v_nf = 0.25 * (s1 * r2 + (s2 - 2 * s1) * r3 + (s0**2 + s1 - s2) * r4) - e_nf**2
        bb = raw[:, 2].astype(np.float64)
        tiny = 1e-12 * np.maximum(1.0, s0**2)
        z_free = np.where(v_free > tiny, (bb - e_free) / np.sqrt(np.maximum(v_free, tiny)), np.nan)
        z_nf = np.where(v_nf > tiny, (bb - e_nf) / np.sqrt(np.maximum(v_nf, tiny)), np.nan)
    return {
        "n_die": raw[:, 0],
        "n_fail": raw[:, 1],
        "bb": raw[:, 2],
        "bw": raw[:, 3],
        "ww": joins - raw[:, 2] - raw[:, 3],
        "s0": s0,
        "s1": s1,
        "s2": s2,
        "expected_free": e_free,
        "variance_free": v_free,
        "z_free": z_free,
        "expected": e_nf,
        "variance": v_nf,
        "z": z_nf,
    }


@numba.njit(**JIT)
def splitmix64(state):
    """One step of SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): returns (new_state, output)."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@numba.njit(**JIT)
def _perm_plane(s, fwd, n_perm, seed):
    ny, nx = s.shape
    n = 0
    n1 = 0
    for y in range(ny):
        for x in range(nx):
            if s[y, x] >= 0:
                n += 1
                n1 += s[y, x] == 1
    cells = np.empty(n, dtype=np.int64)
    k = 0
    bb_obs = 0
    nf = fwd.shape[0]
    for y in range(ny):
        for x in range(nx):
            v = s[y, x]
            if v >= 0:
                cells[k] = y * nx + x
                k += 1
                if v == 1:
                    for o in range(nf):
                        xx = x + fwd[o, 0]
                        yy = y + fwd[o, 1]
                        if 0 <= xx < nx and 0 <= yy < ny and s[yy, xx] == 1:
                            bb_obs += 1
    if n1 == 0 or n1 == n:
        return n_perm  # every relabelling gives the observed BB
    mark = np.zeros(ny * nx, dtype=np.uint8)
    rng = np.uint64(seed)
    count = 0
    for _ in range(n_perm):
        # partial Fisher-Yates: cells[:n1] become a uniform random n1-subset of the die
        for i in range(n1):
            rng, r = splitmix64(rng)
            j = i + np.int64(r % np.uint64(n - i))
            t = cells[i]
            cells[i] = cells[j]
            cells[j] = t
        for i in range(n1):
            mark[cells[i]] = 1
        bb = 0
        for i in range(n1):
            c = cells[i]
            y = c // nx
            x = c - y * nx
            for o in range(nf):
                xx = x + fwd[o, 0]
                yy = y + fwd[o, 1]
                if 0 <= xx < nx and 0 <= yy < ny and mark[yy * nx + xx]:
                    bb += 1
        for i in range(n1):
            mark[cells[i]] = 0
        count += bb >= bb_obs
    return count


@numba.njit(**PARALLEL_JIT)
def _join_count_permutation(state, fwd, n_perm, seeds):
    n_w = state.shape[0]
    out = np.zeros(n_w, dtype=np.int64)
    for w in numba.prange(n_w):
        out[w] = _perm_plane(state[w], fwd, n_perm, seeds[w])
    return out


def permutation_seeds(seed: int, n_wafers: int) -> np.ndarray:
    """Per-wafer SplitMix64 seeds derived from one integer seed (uint64)."""
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    mask = 2**64 - 1
    out = np.empty(n_wafers, dtype=np.uint64)
    state = int(seed) & mask
    for w in range(n_wafers):  # the same SplitMix64 steps as the kernel, in Python integers
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out[w] = z ^ (z >> 31)
    return out


def join_count_permutation(
    state, connectivity: int = 4, n_perm: int = 999, seed: int = 0
) -> dict[str, np.ndarray]:
    """Permutation test of fail clustering: shuffle each wafer's fails over its die.

    Parameters
    ----------
    state : int8 state grid (n_wafers, ny, nx) or (ny, nx)
    connectivity : 4 or 8
    n_perm : number of random relabellings per wafer (default 999)
    seed : integer seed; wafer ``w`` draws from SplitMix64 seeded with the ``w``-th output of
        SplitMix64(seed), so results do not depend on the thread count

    Returns
    -------
    dict: ``n_ge`` (int64, relabellings with BB >= observed) and ``p_value``
    ``(n_ge + 1) / (n_perm + 1)`` (float64), per wafer.
    """
    st, _ = state_stack("join_count_permutation", state)
    conn = check_connectivity("join_count_permutation", connectivity)
    if not isinstance(n_perm, int | np.integer) or n_perm < 1:
        raise ValueError(f"join_count_permutation: n_perm must be an integer >= 1, got {n_perm!r}")
    seeds = permutation_seeds(seed, st.shape[0])
    n_ge = _join_count_permutation(st, _forward(conn), int(n_perm), seeds)
    return {"n_ge": n_ge, "p_value": (n_ge + 1.0) / (n_perm + 1.0)}


@numba.njit(**JIT)
def _morans(values, fwd):
    n_w, ny, nx = values.shape
    out = np.zeros((n_w, 6), dtype=np.float64)  # n, joins, Σ w z z (ordered pairs), Σz², Σz⁴, Σd²
    nf = fwd.shape[0]
    for w in range(n_w):
        v = values[w]
        n = 0
        total = 0.0
        for y in range(ny):
            for x in range(nx):
                if not np.isnan(v[y, x]):
                    n += 1
                    total += v[y, x]
        if n == 0:
            continue
        mean = total / n
        m2 = 0.0
        m4 = 0.0
        cross = 0.0
        joins = 0
        d2 = 0
        for y in range(ny):
            for x in range(nx):
                a = v[y, x]
                if np.isnan(a):
                    continue
                za = a - mean
                m2 += za * za
                m4 += za * za * za * za
                d = 0
                for o in range(nf):
                    for sign in (-1, 1):
                        xx = x + sign * fwd[o, 0]
                        yy = y + sign * fwd[o, 1]
                        if 0 <= xx < nx and 0 <= yy < ny and not np.isnan(v[yy, xx]):
                            d += 1
                            if sign == 1:
                                joins += 1
                                cross += 2.0 * za * (v[yy, xx] - mean)
                d2 += d * d
        out[w, 0] = n
        out[w, 1] = joins
        out[w, 2] = cross
        out[w, 3] = m2
        out[w, 4] = m4
        out[w, 5] = d2
    return out


def morans_i(values, connectivity: int = 4) -> dict[str, np.ndarray]:
    """Moran's I per wafer with its expectation and variance under randomisation.

    Parameters
    ----------
    values : float grid (n_wafers, ny, nx) or (ny, nx); NaN = no die. A state grid may be passed
        as ``np.where(state >= 0, state, np.nan)``.
    connectivity : 4 or 8

    Returns
    -------
    dict of float64 arrays (n_wafers,): ``n``, ``i``, ``expected`` (-1/(n-1)), ``variance``
    (randomisation), ``z``. NaN where undefined (n < 4, constant map, no joins).
    """
    vals, _ = as_stack("morans_i", values, np.float64)
    if np.isinf(vals).any():
        raise ValueError("morans_i: values must be finite or NaN")
    conn = check_connectivity("morans_i", connectivity)
    raw = _morans(vals, _forward(conn))
    n = raw[:, 0]
    s0 = 2.0 * raw[:, 1]
    s1 = 2.0 * s0
    s2 = 4.0 * raw[:, 5]
    m2 = raw[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (n >= 4) & (s0 > 0) & (m2 > 0)
        i = np.where(ok, n / s0 * raw[:, 2] / m2, np.nan)
        e = np.where(n >= 2, -1.0 / (n - 1.0), np.nan)
        b2 = n * raw[:, 4] / m2**2
        num = n * ((n * n - 3 * n + 3) * s1 - n * s2 + 3 * s0**2) - b2 * (
            (n * n - n) * s1 - 2 * n * s2 + 6 * s0**2
        )
        var = np.where(ok, num / ((n - 1) * (n - 2) * (n - 3) * s0**2) - e**2, np.nan)
        z = np.where(ok & (var > 0), (i - e) / np.sqrt(var), np.nan)
    return {"n": n, "i": i, "expected": e, "variance": var, "z": z}


@numba.njit(**JIT)
def _runs(seq, offsets):
    g = offsets.size - 1
    out = np.zeros((g, 3), dtype=np.int64)  # n1 (ones), n2 (zeros), runs
    for i in range(g):
        lo = offsets[i]
        hi = offsets[i + 1]
        n1 = 0
        runs = 0
        for j in range(lo, hi):
            n1 += seq[j] != 0
            if j == lo or (seq[j] != 0) != (seq[j - 1] != 0):
                runs += 1
        out[i, 0] = n1
        out[i, 1] = hi - lo - n1
        out[i, 2] = runs
    return out


def runs_test(sequence, offsets) -> dict[str, np.ndarray]:
    """Wald-Wolfowitz runs test of fail/pass sequences (probing order), one per group.

    Parameters
    ----------
    sequence : flat bool / integer array; nonzero = fail
    offsets : int64 array (n_groups + 1,); group g is ``sequence[offsets[g]:offsets[g + 1]]``

    Returns
    -------
    dict of arrays (n_groups,): ``n1`` (fails), ``n2`` (passes), ``runs`` (int64), and float64
    ``expected``, ``variance``, ``z`` (NaN where n1 or n2 is 0). Few runs (z << 0) = streaks.
    """
    seq = np.ascontiguousarray(np.asarray(sequence) != 0, dtype=np.uint8)
    if seq.ndim != 1:
        raise ValueError(f"runs_test: sequence must be 1-d, got shape {seq.shape}")
    off = writable(check_offsets("runs_test", offsets, seq.size))
    raw = _runs(seq, off)
    n1 = raw[:, 0].astype(np.float64)
    n2 = raw[:, 1].astype(np.float64)
    n = n1 + n2
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (n1 > 0) & (n2 > 0)
        e = np.where(ok, 2 * n1 * n2 / n + 1, np.nan)
        var = np.where(ok, 2 * n1 * n2 * (2 * n1 * n2 - n) / (n * n * (n - 1)), np.nan)
        z = np.where(ok & (var > 0), (raw[:, 2] - e) / np.sqrt(var), np.nan)
    return {
        "n1": raw[:, 0],
        "n2": raw[:, 1],
        "runs": raw[:, 2],
        "expected": e,
        "variance": var,
        "z": z,
    }


def serpentine_sequences(state) -> tuple[np.ndarray, np.ndarray]:
    """Fail sequences of each wafer along a serpentine path over its die (row 0 left to right,
    row 1 right to left, ...), for :func:`runs_test` when the probing order is unknown.

    Returns ``(sequence uint8, offsets int64)``.
    """
    st, _ = state_stack("serpentine_sequences", state)
    path = st.copy()
    path[:, 1::2, :] = path[:, 1::2, ::-1]
    flat = path.reshape(st.shape[0], -1)
    keep = flat >= 0
    offsets = np.zeros(st.shape[0] + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return np.ascontiguousarray((flat[keep] == 1), dtype=np.uint8), offsets


@numba.njit(**JIT)
def _quadrats(state, qx, qy, ox, oy, min_die):
    n_w, ny, nx = state.shape
    nbx = (nx - ox) // qx
    nby = (ny - oy) // qy
    fails = np.zeros(n_w * nbx * nby, dtype=np.int64)
    die = np.zeros(n_w * nbx * nby, dtype=np.int64)
    offsets = np.zeros(n_w + 1, dtype=np.int64)
    k = 0
    for w in range(n_w):
        for by in range(nby):
            for bx in range(nbx):
                nd = 0
                nfail = 0
                for y in range(oy + by * qy, oy + (by + 1) * qy):
                    for x in range(ox + bx * qx, ox + (bx + 1) * qx):
                        s = state[w, y, x]
                        nd += s >= 0
                        nfail += s == 1
                if nd >= min_die:
                    fails[k] = nfail
                    die[k] = nd
                    k += 1
        offsets[w + 1] = k
    return fails[:k].copy(), die[:k].copy(), offsets


def quadrat_counts(
    state, qx: int = 3, qy: int = 3, min_fill: float = 1.0, origin: tuple[int, int] = (0, 0)
):
    """Fail and die counts in non-overlapping ``qx x qy`` blocks of the grid.

    Blocks tile the grid from ``origin`` (column, row); a block is kept when at least
    ``min_fill · qx · qy`` of its cells are die (default 1.0: whole blocks only, so partial edge
    blocks do not inflate the variance).

    Returns ``(fails int64, die int64, offsets int64 (n_wafers + 1,))``: the kept blocks of wafer
    ``w`` are ``offsets[w]:offsets[w + 1]``, in raster order of the blocks.
    """
    st, _ = state_stack("quadrat_counts", state)
    for name, v in (("qx", qx), ("qy", qy)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"quadrat_counts: {name} must be an integer >= 1, got {v!r}")
    if not (0 < min_fill <= 1):
        raise ValueError(f"quadrat_counts: min_fill must lie in (0, 1], got {min_fill!r}")
    ox, oy = (int(v) for v in origin)
    if ox < 0 or oy < 0:
        raise ValueError(f"quadrat_counts: origin must be >= 0, got {origin!r}")
    min_die = max(1, math.ceil(min_fill * qx * qy - 1e-9))
    return _quadrats(st, int(qx), int(qy), ox, oy, min_die)


def dispersion(state, qx: int = 3, qy: int = 3, min_fill: float = 1.0) -> dict[str, np.ndarray]:
    """Index of dispersion and negative-binomial clustering of quadrat fail counts per wafer.

    Returns dict of float64 arrays (n_wafers,): ``n_quadrats``, ``mean`` (m), ``variance``
    (s², ddof 1), ``index`` (ID = s²/m), ``chi2`` ((q - 1) ID, χ² with q - 1 degrees of freedom
    under randomness), ``ics`` (ID - 1), ``mean_crowding`` (m + s²/m - 1) and ``alpha``
    (m²/(s² - m); +inf when s² <= m, i.e. no clustering). NaN where fewer than 2 quadrats or m = 0.
    """
    fails, _, offsets = quadrat_counts(state, qx, qy, min_fill)
    n_w = offsets.size - 1
    counts = np.diff(offsets)
    q = counts.astype(np.float64)
    wafer = np.repeat(np.arange(n_w), counts)
    f = fails.astype(np.float64)
    sums = np.bincount(wafer, weights=f, minlength=n_w)
    sq = np.bincount(wafer, weights=f * f, minlength=n_w)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(q > 0, sums / q, np.nan)
        s2 = np.where(q > 1, (sq - q * m * m) / (q - 1), np.nan)
        s2 = np.where(np.isfinite(s2), np.maximum(s2, 0.0), np.nan)
        ok = (q > 1) & (m > 0)
        index = np.where(ok, s2 / m, np.nan)
        alpha = np.where(ok, np.where(s2 > m, m * m / (s2 - m), np.inf), np.nan)
        return {
            "n_quadrats": q,
            "mean": m,
            "variance": s2,
            "index": index,
            "chi2": np.where(ok, (q - 1) * index, np.nan),
            "ics": index - 1.0,
            "mean_crowding": np.where(ok, m + s2 / m - 1.0, np.nan),
            "alpha": alpha,
        }


#: Window shapes (columns, rows) of the window method: k = 1, 2, 4, 6, 9 die.
WINDOW_SHAPES: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (2, 2), (3, 2), (3, 3))


@numba.njit(**JIT)
def _window_yields(state, shapes):
    n_w, ny, nx = state.shape
    ns = shapes.shape[0]
    windows = np.zeros((n_w, ns), dtype=np.int64)
    good = np.zeros((n_w, ns), dtype=np.int64)
    for w in range(n_w):
        for k in range(ns):
            wx = shapes[k, 0]
            wy = shapes[k, 1]
            for by in range(ny // wy):
                for bx in range(nx // wx):
                    complete = True
                    allgood = True
                    for y in range(by * wy, (by + 1) * wy):
                        for x in range(bx * wx, (bx + 1) * wx):
                            s = state[w, y, x]
                            complete &= s >= 0
                            allgood &= s == 0
                    if complete:
                        windows[w, k] += 1
                        good[w, k] += allgood
    return windows, good


def window_yields(state, shapes=WINDOW_SHAPES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window-method counts: complete windows and all-good windows per wafer and window shape.

    Windows of ``wx x wy`` die tile the grid from cell (0, 0); only windows whose cells are all
    die count. ``Y_k = good / windows`` for ``k = wx · wy`` feeds ``backend_fab.spatial``'s fit
    of ``Y_k = Y0 (1 + k λ / α)^(-α)``.

    Returns ``(k int64 (n_shapes,), windows int64 (n_wafers, n_shapes), good int64 (n_wafers,
    n_shapes))``.
    """
    st, _ = state_stack("window_yields", state)
    sh = np.ascontiguousarray(np.asarray(shapes, dtype=np.int64).reshape(-1, 2))
    if sh.size == 0 or np.any(sh < 1):
        raise ValueError(
            f"window_yields: shapes must be (wx, wy) pairs of integers >= 1, got {shapes!r}"
        )
    windows, good = _window_yields(st, sh)
    return sh[:, 0] * sh[:, 1], windows, good
