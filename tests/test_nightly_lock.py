"""The nightly lock: one run per lake, a clear message naming the holder, stale locks taken over."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from backend_fab.errors import NightlyError
from backend_fab.nightly.lock import LOCK_NAME, NightlyLock

HOLD = textwrap.dedent(
    """
    import sys, time
    from backend_fab.nightly.lock import NightlyLock
    lock = NightlyLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
    """
)


def _holder(path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline().strip()
    proc.stdout.close()
    assert line == "locked"
    return proc


def test_second_acquire_in_process_fails_naming_the_holder(tmp_path):
    first = NightlyLock(tmp_path).acquire()
    try:
        with pytest.raises(NightlyError) as err:
            NightlyLock(tmp_path).acquire(wait=0.3)
        text = str(err.value)
        assert f"pid {os.getpid()}" in text and socket.gethostname() in text and "started" in text
        assert "--wait" in text
    finally:
        first.release()
    # released: free again, and the record is cleared (no stale report)
    again = NightlyLock(tmp_path).acquire()
    assert again.stale is None
    again.release()


def test_lock_held_by_another_process_then_released_after_waiting(tmp_path):
    proc = _holder(tmp_path, 1.5)
    try:
        with pytest.raises(NightlyError, match=f"pid {proc.pid}"):
            NightlyLock(tmp_path).acquire(wait=0)
        t0 = time.monotonic()
        lock = NightlyLock(tmp_path).acquire(wait=20)
        assert time.monotonic() - t0 < 15
        assert lock.stale is None  # the holder released properly
        assert lock.holder().pid == os.getpid()
        lock.release()
    finally:
        proc.wait(timeout=30)


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # the record still names the dead holder, but the OS dropped its lock
    assert NightlyLock(tmp_path).holder().pid == proc.pid
    lock = NightlyLock(tmp_path).acquire(wait=0)
    try:
        assert lock.stale is not None and lock.stale.pid == proc.pid
        assert lock.stale.is_alive_here() is False
    finally:
        lock.release()


def test_garbage_lock_file_does_not_block(tmp_path):
    (tmp_path / LOCK_NAME).write_text("not json")
    with NightlyLock(tmp_path) as lock:
        assert lock.held and lock.stale is None
    assert not lock.held
