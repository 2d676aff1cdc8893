"""Lake ingest: files and folders in, one content-hashed run per file in the lake.

What happens to each file:

1. **Detect** by content, never by name: the first bytes are checked for a compression magic
   number (gzip, bzip2, xz, a one-member zip) and the (decompressed) head is offered to each
   entry of :data:`INGESTERS` in order. STDF (a FAR record at byte 0) is built in; the map and
   assembly formats register their own entries. A file nobody recognises fails with
   "not a recognised format".
2. **Hash** the decompressed content: ``run_id = sha256(content).hexdigest()``, the same identity
   :func:`backend_fab.io.stdf.read_stdf` gives a run. A run already in the lake is reported
   "already ingested" and costs nothing beyond the hashing.
3. **Parse** in a worker process (a pool with the ``spawn`` start method: polars deadlocks under
   ``fork``); the parent process is the only lake writer, so commits never race each other.
4. **Add** with :meth:`backend_fab.lake.Lake.add_run`, which validates every frame before writing
   and commits the ``runs`` row last: nothing of a failed file is ever visible in the lake.

Compressed files are expanded in memory up to ``max_expanded_bytes`` (a guard against
decompression bombs and against files that would not fit); plain files are read whole.

Extending: a format is a pair of plain module-level functions (so that they pickle into ``spawn``
workers), registered with :func:`register_ingester`::

    def detect(path: Path, head: bytes) -> bool: ...   # head: first <= 64 KiB, decompressed
    def load(path: Path, content: bytes) -> dict[str, pl.DataFrame]: ...

``load`` may take only ``path`` (then it reads the file itself), and may accept ``salvage``. It
returns run-scoped canonical tables (and optionally the one-row ``runs`` frame); ingest sets
``run_id`` on every frame to the content hash and fills the ``runs`` row's source columns, so a
loader need not know the hash. Modules named in :data:`INGESTER_MODULES` are imported before
detection so that their import-time registrations take effect in the CLI.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import lzma
import multiprocessing
import os
import sys
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from backend_fab import schema
from backend_fab.errors import BackendFabError, IngestError, LakeError, StdfError

#: Default limit on the expanded size of one compressed file (the CLI's ``--max-expanded-mb``).
DEFAULT_MAX_EXPANDED_BYTES = 8192 * 2**20
#: Batches smaller than this (on-disk bytes, compressed files weighted) parse in-process.
MIN_PARALLEL_BYTES = 32 * 2**20
#: How many times its size a compressed file weighs in that estimate (STDF packs 5-20x).
COMPRESSED_WEIGHT = 8
#: Bytes of (decompressed) content handed to detectors.
HEAD_BYTES = 64 * 1024
#: Modules imported before detection; each may call :func:`register_ingester` at import time.
INGESTER_MODULES: list[str] = [
    "backend_fab.io.maps",
    "backend_fab.genealogy",
    "backend_fab.assembly",
]
#: Tables a run may carry into the lake (besides ``runs``): the run-scoped canonical tables.
STDF_TABLES = ("wafers", "die", "tests", "results", "bins")

STATUS_ADDED = "added"
STATUS_ALREADY = "already ingested"
STATUS_FAILED = "failed"

_READ_CHUNK = 1 << 20
_OUT_CHUNK = 4 << 20
_MAGIC = {
    "gzip": (b"\x1f\x8b",),
    "bzip2": (b"BZh",),
    "xz": (b"\xfd7zXZ\x00",),
    "zip": (b"PK\x03\x04", b"PK\x05\x06"),
}


# --- registry ------------------------------------------------------------------------------------


class Ingester(NamedTuple):
    """One input format: ``detect(path, head) -> bool`` and ``load(path[, content]) -> tables``.

    Either function may be given as ``"module:function"`` (resolved on first use).
    """

    detect: Callable[[Path, bytes], bool] | str
    load: Callable[..., dict[str, pl.DataFrame]] | str
    name: str = ""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        load = self.load
        return load if isinstance(load, str) else f"{load.__module__}:{load.__qualname__}"


def _resolve(func):
    if isinstance(func, str):
        module, _, attr = func.partition(":")
        return getattr(importlib.import_module(module), attr)
    return func


def is_stdf(path: Path, head: bytes) -> bool:
    """True when ``head`` starts with an STDF FAR record (REC_LEN 2, REC_TYP 0, REC_SUB 10).

    REC_LEN is 2 in either byte order; CPU_TYPE and STDF_VER are left to the reader, which names
    an unsupported version precisely.
    """
    return (
        len(head) >= 6 and head[2] == 0 and head[3] == 10 and head[:2] in (b"\x00\x02", b"\x02\x00")
    )


def load_stdf(path: Path, content: bytes, salvage: bool = False) -> dict[str, pl.DataFrame]:
    """Decode STDF ``content`` (already decompressed) read from ``path`` into run tables."""
    from backend_fab.io.stdf import read_stdf

    try:
        data = read_stdf(content, errors="salvage" if salvage else "raise", source_path=path)
    except StdfError as exc:
        if exc.path not in (None, "<bytes>"):
            raise
        raise StdfError(
            exc.reason, path=str(path), offset=exc.offset, record_index=exc.record_index
        ) from exc
    tables = {"runs": data.runs}
    for name in STDF_TABLES:
        tables[name] = getattr(data, name)
    return tables


#: Formats tried in order; the first whose ``detect`` says yes loads the file.
INGESTERS: list[Ingester | tuple] = [Ingester(is_stdf, load_stdf, "stdf")]


def register_ingester(detect, load, name: str = "") -> Ingester:
    """Add a format to :data:`INGESTERS` (after those present); re-registering is a no-op.

    ``detect`` and ``load`` must be module-level functions (or ``"module:function"`` strings):
    they are sent to ``spawn`` worker processes by reference.
    """
    entry = Ingester(detect, load, name)
    for existing in _entries():
        if (existing.detect, existing.load) == (detect, load) or (name and existing.name == name):
            return existing
    INGESTERS.append(entry)
    return entry


def _entries() -> list[Ingester]:
    return [e if isinstance(e, Ingester) else Ingester(*e) for e in INGESTERS]


def _import_ingester_modules() -> None:
    for module in INGESTER_MODULES:
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is not None:
            importlib.import_module(module)


# --- content: decompression with a size limit ----------------------------------------------------


def compression_of(head: bytes) -> str | None:
    """``"gzip"``, ``"bzip2"``, ``"xz"``, ``"zip"`` from the magic number, or None (plain)."""
    for kind, magics in _MAGIC.items():
        if head.startswith(magics):
            return kind
    return None


class _Gzip:
    """zlib's streaming inflate behind the bz2/lzma decompressor interface."""

    def __init__(self):
        self._d = zlib.decompressobj(wbits=31)
        self._tail = b""
        self._full = False

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._tail and not self._full

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(self._tail + data, max_length)
        self._tail = self._d.unconsumed_tail
        self._full = len(out) == max_length
        return out


