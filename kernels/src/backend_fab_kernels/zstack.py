"""Stacked wafer maps and Z-axis PAT (Z-PAT, "wafer map stacking").

DOMAIN §1.3 and §2.5: per location ``(x, y)`` of a lot's common frame, ``fails`` counts the wafers
whose die there is bad and ``tested`` the wafers that have a die there.

* Threshold rule (Galaxy PAT-Man): the location is rejected on every wafer when
  ``fails >= ceil(n_wafers · T / 100)``; ``T <= 0`` turns the rule off (its default).
* Binomial rule: under H0 a location fails with the lot-average rate ``p = Σ fails / Σ tested``;
  its p-value is ``P(X >= fails | tested, p)``. Locations are flagged at ``alpha / n_locations``
  (Bonferroni, DOMAIN §2.5) or by Benjamini-Hochberg at false-discovery rate ``alpha``
  (DOMAIN §1.3); ``n_locations`` counts the locations with at least one tested die.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from backend_fab_kernels._config import JIT
from backend_fab_kernels._grid import state_stack, writable

__all__ = ["binomial_sf", "zpat_binomial", "zpat_threshold", "zstack"]


@numba.njit(**JIT)
def _zstack(state):
    n_w, ny, nx = state.shape
    fails = np.zeros((ny, nx), dtype=np.int32)
    tested = np.zeros((ny, nx), dtype=np.int32)
    for y in range(ny):
        for w in range(n_w):
            row = state[w, y]
            for x in range(nx):
                s = row[x]
                fails[y, x] += s == 1
                tested[y, x] += s >= 0
    return fails, tested


def zstack(state) -> tuple[np.ndarray, np.ndarray]:
    """Stack the wafers of a lot: per-location fail and tested counts.

    Parameters
    ----------
    state : int8 state grid (n_wafers, ny, nx): -1 no die, 0 good, 1 bad

    Returns
    -------
    fails, tested : int32 arrays (ny, nx)
    """
    st, _ = state_stack("zstack", state)
    return _zstack(st)


def zpat_threshold(fails, n_wafers: int, threshold_pct: float) -> np.ndarray:
    """Locations rejected by the threshold rule: ``fails >= ceil(n_wafers · T / 100)``.

    Returns a bool array like ``fails``; all False when ``threshold_pct <= 0`` (rule off).
    """
    f = np.asarray(fails)
    if f.dtype.kind not in "iu":
        raise TypeError(f"zpat_threshold: fails must be integer counts, got dtype {f.dtype}")
    if not isinstance(n_wafers, int | np.integer) or n_wafers < 0:
        raise ValueError(f"zpat_threshold: n_wafers must be an integer >= 0, got {n_wafers!r}")
    if not math.isfinite(threshold_pct) or threshold_pct > 100:
        raise ValueError(
            f"zpat_threshold: threshold_pct must lie in (0, 100] (<= 0: off), got {threshold_pct!r}"
        )
    if threshold_pct <= 0 or n_wafers == 0:
        return np.zeros(f.shape, dtype=bool)
    from fractions import Fraction

    need = max(1, math.ceil(Fraction(str(float(threshold_pct))) * n_wafers / 100))
    return f >= need


@numba.njit(**JIT)
def _binom_sf_one(k, n, p):
    """P(X >= k) for X ~ Binomial(n, p), summing the pmf in log space (n is a wafer count)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp = math.log(p)
    lq = math.log1p(-p)
    lgn = math.lgamma(n + 1.0)
    total = 0.0
    for j in range(k, n + 1):
        total += math.exp(
            lgn - math.lgamma(j + 1.0) - math.lgamma(n - j + 1.0) + j * lp + (n - j) * lq
        )
    return min(total, 1.0)


@numba.njit(**JIT)
def _binomial_sf(k, n, p):
    out = np.empty(k.size, dtype=np.float64)
    for i in range(k.size):
        out[i] = _binom_sf_one(k[i], n[i], p[i])
    return out


def binomial_sf(k, n, p) -> np.ndarray:
    """Upper tail ``P(X >= k)`` of Binomial(n, p), element-wise (broadcast), float64.

    Direct summation of the pmf in log space: exact to ~1e-12 relative for the wafer counts of a
    lot (n up to a few hundred).
    """
    kk, nn, pp = np.broadcast_arrays(np.asarray(k), np.asarray(n), np.asarray(p, dtype=np.float64))
    if kk.dtype.kind not in "iu" or nn.dtype.kind not in "iu":
        raise TypeError("binomial_sf: k and n must be integers")
    if np.any(nn < 0) or np.any((pp < 0) | (pp > 1) | np.isnan(pp)):
        raise ValueError("binomial_sf: n must be >= 0 and p in [0, 1]")
    shape = kk.shape
    out = _binomial_sf(
        writable(np.ascontiguousarray(kk.ravel(), dtype=np.int64)),
        writable(np.ascontiguousarray(nn.ravel(), dtype=np.int64)),
        writable(np.ascontiguousarray(pp.ravel(), dtype=np.float64)),
    )
    return out.reshape(shape)


def zpat_binomial(fails, tested, alpha: float = 0.05, method: str = "bonferroni", p=None):
    """Locations whose fail count is improbable under the lot-average fail rate.

    Parameters
    ----------
    fails, tested : integer arrays (ny, nx), as :func:`zstack` returns them
    alpha : family-wise error (Bonferroni) or false-discovery rate (BH), default 0.05
    method : "bonferroni" (flag ``pvalue < alpha / n_locations``) or "bh" (Benjamini-Hochberg)
    p : the H0 fail rate; default ``fails.sum() / tested.sum()``

    Returns
    -------
    flags : bool array (ny, nx)
    pvalues : float64 array (ny, nx); NaN where nothing was tested
    """
    f = np.asarray(fails)
    t = np.asarray(tested)
    if f.shape != t.shape:
        raise ValueError(f"zpat_binomial: fails {f.shape} and tested {t.shape} differ in shape")
    if f.dtype.kind not in "iu" or t.dtype.kind not in "iu":
        raise TypeError("zpat_binomial: fails and tested must be integer counts")
    if np.any(f < 0) or np.any(f > t):
        raise ValueError("zpat_binomial: need 0 <= fails <= tested everywhere")
    if not (0 < alpha < 1):
        raise ValueError(f"zpat_binomial: alpha must lie in (0, 1), got {alpha!r}")
    if method not in ("bonferroni", "bh"):
        raise ValueError(f"zpat_binomial: method must be 'bonferroni' or 'bh', got {method!r}")
    total = int(t.sum())
    if p is None:
        p = float(f.sum()) / total if total else 0.0
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"zpat_binomial: p must lie in [0, 1], got {p!r}")
    pv = binomial_sf(f.astype(np.int64), t.astype(np.int64), np.full(f.shape, p))
    tested_loc = t > 0
    pv = np.where(tested_loc, pv, np.nan)
    m = int(tested_loc.sum())
    flags = np.zeros(f.shape, dtype=bool)
    if m == 0:
        return flags, pv
    if method == "bonferroni":
        flags = tested_loc & (pv < alpha / m)
    else:
        vals = pv[tested_loc]
        order = np.argsort(vals, kind="stable")
        ranked = vals[order]
        ok = ranked <= alpha * np.arange(1, m + 1) / m
        n_rej = int(np.nonzero(ok)[0].max()) + 1 if ok.any() else 0
        rej = np.zeros(m, dtype=bool)
        rej[order[:n_rej]] = True
        flags[tested_loc] = rej
    return flags, pv
