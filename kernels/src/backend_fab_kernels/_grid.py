"""Dense die grids shared by the geographic kernels: state codes and validation.

A *state grid* is an ``int8`` array of shape ``(n_wafers, ny, nx)`` (all wafers of a lot on one
frame) with one code per cell:

====  =============================================================
 -1   no die at this position (off the wafer, or not tested)
  0   good die
  1   bad (failing) die
====  =============================================================

Row index ``iy`` grows with the canonical ``y`` (up), column index ``ix`` with ``x`` (right), so
``grid[w, iy, ix]`` is die ``(x0 + ix, y0 + iy)``. A *value grid* is ``float64`` of the same shape
with NaN where there is no value. A 2-d grid is one wafer; wrappers return the same ndim.
"""

from __future__ import annotations

import numpy as np

NO_DIE = -1
GOOD = 0
BAD = 1


def writable(arr: np.ndarray) -> np.ndarray:
    """``arr``, or a copy of it when it is read-only.

    numba types a read-only array as a distinct type, so a read-only input (a polars/Arrow view)
    would compile every kernel a second time (seconds each); one copy costs far less than any
    kernel pass over the same cells. The kernels never write to their inputs either way.
    """
    return arr if arr.flags.writeable else arr.copy()


def as_stack(name: str, grid, dtype) -> tuple[np.ndarray, bool]:
    """``grid`` as a C-contiguous 3-d array of ``dtype`` and whether the input was 2-d."""
    arr = np.asarray(grid)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
        squeeze = True
    elif arr.ndim == 3:
        squeeze = False
    else:
        raise ValueError(
            f"{name}: expected a 2-d (ny, nx) or 3-d (n_wafers, ny, nx) grid, got shape {arr.shape}"
        )
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a numeric grid, got dtype {arr.dtype}")
    return writable(np.ascontiguousarray(arr, dtype=dtype)), squeeze


def state_stack(name: str, state) -> tuple[np.ndarray, bool]:
    """Validate a state grid (codes -1/0/1, see the module docstring) and return it as int8.

    A boolean grid means "every cell is a die; True = bad".
    """
    arr = np.asarray(state)
    if arr.dtype == np.bool_:
        return as_stack(name, arr, np.int8)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name}: a state grid holds integer codes -1 (no die), 0 (good), 1 (bad); got dtype {arr.dtype}"
        )
    if arr.size and (arr.min() < NO_DIE or arr.max() > BAD):
        raise ValueError(
            f"{name}: state codes must be -1 (no die), 0 (good) or 1 (bad); "
            f"found values in [{arr.min()}, {arr.max()}]"
        )
    return as_stack(name, arr, np.int8)


def check_connectivity(name: str, connectivity) -> int:
    if connectivity not in (4, 8):
        raise ValueError(
            f"{name}: connectivity must be 4 (rook) or 8 (queen), got {connectivity!r}"
        )
    return int(connectivity)


def check_window(name: str, window, lo: int = 3, hi: int = 15) -> int:
    if not isinstance(window, int | np.integer) or window < lo or window > hi or window % 2 == 0:
        raise ValueError(f"{name}: window must be an odd integer in [{lo}, {hi}], got {window!r}")
    return int(window)


def plane_mask(name: str, mask, ny: int, nx: int) -> np.ndarray:
    """An optional (ny, nx) boolean mask shared by all wafers, as uint8 (all ones when None)."""
    if mask is None:
        return np.ones((ny, nx), dtype=np.uint8)
    arr = np.asarray(mask)
    if arr.shape != (ny, nx):
        raise ValueError(
            f"{name}: mask must have the grid's (ny, nx) = {(ny, nx)}, got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr != 0, dtype=np.uint8)
