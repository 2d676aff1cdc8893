"""Slow, obviously correct references for backend_fab_kernels.wafer_features and .radon.

Same names as the kernels. Each wafer is handled as a dict {(x, y): fail} with plain Python loops;
nothing is shared with the kernels, so an error in one does not hide in the other. Components are
found by breadth-first search, convex hulls from every corner of every die square, correlogram
variances from the explicit weight matrix (S0, S1, S2 of Cliff & Ord), splines by a dense solve.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from fractions import Fraction

import numpy as np

RADON_POINTS = 20
RADON_ANGLES = 36
MAX_LAG = 4


def _wafers(x, y, fail, offsets):
    x = np.asarray(x).tolist()
    y = np.asarray(y).tolist()
    fail = [bool(f) for f in np.asarray(fail).tolist()]
    offsets = np.asarray(offsets).tolist()
    for w in range(len(offsets) - 1):
        die = {}
        for i in range(offsets[w], offsets[w + 1]):
            die[(x[i], y[i])] = fail[i]
        yield die


class _Wafer:
    """A wafer's die with its bounding box and normalised coordinates."""

    def __init__(self, die: dict):
        self.die = die
        xs = [p[0] for p in die]
        ys = [p[1] for p in die]
        self.x0, self.y0 = min(xs), min(ys)
        self.nx = max(xs) - self.x0 + 1
        self.ny = max(ys) - self.y0 + 1
        self.n = len(die)
        self.n_fail = sum(die.values())

    def idx(self, p):
        return p[0] - self.x0, p[1] - self.y0

    def uv(self, p):
        ix, iy = self.idx(p)
        return (2.0 * ix - (self.nx - 1.0)) / self.nx, (2.0 * iy - (self.ny - 1.0)) / self.ny

    def uv_exact(self, p):
        ix, iy = self.idx(p)
        return Fraction(2 * ix - (self.nx - 1), self.nx), Fraction(2 * iy - (self.ny - 1), self.ny)

    def depth(self, p):
        """Chessboard distance to the nearest position (on or off the grid) without a die, - 1."""
        best = None
        for gx in range(self.x0 - 1, self.x0 + self.nx + 1):
            for gy in range(self.y0 - 1, self.y0 + self.ny + 1):
                if (gx, gy) in self.die:
                    continue
                d = max(abs(gx - p[0]), abs(gy - p[1]))
                best = d if best is None else min(best, d)
        return best - 1


def _frac(f, n):
    return f / n if n else 0.0


# --- cubic resampling ----------------------------------------------------------------------------


def _natural_spline(values, n_out):
    yv = np.asarray(values, dtype=float)
    n = yv.size
    if n == 1:
        return np.full(n_out, yv[0])
    a = np.zeros((n, n))
    rhs = np.zeros(n)
    a[0, 0] = 1.0
    a[n - 1, n - 1] = 1.0
    for i in range(1, n - 1):
        a[i, i - 1] = 1.0
        a[i, i] = 4.0
        a[i, i + 1] = 1.0
        rhs[i] = 6.0 * (yv[i + 1] - 2.0 * yv[i] + yv[i - 1])
    m = np.linalg.solve(a, rhs)
    out = np.empty(n_out)
    for j in range(n_out):
        t = j * (n - 1) / (n_out - 1) if n_out > 1 else 0.0
        i = min(math.floor(t), n - 2)
        s = t - i
        # cubic on [i, i + 1] with second derivatives m[i], m[i + 1] (unit spacing)
        out[j] = (
            (1 - s) * yv[i]
            + s * yv[i + 1]
            + (((1 - s) ** 3 - (1 - s)) * m[i] + (s**3 - s) * m[i + 1]) / 6.0
        )
    return out


def cubic_resample(values, n_out=RADON_POINTS):
    return np.array([_natural_spline(row, n_out) for row in np.asarray(values, dtype=float)])


# --- groups --------------------------------------------------------------------------------------


def _sector8(u, v):
    """floor((atan2(v, u) + pi) / (pi / 4)) clipped to 7, with exact cone tests: the direction lies
    in cone k when it is on or left of ray k and strictly right of ray k + 1."""
    if v == 0:
        return 7 if u < 0 else 4
    rays = [(-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0)]
    for k in range(8):
        r0, r1 = rays[k], rays[k + 1]
        if r0[0] * v - r0[1] * u >= 0 and u * r1[1] - v * r1[0] > 0:
            return k
    raise AssertionError((u, v))


