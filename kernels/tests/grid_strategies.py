"""Hypothesis strategies for the wafer-map kernels: stacks of wafers on a dense grid.

``wafers()`` draws an int8 state grid (n_wafers, ny, nx) of 1-4 wafers sharing one frame (-1 no
die, 0 good, 1 bad): outlines (full rectangle, disk, odd random shape, a single die, no die at
all), per-wafer holes (untested die), and fail patterns (none, all, sparse, dense, a blob, a line)
so that the kernels meet empty wafers, single die, all-fail and all-pass maps and odd shapes.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st


def examples(fraction: float):
    """Settings with a fraction of the active profile's examples (at least 10): for properties
    whose naive reference is slow, so the default run stays short and the nightly one deep."""
    return settings(max_examples=max(10, int(settings.default.max_examples * fraction)))


@st.composite
def wafers(draw, max_wafers: int = 4, max_side: int = 12, min_side: int = 1) -> np.ndarray:
    n_w = draw(st.integers(1, max_wafers))
    ny = draw(st.integers(min_side, max_side))
    nx = draw(st.integers(min_side, max_side))
    outline = draw(st.sampled_from(["rect", "disk", "disk", "odd", "single", "empty"]))
    yy, xx = np.mgrid[0:ny, 0:nx]
    if outline == "rect":
        die = np.ones((ny, nx), dtype=bool)
    elif outline == "disk":
        cx, cy = (nx - 1) / 2, (ny - 1) / 2
        die = ((xx - cx) / (nx / 2)) ** 2 + ((yy - cy) / (ny / 2)) ** 2 <= 1.0
    elif outline == "odd":
        die = np.array(draw(st.lists(st.booleans(), min_size=ny * nx, max_size=ny * nx))).reshape(
            ny, nx
        )
    elif outline == "single":
        die = np.zeros((ny, nx), dtype=bool)
        die[draw(st.integers(0, ny - 1)), draw(st.integers(0, nx - 1))] = True
    else:
        die = np.zeros((ny, nx), dtype=bool)
    out = np.full((n_w, ny, nx), -1, dtype=np.int8)
    for w in range(n_w):
        mode = draw(st.sampled_from(["none", "all", "sparse", "dense", "dense", "blob", "line"]))
        a = np.array(draw(st.lists(st.booleans(), min_size=ny * nx, max_size=ny * nx))).reshape(
            ny, nx
        )
        if mode == "none":
            fail = np.zeros((ny, nx), dtype=bool)
        elif mode == "all":
            fail = np.ones((ny, nx), dtype=bool)
        elif mode == "sparse":
            b = np.array(draw(st.lists(st.booleans(), min_size=ny * nx, max_size=ny * nx))).reshape(
                ny, nx
            )
            fail = a & b
        elif mode == "dense":
            fail = a
        elif mode == "blob":
            cx = draw(st.integers(0, nx - 1))
            cy = draw(st.integers(0, ny - 1))
            r2 = draw(st.integers(0, 12))
            fail = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r2) | (
                a & (np.roll(a, 1) if a.size > 1 else a)
            )
        else:
            dx, dy = draw(st.sampled_from([(1, 0), (0, 1), (1, 1), (1, -1), (2, 1)]))
            c = draw(st.integers(-12, 12))
            fail = dy * xx - dx * yy == c
        holes = draw(st.booleans())
        present = (
            die
            & ~(
                np.array(draw(st.lists(st.booleans(), min_size=ny * nx, max_size=ny * nx))).reshape(
                    ny, nx
                )
                & a
            )
            if holes
            else die
        )
        out[w] = np.where(present, fail.astype(np.int8), -1)
    return out


def read_only(*arrays):
    """Copies of the arrays with the write flag cleared (what polars/Arrow views look like)."""
    out = []
    for a in arrays:
        b = np.array(a, copy=True)
        b.flags.writeable = False
        out.append(b)
    return out if len(out) > 1 else out[0]
