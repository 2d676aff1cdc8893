"""Connected components of fail masks and per-component cluster features.

``label_components`` labels 4-connected (rook) or 8-connected (queen) regions of failing die with
a one-scan union-find (the 8-connectivity decision tree of Wu, Otoo & Suzuki, "Optimizing two-pass
connected-component labeling algorithms", Pattern Anal. Appl. 12, 2009), numbering components in
raster order of their first cell: the same labels as ``scipy.ndimage.label``.

``component_features`` measures every component: size, bounding box, centroid radius r/R and
angle, angular span, second-moment eccentricity and linearity (scratches), axis lengths, solidity
(convex hull of the die squares) and whether it touches the wafer edge (DOMAIN §3.1).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from backend_fab_kernels._config import JIT, PARALLEL_JIT
from backend_fab_kernels._grid import as_stack, check_connectivity, writable

__all__ = ["FEATURE_NAMES", "component_features", "label_components"]

#: Columns of the array returned by :func:`component_features`.
FEATURE_NAMES: tuple[str, ...] = (
    "wafer",  # index of the wafer in the stack
    "label",  # component label (1..n, as label_components numbers them)
    "size",  # number of die
    "x_min",  # bounding box, grid column / row indices (inclusive)
    "x_max",
    "y_min",
    "y_max",
    "centroid_x",  # mean column / row index of the die
    "centroid_y",
    "radius",  # distance of the centroid from the wafer centre / wafer radius (r/R)
    "angle",  # direction of the centroid from the wafer centre, degrees in [0, 360), 0 = +x, CCW
    "radius_min",  # smallest / largest r/R of the component's die
    "radius_max",
    "angular_span",  # degrees of the circle the die cover: 360 minus the largest empty gap
    "eccentricity",  # sqrt(1 - l2/l1), l1 >= l2 the eigenvalues of the second central moments
    "linearity",  # (l1 - l2) / (l1 + l2): 0 isotropic, 1 a straight line (scratch)
    "major_axis",  # 4 sqrt(l1), 4 sqrt(l2): axis lengths of the equal-moment ellipse, die pitches
    "minor_axis",
    "solidity",  # size / area of the convex hull of the die squares
    "touches_edge",  # 1 when a die has an 8-neighbour off the wafer (no die) or off the grid
)
N_FEATURES = len(FEATURE_NAMES)


@numba.njit(**JIT)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@numba.njit(**JIT)
def _union(parent, a, b):
    # the smaller label becomes the root, so a root is the first label of its component
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
        return ra
    if rb < ra:
        parent[ra] = rb
        return rb
    return ra


@numba.njit(**JIT)
def _label_plane(fg, out, conn8):
    """Label one (ny, nx) plane: ``fg > 0`` is foreground; writes ``out``; returns the count."""
    ny, nx = fg.shape
    parent = np.empty(ny * nx // 2 + 2, dtype=np.int32)
    nl = 0
    for y in range(ny):
        for x in range(nx):
            if fg[y, x] <= 0:
                out[y, x] = 0
                continue
            left = out[y, x - 1] if x > 0 else 0
            if y == 0:
                if left:
                    out[y, x] = left
                else:
                    nl += 1
                    parent[nl] = nl
                    out[y, x] = nl
                continue
            up = out[y - 1, x]
            if not conn8:
                if up and left:
                    out[y, x] = _union(parent, up, left)
                elif up:
                    out[y, x] = up
                elif left:
                    out[y, x] = left
                else:
                    nl += 1
                    parent[nl] = nl
                    out[y, x] = nl
                continue
            if up:
                # every other earlier neighbour touches `up`, so it is already in its component
                out[y, x] = up
                continue
            upr = out[y - 1, x + 1] if x + 1 < nx else 0
            upl = out[y - 1, x - 1] if x > 0 else 0
            if upr:
                if upl:
                    out[y, x] = _union(parent, upr, upl)
                elif left:
                    out[y, x] = _union(parent, upr, left)
                else:
                    out[y, x] = upr
            elif upl:
                out[y, x] = upl
            elif left:
                out[y, x] = left
            else:
                nl += 1
                parent[nl] = nl
                out[y, x] = nl
    if nl == 0:
        return 0
    final = np.empty(nl + 1, dtype=np.int32)
    final[0] = 0
    count = 0
    for lab in range(1, nl + 1):
        root = _find(parent, lab)
        if root == lab:
            count += 1
            final[lab] = count
        else:
            final[lab] = final[root]
    for y in range(ny):
        for x in range(nx):
            v = out[y, x]
            if v:
                out[y, x] = final[v]
    return count


@numba.njit(**PARALLEL_JIT)
def _label_components(fg, conn8):
    n_w, ny, nx = fg.shape
    labels = np.empty((n_w, ny, nx), dtype=np.int32)
    counts = np.zeros(n_w, dtype=np.int64)
    for w in numba.prange(n_w):
        counts[w] = _label_plane(fg[w], labels[w], conn8)
    return labels, counts


def label_components(fail, connectivity: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected regions of failing die on each wafer.

    Parameters
    ----------
    fail : array (n_wafers, ny, nx) or (ny, nx)
        Fail mask: bool, or integer where ``> 0`` is a fail (an int8 state grid with -1 no die,
        0 good, 1 bad works as is). Read-only arrays are fine.
    connectivity : 4 or 8
        4 = rook (edges), 8 = queen (edges and corners).

    Returns
    -------
    labels : int32 array, same shape as ``fail``
        0 = not a fail; 1..n per wafer, numbered in raster order (row ``iy`` then column ``ix``) of
        each component's first cell: identical to ``scipy.ndimage.label`` with the cross (4) or
        3x3 (8) structuring element.
    n_labels : int64 array (n_wafers,)
        Number of components per wafer.
    """
    conn = check_connectivity("label_components", connectivity)
    arr = np.asarray(fail)
    if arr.dtype == np.bool_ or arr.dtype == np.int8:
        fg, squeeze = as_stack("label_components", arr, np.int8)
    else:
        fg, squeeze = as_stack("label_components", arr > 0, np.int8)
    labels, counts = _label_components(fg, conn == 8)
    return (labels[0] if squeeze else labels), counts


