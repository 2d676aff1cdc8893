"""Synthetic training maps for the wafer-pattern classifier, with randomised geometry and nuisance.

The pattern shapes come from the synthetic fab (:func:`backend_fab.synth.patterns.draw_signature`,
one function for the whole project); this module decides how widely their parameters vary and adds
what real WM-811K maps show on top of a clean shape, so that a model trained here holds up on real
maps it never saw:

* **geometry**: every lot has its own product layout (:class:`backend_fab.layout.Layout`): wafer
  size, die count (log-uniform in ``die_range``), die aspect ratio 0.7-1.4, edge exclusion and the
  wafer centre on a die or between die;
* **pattern parameters**: drawn from :data:`TRAINING_RANGES`, wider than the synthetic fab's own
  defaults (thin and partial edge rings, long and curved scratches, dense and patchy Random maps)
  and passed to ``draw_signature`` explicitly; a scratch is placed by its middle (within 0.65 R of
  the centre) so that it crosses the wafer, and a shape that still falls mostly off the wafer is
  drawn again (``_MIN_VISIBLE``): a map labelled with an invisible pattern only teaches noise;
* **irregular shapes**: the signature is multiplied by a smooth random field (a few random
  plane waves) so blobs and rings have ragged outlines and uneven density, as real ones do;
* **background**: a lot-level base fail rate (log-uniform 0.3-25 %: small real maps often show
  15-25 %), varied per wafer, rising towards the edge by a random radial gradient (capped at 35 %);
* **edge fallout**: on about half the lots the outermost die ring fails more (up to 20 %): real
  "none" maps often have a ragged edge;
* **clumps**: a few small random fail clusters (2-8 die) on any map.

Labels are the drawn class. Maps are grouped in lots (``lot_size`` wafers sharing a layout and
nuisance levels), so that cross-validation can keep lots apart (GroupKFold by ``lot_id``) and
measure what a new lot would see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from backend_fab.layout import Layout
from backend_fab.synth.patterns import PATTERN_CLASSES, combine, draw_signature

__all__ = [
    "DEFAULT_DIE_RANGE",
    "TRAINING_RANGES",
    "SyntheticMaps",
    "generate_maps",
]

#: Gross die per wafer of the training layouts (log-uniform). WM-811K maps hold about 100 to
#: 35,000 die (median grid 33 x 33); the features are normalised by the wafer radius, so this range
#: mostly teaches the model how noise looks at each scale.
DEFAULT_DIE_RANGE = (150, 10_000)

_TWO_PI = 2.0 * math.pi

#: Parameter ranges (uniform) passed to ``draw_signature`` per class.
TRAINING_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "none": {},
    "Center": {"radius": (0.10, 0.40), "density": (0.55, 1.0), "softness": (0.02, 0.06)},
    "Donut": {
        "radius": (0.30, 0.62),
        "width": (0.12, 0.32),
        "density": (0.50, 0.95),
        "softness": (0.02, 0.05),
    },
    "Edge-Ring": {
        "width": (0.03, 0.20),
        "coverage": (0.45, 1.0),
        "angle": (0.0, _TWO_PI),
        "density": (0.55, 1.0),
        "softness": (0.01, 0.03),
    },
    "Edge-Loc": {
        "angle": (0.0, _TWO_PI),
        "half_angle": (0.15, 0.80),
        "depth": (0.08, 0.32),
        "density": (0.60, 1.0),
        "softness": (0.015, 0.05),
    },
    "Loc": {
        "r0": (0.10, 0.75),
        "angle": (0.0, _TWO_PI),
        "radius": (0.07, 0.22),
        "aspect": (1.0, 2.5),
        "orientation": (0.0, math.pi),
        "density": (0.60, 0.98),
        "softness": (0.015, 0.05),
    },
    "Scratch": {
        "angle": (0.0, _TWO_PI),
        "length": (0.45, 1.30),
        "curvature": (-1.0, 1.0),
        "width": (1.0, 2.2),
        "density": (0.65, 1.0),
    },
    "Random": {"density": (0.25, 0.70)},
    "Near-full": {"density": (0.70, 0.99)},
}

#: Centre offsets (disk radius) of the classes that take one; a scratch is placed by its middle.
_CENTRE_DISK = {
    "Center": ("cx", "cy", 0.15),
    "Donut": ("cx", "cy", 0.10),
    "Scratch": ("mx", "my", 0.65),
}

#: Smallest visible signature (expected signature fails), as (die, fraction of the wafer's die,
#: fraction of the wafer diameter in die); the largest of the three applies. A drawn shape that
#: falls mostly off the wafer is drawn again, so that no map is labelled with a pattern nobody
#: could see.
_MIN_VISIBLE = {
    "Center": (6, 0.010, 0.0),
    "Donut": (10, 0.030, 0.0),
    "Edge-Ring": (8, 0.030, 0.0),
    "Edge-Loc": (6, 0.010, 0.0),
    "Loc": (6, 0.008, 0.0),
    "Scratch": (5, 0.0, 0.35),
}
_MAX_TRIES = 30


@dataclass(frozen=True)
class SyntheticMaps:
    """Wafer maps as flat die arrays grouped by wafer (``offsets``), with their truth."""

    x: np.ndarray  #: int32 die x (canonical frame)
    y: np.ndarray  #: int32 die y
    fail: np.ndarray  #: bool
    offsets: np.ndarray  #: int64, n_wafers + 1
    label: np.ndarray  #: str class per wafer (WM-811K names)
    lot_id: np.ndarray  #: str per wafer
    wafer_id: np.ndarray  #: str per wafer
    params: list[dict] = field(repr=False)  #: parameters used per wafer (JSON-ready)

    @property
    def n_wafers(self) -> int:
        return int(self.offsets.size - 1)

    def features(self) -> np.ndarray:
        """Pattern features of every wafer, ``(n_wafers, N_FEATURES)`` (see ``features.py``)."""
        from backend_fab_kernels.wafer_features import wafer_features

        return wafer_features(self.x, self.y, self.fail, self.offsets)

    def die_frame(self) -> pl.DataFrame:
        """The maps as a die table: lot_id, wafer_id, x, y, hbin (1 pass, 2 fail), fail."""
        counts = np.diff(self.offsets)
        return pl.DataFrame(
            {
                "lot_id": np.repeat(self.lot_id, counts),
                "wafer_id": np.repeat(self.wafer_id, counts),
                "x": self.x,
                "y": self.y,
                "hbin": np.where(self.fail, 2, 1).astype(np.int32),
                "fail": self.fail,
            }
        )

    def truth_frame(self) -> pl.DataFrame:
        """One row per wafer: lot_id, wafer_id, pattern_class, n_die."""
        return pl.DataFrame(
            {
                "lot_id": self.lot_id,
                "wafer_id": self.wafer_id,
                "pattern_class": self.label,
                "n_die": np.diff(self.offsets),
            }
        )


def _random_layout(rng: np.random.Generator, die_range: tuple[int, int], name: str) -> Layout:
    wafer_mm = float(rng.choice([100.0, 125.0, 150.0, 200.0, 300.0]))
    target = math.exp(rng.uniform(math.log(die_range[0]), math.log(die_range[1])))
    aspect = math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
    edge = float(rng.uniform(0.0, 0.03)) * wafer_mm / 2.0
    usable = wafer_mm / 2.0 - edge
    # gross die ~ pi R^2 / (w h) less the die cut by the edge: aim a little high
    area = math.pi * usable * usable / (target * 1.08)
    w = math.sqrt(area * aspect)
    h = math.sqrt(area / aspect)
    return Layout(
        product=name,
        wafer_size_mm=wafer_mm,
        die_width_mm=w,
        die_height_mm=h,
        edge_exclusion_mm=edge,
        center_x=float(rng.choice([0.0, 0.5])),
        center_y=float(rng.choice([0.0, 0.5])),
    )


def _smooth_field(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, n_waves: int = 6):
    """A smooth random field of unit-ish amplitude: a sum of random plane waves (wavelengths of
    a quarter to a whole wafer radius)."""
    f = np.zeros_like(u)
    for _ in range(n_waves):
        k = rng.uniform(1.5, 7.0)
        t = rng.uniform(0.0, _TWO_PI)
        f += np.cos(k * (u * math.cos(t) + v * math.sin(t)) + rng.uniform(0.0, _TWO_PI))
    return f / math.sqrt(n_waves / 2.0)


def _clumps(
    x: np.ndarray, y: np.ndarray, index: dict, rng: np.random.Generator, count: int
) -> np.ndarray:
    """Fail probability 1 on a few small random clusters (2-8 die, grown from a random die)."""
    prob = np.zeros(x.size)
    for _ in range(count):
        i = int(rng.integers(0, x.size))
        size = int(rng.integers(2, 9))
        members = [i]
        while len(members) < size:
            j = members[int(rng.integers(0, len(members)))]
            dx, dy = rng.integers(-1, 2, size=2)
            k = index.get((int(x[j] + dx), int(y[j] + dy)))
            if k is None:
                break
            if k not in members:
                members.append(k)
        prob[members] = 1.0
    return prob


def _signature_params(kind: str, rng: np.random.Generator, ranges) -> dict:
    params = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in ranges[kind].items()}
    if kind in _CENTRE_DISK:
        nx_, ny_, radius = _CENTRE_DISK[kind]
        r = radius * math.sqrt(rng.random())
        t = rng.uniform(0.0, _TWO_PI)
        params[nx_] = r * math.cos(t)
        params[ny_] = r * math.sin(t)
    if kind == "Scratch":
        # start half a length behind the middle, so the scratch crosses the wafer
        half = 0.5 * params["length"]
        params["x0"] = params.pop("mx") - half * math.cos(params["angle"])
        params["y0"] = params.pop("my") - half * math.sin(params["angle"])
    return params


def _draw_visible(kind, u, v, rng, table, n_die: int):
    """``draw_signature`` with parameters from ``table``, redrawn (up to 30 times) until enough of
    the shape lies on the wafer (:data:`_MIN_VISIBLE`); the last draw is kept either way."""
    need = 0.0
    if kind in _MIN_VISIBLE:
        k_die, k_frac, k_diam = _MIN_VISIBLE[kind]
        need = max(k_die, k_frac * n_die, k_diam * 2.0 * math.sqrt(n_die / math.pi))
    for _ in range(_MAX_TRIES):
        sig, used = draw_signature(
            kind, u, v, rng, background=0.0, **_signature_params(kind, rng, table)
        )
        if float(sig.sum()) >= need:
            break
    return sig, used


def generate_maps(
    n_per_class: int,
    *,
    seed: int = 0,
    lot_size: int = 25,
    classes: tuple[str, ...] = PATTERN_CLASSES,
    die_range: tuple[int, int] = DEFAULT_DIE_RANGE,
    ranges: dict[str, dict[str, tuple[float, float]]] | None = None,
) -> SyntheticMaps:
    """``n_per_class`` synthetic wafer maps of every class in ``classes``, grouped in lots.

    Deterministic for ``seed``. Lots hold ``lot_size`` wafers (the last one fewer) of mixed classes
    that share a layout and nuisance levels (see the module docstring); ``ranges`` replaces
    :data:`TRAINING_RANGES` per class where given.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if lot_size < 1:
        raise ValueError(f"lot_size must be >= 1, got {lot_size}")
    unknown = sorted(set(classes) - set(PATTERN_CLASSES))
    if unknown:
        raise ValueError(f"unknown pattern classes {unknown}; expected some of {PATTERN_CLASSES}")
    if not (1 <= die_range[0] <= die_range[1]):
        raise ValueError(f"die_range must be (low, high) with 1 <= low <= high, got {die_range}")
    table = {**TRAINING_RANGES, **(ranges or {})}
    rng = np.random.default_rng([seed, 811])
    labels = np.repeat(np.array(classes, dtype=object), n_per_class)
    rng.shuffle(labels)
    xs, ys, fs, offsets = [], [], [], [0]
    lot_ids, wafer_ids, params_used = [], [], []
    n_lots = math.ceil(labels.size / lot_size)
    for lot in range(n_lots):
        lot_rng = np.random.default_rng([seed, 811, lot])
        lot_id = f"SYN{seed:03d}-{lot:05d}"
        layout = _random_layout(lot_rng, die_range, f"P{lot:05d}")
        x, y = layout.gross_die()
        u, v = layout.normalized(x, y)
        ring = layout.ring_index(x, y)
        index = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(x, y, strict=True))}
        rho2 = u * u + v * v
        base_bg = math.exp(lot_rng.uniform(math.log(0.003), math.log(0.25)))
        gradient = lot_rng.uniform(0.0, 2.0)
        edge_rate = lot_rng.uniform(0.0, 0.2) if lot_rng.random() < 0.5 else 0.0
        for w, kind in enumerate(labels[lot * lot_size : (lot + 1) * lot_size]):
            wrng = np.random.default_rng([seed, 811, lot, w + 1])
            bg = min(0.3, base_bg * math.exp(wrng.normal(0.0, 0.35)))
            background = np.clip(bg * (1.0 + gradient * rho2), 0.0, 0.35)
            sig, used = _draw_visible(kind, u, v, wrng, table, x.size)
            roughness = wrng.uniform(0.0, 0.45)
            if kind not in ("none", "Near-full"):
                sig = sig * np.clip(1.0 + roughness * _smooth_field(u, v, wrng), 0.0, 1.0)
            edge = np.where(ring == 0, edge_rate * wrng.uniform(0.5, 1.5), 0.0)
            n_clumps = int(wrng.poisson(wrng.uniform(0.0, 2.5)))
            clumps = _clumps(x, y, index, wrng, n_clumps) * wrng.uniform(0.5, 1.0)
            if kind in ("Random", "Near-full"):
                prob = combine(sig, edge, clumps)
            else:
                prob = combine(background, sig, edge, clumps)
            fail = wrng.random(x.size) < prob
            xs.append(x)
            ys.append(y)
            fs.append(fail)
            offsets.append(offsets[-1] + x.size)
            lot_ids.append(lot_id)
            wafer_ids.append(f"{w + 1:02d}")
            used.update(
                {
                    "background": bg,
                    "gradient": gradient,
                    "edge_rate": float(edge[ring == 0].max()) if np.any(ring == 0) else 0.0,
                    "roughness": roughness,
                    "clumps": n_clumps,
                    "n_die": int(x.size),
                }
            )
            params_used.append(used)
    return SyntheticMaps(
        x=np.concatenate(xs).astype(np.int32),
        y=np.concatenate(ys).astype(np.int32),
        fail=np.concatenate(fs),
        offsets=np.asarray(offsets, dtype=np.int64),
        label=np.asarray(labels.tolist(), dtype=str),
        lot_id=np.asarray(lot_ids, dtype=str),
        wafer_id=np.asarray(wafer_ids, dtype=str),
        params=params_used,
    )