def _density(w: _Wafer):
    n = [0] * 13
    f = [0] * 13
    for p, fail in w.die.items():
        u, v = w.uv_exact(p)
        bu = min(4, max(0, math.floor((u + 1) * Fraction(5, 2))))
        bv = min(4, max(0, math.floor((v + 1) * Fraction(5, 2))))
        if 1 <= bu <= 3 and 1 <= bv <= 3:
            r = (bv - 1) * 3 + (bu - 1)
        elif abs(v) > abs(u):
            r = 9 if v > 0 else 11
        else:
            r = 10 if u > 0 else 12
        n[r] += 1
        f[r] += fail
    return [_frac(f[r], n[r]) for r in range(13)]


def _radial(w: _Wafer):
    n = [0] * 12
    f = [0] * 12
    for p, fail in w.die.items():
        u, v = w.uv_exact(p)
        k = min(7, math.floor(8 * min(u * u + v * v, 1)))
        n[k] += 1
        f[k] += fail
        d = w.depth(p)
        if d < 4:
            n[8 + d] += 1
            f[8 + d] += fail
    return [_frac(f[k], n[k]) for k in range(12)]


def _angular(w: _Wafer):
    n = [0] * 16
    f = [0] * 16
    vec_all = [0.0, 0.0, 0]
    vec_out = [0.0, 0.0, 0]
    for p, fail in w.die.items():
        u, v = w.uv_exact(p)
        k = _sector8(u, v)
        outer = u * u + v * v >= Fraction(49, 100)
        n[k] += 1
        f[k] += fail
        if outer:
            n[8 + k] += 1
            f[8 + k] += fail
        if fail:
            r = math.hypot(u, v)
            unit = (float(u) / r, float(v) / r) if r > 0 else (0.0, 0.0)
            for vec, use in ((vec_all, True), (vec_out, outer)):
                if use:
                    vec[0] += unit[0]
                    vec[1] += unit[1]
                    vec[2] += 1
    frac = [_frac(f[k], n[k]) for k in range(16)]
    conc = [math.hypot(c, s) / m if m else 0.0 for c, s, m in (vec_all, vec_out)]
    return sorted(frac[:8], reverse=True) + sorted(frac[8:], reverse=True) + conc


def _join_counts(w: _Wafer, max_lag, queen):
    pts = sorted(w.die)
    n = len(pts)
    p = w.n_fail / n
    rows = []
    for d in range(1, max_lag + 1):
        wm = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                dx = abs(pts[j][0] - pts[i][0])
                dy = abs(pts[j][1] - pts[i][1])
                if (dx, dy) in ((d, 0), (0, d)) or (queen and dx == d and dy == d):
                    wm[i, j] = 1.0
        xv = np.array([float(w.die[q]) for q in pts])
        bb = 0.5 * float(xv @ wm @ xv)
        s0 = wm.sum()
        s1 = 0.5 * ((wm + wm.T) ** 2).sum()
        s2 = ((wm.sum(axis=1) + wm.sum(axis=0)) ** 2).sum()
        e = 0.5 * s0 * p * p
        var = 0.25 * (s1 * p**2 + (s2 - 2 * s1) * p**3 + (s1 - s2) * p**4)
        z = (bb - e) / math.sqrt(var) if var > 0 else 0.0
        joins = s0 / 2
        rho = (bb / joins - p * p) / (p * (1 - p)) if joins > 0 and 0 < p < 1 else 0.0
        rows.append([bb, e, z, rho])
    return rows


def _components(cells: set):
    """8-connected components, ordered by the raster position (y, then x) of their first cell."""
    seen = set()
    comps = []
    for start in sorted(cells, key=lambda c: (c[1], c[0])):
        if start in seen:
            continue
        comp = []
        queue = deque([start])
        seen.add(start)
        while queue:
            c = queue.popleft()
            comp.append(c)
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    q = (c[0] + dx, c[1] + dy)
                    if q in cells and q not in seen:
                        seen.add(q)
                        queue.append(q)
        comps.append(comp)
    return comps


def _hull_area(points):
    pts = sorted(set(points))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for pt in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], pt) <= 0:
            lower.pop()
        lower.append(pt)
    for pt in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], pt) <= 0:
            upper.pop()
        upper.append(pt)
    hull = lower[:-1] + upper[:-1]
    twice = sum(
        hull[i][0] * hull[(i + 1) % len(hull)][1] - hull[(i + 1) % len(hull)][0] * hull[i][1]
        for i in range(len(hull))
    )
    return abs(twice) / 2.0


