"""Slow, obviously correct references for the wafer-map kernels, with the kernels' names.

Each reference works die by die on plain Python data (dicts of positions, lists, breadth-first
search, explicit weight matrices, exact integer arithmetic where it matters) and shares nothing
with the numba code, so an error in one does not hide in the other. Inputs and outputs have the
shapes of the kernel wrappers (state grids: int8, -1 no die / 0 good / 1 bad; 3-d stacks).
"""

from __future__ import annotations

import math
from collections import deque
from fractions import Fraction

import numpy as np

MASK64 = 2**64 - 1

# --- helpers -------------------------------------------------------------------------------------


def _stack(a):
    a = np.asarray(a)
    return (a[None], True) if a.ndim == 2 else (a, False)


def _nbrs(connectivity):
    if connectivity == 4:
        return [(1, 0), (-1, 0), (0, 1), (0, -1)]
    return [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0)]


# --- components ----------------------------------------------------------------------------------


def label_components(fail, connectivity=4):
    """Breadth-first search from each unlabelled fail cell, cells visited in raster order."""
    f, squeeze = _stack(fail)
    n_w, ny, nx = f.shape
    labels = np.zeros((n_w, ny, nx), dtype=np.int32)
    counts = np.zeros(n_w, dtype=np.int64)
    for w in range(n_w):
        n = 0
        for y in range(ny):
            for x in range(nx):
                if f[w, y, x] > 0 and labels[w, y, x] == 0:
                    n += 1
                    labels[w, y, x] = n
                    queue = deque([(x, y)])
                    while queue:
                        cx, cy = queue.popleft()
                        for dx, dy in _nbrs(connectivity):
                            xx, yy = cx + dx, cy + dy
                            if (
                                0 <= xx < nx
                                and 0 <= yy < ny
                                and f[w, yy, xx] > 0
                                and labels[w, yy, xx] == 0
                            ):
                                labels[w, yy, xx] = n
                                queue.append((xx, yy))
        counts[w] = n
    return (labels[0] if squeeze else labels), counts


def component_features(labels, n_labels, state=None, center=None, radius=None):
    """Per component: the FEATURE_NAMES columns from the die list (hull by scipy's Qhull over
    every corner of every die square)."""
    from scipy.spatial import ConvexHull

    lab, _ = _stack(labels)
    n_w, ny, nx = lab.shape
    st = None if state is None else _stack(state)[0]
    cx, cy = ((nx - 1) / 2.0, (ny - 1) / 2.0) if center is None else center
    if radius is None:
        cells = [
            (x, y)
            for y in range(ny)
            for x in range(nx)
            if st is None or any(st[w, y, x] >= 0 for w in range(n_w))
        ]
        r = max((math.hypot(x - cx, y - cy) for x, y in cells), default=0.0) + 0.5
        rx = ry = r
    elif np.ndim(radius) == 0:
        rx = ry = float(radius)
    else:
        rx, ry = radius
    rows = []
    for w in range(n_w):
        for lab_id in range(1, int(n_labels[w]) + 1):
            pts = [(x, y) for y in range(ny) for x in range(nx) if lab[w, y, x] == lab_id]
            n = len(pts)
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            mx = sum(xs) / n
            my = sum(ys) / n
            a = sum((x - mx) ** 2 for x in xs) / n
            d = sum((y - my) ** 2 for y in ys) / n
            b = sum((x - mx) * (y - my) for x, y in pts) / n
            ev = np.linalg.eigvalsh(np.array([[a, b], [b, d]]))
            l2, l1 = max(float(ev[0]), 0.0), float(ev[1])
            ecc = math.sqrt(max(0.0, 1 - l2 / l1)) if l1 > 0 else 0.0
            lin = (l1 - l2) / (l1 + l2) if l1 + l2 > 0 else 0.0
            radii = [math.hypot((x - cx) / rx, (y - cy) / ry) for x, y in pts]
            angles = sorted(
                math.degrees(math.atan2((y - cy) / ry, (x - cx) / rx)) % 360.0 for x, y in pts
            )
            gaps = [angles[0] + 360.0 - angles[-1]] + [
                angles[i] - angles[i - 1] for i in range(1, n)
            ]
            corners = np.array(
                [(x + sx, y + sy) for x, y in pts for sx in (-0.5, 0.5) for sy in (-0.5, 0.5)]
            )
            hull = ConvexHull(corners).volume
            touches = any(
                not (0 <= x + dx < nx and 0 <= y + dy < ny)
                or (st is not None and st[w, y + dy, x + dx] < 0)
                for x, y in pts
                for dx in (-1, 0, 1)
                for dy in (-1, 0, 1)
            )
            rows.append(
                [
                    w, lab_id, n, min(xs), max(xs), min(ys), max(ys), mx, my,
                    math.hypot((mx - cx) / rx, (my - cy) / ry),
                    math.degrees(math.atan2((my - cy) / ry, (mx - cx) / rx)) % 360.0,
                    min(radii), max(radii), 360.0 - max(gaps), ecc, lin,
                    4 * math.sqrt(l1), 4 * math.sqrt(l2), n / hull, float(touches),
                ]
            )  # fmt: skip
    offsets = np.concatenate([[0], np.cumsum(np.asarray(n_labels, dtype=np.int64))])
    return np.array(rows, dtype=np.float64).reshape(-1, 20), offsets


