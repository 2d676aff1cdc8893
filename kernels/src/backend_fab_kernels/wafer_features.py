"""Wafer-map pattern features on die grids (WM-811K style), one row of floats per wafer.

Input: the die of many wafers as flat arrays ``x``, ``y`` (integer die coordinates), ``fail``
(bool) and int64 ``offsets`` (wafer ``w`` owns rows ``offsets[w]:offsets[w + 1]``). Each wafer is
first scattered into a dense grid over the bounding box of its die (-1 no die, 0 pass, 1 fail), and
every feature is computed by scanning that grid in raster order, so the result does not depend on
the order of the die rows (bit for bit). Positions are normalised by the wafer radius,
``u = (2 ix - (nx - 1)) / nx`` and ``v = (2 iy - (ny - 1)) / ny`` (``ix``, ``iy`` grid indices), so
the die map fills the unit disk whatever its die count or die aspect ratio; the features are
therefore comparable across wafer sizes without resampling the grid.

Feature groups (:data:`FEATURE_NAMES` gives the column names, :data:`FEATURE_GROUPS` the slices):

* ``density`` (13, Wu et al. 2015): fail fraction in a fixed partition of the normalised map into a
  5 x 5 grid of bands of width 0.4; the 9 inner cells separately, the outer ring split into 4 sectors
  by direction (``y+``, ``x+``, ``y-``, ``x-``: the side where ``|v| > |u|`` or ``|u| >= |v|``).
* ``radon`` (40, Wu et al. 2015): see :mod:`backend_fab_kernels.radon`.
* ``line`` (2): the strongest thin line of fails in the Radon projections (a scratch detector):
  the z-score and the fail-fraction excess of a projection bin over its neighbours two bins away,
  maximised over angles and bins (see ``radon._ridge``).
* ``geometry`` (6, Wu et al. 2015) of the most salient fail region: area (fraction of the wafer's
  die), perimeter (die edges / sqrt(die count)), major and minor axis length (``4 sqrt(l)`` of the
  region's second moments in die pitches, over the diameter of the disk with the wafer's die
  count), eccentricity ``sqrt(1 - l2 / l1)``, solidity (die count / area of the convex hull of
  the die squares). The salient region is the largest 8-connected component of the denoised fail
  map (a fail die is kept when it has at least two failing 8-neighbours, or neighbours such a
  die), ties going to the component met first in raster order. Labels and shape measures come from
  :mod:`backend_fab_kernels.components` (``_label_plane``, ``_features_plane``).
* ``cluster`` (8, DOMAIN.md 3.1): centroid radius r/R of the salient region, its angular span
  (degrees of the circle its die cover, 360 minus the largest empty gap, over 360), its edge share
  (share of its die in die rings 0-1), thinness (die count / (perimeter / 2)^2: 0.25 for a square,
  ~1/length for a line), the number of components of at least ``max(5, round(0.003 N))`` die, the
  share of fails in those components, the size of the second-largest component over the largest,
  and the share of fails kept by denoising.
* ``correlogram`` (4): join-count correlation at lags 1..4 (queen directions), see
  :func:`join_count_correlogram`.
* ``radial`` (12): fail fraction in 8 equal-area rings (``floor(8 r^2)``, r clipped to 1) and in the
  die rings 0..3 counted from the edge (ring 0 = die with an 8-neighbour off the wafer; ring k = the
  chessboard distance to the nearest position without a die, minus one, as in ``Layout.ring_index``).
* ``angular`` (18): fail fraction in 8 sectors of the whole wafer and 8 sectors of the outer zone
  (r >= 0.7), each sorted in decreasing order (invariant to rotation by multiples of 45 degrees), and
  the mean resultant length of the fail directions seen from the centre, whole wafer and outer zone
  (0 = spread evenly, 1 = all in one direction; a die at the exact centre has no direction and adds
  a zero vector).

Bands, rings, sectors and the outer zone are decided in integer arithmetic on ``2 ix - (nx - 1)``
and ``2 iy - (ny - 1)``, so a die on a border always falls on the same side (sectors are half-open
the way ``atan2`` is: ``floor((atan2(v, u) + pi) / (pi / 4))``, 7 for the negative u axis).
* ``global`` (1): fail fraction.

An empty wafer (no die) gives a row of NaN.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from backend_fab_kernels._config import JIT, PARALLEL_JIT
from backend_fab_kernels.components import FEATURE_NAMES as _COMPONENT_NAMES
from backend_fab_kernels.components import _features_plane, _label_plane
from backend_fab_kernels.radon import (
    RADON_POINTS,
    _fill_grid,
    _radon_on_grid,
    raise_on_duplicates,
    validate_die_groups,
)

__all__ = [
    "FEATURE_GROUPS",
    "FEATURE_NAMES",
    "N_FEATURES",
    "angular_features",
    "density_features",
    "join_count_correlogram",
    "radial_features",
    "radon_profile",
    "region_features",
    "wafer_features",
]

RADON_ANGLES = 36
MAX_LAG = 4
_N_SECTORS = 8
_SPAN_SECTORS = 36
_OUTER_R = 0.7

_DENSITY_NAMES = (
    *(f"density_inner_{r}{c}" for r in range(3) for c in range(3)),
    "density_edge_ypos",
    "density_edge_xpos",
    "density_edge_yneg",
    "density_edge_xneg",
)
_RADON_NAMES = tuple(f"radon_mean_{i:02d}" for i in range(RADON_POINTS)) + tuple(
    f"radon_std_{i:02d}" for i in range(RADON_POINTS)
)
_LINE_NAMES = ("radon_ridge_z", "radon_ridge_excess")
_GEOMETRY_NAMES = (
    "geom_area",
    "geom_perimeter",
    "geom_major_axis",
    "geom_minor_axis",
    "geom_eccentricity",
    "geom_solidity",
)
_CLUSTER_NAMES = (
    "cluster_centroid_r",
    "cluster_angular_span",
    "cluster_edge_share",
    "cluster_thinness",
    "cluster_count",
    "cluster_fail_share",
    "cluster_second_ratio",
    "cluster_kept_share",
)
_CORRELOGRAM_NAMES = tuple(f"joincount_rho_{d}" for d in range(1, MAX_LAG + 1))
_RADIAL_NAMES = tuple(f"radial_ring_{k}" for k in range(8)) + tuple(
    f"radial_depth_{k}" for k in range(4)
)
_ANGULAR_NAMES = (
    tuple(f"angular_sorted_{k}" for k in range(_N_SECTORS))
    + tuple(f"angular_outer_sorted_{k}" for k in range(_N_SECTORS))
    + ("angular_concentration", "angular_outer_concentration")
)
_GLOBAL_NAMES = ("fail_fraction",)

_GROUPS = (
    ("density", _DENSITY_NAMES),
    ("radon", _RADON_NAMES),
    ("line", _LINE_NAMES),
    ("geometry", _GEOMETRY_NAMES),
    ("cluster", _CLUSTER_NAMES),
    ("correlogram", _CORRELOGRAM_NAMES),
    ("radial", _RADIAL_NAMES),
    ("angular", _ANGULAR_NAMES),
    ("global", _GLOBAL_NAMES),
)

#: Column names of :func:`wafer_features`, in order.
FEATURE_NAMES: tuple[str, ...] = tuple(n for _, names in _GROUPS for n in names)
#: Number of columns of :func:`wafer_features`.
N_FEATURES = len(FEATURE_NAMES)


def _group_slices() -> dict[str, slice]:
    out, start = {}, 0
    for name, names in _GROUPS:
        out[name] = slice(start, start + len(names))
        start += len(names)
    return out


#: Group name -> column slice of :func:`wafer_features`.
FEATURE_GROUPS: dict[str, slice] = _group_slices()

_O_DENSITY = FEATURE_GROUPS["density"].start
_O_RADON = FEATURE_GROUPS["radon"].start
_O_LINE = FEATURE_GROUPS["line"].start
_O_GEOMETRY = FEATURE_GROUPS["geometry"].start
_O_CORRELOGRAM = FEATURE_GROUPS["correlogram"].start
_O_RADIAL = FEATURE_GROUPS["radial"].start
_O_ANGULAR = FEATURE_GROUPS["angular"].start
_O_GLOBAL = FEATURE_GROUPS["global"].start
_N_REGION = len(_GEOMETRY_NAMES) + len(_CLUSTER_NAMES)

_N_COMPONENT_FEATURES = len(_COMPONENT_NAMES)
_C_SIZE = _COMPONENT_NAMES.index("size")
_C_RADIUS = _COMPONENT_NAMES.index("radius")
_C_SPAN = _COMPONENT_NAMES.index("angular_span")
_C_ECCENTRICITY = _COMPONENT_NAMES.index("eccentricity")
_C_MAJOR = _COMPONENT_NAMES.index("major_axis")
_C_MINOR = _COMPONENT_NAMES.index("minor_axis")
_C_SOLIDITY = _COMPONENT_NAMES.index("solidity")


# --- per-grid helpers ------------------------------------------------------------------------


@njit(**JIT)
def _depth_grid(grid):
    """Ring index of each die (chessboard distance to the nearest non-die cell, minus one).

    Two-pass chamfer with the 3x3 chessboard mask (exact for that metric) on a copy padded with
    one ring of non-die cells, so no neighbour read needs a bounds check. Non-die cells get -1.
    """
    ny, nx = grid.shape
    d = np.zeros((ny + 2, nx + 2), dtype=np.int32)
    for iy in range(ny):
        for ix in range(nx):
            if grid[iy, ix] >= 0:
                d[iy + 1, ix + 1] = 1
    for iy in range(1, ny + 1):
        for ix in range(1, nx + 1):
            if d[iy, ix] == 0:
                continue
            m = min(min(d[iy - 1, ix - 1], d[iy - 1, ix]), min(d[iy - 1, ix + 1], d[iy, ix - 1]))
            d[iy, ix] = m + 1
    for iy in range(ny, 0, -1):
        for ix in range(nx, 0, -1):
            if d[iy, ix] == 0:
                continue
            m = min(min(d[iy + 1, ix + 1], d[iy + 1, ix]), min(d[iy + 1, ix - 1], d[iy, ix + 1]))
            if m + 1 < d[iy, ix]:
                d[iy, ix] = m + 1
    out = np.empty((ny, nx), dtype=np.int32)
    for iy in range(ny):
        for ix in range(nx):
            out[iy, ix] = d[iy + 1, ix + 1] - 1
    return out


@njit(**JIT)
def _sector8(a, b):
    """Sector ``min(7, floor((atan2(b, a) + pi) / (pi / 4)))`` of the direction ``(a, b)``, decided
    on integers (borders are the axes and diagonals, so no rounding can move a die across one)."""
    if b == 0:
        return 7 if a < 0 else 4
    if b < 0:
        if a < 0:
            return 0 if -b < -a else 1
        if a == 0:
            return 2
        return 2 if -b > a else 3
    if a > 0:
        return 4 if b < a else 5
    if a == 0:
        return 6
    return 6 if b > -a else 7


@njit(**JIT)
def _profiles_on_grid(grid, depth, out_density, out_radial, out_angular):
    """Density (13), radial (12) and angular (18) features in one raster pass.

    Bands, rings, sectors and the outer zone are decided on the integers ``a = (2 ix - (nx - 1))
    ny`` and ``b = (2 iy - (ny - 1)) nx`` (``u = a / (nx ny)``, ``v = b / (nx ny)``).
    """
    ny, nx = grid.shape
    d2 = (nx * ny) * (nx * ny)
    col_a = np.empty(nx, dtype=np.int64)
    col_band = np.empty(nx, dtype=np.int64)
    for ix in range(nx):
        col_a[ix] = (2 * ix - (nx - 1)) * ny
        # band floor((u + 1) * 2.5) with u + 1 = (2 ix + 1) / nx
        col_band[ix] = min(4, (5 * (2 * ix + 1)) // (2 * nx))
    n_den = np.zeros(13, dtype=np.int64)
    f_den = np.zeros(13, dtype=np.int64)
    n_rad = np.zeros(12, dtype=np.int64)
    f_rad = np.zeros(12, dtype=np.int64)
    n_ang = np.zeros(2 * _N_SECTORS, dtype=np.int64)
    f_ang = np.zeros(2 * _N_SECTORS, dtype=np.int64)
    ring_edge = np.empty(8, dtype=np.int64)  # 8 (a^2 + b^2) >= k d2 starts ring k
    for k in range(8):
        ring_edge[k] = k * d2
    outer_edge = 49 * d2  # r >= 0.7: 100 (a^2 + b^2) >= 49 d2
    sc_all = 0.0
    ss_all = 0.0
    sc_out = 0.0
    ss_out = 0.0
    nf_all = 0
    nf_out = 0
    for iy in range(ny):
        b = (2 * iy - (ny - 1)) * nx
        bv = min(4, (5 * (2 * iy + 1)) // (2 * ny))
        inner_row = 1 <= bv <= 3
        for ix in range(nx):
            g = grid[iy, ix]
            if g < 0:
                continue
            a = col_a[ix]
            bu = col_band[ix]
            if inner_row and 1 <= bu <= 3:
                r = (bv - 1) * 3 + (bu - 1)
            elif abs(b) > abs(a):
                r = 9 if b > 0 else 11
            else:
                r = 10 if a > 0 else 12
            n_den[r] += 1
            f_den[r] += g
            q = a * a + b * b
            q8 = 8 * q
            k = 7
            while k > 0 and q8 < ring_edge[k]:
                k -= 1
            n_rad[k] += 1
            f_rad[k] += g
            dk = depth[iy, ix]
            if dk < 4:
                n_rad[8 + dk] += 1
                f_rad[8 + dk] += g
            sec = _sector8(a, b)
            outer = 100 * q >= outer_edge
            n_ang[sec] += 1
            f_ang[sec] += g
            if outer:
                n_ang[_N_SECTORS + sec] += 1
                f_ang[_N_SECTORS + sec] += g
            if g > 0:
                h = np.sqrt(float(q))
                c = a / h if h > 0 else 0.0
                sn = b / h if h > 0 else 0.0
                sc_all += c
                ss_all += sn
                nf_all += 1
                if outer:
                    sc_out += c
                    ss_out += sn
                    nf_out += 1
    for r in range(13):
        out_density[r] = f_den[r] / n_den[r] if n_den[r] > 0 else 0.0
    for k in range(12):
        out_radial[k] = f_rad[k] / n_rad[k] if n_rad[k] > 0 else 0.0
    frac = np.zeros(2 * _N_SECTORS)
    for k in range(2 * _N_SECTORS):
        frac[k] = f_ang[k] / n_ang[k] if n_ang[k] > 0 else 0.0
    for half in range(2):
        base = half * _N_SECTORS
        # insertion sort, decreasing (8 values)
        for i in range(1, _N_SECTORS):
            val = frac[base + i]
            j = i - 1
            while j >= 0 and frac[base + j] < val:
                frac[base + j + 1] = frac[base + j]
                j -= 1
            frac[base + j + 1] = val
        for k in range(_N_SECTORS):
            out_angular[base + k] = frac[base + k]
    n_sec = 2 * _N_SECTORS
    out_angular[n_sec] = np.sqrt(sc_all * sc_all + ss_all * ss_all) / nf_all if nf_all else 0.0
    out_angular[n_sec + 1] = np.sqrt(sc_out * sc_out + ss_out * ss_out) / nf_out if nf_out else 0.0


@njit(**JIT)
def _join_rho(grid, max_lag, out):
    """Join-count correlation at lags 1..max_lag (queen directions) into out[0:max_lag].

    Only BB and J are needed for it (no variance): each direction is one shifted product of 0/1
    planes over the overlapping window, with no per-cell bounds checks (it vectorises).
    """
    ny, nx = grid.shape
    present = np.zeros((ny, nx), dtype=np.int32)
    failing = np.zeros((ny, nx), dtype=np.int32)
    n_die = 0
    n_fail = 0
    for iy in range(ny):
        for ix in range(nx):
            g = grid[iy, ix]
            if g >= 0:
                present[iy, ix] = 1
                n_die += 1
                if g > 0:
                    failing[iy, ix] = 1
                    n_fail += 1
    p = n_fail / n_die if n_die else 0.0
    for d in range(1, max_lag + 1):
        joins = 0
        bb = 0
        for k in range(4):
            if k == 0:
                dx, dy = d, 0
            elif k == 1:
                dx, dy = 0, d
            elif k == 2:
                dx, dy = d, d
            else:
                dx, dy = d, -d
            y0 = max(0, -dy)
            y1 = min(ny, ny - dy)
            for iy in range(y0, y1):
                for ix in range(0, nx - dx):
                    joins += present[iy, ix] * present[iy + dy, ix + dx]
                    bb += failing[iy, ix] * failing[iy + dy, ix + dx]
        defined = joins > 0 and 0.0 < p < 1.0
        out[d - 1] = (bb / joins - p * p) / (p * (1.0 - p)) if defined else 0.0


@njit(**JIT)
def _correlogram_on_grid(grid, max_lag, queen, out):
    """out[d - 1] = (BB, E[BB], z, rho) at lag d; see join_count_correlogram."""
    ny, nx = grid.shape
    n_die = 0
    n_fail = 0
    for iy in range(ny):
        for ix in range(nx):
            g = grid[iy, ix]
            if g >= 0:
                n_die += 1
                n_fail += g
    p = n_fail / n_die if n_die else 0.0
    n_dir = 4 if queen else 2
    for d in range(1, max_lag + 1):
        joins = 0
        bb = 0
        sum_deg2 = 0
        for iy in range(ny):
            for ix in range(nx):
                g = grid[iy, ix]
                if g < 0:
                    continue
                deg = 0
                for k in range(n_dir):
                    if k == 0:
                        dx, dy = d, 0
                    elif k == 1:
                        dx, dy = 0, d
                    elif k == 2:
                        dx, dy = d, d
                    else:
                        dx, dy = d, -d
                    jx = ix + dx
                    jy = iy + dy
                    if 0 <= jx < nx and 0 <= jy < ny and grid[jy, jx] >= 0:
                        deg += 1
                        joins += 1
                        bb += g * grid[jy, jx]
                    jx = ix - dx
                    jy = iy - dy
                    if 0 <= jx < nx and 0 <= jy < ny and grid[jy, jx] >= 0:
                        deg += 1
                sum_deg2 += deg * deg
        expected = joins * p * p
        var = joins * p * p + (sum_deg2 - 2.0 * joins) * p**3 + (joins - sum_deg2) * p**4
        z = (bb - expected) / np.sqrt(var) if var > 0 else 0.0
        defined = joins > 0 and 0.0 < p < 1.0
        rho = (bb / joins - p * p) / (p * (1.0 - p)) if defined else 0.0
        out[d - 1, 0] = bb
        out[d - 1, 1] = expected
        out[d - 1, 2] = z
        out[d - 1, 3] = rho


@njit(**JIT)
def _box3(padded):
    """3x3 sums of a zero-padded ``(ny + 2, nx + 2)`` plane, as an ``(ny, nx)`` array."""
    ny = padded.shape[0] - 2
    nx = padded.shape[1] - 2
    rows = np.empty((ny + 2, nx), dtype=np.int32)
    for iy in range(ny + 2):
        for ix in range(nx):
            rows[iy, ix] = padded[iy, ix] + padded[iy, ix + 1] + padded[iy, ix + 2]
    out = np.empty((ny, nx), dtype=np.int32)
    for iy in range(ny):
        for ix in range(nx):
            out[iy, ix] = rows[iy, ix] + rows[iy + 1, ix] + rows[iy + 2, ix]
    return out


@njit(**JIT)
def _region_on_grid(grid, depth, out):
    """Geometry (6) and cluster (8) features of the salient fail region, into out[0:14].

    Components and their shape come from :mod:`backend_fab_kernels.components` (8-connected
    labels in raster order; eccentricity, solidity, axes, centroid radius and angular span).
    """
    ny, nx = grid.shape
    for k in range(14):
        out[k] = 0.0
    n_die = 0
    n_fail = 0
    for iy in range(ny):
        for ix in range(nx):
            g = grid[iy, ix]
            if g >= 0:
                n_die += 1
                n_fail += g
    if n_fail == 0:
        return
    # denoise: core = fail with >= 2 failing 8-neighbours; kept = fail that is core or touches
    # core. 3x3 counts come from separable box sums on zero-padded planes (no bounds checks).
    fails = np.zeros((ny + 2, nx + 2), dtype=np.int32)
    for iy in range(ny):
        for ix in range(nx):
            if grid[iy, ix] == 1:
                fails[iy + 1, ix + 1] = 1
    count = _box3(fails)
    core = np.zeros((ny + 2, nx + 2), dtype=np.int32)
    for iy in range(ny):
        for ix in range(nx):
            if fails[iy + 1, ix + 1] == 1 and count[iy, ix] >= 3:  # itself + two neighbours
                core[iy + 1, ix + 1] = 1
    near_core = _box3(core)
    kept = np.zeros((ny, nx), dtype=np.int8)
    n_kept = 0
    for iy in range(ny):
        for ix in range(nx):
            if fails[iy + 1, ix + 1] == 1 and near_core[iy, ix] > 0:
                kept[iy, ix] = 1
                n_kept += 1
    out[13] = n_kept / n_fail
    if n_kept == 0:
        return
    labels = np.empty((ny, nx), dtype=np.int32)
    n_lab = _label_plane(kept, labels, True)
    sizes = np.zeros(n_lab + 1, dtype=np.int64)
    for iy in range(ny):
        for ix in range(nx):
            sizes[labels[iy, ix]] += 1
    best = 1
    for c in range(2, n_lab + 1):
        if sizes[c] > sizes[best]:
            best = c
    second = 0.0
    min_size = max(5, int(np.floor(0.003 * n_die + 0.5)))
    n_sig = 0
    fails_sig = 0.0
    for c in range(1, n_lab + 1):
        size_c = sizes[c]
        if c != best and size_c > second:
            second = size_c
        if size_c >= min_size:
            n_sig += 1
            fails_sig += size_c
    # shape of the salient component alone (one label): the other components need only sizes
    salient = np.zeros((ny, nx), dtype=np.int32)
    for iy in range(ny):
        for ix in range(nx):
            if labels[iy, ix] == best:
                salient[iy, ix] = 1
    comp = np.zeros((1, _N_COMPONENT_FEATURES))
    _features_plane(
        salient, 1, grid, True, (nx - 1.0) / 2.0, (ny - 1.0) / 2.0, nx / 2.0, ny / 2.0, comp
    )
    size = comp[0, _C_SIZE]
    perimeter = 0
    edge = 0
    for iy in range(ny):
        for ix in range(nx):
            if salient[iy, ix] == 0:
                continue
            perimeter += (
                (iy == 0 or salient[iy - 1, ix] == 0)
                + (iy == ny - 1 or salient[iy + 1, ix] == 0)
                + (ix == 0 or salient[iy, ix - 1] == 0)
                + (ix == nx - 1 or salient[iy, ix + 1] == 0)
            )
            if depth[iy, ix] <= 1:
                edge += 1
    # equal-area disk diameter of the wafer in die pitches: axis lengths as a fraction of it
    diameter = 2.0 * np.sqrt(n_die / np.pi)
    out[0] = size / n_die
    out[1] = perimeter / np.sqrt(n_die)
    out[2] = comp[0, _C_MAJOR] / diameter
    out[3] = comp[0, _C_MINOR] / diameter
    out[4] = comp[0, _C_ECCENTRICITY]
    out[5] = comp[0, _C_SOLIDITY]
    out[6] = comp[0, _C_RADIUS]
    out[7] = comp[0, _C_SPAN] / 360.0
    out[8] = edge / size
    out[9] = size / (0.5 * perimeter) ** 2
    out[10] = n_sig
    out[11] = fails_sig / n_fail
    out[12] = second / size


@njit(**JIT)
def _fail_fraction(grid):
    ny, nx = grid.shape
    n = 0
    f = 0
    for iy in range(ny):
        for ix in range(nx):
            g = grid[iy, ix]
            if g >= 0:
                n += 1
                f += g
    return f / n if n else np.nan


# --- the table kernels (prange over wafers) --------------------------------------------------


@njit(**JIT)
def _wafer_row(x, y, fail, lo, hi, out):
    """Every feature of one wafer (rows ``lo:hi``) into ``out``; True on a repeated (x, y)."""
    grid, dup = _fill_grid(x, y, fail, lo, hi)
    depth = _depth_grid(grid)
    _profiles_on_grid(grid, depth, out[_O_DENSITY:], out[_O_RADIAL:], out[_O_ANGULAR:])
    _radon_on_grid(
        grid,
        RADON_ANGLES,
        RADON_POINTS,
        out[_O_RADON:],
        out[_O_RADON + RADON_POINTS :],
        out[_O_LINE:],
    )
    _region_on_grid(grid, depth, out[_O_GEOMETRY:])
    _join_rho(grid, MAX_LAG, out[_O_CORRELOGRAM:])
    out[_O_GLOBAL] = _fail_fraction(grid)
    return dup


@njit(**PARALLEL_JIT)
def _feature_table(x, y, fail, offsets, n_cols):
    """One row of features per wafer. The parallel body is a single call: numba's parfor
    lowering re-optimises whatever is inlined into it, and a bare call keeps compile time down."""
    n_w = offsets.size - 1
    out = np.full((n_w, n_cols), np.nan)
    dup = np.zeros(n_w, dtype=np.bool_)
    for w in prange(n_w):
        if offsets[w + 1] > offsets[w]:
            dup[w] = _wafer_row(x, y, fail, offsets[w], offsets[w + 1], out[w])
    return out, dup


@njit(**JIT)
def _correlogram_row(x, y, fail, lo, hi, max_lag, queen, out):
    grid, dup = _fill_grid(x, y, fail, lo, hi)
    _correlogram_on_grid(grid, max_lag, queen, out)
    return dup


@njit(**PARALLEL_JIT)
def _correlogram_table(x, y, fail, offsets, max_lag, queen):
    n_w = offsets.size - 1
    out = np.full((n_w, max_lag, 4), np.nan)
    dup = np.zeros(n_w, dtype=np.bool_)
    for w in prange(n_w):
        if offsets[w + 1] > offsets[w]:
            dup[w] = _correlogram_row(
                x, y, fail, offsets[w], offsets[w + 1], max_lag, queen, out[w]
            )
    return out, dup


# --- public wrappers -------------------------------------------------------------------------

_ARGS_DOC = """``x``, ``y``: integer die coordinates; ``fail``: bool per die; ``offsets``: int64 wafer group
    bounds (``n_wafers + 1`` values from 0 to ``len(x)``). Each (x, y) may occur once per wafer."""


def _table(x, y, fail, offsets) -> np.ndarray:
    xa, ya, fa, off = validate_die_groups(x, y, fail, offsets)
    out, dup = _feature_table(xa, ya, fa, off, N_FEATURES)
    raise_on_duplicates(dup, off)
    return out


def wafer_features(x, y, fail, offsets) -> np.ndarray:
    """All pattern features of each wafer: ``(n_wafers, N_FEATURES)`` float64, columns
    :data:`FEATURE_NAMES` (see the module docstring). An empty wafer gives a row of NaN.

    {args}
    """
    return _table(x, y, fail, offsets)


def density_features(x, y, fail, offsets) -> np.ndarray:
    """Fail fraction in the 13 regions of Wu et al. (2015): ``(n_wafers, 13)`` float64
    (the ``density`` columns of :func:`wafer_features`).

    {args}
    """
    return _table(x, y, fail, offsets)[:, FEATURE_GROUPS["density"]]


def radial_features(x, y, fail, offsets) -> np.ndarray:
    """Fail fraction in 8 equal-area rings, then in die rings 0..3 from the edge:
    ``(n_wafers, 12)`` float64 (the ``radial`` columns of :func:`wafer_features`).

    {args}
    """
    return _table(x, y, fail, offsets)[:, FEATURE_GROUPS["radial"]]


def angular_features(x, y, fail, offsets) -> np.ndarray:
    """Sorted sector fail fractions (whole wafer, outer zone) and fail-angle concentrations:
    ``(n_wafers, 18)`` float64 (the ``angular`` columns of :func:`wafer_features`).

    {args}
    """
    return _table(x, y, fail, offsets)[:, FEATURE_GROUPS["angular"]]


def region_features(x, y, fail, offsets) -> np.ndarray:
    """Geometry (6) and cluster (8) features of the salient fail region: ``(n_wafers, 14)``
    (the ``geometry`` then ``cluster`` columns of :func:`wafer_features`).

    {args}
    """
    out = _table(x, y, fail, offsets)
    return out[:, FEATURE_GROUPS["geometry"].start : FEATURE_GROUPS["cluster"].stop]


def radon_profile(x, y, fail, offsets) -> np.ndarray:
    """Radon mean and std profiles of each wafer's fail map (Wu et al. 2015, normalised as in
    :mod:`backend_fab_kernels.radon`; 36 angles): ``(n_wafers, 40)`` float64, the ``radon``
    columns of :func:`wafer_features`. Columns ``0..19``: the mean over angles of the fail
    fraction at each projection offset, from ``s = -1`` to ``s = +1``; ``20..39``: its standard
    deviation over angles (population).

    {args}
    """
    return _table(x, y, fail, offsets)[:, FEATURE_GROUPS["radon"]]


def join_count_correlogram(x, y, fail, offsets, max_lag: int = MAX_LAG, queen: bool = True):
    """Join-count (fail-fail) correlogram of each wafer: ``(n_wafers, max_lag, 4)`` float64.

    For lag ``d = 1..max_lag`` the joins are the die pairs at offsets ``(d, 0)`` and ``(0, d)``
    (rook) plus ``(d, d)`` and ``(d, -d)`` (queen). ``[..., 0]`` BB, the number of fail-fail joins;
    ``[..., 1]`` its expectation ``J p^2`` under free (Bernoulli) sampling with ``p`` the wafer's
    fail fraction and ``J`` the number of joins; ``[..., 2]`` the z-score ``(BB - E) / sqrt(Var)``
    with ``Var = 1/4 [S1 p^2 + (S2 - 2 S1) p^3 + (S1 - S2) p^4]`` (Cliff & Ord 1981; DOMAIN.md 3.2;
    0 when Var is 0); ``[..., 3]`` the join-count correlation ``(BB / J - p^2) / (p (1 - p))``
    (0 when undefined), a size-free version used as a pattern feature (Jeong, Kim & Jeong, IEEE
    TSM 21(4), 2008, use the correlogram as a pattern signature).

    {args}
    """
    if int(max_lag) < 1:
        raise ValueError(f"max_lag must be >= 1, got {max_lag}")
    xa, ya, fa, off = validate_die_groups(x, y, fail, offsets)
    out, dup = _correlogram_table(xa, ya, fa, off, int(max_lag), bool(queen))
    raise_on_duplicates(dup, off)
    return out


for _f in (
    wafer_features,
    density_features,
    radial_features,
    angular_features,
    region_features,
    join_count_correlogram,
    radon_profile,
):
    _f.__doc__ = _f.__doc__.replace("{args}", _ARGS_DOC)
del _f


def _warmup_wafers():
    x = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 5, 6, 5, 6], dtype=np.int64)
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 1, 1], dtype=np.int64)
    fail = np.array([1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0], dtype=bool)
    return (x, y, fail, np.array([0, 9, 13], dtype=np.int64)), {}


#: Inputs for ``backend-fab warmup`` (every wrapper shares one compiled table kernel).
WARMUP_EXAMPLES = {name: _warmup_wafers for name in __all__ if name.islower()}