@numba.njit(**JIT)
def _cross(ox, oy, ax, ay, bx, by):
    return (ax - ox) * (by - oy) - (ay - oy) * (bx - ox)


@numba.njit(**JIT)
def _hull_area2(px, py, n):
    """Twice the area of the convex hull of the first ``n`` integer points, which must be sorted
    by (py, px) (Andrew's monotone chain with the axes swapped)."""
    if n < 3:
        return 0
    hx = np.empty(2 * n + 1, dtype=np.int64)
    hy = np.empty(2 * n + 1, dtype=np.int64)
    k = 0
    for j in range(n):  # one chain
        while k >= 2 and _cross(hx[k - 2], hy[k - 2], hx[k - 1], hy[k - 1], px[j], py[j]) <= 0:
            k -= 1
        hx[k] = px[j]
        hy[k] = py[j]
        k += 1
    first = k + 1
    for j in range(n - 2, -1, -1):  # the other chain
        while k >= first and _cross(hx[k - 2], hy[k - 2], hx[k - 1], hy[k - 1], px[j], py[j]) <= 0:
            k -= 1
        hx[k] = px[j]
        hy[k] = py[j]
        k += 1
    area2 = np.int64(0)
    for i in range(k - 1):
        area2 += hx[i] * hy[i + 1] - hx[i + 1] * hy[i]
    return abs(area2)


