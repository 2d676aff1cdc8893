"""Reticle stacks: fail counts folded onto the die positions inside the reticle field.

DOMAIN §1.3: a reticle stack sums, per position ``(rx, ry)`` inside the reticle field (shot), the
die tested and failed at that position over every field of every wafer. A mask or stepper defect
shows as one position with a high fail rate. The grid-to-position map comes from the layout
(``Layout.reticle_xy``); positions are numbered ``ry * reticle_cols + rx``.
"""

from __future__ import annotations

import numba
import numpy as np

from backend_fab_kernels._config import JIT
from backend_fab_kernels._grid import state_stack, writable

__all__ = ["reticle_stack"]


@numba.njit(**JIT)
def _reticle_stack(state, position, n_pos):
    n_w, ny, nx = state.shape
    fails = np.zeros((n_w, n_pos), dtype=np.int64)
    tested = np.zeros((n_w, n_pos), dtype=np.int64)
    for w in range(n_w):
        for y in range(ny):
            for x in range(nx):
                s = state[w, y, x]
                q = position[y, x]
                if s >= 0 and q >= 0:
                    tested[w, q] += 1
                    fails[w, q] += s == 1
    return fails, tested


def reticle_stack(state, position, n_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """Fail and tested counts per wafer and reticle position.

    Parameters
    ----------
    state : int8 state grid (n_wafers, ny, nx) or (ny, nx): -1 no die, 0 good, 1 bad
    position : integer array (ny, nx)
        Reticle position index of each grid cell in ``[0, n_positions)``; -1 = not counted.
    n_positions : int
        Positions per field (``reticle_cols * reticle_rows``).

    Returns
    -------
    fails, tested : int64 arrays (n_wafers, n_positions); sum over axis 0 for the lot. The fail
        rate of a position is ``fails / tested``.
    """
    st, _ = state_stack("reticle_stack", state)
    _, ny, nx = st.shape
    pos = np.asarray(position)
    if pos.shape != (ny, nx):
        raise ValueError(f"reticle_stack: position must have shape {(ny, nx)}, got {pos.shape}")
    if pos.dtype.kind not in "iu":
        raise TypeError(f"reticle_stack: position must be integer, got dtype {pos.dtype}")
    if not isinstance(n_positions, int | np.integer) or n_positions < 1:
        raise ValueError(f"reticle_stack: n_positions must be an integer >= 1, got {n_positions!r}")
    if pos.size and (pos.min() < -1 or pos.max() >= n_positions):
        raise ValueError(f"reticle_stack: position values must lie in [-1, {n_positions})")
    return _reticle_stack(st, writable(np.ascontiguousarray(pos, dtype=np.int64)), int(n_positions))
