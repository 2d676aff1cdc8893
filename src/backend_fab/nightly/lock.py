"""One nightly batch per lake at a time: an advisory lock file in the lake folder.

The lock is an OS file lock (``fcntl.flock``; ``msvcrt.locking`` on Windows) on
``<lake>/_nightly.lock``. The kernel drops it when the holder dies, even under ``kill -9``, so a
crashed run never blocks the next one. The file also records who holds it (pid, host, start time,
command) for the message a waiting run prints. A file left by a dead holder is stale: the next run
takes the lock over and says so. On a network filesystem without working file locks the record
alone still names the holder; give each night its own scheduler slot there.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backend_fab.errors import NightlyError

LOCK_NAME = "_nightly.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) the lock."""

    pid: int
    host: str
    started_at: str
    command: str

    @classmethod
    def me(cls) -> Holder:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            command=" ".join(sys.argv[:1] + sys.argv[1:6]),
        )

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(
                int(data["pid"]),
                str(data["host"]),
                str(data["started_at"]),
                str(data.get("command", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started_at}"

    def is_alive_here(self) -> bool | None:
        """True/False when the holder ran on this host; None when that cannot be told."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, owned by someone else
            return True
        except OSError:
            return None
        return True


def _try_lock(fd: int) -> bool:
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


class NightlyLock:
    """The lake's nightly lock. ``acquire(wait)`` or use as a context manager.

    ``stale`` is set after acquiring when the file named a holder that had died without releasing
    (the batch logs that it took the lock over).
    """

    def __init__(self, lake_path: str | os.PathLike):
        self.path = Path(lake_path) / LOCK_NAME
        self._fd: int | None = None
        self.stale: Holder | None = None

    def holder(self) -> Holder | None:
        """The holder recorded in the lock file (the current one while it is held)."""
        try:
            return Holder.parse(self.path.read_text())
        except OSError:
            return None

    def acquire(self, wait: float = 0.0, poll: float = 0.2) -> NightlyLock:
        """Take the lock, waiting up to ``wait`` seconds; NightlyError names the holder if not."""
        deadline = time.monotonic() + max(0.0, wait)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    who = holder.describe() if holder else "an unknown process"
                    raise NightlyError(
                        f"another nightly run holds the lock on {self.path.parent} ({who}); "
                        f"waited {wait:g} s. Let it finish, or pass --wait SECONDS to wait longer."
                    )
                time.sleep(poll)
        except BaseException:
            os.close(fd)
            raise
        previous = Holder.parse(os.read(fd, 65536).decode("utf-8", "replace") or "{}")
        # a record we can now lock belongs to a holder that is gone (released or killed); it is
        # stale when that holder never cleared it, i.e. it died
        if previous is not None:
            self.stale = previous
        me = Holder.me()
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me.__dict__).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Clear the holder record and drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            _unlock(fd)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> NightlyLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
