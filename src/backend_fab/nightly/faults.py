"""Fault injection for the batch's crash-safety and partial-failure tests.

Two environment variables, read at the moment a fault point is passed (so a test sets them on the
child process only); unset, every function here is a no-op:

* ``BACKEND_FAB_NIGHTLY_KILL=POINT[:N]`` sends SIGKILL to this process the N-th time (default 1)
  it passes ``POINT`` (see :data:`KILL_POINTS`): a crash at an exact step of the write sequence.
* ``BACKEND_FAB_NIGHTLY_FAIL_LOTS=LOT[,LOT...]`` makes scoring of those lots raise, wherever the
  scoring runs (spawned processes and Dask workers inherit the environment).
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "BACKEND_FAB_NIGHTLY_KILL"
FAIL_LOTS_ENV = "BACKEND_FAB_NIGHTLY_FAIL_LOTS"

#: The steps of a night, in order, at which a kill can be injected.
KILL_POINTS = (
    "locked",  # lock taken, nothing read yet
    "planned",  # lots discovered, night journal written
    "scored",  # a task's results received, nothing of them written
    "figures",  # a batch's report material written to the night folder
    "dispositions",  # a batch's dispositions committed
    "alarms",  # a batch's alarms committed
    "scores",  # a batch's scores committed (the lots are done)
    "report",  # the HTML/JSON report written, the journal not yet closed
    "closed",  # the journal closed, the lock still held
)

_passes: dict[str, int] = {}


class InjectedLotFailure(RuntimeError):
    """Raised for a lot named in ``BACKEND_FAB_NIGHTLY_FAIL_LOTS``."""


def kill_point(point: str) -> None:
    """SIGKILL this process here if ``BACKEND_FAB_NIGHTLY_KILL`` names ``point``."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _passes[point] = _passes.get(point, 0) + 1
    if _passes[point] >= int(nth or 1):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def maybe_fail_lot(lot_id: str) -> None:
    """Raise InjectedLotFailure if ``lot_id`` is named in ``BACKEND_FAB_NIGHTLY_FAIL_LOTS``."""
    spec = os.environ.get(FAIL_LOTS_ENV)
    if spec and lot_id in {s.strip() for s in spec.split(",")}:
        raise InjectedLotFailure(f"injected failure for lot {lot_id!r} ({FAIL_LOTS_ENV})")
