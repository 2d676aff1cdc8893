"""Wafer coordinates and dense die grids.

Coordinates
-----------
Analytics work in the canonical frame of :mod:`backend_fab.layout` (x right, y up, die (0, 0)
nearest the wafer centre, seen from the front). :func:`canonical_xy` converts tester
coordinates, wafer by wafer:

1. **origin**: ``origin="wcr"`` subtracts the wafer's WCR centre die (``wafers.center_x/y``) when
   it is known; ``"data"`` (default) keeps the data origin (the layout convention);
2. **axis directions**: the wafer's WCR ``pos_x``/``pos_y`` when set (``"L"``/``"R"``,
   ``"U"``/``"D"``), else the layout's, else x right / y up;
3. **notch**: when the wafer's WCR ``wafer_flat`` is known and differs from the target side (the
   layout's ``notch``, or ``notch=``), the coordinates turn by quarter turns about die (0, 0) so
   that every wafer shows its notch on the same side.

Grids
-----
:func:`lot_grids` stacks the wafers of each lot on one ``(n_wafers, ny, nx)`` grid sharing
``x0``/``y0`` (``grid[w, y - y0, x - x0]``; row index grows with y): an int8 *state* grid (-1 no
die, 0 good, 1 bad; the kernels' input), an int32 *bin* grid (-1 no die, -2 die without a bin) or
a float64 *value* grid (NaN = no value). Null policies (null x/y: drop and count, or raise;
duplicate positions: raise, or keep the last row; null bin = bad) are those of
:mod:`backend_fab.kernels.grids`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from backend_fab.kernels.grids import LotStack, bad_die, lot_stack
from backend_fab.layout import Layout

__all__ = [
    "WaferGrid",
    "add_geometry",
    "canonical_xy",
    "gross_die_frame",
    "lot_grid",
    "lot_grids",
]

_KINDS = ("state", "bin", "value")
# counter-clockwise order of the sides: one quarter turn CCW maps D->R->U->L->D
_CCW = ("D", "R", "U", "L")


def canonical_xy(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    wafers: pl.LazyFrame | pl.DataFrame | None = None,
    layout: Layout | None = None,
    origin: str = "data",
    notch: str | None = None,
) -> pl.LazyFrame:
    """Die coordinates in the canonical frame (``x``/``y`` replaced, other columns kept).

    Parameters
    ----------
    die : die table (needs ``x``, ``y``; ``run_id`` and ``wafer_id`` to use ``wafers``)
    wafers : the ``wafers`` table (WCR fields ``pos_x``, ``pos_y``, ``wafer_flat``,
        ``center_x``, ``center_y`` per ``run_id``, ``wafer_id``), optional
    layout : the product layout (axis directions and notch side when WCR says nothing)
    origin : "data" (keep) or "wcr" (subtract the WCR centre die when known)
    notch : target notch side ("U", "D", "L", "R"); default the layout's, else no rotation

    Rules in the module docstring. Null coordinates stay null.
    """
    if origin not in ("data", "wcr"):
        raise ValueError(f"canonical_xy: origin must be 'data' or 'wcr', got {origin!r}")
    target = notch if notch is not None else (layout.notch if layout is not None else None)
    if target is not None and target not in _CCW:
        raise ValueError(f"canonical_xy: notch must be one of U, D, L, R, got {target!r}")
    lf = die.lazy()
    cols = lf.collect_schema().names()
    default_px = layout.pos_x if layout is not None else "R"
    default_py = layout.pos_y if layout is not None else "U"
    if wafers is not None:
        w = (
            wafers.lazy()
            .select(
                "run_id",
                "wafer_id",
                pl.col("pos_x").alias("__px"),
                pl.col("pos_y").alias("__py"),
                pl.col("wafer_flat").alias("__flat"),
                pl.col("center_x").cast(pl.Int64).alias("__cx"),
                pl.col("center_y").cast(pl.Int64).alias("__cy"),
            )
            .unique(subset=["run_id", "wafer_id"], keep="first")
        )
        lf = lf.join(
            w, on=["run_id", "wafer_id"], how="left", nulls_equal=True, maintain_order="left"
        )
    else:
        lf = lf.with_columns(
            pl.lit(None, dtype=pl.String).alias("__px"),
            pl.lit(None, dtype=pl.String).alias("__py"),
            pl.lit(None, dtype=pl.String).alias("__flat"),
            pl.lit(None, dtype=pl.Int64).alias("__cx"),
            pl.lit(None, dtype=pl.Int64).alias("__cy"),
        )
    px = (
        pl.when(pl.col("__px").is_in(["L", "R"])).then(pl.col("__px")).otherwise(pl.lit(default_px))
    )
    py = (
        pl.when(pl.col("__py").is_in(["U", "D"])).then(pl.col("__py")).otherwise(pl.lit(default_py))
    )
    x = pl.col("x").cast(pl.Int64)
    y = pl.col("y").cast(pl.Int64)
    if origin == "wcr":
        x = x - pl.col("__cx").fill_null(0)
        y = y - pl.col("__cy").fill_null(0)
    xs = pl.when(px == "L").then(-x).otherwise(x)
    ys = pl.when(py == "D").then(-y).otherwise(y)
    if target is None:
        xr, yr = xs, ys
    else:
        # quarter turns (CCW) that bring the wafer's notch side to the target side
        turns = pl.col("__flat").replace_strict(
            {s: (_CCW.index(target) - _CCW.index(s)) % 4 for s in _CCW},
            default=0,
            return_dtype=pl.Int8,
        )
        xr = (
            pl.when(turns == 1)
            .then(-ys)
            .when(turns == 2)
            .then(-xs)
            .when(turns == 3)
            .then(ys)
            .otherwise(xs)
        )
        yr = (
            pl.when(turns == 1)
            .then(xs)
            .when(turns == 2)
            .then(-ys)
            .when(turns == 3)
            .then(-xs)
            .otherwise(ys)
        )
    return lf.with_columns(xr.cast(pl.Int32).alias("x"), yr.cast(pl.Int32).alias("y")).select(cols)


def gross_die_frame(layout: Layout) -> pl.DataFrame:
    """The layout's gross die with their geometry, one row per die (canonical frame).

    Columns: ``x``, ``y`` (int32), ``ring`` (int32, 0 = outermost ring of gross die),
    ``edge_distance_mm`` (die centre to the usable-disk edge), ``radius`` (die centre distance
    from the wafer centre / wafer radius), ``angle`` (degrees in [0, 360), 0 = +x,
    counter-clockwise), ``reticle_x``, ``reticle_y`` (int32 position inside the reticle field).
    """
    x, y = layout.gross_die()
    nx_, ny_ = layout.normalized(x, y)
    rx, ry = layout.reticle_xy(x, y)
    return pl.DataFrame(
        {
            "x": np.asarray(x, dtype=np.int32),
            "y": np.asarray(y, dtype=np.int32),
            "ring": layout.ring_index(x, y).astype(np.int32),
            "edge_distance_mm": layout.edge_distance(x, y),
            "radius": np.hypot(nx_, ny_),
            "angle": np.mod(np.degrees(np.arctan2(ny_, nx_)), 360.0),
            "reticle_x": rx,
            "reticle_y": ry,
        }
    )


def add_geometry(die: pl.LazyFrame | pl.DataFrame, layout: Layout) -> pl.LazyFrame:
    """Add each die's ``ring``, ``edge_distance_mm``, ``radius``, ``angle``, ``reticle_x`` and
    ``reticle_y`` (see :func:`gross_die_frame`); null for a die outside the gross-die set.

    ``x``/``y`` must already be canonical (:func:`canonical_xy`).
    """
    geo = gross_die_frame(layout).lazy()
    lf = die.lazy()
    x_type = lf.collect_schema().get("x")
    if x_type is None or "y" not in lf.collect_schema().names():
        raise ValueError("add_geometry: the die table needs x and y columns")
    return lf.join(
        geo.with_columns(pl.col("x").cast(x_type), pl.col("y").cast(lf.collect_schema()["y"])),
        on=["x", "y"],
        how="left",
        maintain_order="left",
    )


@dataclass(frozen=True)
class WaferGrid:
    """All wafers of one lot on one dense grid: ``grid[w, y - y0, x - x0]``.

    ``kind``: "state" (int8, -1 no die / 0 good / 1 bad), "bin" (int32, -1 no die / -2 no bin) or
    "value" (float64, NaN = no value). ``n_null_xy`` counts the die left off for a null x or y.
    """

    lot_id: object
    wafer_ids: tuple
    x0: int
    y0: int
    grid: np.ndarray
    kind: str
    n_null_xy: int = 0
    layout: Layout | None = field(default=None, compare=False)

    @property
    def n_wafers(self) -> int:
        return self.grid.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    @property
    def xs(self) -> np.ndarray:
        """Canonical x of each column."""
        return np.arange(self.grid.shape[2], dtype=np.int64) + self.x0

    @property
    def ys(self) -> np.ndarray:
        """Canonical y of each row."""
        return np.arange(self.grid.shape[1], dtype=np.int64) + self.y0

    def die_mask(self) -> np.ndarray:
        """Bool (n_wafers, ny, nx): a die is there."""
        if self.kind == "state":
            return self.grid >= 0
        if self.kind == "bin":
            return self.grid != -1
        return ~np.isnan(self.grid)

    def center(self) -> tuple[float, float]:
        """Wafer centre in grid index units (column, row): the layout's, else the centre of the
        die bounding box."""
        if self.layout is not None:
            return (self.layout.center_x - self.x0, self.layout.center_y - self.y0)
        any_die = self.die_mask().any(axis=0)
        if not any_die.any():
            return ((self.grid.shape[2] - 1) / 2.0, (self.grid.shape[1] - 1) / 2.0)
        rows = np.nonzero(any_die.any(axis=1))[0]
        cols = np.nonzero(any_die.any(axis=0))[0]
        return ((cols[0] + cols[-1]) / 2.0, (rows[0] + rows[-1]) / 2.0)

    def radius(self) -> tuple[float, float]:
        """Wafer radius in die pitches per axis: the layout's, else the farthest die cell from
        :meth:`center` plus half a pitch."""
        if self.layout is not None:
            return self.layout.radius_die
        cx, cy = self.center()
        any_die = self.die_mask().any(axis=0)
        if not any_die.any():
            return (0.5, 0.5)
        iy, ix = np.nonzero(any_die)
        r = float(np.hypot(ix - cx, iy - cy).max()) + 0.5
        return (r, r)

    def ring_grid(self) -> np.ndarray:
        """int32 (ny, nx): the layout ring of each cell, -1 off the gross-die set (needs a layout)."""
        layout = self._need_layout("ring_grid")
        gy, gx = np.meshgrid(self.ys, self.xs, indexing="ij")
        return layout.ring_index(gx, gy)

    def reticle_position_grid(self) -> tuple[np.ndarray, int]:
        """int64 (ny, nx) reticle position index ``ry * reticle_cols + rx`` of each cell, and the
        number of positions (needs a layout)."""
        layout = self._need_layout("reticle_position_grid")
        gy, gx = np.meshgrid(self.ys, self.xs, indexing="ij")
        rx, ry = layout.reticle_xy(gx, gy)
        return (
            ry.astype(np.int64) * layout.reticle_cols + rx
        ), layout.reticle_cols * layout.reticle_rows

    def _need_layout(self, what: str) -> Layout:
        if self.layout is None:
            raise ValueError(
                f"WaferGrid.{what} needs the product layout (lot_grids(..., layout=...))"
            )
        return self.layout

    def to_frame(self, name: str | None = None) -> pl.DataFrame:
        """Back to a table: one row per cell holding a die: ``lot_id``, ``wafer_id``, ``x``, ``y``
        (int32) and the cell value (column ``name``; default "state", "bin" or "value")."""
        name = name or self.kind
        w, iy, ix = np.nonzero(self.die_mask())
        vals = self.grid[w, iy, ix]
        return pl.DataFrame(
            {
                "lot_id": [self.lot_id] * w.size,
                "wafer_id": [self.wafer_ids[i] for i in w],
                "x": (ix + self.x0).astype(np.int32),
                "y": (iy + self.y0).astype(np.int32),
                name: vals,
            }
        )


def _values_for(
    df: pl.DataFrame, kind: str, value: str | None, bin_column: str, pass_bins, bad_bins
):
    if kind == "state":
        return (
            bad_die(df, bin_column=bin_column, pass_bins=pass_bins, bad_bins=bad_bins).astype(
                np.int8
            ),
            -1,
            np.int8,
        )
    if kind == "bin":
        if bin_column not in df.columns:
            raise ValueError(f"lot_grids: kind='bin' needs the bin column {bin_column!r}")
        return df.get_column(bin_column).cast(pl.Int64).fill_null(-2).to_numpy(), -1, np.int32
    if value is None or value not in df.columns:
        raise ValueError(f"lot_grids: kind='value' needs value=<column>; got {value!r}")
    return df.get_column(value).cast(pl.Float64).fill_null(np.nan).to_numpy(), np.nan, np.float64


def _prepare(die, final_only: bool) -> pl.DataFrame:
    df = die.collect() if isinstance(die, pl.LazyFrame) else die
    if final_only and "final" in df.columns:
        df = df.filter(pl.col("final").fill_null(True))
    if "lot_id" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("lot_id"))
    return df


def stack_from_frame(
    df: pl.DataFrame,
    *,
    kind: str = "state",
    value: str | None = None,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    layout: Layout | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    margin: int = 0,
) -> tuple[WaferGrid, LotStack]:
    """One lot's frame (already filtered) -> its grid and the row -> cell map."""
    if kind not in _KINDS:
        raise ValueError(f"lot_grids: kind must be one of {_KINDS}, got {kind!r}")
    if pass_bins is None and layout is not None:
        pass_bins = layout.pass_hbins
    stack = lot_stack(
        df,
        bounds=layout.bounds if layout is not None else None,
        margin=margin,
        null_xy=null_xy,
        duplicates=duplicates,
    )
    vals, fill, dtype = _values_for(df, kind, value, bin_column, pass_bins, bad_bins)
    grid = stack.scatter(vals, fill, dtype)
    wg = WaferGrid(
        stack.lot_id, stack.wafer_ids, stack.x0, stack.y0, grid, kind, stack.n_null_xy, layout
    )
    return wg, stack


