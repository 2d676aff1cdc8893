"""Wafer-map fail signatures with ground truth: the WM-811K classes, reticle repeats, bad probe sites.

Every signature is a per-die **fail probability** on die-centre coordinates ``u, v`` normalised by
the wafer radius (the wafer is the unit disk, any die count; :meth:`backend_fab.layout.Layout.
normalized` gives them). A caller draws fails with ``rng.random(p.shape) < p``. Pure numpy,
vectorised, deterministic for a given ``numpy.random.Generator`` state.

Classes (``PATTERN_CLASSES``, exactly the WM-811K ``failureType`` names; Wu, Jang & Chen, IEEE TSM
28(1), 2015) and their parameters. Every parameter not given is drawn from ``rng`` uniformly in the
range shown, in the order listed (so a given seed gives the same map). ``rho_max`` is the largest die
radius on the map (the outermost gross die), ``pitch`` the die pitch in normalised units (estimated
from ``u, v`` unless ``die_pitch`` is given). Shapes have soft edges: a logistic of width
``softness`` (normalised units) so densities fall off over about one die, as on real maps.

=============  ==========================================================================================
class          parameters (range)
=============  ==========================================================================================
every class    ``background`` base random fail rate [0.005, 0.05]; ``die_pitch`` (estimated)
``none``       background only
``Center``     ``cx, cy`` centre (uniform in a disk of radius 0.12); ``radius`` [0.18, 0.40];
               ``density`` [0.55, 0.95]; ``softness`` [0.02, 0.05]
``Donut``      ``cx, cy`` (disk of radius 0.08); ``radius`` (ring middle) [0.35, 0.60]; ``width``
               [0.12, 0.28] (at least 2 pitches); ``density`` [0.5, 0.9]; ``softness`` [0.02, 0.05]
``Edge-Ring``  ``width`` [0.04, 0.14] measured inwards from ``rho_max`` (at least 1.2 pitches);
               ``coverage`` fraction of the circumference [0.75, 1.0]; ``angle`` middle of the
               covered arc [0, 2π); ``density`` [0.5, 0.95]; ``softness`` [0.01, 0.03]
``Edge-Loc``   ``angle`` [0, 2π); ``half_angle`` angular half-width [0.2, 0.6] rad; ``depth``
               [0.08, 0.25] inwards from ``rho_max`` (at least 1.5 pitches); ``density``
               [0.5, 0.95]; ``softness`` [0.015, 0.04]
``Loc``        ``r0`` [0.15, 0.65] and ``angle`` [0, 2π) of the blob centre; ``radius`` [0.07, 0.20]
               (at least 2 pitches); ``aspect`` [1, 2]; ``orientation`` [0, π); ``density``
               [0.55, 0.95]; ``softness`` [0.015, 0.04]
``Scratch``    ``x0, y0`` start (disk of radius 0.75); ``angle`` [0, 2π); ``length`` [0.35, 1.2];
               ``curvature`` [-0.8, 0.8] (1/radius, normalised units); ``width`` [1.0, 2.0] in
               die pitches; ``density`` [0.7, 1.0]
``Random``     ``density`` [0.15, 0.45] uniform over the wafer (replaces ``background``)
``Near-full``  ``density`` [0.80, 0.98] uniform over the wafer (replaces ``background``)
=============  ==========================================================================================

The final probability is ``1 - (1 - background) * (1 - signature)``. ``params_used`` returns every
parameter actually used (plain floats, JSON-ready), so the truth of a wafer can be stored and the
same map redrawn: ``draw_signature(kind, u, v, rng, **params_used)`` gives the same probabilities.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "PATTERN_CLASSES",
    "WM811K_FRACTIONS",
    "bad_site",
    "combine",
    "draw_signature",
    "draw_signature_on",
    "estimate_pitch",
    "reticle_repeat",
    "sample_fails",
    "wafer_geometry",
]

#: The WM-811K failure classes, spelled as in the dataset.
PATTERN_CLASSES: tuple[str, ...] = (
    "none",
    "Center",
    "Donut",
    "Edge-Loc",
    "Edge-Ring",
    "Loc",
    "Scratch",
    "Random",
    "Near-full",
)

#: Class fractions of the 172,950 labelled WM-811K maps (DOMAIN.md §3.5): a realistic prior.
WM811K_FRACTIONS: dict[str, float] = {
    "none": 147431 / 172950,
    "Edge-Ring": 9680 / 172950,
    "Edge-Loc": 5189 / 172950,
    "Center": 4294 / 172950,
    "Loc": 3593 / 172950,
    "Scratch": 1193 / 172950,
    "Random": 866 / 172950,
    "Donut": 555 / 172950,
    "Near-full": 149 / 172950,
}

_TWO_PI = 2.0 * math.pi

#: parameter -> (low, high) of the uniform draw, per class, in draw order.
_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "none": {},
    "Center": {
        "radius": (0.18, 0.40),
        "density": (0.55, 0.95),
        "softness": (0.02, 0.05),
    },
    "Donut": {
        "radius": (0.35, 0.60),
        "width": (0.12, 0.28),
        "density": (0.5, 0.9),
        "softness": (0.02, 0.05),
    },
    "Edge-Ring": {
        "width": (0.04, 0.14),
        "coverage": (0.75, 1.0),
        "angle": (0.0, _TWO_PI),
        "density": (0.5, 0.95),
        "softness": (0.01, 0.03),
    },
    "Edge-Loc": {
        "angle": (0.0, _TWO_PI),
        "half_angle": (0.2, 0.6),
        "depth": (0.08, 0.25),
        "density": (0.5, 0.95),
        "softness": (0.015, 0.04),
    },
    "Loc": {
        "r0": (0.15, 0.65),
        "angle": (0.0, _TWO_PI),
        "radius": (0.07, 0.20),
        "aspect": (1.0, 2.0),
        "orientation": (0.0, math.pi),
        "density": (0.55, 0.95),
        "softness": (0.015, 0.04),
    },
    "Scratch": {
        "angle": (0.0, _TWO_PI),
        "length": (0.35, 1.2),
        "curvature": (-0.8, 0.8),
        "width": (1.0, 2.0),
        "density": (0.7, 1.0),
    },
    "Random": {"density": (0.15, 0.45)},
    "Near-full": {"density": (0.80, 0.98)},
}

#: centre offsets drawn uniformly in a disk of this radius (parameters cx, cy / x0, y0)
_CENTRE_DISK = {"Center": 0.12, "Donut": 0.08, "Scratch": 0.75}

_BACKGROUND = (0.005, 0.05)


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def estimate_pitch(u, v) -> float:
    """Die pitch in normalised units from die-centre coordinates (mean of the two axes).

    The smallest positive step between distinct coordinate values, per axis; 2/sqrt(n) for a
    single row or column, 1.0 when there is a single die.
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    steps = []
    for a in (u, v):
        vals = np.unique(np.round(a, 9))
        if vals.size > 1:
            steps.append(float(np.diff(vals).min()))
    if steps:
        return float(np.mean(steps))
    return 2.0 / math.sqrt(u.size) if u.size > 1 else 1.0