# --- DBSCAN --------------------------------------------------------------------------------------


def dbscan_grid(fail, eps=1.5, min_samples=3):
    """Textbook DBSCAN on the raster-ordered fail points with the expansion order of
    scikit-learn's ``dbscan_inner`` (a stack, points in index order); labels + 1, noise -1."""
    f, squeeze = _stack(fail)
    n_w, ny, nx = f.shape
    out = np.zeros((n_w, ny, nx), dtype=np.int32)
    counts = np.zeros(n_w, dtype=np.int64)
    for w in range(n_w):
        pts = [(x, y) for y in range(ny) for x in range(nx) if f[w, y, x] > 0]
        nb = [
            [
                j
                for j, q in enumerate(pts)
                if math.sqrt((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2) <= eps
            ]
            for p in pts
        ]
        core = [len(v) >= min_samples for v in nb]
        lab = [-1] * len(pts)
        k = 0
        for i in range(len(pts)):
            if lab[i] != -1 or not core[i]:
                continue
            stack = [i]
            while stack:
                j = stack.pop()
                if lab[j] != -1:
                    continue
                lab[j] = k
                if core[j]:
                    stack.extend(v for v in nb[j] if lab[v] == -1)
            k += 1
        for (x, y), v in zip(pts, lab, strict=True):
            out[w, y, x] = v + 1 if v >= 0 else -1
        counts[w] = k
    return (out[0] if squeeze else out), counts


# --- GDBN ----------------------------------------------------------------------------------------


def gdbn(
    state,
    algorithm="squeeze",
    *,
    window=3,
    fail_count=2,
    ring_weights=None,
    threshold=8.0,
    edge=None,
    edge_scale=1.1,
    edge_type="both",
    ring_mask=None,
    return_score=False,
):
    """The DOMAIN §2.3 rules die by die with a dict of positions; off-grid = off-wafer."""
    s, squeeze = _stack(state)
    n_w, ny, nx = s.shape
    h = window // 2
    pairs = [(2.0, 1.0)] if ring_weights is None else [tuple(map(float, p)) for p in ring_weights]
    pairs += [(1.0, 1.0)] * (h - len(pairs))
    if edge is None:
        edge = "good" if algorithm == "squeeze" else "scale"
    flags = np.zeros((n_w, ny, nx), dtype=np.uint8)
    score = np.full((n_w, ny, nx), np.nan)
    for w in range(n_w):
        grid = {(x, y): int(s[w, y, x]) for y in range(ny) for x in range(nx)}

        def off(p, grid=grid):
            return grid.get(p, -1) < 0

        for y in range(ny):
            for x in range(nx):
                if grid[(x, y)] != 0 or (ring_mask is not None and not ring_mask[y][x]):
                    continue
                adj = [(x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)]
                dia = [(x + 1, y + 1), (x - 1, y + 1), (x + 1, y - 1), (x - 1, y - 1)]
                near = {"adjacent": adj, "corner": dia, "both": adj + dia}[edge_type]
                is_edge = any(off(p) for p in near)
                if is_edge and edge == "ignore":
                    continue
                total = 0.0
                zones = set()
                for dy in range(-h, h + 1):
                    for dx in range(-h, h + 1):
                        if dx == 0 and dy == 0:
                            continue
                        p = (x + dx, y + dy)
                        is_bad = grid.get(p, -1) == 1 or (edge == "bad" and off(p))
                        if not is_bad:
                            continue
                        r = max(abs(dx), abs(dy))
                        a, d = pairs[r - 1]
                        total += 1.0 if algorithm == "squeeze" else (d if abs(dx) == abs(dy) else a)
                        zones.add((np.sign(dx), np.sign(dy)))
                if is_edge and edge == "scale":
                    total *= edge_scale
                if algorithm == "squeeze":
                    ok = total >= fail_count
                    if fail_count >= 2:
                        opposite = any(
                            (zx, zy) in zones and (-zx, -zy) in zones for zx, zy in zones
                        )
                        ok = ok and opposite
                else:
                    ok = total >= threshold
                flags[w, y, x] = ok
                score[w, y, x] = total
    if squeeze:
        flags, score = flags[0], score[0]
    return (flags, score) if return_score else flags


# --- NNR -----------------------------------------------------------------------------------------


def nnr_residuals(values, window=5, la_percent=70.0, min_neighbours=1):
    """Per die: valid window neighbours sorted by (|v - c|, v), the first k kept, their median."""
    v = np.asarray(values, dtype=np.float64)
    shape = v.shape
    planes = v.reshape((-1, shape[-2], shape[-1]))
    k = max(1, math.ceil(Fraction(str(float(la_percent))) * window * window / 100))
    h = window // 2
    out = np.full(planes.shape, np.nan)
    for g, plane in enumerate(planes):
        ny, nx = plane.shape
        for y in range(ny):
            for x in range(nx):
                c = plane[y, x]
                if math.isnan(c):
                    continue
                nb = [
                    float(plane[yy, xx])
                    for yy in range(y - h, y + h + 1)
                    for xx in range(x - h, x + h + 1)
                    if 0 <= yy < ny
                    and 0 <= xx < nx
                    and (yy, xx) != (y, x)
                    and not math.isnan(plane[yy, xx])
                ]
                if len(nb) < min_neighbours or not nb:
                    continue
                nb.sort(key=lambda u, c=c: (abs(u - c), u))
                out[g, y, x] = c - float(np.median(nb[: min(k, len(nb))]))
    return out.reshape(shape)


# --- stacks --------------------------------------------------------------------------------------


def zstack(state):
    s, _ = _stack(state)
    n_w, ny, nx = s.shape
    fails = np.zeros((ny, nx), dtype=np.int32)
    tested = np.zeros((ny, nx), dtype=np.int32)
    for y in range(ny):
        for x in range(nx):
            fails[y, x] = sum(1 for w in range(n_w) if s[w, y, x] == 1)
            tested[y, x] = sum(1 for w in range(n_w) if s[w, y, x] >= 0)
    return fails, tested


def zpat_threshold(fails, n_wafers, threshold_pct):
    if threshold_pct <= 0 or n_wafers == 0:
        return np.zeros(np.shape(fails), dtype=bool)
    need = max(1, math.ceil(Fraction(str(float(threshold_pct))) * n_wafers / 100))
    return np.asarray(fails) >= need


def binomial_sf(k, n, p):
    """Exact tail in rational arithmetic (p as the exact binary fraction of the float)."""
    kk, nn, pp = np.broadcast_arrays(np.asarray(k), np.asarray(n), np.asarray(p, dtype=np.float64))
    out = np.empty(kk.shape)
    for idx in np.ndindex(kk.shape):
        ki, ni, pf = int(kk[idx]), int(nn[idx]), Fraction(float(pp[idx]))
        total = sum(
            math.comb(ni, j) * pf**j * (1 - pf) ** (ni - j) for j in range(max(ki, 0), ni + 1)
        )
        out[idx] = float(total) if ki <= ni else 0.0
    return out


def zpat_binomial(fails, tested, alpha=0.05, method="bonferroni", p=None):
    f = np.asarray(fails)
    t = np.asarray(tested)
    if p is None:
        p = float(f.sum()) / int(t.sum()) if t.sum() else 0.0
    pv = np.where(t > 0, binomial_sf(f, t, p), np.nan)
    locs = [idx for idx in np.ndindex(f.shape) if t[idx] > 0]
    m = len(locs)
    flags = np.zeros(f.shape, dtype=bool)
    if method == "bonferroni":
        for idx in locs:
            flags[idx] = pv[idx] < alpha / m
    else:  # Benjamini-Hochberg step-up: largest rank r with p_(r) <= alpha r / m
        ranked = sorted(locs, key=lambda i: pv[i])
        r = 0
        for j, idx in enumerate(ranked, start=1):
            if pv[idx] <= alpha * j / m:
                r = j
        for idx in ranked[:r]:
            flags[idx] = True
    return flags, pv


def cluster_ink(
    state, min_size=50, rings=1, *, connectivity=4, ignore_lines=True, light_outline=False,
    window=3, ring_weights=None, threshold=8.0, edge_scale=1.1,
):  # fmt: skip
    s, squeeze = _stack(state)
    n_w, ny, nx = s.shape
    h = window // 2
    pairs = [(2.0, 1.0)] if ring_weights is None else [tuple(map(float, p)) for p in ring_weights]
    pairs += [(1.0, 1.0)] * (h - len(pairs))
    ink = np.zeros((n_w, ny, nx), dtype=np.uint8)
    for w in range(n_w):
        n_die = int((s[w] >= 0).sum())
        need = math.ceil(min_size) if min_size > 0 else max(1, math.ceil(n_die * -min_size / 100))
        labels, n = label_components(s[w] == 1, connectivity)
        seed = set()
        for lab in range(1, int(n[0]) + 1):
            pts = [(x, y) for y in range(ny) for x in range(nx) if labels[y, x] == lab]
            line = len({p[0] for p in pts}) == 1 or len({p[1] for p in pts}) == 1
            if len(pts) >= need and not (ignore_lines and line):
                seed.update(pts)
        for _ in range(rings):
            new = set()
            for y in range(ny):
                for x in range(nx):
                    if s[w, y, x] != 0 or (x, y) in seed:
                        continue
                    if light_outline:
                        total = 0.0
                        for dy in range(-h, h + 1):
                            for dx in range(-h, h + 1):
                                if (x + dx, y + dy) in seed and (dx, dy) != (0, 0):
                                    a, d = pairs[max(abs(dx), abs(dy)) - 1]
                                    total += d if abs(dx) == abs(dy) else a
                        edge = any(
                            not (0 <= x + dx < nx and 0 <= y + dy < ny) or s[w, y + dy, x + dx] < 0
                            for dx in (-1, 0, 1)
                            for dy in (-1, 0, 1)
                        )
                        if edge:
                            total *= edge_scale
                        hit = total >= threshold
                    else:
                        hit = any(
                            (x + dx, y + dy) in seed for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                        )
                    if hit:
                        new.add((x, y))
            if not new:
                break
            seed |= new
            for x, y in new:
                ink[w, y, x] = 1
    return ink[0] if squeeze else ink


def reticle_stack(state, position, n_positions):
    s, _ = _stack(state)
    n_w, ny, nx = s.shape
    fails = np.zeros((n_w, n_positions), dtype=np.int64)
    tested = np.zeros((n_w, n_positions), dtype=np.int64)
    for w in range(n_w):
        for y in range(ny):
            for x in range(nx):
                q = int(position[y][x])
                if s[w, y, x] >= 0 and q >= 0:
                    tested[w, q] += 1
                    fails[w, q] += int(s[w, y, x] == 1)
    return fails, tested


# --- spatial statistics ---------------------------------------------------------------------------


def _weights(die, connectivity):
    """Explicit symmetric binary weight matrix over the die list."""
    index = {p: i for i, p in enumerate(die)}
    n = len(die)
    wmat = np.zeros((n, n))
    for (x, y), i in index.items():
        for dx, dy in _nbrs(connectivity):
            j = index.get((x + dx, y + dy))
            if j is not None:
                wmat[i, j] = 1.0
    return wmat


def _s012(wmat):
    s0 = wmat.sum()
    s1 = 0.5 * ((wmat + wmat.T) ** 2).sum()
    s2 = ((wmat.sum(axis=1) + wmat.sum(axis=0)) ** 2).sum()
    return s0, s1, s2


def _falling(a, k):
    out = 1
    for j in range(k):
        out *= a - j
    return out


def join_counts(state, connectivity=4):
    """BB/BW/WW from the explicit weight matrix; moments in exact rational arithmetic."""
    s, _ = _stack(state)
    keys = (
        "n_die",
        "n_fail",
        "bb",
        "bw",
        "ww",
        "s0",
        "s1",
        "s2",
        "expected_free",
        "variance_free",
        "z_free",
        "expected",
        "variance",
        "z",
    )
    out = {k: [] for k in keys}
    for plane in s:
        die = [
            (x, y) for y in range(plane.shape[0]) for x in range(plane.shape[1]) if plane[y, x] >= 0
        ]
        xv = np.array([float(plane[y, x] == 1) for x, y in die])
        wmat = _weights(die, connectivity)
        s0, s1, s2 = _s012(wmat)
        n, n1 = len(die), int(xv.sum())
        bb = round(0.5 * xv @ wmat @ xv)
        ww = round(0.5 * (1 - xv) @ wmat @ (1 - xv))
        bw = round(s0 / 2) - bb - ww
        S0, S1, S2 = (Fraction(round(v)) for v in (s0, s1, s2))
        p = Fraction(n1, n) if n else Fraction(0)
        e_free = S0 / 2 * p**2
        v_free = (S1 * p**2 + (S2 - 2 * S1) * p**3 + (S1 - S2) * p**4) / 4
        r = [
            Fraction(_falling(n1, k), _falling(n, k)) if n >= k else Fraction(0) for k in (2, 3, 4)
        ]
        e = S0 / 2 * r[0]
        v = (S1 * r[0] + (S2 - 2 * S1) * r[1] + (S0**2 + S1 - S2) * r[2]) / 4 - e**2
        vals = {
            "n_die": n, "n_fail": n1, "bb": bb, "bw": bw, "ww": ww, "s0": s0, "s1": s1, "s2": s2,
            "expected_free": float(e_free), "variance_free": float(v_free),
            "z_free": (bb - float(e_free)) / math.sqrt(v_free) if v_free > 0 else math.nan,
            "expected": float(e), "variance": float(v),
            "z": (bb - float(e)) / math.sqrt(v) if v > 0 else math.nan,
        }  # fmt: skip
        for k in keys:
            out[k].append(vals[k])
    return {k: np.array(v) for k, v in out.items()}


def _splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def join_count_permutation(state, connectivity=4, n_perm=999, seed=0):
    """The same SplitMix64 stream and partial Fisher-Yates draws as the kernel, in Python ints."""
    s, _ = _stack(state)
    seeds = []
    st = seed & MASK64
    for _ in range(s.shape[0]):
        st, out = _splitmix(st)
        seeds.append(out)
    n_ge = []
    for plane, rng in zip(s, seeds, strict=True):
        die = [
            (x, y) for y in range(plane.shape[0]) for x in range(plane.shape[1]) if plane[y, x] >= 0
        ]
        fails = {p for p in die if plane[p[1], p[0]] == 1}
        n, n1 = len(die), len(fails)
        nb = _nbrs(connectivity)

        def bb_of(chosen, nb=nb):
            return sum(1 for p in chosen for dx, dy in nb if (p[0] + dx, p[1] + dy) in chosen) // 2

        observed = bb_of(fails)
        if n1 in (0, n):
            n_ge.append(n_perm)
            continue
        cells = list(die)
        count = 0
        for _ in range(n_perm):
            for i in range(n1):
                rng, r = _splitmix(rng)
                j = i + r % (n - i)
                cells[i], cells[j] = cells[j], cells[i]
            count += bb_of(set(cells[:n1])) >= observed
        n_ge.append(count)
    n_ge = np.array(n_ge, dtype=np.int64)
    return {"n_ge": n_ge, "p_value": (n_ge + 1.0) / (n_perm + 1.0)}


def morans_i(values, connectivity=4):
    v, _ = _stack(np.asarray(values, dtype=np.float64))
    out = {k: [] for k in ("n", "i", "expected", "variance", "z")}
    for plane in v:
        die = [
            (x, y)
            for y in range(plane.shape[0])
            for x in range(plane.shape[1])
            if not math.isnan(plane[y, x])
        ]
        n = len(die)
        z = np.array([plane[y, x] for x, y in die])
        z = z - z.mean() if n else z
        wmat = _weights(die, connectivity)
        s0, s1, s2 = _s012(wmat)
        m2 = float((z**2).sum())
        e = -1.0 / (n - 1) if n >= 2 else math.nan
        if n >= 4 and s0 > 0 and m2 > 0:
            i = n / s0 * float(z @ wmat @ z) / m2
            b2 = n * float((z**4).sum()) / m2**2
            num = n * ((n * n - 3 * n + 3) * s1 - n * s2 + 3 * s0**2) - b2 * (
                (n * n - n) * s1 - 2 * n * s2 + 6 * s0**2
            )
            var = num / ((n - 1) * (n - 2) * (n - 3) * s0**2) - e**2
            zz = (i - e) / math.sqrt(var) if var > 0 else math.nan
        else:
            i = var = zz = math.nan
        for k, val in zip(("n", "i", "expected", "variance", "z"), (n, i, e, var, zz), strict=True):
            out[k].append(val)
    return {k: np.array(val, dtype=np.float64) for k, val in out.items()}


def runs_test(sequence, offsets):
    seq = [int(bool(v)) for v in np.asarray(sequence).tolist()]
    off = np.asarray(offsets).tolist()
    res = {k: [] for k in ("n1", "n2", "runs", "expected", "variance", "z")}
    for g in range(len(off) - 1):
        part = seq[off[g] : off[g + 1]]
        n1 = sum(part)
        n2 = len(part) - n1
        runs = sum(1 for i, v in enumerate(part) if i == 0 or v != part[i - 1])
        n = n1 + n2
        if n1 and n2:
            e = 2 * n1 * n2 / n + 1
            var = 2 * n1 * n2 * (2 * n1 * n2 - n) / (n * n * (n - 1))
            z = (runs - e) / math.sqrt(var) if var > 0 else math.nan
        else:
            e = var = z = math.nan
        for k, val in zip(res, (n1, n2, runs, e, var, z), strict=True):
            res[k].append(val)
    return {k: np.array(v) for k, v in res.items()}


def serpentine_sequences(state):
    s, _ = _stack(state)
    seq, offsets = [], [0]
    for plane in s:
        for y in range(plane.shape[0]):
            xs = range(plane.shape[1]) if y % 2 == 0 else range(plane.shape[1] - 1, -1, -1)
            seq += [int(plane[y, x] == 1) for x in xs if plane[y, x] >= 0]
        offsets.append(len(seq))
    return np.array(seq, dtype=np.uint8), np.array(offsets, dtype=np.int64)


def quadrat_counts(state, qx=3, qy=3, min_fill=1.0, origin=(0, 0)):
    s, _ = _stack(state)
    ox, oy = origin
    min_die = max(1, math.ceil(min_fill * qx * qy - 1e-9))
    fails, die, offsets = [], [], [0]
    for plane in s:
        ny, nx = plane.shape
        for by in range((ny - oy) // qy):
            for bx in range((nx - ox) // qx):
                cells = [
                    plane[oy + by * qy + j, ox + bx * qx + i] for j in range(qy) for i in range(qx)
                ]
                nd = sum(1 for c in cells if c >= 0)
                if nd >= min_die:
                    fails.append(sum(1 for c in cells if c == 1))
                    die.append(nd)
        offsets.append(len(fails))
    return (
        np.array(fails, dtype=np.int64),
        np.array(die, dtype=np.int64),
        np.array(offsets, dtype=np.int64),
    )


def dispersion(state, qx=3, qy=3, min_fill=1.0):
    fails, _, off = quadrat_counts(state, qx, qy, min_fill)
    res = {
        k: []
        for k in (
            "n_quadrats",
            "mean",
            "variance",
            "index",
            "chi2",
            "ics",
            "mean_crowding",
            "alpha",
        )
    }
    for g in range(len(off) - 1):
        c = [float(v) for v in fails[off[g] : off[g + 1]]]
        q = len(c)
        m = sum(c) / q if q else math.nan
        s2 = sum((v - m) ** 2 for v in c) / (q - 1) if q > 1 else math.nan
        ok = q > 1 and m > 0
        idx = s2 / m if ok else math.nan
        res["n_quadrats"].append(q)
        res["mean"].append(m)
        res["variance"].append(s2)
        res["index"].append(idx)
        res["chi2"].append((q - 1) * idx if ok else math.nan)
        res["ics"].append(idx - 1.0)
        res["mean_crowding"].append(m + s2 / m - 1.0 if ok else math.nan)
        res["alpha"].append((m * m / (s2 - m) if s2 > m else math.inf) if ok else math.nan)
    return {k: np.array(v, dtype=np.float64) for k, v in res.items()}


def window_yields(state, shapes=((1, 1), (2, 1), (2, 2), (3, 2), (3, 3))):
    s, _ = _stack(state)
    windows = np.zeros((s.shape[0], len(shapes)), dtype=np.int64)
    good = np.zeros_like(windows)
    for w, plane in enumerate(s):
        ny, nx = plane.shape
        for k, (wx, wy) in enumerate(shapes):
            for by in range(ny // wy):
                for bx in range(nx // wx):
                    cells = [plane[by * wy + j, bx * wx + i] for j in range(wy) for i in range(wx)]
                    if all(c >= 0 for c in cells):
                        windows[w, k] += 1
                        good[w, k] += all(c == 0 for c in cells)
    return np.array([wx * wy for wx, wy in shapes], dtype=np.int64), windows, good


# --- yield models --------------------------------------------------------------------------------


def poisson_yield(ad):
    return np.array([math.exp(-a) for a in np.ravel(ad)]).reshape(np.shape(ad))


def murphy_yield(ad):
    return np.array([(-math.expm1(-a) / a) ** 2 if a > 0 else 1.0 for a in np.ravel(ad)]).reshape(
        np.shape(ad)
    )


def seeds_yield(ad):
    return np.array([1 / (1 + a) for a in np.ravel(ad)]).reshape(np.shape(ad))


def bose_einstein_yield(ad, n_layers):
    return np.array([(1 + a) ** -n_layers for a in np.ravel(ad)]).reshape(np.shape(ad))


def negative_binomial_yield(ad, alpha):
    return np.array([(1 + a / alpha) ** -alpha for a in np.ravel(ad)]).reshape(np.shape(ad))


def window_model(k, y0, ad, alpha):
    return np.array([y0 * (1 + kk * ad / alpha) ** -alpha for kk in np.ravel(k)]).reshape(
        np.shape(k)
    )


# --- STDF decoding (backend_fab_kernels.stdf_decode) ---------------------------------------------


def _stdf_uint(buf, p, size, big_endian):
    return int.from_bytes(bytes(buf[p : p + size]), "big" if big_endian else "little")


def index_records(buf, start=0, big_endian=False):
    buf = bytes(np.asarray(buf, dtype=np.uint8))
    offsets, keys, lengths = [], [], []
    pos, status = start, 0
    while pos + 4 <= len(buf):
        length = _stdf_uint(buf, pos, 2, big_endian)
        if length == 0 and buf[pos + 2] == 0 and buf[pos + 3] == 0:
            status = 1
            break
        if pos + 4 + length > len(buf):
            break
        offsets.append(pos)
        keys.append(buf[pos + 2] * 256 + buf[pos + 3])
        lengths.append(length)
        pos += 4 + length
    return (np.array(offsets, np.int64), np.array(keys, np.uint16), np.array(lengths, np.int32),
            pos, status)  # fmt: skip


_FIXED = {0: 1, 1: 2, 2: 4, 3: 8, 4: 1, 5: 2, 6: 4, 7: 8, 8: 4, 9: 8, 10: 1, 11: 1}
_VN = {0: 0, 1: 1, 2: 2, 3: 4, 4: 1, 5: 2, 6: 4, 7: 4, 8: 8, 13: 1}


def _item_size(buf, q, t, width, big_endian):
    """Bytes of one item of type t at q (None when its length prefix is itself cut off)."""
    if t in _FIXED:
        return _FIXED[t]
    if t in (20, 22):  # Cn, Bn
        return None if q + 1 > len(buf) else 1 + buf[q]
    if t == 21:  # Sn
        return None if q + 2 > len(buf) else 2 + _stdf_uint(buf, q, 2, big_endian)
    if t == 23:  # Dn
        return None if q + 2 > len(buf) else 2 + (_stdf_uint(buf, q, 2, big_endian) + 7) // 8
    if t in (25, 26):  # Uf, Cf
        return width
    if t == 27:  # Vn
        if q + 1 > len(buf):
            return None
        code = buf[q]
        if code in _VN:
            return 1 + _VN[code]
        if code in (10, 11):
            return None if q + 2 > len(buf) else 2 + buf[q + 1]
        if code == 12:
            return (
                None if q + 3 > len(buf) else 3 + (_stdf_uint(buf, q + 1, 2, big_endian) + 7) // 8
            )
        return -1
    raise ValueError(t)


def walk_fields(buf, offsets, lengths, big_endian, types, count_refs, size_refs, store):
    data = bytes(np.asarray(buf, dtype=np.uint8))
    n, nf = len(offsets), len(types)
    slot = {int(f): s for s, f in enumerate(store)}
    n_present = np.zeros(n, np.int16)
    starts = np.full((len(store), n), 0xFFFF, np.uint16)
    counts = np.zeros((len(store), n), np.uint16)
    for r in range(n):
        rec = data[: int(offsets[r]) + 4 + int(lengths[r])]
        p = int(offsets[r]) + 4
        end = len(rec)
        values = {}
        k = 0
        for f in range(nf):
            t, cref = int(types[f]), int(count_refs[f])
            nitems = values[cref] if cref >= 0 else 1
            if p >= end:
                if cref >= 0 and cref < k and nitems == 0:
                    if f in slot:
                        starts[slot[f], r] = p - int(offsets[r]) - 4
                        counts[slot[f], r] = 0
                    k = f + 1
                    continue
                break
            width = values[int(size_refs[f])] if t in (25, 26) else 0
            if t == 25 and nitems > 0 and width not in (1, 2, 4, 8):
                n_present[r] = f
                return n_present, starts, counts, r, f
            if t == 24:
                size = (nitems + 1) // 2
            elif cref >= 0 and t in _FIXED:
                size = nitems * _FIXED[t]
            else:
                q = p
                for _ in range(nitems):
                    s = _item_size(rec, q, t, width, big_endian)
                    if s is None or s < 0:
                        n_present[r] = f
                        return n_present, starts, counts, r, f
                    q += s
                size = q - p
            if p + size > end:
                n_present[r] = f
                return n_present, starts, counts, r, f
            if cref < 0 and t <= 7:
                values[f] = _stdf_uint(rec, p, _FIXED[t], big_endian)
            if f in slot:
                starts[slot[f], r] = p - int(offsets[r]) - 4
                counts[slot[f], r] = nitems
            p += size
            k = f + 1
        n_present[r] = k
    return n_present, starts, counts, -1, -1


def gather_uint(buf, starts, size, big_endian):
    data = bytes(np.asarray(buf, dtype=np.uint8))
    out = [0 if p < 0 else _stdf_uint(data, int(p), size, big_endian) for p in starts]
    return np.array(out, dtype=np.uint64).view(np.int64)


def gather_strings(buf, starts, prefix=1, big_endian=False, latin1=True):
    data = bytes(np.asarray(buf, dtype=np.uint8))
    parts, offsets = [], [0]
    for p in starts:
        raw = b""
        if p >= 0:
            n = _stdf_uint(data, int(p), prefix, big_endian)
            raw = data[int(p) + prefix : int(p) + prefix + n]
            if latin1:
                raw = raw.decode("latin-1").encode("utf-8")
        parts.append(raw)
        offsets.append(offsets[-1] + len(raw))
    return np.frombuffer(b"".join(parts), dtype=np.uint8), np.array(offsets, np.int64)


def gather_uint_arrays(buf, starts, counts, size, big_endian):
    data = bytes(np.asarray(buf, dtype=np.uint8))
    values, offsets = [], [0]
    for p, c in zip(starts, counts, strict=True):
        if p >= 0:
            values += [_stdf_uint(data, int(p) + j * size, size, big_endian) for j in range(c)]
        offsets.append(len(values))
    return np.array(values, dtype=np.uint64).view(np.int64), np.array(offsets, np.int64)


def gather_nibbles(buf, starts, counts):
    data = bytes(np.asarray(buf, dtype=np.uint8))
    values, offsets = [], [0]
    for p, c in zip(starts, counts, strict=True):
        if p >= 0:
            values += [(data[int(p) + j // 2] >> (4 * (j % 2))) & 0x0F for j in range(c)]
        offsets.append(len(values))
    return np.array(values, dtype=np.uint8), np.array(offsets, np.int64)


def assign_parts(kinds, heads, sites, open_slot, next_slot, next_part, slot_part):
    open_ = {hs: int(s) for hs, s in enumerate(open_slot) if s >= 0}
    n = len(kinds)
    rec_slot = np.full(n, -1, np.int64)
    rec_part = np.full(n, -1, np.int64)
    crossed = 0
    for i in range(n):
        hs = int(heads[i]) * 256 + int(sites[i])
        if kinds[i] == 1:
            if hs in open_:
                return rec_slot, rec_part, next_slot, next_part, crossed, 2, i
            open_[hs] = next_slot
            open_slot[hs] = next_slot
            rec_slot[i] = next_slot
            next_slot += 1
        elif kinds[i] == 2:
            if hs not in open_:
                if len(open_) != 1:
                    return rec_slot, rec_part, next_slot, next_part, crossed, 1, i
                hs = next(iter(open_))
                crossed += 1
            s = open_.pop(hs)
            open_slot[hs] = -1
            slot_part[s] = next_part
            rec_slot[i], rec_part[i] = s, next_part
            next_part += 1
        elif kinds[i] == 3:
            rec_slot[i] = open_.get(hs, -1)
    return rec_slot, rec_part, next_slot, next_part, crossed, 0, -1


def carry_forward(values, given, key_local, key_test):
    local, test = {}, {}
    out = np.array(values, copy=True)
    valid = np.zeros(len(values), dtype=bool)
    for i, (v, g, a, t) in enumerate(zip(values, given, key_local, key_test, strict=True)):
        if g:
            local.setdefault(a, (v, g == 1))
            test.setdefault(t, (v, g == 1))
            out[i], valid[i] = v, g == 1
        elif a in local:
            out[i], valid[i] = local[a]
        elif t in test:
            out[i], valid[i] = test[t]
    return out, valid


def retest_chains(pred):
    depth, final = [], [True] * len(pred)
    for j in pred:
        depth.append(0 if j < 0 else depth[j] + 1)
        if j >= 0:
            final[j] = False
    return np.array(depth, np.int64), np.array(final, bool)


def group_ids(keys):
    seen = {}
    ids = [seen.setdefault(int(k), len(seen)) for k in keys]
    first = {}
    for i, g in enumerate(ids):
        first.setdefault(g, i)
    return np.array(ids, np.int64), np.array([first[g] for g in range(len(seen))], np.int64)


def first_per_group(ids, flags, n_groups):
    out = [-1] * n_groups
    for i, (g, f) in enumerate(zip(ids, flags, strict=True)):
        if f and out[g] < 0:
            out[g] = i
    return np.array(out, np.int64)


def count_repeated_pairs(a, b, nb):
    pairs = list(zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True))
    return len(pairs) - len(set(pairs))


def previous_in_group(ids, n_groups):
    last, prev = {}, []
    for i, g in enumerate(ids):
        prev.append(-1 if g < 0 else last.get(g, -1))
        if g >= 0:
            last[g] = i
    return np.array(prev, np.int64)


def gather_columns(buf, offsets, lengths, rel, sizes, big_endian):
    data = bytes(np.asarray(buf, dtype=np.uint8))
    out = np.zeros((len(rel), len(offsets)), np.uint32)
    for i, (o, n) in enumerate(zip(offsets, lengths, strict=True)):
        for f, (r, z) in enumerate(zip(rel, sizes, strict=True)):
            if r + z <= n:
                out[f, i] = _stdf_uint(data, int(o) + 4 + int(r), int(z), big_endian)
    return out


def record_kinds(buf, offsets, keys, lengths):
    data = bytes(np.asarray(buf, dtype=np.uint8))
    kinds, heads, sites = [], [], []
    for o, k, n in zip(offsets, keys, lengths, strict=True):
        p = int(o) + 4
        kind, h, s = 0, 0, 0
        if k in (0x050A, 0x0514) and n >= 2:
            kind, h, s = (1 if k == 0x050A else 2), data[p], data[p + 1]
        elif k in (0x0F0A, 0x0F0F, 0x0F14) and n >= 6:
            kind, h, s = 3, data[p + 4], data[p + 5]
        kinds.append(kind)
        heads.append(h)
        sites.append(s)
    return np.array(kinds, np.uint8), np.array(heads, np.uint8), np.array(sites, np.uint8)
