"""DBSCAN of failing die, computed on the die grid.

Ester, Kriegel, Sander & Xu, "A density-based algorithm for discovering clusters in large spatial
databases with noise", KDD 1996; on wafer maps: Jin et al., IEEE TSM 32(3), 2019 (DOMAIN §3.1).

Points are the failing die at integer die coordinates; the eps-neighbourhood is the fixed set of
grid offsets within ``eps`` die pitches (Euclidean, ``dx² + dy² <= eps²``, the point itself
included), so no spatial index is needed. The partition is exactly scikit-learn's
``DBSCAN(eps, min_samples)`` run on the fail coordinates listed in raster order (row ``iy``, then
column ``ix``), including its rule for border points: a border point joins the first cluster, in
order of creation, that has a core point within ``eps`` of it. Clusters are created in raster
order of their first core point, which is how scikit-learn numbers them.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from backend_fab_kernels._config import JIT, PARALLEL_JIT
from backend_fab_kernels._grid import as_stack

__all__ = ["dbscan_grid", "eps_offsets"]


def eps_offsets(eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid offsets ``(dx, dy)`` (int64) with ``sqrt(dx² + dy²) <= eps``, the centre included.

    The distance is computed as scikit-learn does (``sqrt`` of the sum of squares, compared with
    ``<=``), so eps exactly on a lattice distance (1, sqrt(2), 2 ...) includes it.
    """
    if not (
        isinstance(eps, int | float | np.floating | np.integer) and math.isfinite(eps) and eps > 0
    ):
        raise ValueError(f"dbscan_grid: eps must be a positive number of die pitches, got {eps!r}")
    r = math.floor(eps) + 1
    dxs = []
    dys = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if math.sqrt(float(dx * dx + dy * dy)) <= eps:
                dxs.append(dx)
                dys.append(dy)
    return np.array(dxs, dtype=np.int64), np.array(dys, dtype=np.int64)


@numba.njit(**JIT)
def _root(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@numba.njit(**JIT)
def _dbscan_plane(fail, out, dxs, dys, min_samples):
    ny, nx = fail.shape
    # point index of each fail cell in raster order (-1 elsewhere)
    pid = np.empty((ny, nx), dtype=np.int32)
    n = 0
    for y in range(ny):
        for x in range(nx):
            if fail[y, x] > 0:
                pid[y, x] = n
                n += 1
            else:
                pid[y, x] = -1
                out[y, x] = 0
    if n == 0:
        return 0
    px = np.empty(n, dtype=np.int64)
    py = np.empty(n, dtype=np.int64)
    core = np.zeros(n, dtype=np.bool_)
    k = 0
    for y in range(ny):
        for x in range(nx):
            if pid[y, x] >= 0:
                px[k] = x
                py[k] = y
                k += 1
    n_off = dxs.size
    for i in range(n):
        x = px[i]
        y = py[i]
        cnt = 0
        for o in range(n_off):
            xx = x + dxs[o]
            yy = y + dys[o]
            if 0 <= xx < nx and 0 <= yy < ny and pid[yy, xx] >= 0:
                cnt += 1
        core[i] = cnt >= min_samples
    # core points within eps of each other form one cluster (union-find, smallest index as root)
    parent = np.arange(n).astype(np.int32)
    for i in range(n):
        if not core[i]:
            continue
        x = px[i]
        y = py[i]
        for o in range(n_off):
            xx = x + dxs[o]
            yy = y + dys[o]
            if 0 <= xx < nx and 0 <= yy < ny:
                j = pid[yy, xx]
                if j > i and core[j]:
                    ri = _root(parent, i)
                    rj = _root(parent, j)
                    if ri < rj:
                        parent[rj] = ri
                    elif rj < ri:
                        parent[ri] = rj
    cluster = np.zeros(n, dtype=np.int32)
    n_clusters = 0
    for i in range(n):
        if core[i]:
            r = _root(parent, i)
            if r == i:
                n_clusters += 1
                cluster[i] = n_clusters
            else:
                cluster[i] = cluster[r]
    for i in range(n):
        x = px[i]
        y = py[i]
        if core[i]:
            out[y, x] = cluster[i]
            continue
        best = 0
        for o in range(n_off):
            xx = x + dxs[o]
            yy = y + dys[o]
            if 0 <= xx < nx and 0 <= yy < ny:
                j = pid[yy, xx]
                if j >= 0 and core[j] and (best == 0 or cluster[j] < best):
                    best = cluster[j]
        out[y, x] = best if best > 0 else -1
    return n_clusters


@numba.njit(**PARALLEL_JIT)
def _dbscan_grid(fail, dxs, dys, min_samples):
    n_w, ny, nx = fail.shape
    labels = np.empty((n_w, ny, nx), dtype=np.int32)
    counts = np.zeros(n_w, dtype=np.int64)
    for w in numba.prange(n_w):
        counts[w] = _dbscan_plane(fail[w], labels[w], dxs, dys, min_samples)
    return labels, counts


def dbscan_grid(fail, eps: float = 1.5, min_samples: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """DBSCAN clusters of the failing die of each wafer.

    Parameters
    ----------
    fail : array (n_wafers, ny, nx) or (ny, nx)
        Fail mask: bool, or integer with ``> 0`` = fail (an int8 state grid works as is).
    eps : float
        Neighbourhood radius in die pitches (default 1.5: the 8-neighbourhood, DOMAIN §3.1).
    min_samples : int
        Points (the point itself included) within ``eps`` that make a core point (default 3).

    Returns
    -------
    labels : int32 array, same shape as ``fail``
        0 = not a fail, -1 = noise, 1..k = cluster, numbered in raster order of each cluster's
        first core point (scikit-learn's label + 1 on the raster-ordered fail coordinates).
    n_clusters : int64 array (n_wafers,)
    """
    if not isinstance(min_samples, int | np.integer) or min_samples < 1:
        raise ValueError(f"dbscan_grid: min_samples must be an integer >= 1, got {min_samples!r}")
    arr = np.asarray(fail)
    if arr.dtype == np.bool_ or arr.dtype == np.int8:
        fg, squeeze = as_stack("dbscan_grid", arr, np.int8)
    else:
        fg, squeeze = as_stack("dbscan_grid", arr > 0, np.int8)
    dxs, dys = eps_offsets(eps)
    labels, counts = _dbscan_grid(fg, dxs, dys, int(min_samples))
    return (labels[0] if squeeze else labels), counts