def _logistic_inside(d: np.ndarray, softness: float) -> np.ndarray:
    """~1 well inside (signed distance d < 0), ~0 outside, 0.5 on the boundary."""
    z = np.clip(d / max(softness, 1e-9), -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(z))


def _disk_point(rng: np.random.Generator, radius: float) -> tuple[float, float]:
    r = radius * math.sqrt(rng.random())
    t = _TWO_PI * rng.random()
    return r * math.cos(t), r * math.sin(t)


def _angle_diff(a: np.ndarray, b: float) -> np.ndarray:
    """Absolute angular difference in [0, π]."""
    d = np.mod(a - b + math.pi, _TWO_PI) - math.pi
    return np.abs(d)


def combine(*probs) -> np.ndarray:
    """Fail probability of independent causes: ``1 - Π(1 - p_i)``."""
    out = np.zeros(np.broadcast(*probs).shape, dtype=np.float64)
    keep = np.ones_like(out)
    for p in probs:
        keep *= 1.0 - np.asarray(p, dtype=np.float64)
    out[...] = 1.0 - keep
    return out


def sample_fails(prob, rng) -> np.ndarray:
    """Bernoulli draws: True where a die fails."""
    prob = np.asarray(prob, dtype=np.float64)
    return _as_rng(rng).random(prob.shape) < prob