class _TooLarge(IngestError):
    """Expansion past the limit: never salvaged."""


_DECOMPRESSORS = {"gzip": _Gzip, "bzip2": bz2.BZ2Decompressor, "xz": lzma.LZMADecompressor}


def _expand_stream(raw, kind: str, path: str, limit: int) -> Iterator[bytes]:
    """Decompress ``raw`` (a binary file) chunk by chunk; concatenated members are one stream.

    Raises IngestError on corrupt or truncated data, trailing garbage, or output past ``limit``.
    """
    new = _DECOMPRESSORS[kind]
    magic = _MAGIC[kind]
    d = new()
    pos = 0  # compressed bytes read
    total = 0
    while True:
        if d.eof:
            rest = d.unused_data
            while len(rest) < 8:
                more = raw.read(_READ_CHUNK)
                if not more:
                    break
                pos += len(more)
                rest += more
            if not rest:
                return
            if rest.startswith(magic):
                d = new()
                feed = rest
            elif not rest.strip(b"\0") and not raw.read().strip(b"\0"):
                return  # zero padding after the last member (tape and some archivers add it)
            else:
                raise IngestError(
                    f"{kind} data is followed by {len(rest)}+ bytes that are not {kind}",
                    path=path,
                    offset=pos - len(rest),
                )
        elif d.needs_input:
            feed = raw.read(_READ_CHUNK)
            pos += len(feed)
            if not feed:
                raise IngestError(
                    f"{kind} data is truncated: the stream ends before its end marker "
                    f"({total} bytes expanded); the file was cut short in transfer",
                    path=path,
                    offset=pos,
                )
        else:
            feed = b""
        try:
            out = d.decompress(feed, _OUT_CHUNK)
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
            raise IngestError(f"{kind} data is corrupt: {exc}", path=path, offset=pos) from exc
        if out:
            total += len(out)
            if total > limit:
                raise _TooLarge(
                    f"{kind} file expands past {limit // 2**20} MB; raise --max-expanded-mb "
                    f"(max_expanded_bytes) if it is genuine",
                    path=path,
                )
            yield out


