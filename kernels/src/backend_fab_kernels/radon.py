"""Radon-transform profile of binary wafer maps, and natural cubic-spline resampling.

Wu, Jang & Chen, "Wafer Map Failure Pattern Recognition and Similarity Ranking for Large-Scale
Data Sets", IEEE TSM 28(1):1-12, 2015, describe a wafer map by the mean and the standard deviation
of each row of its Radon transform (the sinogram row = one projection offset, across angles), each
row profile resampled to 20 points by cubic interpolation so that maps of any size give the same
number of features.

Here the projection works on die, not on image pixels, in coordinates normalised by the wafer
radius (``u = (2 ix - (nx - 1)) / nx``, ``v`` likewise, so the die map fills the unit disk whatever
its die count and die aspect ratio). Maps wider than 32 die are first pooled into ``k x k`` blocks
(``k = ceil(max(nx, ny) / 32)``; ``k = 1`` leaves every die alone): a block carries its die count,
its fail count and the centroid of its die. Each block centroid projects to the offset
``s = u cos(t) + v sin(t)`` and lands in one of ``B`` equal bins over ``[-1, 1]`` (``B`` = the
pooled map's width in blocks, clipped to ``[9, 33]`` and made odd: about one block per bin; the
profile is resampled to 20 points anyway, so finer bins would only cost time). An odd ``B`` centres
a bin on ``s = 0``, where the die of a symmetric map project in pairs ``(u, v)``, ``(-u, -v)``,
and the bin borders are shifted by ``1e-9`` so that no die centre sits on a border, where the last
bit of ``cos`` would decide. The sinogram value of a bin is the **fail fraction** of the die that
project into it (fails / die), which removes the dependence on die count and on the uneven number
of die per bin at oblique angles. Bins without die at an angle are skipped for that angle; a bin
without die at every angle takes the value of the nearest bin that has some (the lower one on
ties).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from backend_fab_kernels._config import JIT
from backend_fab_kernels._core import as_array, check_offsets
from backend_fab_kernels._grid import writable

__all__ = ["RADON_POINTS", "cubic_resample", "radon_bins"]

#: Points of each resampled Radon profile (Wu et al. 2015).
RADON_POINTS = 20
_MIN_BINS = 9
_MAX_BINS = 33
_POOL_WIDTH = 32
_BORDER_SHIFT = 1e-9


@njit(**JIT)
def _pool_size(nx, ny):
    w = max(nx, ny)
    return (w + _POOL_WIDTH - 1) // _POOL_WIDTH


@njit(**JIT)
def _n_bins(nx, ny):
    k = _pool_size(nx, ny)
    nb = max((nx + k - 1) // k, (ny + k - 1) // k)
    if nb < _MIN_BINS:
        nb = _MIN_BINS
    if nb > _MAX_BINS:
        nb = _MAX_BINS
    if nb % 2 == 0:
        nb += 1
    return nb


def radon_bins(nx: int, ny: int) -> tuple[int, int]:
    """``(k, B)`` for an ``nx`` x ``ny`` die grid: the pooling block size and the number of
    projection-offset bins (see the module docstring)."""
    return int(_pool_size(int(nx), int(ny))), int(_n_bins(int(nx), int(ny)))


@njit(**JIT)
def _spline_second_derivatives(y):
    # natural cubic spline through equally spaced knots 0..n-1 (unit spacing): solve the
    # tridiagonal system m[i-1] + 4 m[i] + m[i+1] = 6 (y[i+1] - 2 y[i] + y[i-1]), m[0] = m[n-1] = 0
    n = y.size
    m = np.zeros(n)
    if n < 3:
        return m
    k = n - 2
    c = np.empty(k)
    d = np.empty(k)
    for i in range(k):
        rhs = 6.0 * (y[i + 2] - 2.0 * y[i + 1] + y[i])
        if i == 0:
            c[i] = 1.0 / 4.0
            d[i] = rhs / 4.0
        else:
            denom = 4.0 - c[i - 1]
            c[i] = 1.0 / denom
            d[i] = (rhs - d[i - 1]) / denom
    m[k] = d[k - 1]
    for i in range(k - 2, -1, -1):
        m[i + 1] = d[i] - c[i] * m[i + 2]
    return m


@njit(**JIT)
def _cubic_resample(y, n_out, out):
    # evaluate the natural cubic spline through (i / (n-1), y[i]) at j / (n_out - 1)
    n = y.size
    if n == 1:
        for j in range(n_out):
            out[j] = y[0]
        return
    m = _spline_second_derivatives(y)
    for j in range(n_out):
        t = (j * (n - 1.0)) / (n_out - 1.0) if n_out > 1 else 0.0
        i = int(np.floor(t))
        if i >= n - 1:
            i = n - 2
        if i < 0:
            i = 0
        a = t - i
        b = 1.0 - a
        out[j] = (
            b * y[i] + a * y[i + 1] + ((b * b * b - b) * m[i] + (a * a * a - a) * m[i + 1]) / 6.0
        )


@njit(**JIT)
def _cubic_resample_rows(values, n_out):
    out = np.empty((values.shape[0], n_out))
    for r in range(values.shape[0]):
        _cubic_resample(values[r], n_out, out[r])
    return out


def cubic_resample(values, n_out: int = RADON_POINTS) -> np.ndarray:
    """Resample each row of ``values`` (shape ``(rows, n)``, ``n >= 1``) to ``n_out`` points.

    The natural cubic spline through the ``n`` equally spaced samples on ``[0, 1]`` is evaluated at
    ``n_out`` equally spaced points on ``[0, 1]`` (both ends included). Returns ``(rows, n_out)``
    float64. A row of one sample resamples to a constant.
    """
    arr = as_array("values", values, np.float64, ndim=2)
    if arr.shape[1] < 1:
        raise ValueError("values: each row needs at least one sample")
    if int(n_out) < 1:
        raise ValueError(f"n_out must be >= 1, got {n_out}")
    return _cubic_resample_rows(arr, int(n_out))


@njit(**JIT)
def _grid_extent(x, y, lo, hi):
    xmin = x[lo]
    xmax = x[lo]
    ymin = y[lo]
    ymax = y[lo]
    for i in range(lo + 1, hi):
        if x[i] < xmin:
            xmin = x[i]
        if x[i] > xmax:
            xmax = x[i]
        if y[i] < ymin:
            ymin = y[i]
        if y[i] > ymax:
            ymax = y[i]
    return xmin, xmax, ymin, ymax


@njit(**JIT)
def _ridge(num, den, out):
    """The strongest thin line of fails: over every angle and bin ``b`` with die in bins
    ``b - 2``, ``b`` and ``b + 2``, the excess ``e = f_b - (f_(b-2) + f_(b+2)) / 2`` of the bin's fail
    fraction over its neighbours two bins away, as a z-score against independent fails at the
    wafer's fail fraction ``p``: ``z = e / sqrt(p (1 - p) (1/n_b + 1/(4 n_(b-2)) + 1/(4 n_(b+2))))``.
    ``out[0]`` = the largest z (0 when no bin qualifies or p is 0 or 1), ``out[1]`` = its ``e``.
    A scratch gives a high z at its angle; a blob raises its neighbours too, and does not."""
    n_angles, nb = den.shape
    total = 0
    fails = 0
    for b in range(nb):
        total += den[0, b]
        fails += num[0, b]
    p = fails / total if total else 0.0
    out[0] = 0.0
    out[1] = 0.0
    if p <= 0.0 or p >= 1.0:
        return
    pq = p * (1.0 - p)
    best = -np.inf
    for a in range(n_angles):
        for b in range(2, nb - 2):
            n0 = den[a, b]
            n1 = den[a, b - 2]
            n2 = den[a, b + 2]
            if n0 == 0 or n1 == 0 or n2 == 0:
                continue
            e = num[a, b] / n0 - 0.5 * (num[a, b - 2] / n1 + num[a, b + 2] / n2)
            z = e / np.sqrt(pq * (1.0 / n0 + 0.25 / n1 + 0.25 / n2))
            if z > best:
                best = z
                out[0] = z
                out[1] = e


@njit(**JIT)
def _radon_on_grid(grid, n_angles, n_points, out_mean, out_std, out_ridge):
    """Radon mean/std profiles of one die grid (-1 no die, 0 pass, 1 fail), into out_mean and
    out_std, and the ridge statistic (z, excess) into out_ridge[0:2] (see ``_ridge``)."""
    ny, nx = grid.shape
    nb = _n_bins(nx, ny)
    k = _pool_size(nx, ny)
    mx = (nx + k - 1) // k
    my = (ny + k - 1) // k
    bd = np.zeros((my, mx), dtype=np.int64)
    bf = np.zeros((my, mx), dtype=np.int64)
    bu = np.zeros((my, mx))
    bv = np.zeros((my, mx))
    any_die = False
    for iy in range(ny):
        v = (2.0 * iy - (ny - 1.0)) / ny
        py = iy // k
        for ix in range(nx):
            g = grid[iy, ix]
            if g < 0:
                continue
            any_die = True
            px = ix // k
            bd[py, px] += 1
            bf[py, px] += g
            bu[py, px] += (2.0 * ix - (nx - 1.0)) / nx
            bv[py, px] += v
    cos_t = np.empty(n_angles)
    sin_t = np.empty(n_angles)
    for a in range(n_angles):
        t = np.pi * a / n_angles
        cos_t[a] = np.cos(t)
        sin_t[a] = np.sin(t)
    den = np.zeros((n_angles, nb), dtype=np.int64)
    num = np.zeros((n_angles, nb), dtype=np.int64)
    half = 0.5 * nb
    for py in range(my):
        for px in range(mx):
            cnt = bd[py, px]
            if cnt == 0:
                continue
            u = bu[py, px] / cnt
            v = bv[py, px] / cnt
            nf = bf[py, px]
            for a in range(n_angles):
                s = u * cos_t[a] + v * sin_t[a]
                b = int(np.floor((s + 1.0 + _BORDER_SHIFT) * half))
                if b < 0:
                    b = 0
                elif b >= nb:
                    b = nb - 1
                den[a, b] += cnt
                num[a, b] += nf
    if not any_die:
        for j in range(n_points):
            out_mean[j] = np.nan
            out_std[j] = np.nan
        out_ridge[0] = np.nan
        out_ridge[1] = np.nan
        return
    _ridge(num, den, out_ridge)
    mean = np.empty(nb)
    std = np.empty(nb)
    valid = np.zeros(nb, dtype=np.bool_)
    for b in range(nb):
        cnt = 0
        acc = 0.0
        for k in range(n_angles):
            if den[k, b] > 0:
                acc += num[k, b] / den[k, b]
                cnt += 1
        if cnt == 0:
            continue
        valid[b] = True
        mu = acc / cnt
        ss = 0.0
        for k in range(n_angles):
            if den[k, b] > 0:
                d = num[k, b] / den[k, b] - mu
                ss += d * d
        mean[b] = mu
        std[b] = np.sqrt(ss / cnt)
    for b in range(nb):
        if valid[b]:
            continue
        # nearest bin with die, the lower one on ties
        best = -1
        for dist in range(1, nb):
            if b - dist >= 0 and valid[b - dist]:
                best = b - dist
                break
            if b + dist < nb and valid[b + dist]:
                best = b + dist
                break
        mean[b] = mean[best]
        std[b] = std[best]
    _cubic_resample(mean, n_points, out_mean)
    _cubic_resample(std, n_points, out_std)


@njit(**JIT)
def _fill_grid(x, y, fail, lo, hi):
    xmin, xmax, ymin, ymax = _grid_extent(x, y, lo, hi)
    grid = np.full((ymax - ymin + 1, xmax - xmin + 1), -1, dtype=np.int8)
    dup = False
    for i in range(lo, hi):
        iy = y[i] - ymin
        ix = x[i] - xmin
        if grid[iy, ix] >= 0:
            dup = True
        grid[iy, ix] = 1 if fail[i] else 0
    return grid, dup


def validate_die_groups(x, y, fail, offsets, max_extent: int = 4096):
    """Coerce and check the flat die arrays of wafer groups (shared by the feature wrappers).

    Returns ``(x int64, y int64, fail uint8, offsets int64)``, read-only inputs copied (the kernels
    never write to them either way). Raises ValueError on length
    mismatches, bad offsets, or a wafer whose die span more than ``max_extent`` positions per axis.
    """
    xa = writable(as_array("x", x, np.int64, ndim=1))
    ya = writable(as_array("y", y, np.int64, ndim=1))
    fa = writable(as_array("fail", fail, np.bool_, ndim=1)).view(np.uint8)
    if not (xa.size == ya.size == fa.size):
        raise ValueError(
            f"x, y and fail must have the same length (got {xa.size}, {ya.size}, {fa.size})"
        )
    off = writable(check_offsets("offsets", offsets, xa.size))
    if xa.size:
        starts = off[:-1][np.diff(off) > 0]
        for name, arr in (("x", xa), ("y", ya)):
            span = np.maximum.reduceat(arr, starts) - np.minimum.reduceat(arr, starts)
            worst = int(np.argmax(span))
            if span[worst] >= max_extent:
                raise ValueError(
                    f"{name}: the die of one wafer span {int(span[worst]) + 1} positions "
                    f"(limit {max_extent}); check the coordinates of the wafer starting at "
                    f"row {int(starts[worst])}"
                )
    return xa, ya, fa, off


def raise_on_duplicates(dup: np.ndarray, offsets: np.ndarray) -> None:
    """Raise ValueError naming the first wafer group whose (x, y) positions repeat."""
    if dup.any():
        w = int(np.flatnonzero(dup)[0])
        raise ValueError(
            f"wafer group {w} (rows {int(offsets[w])}..{int(offsets[w + 1]) - 1}) has the same "
            "(x, y) more than once; keep one row per die (e.g. the final retest) first"
        )


#: Inputs for ``backend-fab warmup``.
WARMUP_EXAMPLES = {"cubic_resample": lambda: ((np.array([[0.0, 1.0, 0.5, 2.0]]),), {"n_out": 5})}