def _check_params(kind: str, params: dict) -> None:
    allowed = set(_RANGES[kind]) | {"background", "die_pitch"}
    if kind in _CENTRE_DISK:
        allowed |= {"x0", "y0"} if kind == "Scratch" else {"cx", "cy"}
    unknown = sorted(set(params) - allowed - {"kind"})
    if unknown:
        raise ValueError(
            f"draw_signature({kind!r}): unknown parameter(s) {unknown}; allowed: {sorted(allowed)}"
        )


def draw_signature(kind: str, u, v, rng, /, **params) -> tuple[np.ndarray, dict]:
    """Per-die fail probability of one WM-811K class on a wafer, and the parameters used.

    Parameters
    ----------
    kind : one of :data:`PATTERN_CLASSES`.
    u, v : die-centre coordinates / wafer radius (float arrays of one shape; canonical frame:
        u right, v up). Any die count; an empty array gives an empty result.
    rng : ``numpy.random.Generator`` (or a seed) for the parameters not given.
    **params : fix any parameter of the class (see the module docstring for names and ranges);
        ``kind`` (as stored in ``params_used``) is accepted and must match.

    Returns
    -------
    (fail_prob, params_used): float64 array shaped like ``u`` with values in [0, 1], and a dict
    of every parameter used (``kind`` included).
    """
    return draw_signature_on(kind, u, v, None, rng, **params)