def _zip_member(zf: zipfile.ZipFile, path: str) -> zipfile.ZipInfo:
    members = [m for m in zf.infolist() if not m.is_dir()]
    if len(members) != 1:
        names = ", ".join(m.filename for m in members[:5]) or "none"
        raise IngestError(
            f"zip archive holds {len(members)} files ({names}); expected exactly one: unpack it "
            f"and ingest the folder",
            path=path,
        )
    return members[0]


def _expand_zip(path: str, limit: int) -> Iterator[bytes]:
    try:
        with zipfile.ZipFile(path) as zf:
            member = _zip_member(zf, path)
            if member.file_size > limit:
                raise _TooLarge(
                    f"zip member {member.filename!r} expands to {member.file_size // 2**20} MB, "
                    f"past {limit // 2**20} MB; raise --max-expanded-mb (max_expanded_bytes) if it "
                    f"is genuine",
                    path=path,
                )
            total = 0
            with zf.open(member) as f:
                while chunk := f.read(_READ_CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise _TooLarge(
                            f"zip member {member.filename!r} expands past {limit // 2**20} MB",
                            path=path,
                        )
                    yield chunk
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        OSError,
    ) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise IngestError(f"zip archive is corrupt or truncated: {exc}", path=path) from exc


@dataclass
class Content:
    """The decompressed bytes of one input file."""

    data: bytes
    compression: str | None
    size_on_disk: int
    #: Set when salvaging kept only a prefix of a damaged compressed stream.
    problem: str | None = None


def _expand(path: str, kind: str | None, limit: int) -> Iterator[bytes]:
    if kind is None:
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK * 16):
                yield chunk
    elif kind == "zip":
        yield from _expand_zip(path, limit)
    else:
        with open(path, "rb") as f:
            yield from _expand_stream(f, kind, path, limit)


def read_content(
    path: str | os.PathLike,
    *,
    max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES,
    partial_ok: bool = False,
) -> Content:
    """The whole (decompressed) content of a file; compression found by magic number.

    With ``partial_ok`` a damaged or truncated compressed stream yields the prefix that expanded
    cleanly and ``Content.problem`` says what was wrong; otherwise :class:`IngestError`.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        kind = compression_of(f.read(8))
    if kind is None:
        with open(path, "rb") as f:
            return Content(f.read(), None, size)
    chunks: list[bytes] = []
    problem = None
    try:
        for chunk in _expand(path, kind, max_expanded_bytes):
            chunks.append(chunk)
    except IngestError as exc:
        if not partial_ok or isinstance(exc, _TooLarge):
            raise
        problem = exc.reason
    return Content(b"".join(chunks), kind, size, problem)


def read_head(path: str | os.PathLike, n: int = HEAD_BYTES) -> tuple[bytes, str | None]:
    """The first ``n`` bytes of the (decompressed) content, and the compression found.

    Never raises for damaged compression: it returns what expanded before the damage.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read(n)
    kind = compression_of(raw)
    if kind is None:
        return raw, None
    out = bytearray()
    try:
        for chunk in _expand(path, kind, max(n, _OUT_CHUNK) * 2):
            out += chunk
            if len(out) >= n:
                break
    except IngestError:
        pass
    return bytes(out[:n]), kind