def lot_grids(
    die: pl.LazyFrame | pl.DataFrame,
    *,
    kind: str = "state",
    value: str | None = None,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
    layout: Layout | None = None,
    null_xy: str = "drop",
    duplicates: str = "raise",
    margin: int = 0,
    final_only: bool = True,
) -> list[WaferGrid]:
    """Every lot of a die table as a :class:`WaferGrid` (a DataFrame convenience: collects).

    Parameters
    ----------
    die : die table with ``lot_id``, ``wafer_id``, canonical ``x``, ``y`` and the bin / value column
    kind : "state" (default), "bin" or "value"
    value : the value column for ``kind="value"``
    bin_column : bin column for "state" and "bin" (default "hbin")
    pass_bins, bad_bins : what makes a die bad (module docstring of ``kernels.grids``)
    layout : the product layout: widens the grid to the gross-die bounds, supplies pass bins,
        centre, radius, rings and reticle positions
    null_xy : "drop" (default: leave off the grid, count in ``n_null_xy``) or "raise"
    duplicates : "raise" (default) or "last"
    margin : empty cells added on every side
    final_only : keep only rows with ``final`` true when the column exists (default True)

    Lots come in order of first appearance; wafers within a lot likewise.
    """
    df = _prepare(die, final_only)
    out = []
    for _, part in df.group_by("lot_id", maintain_order=True):
        wg, _ = stack_from_frame(
            part,
            kind=kind,
            value=value,
            bin_column=bin_column,
            pass_bins=pass_bins,
            bad_bins=bad_bins,
            layout=layout,
            null_xy=null_xy,
            duplicates=duplicates,
            margin=margin,
        )
        out.append(wg)
    return out


def lot_grid(die: pl.LazyFrame | pl.DataFrame, lot_id=None, **kwargs) -> WaferGrid:
    """The :class:`WaferGrid` of one lot (``lot_id``; default: the table must hold one lot).

    Keyword arguments as :func:`lot_grids`.
    """
    lf = die.lazy()
    if lot_id is not None:
        lf = lf.filter(pl.col("lot_id") == lot_id)
    grids = lot_grids(lf, **kwargs)
    if len(grids) != 1:
        raise ValueError(
            f"lot_grid: expected one lot, found {len(grids)}"
            + ("" if lot_id is not None else "; pass lot_id=...")
        )
    return grids[0]
