"""Every numba compile option of backend_fab_kernels lives here (no flag is hard-coded elsewhere).

- ``BACKEND_FAB_NUMBA_CACHE=0`` turns the on-disk compile cache off (use it while editing helpers:
  numba does not invalidate a cached caller when a helper in another module changes).
- ``FASTMATH`` is a flag *set* without ``nnan``/``ninf``: plain ``fastmath=True`` silently removes
  NaN checks, and our kernels rely on NaN meaning "no value".
"""

from __future__ import annotations

import os

CACHE: bool = os.environ.get("BACKEND_FAB_NUMBA_CACHE", "1") not in ("0", "false", "no")

FASTMATH: set[str] = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: Options for serial kernels.
JIT = {"nogil": True, "cache": CACHE, "fastmath": FASTMATH, "error_model": "numpy"}

#: Options for kernels that use ``prange`` over groups (wafers, lots, tests).
PARALLEL_JIT = {**JIT, "parallel": True}