def _region(w: _Wafer):
    out = [0.0] * 14
    if w.n_fail == 0:
        return out
    fails = {p for p, f in w.die.items() if f}

    def nbrs(p):
        return [(p[0] + dx, p[1] + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]

    core = {p for p in fails if sum(q in fails for q in nbrs(p)) >= 2}
    kept = {p for p in fails if p in core or any(q in core for q in nbrs(p))}
    out[13] = len(kept) / w.n_fail
    if not kept:
        return out
    comps = _components(kept)
    sizes = [len(c) for c in comps]
    best = sizes.index(max(sizes))
    comp = comps[best]
    size = len(comp)
    second = max([s for i, s in enumerate(sizes) if i != best], default=0)
    min_size = max(5, math.floor(0.003 * w.n + 0.5))
    big = [s for s in sizes if s >= min_size]
    region = set(comp)
    perimeter = sum(
        (p[0] + dx, p[1] + dy) not in region
        for p in comp
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
    )
    edge = sum(w.depth(p) <= 1 for p in comp)
    ix = np.array([w.idx(p)[0] for p in comp], dtype=float)
    iy = np.array([w.idx(p)[1] for p in comp], dtype=float)
    cov = np.array(
        [
            [np.mean((ix - ix.mean()) ** 2), np.mean((ix - ix.mean()) * (iy - iy.mean()))],
            [np.mean((ix - ix.mean()) * (iy - iy.mean())), np.mean((iy - iy.mean()) ** 2)],
        ]
    )
    l2, l1 = np.linalg.eigvalsh(cov)
    l2 = max(l2, 0.0)
    corners = [
        (p[0] + a, p[1] + b) for p in (w.idx(q) for q in comp) for a in (0, 1) for b in (0, 1)
    ]
    cu = (ix.mean() - (w.nx - 1) / 2) / (w.nx / 2)
    cv = (iy.mean() - (w.ny - 1) / 2) / (w.ny / 2)
    angles = sorted(math.degrees(math.atan2(*reversed(w.uv(p)))) % 360.0 for p in comp)
    gaps = [angles[0] + 360.0 - angles[-1]] + [b - a for a, b in itertools.pairwise(angles)]
    diameter = 2 * math.sqrt(w.n / math.pi)
    out[0] = size / w.n
    out[1] = perimeter / math.sqrt(w.n)
    out[2] = 4 * math.sqrt(l1) / diameter
    out[3] = 4 * math.sqrt(l2) / diameter
    out[4] = math.sqrt(max(0.0, 1 - l2 / l1)) if l1 > 0 else 0.0
    out[5] = size / _hull_area(corners)
    out[6] = math.hypot(cu, cv)
    out[7] = (360.0 - max(gaps)) / 360.0
    out[8] = edge / size
    out[9] = size / (perimeter / 2) ** 2
    out[10] = len(big)
    out[11] = sum(big) / w.n_fail
    out[12] = second / size
    return out


def _radon(w: _Wafer, n_angles):
    k = math.ceil(max(w.nx, w.ny) / 32)
    blocks = {}
    for p, fail in w.die.items():
        ix, iy = w.idx(p)
        u, v = w.uv(p)
        blk = blocks.setdefault((ix // k, iy // k), [0, 0, 0.0, 0.0])
        blk[0] += 1
        blk[1] += fail
        blk[2] += u
        blk[3] += v
    nb = min(33, max(9, math.ceil(w.nx / k), math.ceil(w.ny / k)))
    nb += 1 - nb % 2
    mean = [None] * nb
    std = [None] * nb
    per_bin = [[] for _ in range(nb)]
    p = w.n_fail / w.n
    ridge = [0.0, 0.0]
    best = None
    for a in range(n_angles):
        t = math.pi * a / n_angles
        num = [0] * nb
        den = [0] * nb
        for cnt, nf, su, sv in blocks.values():
            s = su / cnt * math.cos(t) + sv / cnt * math.sin(t)
            b = min(nb - 1, max(0, math.floor((s + 1 + 1e-9) * 0.5 * nb)))
            den[b] += cnt
            num[b] += nf
        for b in range(nb):
            if den[b]:
                per_bin[b].append(num[b] / den[b])
        if 0 < p < 1:
            for b in range(2, nb - 2):
                if den[b] and den[b - 2] and den[b + 2]:
                    e = num[b] / den[b] - (num[b - 2] / den[b - 2] + num[b + 2] / den[b + 2]) / 2
                    var = p * (1 - p) * (1 / den[b] + 1 / (4 * den[b - 2]) + 1 / (4 * den[b + 2]))
                    z = e / math.sqrt(var)
                    if best is None or z > best:
                        best = z
                        ridge = [z, e]
    for b in range(nb):
        if per_bin[b]:
            mean[b] = float(np.mean(per_bin[b]))
            std[b] = float(np.std(per_bin[b]))
    filled_mean = list(mean)
    filled_std = list(std)
    for b in range(nb):
        if mean[b] is None:
            near = min((i for i in range(nb) if mean[i] is not None), key=lambda i: (abs(i - b), i))
            filled_mean[b] = mean[near]
            filled_std[b] = std[near]
    profiles = list(_natural_spline(filled_mean, RADON_POINTS)) + list(
        _natural_spline(filled_std, RADON_POINTS)
    )
    return profiles, ridge


# --- public references ---------------------------------------------------------------------------


def _table(x, y, fail, offsets, n_cols, fn):
    rows = []
    for die in _wafers(x, y, fail, offsets):
        rows.append([math.nan] * n_cols if not die else fn(_Wafer(die)))
    return np.array(rows, dtype=float).reshape(len(rows), n_cols)


def density_features(x, y, fail, offsets):
    return _table(x, y, fail, offsets, 13, _density)


def radial_features(x, y, fail, offsets):
    return _table(x, y, fail, offsets, 12, _radial)


def angular_features(x, y, fail, offsets):
    return _table(x, y, fail, offsets, 18, _angular)


def region_features(x, y, fail, offsets):
    return _table(x, y, fail, offsets, 14, _region)


def radon_profile(x, y, fail, offsets, n_angles=RADON_ANGLES):
    return _table(x, y, fail, offsets, 2 * RADON_POINTS, lambda w: _radon(w, n_angles)[0])


def join_count_correlogram(x, y, fail, offsets, max_lag=MAX_LAG, queen=True):
    flat = _table(
        x,
        y,
        fail,
        offsets,
        4 * max_lag,
        lambda w: [v for row in _join_counts(w, max_lag, queen) for v in row],
    )
    return flat.reshape(flat.shape[0], max_lag, 4)


def wafer_features(x, y, fail, offsets):
    def row(w):
        rho = [r[3] for r in _join_counts(w, MAX_LAG, True)]
        profiles, ridge = _radon(w, RADON_ANGLES)
        return (
            _density(w)
            + profiles
            + ridge
            + _region(w)
            + rho
            + _radial(w)
            + _angular(w)
            + [w.n_fail / w.n]
        )

    return _table(x, y, fail, offsets, 13 + 40 + 2 + 14 + MAX_LAG + 12 + 18 + 1, row)


# --- tree ensembles (backend_fab_kernels.tree_ensemble) -----------------------------------------


def _path(xrow, root, feature, threshold, left, right):
    node = root
    nodes = [node]
    while left[node] >= 0:
        go_left = float(np.float32(xrow[feature[node]])) <= threshold[node]
        node = left[node] if go_left else right[node]
        nodes.append(node)
    return nodes


def forest_proba(X, feature, threshold, left, right, value, tree_offsets):
    X = np.asarray(X, dtype=float)
    value = np.asarray(value, dtype=float)
    n_trees = len(tree_offsets) - 1
    out = np.zeros((X.shape[0], value.shape[1]))
    for i in range(X.shape[0]):
        for t in range(n_trees):
            leaf = _path(X[i], tree_offsets[t], feature, threshold, left, right)[-1]
            out[i] += value[leaf]
    return out / n_trees


def forest_contributions(X, feature, threshold, left, right, value, tree_offsets, cls):
    X = np.asarray(X, dtype=float)
    value = np.asarray(value, dtype=float)
    n_trees = len(tree_offsets) - 1
    bias = np.zeros(X.shape[0])
    contrib = np.zeros(X.shape)
    for i in range(X.shape[0]):
        c = cls[i]
        for t in range(n_trees):
            nodes = _path(X[i], tree_offsets[t], feature, threshold, left, right)
            bias[i] += value[nodes[0], c] / n_trees
            for parent, child in itertools.pairwise(nodes):
                contrib[i, feature[parent]] += (value[child, c] - value[parent, c]) / n_trees
    return bias, contrib
