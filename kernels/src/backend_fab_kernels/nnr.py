"""Nearest Neighbour Residual (NNR) of parametric wafer maps.

Daasch, McNames, Bockelman, Cota & Madge, "Variance reduction using wafer patterns in IDDQ data",
ITC 2000; Daasch et al., "Neighbor selection for variance reduction in IDDQ and other parametric
data", ITC 2001. Location averaging as in Galaxy PAT-Man (DOMAIN §2.4):

* the neighbourhood of a die is the ``window x window`` square around it (default 5, up to 15),
  the die itself excluded; neighbours without a value (NaN) are skipped;
* location averaging keeps the ``k = ceil(window² · la_percent / 100)`` neighbour values closest
  to the die's own value (all of them when fewer are valid; ties broken towards the smaller
  value), and the estimate is their median;
* residual = value - estimate. Screening the residuals (mean ± 6σ, robust, IQR) is the PAT
  engine's job.

The k values closest to ``v`` form a contiguous run of the sorted neighbour values, so the kernel
keeps the window's values sorted as it slides along a row and grows the run outwards from ``v``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from backend_fab_kernels._config import JIT, PARALLEL_JIT
from backend_fab_kernels._grid import check_window, writable

__all__ = ["nnr_k", "nnr_residuals"]


def nnr_k(window: int, la_percent: float) -> int:
    """Number of neighbours kept by location averaging: ``ceil(window² · la_percent / 100)``.

    Computed in exact rational arithmetic for decimal percentages (70 % of 25 is 17.5 -> 18).
    """
    if not (0 < la_percent <= 100):
        raise ValueError(f"nnr: la_percent must lie in (0, 100], got {la_percent!r}")
    from fractions import Fraction

    return max(1, math.ceil(Fraction(str(float(la_percent))) * window * window / 100))


@numba.njit(**JIT)
def _nnr_plane(v, out, h, k, min_nb):
    """Slides a sorted multiset of the window's values (the die itself included) along each row:
    per step one sorted column leaves and one enters, each in a single branch-free pass."""
    ny, nx = v.shape
    win = 2 * h + 1
    cols = np.empty((nx, win + 1), dtype=np.float64)
    ncol = np.zeros(nx, dtype=np.int64)
    bufs = np.empty((2, win * win + 1), dtype=np.float64)
    for y in range(ny):
        y0 = max(0, y - h)
        y1 = min(ny, y + h + 1)
        for x in range(nx):  # each column of the row band, sorted once
            n = 0
            for yy in range(y0, y1):
                u = v[yy, x]
                if not np.isnan(u):
                    j = n
                    while j > 0 and cols[x, j - 1] > u:
                        cols[x, j] = cols[x, j - 1]
                        j -= 1
                    cols[x, j] = u
                    n += 1
            cols[x, n] = np.inf
            ncol[x] = n
        n = 0
        cur = 0
        for x in range(-h, nx):
            # window of centre x: columns x - h .. x + h; drop x - h - 1, add x + h
            xo = x - h - 1
            xi = x + h
            if xo >= 0 and ncol[xo] > 0:
                # drop the leaving column (a sorted sub-multiset of the window)
                r = 0
                n2 = 0
                for i in range(n):
                    u = bufs[cur, i]
                    drop = u == cols[xo, r]
                    bufs[1 - cur, n2] = u
                    n2 += 1 - drop
                    r += drop
                cur = 1 - cur
                n = n2
            if xi < nx and ncol[xi] > 0:
                # merge the entering column in; +inf sentinels end both runs
                na = ncol[xi]
                bufs[cur, n] = np.inf
                i = 0
                a = 0
                for o in range(n + na):
                    u = bufs[cur, i]
                    w = cols[xi, a]
                    take = w < u
                    bufs[1 - cur, o] = w if take else u
                    a += take
                    i += 1 - take
                cur = 1 - cur
                n += na
            if x < 0:
                continue
            c = v[y, x]
            if np.isnan(c):
                out[y, x] = np.nan
                continue
            buf = bufs[cur]
            m = n - 1  # neighbours: the window without one copy of c, at index p
            if m < min_nb or m == 0:
                out[y, x] = np.nan
                continue
            lo = 0
            hi = n
            while lo < hi:
                mid = (lo + hi) >> 1
                if buf[mid] < c:
                    lo = mid + 1
                else:
                    hi = mid
            p = lo
            kk = min(k, m)
            # neighbour i is buf[i] for i < p and buf[i + 1] from p on. The kk values nearest c
            # are a run [s, s + kk): the first s whose left end is no farther than the value
            # just past its right end (ties keep the smaller values)
            lo = max(0, p - kk)
            hi = min(p, m - kk)
            while lo < hi:
                mid = (lo + hi) >> 1
                left = buf[mid] if mid < p else buf[mid + 1]
                j = mid + kk
                right = buf[j] if j < p else buf[j + 1]
                if c - left > right - c:
                    lo = mid + 1
                else:
                    hi = mid
            mid = lo + kk // 2
            b_mid = buf[mid] if mid < p else buf[mid + 1]
            if kk % 2 == 1:
                med = b_mid
            else:
                b_lo = buf[mid - 1] if mid - 1 < p else buf[mid]
                med = 0.5 * (b_lo + b_mid)
            out[y, x] = c - med


@numba.njit(**PARALLEL_JIT)
def _nnr(values, h, k, min_nb):
    g, ny, nx = values.shape
    out = np.empty((g, ny, nx), dtype=np.float64)
    for i in numba.prange(g):
        _nnr_plane(values[i], out[i], h, k, min_nb)
    return out


def nnr_residuals(
    values, window: int = 5, la_percent: float = 70.0, min_neighbours: int = 1
) -> np.ndarray:
    """NNR residuals of many tests on many wafers at once.

    Parameters
    ----------
    values : float array (n_tests, n_wafers, ny, nx), (n_wafers, ny, nx) or (ny, nx)
        Parametric values on the die grid; NaN = no die or no value. Converted to float64.
    window : odd int in [3, 15]
        Side of the square neighbourhood in die (default 5).
    la_percent : float in (0, 100]
        Location-averaging percentage (default 70).
    min_neighbours : int >= 1
        Dies with fewer valid neighbours get a NaN residual.

    Returns
    -------
    residuals : float64 array, same shape as ``values``; ``value - estimate`` where the estimate is
        the median of the ``nnr_k(window, la_percent)`` neighbour values nearest the die's value.
        NaN where the value is NaN or too few neighbours have a value.
    """
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"nnr_residuals: values must be numeric, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3, 4):
        raise ValueError(f"nnr_residuals: expected 2-d to 4-d values, got shape {arr.shape}")
    window = check_window("nnr_residuals", window, 3, 15)
    if not isinstance(min_neighbours, int | np.integer) or min_neighbours < 1:
        raise ValueError(
            f"nnr_residuals: min_neighbours must be an integer >= 1, got {min_neighbours!r}"
        )
    k = nnr_k(window, la_percent)
    shape = arr.shape
    flat = writable(np.ascontiguousarray(arr, dtype=np.float64)).reshape((-1, shape[-2], shape[-1]))
    if np.isinf(flat).any():
        raise ValueError("nnr_residuals: values must be finite or NaN (found an infinity)")
    out = _nnr(flat, window // 2, k, int(min_neighbours))
    return out.reshape(shape)
