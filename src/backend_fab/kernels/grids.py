"""Die tables -> dense lot grids (numpy) for the geographic kernels, and kernel grids -> columns.

One lot at a time: every wafer of the lot is scattered onto one ``(n_wafers, ny, nx)`` grid that
shares ``x0``/``y0`` (``grid[w, y - y0, x - x0]``), with an explicit policy for what polars would
otherwise decide silently:

* **null coordinates**: ``null_xy="drop"`` (default) leaves a die with a null ``x`` or ``y`` off
  the grid and counts it (``LotStack.n_null_xy``; its rows get null results), ``"raise"`` refuses
  the table;
* **duplicate positions** (two rows of one wafer at the same ``(x, y)``, e.g. a retest kept
  twice): ``duplicates="raise"`` (default) refuses, ``"last"`` keeps the last row in table order;
* **bins**: a die is bad when its bin is not a pass bin (``pass_bins``, default the layout's or
  ``(1,)``), or, when ``bad_bins`` is given, when its bin is in ``bad_bins``; a null bin is bad.
  Without the bin column, the boolean ``passed`` column decides (null = bad).

The row -> cell index (``wafer``, ``iy``, ``ix``) is kept so results gather back to the rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl

from backend_fab.errors import KernelInputError

__all__ = ["MAX_CELLS", "LotStack", "bad_die", "lot_stack"]

#: Refuse grids larger than this many cells per wafer: coordinates that far apart are garbage.
MAX_CELLS = 50_000_000


@dataclass(frozen=True)
class LotStack:
    """One lot scattered on a common grid, plus the row -> cell map of the source frame."""

    lot_id: object
    wafer_ids: tuple
    x0: int
    y0: int
    ny: int
    nx: int
    #: per source row: wafer index, row and column in the grid (-1 for rows left off the grid)
    wafer: np.ndarray
    iy: np.ndarray
    ix: np.ndarray
    n_null_xy: int

    @property
    def on_grid(self) -> np.ndarray:
        return self.wafer >= 0

    def scatter(self, values: np.ndarray, fill, dtype) -> np.ndarray:
        """A ``(n_wafers, ny, nx)`` grid of ``dtype`` holding ``values`` (one per source row)."""
        grid = np.full((len(self.wafer_ids), self.ny, self.nx), fill, dtype=dtype)
        ok = self.on_grid
        grid[self.wafer[ok], self.iy[ok], self.ix[ok]] = np.asarray(values)[ok]
        return grid

    def gather(self, grid: np.ndarray, fill=None) -> np.ndarray:
        """The value of ``grid`` at each source row's cell (``fill`` for rows off the grid)."""
        ok = self.on_grid
        if ok.all():
            return grid[self.wafer, self.iy, self.ix]
        if fill is None:
            fill = np.nan if grid.dtype.kind == "f" else 0
        out = np.full(
            self.wafer.size, fill, dtype=np.result_type(grid.dtype, np.asarray(fill).dtype)
        )
        out[ok] = grid[self.wafer[ok], self.iy[ok], self.ix[ok]]
        return out


def _as_int(series: pl.Series) -> np.ndarray:
    """Nullable integer column -> int64 with nulls as 0 (callers mask them)."""
    return series.cast(pl.Int64).fill_null(0).to_numpy()