def content_hash(data: bytes) -> str:
    """The run identity: sha256 of the decompressed content, as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


# --- results ------------------------------------------------------------------------------------


@dataclass
class FileResult:
    """What happened to one input file."""

    path: str
    status: str  # "added", "already ingested" or "failed"
    format: str | None = None
    run_id: str | None = None
    records: int | None = None
    parts: int | None = None
    wafers: int | None = None
    seconds: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status != STATUS_FAILED


@dataclass
class IngestReport:
    """The outcome of :func:`ingest_paths`: one :class:`FileResult` per file, in path order."""

    lake: str
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def added(self) -> list[FileResult]:
        return [f for f in self.files if f.status == STATUS_ADDED]

    @property
    def already(self) -> list[FileResult]:
        return [f for f in self.files if f.status == STATUS_ALREADY]

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == STATUS_FAILED]

    @property
    def exit_code(self) -> int:
        """0 when every file was added or already present, 1 when any failed."""
        return 1 if self.failed else 0

    def to_frame(self) -> pl.DataFrame:
        """One row per file: path, status, format, run_id, records, parts, wafers, seconds, reason."""
        cols = [
            "path",
            "status",
            "format",
            "run_id",
            "records",
            "parts",
            "wafers",
            "seconds",
            "reason",
        ]
        return pl.DataFrame(
            [{c: getattr(f, c) for c in cols} for f in self.files],
            schema={
                "path": pl.String,
                "status": pl.String,
                "format": pl.String,
                "run_id": pl.String,
                "records": pl.Int64,
                "parts": pl.Int64,
                "wafers": pl.Int64,
                "seconds": pl.Float64,
                "reason": pl.String,
            },
        )

    def summary(self) -> str:
        return (
            f"{len(self.files)} file(s): {len(self.added)} added, {len(self.already)} already "
            f"ingested, {len(self.failed)} failed ({self.seconds:.1f} s)"
        )


# --- finding files ------------------------------------------------------------------------------


def find_files(
    paths: Iterable[str | os.PathLike], *, skip: Sequence[Path] = ()
) -> tuple[list[Path], list[FileResult]]:
    """Files under ``paths`` (folders searched recursively, in sorted order).

    Hidden entries (names starting with ``.``) inside folders and folders in ``skip`` (the lake)
    are passed over; a file named explicitly is always taken. Paths that do not exist come back
    as failures.
    """
    skip_resolved = {p.resolve() for p in skip}
    found: dict[Path, None] = {}
    missing: list[FileResult] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            found.setdefault(p, None)
        elif p.is_dir():
            if p.resolve() in skip_resolved:
                continue
            for root, dirs, files in os.walk(p):
                root_path = Path(root)
                dirs[:] = sorted(
                    d
                    for d in dirs
                    if not d.startswith(".") and (root_path / d).resolve() not in skip_resolved
                )
                for name in sorted(files):
                    if not name.startswith("."):
                        child = root_path / name
                        if child.is_file():
                            found.setdefault(child, None)
        elif p.exists():
            missing.append(FileResult(str(p), STATUS_FAILED, reason="not a regular file or folder"))
        else:
            missing.append(FileResult(str(p), STATUS_FAILED, reason="no such file or folder"))
    # one entry per real file, even when named twice through different spellings
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return sorted(unique.values(), key=lambda q: str(q)), missing


# --- the work of one file (runs in a worker process) ---------------------------------------------


@dataclass
class _Task:
    index: int
    path: str
    ingester: Ingester
    max_expanded_bytes: int
    salvage: bool


@dataclass
class _Outcome:
    index: int
    status: str  # "parsed", STATUS_ALREADY or STATUS_FAILED
    run_id: str | None = None
    tables: dict[str, pl.DataFrame] | None = None
    seconds: float = 0.0
    reason: str = ""


_KNOWN: frozenset[str] = frozenset()


def _init_worker(known: frozenset[str]) -> None:
    global _KNOWN
    _KNOWN = known


def _worker(task: _Task) -> _Outcome:
    return _process(task, _KNOWN)


def _call_load(load, path: Path, content: Content, salvage: bool) -> dict[str, pl.DataFrame]:
    params = inspect.signature(load).parameters
    kwargs: dict[str, Any] = {}
    if "content" in params:
        kwargs["content"] = content.data
    if "salvage" in params:
        kwargs["salvage"] = salvage
    return load(path, **kwargs)


def _finish_tables(
    tables: dict[str, pl.DataFrame], run_id: str, path: Path, content: Content
) -> dict[str, pl.DataFrame]:
    """Stamp the run identity and source on every frame (ingest owns ``run_id``)."""
    if not isinstance(tables, dict):
        raise IngestError(
            f"the loader returned {type(tables).__name__}, not a dict of tables", path=str(path)
        )
    out: dict[str, pl.DataFrame] = {}
    for name, frame in tables.items():
        if frame is None:
            continue
        if isinstance(frame, pl.LazyFrame):
            frame = frame.collect()
        if "run_id" in frame.columns:
            frame = frame.with_columns(pl.lit(run_id, dtype=pl.String).alias("run_id"))
        out[name] = frame
    runs = out.get("runs")
    if runs is None:
        runs = schema.conform("runs", pl.DataFrame({"run_id": [run_id], "status": ["ok"]}))
    if runs.height != 1:
        raise IngestError(
            f"the loader returned {runs.height} runs rows; one file is one run", path=str(path)
        )
    status = runs.item(0, "status") if "status" in runs.columns else None
    reason = runs.item(0, "status_reason") if "status_reason" in runs.columns else None
    if content.problem:
        status = "salvaged"
        reason = "; ".join(r for r in (content.problem, reason) if r)
    out["runs"] = runs.with_columns(
        pl.lit(str(path.resolve()), dtype=pl.String).alias("source_path"),
        pl.lit(content.size_on_disk, dtype=pl.Int64).alias("source_size"),
        pl.lit(status or "ok", dtype=pl.String).alias("status"),
        pl.lit(reason, dtype=pl.String).alias("status_reason"),
    )
    return out


def _process(task: _Task, known: frozenset[str] | set[str]) -> _Outcome:
    t0 = time.perf_counter()
    path = Path(task.path)
    try:
        content = read_content(
            path, max_expanded_bytes=task.max_expanded_bytes, partial_ok=task.salvage
        )
        run_id = content_hash(content.data)
        if run_id in known:
            return _Outcome(task.index, STATUS_ALREADY, run_id, seconds=time.perf_counter() - t0)
        load = _resolve(task.ingester.load)
        tables = _finish_tables(
            _call_load(load, path, content, task.salvage), run_id, path, content
        )
        return _Outcome(task.index, "parsed", run_id, tables, time.perf_counter() - t0)
    except BackendFabError as exc:
        reason = str(exc)
        if not isinstance(exc, StdfError | IngestError) or str(path) not in reason:
            reason = f"{reason} (file {path})"
        return _Outcome(task.index, STATUS_FAILED, seconds=time.perf_counter() - t0, reason=reason)
    except MemoryError:
        return _Outcome(
            task.index,
            STATUS_FAILED,
            seconds=time.perf_counter() - t0,
            reason=f"out of memory while reading {path}; try --workers 1",
        )
    except OSError as exc:
        return _Outcome(
            task.index,
            STATUS_FAILED,
            seconds=time.perf_counter() - t0,
            reason=f"cannot read {path}: {exc.strerror or exc}",
        )
    except Exception as exc:  # a loader bug must not stop the other files of the batch
        where = ""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
        return _Outcome(
            task.index,
            STATUS_FAILED,
            seconds=time.perf_counter() - t0,
            reason=f"unexpected {type(exc).__name__}{where} while loading {path}: {exc}; "
            f"please report it with the file",
        )


def _detect(path: Path, entries: list[Ingester]) -> tuple[Ingester | None, str | None]:
    head, compression = read_head(path)
    if not head:
        return None, compression
    for entry in entries:
        if _resolve(entry.detect)(path, head):
            return entry, compression
    return None, compression


def _counts(tables: dict[str, pl.DataFrame]) -> tuple[int | None, int | None, int | None]:
    runs = tables["runs"]
    records = runs.item(0, "n_records") if "n_records" in runs.columns else None
    parts = runs.item(0, "n_parts") if "n_parts" in runs.columns else None
    if parts is None and "die" in tables:
        parts = tables["die"].height
    wafers = tables["wafers"].height if "wafers" in tables else None
    return records, parts, wafers


# --- the batch ----------------------------------------------------------------------------------


def _run_tasks(tasks: list[_Task], known: frozenset[str], workers: int) -> Iterator[_Outcome]:
    """Outcomes of ``tasks``; parsing runs in up to ``workers`` spawn processes.

    A worker that dies (usually killed for memory) breaks the pool. The files in flight then
    run again one at a time, each in a pool of its own, so that only the file that kills its
    worker fails; the rest of the queue carries on in a fresh pool.
    """
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _process(task, known)
        return
    ctx = multiprocessing.get_context("spawn")
    queue = deque(tasks)
    while queue:
        suspects: list[_Task] = []
        n = min(workers, len(queue))
        with ProcessPoolExecutor(
            n, mp_context=ctx, initializer=_init_worker, initargs=(known,)
        ) as pool:
            window: deque = deque()
            while queue or window:
                while queue and len(window) < 2 * n:
                    task = queue.popleft()
                    window.append((task, pool.submit(_worker, task)))
                task, future = window.popleft()
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    suspects = [task, *(t for t, _ in window)]
                    break
                yield outcome
        for task in suspects:
            yield _isolated(task, known, ctx)


def _isolated(task: _Task, known: frozenset[str], ctx) -> _Outcome:
    with ProcessPoolExecutor(
        1, mp_context=ctx, initializer=_init_worker, initargs=(known,)
    ) as pool:
        try:
            return pool.submit(_worker, task).result()
        except BrokenProcessPool:
            return _Outcome(
                task.index,
                STATUS_FAILED,
                reason=f"the worker process died while parsing {task.path} (killed for running "
                f"out of memory?); ingest it alone or on a machine with more memory",
            )


def ingest_paths(
    paths: Iterable[str | os.PathLike],
    lake,
    *,
    workers: int = 2,
    max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES,
    salvage: bool = False,
    progress: bool = True,
    min_parallel_bytes: int = MIN_PARALLEL_BYTES,
) -> IngestReport:
    """Ingest files and folders (recursively) into ``lake`` (a :class:`Lake` or its path).

    One run per file, identified by the sha256 of its decompressed content; files already in the
    lake are skipped after hashing. ``workers`` > 1 parses in a ``spawn`` process pool while this
    process writes the lake. ``salvage`` lets the STDF reader keep what it can of a damaged file
    (the run is marked ``status = "salvaged"``); by default a damaged file fails and nothing of it
    is written. ``progress`` shows a progress bar when stderr is a terminal.

    Starting worker processes costs seconds (each imports polars and the decoder), so a batch
    smaller than ``min_parallel_bytes`` (on-disk bytes, compressed files counted
    :data:`COMPRESSED_WEIGHT` times; default :data:`MIN_PARALLEL_BYTES`) parses in this process.

    Raises :class:`LakeError` when the lake cannot be opened or read; per-file problems are
    reported in the returned :class:`IngestReport`, never raised.
    """
    from backend_fab.lake import Lake

    t_start = time.perf_counter()
    if not isinstance(lake, Lake):
        lake = Lake(lake)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    report = IngestReport(lake=str(lake.path))
    files, missing = find_files(paths, skip=[lake.path])
    _import_ingester_modules()
    entries = _entries()
    try:
        known = frozenset(lake.run_ids())
    except LakeError:
        raise
    except Exception as exc:
        raise LakeError(f"cannot read the runs of lake {lake.path}: {exc}") from exc

    results: list[FileResult | None] = [None] * len(files)
    tasks: list[_Task] = []
    work = 0
    for i, path in enumerate(files):
        try:
            entry, compression = _detect(path, entries)
        except OSError as exc:
            results[i] = FileResult(
                str(path), STATUS_FAILED, reason=f"cannot read {path}: {exc.strerror or exc}"
            )
            continue
        except Exception as exc:
            results[i] = FileResult(
                str(path),
                STATUS_FAILED,
                reason=f"format detection failed ({type(exc).__name__}: {exc}) (file {path})",
            )
            continue
        if entry is None:
            empty = path.stat().st_size == 0
            results[i] = FileResult(
                str(path),
                STATUS_FAILED,
                reason=("empty file" if empty else "not a recognised format")
                + f" (file {path}); formats: {', '.join(e.label for e in entries)}",
            )
            continue
        results[i] = FileResult(str(path), STATUS_FAILED, format=entry.label)
        tasks.append(_Task(i, str(path), entry, max_expanded_bytes, salvage))
        work += path.stat().st_size * (COMPRESSED_WEIGHT if compression else 1)
    if work < min_parallel_bytes:
        workers = 1

    show = progress and sys.stderr.isatty()
    bar = _Progress(len(files), show)
    with bar:
        for i, r in enumerate(results):
            if r is not None and r.reason:
                bar.advance(Path(files[i]).name)
        added_here: dict[str, str] = {}
        for outcome in _run_tasks(tasks, known, workers):
            res = results[outcome.index]
            assert res is not None
            res.seconds = outcome.seconds
            res.run_id = outcome.run_id
            if outcome.status == "parsed":
                _add(lake, res, outcome, added_here)
            else:
                res.status = outcome.status
                res.reason = outcome.reason
                if outcome.status == STATUS_ALREADY:
                    res.reason = "already ingested; nothing to do"
            bar.advance(Path(res.path).name)
    report.files = missing + [r for r in results if r is not None]
    report.seconds = time.perf_counter() - t_start
    return report


def _add(lake, res: FileResult, outcome: _Outcome, added_here: dict[str, str]) -> None:
    tables = outcome.tables
    assert tables is not None and outcome.run_id is not None
    res.records, res.parts, res.wafers = _counts(tables)
    if outcome.run_id in added_here:
        res.status = STATUS_ALREADY
        res.reason = f"already ingested: same content as {added_here[outcome.run_id]}"
        return
    t0 = time.perf_counter()
    tables["runs"] = tables["runs"].with_columns(
        pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("ingested_at")
    )
    try:
        result = lake.add_run(tables)
    except BackendFabError as exc:
        res.status = STATUS_FAILED
        res.reason = f"not added to the lake: {exc} (file {res.path})"
        return
    finally:
        res.seconds += time.perf_counter() - t0
    if result.added:
        res.status = STATUS_ADDED
        res.reason = ""
        added_here[outcome.run_id] = res.path
    else:
        res.status = STATUS_ALREADY
        res.reason = "already ingested; nothing to do"


class _Progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, total: int, show: bool):
        self._bar = None
        if show and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("ingest"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task("", total=total)

    def __enter__(self):
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self, name: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=name)


# --- the command --------------------------------------------------------------------------------


def _fmt(value) -> str:
    return "" if value is None else f"{value:,}"


def _shown_paths(paths: list[str]) -> tuple[str | None, list[str]]:
    """Paths relative to their common folder (shorter table rows), and that folder."""
    absolute = [os.path.abspath(p) for p in paths]
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    except ValueError:  # different drives
        return None, paths
    return root, [os.path.relpath(p, root) for p in absolute]


def print_report(report: IngestReport, *, file=None) -> None:
    """The per-file summary table (records, parts, wafers, time, status) and the tally."""
    from rich.console import Console
    from rich.table import Table

    out = file or sys.stdout
    # a log file or pipe gets wide rows rather than paths folded over several lines
    width = None if out.isatty() else 160
    console = Console(file=out, width=width)
    root, shown = _shown_paths([f.path for f in report.files])
    title = f"ingest into {report.lake}" + (f" (files under {root})" if root else "")
    table = Table(title=title, show_lines=False)
    for col, justify in (
        ("file", "left"), ("format", "left"), ("records", "right"), ("parts", "right"),
        ("wafers", "right"), ("time s", "right"), ("status", "left"), ("run_id", "left"),
    ):  # fmt: skip
        table.add_column(col, justify=justify, overflow="fold")
    styles = {STATUS_ADDED: "green", STATUS_ALREADY: "dim", STATUS_FAILED: "bold red"}
    for f, name in zip(report.files, shown, strict=True):
        table.add_row(
            name, f.format or "", _fmt(f.records), _fmt(f.parts), _fmt(f.wafers),
            f"{f.seconds:.2f}", f"[{styles[f.status]}]{f.status}[/]", (f.run_id or "")[:12],
        )  # fmt: skip
    console.print(table)
    console.print(report.summary())


def ingest_command(
    paths: Sequence[str | os.PathLike],
    lake: str | os.PathLike,
    workers: int = 2,
    max_expanded_mb: int = 8192,
    quiet: bool = False,
    salvage: bool = False,
) -> int:
    """``backend-fab ingest``: 0 all files added or already present, 1 any failed, 2 cannot run.

    Failures are listed on stderr, each with its reason, even with ``quiet``; the summary table
    goes to stdout unless ``quiet``.
    """
    err = sys.stderr
    if workers < 1:
        print("error: --workers must be at least 1", file=err)
        return 2
    if max_expanded_mb < 1:
        print("error: --max-expanded-mb must be at least 1", file=err)
        return 2
    try:
        report = ingest_paths(
            paths,
            lake,
            workers=workers,
            max_expanded_bytes=max_expanded_mb * 2**20,
            salvage=salvage,
            progress=not quiet,
        )
    except (LakeError, OSError) as exc:
        print(f"error: cannot use lake {lake}: {exc}", file=err)
        return 2
    if not quiet:
        if report.files:
            print_report(report)
        else:
            print(f"nothing to ingest under {', '.join(map(str, paths))}")
    for f in report.failed:
        print(f"FAILED {f.path}: {f.reason}", file=err)
    if quiet and report.failed:
        print(report.summary(), file=err)
    with contextlib.suppress(Exception):
        err.flush()
    return report.exit_code
