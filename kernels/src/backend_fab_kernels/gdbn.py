"""Good Die in Bad Neighbourhood (GDBN, geographic PAT): squeeze and weighting rules.

Definitions (DOMAIN §2.3; Galaxy PAT-Man defaults, implemented from the definitions only):

* The window is ``window x window`` die (3, 5 or 7) centred on a good die. Offsets at chessboard
  distance ``r`` form ring ``r``; in each ring the four corner offsets (``|dx| == |dy| == r``) are
  *diagonal*, every other offset is *adjacent*.
* **Squeeze**: the score is the number of bad die in the window (the centre excluded). Offsets are
  grouped in 8 sub-zones by the signs of ``(dx, dy)``: L, R, B, T and the corners BL, BR, TL, TR.
  The die fails when ``score >= fail_count`` and, for ``fail_count >= 2``, some opposite pair of
  sub-zones both hold a bad die (L·R + B·T + BL·TR + BR·TL > 0). Default ``fail_count = 2``.
* **Weighting**: the score is the sum of the weights of the bad die in the window, with one
  ``(adjacent, diagonal)`` weight pair per ring (default ring 1: (2, 1); further rings (1, 1)
  [U]); the die fails when ``score >= threshold`` (default 8).
* **Edge die**: a good die with an off-wafer position (no die, or off the grid) among its
  neighbours: its 4 adjacent ones (``edge_type="adjacent"``), its 4 diagonal ones (``"corner"``) or
  any of the 8 (``"both"``, default). Policies: ``"ignore"`` (never flag an edge die), ``"good"``
  (off-wafer positions count as good), ``"bad"`` (every off-wafer position in the window counts as
  a bad die, for any die) and ``"scale"`` (an edge die's score is multiplied by ``edge_scale``,
  default 1.1). Defaults: squeeze ``"good"`` (Galaxy ``failWaferEdges = false``), weighting
  ``"scale"``.
* ``ring_mask`` (optional, one ``(ny, nx)`` mask for the whole stack) limits the candidates, e.g. to
  the outer ring of radius 10 die.

Input is an int8 state grid (-1 no die, 0 good, 1 bad; see ``_grid``); the mapping of bins to good
and bad (bad bins default "0, 2-65535") is the adapter's job. Output flags the good die to re-bin.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from backend_fab_kernels._config import JIT, PARALLEL_JIT
from backend_fab_kernels._grid import check_window, plane_mask, state_stack

__all__ = ["EDGE_POLICIES", "EDGE_TYPES", "gdbn", "gdbn_weights"]

EDGE_POLICIES = ("ignore", "good", "bad", "scale")
EDGE_TYPES = ("adjacent", "corner", "both")
_ALGORITHMS = ("squeeze", "weighting")


def gdbn_weights(window: int = 3, ring_weights=None) -> np.ndarray:
    """The ``(window, window)`` float64 weight matrix (centre 0) of the weighting algorithm.

    ``ring_weights`` is a sequence of ``(adjacent, diagonal)`` pairs, ring 1 outwards; rings it
    does not list take ``(1, 1)``. Default ``[(2, 1)]`` (Galaxy: adjacent 2, diagonal 1).
    """
    window = check_window("gdbn_weights", window, 3, 7)
    h = window // 2
    pairs = [(2.0, 1.0)] if ring_weights is None else [tuple(map(float, p)) for p in ring_weights]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(
            f"gdbn_weights: ring_weights must be (adjacent, diagonal) pairs, got {ring_weights!r}"
        )
    if len(pairs) > h:
        raise ValueError(
            f"gdbn_weights: {len(pairs)} rings given for a {window}x{window} window ({h} rings)"
        )
    pairs += [(1.0, 1.0)] * (h - len(pairs))
    w = np.zeros((window, window), dtype=np.float64)
    for dy in range(-h, h + 1):
        for dx in range(-h, h + 1):
            r = max(abs(dx), abs(dy))
            if r == 0:
                continue
            adj, diag = pairs[r - 1]
            w[dy + h, dx + h] = diag if abs(dx) == abs(dy) else adj
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("gdbn_weights: weights must be finite and >= 0")
    return w


@numba.njit(**JIT)
def _pad(state, h, off_bad):
    """Padded uint8 planes: bad (off-wafer included when ``off_bad``) and off-wafer."""
    ny, nx = state.shape
    bad = np.zeros((ny + 2 * h, nx + 2 * h), dtype=np.uint8)
    off = np.ones((ny + 2 * h, nx + 2 * h), dtype=np.uint8)
    if off_bad:
        bad[:, :] = 1
    for y in range(ny):
        for x in range(nx):
            s = state[y, x]
            off[y + h, x + h] = s < 0
            bad[y + h, x + h] = (s == 1) | (off_bad & (s < 0))
    return bad, off


_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
_BYTE1 = np.uint64(0x0101010101010101)
_GATHER = np.uint64(0x0102040810204080)  # moves bit 8j to bit 56 + j (no carries)
# de Bruijn sequence B(2, 6): (2**i * _DEBRUIJN) >> 58 is distinct for every i in 0..63
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_INDEX = np.zeros(64, dtype=np.int64)
for _i in range(64):
    _DEBRUIJN_INDEX[((1 << _i) * 0x03F79D71B4CB0A89 % 2**64) >> 58] = _i
del _i


@numba.njit(**JIT)
def _zero_bytes(t):
    """0x80 in every byte of ``t`` that is zero, 0 elsewhere (exact, no borrow)."""
    return ~(((t & _LOW7) + _LOW7) | t | _LOW7)


@numba.njit(**JIT)
def _movemask(m80):
    """The high bits of the 8 bytes of ``m80`` as an 8-bit integer (bit j = byte j)."""
    return ((m80 >> np.uint64(7)) * _GATHER) >> np.uint64(56)


@numba.njit(**JIT)
def _load8(words, b, plane, y, x):
    """Cells ``x .. x+7`` of row ``y`` as 8 bytes of a uint64, read from ``words`` (the whole
    buffer viewed as uint64, ``b`` the byte offset of the first cell): one or two aligned loads.
    Near the end of the buffer it falls back to byte loads from ``plane``."""
    i = b >> 3
    o = b & 7
    if o == 0 and i < words.size:
        return words[i]
    if o != 0 and i + 1 < words.size:
        sh = np.uint64(8 * o)
        return (words[i] >> sh) | (words[i + 1] << (np.uint64(64) - sh))
    v = np.uint64(0)
    for j in range(8):
        v |= np.uint64(np.uint8(plane[y, x + j])) << np.uint64(8 * j)
    return v


@numba.njit(**JIT)
def _pack_plane(state, base, words, mask, mwords, has_mask, off_bad, bad, off, cand):
    """Bit planes of one wafer, 8 cells per load (``words``: the state buffer viewed as uint64,
    ``base`` the wafer's byte offset in it; ``mwords`` the same for the mask).

    Bit ``x % 64`` of word ``1 + x // 64`` of row ``1 + y`` is cell ``(x, y)``; the frame of
    padding words and rows, and the bits past ``nx``, are off-wafer.
    """
    ny, nx = state.shape
    nwords = bad.shape[1] - 2
    fill_bad = _ONES if off_bad else np.uint64(0)
    bad[:, :] = fill_bad
    off[:, :] = _ONES
    cand[:, :] = 0
    for y in range(ny):
        row = state[y]
        mrow = mask[y]
        for k in range(nwords):
            x0 = 64 * k
            wb = np.uint64(0)
            wo = np.uint64(0)
            wc = np.uint64(0)
            n = min(64, nx - x0)
            full = n - n % 8
            for j in range(0, full, 8):
                v = _load8(words, base + y * nx + x0 + j, state, y, x0 + j)
                sh = np.uint64(j)
                wb |= _movemask(_zero_bytes(v ^ _BYTE1)) << sh
                wo |= _movemask(v & _HIGH) << sh
                good = _zero_bytes(v)
                if has_mask:
                    good &= ~_zero_bytes(_load8(mwords, y * nx + x0 + j, mask, y, x0 + j))
                wc |= _movemask(good) << sh
            for j in range(full, n):
                s = row[x0 + j]
                sh = np.uint64(j)
                wb |= np.uint64(s == 1) << sh
                wo |= np.uint64(s < 0) << sh
                wc |= np.uint64((s == 0) and (not has_mask or mrow[x0 + j] != 0)) << sh
            valid = _ONES if n == 64 else (np.uint64(1) << np.uint64(n)) - np.uint64(1)
            wo |= ~valid
            off[y + 1, k + 1] = wo
            bad[y + 1, k + 1] = (wb | wo) if off_bad else wb & valid
            cand[y + 1, k + 1] = wc & valid


@numba.njit(**JIT)
def _west(r, k):
    """Bits of the cells one column to the left (x - 1) for word ``k`` of padded row ``r``."""
    return (r[k] << np.uint64(1)) | (r[k - 1] >> np.uint64(63))


@numba.njit(**JIT)
def _east(r, k):
    return (r[k] >> np.uint64(1)) | (r[k + 1] << np.uint64(63))


@numba.njit(**JIT)
def _gdbn3_bits_plane(
    state,
    base,
    words,
    mask,
    mwords,
    has_mask,
    flags,
    squeeze_pairs,
    t_plain,
    t_scaled,
    policy,
    edge_type,
):
    """3x3 window on bit planes, 64 die per machine word (bit-sliced counts; Knuth TAOCP 7.1.3).

    ``t_plain[a]`` / ``t_scaled[a]``: the least number of bad diagonal neighbours that flags a die
    with ``a`` bad adjacent neighbours (5 = never), without / with the edge scale.
    """
    ny, nx = flags.shape
    nwords = (nx + 63) // 64
    bad = np.empty((ny + 2, nwords + 2), dtype=np.uint64)
    off = np.empty((ny + 2, nwords + 2), dtype=np.uint64)
    cand = np.empty((ny + 2, nwords + 2), dtype=np.uint64)
    _pack_plane(state, base, words, mask, mwords, has_mask, policy == 2, bad, off, cand)
    zero = np.uint64(0)
    for y in range(ny):
        bm = bad[y]
        bc = bad[y + 1]
        bp = bad[y + 2]
        om = off[y]
        oc = off[y + 1]
        op = off[y + 2]
        for k in range(1, nwords + 1):
            c = cand[y + 1, k]
            if c == zero:
                continue
            lft = _west(bc, k)
            rgt = _east(bc, k)
            dn = bm[k]
            up = bp[k]
            dl = _west(bm, k)
            dr = _east(bm, k)
            ul = _west(bp, k)
            ur = _east(bp, k)
            # a = lft + rgt + dn + up and d = dl + dr + ul + ur, bit-sliced (a0 + 2 a1 + 4 a2)
            s1 = lft ^ rgt
            c1 = lft & rgt
            s2 = dn ^ up
            c2 = dn & up
            a0 = s1 ^ s2
            c3 = s1 & s2
            a1 = c1 ^ c2 ^ c3
            a2 = (c1 & c2) | (c1 & c3) | (c2 & c3)
            s3 = dl ^ ur
            c4 = dl & ur
            s4 = dr ^ ul
            c5 = dr & ul
            d0 = s3 ^ s4
            c6 = s3 & s4
            d1 = c4 ^ c5 ^ c6
            d2 = (c4 & c5) | (c4 & c6) | (c5 & c6)
            eq_a0 = ~(a0 | a1 | a2)
            eq_a1 = a0 & ~a1 & ~a2
            eq_a2 = ~a0 & a1 & ~a2
            eq_a3 = a0 & a1 & ~a2
            eq_a4 = a2 & ~a1 & ~a0
            ge_d1 = d0 | d1 | d2
            ge_d2 = d1 | d2
            ge_d3 = (d1 & d0) | d2
            ge_d4 = d2
            plain = zero
            scaled = zero
            for a in range(5):
                eq = (
                    eq_a0
                    if a == 0
                    else eq_a1
                    if a == 1
                    else eq_a2
                    if a == 2
                    else eq_a3
                    if a == 3
                    else eq_a4
                )
                tp = t_plain[a]
                ts = t_scaled[a]
                gp = (
                    _ONES
                    if tp == 0
                    else ge_d1
                    if tp == 1
                    else ge_d2
                    if tp == 2
                    else ge_d3
                    if tp == 3
                    else ge_d4
                    if tp == 4
                    else zero
                )
                gs = (
                    _ONES
                    if ts == 0
                    else ge_d1
                    if ts == 1
                    else ge_d2
                    if ts == 2
                    else ge_d3
                    if ts == 3
                    else ge_d4
                    if ts == 4
                    else zero
                )
                plain |= eq & gp
                scaled |= eq & gs
            eadj = _west(oc, k) | _east(oc, k) | om[k] | op[k]
            edia = _west(om, k) | _east(om, k) | _west(op, k) | _east(op, k)
            edge = eadj | edia if edge_type == 2 else eadj if edge_type == 0 else edia
            if policy == 3:
                hit = (plain & ~edge) | (scaled & edge)
            elif policy == 0:
                hit = plain & ~edge
            else:
                hit = plain
            if squeeze_pairs:
                hit &= c1 | c2 | (dl & ur) | (dr & ul)
            hit &= c
            if hit == zero:
                continue
            row = flags[y]
            x0 = 64 * (k - 1)
            while hit != zero:  # one step per flagged die: index of the lowest set bit
                low = hit & (~hit + np.uint64(1))
                row[x0 + _DEBRUIJN_INDEX[(low * _DEBRUIJN) >> np.uint64(58)]] = 1
                hit ^= low


@numba.njit(**JIT)
def _gdbn_plane(
    state, mask, flags, score, squeeze, fail_thr, weights, policy, edge_type, scale, want
):
    """Any window: the direct definition."""
    ny, nx = state.shape
    win = weights.shape[0]
    h = win // 2
    bad, off = _pad(state, h, policy == 2)
    for y in range(ny):
        for x in range(nx):
            if state[y, x] != 0 or mask[y, x] == 0:
                flags[y, x] = 0
                if want:
                    score[y, x] = np.nan
                continue
            py = y + h
            px = x + h
            eadj = off[py, px - 1] + off[py, px + 1] + off[py - 1, px] + off[py + 1, px]
            edia = (
                off[py - 1, px - 1]
                + off[py - 1, px + 1]
                + off[py + 1, px - 1]
                + off[py + 1, px + 1]
            )
            edge = (edge_type != 1 and eadj > 0) or (edge_type != 0 and edia > 0)
            if edge and policy == 0:
                flags[y, x] = 0
                if want:
                    score[y, x] = np.nan
                continue
            s = 0.0
            zl = zr = zb = zt = zbl = zbr = ztl = ztr = False
            for dy in range(-h, h + 1):
                for dx in range(-h, h + 1):
                    if (dx != 0 or dy != 0) and bad[py + dy, px + dx]:
                        s += weights[dy + h, dx + h]
                        if dy == 0:
                            if dx < 0:
                                zl = True
                            else:
                                zr = True
                        elif dx == 0:
                            if dy < 0:
                                zb = True
                            else:
                                zt = True
                        elif dy < 0:
                            if dx < 0:
                                zbl = True
                            else:
                                zbr = True
                        elif dx < 0:
                            ztl = True
                        else:
                            ztr = True
            if edge and policy == 3:
                s = s * scale
            ok = s >= fail_thr
            if squeeze and fail_thr > 1.0:
                ok = ok and ((zl and zr) or (zb and zt) or (zbl and ztr) or (zbr and ztl))
            flags[y, x] = ok
            if want:
                score[y, x] = s


@numba.njit(**PARALLEL_JIT)
def _gdbn(
    state,
    mask,
    words,
    mwords,
    has_mask,
    squeeze,
    fail_thr,
    weights,
    policy,
    edge_type,
    scale,
    want,
    t_plain,
    t_scaled,
):
    n_w, ny, nx = state.shape
    flags = np.zeros((n_w, ny, nx), dtype=np.uint8)
    score = np.empty((n_w, ny, nx) if want else (n_w, 1, 1), dtype=np.float64)
    fast = weights.shape[0] == 3 and not want
    pairs = squeeze and fail_thr > 1.0
    for w in numba.prange(n_w):
        if fast:
            _gdbn3_bits_plane(
                state[w],
                np.int64(w) * ny * nx,
                words,
                mask,
                mwords,
                has_mask,
                flags[w],
                pairs,
                t_plain,
                t_scaled,
                policy,
                edge_type,
            )
        else:
            _gdbn_plane(
                state[w], mask, flags[w], score[w], squeeze, fail_thr, weights, policy, edge_type,
                scale, want,
            )  # fmt: skip
    return flags, score


def _as_words(grid: np.ndarray) -> np.ndarray:
    """The first ``size // 8 * 8`` bytes of a C-contiguous int8/uint8 buffer viewed as uint64
    (no copy unless the buffer is not 8-byte aligned)."""
    flat = grid.reshape(-1)
    n = flat.size // 8 * 8
    if flat.ctypes.data % 8:
        flat = flat.copy()
    return flat[:n].view(np.uint64)


def _thresholds(
    squeeze: bool, thr: float, weights: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """For a 3x3 window: least bad-diagonal count that flags, per bad-adjacent count 0..4."""
    return _thresholds_cached(squeeze, thr, float(weights[1, 2]), float(weights[2, 2]), scale)


@functools.lru_cache(maxsize=64)
def _thresholds_cached(squeeze: bool, thr: float, wa: float, wd: float, scale: float):
    t_plain = np.full(5, 5, dtype=np.int64)
    t_scaled = np.full(5, 5, dtype=np.int64)
    for a in range(5):
        for d in range(4, -1, -1):
            s = float(a + d) if squeeze else wa * a + wd * d
            if s >= thr:
                t_plain[a] = d
            if s * scale >= thr:
                t_scaled[a] = d
    t_plain.flags.writeable = False
    t_scaled.flags.writeable = False
    return t_plain, t_scaled


def gdbn(
    state,
    algorithm: str = "squeeze",
    *,
    window: int = 3,
    fail_count: int = 2,
    ring_weights=None,
    threshold: float = 8.0,
    edge: str | None = None,
    edge_scale: float = 1.1,
    edge_type: str = "both",
    ring_mask=None,
    return_score: bool = False,
):
    """Flag the good die in bad neighbourhoods (definitions in the module docstring).

    Parameters
    ----------
    state : int8 state grid (n_wafers, ny, nx) or (ny, nx)
        -1 no die, 0 good, 1 bad (bool: every cell a die, True = bad).
    algorithm : "squeeze" (default) or "weighting"
    window : 3, 5 or 7
    fail_count : squeeze threshold on the number of bad neighbours (default 2)
    ring_weights : weighting ``(adjacent, diagonal)`` pairs per ring, see :func:`gdbn_weights`
    threshold : weighting threshold on the weighted sum (default 8)
    edge : "ignore", "good", "bad" or "scale"; default "good" (squeeze) / "scale" (weighting)
    edge_scale : multiplier of an edge die's score under "scale" (default 1.1)
    edge_type : which neighbours make an edge die: "adjacent", "corner" or "both" (default)
    ring_mask : optional (ny, nx) bool mask of the positions that may be flagged
    return_score : also return the score (float64; the value compared with the threshold, edge
        scaling applied; NaN where the die is not a candidate)

    Returns
    -------
    flags : uint8 array like ``state``; 1 = good die to re-bin. With ``return_score``,
        ``(flags, score)``.
    """
    st, squeeze_out = state_stack("gdbn", state)
    _, ny, nx = st.shape
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"gdbn: algorithm must be one of {_ALGORITHMS}, got {algorithm!r}")
    window = check_window("gdbn", window, 3, 7)
    if edge is None:
        edge = "good" if algorithm == "squeeze" else "scale"
    if edge not in EDGE_POLICIES:
        raise ValueError(f"gdbn: edge must be one of {EDGE_POLICIES}, got {edge!r}")
    if edge_type not in EDGE_TYPES:
        raise ValueError(f"gdbn: edge_type must be one of {EDGE_TYPES}, got {edge_type!r}")
    if not (np.isfinite(edge_scale) and edge_scale > 0):
        raise ValueError(f"gdbn: edge_scale must be a positive number, got {edge_scale!r}")
    mask = plane_mask("gdbn ring_mask", ring_mask, ny, nx)
    has_mask = ring_mask is not None
    if algorithm == "squeeze":
        if not isinstance(fail_count, int | np.integer) or fail_count < 1:
            raise ValueError(f"gdbn: fail_count must be an integer >= 1, got {fail_count!r}")
        weights = np.ones((window, window), dtype=np.float64)
        weights[window // 2, window // 2] = 0.0
        thr = float(fail_count)
    else:
        weights = gdbn_weights(window, ring_weights)
        thr = float(threshold)
        if not np.isfinite(thr):
            raise ValueError(f"gdbn: threshold must be finite, got {threshold!r}")
    t_plain, t_scaled = _thresholds(algorithm == "squeeze", thr, weights, float(edge_scale))
    if window == 3 and not return_score:
        words, mwords = _as_words(st), _as_words(mask)
    else:
        words = mwords = np.zeros(1, dtype=np.uint64)
    flags, score = _gdbn(
        st, mask, words, mwords, has_mask, algorithm == "squeeze", thr, weights, EDGE_POLICIES.index(edge),
        EDGE_TYPES.index(edge_type), float(edge_scale), bool(return_score), t_plain, t_scaled,
    )  # fmt: skip
    if squeeze_out:
        flags, score = flags[0], score[0]
    return (flags, score) if return_score else flags