@numba.njit(**JIT)
def _sort_inplace(a):
    """Heapsort of a 1-d float array (numba's own sort takes seconds to compile)."""
    n = a.size
    for start in range((n - 2) // 2, -1, -1):
        _sift(a, start, n - 1)
    for end in range(n - 1, 0, -1):
        t = a[end]
        a[end] = a[0]
        a[0] = t
        _sift(a, 0, end - 1)


@numba.njit(**JIT)
def _sift(a, root, end):
    while True:
        child = 2 * root + 1
        if child > end:
            return
        if child + 1 <= end and a[child] < a[child + 1]:
            child += 1
        if a[root] < a[child]:
            t = a[root]
            a[root] = a[child]
            a[child] = t
            root = child
        else:
            return


@numba.njit(**JIT)
def _features_plane(lab, nlab, state, has_state, cx, cy, rx, ry, out):
    ny, nx = lab.shape
    counts = np.zeros(nlab + 2, dtype=np.int64)
    for y in range(ny):
        for x in range(nx):
            counts[lab[y, x] + 1] += 1
    # counting sort of the cells by label; cells of a label stay in raster order
    start = np.zeros(nlab + 2, dtype=np.int64)
    for i in range(1, nlab + 2):
        start[i] = start[i - 1] + counts[i - 1]
    n_fg = ny * nx - counts[1]
    cells = np.empty(max(n_fg, 1), dtype=np.int64)
    fill = start.copy()
    for y in range(ny):
        for x in range(nx):
            v = lab[y, x]
            if v > 0:
                cells[fill[v + 1] - start[2]] = y * nx + x
                fill[v + 1] += 1
    deg = 180.0 / math.pi
    for lab_id in range(1, nlab + 1):
        row = out[lab_id - 1]
        lo = start[lab_id + 1] - start[2]
        n = counts[lab_id + 1]
        sx = 0.0
        sy = 0.0
        xmin = nx
        xmax = -1
        ymin = ny
        ymax = -1
        rmin = np.inf
        rmax = 0.0
        touches = 0
        ang = np.empty(n, dtype=np.float64)
        for i in range(n):
            c = cells[lo + i]
            y = c // nx
            x = c - y * nx
            sx += x
            sy += y
            xmin = min(xmin, x)
            xmax = max(xmax, x)
            ymin = min(ymin, y)
            ymax = max(ymax, y)
            dx = (x - cx) / rx
            dy = (y - cy) / ry
            r = math.sqrt(dx * dx + dy * dy)
            rmin = min(rmin, r)
            rmax = max(rmax, r)
            a = math.atan2(dy, dx) * deg
            ang[i] = a + 360.0 if a < 0.0 else a
            if not touches:
                for yy in range(y - 1, y + 2):
                    for xx in range(x - 1, x + 2):
                        off_grid = yy < 0 or yy >= ny or xx < 0 or xx >= nx
                        if off_grid or (has_state and state[yy, xx] < 0):
                            touches = 1
        mx = sx / n
        my = sy / n
        sxx = 0.0
        syy = 0.0
        sxy = 0.0
        for i in range(n):
            c = cells[lo + i]
            y = c // nx
            x = c - y * nx
            sxx += (x - mx) * (x - mx)
            syy += (y - my) * (y - my)
            sxy += (x - mx) * (y - my)
        a = sxx / n
        b = sxy / n
        d = syy / n
        half = 0.5 * (a + d)
        disc = math.sqrt(0.25 * (a - d) * (a - d) + b * b)
        l1 = half + disc
        l2 = max(half - disc, 0.0)
        ecc = math.sqrt(max(0.0, 1.0 - l2 / l1)) if l1 > 0.0 else 0.0
        lin = (l1 - l2) / (l1 + l2) if l1 + l2 > 0.0 else 0.0
        _sort_inplace(ang)
        gap = ang[0] + 360.0 - ang[n - 1]
        for i in range(1, n):
            gap = max(gap, ang[i] - ang[i - 1])
        # convex hull of the die squares in doubled integer coordinates (cell x spans 2x-1..2x+1):
        # on each horizontal corner line only the leftmost and rightmost corners can be hull
        # vertices; a row without cells adds nothing (labels need not be connected, e.g. DBSCAN)
        nrow = ymax - ymin + 1
        left = np.full(nrow, nx, dtype=np.int64)
        right = np.full(nrow, -1, dtype=np.int64)
        for i in range(n):
            c = cells[lo + i]
            y = c // nx
            x = c - y * nx
            left[y - ymin] = min(left[y - ymin], x)
            right[y - ymin] = max(right[y - ymin], x)
        px = np.empty(2 * (nrow + 1), dtype=np.int64)
        py = np.empty(2 * (nrow + 1), dtype=np.int64)
        m = 0
        for k in range(nrow + 1):
            lo_x = nx
            hi_x = -1
            if k < nrow and right[k] >= 0:
                lo_x = left[k]
                hi_x = right[k]
            if k > 0 and right[k - 1] >= 0:
                lo_x = min(lo_x, left[k - 1])
                hi_x = max(hi_x, right[k - 1])
            if hi_x < 0:
                continue
            px[m] = 2 * lo_x - 1
            py[m] = 2 * (ymin + k) - 1
            px[m + 1] = 2 * hi_x + 1
            py[m + 1] = 2 * (ymin + k) - 1
            m += 2
        hull = _hull_area2(px, py, m) / 8.0
        cdx = (mx - cx) / rx
        cdy = (my - cy) / ry
        cang = math.atan2(cdy, cdx) * deg
        row[1] = lab_id
        row[2] = n
        row[3] = xmin
        row[4] = xmax
        row[5] = ymin
        row[6] = ymax
        row[7] = mx
        row[8] = my
        row[9] = math.sqrt(cdx * cdx + cdy * cdy)
        row[10] = cang + 360.0 if cang < 0.0 else cang
        row[11] = rmin
        row[12] = rmax
        row[13] = 360.0 - gap
        row[14] = ecc
        row[15] = lin
        row[16] = 4.0 * math.sqrt(l1)
        row[17] = 4.0 * math.sqrt(l2)
        row[18] = n / hull if hull > 0.0 else 1.0
        row[19] = touches


@numba.njit(**JIT)
def _component_features(labels, n_labels, offsets, state, has_state, cx, cy, rx, ry):
    n_w = labels.shape[0]
    out = np.zeros((offsets[n_w], N_FEATURES), dtype=np.float64)
    for w in range(n_w):  # cheap next to labelling: serial, which compiles seconds faster
        st = state[w] if has_state else state[0]
        _features_plane(
            labels[w], n_labels[w], st, has_state, cx, cy, rx, ry, out[offsets[w] : offsets[w + 1]]
        )
    return out


def component_features(
    labels,
    n_labels,
    state=None,
    center: tuple[float, float] | None = None,
    radius: float | tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every component labelled by :func:`label_components`.

    Parameters
    ----------
    labels : int32 array (n_wafers, ny, nx) or (ny, nx)
        Labels 1..n per wafer, as :func:`label_components` returns them (0 = background).
    n_labels : int array (n_wafers,)
        Component count per wafer.
    state : int8 state grid of the same shape, optional
        Where the die are (``>= 0``); a component die with an 8-neighbour that is no die (``-1``)
        or off the grid touches the edge. Without it, only the grid border is the edge.
    center : (cx, cy), optional
        Wafer centre in grid index units (column, row; fractional allowed). Default: the grid
        centre ``((nx - 1) / 2, (ny - 1) / 2)``.
    radius : float or (rx, ry), optional
        Wafer radius in die pitches (per axis for non-square die). Default: the largest distance
        from the centre to a die cell (to any cell without ``state``) plus half a pitch.

    Returns
    -------
    features : float64 array (n_components, len(FEATURE_NAMES))
        One row per component, wafer by wafer, label by label; columns as in
        :data:`FEATURE_NAMES` (grid index units; angles in degrees, counter-clockwise from +x).
    offsets : int64 array (n_wafers + 1,)
        Rows ``offsets[w]:offsets[w + 1]`` belong to wafer ``w``.
    """
    lab, _ = as_stack("component_features", labels, np.int32)
    n_w, ny, nx = lab.shape
    nl = writable(np.ascontiguousarray(np.atleast_1d(n_labels), dtype=np.int64))
    if nl.shape != (n_w,):
        raise ValueError(f"component_features: n_labels must have shape ({n_w},), got {nl.shape}")
    if lab.size and (lab.min() < 0 or np.any(lab.reshape(n_w, -1).max(axis=1) > nl)):
        raise ValueError("component_features: labels must lie in 0..n_labels[w] on each wafer")
    if state is None:
        st = np.zeros((1, 1, 1), dtype=np.int8)
        has_state = False
    else:
        from backend_fab_kernels._grid import state_stack

        st, _ = state_stack("component_features", state)
        if st.shape != lab.shape:
            raise ValueError(f"component_features: state has shape {st.shape}, labels {lab.shape}")
        has_state = True
    if center is None:
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    else:
        cx, cy = (float(v) for v in center)
    if radius is None:
        gy, gx = np.mgrid[0:ny, 0:nx]
        d = np.hypot(gx - cx, gy - cy)
        cells = (st >= 0).any(axis=0) if has_state else np.ones((ny, nx), dtype=bool)
        r = float(d[cells].max()) + 0.5 if cells.any() else 0.5
        rx = ry = r
    elif np.ndim(radius) == 0:
        rx = ry = float(radius)
    else:
        rx, ry = (float(v) for v in radius)
    if not (rx > 0 and ry > 0 and math.isfinite(rx) and math.isfinite(ry)):
        raise ValueError(f"component_features: radius must be positive and finite, got {radius!r}")
    offsets = np.zeros(n_w + 1, dtype=np.int64)
    np.cumsum(nl, out=offsets[1:])
    feats = _component_features(lab, nl, offsets, st, has_state, cx, cy, rx, ry)
    feats[:, 0] = np.repeat(np.arange(n_w, dtype=np.float64), nl)
    return feats, offsets
