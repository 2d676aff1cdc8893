"""The nightly batch: discovery, idempotency, partial failure, engines, the lock, exit codes, CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap

import polars as pl
import pytest
from nightly_lots import build_lake, lot_tables, table_snapshot

from backend_fab.cli import main
from backend_fab.lake import Lake
from backend_fab.nightly import discover_lots, load_recipe, run_nightly
from backend_fab.nightly.faults import FAIL_LOTS_ENV
from backend_fab.nightly.log import EventLog
from backend_fab.nightly.run import parse_since

TABLES = ("scores", "dispositions", "alarms")
LOTS = ["L01", "L02", "L03"]


def quiet_log(stream=None):
    return EventLog(stream=stream or io.StringIO(), tty=False)


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory):
    """Three tiny lots (L02 with a fail cluster), never scored; tests copy it."""
    path = tmp_path_factory.mktemp("nightly") / "lake"
    build_lake(path)
    return path


@pytest.fixture(scope="module")
def scored(small_lake, tmp_path_factory):
    """A copy of the small lake after one uninterrupted local night: the reference."""
    root = tmp_path_factory.mktemp("scored")
    shutil.copytree(small_lake, root / "lake")
    result = run_nightly(root / "lake", report_dir=root / "report", log=quiet_log())
    lake = Lake(root / "lake")
    return root / "lake", result, {t: table_snapshot(lake, t) for t in TABLES}


def copy_of(path, tmp_path) -> Lake:
    shutil.copytree(path, tmp_path / "lake")
    return Lake(tmp_path / "lake")


def test_first_night_scores_every_lot(small_lake, scored):
    lake_path, first, snap = scored
    recipe = load_recipe()
    assert [p.lot_id for p in discover_lots(Lake(small_lake), recipe.hash).to_score] == LOTS
    assert first.exit_code == 0 and first.scored == LOTS and not first.failed
    scores = snap["scores"]
    # one whole-lot row and one row per wafer, each with the recipe hash and its runs
    assert scores.height == 3 * 3 and scores.filter(pl.col("wafer_id") == "").height == 3
    assert set(scores["recipe_hash"]) == {recipe.hash}
    assert set(scores.filter(pl.col("lot_id") == "L01")["run_ids"]) == {"run-L01-ws1"}
    lot = scores.filter((pl.col("lot_id") == "L01") & (pl.col("wafer_id") == "")).row(0, named=True)
    die = Lake(lake_path).read("die").filter(pl.col("lot_id") == "L01")
    assert lot["n_tested"] == die.height and lot["n_good"] == die.filter(pl.col("hbin") == 1).height
    # PAT found the planted parametric outliers; dispositions carry the PAT recipe's hash
    disp = snap["dispositions"]
    assert disp.height > 0 and set(disp["recipe_hash"]) == {recipe.pat_hash}
    assert set(disp.filter(pl.col("final_rule"))["lot_id"]) == set(LOTS)
    # the planted 4 x 4 fail block on L02 wafer 01 is a cluster alarm with a figure
    alarms = snap["alarms"]
    cl = alarms.filter((pl.col("rule") == "cluster") & (pl.col("lot_id") == "L02"))
    assert cl["wafer_id"].to_list() == ["01"] and cl["figure"].str.len_chars().min() > 100
    assert (
        scores.filter((pl.col("lot_id") == "L02") & (pl.col("wafer_id") == "01"))[
            "largest_cluster"
        ].item()
        >= 16
    )
    # the report and its summary agree with the lake
    summary = json.loads(first.report_json.read_text())
    assert summary["totals"]["lots_scored"] == 3 and summary["totals"]["alarms"] == alarms.height
    assert summary["recipe_hash"] == recipe.hash


def test_second_night_is_a_no_op(scored, tmp_path):
    lake_path, _, snap = scored
    lake = copy_of(lake_path, tmp_path)
    versions = {t: lake.version(t) for t in TABLES}
    second = run_nightly(lake, report_dir=tmp_path / "r2", log=quiet_log())
    assert second.exit_code == 0 and second.scored == [] and second.unchanged == 3
    assert {t: lake.version(t) for t in TABLES} == versions  # nothing written at all
    for name in TABLES:
        assert table_snapshot(lake, name).equals(snap[name]), name
    summary = json.loads(second.report_json.read_text())
    assert summary["totals"]["lots_scored"] == 0 and summary["totals"]["lots_unchanged"] == 3


def test_a_changed_lot_is_rescored_and_replaced_not_duplicated(scored, tmp_path):
    lake_path, _, snap = scored
    lake = copy_of(lake_path, tmp_path)
    # a retest run of L02 arrives: only L02 is scored again, its rows replaced
    lake.add_run(lot_tables("L02", index=1, run_suffix="ws1-retest", n_wafers=1))
    again = run_nightly(lake, report_dir=None, log=quiet_log())
    assert again.scored == ["L02"]
    scores = lake.read("scores")
    l02 = scores.filter(pl.col("lot_id") == "L02")
    assert l02.filter(pl.col("wafer_id") == "").height == 1
    assert set(l02["run_ids"]) == {"run-L02-ws1,run-L02-ws1-retest"}
    assert not scores.select("lot_id", "recipe_hash", "wafer_id").is_duplicated().any()
    for name in TABLES:
        others = table_snapshot(lake, name).filter(pl.col("lot_id") != "L02")
        assert others.equals(snap[name].filter(pl.col("lot_id") != "L02")), name


def test_since_keeps_only_recently_ingested_lots(small_lake, tmp_path):
    lake = copy_of(small_lake, tmp_path)
    recipe = load_recipe()
    # ingested_at of lot i is 2024-05-01 02:00 + 6 h * i
    found = discover_lots(lake, recipe.hash, since=parse_since("2024-05-01T07:00"))
    assert [p.lot_id for p in found.to_score] == ["L02", "L03"] and found.unchanged == 1
    res = run_nightly(
        lake, since="2024-05-01T13:00Z", report_dir=None, log=quiet_log(), figures=False
    )
    assert res.scored == ["L03"]
    with pytest.raises(Exception, match="not an ISO date"):
        run_nightly(lake, since="yesterday", report_dir=None, log=quiet_log())


def test_a_failing_lot_is_reported_and_the_others_are_written(
    small_lake, scored, tmp_path, monkeypatch
):
    lake = copy_of(small_lake, tmp_path)
    monkeypatch.setenv(FAIL_LOTS_ENV, "L02")
    stream = io.StringIO()
    res = run_nightly(lake, report_dir=tmp_path / "r", log=quiet_log(stream))
    assert res.exit_code == 1
    assert res.scored == ["L01", "L03"] and list(res.failed) == ["L02"]
    assert "injected failure" in res.failed["L02"]
    assert set(lake.read("scores")["lot_id"]) == {"L01", "L03"}
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [e for e in events if e["event"] == "lot_failed"]
    assert [e["lot_id"] for e in failed] == ["L02"] and failed[0]["level"] == "error"
    page = res.report_html.read_text()
    assert 'id="failures"' in page and "InjectedLotFailure" in page
    summary = json.loads(res.report_json.read_text())
    assert [f["lot_id"] for f in summary["failures"]] == ["L02"]
    # fixed: the next night retries only the failed lot, and the lake ends as if nothing failed
    monkeypatch.delenv(FAIL_LOTS_ENV)
    res = run_nightly(lake, report_dir=None, log=quiet_log())
    assert res.exit_code == 0 and res.scored == ["L02"]
    for name in TABLES:
        assert table_snapshot(lake, name).equals(scored[2][name]), name


def test_process_engine_isolates_a_failing_lot_and_matches_in_process(
    small_lake, scored, tmp_path, monkeypatch
):
    lake = copy_of(small_lake, tmp_path)
    monkeypatch.setenv(FAIL_LOTS_ENV, "L03")  # inherited by the spawned workers
    res = run_nightly(lake, engine="process", workers=2, report_dir=tmp_path / "r", log=quiet_log())
    assert res.exit_code == 1 and list(res.failed) == ["L03"] and res.scored == ["L01", "L02"]
    assert "process pool" in json.loads(res.report_json.read_text())["engine"]
    monkeypatch.delenv(FAIL_LOTS_ENV)
    assert run_nightly(lake, report_dir=None, log=quiet_log()).scored == ["L03"]
    for name in TABLES:
        assert table_snapshot(lake, name).equals(scored[2][name]), name


def test_dask_local_cluster_gives_the_same_tables_as_in_process(small_lake, scored, tmp_path):
    pytest.importorskip("distributed")
    lake = copy_of(small_lake, tmp_path)
    res = run_nightly(lake, engine="dask", workers=2, report_dir=tmp_path / "r", log=quiet_log())
    assert res.exit_code == 0 and res.scored == LOTS
    assert "LocalCluster (2 worker processes)" in json.loads(res.report_json.read_text())["engine"]
    for name in TABLES:
        assert table_snapshot(lake, name).equals(scored[2][name]), name


def test_fail_on_alarm_and_bad_options(small_lake, scored, tmp_path, capsys):
    lake = copy_of(small_lake, tmp_path)
    res = run_nightly(lake, report_dir=None, log=quiet_log(), fail_on_alarm=2, figures=False)
    assert scored[1].max_alarm_level == 2  # the planted cluster / PAT loss raise a hold alarm
    assert res.exit_code == 1 and "--fail-on-alarm 2" in res.message
    # bad options and a missing lake: exit 2 with a message, nothing started
    assert main(["nightly", "--lake", str(tmp_path / "nope"), "-q"]) == 2
    assert "no backend-fab lake" in capsys.readouterr().err
    assert main(["nightly", "--lake", str(lake.path), "--engine", "spark", "-q"]) == 2
    assert "unknown engine" in capsys.readouterr().err
    assert main(["nightly", "--lake", str(lake.path), "--fail-on-alarm", "3", "-q"]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[alarms]\ncluster_z = [5.0, 3.0]\n")
    assert main(["nightly", "--lake", str(lake.path), "--recipe", str(bad), "-q"]) == 2
    assert "cluster_z" in capsys.readouterr().err
    bad.write_text("[pat.dpat]\nk = -1\n")
    assert main(["nightly", "--lake", str(lake.path), "--recipe", str(bad), "-q"]) == 2
    assert "dpat.k" in capsys.readouterr().err


def test_cli_exit_code_json_logs_and_report(small_lake, tmp_path):
    lake = copy_of(small_lake, tmp_path)
    report = tmp_path / "rep"
    cmd = [
        sys.executable,
        "-m",
        "backend_fab.cli",
        "nightly",
        "--lake",
        str(lake.path),
        "--report",
        str(report),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "night_planned" and names[-1] == "night_done"
    assert names.count("lot_scored") == 3 and all("ts" in e and "level" in e for e in events)
    done = events[-1]
    assert done["exit_code"] == 0 and done["report"].endswith(".html")
    assert (report / "latest.html").read_bytes() == (
        report / done["report"].split("/")[-1]
    ).read_bytes()


def test_lock_held_by_another_run_exits_2_naming_it(scored, tmp_path):
    lake = copy_of(scored[0], tmp_path)
    holder = textwrap.dedent(
        f"""
        import time
        from backend_fab.nightly.lock import NightlyLock
        lock = NightlyLock({str(lake.path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        proc.stdout.close()
        assert line == "locked"
        cmd = [
            sys.executable,
            "-m",
            "backend_fab.cli",
            "nightly",
            "--lake",
            str(lake.path),
            "--wait",
            "1",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert out.returncode == 2
        event = json.loads(out.stderr.splitlines()[-1])
        assert event["event"] == "night_not_run" and event["level"] == "error"
        assert f"pid {proc.pid}" in event["message"] and "--wait" in event["message"]
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # the holder died: its stale lock is taken over, and the night runs
    stream = io.StringIO()
    res = run_nightly(lake, report_dir=None, log=quiet_log(stream))
    assert res.exit_code == 0
    assert "stale_lock_taken_over" in stream.getvalue() and str(proc.pid) in stream.getvalue()


def test_event_log_json_lines_off_a_tty_and_rich_lines_on_one():
    stream = io.StringIO()
    log = EventLog(stream=stream, tty=False)
    log.progress_start(3, "scoring")  # no bar off a TTY
    log.info("lot_scored", "lot L01 done", lot_id="L01", die=69)
    log.error("lot_failed", "lot L02 failed", lot_id="L02")
    log.progress_stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["level"], e.get("lot_id")) for e in lines] == [
        ("lot_scored", "info", "L01"),
        ("lot_failed", "error", "L02"),
    ]
    quiet = EventLog(stream=io.StringIO(), tty=False, quiet=True)
    quiet.info("lot_scored", "x")
    quiet.warning("stale_lock_taken_over", "y")
    assert [json.loads(x)["event"] for x in quiet.stream.getvalue().splitlines()] == [
        "stale_lock_taken_over"
    ]
    tty = io.StringIO()
    log = EventLog(stream=tty, tty=True)
    log.progress_start(2, "scoring 2 lots")
    log.info("lot_scored", "lot L01: 69 die")
    log.progress_advance()
    log.error("lot_failed", "lot L02 failed: boom")
    log.progress_advance()
    log.progress_stop()
    text = tty.getvalue()
    assert "lot L01: 69 die" in text and "lot L02 failed: boom" in text and "scoring 2 lots" in text
    assert "{" not in text.replace("{task", "")  # human lines, not JSON


@pytest.mark.nightly
def test_dask_engine_on_a_separate_scheduler_and_worker(small_lake, scored, tmp_path):
    """``--scheduler tcp://...``: a scheduler and a worker started as a real cluster would be."""
    import socket
    import time

    pytest.importorskip("distributed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    sched = subprocess.Popen(
        [*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            address,
            "--nworkers",
            "2",
            "--nthreads",
            "1",
            "--no-dashboard",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(5)
        lake = copy_of(small_lake, tmp_path)
        assert (
            main(
                [
                    "nightly",
                    "--lake",
                    str(lake.path),
                    "--engine",
                    "dask",
                    "--scheduler",
                    address,
                    "--report",
                    str(tmp_path / "r"),
                    "-q",
                ]
            )
            == 0
        )
        summary = json.loads((tmp_path / "r" / "latest.json").read_text())
        assert summary["engine"].startswith(f"dask scheduler {address}")
        for name in TABLES:
            assert table_snapshot(lake, name).equals(scored[2][name]), name
    finally:
        worker.terminate()
        sched.terminate()
        worker.wait(timeout=60)
        sched.wait(timeout=60)


def test_an_interrupted_night_is_finished_even_without_its_report_material(scored, tmp_path):
    """The journal says a night was running (its process died after writing every lot) and its
    report folder is gone: the next run finishes that night, rebuilding the lots' report
    material from the lake."""
    from backend_fab.nightly.run import journal_key

    lake = copy_of(scored[0], tmp_path)
    recipe = load_recipe()
    done = lake.state_get(journal_key(recipe.hash))
    lake.state_put(
        journal_key(recipe.hash), {**done, "status": "running", "night_id": "20240102T030405Z"}
    )
    res = run_nightly(lake, report_dir=tmp_path / "elsewhere", log=quiet_log())
    assert res.exit_code == 0 and res.night_id == "20240102T030405Z" and res.scored == LOTS
    summary = json.loads(res.report_json.read_text())
    assert summary["resumed_from"] == "20240102T030405Z"
    assert [lot["lot_id"] for lot in summary["lots"]] == LOTS
    assert all("gallery" in lot["figures"] for lot in summary["lots"])
    assert lake.state_get(journal_key(recipe.hash))["status"] == "done"
    for name in TABLES:  # finishing the night wrote nothing new
        assert table_snapshot(lake, name).equals(scored[2][name]), name


def test_scores_do_not_depend_on_the_row_order_of_the_die_table(tmp_path):
    """Engines, thread counts and Delta file layouts may hand rows over in another order; the
    scores, dispositions and alarms must not change (map analyses number wafers by appearance)."""
    from datetime import UTC, datetime

    from backend_fab.nightly.score import LotScores, load_lot, score_lot

    recipe = load_recipe()
    when = datetime(2024, 6, 1, tzinfo=UTC)
    outcomes, mapped = [], []
    for i, shuffle in enumerate((None, 7)):
        lake = Lake(tmp_path / f"lake{i}")
        lake.add_run(lot_tables("L09", n_wafers=4, cluster=True, shuffle=shuffle))
        outcomes.append(
            score_lot(lake, "L09", "run-L09-ws1", recipe, scored_at=when, figures=False)
        )
        lot = LotScores(load_lot(lake, "L09", ["run-L09-ws1"]), recipe, "run-L09-ws1", when, False)
        mapped.append(lot.final_mapped_die())
    # the map analyses get the same rows in the same order (their permutation seeds follow it)
    assert mapped[0].equals(mapped[1])
    a, b = outcomes
    assert a.ok and b.ok
    for name in TABLES:
        fa, fb = getattr(a, name), getattr(b, name)
        assert fa.sort(fa.columns).equals(fb.sort(fb.columns)), name
