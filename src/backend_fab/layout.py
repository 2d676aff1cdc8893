"""Product wafer layouts: geometry, orientation, reticle and gross die.

Canonical coordinate frame (every analytics module works in it)
---------------------------------------------------------------
* The wafer is seen from its front (device) side. ``x`` grows to the **right**, ``y`` grows **up**.
* Die coordinates are integer die indices. Die ``(0, 0)`` is the die nearest the wafer centre:
  the centre of die ``(i, j)`` lies at ``((i - center_x) * die_width_mm, (j - center_y) *
  die_height_mm)`` millimetres from the wafer centre, where ``center_x, center_y`` in
  ``[-0.5, 0.5]`` (default 0) place the wafer centre on the die grid (0.5: the wafer centre sits on
  the border between columns 0 and 1, the usual case for an even number of columns).
* ``notch`` names the wafer side where the notch (or primary flat) is, **in this frame**: ``"D"``
  (down, the SEMI default for a notch-down view), ``"U"``, ``"L"`` or ``"R"`` (STDF WCR ``WF_FLAT``).
* A gross die is a die wholly inside the usable disk (wafer radius minus ``edge_exclusion_mm``:
  all four corners inside). The notch itself is not cut out of the usable disk.

Data coordinates (what testers write)
-------------------------------------
Tester files give ``x``/``y`` with their own axis directions (STDF WCR ``POS_X``/``POS_Y``: the
direction in which the coordinate grows). ``pos_x``/``pos_y`` of a layout record the directions of
the product's tester data; data and canonical coordinates share the origin and differ only by sign:
``x_canonical = x_data`` when ``pos_x == "R"`` else ``-x_data``; ``y_canonical = y_data`` when
``pos_y == "U"`` else ``-y_data``. :meth:`Layout.to_canonical` and :meth:`Layout.from_canonical` do
the conversion; every other method here takes and returns canonical coordinates.

Reticle fields tile the die grid: field column ``floor((x - reticle_offset_x) / reticle_cols)``;
position inside the field ``((x - reticle_offset_x) mod reticle_cols, (y - reticle_offset_y) mod
reticle_rows)``, with ``(0, 0)`` the bottom-left die of a field in the canonical frame.

Rings (:meth:`Layout.ring_index`) peel the gross-die set: ring 0 holds every gross die with at least
one of its 8 neighbours off the gross-die set; ring k is ring 0 of what is left after removing rings
0..k-1 (the chessboard distance to the nearest non-gross position, minus one).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SIDES", "Layout"]

#: Valid notch sides and axis directions.
SIDES = ("U", "D", "L", "R")


@dataclass(frozen=True)
class Layout:
    """The wafer layout of one product (one row of the ``layouts`` table).

    Lengths are in millimetres; reticle sizes and offsets in die. ``pass_hbins`` lists the hard
    bins that count as good. ``center_x``/``center_y`` (die pitches, in ``[-0.5, 0.5]``) place the
    wafer centre on the die grid (see the module docstring).
    """

    product: str
    wafer_size_mm: float
    die_width_mm: float
    die_height_mm: float
    edge_exclusion_mm: float = 3.0
    notch: str = "D"
    pos_x: str = "R"
    pos_y: str = "U"
    reticle_cols: int = 1
    reticle_rows: int = 1
    reticle_offset_x: int = 0
    reticle_offset_y: int = 0
    pass_hbins: tuple[int, ...] = (1,)
    center_x: float = 0.0
    center_y: float = 0.0
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"layout of product {self.product!r}: {what}")

        if not isinstance(self.product, str) or not self.product:
            raise bad("product must be a non-empty string")
        for name in ("wafer_size_mm", "die_width_mm", "die_height_mm"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
                raise bad(f"{name} must be a positive number, got {value!r}")
        if not (0 <= self.edge_exclusion_mm < self.wafer_size_mm / 2):
            raise bad(
                f"edge_exclusion_mm must lie in [0, wafer radius), got {self.edge_exclusion_mm!r}"
            )
        if self.notch not in SIDES:
            raise bad(f"notch must be one of {SIDES}, got {self.notch!r}")
        if self.pos_x not in ("L", "R"):
            raise bad(f"pos_x must be 'L' or 'R', got {self.pos_x!r}")
        if self.pos_y not in ("U", "D"):
            raise bad(f"pos_y must be 'U' or 'D', got {self.pos_y!r}")
        for name in ("reticle_cols", "reticle_rows"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Integral) and value >= 1):
                raise bad(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("center_x", "center_y"):
            if not (-0.5 <= getattr(self, name) <= 0.5):
                raise bad(f"{name} must lie in [-0.5, 0.5], got {getattr(self, name)!r}")
        hbins = tuple(int(b) for b in self.pass_hbins)
        if not hbins or any(b < 0 or b > 65534 for b in hbins):
            raise bad(
                f"pass_hbins must be a non-empty list of bins 0..65534, got {self.pass_hbins!r}"
            )
        object.__setattr__(self, "pass_hbins", hbins)
        if self.n_gross == 0:
            raise bad("no die fits on the wafer: die larger than the usable disk")

    # --- geometry ----------------------------------------------------------------------------

    @property
    def radius_mm(self) -> float:
        """Wafer radius in mm."""
        return self.wafer_size_mm / 2.0

    @property
    def usable_radius_mm(self) -> float:
        """Radius of the usable disk (wafer radius minus edge exclusion), mm."""
        return self.wafer_size_mm / 2.0 - self.edge_exclusion_mm

    @property
    def radius_die(self) -> tuple[float, float]:
        """Wafer radius in die pitches, per axis: ``(R / die_width, R / die_height)``."""
        r = self.radius_mm
        return (r / self.die_width_mm, r / self.die_height_mm)

    def die_center_mm(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Die-centre position (mm from the wafer centre, canonical frame) of die ``(x, y)``."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return (x - self.center_x) * self.die_width_mm, (y - self.center_y) * self.die_height_mm

    def normalized(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Die-centre coordinates divided by the wafer radius: the wafer is the unit disk.

        The input of :func:`backend_fab.synth.patterns.draw_signature`.
        """
        cx, cy = self.die_center_mm(x, y)
        r = self.radius_mm
        return cx / r, cy / r

    def _gross(self) -> tuple[np.ndarray, np.ndarray]:
        if "gross" not in self._cache:
            w, h = self.die_width_mm, self.die_height_mm
            nx = math.ceil(self.radius_mm / w) + 1
            ny = math.ceil(self.radius_mm / h) + 1
            xs = np.arange(-nx, nx + 1, dtype=np.int32)
            ys = np.arange(-ny, ny + 1, dtype=np.int32)
            gx, gy = np.meshgrid(xs, ys)  # rows: y ascending; columns: x ascending
            cx, cy = self.die_center_mm(gx, gy)
            far_x = np.abs(cx) + w / 2.0
            far_y = np.abs(cy) + h / 2.0
            inside = far_x * far_x + far_y * far_y <= self.usable_radius_mm**2
            x = np.ascontiguousarray(gx[inside], dtype=np.int32)
            y = np.ascontiguousarray(gy[inside], dtype=np.int32)
            x.flags.writeable = False
            y.flags.writeable = False
            self._cache["gross"] = (x, y)
        return self._cache["gross"]

    def gross_die(self) -> tuple[np.ndarray, np.ndarray]:
        """Every gross die ``(x, y)`` (int32, canonical frame), ordered by y then x ascending.

        The arrays are read-only and shared between calls: copy before writing.
        """
        return self._gross()

    @property
    def n_gross(self) -> int:
        """Number of gross die (the yield denominator on a gross-die basis)."""
        return int(self._gross()[0].size)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """``(x_min, x_max, y_min, y_max)`` of the gross die, canonical frame."""
        x, y = self._gross()
        return int(x.min()), int(x.max()), int(y.min()), int(y.max())

    def is_gross(self, x, y) -> np.ndarray:
        """Boolean array: is ``(x, y)`` a gross die?"""
        return self.ring_index(x, y) >= 0

    def _rings(self) -> tuple[np.ndarray, int, int]:
        if "rings" not in self._cache:
            from scipy import ndimage

            x, y = self._gross()
            x0, x1, y0, y1 = self.bounds
            # one empty cell of padding on every side: the off-wafer neighbours
            mask = np.zeros((y1 - y0 + 3, x1 - x0 + 3), dtype=bool)
            mask[y - y0 + 1, x - x0 + 1] = True
            dist = ndimage.distance_transform_cdt(mask, metric="chessboard")
            rings = np.where(mask, dist - 1, -1).astype(np.int32)
            rings.flags.writeable = False
            self._cache["rings"] = (rings, x0 - 1, y0 - 1)
        return self._cache["rings"]

    def ring_index(self, x, y) -> np.ndarray:
        """Ring of each die (int32): 0 = outermost ring of gross die, counted inwards; -1 when
        ``(x, y)`` is not a gross die. See the module docstring for the definition."""
        rings, ox, oy = self._rings()
        x = np.asarray(x, dtype=np.int64) - ox
        y = np.asarray(y, dtype=np.int64) - oy
        ok = (x >= 0) & (x < rings.shape[1]) & (y >= 0) & (y < rings.shape[0])
        out = np.full(np.broadcast(x, y).shape, -1, dtype=np.int32)
        out[ok] = rings[y[ok], x[ok]]
        return out

    @property
    def n_rings(self) -> int:
        """Number of rings (the ring index of the innermost die, plus one)."""
        return int(self._rings()[0].max()) + 1

    def edge_distance(self, x, y) -> np.ndarray:
        """Distance (mm, float64) from the die centre to the edge of the usable disk; positive
        inside, so a gross die has at least half its diagonal."""
        cx, cy = self.die_center_mm(x, y)
        return self.usable_radius_mm - np.hypot(cx, cy)

    def reticle_xy(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Position ``(rx, ry)`` (int32) of each die inside its reticle field, each in
        ``[0, reticle_cols)`` x ``[0, reticle_rows)``."""
        x = np.asarray(x, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        rx = np.mod(x - self.reticle_offset_x, self.reticle_cols).astype(np.int32)
        ry = np.mod(y - self.reticle_offset_y, self.reticle_rows).astype(np.int32)
        return rx, ry

    def reticle_field(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Index ``(fx, fy)`` (int32) of the reticle field (shot) holding each die."""
        x = np.asarray(x, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        fx = np.floor_divide(x - self.reticle_offset_x, self.reticle_cols).astype(np.int32)
        fy = np.floor_divide(y - self.reticle_offset_y, self.reticle_rows).astype(np.int32)
        return fx, fy

    # --- data <-> canonical ------------------------------------------------------------------

    def to_canonical(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Tester (data) coordinates -> canonical coordinates (int32)."""
        x = np.asarray(x, dtype=np.int32)
        y = np.asarray(y, dtype=np.int32)
        return (x if self.pos_x == "R" else -x), (y if self.pos_y == "U" else -y)

    def from_canonical(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Canonical coordinates -> tester (data) coordinates (int32); the inverse of
        :meth:`to_canonical` (a sign flip is its own inverse)."""
        return self.to_canonical(x, y)

    # --- table row ---------------------------------------------------------------------------

    def to_row(self) -> dict:
        """This layout as one row (dict) of the ``layouts`` table; ``pass_hbins`` as "1,2"."""
        return {
            "product": self.product,
            "wafer_size_mm": float(self.wafer_size_mm),
            "die_width_mm": float(self.die_width_mm),
            "die_height_mm": float(self.die_height_mm),
            "edge_exclusion_mm": float(self.edge_exclusion_mm),
            "notch": self.notch,
            "pos_x": self.pos_x,
            "pos_y": self.pos_y,
            "center_x": float(self.center_x),
            "center_y": float(self.center_y),
            "reticle_cols": int(self.reticle_cols),
            "reticle_rows": int(self.reticle_rows),
            "reticle_offset_x": int(self.reticle_offset_x),
            "reticle_offset_y": int(self.reticle_offset_y),
            "gross_die": self.n_gross,
            "pass_hbins": ",".join(str(b) for b in self.pass_hbins),
        }

    @classmethod
    def from_row(cls, row: dict) -> Layout:
        """Rebuild a layout from a ``layouts`` row (the inverse of :meth:`to_row`).

        Raises ValueError when the stored ``gross_die`` disagrees with the geometry.
        """
        hbins = str(row.get("pass_hbins") or "1")
        layout = cls(
            product=row["product"],
            wafer_size_mm=float(row["wafer_size_mm"]),
            die_width_mm=float(row["die_width_mm"]),
            die_height_mm=float(row["die_height_mm"]),
            edge_exclusion_mm=float(row.get("edge_exclusion_mm") or 0.0),
            notch=row.get("notch") or "D",
            pos_x=row.get("pos_x") or "R",
            pos_y=row.get("pos_y") or "U",
            reticle_cols=int(row.get("reticle_cols") or 1),
            reticle_rows=int(row.get("reticle_rows") or 1),
            reticle_offset_x=int(row.get("reticle_offset_x") or 0),
            reticle_offset_y=int(row.get("reticle_offset_y") or 0),
            pass_hbins=tuple(int(b) for b in hbins.replace(";", ",").split(",") if b.strip()),
            center_x=float(row.get("center_x") or 0.0),
            center_y=float(row.get("center_y") or 0.0),
        )
        stored = row.get("gross_die")
        if stored is not None and int(stored) != layout.n_gross:
            raise ValueError(
                f"layout of product {layout.product!r}: stored gross_die {stored} differs from "
                f"the {layout.n_gross} die the geometry gives"
            )
        return layout
