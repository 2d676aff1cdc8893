"""The nightly batch: discover new or changed lots, score them, write, alarm, report.

Sequence of one night (every step safe to interrupt with ``kill -9`` and re-run):

1. Take the lake's nightly lock (:mod:`backend_fab.nightly.lock`); wait up to ``wait`` seconds.
2. Read the night journal (lake state ``nightly/<recipe_hash>``). A journal still marked
   ``running`` belongs to a night that was interrupted: this run finishes that night (same night
   id, and its report also lists the lots the interrupted run had already written).
3. Discover: a lot's fingerprint is the sorted list of the committed ``run_id`` s holding its die.
   A lot is new or changed when the ``scores`` table has no whole-lot row for it under this recipe
   hash with that fingerprint. ``since`` keeps only lots with a run ingested at or after it.
4. Score lots on the chosen engine (:mod:`backend_fab.engines`), several lots per task. Each lot
   yields scores, dispositions, alarms and its report material, or its error; a failing lot never
   stops the others.
5. Write batches of finished lots: report material into the night folder first, then
   ``dispositions``, ``alarms`` and last ``scores``, each with ``Lake.replace(by=(lot_id,
   recipe_hash))``. The whole-lot ``scores`` row is the lot's commit marker: until it is written
   the lot counts as not scored and the next run scores it again, replacing whatever an
   interrupted run had written. So a crash at any point, then a re-run, ends in the same tables
   as an uninterrupted run, and running twice never duplicates a row.
6. Write the HTML and JSON report, close the journal, drop the lock.

Exit codes (``nightly_command``): 0 done; 1 done but some lots failed (or an alarm at or above
``fail_on_alarm`` was raised); 2 could not run (no lake, bad recipe or options, lock held).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from backend_fab.errors import BackendFabError, NightlyError
from backend_fab.nightly import faults
from backend_fab.nightly.lock import NightlyLock
from backend_fab.nightly.log import EventLog

#: Lots written per lake commit batch (three replaces per batch) and the longest a finished lot
#: waits in memory before being written.
FLUSH_LOTS = 16
FLUSH_SECONDS = 30.0

LOT_KEYS = ("lot_id", "recipe_hash")


def journal_key(recipe_hash: str) -> str:
    return f"nightly/{recipe_hash}"


@dataclass(frozen=True)
class LotPlan:
    """A lot to score: its identity and the committed runs that make up its data tonight (every
    run carrying the lot id: tester runs, and any other run, which simply adds no die)."""

    lot_id: str
    product: str | None
    run_ids: tuple[str, ...]
    last_ingested: datetime | None

    @property
    def fingerprint(self) -> str:
        return ",".join(self.run_ids)


@dataclass
class Discovery:
    to_score: list[LotPlan]
    unchanged: int
    without_lot: int


def parse_since(since: str | datetime | None) -> datetime | None:
    """An ISO date or date-time (naive = UTC) as an aware UTC datetime."""
    if since is None or isinstance(since, datetime):
        if isinstance(since, datetime) and since.tzinfo is None:
            return since.replace(tzinfo=UTC)
        return since
    try:
        value = datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
    except ValueError:
        raise NightlyError(
            f"--since {since!r} is not an ISO date or date-time (e.g. 2024-05-01 or 2024-05-01T06:00)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def discover_lots(lake, recipe_hash: str, since: datetime | None = None) -> Discovery:
    """The lots that are new or changed since they were last scored under ``recipe_hash``.

    Reads only the ``runs`` table (one row per run) and the whole-lot ``scores`` rows, so it
    stays cheap however large the die and results tables grow.
    """
    per_lot = (
        lake.scan("runs")
        .select("run_id", "lot_id", "product", "ingested_at")
        .group_by("lot_id")
        .agg(
            pl.col("run_id").unique().sort().alias("run_ids"),
            pl.col("product").drop_nulls().first().alias("product"),
            pl.col("ingested_at").max().alias("last_ingested"),
        )
        .sort("lot_id")
        .collect()
    )
    without_lot = per_lot.filter(pl.col("lot_id").is_null())
    per_lot = per_lot.filter(pl.col("lot_id").is_not_null())
    scored = (
        lake.scan("scores")
        .filter((pl.col("recipe_hash") == recipe_hash) & (pl.col("wafer_id") == ""))
        .select("lot_id", "run_ids")
        .collect()
    )
    done = dict(
        zip(
            scored.get_column("lot_id").to_list(),
            scored.get_column("run_ids").to_list(),
            strict=True,
        )
    )
    plans, unchanged = [], 0
    for row in per_lot.iter_rows(named=True):
        plan = LotPlan(row["lot_id"], row["product"], tuple(row["run_ids"]), row["last_ingested"])
        if done.get(plan.lot_id) == plan.fingerprint:
            unchanged += 1
            continue
        if since is not None and (plan.last_ingested is None or plan.last_ingested < since):
            unchanged += 1
            continue
        plans.append(plan)
    n_without = int(without_lot.get_column("run_ids").list.len().sum()) if without_lot.height else 0
    return Discovery(plans, unchanged, n_without)


@dataclass
class NightlyResult:
    """What a night did; ``exit_code`` is what the command returns."""

    exit_code: int
    night_id: str | None = None
    scored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unchanged: int = 0
    alarms: int = 0
    max_alarm_level: int = 0
    report_html: Path | None = None
    report_json: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    message: str = ""


class _Writer:
    """Buffers finished lots and writes them in batches, scores last (the commit marker)."""

    def __init__(self, lake, night_dir: Path | None, log: EventLog, flush_lots: int = FLUSH_LOTS):
        self.lake = lake
        self.flush_lots = max(1, flush_lots)
        self.night_dir = night_dir
        self.log = log
        self.pending: list = []
        self.last_flush = time.monotonic()
        self.seconds = 0.0

    def add(self, outcome) -> None:
        self.pending.append(outcome)
        if (
            len(self.pending) >= self.flush_lots
            or time.monotonic() - self.last_flush >= FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        from backend_fab.nightly import material

        t0 = time.perf_counter()
        batch, self.pending = self.pending, []
        if self.night_dir is not None:
            for outcome in batch:
                material.save_lot_report(self.night_dir, outcome.report)
        faults.kill_point("figures")
        lot_ids = [o.lot_id for o in batch]
        for name in ("dispositions", "alarms", "scores"):
            # dispositions carry the PAT recipe's hash, scores and alarms the nightly recipe's
            hashes = [o.pat_hash if name == "dispositions" else o.recipe_hash for o in batch]
            keys = pl.DataFrame(
                {"lot_id": lot_ids, "recipe_hash": hashes},
                schema={"lot_id": pl.String, "recipe_hash": pl.String},
            )
            frame = pl.concat([getattr(o, name) for o in batch], how="vertical")
            self.lake.replace(name, frame, by=LOT_KEYS, keys=keys)
            faults.kill_point(name)
        self.last_flush = time.monotonic()
        self.seconds += time.perf_counter() - t0
        self.log.info(
            "lots_written",
            f"wrote {len(batch)} lot(s)",
            lots=[o.lot_id for o in batch],
            seconds=round(time.perf_counter() - t0, 3),
        )


def _night_id(report_dir: Path | None) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if report_dir is None:
        return stamp
    candidate, n = stamp, 1
    while (report_dir / f"night-{candidate}.html").exists():
        n += 1
        candidate = f"{stamp}-{n}"
    return candidate


def run_nightly(
    lake,
    *,
    recipe=None,
    report_dir: str | os.PathLike | None = "fab-report",
    since: str | datetime | None = None,
    engine: str = "local",
    scheduler: str | None = None,
    workers: int = 2,
    fail_on_alarm: int | None = None,
    wait: float = 0.0,
    log: EventLog | None = None,
    figures: bool = True,
    flush_lots: int = FLUSH_LOTS,
) -> NightlyResult:
    """Run one night on ``lake`` (a path or :class:`~backend_fab.lake.Lake`); see the module doc.

    ``recipe`` is a path to a recipe TOML, a :class:`~backend_fab.nightly.recipe.NightlyRecipe`
    or None for the built-in recipe. ``figures=False`` skips the report's lot figures (faster;
    alarms keep theirs). ``flush_lots`` finished lots are written per group of lake commits.
    Raises :class:`NightlyError` (or another :class:`BackendFabError`) when the night cannot run
    at all; lots that fail are reported in the result, not raised.
    """
    from backend_fab.engines import check_engine_options, default_batch_size, open_engine
    from backend_fab.lake import Lake
    from backend_fab.nightly import material, score
    from backend_fab.nightly.recipe import NightlyRecipe, load_recipe

    log = log or EventLog()
    t_start = time.perf_counter()
    started_at = datetime.now(UTC)
    if fail_on_alarm is not None and fail_on_alarm not in (1, 2):
        raise NightlyError(f"--fail-on-alarm must be 1 (review) or 2 (hold), got {fail_on_alarm}")
    since_dt = parse_since(since)
    check_engine_options(engine, workers=workers, scheduler=scheduler)
    if not isinstance(lake, Lake):
        if not (Path(lake) / "lake.json").exists():
            raise NightlyError(
                f"no backend-fab lake at {lake}: ingest files first (backend-fab ingest FILES --lake {lake})"
            )
        lake = Lake(lake, create=False)
    rec = recipe if isinstance(recipe, NightlyRecipe) else load_recipe(recipe)
    report_path = Path(report_dir) if report_dir is not None else None
    timings: dict[str, float] = {}

    lock = NightlyLock(lake.path)
    lock.acquire(wait=wait)
    try:
        if lock.stale is not None:
            log.warning(
                "stale_lock_taken_over",
                f"took over the lock left by {lock.stale.describe()}, which is no longer running",
                holder_pid=lock.stale.pid,
                holder_host=lock.stale.host,
                holder_started=lock.stale.started_at,
            )
        faults.kill_point("locked")
        key = journal_key(rec.hash)
        previous = lake.state_get(key)
        resumed_from = None
        resumed_lots: list[str] = []
        if previous and previous.get("status") == "running":
            resumed_from = previous["night_id"]
            resumed_lots = list(previous.get("lots", []))
            night_id = resumed_from
            log.warning(
                "night_resumed",
                f"the night {resumed_from} was interrupted (pid {previous.get('pid')} on "
                f"{previous.get('host')}); finishing it",
                night_id=resumed_from,
            )
        else:
            night_id = _night_id(report_path)
        t0 = time.perf_counter()
        found = discover_lots(lake, rec.hash, since_dt)
        timings["discover"] = time.perf_counter() - t0
        plans = found.to_score
        if found.without_lot:
            log.warning(
                "runs_without_lot",
                f"{found.without_lot} run(s) carry no lot_id; they cannot be scored by lot",
                runs=found.without_lot,
            )
        planned_ids = sorted({p.lot_id for p in plans} | set(resumed_lots))
        lake.state_put(
            key,
            {
                "night_id": night_id,
                "status": "running",
                "started_at": (previous or {}).get("started_at")
                if resumed_from
                else started_at.isoformat(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "lots": planned_ids,
                "recipe": rec.source,
            },
        )
        recipe_key = f"nightly/recipe/{rec.hash}"
        if lake.state_get(recipe_key) is None:
            # what a recipe hash means, for whoever reads the scores later
            lake.state_put(recipe_key, {"source": rec.source, **rec.to_dict()})
        faults.kill_point("planned")
        log.info(
            "night_planned",
            f"night {night_id}: {len(plans)} lot(s) to score, {found.unchanged} unchanged",
            night_id=night_id,
            lots=len(plans),
            unchanged=found.unchanged,
            recipe_hash=rec.hash,
            engine=engine,
        )

        t0 = time.perf_counter()
        limits = score.night_limits(lake, rec, planned_ids) if plans else None
        timings["limits"] = time.perf_counter() - t0
        if report_path is not None:
            material.drop_stale(report_path, keep=night_id)
        night_dir = material.night_dir(report_path, night_id) if report_path is not None else None
        writer = _Writer(lake, night_dir, log, flush_lots)
        outcomes_ok: list[str] = []
        failed: dict[str, dict] = {}
        stage_seconds: dict[str, float] = {}
        engine_name = engine
        t0 = time.perf_counter()
        if plans:
            with open_engine(engine, workers=workers, scheduler=scheduler) as eng:
                engine_name = eng.describe()
                size = 1 if engine == "local" else default_batch_size(len(plans), eng.workers)
                tasks = [
                    score.ScoreTask(
                        lake=str(lake.path),
                        lots=tuple((p.lot_id, p.fingerprint) for p in chunk),
                        recipe=rec,
                        scored_at=started_at,
                        figures=figures and report_path is not None,
                        limits=limits,
                    )
                    for chunk in (plans[i : i + size] for i in range(0, len(plans), size))
                ]
                log.progress_start(len(plans), f"scoring {len(plans)} lots")
                for task, result in eng.map_unordered(score.score_task, tasks):
                    if isinstance(result, list):
                        outcomes = result
                    else:  # the task itself failed (worker lost): every lot in it failed
                        outcomes = [
                            score.LotOutcome.failure(
                                lot_id,
                                fp,
                                rec.hash,
                                rec.pat_hash,
                                result.error_type,
                                result.message,
                                result.traceback,
                            )
                            for lot_id, fp in task.lots
                        ]
                    faults.kill_point("scored")
                    for outcome in outcomes:
                        for stage, sec in outcome.seconds.items():
                            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + sec
                        if outcome.ok:
                            writer.add(outcome)
                            outcomes_ok.append(outcome.lot_id)
                            log.info(
                                "lot_scored",
                                f"lot {outcome.lot_id}: {outcome.n_tested} die, alarm level {outcome.alarm_level}",
                                lot_id=outcome.lot_id,
                                die=outcome.n_tested,
                                alarm_level=outcome.alarm_level,
                                seconds=round(sum(outcome.seconds.values()), 3),
                            )
                        else:
                            failed[outcome.lot_id] = {
                                "lot_id": outcome.lot_id,
                                "error_type": outcome.error_type,
                                "message": outcome.message,
                                "traceback": outcome.traceback,
                            }
                            log.error(
                                "lot_failed",
                                f"lot {outcome.lot_id} failed: {outcome.error_type}: {outcome.message}",
                                lot_id=outcome.lot_id,
                                error_type=outcome.error_type,
                                error=outcome.message,
                            )
                        log.progress_advance()
                log.progress_stop()
                writer.flush()
        timings["score"] = time.perf_counter() - t0 - writer.seconds
        timings["write"] = writer.seconds
        for stage, sec in stage_seconds.items():
            timings[f"lots.{stage}"] = sec

        # lots of this night: scored now, plus those an interrupted run of it had finished
        scored_now = set(outcomes_ok)
        t0 = time.perf_counter()
        done_rows = (
            lake.scan("scores")
            .filter(
                (pl.col("recipe_hash") == rec.hash)
                & (pl.col("wafer_id") == "")
                & pl.col("lot_id").is_in(sorted(scored_now | set(resumed_lots)))
            )
            .select("lot_id")
            .collect()
            .get_column("lot_id")
            .to_list()
        )
        night_lots = sorted(set(done_rows) - set(failed))
        alarms = (
            lake.scan("alarms")
            .filter((pl.col("recipe_hash") == rec.hash) & pl.col("lot_id").is_in(night_lots))
            .collect()
            .sort(
                ["level", "lot_id", "wafer_id", "rule", "key"],
                descending=[True, False, False, False, False],
            )
        )
        max_level = int(alarms.get_column("level").max() or 0) if alarms.height else 0
        html_path = json_path = None
        if report_path is not None:
            from backend_fab.report import NightReport, write_report

            lot_reports = []
            for lot_id in night_lots:
                lr = material.load_lot_report(night_dir, lot_id)
                if lr is None:
                    if limits is None:
                        limits = score.night_limits(lake, rec, planned_ids)
                    lr = score.rebuild_lot_report(
                        lake, lot_id, rec, figures=figures, night_limits=limits
                    )
                lot_reports.append(lr)
            timings["report_material"] = time.perf_counter() - t0
            night = NightReport(
                night_id=night_id,
                started_at=started_at.isoformat(timespec="seconds"),
                finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
                lake=str(lake.path),
                recipe_hash=rec.hash,
                engine=engine_name,
                lots=lot_reports,
                alarms=alarms.to_dicts(),
                failures=[failed[k] for k in sorted(failed)],
                skipped=found.unchanged,
                resumed_from=resumed_from,
                timings=dict(timings),
            )
            paths = write_report(night, report_path)
            html_path, json_path = paths.html, paths.json
            timings["report"] = time.perf_counter() - t0
            faults.kill_point("report")
        lake.state_put(
            key,
            {
                "night_id": night_id,
                "status": "done",
                "started_at": started_at.isoformat(),
                "finished_at": datetime.now(UTC).isoformat(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "lots": night_lots,
                "failed": sorted(failed),
                "report": str(html_path) if html_path else None,
                "recipe": rec.source,
            },
        )
        faults.kill_point("closed")
        if night_dir is not None:
            shutil.rmtree(night_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # only when no other night's material is there
                night_dir.parent.rmdir()
    finally:
        log.progress_stop()
        lock.release()

    timings["total"] = time.perf_counter() - t_start
    exit_code = 1 if failed else 0
    message = f"night {night_id}: {len(night_lots)} lot(s) scored, {len(failed)} failed, {alarms.height} alarm(s)"
    if fail_on_alarm is not None and max_level >= fail_on_alarm:
        exit_code = 1
        message += f"; an alarm of level {max_level} >= --fail-on-alarm {fail_on_alarm}"
    log.info(
        "night_done",
        message + (f"; report {html_path}" if html_path else ""),
        night_id=night_id,
        scored=len(night_lots),
        failed=len(failed),
        alarms=alarms.height,
        max_alarm_level=max_level,
        report=str(html_path) if html_path else None,
        exit_code=exit_code,
        seconds=round(timings["total"], 3),
    )
    return NightlyResult(
        exit_code=exit_code,
        night_id=night_id,
        scored=night_lots,
        failed={k: v["message"] for k, v in failed.items()},
        unchanged=found.unchanged,
        alarms=alarms.height,
        max_alarm_level=max_level,
        report_html=html_path,
        report_json=json_path,
        timings=timings,
        message=message,
    )


def nightly_command(
    *,
    lake: Path,
    recipe: Path | None = None,
    report: Path | None = Path("fab-report"),
    since: str | None = None,
    engine: str = "local",
    scheduler: str | None = None,
    workers: int = 2,
    fail_on_alarm: int | None = None,
    wait: float = 0.0,
    quiet: bool = False,
) -> int:
    """The ``backend-fab nightly`` command: run the night, return its exit code (0, 1 or 2)."""
    log = EventLog(quiet=quiet)
    try:
        result = run_nightly(
            lake,
            recipe=recipe,
            report_dir=report,
            since=since,
            engine=engine,
            scheduler=scheduler,
            workers=workers,
            fail_on_alarm=fail_on_alarm,
            wait=wait,
            log=log,
        )
    except BackendFabError as exc:
        log.error("night_not_run", str(exc), error_type=type(exc).__name__, error=str(exc))
        return 2
    return result.exit_code
