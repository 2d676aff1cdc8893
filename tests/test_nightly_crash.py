"""kill -9 at any moment, then re-run: the lake ends exactly as after an uninterrupted night.

A child process runs the night on a copy of a small lake and is killed with SIGKILL either at an
exact step of the write sequence (``BACKEND_FAB_NIGHTLY_KILL``, see nightly/faults.py) or after a
wall-clock delay; the night is then run again in this process and every derived table is compared
with a reference lake that was never interrupted (wall-clock columns aside). The re-run's report
must also list every lot of the night, including those the killed run had already written.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from nightly_lots import build_lake, table_snapshot

from backend_fab.lake import Lake
from backend_fab.nightly import run_nightly
from backend_fab.nightly.faults import KILL_ENV, KILL_POINTS
from backend_fab.nightly.lock import NightlyLock
from backend_fab.nightly.log import EventLog

TABLES = ("scores", "dispositions", "alarms")
LOTS = {"L01": {}, "L02": {"cluster": True}, "L03": {}}

CHILD = textwrap.dedent(
    """
    import sys
    from backend_fab.nightly import run_nightly
    print("started", flush=True)
    run_nightly(sys.argv[1], report_dir=sys.argv[2], flush_lots=1, figures=False)
    print("finished", flush=True)
    """
)


def _log():
    import io

    return EventLog(stream=io.StringIO(), tty=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    build_lake(root / "base", {k: dict(v) for k, v in LOTS.items()})
    shutil.copytree(root / "base", root / "ref")
    ref = Lake(root / "ref")
    run_nightly(ref, report_dir=None, log=_log(), flush_lots=1)
    return root, {t: table_snapshot(ref, t) for t in TABLES}


def _crash_and_rerun(base, tmp_path, *, kill_point: str | None = None, delay: float | None = None):
    root, reference = base
    lake_path = tmp_path / "lake"
    shutil.copytree(root / "base", lake_path)
    report = tmp_path / "report"
    env = dict(__import__("os").environ)
    if kill_point:
        env[KILL_ENV] = kill_point
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(lake_path), str(report)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout.readline().strip() == "started"
    if delay is not None:
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    rest = proc.stdout.read()
    proc.stdout.close()
    rc = proc.wait(timeout=300)
    if kill_point:
        assert rc == -signal.SIGKILL, f"the child was not killed at {kill_point} (rc {rc})"
        assert "finished" not in rest
    # the dead run's lock is free again; the re-run finishes the night
    lock = NightlyLock(lake_path).acquire(wait=0)
    lock.release()
    lake = Lake(lake_path)
    result = run_nightly(lake, report_dir=report, log=_log(), flush_lots=1, figures=False)
    assert result.exit_code == 0
    for name in TABLES:
        got = table_snapshot(lake, name)
        assert got.equals(reference[name]), f"{name} differs after a kill at {kill_point or delay}"
    summary = json.loads((report / "latest.json").read_text())
    reported = sorted(lot["lot_id"] for lot in summary["lots"])
    point = (kill_point or "").split(":")[0]
    if point == "closed":  # the night was complete: the re-run is a new, empty night
        assert reported == [] and summary["resumed_from"] is None
    elif point == "locked":  # nothing happened yet: the re-run is the whole night
        assert reported == sorted(LOTS) and summary["resumed_from"] is None
    elif point:
        # the re-run finishes the interrupted night: the lots written before the kill are in
        # its report too
        assert reported == sorted(LOTS)
        assert summary["resumed_from"] == result.night_id
    else:
        assert set(reported) <= set(LOTS)
    assert not list((report / ".nights").glob("*")) if (report / ".nights").exists() else True
    # and a further night has nothing to do
    again = run_nightly(lake, report_dir=None, log=_log())
    assert again.scored == [] and again.exit_code == 0
    return rc


@pytest.mark.parametrize("kill_point", ["dispositions:2", "scores:2", "report"])
def test_kill_at_a_step_then_rerun_equals_uninterrupted(base, tmp_path, kill_point):
    _crash_and_rerun(base, tmp_path, kill_point=kill_point)


def test_kill_after_a_delay_then_rerun_equals_uninterrupted(base, tmp_path):
    # wherever the kill lands (import, scoring, a Delta commit), the re-run repairs the night
    _crash_and_rerun(base, tmp_path, delay=4.0)


@pytest.mark.nightly
@pytest.mark.parametrize(
    "kill_point", [*KILL_POINTS, "scored:2", "figures:3", "dispositions:3", "alarms:2", "scores:3"]
)
def test_kill_at_every_step_then_rerun_equals_uninterrupted(base, tmp_path, kill_point):
    _crash_and_rerun(base, tmp_path, kill_point=kill_point)


@pytest.mark.nightly
@pytest.mark.parametrize("delay", [0.5, 2.0, 3.0, 5.0, 7.0])
def test_kill_after_various_delays(base, tmp_path, delay):
    _crash_and_rerun(base, tmp_path, delay=delay)
