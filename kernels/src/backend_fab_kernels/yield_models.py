"""Yield models: die yield as a function of critical area times defect density (DOMAIN §3.4).

``ad`` is ``A · D0`` (expected defects per die: critical area in cm² times defects per cm²).
Plain numpy functions, element-wise and broadcasting; the fits live in ``backend_fab.spatial``.

* Poisson: ``exp(-AD)``.
* Murphy (triangular density; Murphy, Proc. IEEE 52(12), 1964): ``((1 - exp(-AD)) / AD)²``.
* Seeds (exponential density; Seeds 1967): ``1 / (1 + AD)``.
* Bose-Einstein with ``n`` critical layers: ``(1 + AD)^(-n)``.
* Negative binomial (gamma density of shape alpha; Stapper, IBM J. R&D 1976):
  ``(1 + AD/alpha)^(-alpha)``; alpha -> inf is Poisson, alpha = 1 is Seeds.
* Window method (Stapper 1983; Koren & Koren, Proc. IEEE 86(9), 1998): the yield of a window
  of ``k`` die, ``Y_k = Y0 (1 + k · AD / alpha)^(-alpha)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MODELS",
    "bose_einstein_yield",
    "murphy_yield",
    "negative_binomial_yield",
    "poisson_yield",
    "seeds_yield",
    "window_model",
]


def _ad(ad) -> np.ndarray:
    a = np.asarray(ad, dtype=np.float64)
    if np.any(a < 0) or np.any(np.isnan(a)):
        raise ValueError("yield model: A·D0 must be >= 0")
    return a


def poisson_yield(ad) -> np.ndarray:
    """``exp(-AD)``."""
    return np.exp(-_ad(ad))


def murphy_yield(ad) -> np.ndarray:
    """``((1 - exp(-AD)) / AD)²`` (1 at AD = 0)."""
    a = _ad(ad)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(a > 0, -np.expm1(-a) / np.where(a > 0, a, 1.0), 1.0)
    return r * r


def seeds_yield(ad) -> np.ndarray:
    """``1 / (1 + AD)``."""
    return 1.0 / (1.0 + _ad(ad))


def bose_einstein_yield(ad, n_layers) -> np.ndarray:
    """``(1 + AD)^(-n)`` for ``n`` critical layers (AD per layer)."""
    n = np.asarray(n_layers, dtype=np.float64)
    if np.any(n <= 0):
        raise ValueError("bose_einstein_yield: n_layers must be > 0")
    return (1.0 + _ad(ad)) ** (-n)


def negative_binomial_yield(ad, alpha) -> np.ndarray:
    """``(1 + AD/alpha)^(-alpha)``; ``alpha = inf`` gives the Poisson yield."""
    a = _ad(ad)
    al = np.asarray(alpha, dtype=np.float64)
    if np.any(al <= 0) or np.any(np.isnan(al)):
        raise ValueError("negative_binomial_yield: alpha must be > 0")
    a, al = np.broadcast_arrays(a, al)
    fin = np.isfinite(al)
    safe = np.where(fin, al, 1.0)
    return np.where(fin, np.exp(-safe * np.log1p(a / safe)), np.exp(-a))


def window_model(k, y0, ad, alpha) -> np.ndarray:
    """``Y_k = Y0 (1 + k · AD / alpha)^(-alpha)``: yield of a window of ``k`` die."""
    kk = np.asarray(k, dtype=np.float64)
    if np.any(kk <= 0):
        raise ValueError("window_model: k must be > 0")
    return np.asarray(y0, dtype=np.float64) * negative_binomial_yield(kk * _ad(ad), alpha)


#: name -> (function of AD and the extra parameters, names of the extra parameters)
MODELS = {
    "poisson": (poisson_yield, ()),
    "murphy": (murphy_yield, ()),
    "seeds": (seeds_yield, ()),
    "bose_einstein": (bose_einstein_yield, ("n_layers",)),
    "negative_binomial": (negative_binomial_yield, ("alpha",)),
}
