"""Helpers shared by several kernels, and the validation used by every public wrapper."""

from __future__ import annotations

import numpy as np


def as_array(name: str, a, dtype, ndim: int | None = None) -> np.ndarray:
    """Return ``a`` as a C-contiguous array of ``dtype``; never copies when it already is one.

    Read-only inputs are accepted: kernels never write to their inputs.
    """
    arr = np.ascontiguousarray(a, dtype=dtype)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    return arr


def check_out(name: str, a, dtype, shape: tuple) -> np.ndarray:
    """``a`` when it can receive a kernel's output: a C-contiguous writeable numpy array of
    ``dtype`` and ``shape`` (e.g. a recycled buffer); else ValueError naming ``name``."""
    if not (
        isinstance(a, np.ndarray)
        and a.shape == tuple(shape)
        and a.dtype == dtype
        and a.flags.c_contiguous
        and a.flags.writeable
    ):
        raise ValueError(
            f"{name} must be a C-contiguous writeable {np.dtype(dtype).name} array of shape "
            f"{tuple(shape)}"
        )
    return a


def check_offsets(name: str, offsets, n: int) -> np.ndarray:
    """Validate group offsets: int64, starts at 0, non-decreasing, ends at ``n``."""
    off = as_array(name, offsets, np.int64, ndim=1)
    if off.size == 0 or off[0] != 0 or off[-1] != n:
        raise ValueError(
            f"{name}: offsets must start at 0 and end at {n} (got {off[:1]}..{off[-1:]})"
        )
    if off.size > 1 and np.any(np.diff(off) < 0):
        raise ValueError(f"{name}: offsets must be non-decreasing")
    return off
