"""The data lake: one folder of Delta tables (delta-rs), read lazily with ``pl.scan_delta``.

Atomicity of a run. Delta commits are atomic per table, not across tables, so a run is added in
two phases: its rows go to the data tables first, then one row goes to ``runs``, which is the
commit marker. :meth:`Lake.scan` shows a run-scoped table only for run_ids that have a ``runs``
row, so a writer killed half way leaves invisible orphans; the next :meth:`Lake.add_run` of that
run replaces them (a predicate overwrite on ``run_id``) and :meth:`Lake.vacuum` deletes them.

Concurrency is Delta's job: local-disk commits are put-if-absent renames, and a commit that loses
a race is retried here (every step of an add is idempotent, so a retry is safe). There is no lock
of our own. A table is always created empty before rows are written to it, and rows are written
only by predicate overwrites and merges, whose conflict checks see a concurrent writer's rows: a
"create with data" that lost a race would be re-committed by delta-rs as an append.

Derived tables (dispositions, scores, alarms, limits) are written with :meth:`Lake.replace`
(replace every row of the given keys in one commit) or :meth:`Lake.merge` (upsert by keys).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa

from backend_fab import schema
from backend_fab.errors import LakeError, SchemaError

LAKE_FILE = "lake.json"
LAKE_FORMAT = "backend-fab-lake"

STATE = schema.register(
    schema.Table(
        name="state",
        schema=pa.schema([("key", pa.string()), ("value", pa.string()), ("updated_at", schema.TS)]),
        keys=("key",),
        description="Small JSON documents of the lake's own bookkeeping (e.g. nightly run state).",
    )
)

_RETRIES = 40


@dataclass(frozen=True)
class AddResult:
    """What :meth:`Lake.add_run` did."""

    run_id: str
    added: bool
    rows: dict[str, int] = field(default_factory=dict)
    message: str = ""


def _sql_literal(value) -> str:
    """A value as a SQL literal for a Delta predicate (strings quoted, quotes doubled)."""
    if value is None:
        raise LakeError("a key used in a lake predicate is null; keys must be set")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


def _predicate(keys: pl.DataFrame) -> str:
    """``(a = 1 AND b = 'x') OR (...)`` over the distinct rows of ``keys``."""
    cols = keys.columns
    if len(cols) == 1:
        values = ", ".join(_sql_literal(v) for v in keys.get_column(cols[0]).unique().sort())
        return f"{cols[0]} IN ({values})"
    terms = []
    for row in keys.unique(maintain_order=True).iter_rows():
        terms.append(
            "("
            + " AND ".join(f"{c} = {_sql_literal(v)}" for c, v in zip(cols, row, strict=True))
            + ")"
        )
    return " OR ".join(terms)


def _is_conflict(exc: Exception) -> bool:
    """A commit that lost a race with another writer (safe to retry)."""
    name = type(exc).__name__
    text = str(exc).lower()
    return (
        name in {"CommitFailedError", "DeltaProtocolError"}
        or "conflict" in text
        or "concurrent" in text
        or "version already exists" in text
        or "already exists" in text
        or "transaction failed" in text
    )


def _retry(action, what: str):
    """Run ``action`` until it commits, backing off when another writer won the race."""
    delay = 0.02
    for attempt in range(_RETRIES):
        try:
            return action()
        except LakeError:
            raise
        except Exception as exc:
            if not _is_conflict(exc) or attempt == _RETRIES - 1:
                raise LakeError(f"{what}: {type(exc).__name__}: {exc}") from exc
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


class Lake:
    """A folder of Delta tables holding the canonical tables of :mod:`backend_fab.schema`.

    >>> lake = Lake("fab-lake")                       # doctest: +SKIP
    >>> lake.scan("die").filter(pl.col("final"))      # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path)
        marker = self.path / LAKE_FILE
        if marker.exists():
            try:
                meta = json.loads(marker.read_text())
            except (OSError, ValueError) as exc:
                raise LakeError(
                    f"{marker} is unreadable ({exc}); is {self.path} a backend-fab lake?"
                ) from exc
            if meta.get("format") != LAKE_FORMAT:
                raise LakeError(f"{marker} does not describe a backend-fab lake")
            found = meta.get("schema_version")
            if found != schema.SCHEMA_VERSION:
                raise LakeError(
                    f"lake {self.path} was made with schema version {found}; this backend-fab "
                    f"reads version {schema.SCHEMA_VERSION}. Re-ingest the source files into a "
                    f"new lake (backend-fab ingest ... --lake NEW) or use the backend-fab version "
                    f"that made it."
                )
        elif create:
            if self.path.exists() and any(self.path.iterdir()):
                raise LakeError(
                    f"{self.path} exists, is not empty and has no {LAKE_FILE}: not a backend-fab "
                    f"lake; choose an empty or new folder"
                )
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(
                json.dumps(
                    {"format": LAKE_FORMAT, "schema_version": schema.SCHEMA_VERSION}, indent=2
                )
            )
            os.replace(tmp, marker)
        else:
            raise LakeError(f"no backend-fab lake at {self.path} (no {LAKE_FILE})")

    def __repr__(self) -> str:
        return f"Lake({str(self.path)!r})"

    # --- reading -------------------------------------------------------------------------------

    def _table_path(self, name: str) -> Path:
        return self.path / name

    def exists(self, name: str) -> bool:
        return (self._table_path(name) / "_delta_log").is_dir()

    def tables(self) -> list[str]:
        """Names of the tables written so far."""
        if not self.path.exists():
            return []
        return sorted(p.name for p in self.path.iterdir() if (p / "_delta_log").is_dir())

    def _raw_scan(self, name: str) -> pl.LazyFrame:
        spec = schema.TABLES.get(name)
        if not self.exists(name):
            if spec is None:
                raise LakeError(
                    f"table {name!r} is not in lake {self.path} and is not a known table"
                )
            return spec.empty().lazy()
        return pl.scan_delta(str(self._table_path(name)))

    def scan(self, name: str) -> pl.LazyFrame:
        """A LazyFrame over table ``name``; run-scoped tables show committed runs only."""
        spec = schema.TABLES.get(name)
        frame = self._raw_scan(name)
        if name == "runs":
            return frame.unique(subset=["run_id"], keep="first", maintain_order=True)
        if spec is not None and spec.run_scoped:
            committed = self._raw_scan("runs").select("run_id").unique()
            return frame.join(committed, on="run_id", how="semi", maintain_order="left")
        return frame

    def read(self, name: str) -> pl.DataFrame:
        """``scan(name).collect()``."""
        return self.scan(name).collect()

    def has_run(self, run_id: str) -> bool:
        if not self.exists("runs"):
            return False
        return (
            self._raw_scan("runs")
            .filter(pl.col("run_id") == run_id)
            .select(pl.len())
            .collect()
            .item()
            > 0
        )

    def run_ids(self) -> set[str]:
        return set(self.scan("runs").select("run_id").collect().get_column("run_id").to_list())

    def version(self, name: str) -> int:
        from deltalake import DeltaTable

        if not self.exists(name):
            return -1
        return DeltaTable(str(self._table_path(name))).version()

    def history(self, name: str, limit: int | None = None) -> list[dict]:
        """Delta commit history of a table (newest first): the audit trail."""
        from deltalake import DeltaTable

        if not self.exists(name):
            return []
        return DeltaTable(str(self._table_path(name))).history(limit)

    # --- writing -------------------------------------------------------------------------------

    def _arrow(self, name: str, frame: pl.DataFrame) -> pa.Table:
        spec = schema.table(name)
        return frame.to_arrow().cast(spec.schema)

    def _ensure_table(self, name: str) -> str:
        """Create table ``name`` empty (its schema and partitioning) unless it exists; returns its
        path. Writers never create a table with their data: two writers that both found it absent
        could both commit a "create" (delta-rs retries the loser's commit at the next version),
        and the data of both would stay. An empty create that loses such a race adds nothing."""
        from deltalake import DeltaTable, write_deltalake

        target = str(self._table_path(name))
        spec = schema.table(name)
        delay = 0.02
        for _ in range(_RETRIES):
            if DeltaTable.is_deltatable(target):
                return target
            try:
                write_deltalake(
                    target,
                    spec.schema.empty_table(),
                    mode="error",
                    partition_by=list(spec.partition_by) or None,
                )
                return target
            except Exception as exc:
                # another writer is creating it: wait until its first commit is readable
                if not (_is_conflict(exc) or "exist" in str(exc).lower()):
                    raise LakeError(
                        f"creating table {name!r} in {self.path}: {type(exc).__name__}: {exc}"
                    ) from exc
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)
        raise LakeError(f"creating table {name!r} in {self.path}: it never became readable")

    def _write(self, name: str, frame: pl.DataFrame, *, predicate: str | None) -> None:
        """Append ``frame`` or, with ``predicate``, replace the rows matching it (one commit)."""
        from deltalake import write_deltalake

        target = self._ensure_table(name)
        data = self._arrow(name, frame)

        def action():
            if predicate is None:
                write_deltalake(target, data, mode="append")
            else:
                write_deltalake(target, data, mode="overwrite", predicate=predicate)

        _retry(action, f"writing table {name!r} in {self.path}")

    def add_run(self, tables: dict[str, pl.DataFrame]) -> AddResult:
        """Add one run's tables atomically and idempotently (see the module docstring).

        ``tables["runs"]`` holds exactly one row; every other frame is a run-scoped table whose
        ``run_id`` column equals that row's. All frames are validated before anything is written.
        """
        if "runs" not in tables:
            raise SchemaError("add_run needs a 'runs' frame with the run's one row", table="runs")
        runs = schema.validate("runs", tables["runs"])
        if runs.height != 1:
            raise SchemaError(
                f"table 'runs': add_run takes exactly one run, got {runs.height} rows", table="runs"
            )
        run_id = runs.item(0, "run_id")
        checked: dict[str, pl.DataFrame] = {}
        for name, frame in tables.items():
            if name == "runs":
                continue
            spec = schema.table(name)
            if not spec.run_scoped:
                raise SchemaError(
                    f"table {name!r} is not run-scoped; write it with Lake.replace or Lake.merge",
                    table=name,
                )
            frame = schema.validate(name, frame)
            others = frame.filter(pl.col("run_id") != run_id)
            if others.height:
                raise SchemaError(
                    f"table {name!r}: {others.height} row(s) carry run_id "
                    f"{others.item(0, 'run_id')!r}, not the run being added ({run_id!r})",
                    table=name,
                    column="run_id",
                )
            checked[name] = frame
        if self.has_run(run_id):
            return AddResult(
                run_id, False, {}, f"run {run_id} is already in the lake; nothing written"
            )
        rows = {}
        for name, frame in checked.items():
            # replaces orphans of an earlier, interrupted add of the same run
            if frame.height or self.exists(name):
                self._write(name, frame, predicate=f"run_id = {_sql_literal(run_id)}")
            rows[name] = frame.height
        self._commit_run(runs)
        rows["runs"] = 1
        return AddResult(run_id, True, rows, f"run {run_id} added")

    def _commit_run(self, runs: pl.DataFrame) -> None:
        """Insert the ``runs`` row unless present: the single commit that makes a run visible.
        A merge reads the whole table, so of two writers committing the same run at once the
        second conflicts, retries, finds the row and inserts nothing."""
        from deltalake import DeltaTable

        target = self._ensure_table("runs")
        data = self._arrow("runs", runs)

        def action():
            (
                DeltaTable(target)
                .merge(data, predicate="t.run_id = s.run_id", source_alias="s", target_alias="t")
                .when_not_matched_insert_all()
                .execute()
            )

        _retry(action, f"committing run {runs.item(0, 'run_id')} in {self.path}")

    def replace(
        self,
        name: str,
        frame: pl.DataFrame,
        by: Sequence[str],
        *,
        keys: pl.DataFrame | None = None,
    ) -> int:
        """Replace every row whose ``by`` values occur in ``frame`` (or ``keys``) with ``frame``.

        One Delta commit, so readers see the old rows or the new ones, never a mix. Pass ``keys``
        (a frame of ``by`` columns) to also clear keys that now have no rows. Returns rows written.
        """
        spec = schema.table(name)
        if spec.run_scoped:
            raise LakeError(f"table {name!r} is run-scoped: add it with Lake.add_run")
        frame = schema.validate(name, frame)
        by = list(by)
        missing = [c for c in by if c not in spec.columns]
        if missing:
            raise SchemaError(
                f"table {name!r} has no column {missing[0]!r} to replace by",
                table=name,
                column=missing[0],
            )
        key_frame = frame.select(by)
        if keys is not None:
            key_frame = pl.concat([key_frame, keys.select(by).cast(key_frame.schema)])
        key_frame = key_frame.unique(maintain_order=True)
        if key_frame.height == 0:
            return 0
        self._write(name, frame, predicate=_predicate(key_frame))
        return frame.height

    def merge(self, name: str, frame: pl.DataFrame) -> int:
        """Upsert ``frame`` into ``name`` by the table's keys. Returns rows written."""
        from deltalake import DeltaTable

        spec = schema.table(name)
        if spec.run_scoped:
            raise LakeError(f"table {name!r} is run-scoped: add it with Lake.add_run")
        frame = schema.validate(name, frame)
        if frame.height == 0:
            return 0
        target = self._ensure_table(name)
        data = self._arrow(name, frame)
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in spec.keys)

        def action():
            (
                DeltaTable(target)
                .merge(data, predicate=predicate, source_alias="s", target_alias="t")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )

        _retry(action, f"merging into table {name!r} in {self.path}")
        return frame.height

    # --- bookkeeping ---------------------------------------------------------------------------

    def state_get(self, key: str) -> dict | None:
        """A small JSON document stored under ``key``, or None."""
        if not self.exists("state"):
            return None
        rows = self.scan("state").filter(pl.col("key") == key).collect()
        if rows.height == 0:
            return None
        return json.loads(rows.item(0, "value"))

    def state_put(self, key: str, value: dict) -> None:
        """Store a JSON-serialisable document under ``key`` (one commit)."""
        frame = pl.DataFrame(
            {
                "key": [key],
                "value": [json.dumps(value, sort_keys=True, default=str)],
                "updated_at": [datetime.now(UTC)],
            },
            schema=STATE.polars_schema,
        )
        self.merge("state", frame)

    def orphans(self) -> dict[str, int]:
        """Rows of run-scoped tables whose run never committed (left by interrupted adds)."""
        committed = self._raw_scan("runs").select("run_id").unique()
        out = {}
        for name in self.tables():
            spec = schema.TABLES.get(name)
            if spec is None or not spec.run_scoped:
                continue
            n = (
                pl.scan_delta(str(self._table_path(name)))
                .join(committed, on="run_id", how="anti")
                .select(pl.len())
                .collect()
                .item()
            )
            if n:
                out[name] = n
        return out

    def vacuum(self, *, retention_hours: int = 168) -> dict[str, int]:
        """Delete orphan rows of interrupted adds, then files older than ``retention_hours``
        that no current version needs. Returns orphan rows deleted per table."""
        from deltalake import DeltaTable

        orphans = self.orphans()
        committed = set(
            self._raw_scan("runs").select("run_id").collect().get_column("run_id").to_list()
        )
        for name in orphans:
            ids = (
                pl.scan_delta(str(self._table_path(name)))
                .select("run_id")
                .unique()
                .collect()
                .get_column("run_id")
                .to_list()
            )
            dead = [r for r in ids if r not in committed]
            if dead:
                pred = "run_id IN (" + ", ".join(_sql_literal(r) for r in dead) + ")"
                _retry(
                    lambda n=name, p=pred: DeltaTable(str(self._table_path(n))).delete(p),
                    f"vacuum {name}",
                )
        for name in self.tables():
            DeltaTable(str(self._table_path(name))).vacuum(
                retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False
            )
        return orphans


class _Conflict(Exception):
    """Raised inside a retried action when another writer created a table first."""

    def __str__(self) -> str:  # matched by _is_conflict
        return "conflict: " + super().__str__()


def add_runs(lake: Lake, runs: Iterable[dict[str, pl.DataFrame]]) -> list[AddResult]:
    """Add several runs one after the other (each atomic on its own)."""
    return [lake.add_run(tables) for tables in runs]
