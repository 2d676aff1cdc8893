"""Cluster ("potato") inking: ink rings of good die around large clusters of bad die.

DOMAIN §2.6 (Galaxy PAT-Man defaults, implemented from the definitions only):

* a cluster is a connected region of bad die (4-connectivity by default: diagonal-only contact
  does not join) with at least ``min_size`` die (default 50; a negative value means that percent
  of the wafer's die);
* with ``ignore_lines`` (default) a cluster one die wide or one die high (a scratch along a row or
  column) is not inked;
* ``rings`` (default 1) outline steps are inked around the kept clusters. Full outline: step ``r``
  inks every good die that has an 8-neighbour in the clusters or in the ink of steps ``< r``.
  Light outline: step ``r`` inks a good die only when the weighted count of such neighbours in its
  window (adjacent 2, diagonal 1 in 3x3; see ``gdbn_weights``) reaches ``threshold`` (default 8),
  the count of an edge die (one with an off-wafer 8-neighbour) multiplied by ``edge_scale``
  (default 1.1).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from backend_fab_kernels._config import JIT
from backend_fab_kernels._grid import check_connectivity, state_stack
from backend_fab_kernels.components import _label_plane
from backend_fab_kernels.gdbn import gdbn_weights

__all__ = ["cluster_ink"]


@numba.njit(**JIT)
def _ink_plane(state, ink, min_size, conn8, ignore_lines, rings, weights, threshold, scale):
    ny, nx = state.shape
    lab = np.empty((ny, nx), dtype=np.int32)
    n = _label_plane(state, lab, conn8)
    if n == 0:
        return
    size = np.zeros(n + 1, dtype=np.int64)
    xmin = np.full(n + 1, nx, dtype=np.int64)
    xmax = np.full(n + 1, -1, dtype=np.int64)
    ymin = np.full(n + 1, ny, dtype=np.int64)
    ymax = np.full(n + 1, -1, dtype=np.int64)
    for y in range(ny):
        for x in range(nx):
            v = lab[y, x]
            if v:
                size[v] += 1
                xmin[v] = min(xmin[v], x)
                xmax[v] = max(xmax[v], x)
                ymin[v] = min(ymin[v], y)
                ymax[v] = max(ymax[v], y)
    keep = np.zeros(n + 1, dtype=np.bool_)
    any_kept = False
    for v in range(1, n + 1):
        line = xmin[v] == xmax[v] or ymin[v] == ymax[v]
        keep[v] = size[v] >= min_size and not (ignore_lines and line)
        any_kept |= keep[v]
    if not any_kept:
        return
    # seed: 1 on cells of kept clusters; ink cells join it step by step
    seed = np.zeros((ny, nx), dtype=np.uint8)
    for y in range(ny):
        for x in range(nx):
            if keep[lab[y, x]]:
                seed[y, x] = 1
    h = weights.shape[0] // 2
    new = np.zeros((ny, nx), dtype=np.uint8)
    for _ in range(rings):
        added = False
        for y in range(ny):
            for x in range(nx):
                new[y, x] = 0
                if state[y, x] != 0 or seed[y, x]:
                    continue
                s = 0.0
                edge = False
                for dy in range(-h, h + 1):
                    yy = y + dy
                    for dx in range(-h, h + 1):
                        xx = x + dx
                        inside = 0 <= yy < ny and 0 <= xx < nx
                        if inside and seed[yy, xx]:
                            s += weights[dy + h, dx + h]
                        if abs(dx) <= 1 and abs(dy) <= 1 and (not inside or state[yy, xx] < 0):
                            edge = True
                if edge:
                    s *= scale
                if s >= threshold:
                    new[y, x] = 1
                    added = True
        if not added:
            break
        for y in range(ny):
            for x in range(nx):
                if new[y, x]:
                    seed[y, x] = 1
                    ink[y, x] = 1


@numba.njit(**JIT)
def _cluster_ink(state, min_size, conn8, ignore_lines, rings, weights, threshold, scale):
    n_w, ny, nx = state.shape
    ink = np.zeros((n_w, ny, nx), dtype=np.uint8)
    for w in range(n_w):  # light next to the lot's other rules: serial, which compiles faster
        _ink_plane(
            state[w], ink[w], min_size[w], conn8, ignore_lines, rings, weights, threshold, scale
        )
    return ink


def cluster_ink(
    state,
    min_size: float = 50,
    rings: int = 1,
    *,
    connectivity: int = 4,
    ignore_lines: bool = True,
    light_outline: bool = False,
    window: int = 3,
    ring_weights=None,
    threshold: float = 8.0,
    edge_scale: float = 1.1,
) -> np.ndarray:
    """Good die to ink around large clusters of bad die (definitions in the module docstring).

    Parameters
    ----------
    state : int8 state grid (n_wafers, ny, nx) or (ny, nx): -1 no die, 0 good, 1 bad
    min_size : least cluster size in die (default 50); negative: percent of the wafer's die
    rings : outline steps to ink (default 1; 0 inks nothing)
    connectivity : 4 (default, diagonal-only contact does not join) or 8
    ignore_lines : skip clusters one die wide or high (default True)
    light_outline : weight the outline (default False: every neighbour of the cluster is inked)
    window, ring_weights, threshold, edge_scale : light-outline weighting (see ``gdbn_weights``)

    Returns
    -------
    ink : uint8 array like ``state``; 1 = good die to ink.
    """
    st, squeeze = state_stack("cluster_ink", state)
    conn = check_connectivity("cluster_ink", connectivity)
    if not isinstance(rings, int | np.integer) or rings < 0:
        raise ValueError(f"cluster_ink: rings must be an integer >= 0, got {rings!r}")
    if not math.isfinite(min_size) or min_size == 0 or min_size < -100:
        raise ValueError(
            f"cluster_ink: min_size must be a die count >= 1 or a percentage in [-100, 0), got {min_size!r}"
        )
    n_w = st.shape[0]
    if min_size > 0:
        sizes = np.full(n_w, math.ceil(min_size), dtype=np.int64)
    else:
        n_die = (st >= 0).reshape(n_w, -1).sum(axis=1)
        sizes = np.maximum(1, np.ceil(n_die * (-float(min_size)) / 100.0)).astype(np.int64)
    if light_outline:
        weights = gdbn_weights(window, ring_weights)
        thr = float(threshold)
        scale = float(edge_scale)
        if not (math.isfinite(thr) and math.isfinite(scale) and scale > 0):
            raise ValueError("cluster_ink: threshold and edge_scale must be finite, edge_scale > 0")
    else:
        weights = np.ones((3, 3), dtype=np.float64)
        thr = 1.0
        scale = 1.0
    ink = _cluster_ink(st, sizes, conn == 8, bool(ignore_lines), int(rings), weights, thr, scale)
    return ink[0] if squeeze else ink