def lot_stack(
    df: pl.DataFrame,
    *,
    wafer_column: str = "wafer_id",
    bounds: tuple[int, int, int, int] | None = None,
    margin: int = 0,
    null_xy: str = "drop",
    duplicates: str = "raise",
) -> LotStack:
    """Map the rows of one lot's die frame onto a common grid.

    ``bounds`` (``x_min, x_max, y_min, y_max``, e.g. a layout's gross-die bounds) widen the grid
    beyond the data; ``margin`` adds empty cells on every side.
    """
    if null_xy not in ("drop", "raise"):
        raise ValueError(f"null_xy must be 'drop' or 'raise', got {null_xy!r}")
    if duplicates not in ("raise", "last"):
        raise ValueError(f"duplicates must be 'raise' or 'last', got {duplicates!r}")
    for col in ("x", "y", wafer_column):
        if col not in df.columns:
            raise KernelInputError(
                f"die table: missing column {col!r} (needed to build wafer grids)"
            )
    lot_id = df.get_column("lot_id")[0] if "lot_id" in df.columns and df.height else None
    xs = df.get_column("x")
    ys = df.get_column("y")
    null = (xs.is_null() | ys.is_null()).to_numpy()
    n_null = int(null.sum())
    if n_null and null_xy == "raise":
        first = df.filter(pl.Series(null)).row(0, named=True)
        raise KernelInputError(
            f"die table: {n_null} die of lot {lot_id!r} have a null x or y (first: wafer "
            f"{first.get(wafer_column)!r}, part_seq {first.get('part_seq')!r}); drop them or pass "
            f"null_xy='drop' to leave them off the wafer grid"
        )
    x = _as_int(xs)
    y = _as_int(ys)
    ok = ~null
    wafer_codes, wafer_ids = _codes(df.get_column(wafer_column))
    if ok.any():
        x_min, x_max = int(x[ok].min()), int(x[ok].max())
        y_min, y_max = int(y[ok].min()), int(y[ok].max())
    else:
        x_min = y_min = 0
        x_max = y_max = -1
    if bounds is not None:
        bx0, bx1, by0, by1 = (int(v) for v in bounds)
        if x_max < x_min:
            x_min, x_max, y_min, y_max = bx0, bx1, by0, by1
        else:
            x_min, x_max = min(x_min, bx0), max(x_max, bx1)
            y_min, y_max = min(y_min, by0), max(y_max, by1)
    if x_max < x_min:  # nothing to place
        x_min = y_min = 0
        x_max = y_max = -1
    x0 = x_min - margin
    y0 = y_min - margin
    nx = max(0, x_max - x_min + 1 + 2 * margin)
    ny = max(0, y_max - y_min + 1 + 2 * margin)
    if nx * ny > MAX_CELLS:
        raise KernelInputError(
            f"die table: lot {lot_id!r} spans x {x_min}..{x_max}, y {y_min}..{y_max} "
            f"({nx} x {ny} cells, more than {MAX_CELLS}); a coordinate is probably garbage "
            f"(e.g. STDF -32768 not turned into null): filter those die first"
        )
    wafer = np.where(ok, wafer_codes, -1).astype(np.int64)
    iy = np.where(ok, y - y0, -1).astype(np.int64)
    ix = np.where(ok, x - x0, -1).astype(np.int64)
    if ok.any():
        cell = (wafer[ok] * ny + iy[ok]) * nx + ix[ok]
        uniq, counts = np.unique(cell, return_counts=True)
        if uniq.size != cell.size and duplicates == "raise":
            c = int(uniq[np.argmax(counts > 1)])
            w, rest = divmod(c, ny * nx)
            yy, xx = divmod(rest, nx)
            raise KernelInputError(
                f"die table: lot {lot_id!r} wafer {wafer_ids[w]!r} has {int(counts.max())} rows at "
                f"x={xx + x0}, y={yy + y0}; keep one row per die (e.g. final == True) or pass "
                f"duplicates='last'"
            )
    return LotStack(lot_id, tuple(wafer_ids), x0, y0, ny, nx, wafer, iy, ix, n_null)


def _codes(series: pl.Series) -> tuple[np.ndarray, list]:
    """Integer codes of a key column, numbered by first appearance; the distinct keys."""
    frame = pl.DataFrame({"k": series}).with_row_index("_row")
    first = frame.group_by("k", maintain_order=True).agg(pl.col("_row").first()).sort("_row")
    keys = first.get_column("k").to_list()
    lookup = pl.DataFrame(
        {"k": first.get_column("k"), "_code": np.arange(len(keys), dtype=np.int64)}
    )
    codes = (
        frame.join(lookup, on="k", how="left", maintain_order="left", nulls_equal=True)
        .sort("_row")
        .get_column("_code")
    )
    return codes.to_numpy(), keys


def bad_die(
    df: pl.DataFrame,
    *,
    bin_column: str = "hbin",
    pass_bins: Iterable[int] | None = None,
    bad_bins: Iterable[int] | None = None,
) -> np.ndarray:
    """Bool per row: is the die bad? (policy in the module docstring)."""
    if bin_column in df.columns:
        bins = df.get_column(bin_column)
        null = bins.is_null().to_numpy()
        values = bins.cast(pl.Int64).fill_null(0).to_numpy()
        if bad_bins is not None:
            return np.isin(values, np.asarray(list(bad_bins), dtype=np.int64)) | null
        passes = np.asarray(list(pass_bins) if pass_bins is not None else [1], dtype=np.int64)
        return ~np.isin(values, passes) | null
    if "passed" in df.columns:
        return (~df.get_column("passed").fill_null(False)).to_numpy()
    raise KernelInputError(
        f"die table: neither the bin column {bin_column!r} nor 'passed' is present; "
        f"say which column holds the bins (bin_column=...)"
    )