def wafer_geometry(u, v) -> tuple[np.ndarray, np.ndarray, float]:
    """``(rho, theta, rho_max)`` of die-centre coordinates: what every signature is drawn on
    (compute it once per product to draw many wafers with :func:`draw_signature_on`)."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    rho = np.hypot(u, v)
    return rho, np.arctan2(v, u), float(rho.max()) if rho.size else 0.0


def draw_signature_on(kind: str, u, v, geometry, rng, /, **params) -> tuple[np.ndarray, dict]:
    """:func:`draw_signature` with the wafer geometry given (``wafer_geometry(u, v)``, or
    ``None`` to compute it): the same probabilities and parameters for the same draws."""
    if kind not in _RANGES:
        raise ValueError(f"unknown pattern class {kind!r}; expected one of {PATTERN_CLASSES}")
    if "kind" in params and params["kind"] != kind:
        raise ValueError(f"draw_signature: params kind {params['kind']!r} differs from {kind!r}")
    _check_params(kind, params)
    rng = _as_rng(rng)
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if u.shape != v.shape:
        raise ValueError(f"draw_signature: u shape {u.shape} differs from v shape {v.shape}")

    used: dict = {"kind": kind}
    # parameters are drawn in a fixed order whether or not they are given: a fixed parameter
    # leaves the others' draws unchanged
    bg_draw = rng.uniform(*_BACKGROUND)
    background = float(params.get("background", bg_draw))
    if kind in _CENTRE_DISK:
        names = ("x0", "y0") if kind == "Scratch" else ("cx", "cy")
        px, py = _disk_point(rng, _CENTRE_DISK[kind])
        used[names[0]] = float(params.get(names[0], px))
        used[names[1]] = float(params.get(names[1], py))
    for name, (lo, hi) in _RANGES[kind].items():
        drawn = rng.uniform(lo, hi)
        used[name] = float(params.get(name, drawn))
    pitch = params.get("die_pitch")
    pitch = float(pitch) if pitch is not None else (estimate_pitch(u, v) if u.size else 0.05)
    used["die_pitch"] = pitch
    if kind in ("Random", "Near-full"):
        background = 0.0
    used["background"] = background
    if not (0.0 <= background <= 1.0):
        raise ValueError(f"draw_signature({kind!r}): background {background} outside [0, 1]")
    if "density" in used and not (0.0 <= used["density"] <= 1.0):
        raise ValueError(f"draw_signature({kind!r}): density {used['density']} outside [0, 1]")

    if u.size == 0:
        return np.zeros(u.shape, dtype=np.float64), used
    rho, theta, rho_max = wafer_geometry(u, v) if geometry is None else geometry
    sig = _SHAPES[kind](u, v, rho, theta, rho_max, pitch, used)
    prob = 1.0 - (1.0 - background) * (1.0 - sig)
    return np.clip(prob, 0.0, 1.0), used


def _none(u, v, rho, theta, rho_max, pitch, p):
    return np.zeros_like(u)


def _center(u, v, rho, theta, rho_max, pitch, p):
    d = np.hypot(u - p["cx"], v - p["cy"]) - max(p["radius"], 1.5 * pitch)
    return p["density"] * _logistic_inside(d, p["softness"])


def _donut(u, v, rho, theta, rho_max, pitch, p):
    r = np.hypot(u - p["cx"], v - p["cy"])
    half = max(p["width"], 2.0 * pitch) / 2.0
    d = np.abs(r - p["radius"]) - half
    return p["density"] * _logistic_inside(d, p["softness"])


def _edge_ring(u, v, rho, theta, rho_max, pitch, p):
    width = max(p["width"], 1.2 * pitch)
    radial = _logistic_inside((rho_max - width) - rho, p["softness"])
    half_arc = math.pi * p["coverage"]
    if half_arc >= math.pi:
        arc = np.ones_like(u)
    else:
        arc = _logistic_inside(_angle_diff(theta, p["angle"]) - half_arc, 0.1)
    return p["density"] * radial * arc


def _edge_loc(u, v, rho, theta, rho_max, pitch, p):
    depth = max(p["depth"], 1.5 * pitch)
    radial = _logistic_inside((rho_max - depth) - rho, p["softness"])
    # angular extent in arc length so the blob keeps its width at any radius
    arc_len = _angle_diff(theta, p["angle"]) * np.maximum(rho, 1e-9)
    ang = _logistic_inside(arc_len - p["half_angle"] * rho_max, p["softness"])
    return p["density"] * radial * ang


def _loc(u, v, rho, theta, rho_max, pitch, p):
    cx = p["r0"] * math.cos(p["angle"])
    cy = p["r0"] * math.sin(p["angle"])
    c, s = math.cos(p["orientation"]), math.sin(p["orientation"])
    du, dv = u - cx, v - cy
    a = du * c + dv * s
    b = -du * s + dv * c
    radius = max(p["radius"], 2.0 * pitch)
    # ellipse with semi-axes radius*sqrt(aspect) and radius/sqrt(aspect): same area as the disk
    k = math.sqrt(p["aspect"])
    r_ell = np.hypot(a / k, b * k)
    return p["density"] * _logistic_inside(r_ell - radius, 0.5 * p["softness"] + 0.25 * pitch)


def _scratch(u, v, rho, theta, rho_max, pitch, p):
    c, s = math.cos(p["angle"]), math.sin(p["angle"])
    du, dv = u - p["x0"], v - p["y0"]
    t = du * c + dv * s  # along the scratch
    n = -du * s + dv * c  # across it
    # a circular-arc scratch approximated by its parabola n = κ t² / 2 (|κ L| < 1)
    offset = n - 0.5 * p["curvature"] * t * t
    half_w = 0.5 * p["width"] * pitch
    across = _logistic_inside(np.abs(offset) - half_w, 0.25 * pitch)
    along = _logistic_inside(np.abs(t - 0.5 * p["length"]) - 0.5 * p["length"], 0.5 * pitch)
    return p["density"] * across * along


def _uniform(u, v, rho, theta, rho_max, pitch, p):
    return np.full_like(u, p["density"])


_SHAPES = {
    "none": _none,
    "Center": _center,
    "Donut": _donut,
    "Edge-Ring": _edge_ring,
    "Edge-Loc": _edge_loc,
    "Loc": _loc,
    "Scratch": _scratch,
    "Random": _uniform,
    "Near-full": _uniform,
}


def reticle_repeat(
    rx,
    ry,
    rng,
    *,
    reticle_cols: int,
    reticle_rows: int,
    positions: list[tuple[int, int]] | None = None,
    density: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Fail probability of a reticle (mask) defect: the same field position(s) fail in every shot.

    ``rx, ry``: each die's position inside its reticle field (``Layout.reticle_xy``). Draws, when
    not given: the number of positions (1 with probability 0.7, else 2), the positions uniformly
    in the field, ``density`` in [0.5, 0.95]. Returns (fail_prob, {"positions": [[rx, ry], ...],
    "density": d, "reticle_cols": .., "reticle_rows": ..}).
    """
    rng = _as_rng(rng)
    rx = np.asarray(rx)
    ry = np.asarray(ry)
    if reticle_cols < 1 or reticle_rows < 1:
        raise ValueError("reticle_repeat: reticle_cols and reticle_rows must be >= 1")
    n_field = reticle_cols * reticle_rows
    n_pos = 1 if rng.random() < 0.7 else 2
    picks = rng.choice(n_field, size=min(n_pos, n_field), replace=False)
    drawn_density = rng.uniform(0.5, 0.95)
    if positions is None:
        positions = [(int(k % reticle_cols), int(k // reticle_cols)) for k in np.sort(picks)]
    d = float(drawn_density if density is None else density)
    hit = np.zeros(rx.shape, dtype=bool)
    for px, py in positions:
        if not (0 <= px < reticle_cols and 0 <= py < reticle_rows):
            raise ValueError(
                f"reticle_repeat: position ({px}, {py}) outside the "
                f"{reticle_cols}x{reticle_rows} field"
            )
        hit |= (rx == px) & (ry == py)
    prob = np.where(hit, d, 0.0)
    used = {
        "positions": [[int(px), int(py)] for px, py in positions],
        "density": d,
        "reticle_cols": int(reticle_cols),
        "reticle_rows": int(reticle_rows),
    }
    return prob, used


def bad_site(
    site,
    rng,
    *,
    n_sites: int,
    bad: int | None = None,
    extra: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Extra fail probability of die probed by one bad probe-card site (a contact problem).

    ``site``: the site number (0..n_sites-1) of each die. Draws, when not given: the bad site
    uniformly, ``extra`` fail probability in [0.05, 0.25]. Returns (fail_prob, {"site": s,
    "extra": e, "n_sites": n}).
    """
    rng = _as_rng(rng)
    site = np.asarray(site)
    if n_sites < 1:
        raise ValueError("bad_site: n_sites must be >= 1")
    drawn_site = int(rng.integers(0, n_sites))
    drawn_extra = rng.uniform(0.05, 0.25)
    s = drawn_site if bad is None else int(bad)
    if not 0 <= s < n_sites:
        raise ValueError(f"bad_site: site {s} outside 0..{n_sites - 1}")
    e = float(drawn_extra if extra is None else extra)
    prob = np.where(site == s, e, 0.0)
    return prob, {"site": s, "extra": e, "n_sites": int(n_sites)}
