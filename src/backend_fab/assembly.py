"""Assembly data: file readers (steps, units, genealogy edges) and assembly yield analytics.

Files (layouts in ``docs/assembly-data.md``): CSV with a header row (UTF-8, comma separated) or
Parquet, one of three kinds recognised by their columns:

* **assembly step records** -> ``assembly_steps``: one row per assembly lot x step x reject code;
* **final-test / burn-in units** -> ``units``: one row per unit x insertion;
* **genealogy edges** -> ``genealogy``: lot merges and splits, die -> strip position -> unit.

Readers validate every row and raise :class:`AssemblyDataError` naming the file, the row (1-based
data row; CSV line = row + 1) and the column. ``backend-fab ingest`` takes these files (the
formats register with :mod:`backend_fab.ingest` when this module is imported).

Analytics (DOMAIN §4.3): step yields ``Y_s = qty_out / qty_in`` and rolled throughput yield
``RTY = prod_s Y_s``; reject-code Pareto per step; commonality of reject rates with equipment,
material lot or shift (per level against the rest of its step: Fisher's exact test where an
expected count is below 5, else Pearson's chi-square with 1 degree of freedom; Benjamini-Hochberg
q-values over every level tested); strip-position effects and wafer-origin effects on yield.
Pipelines take and return ``pl.LazyFrame``; the statistical tests collect and return frames.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path

import numpy as np
import polars as pl

from backend_fab import schema
from backend_fab.errors import AssemblyDataError
from backend_fab.io.maps import STRIP_MAPS  # noqa: F401  (registers the strip_maps table)

__all__ = [
    "assembly_outcomes",
    "commonality",
    "enrichment",
    "read_assembly_steps",
    "read_genealogy",
    "read_units",
    "reject_pareto",
    "rolled_yield",
    "step_yields",
    "strip_position_effects",
    "wafer_origin_effects",
]

RELATIONS = ("transfer", "merge", "split")


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Col:
    name: str
    kind: str  # str, int, float, bool, time
    required: bool = False
    aliases: tuple[str, ...] = ()


STEP_COLUMNS = (
    _Col("assembly_lot_id", "str", True, ("assembly_lot", "lot_id", "lot")),
    _Col("step", "str", True, ("step_name", "operation")),
    _Col("step_seq", "int", False, ("seq", "step_order")),
    _Col("qty_in", "int", True, ("in_qty", "quantity_in")),
    _Col("qty_out", "int", True, ("out_qty", "quantity_out")),
    _Col("reject_code", "str", False, ("reject", "defect_code")),
    _Col("reject_qty", "int", False, ("reject_count", "rejects")),
    _Col("equipment", "str", False, ("equipment_id", "tool", "machine")),
    _Col("material_lot", "str", False, ("material_lot_id", "material")),
    _Col("shift", "str"),
    _Col("start_time", "time", False, ("start",)),
    _Col("end_time", "time", False, ("end", "finish_time")),
)

UNIT_COLUMNS = (
    _Col("unit_id", "str", True, ("unit", "serial", "2d_code")),
    _Col("insertion", "str", True, ("test_step", "step")),
    _Col("ecid", "str"),
    _Col("ft_lot_id", "str", False, ("ft_lot", "lot_id")),
    _Col("assembly_lot_id", "str", False, ("assembly_lot",)),
    _Col("strip_id", "str", False, ("strip",)),
    _Col("row", "int", False, ("strip_row",)),
    _Col("col", "int", False, ("strip_col", "column")),
    _Col("site", "int", False, ("socket",)),
    _Col("hbin", "int", False, ("hard_bin",)),
    _Col("sbin", "int", False, ("soft_bin",)),
    _Col("passed", "bool", False, ("pass", "result")),
    _Col("test_time", "time", False, ("tested_at", "time")),
    _Col("traced_lot_id", "str"),
    _Col("traced_wafer_id", "str"),
    _Col("traced_x", "int"),
    _Col("traced_y", "int"),
)

GENEALOGY_COLUMNS = (
    _Col("relation", "str", True),
    _Col("from_lot_id", "str", True, ("from_lot",)),
    _Col("from_wafer_id", "str", False, ("from_wafer", "wafer_id")),
    _Col("from_x", "int", False, ("x", "die_x")),
    _Col("from_y", "int", False, ("y", "die_y")),
    _Col("assembly_lot_id", "str", False, ("to_lot_id", "assembly_lot")),
    _Col("strip_id", "str", False, ("strip",)),
    _Col("row", "int", False, ("strip_row",)),
    _Col("col", "int", False, ("strip_col",)),
    _Col("unit_id", "str", False, ("unit",)),
    _Col("qty", "int", False, ("quantity",)),
    _Col("edge_id", "str"),
    _Col("source", "str"),
)

_KINDS = {
    "assembly_steps": STEP_COLUMNS,
    "units": UNIT_COLUMNS,
    "genealogy": GENEALOGY_COLUMNS,
}
_TRUE = {"1", "true", "t", "yes", "y", "p", "pass", "passed"}
_FALSE = {"0", "false", "f", "no", "n", "fail", "failed"}


def _source(source: str | PathLike | bytes, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    path = Path(source)
    try:
        return path.read_bytes(), name or str(path)
    except OSError as exc:
        raise AssemblyDataError(f"{path}: cannot read the file: {exc.strerror}") from None


def _raw_frame(data: bytes, name: str) -> pl.DataFrame:
    """Every column as strings (Parquet columns are cast to their text form)."""
    if data[:4] == b"PAR1":
        try:
            frame = pl.read_parquet(io.BytesIO(data))
        except Exception as exc:
            raise AssemblyDataError(f"{name}: unreadable Parquet file: {exc}") from None
        return frame.select(
            pl.col(c).dt.to_string("%Y-%m-%dT%H:%M:%S%.f%z").alias(c)
            if frame.schema[c].is_temporal()
            else pl.col(c).cast(pl.String)
            for c in frame.columns
        )
    text = data.decode("utf-8-sig", errors="strict") if data else ""
    if not text.strip():
        raise AssemblyDataError(f"{name}: the file is empty: no header row")
    try:
        return pl.read_csv(io.StringIO(text), infer_schema=False)
    except Exception as exc:
        raise AssemblyDataError(f"{name}: not a readable CSV file: {exc}") from None


def _header_key(column: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", column.strip().lower()).strip("_")


def _rename(frame: pl.DataFrame, spec: Sequence[_Col], name: str, table: str) -> pl.DataFrame:
    by_key = {}
    for col in frame.columns:
        key = _header_key(col)
        if key in by_key:
            raise AssemblyDataError(
                f"{name}: columns {by_key[key]!r} and {col!r} are the same column; keep one"
            )
        by_key[key] = col
    mapping: dict[str, str] = {}
    for col in spec:
        for key in (col.name, *col.aliases):
            if key in by_key and by_key[key] not in mapping:
                mapping[by_key[key]] = col.name
                break
    missing = [c.name for c in spec if c.required and c.name not in mapping.values()]
    if missing:
        raise AssemblyDataError(
            f"{name}: no column {missing[0]!r} (a {table} file needs "
            f"{', '.join(c.name for c in spec if c.required)}); found {', '.join(frame.columns)}"
        )
    return frame.select([pl.col(src).alias(dst) for src, dst in mapping.items()])


def _bad_row(frame: pl.DataFrame, mask: pl.Series) -> int:
    return int(np.flatnonzero(mask.to_numpy())[0])


def _where(name: str, row: int, column: str) -> str:
    return f"{name}: row {row + 1} (line {row + 2}), column {column!r}"


def _parse_time(value: str) -> datetime | None:
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _typed(frame: pl.DataFrame, spec: Sequence[_Col], name: str, table: str) -> pl.DataFrame:
    frame = _rename(frame, spec, name, table)
    frame = frame.with_columns(
        pl.when(pl.col(c).str.strip_chars() == "")
        .then(None)
        .otherwise(pl.col(c).str.strip_chars())
        .alias(c)
        for c in frame.columns
    )
    out = []
    for col in spec:
        if col.name not in frame.columns:
            continue
        s = frame.get_column(col.name)
        if col.required and s.null_count():
            row = _bad_row(frame, s.is_null())
            raise AssemblyDataError(
                f"{_where(name, row, col.name)}: empty; every row needs a value"
            )
        if col.kind == "str":
            out.append(s)
            continue
        if col.kind == "int":
            as_float = s.cast(pl.Float64, strict=False)
            fractional = (as_float != as_float.round(0)).fill_null(False)
            bad = (s.is_not_null() & as_float.is_null()) | fractional
            typed = as_float.cast(pl.Int64, strict=False)
            what = "is not an integer"
        elif col.kind == "float":
            typed = s.cast(pl.Float64, strict=False)
            bad = s.is_not_null() & typed.is_null()
            what = "is not a number"
        elif col.kind == "bool":
            mapping = {v: True for v in _TRUE} | {v: False for v in _FALSE}
            typed = s.str.to_lowercase().replace_strict(
                mapping, default=None, return_dtype=pl.Boolean
            )
            bad = s.is_not_null() & typed.is_null()
            what = "is not true/false (1/0, pass/fail, yes/no)"
        else:  # time
            lookup = {v: _parse_time(v) for v in s.drop_nulls().unique().to_list()}
            typed = pl.Series(
                col.name,
                [None if v is None else lookup[v] for v in s.to_list()],
                dtype=pl.Datetime("us", "UTC"),
            )
            bad = s.is_not_null() & typed.is_null()
            what = "is not an ISO 8601 date-time (2024-03-04T06:00:00Z)"
        if bad.any():
            row = _bad_row(frame, bad)
            raise AssemblyDataError(f"{_where(name, row, col.name)}: {s[row]!r} {what}")
        out.append(typed.alias(col.name))
    return pl.DataFrame(out)


def _duplicates(frame: pl.DataFrame, keys: Sequence[str], name: str, what: str) -> None:
    dup = frame.select(keys).is_duplicated()
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())
        first = frame.row(int(rows[0]), named=True)
        same = [
            int(r) for r in rows if all(frame.row(int(r), named=True)[k] == first[k] for k in keys)
        ]
        shown = ", ".join(f"{k}={first[k]!r}" for k in keys)
        raise AssemblyDataError(
            f"{name}: duplicate {what} ({shown}) in rows "
            f"{', '.join(str(r + 1) for r in same[:5])}; each must appear once"
        )


def _nonnegative(frame: pl.DataFrame, column: str, name: str) -> None:
    if column in frame.columns:
        bad = (frame.get_column(column) < 0).fill_null(False)
        if bad.any():
            row = _bad_row(frame, bad)
            raise AssemblyDataError(
                f"{_where(name, row, column)}: {frame[row, column]} is negative"
            )


def read_assembly_steps(source: str | PathLike | bytes, *, name: str | None = None) -> pl.DataFrame:
    """Read assembly step records into the canonical ``assembly_steps`` table (``run_id`` "").

    One row per assembly lot x step x reject code; a step without itemised rejects has an empty
    ``reject_code`` (stored as ""). Checks: quantities are integers >= 0, ``qty_out <= qty_in``,
    the itemised ``reject_qty`` of a step sum to at most ``qty_in - qty_out``, the step's own
    fields (quantities, sequence, equipment, material lot, shift, times) agree on all its reject
    rows, no lot x step x reject code twice. ``step_seq`` defaults to the order in which a lot's
    steps first appear. Raises :class:`AssemblyDataError` naming the file, row and column.
    """
    data, name = _source(source, name)
    frame = _typed(_raw_frame(data, name), STEP_COLUMNS, name, "assembly step")
    n = frame.height
    if n == 0:
        raise AssemblyDataError(f"{name}: the file has a header but no rows")
    frame = frame.with_row_index("_row")
    if "reject_code" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("reject_code"))
    if "reject_qty" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias("reject_qty"))
    frame = frame.with_columns(pl.col("reject_code").fill_null(""))
    bad = frame.filter((pl.col("reject_code") != "") & pl.col("reject_qty").is_null())
    if bad.height:
        raise AssemblyDataError(
            f"{_where(name, bad.item(0, '_row'), 'reject_qty')}: empty, but reject_code "
            f"{bad.item(0, 'reject_code')!r} needs its count"
        )
    frame = frame.with_columns(
        pl.when(pl.col("reject_code") == "")
        .then(pl.col("reject_qty").fill_null(0))
        .otherwise(pl.col("reject_qty"))
        .alias("reject_qty")
    )
    for column in ("qty_in", "qty_out", "reject_qty", "step_seq"):
        _nonnegative(frame, column, name)
    over = frame.get_column("qty_out") > frame.get_column("qty_in")
    if over.any():
        row = _bad_row(frame, over)
        raise AssemblyDataError(
            f"{_where(name, row, 'qty_out')}: qty_out {frame[row, 'qty_out']} exceeds qty_in "
            f"{frame[row, 'qty_in']}"
        )
    _duplicates(frame, ["assembly_lot_id", "step", "reject_code"], name, "lot x step x reject code")
    step_fields = [
        c
        for c in (
            "qty_in",
            "qty_out",
            "step_seq",
            "equipment",
            "material_lot",
            "shift",
            "start_time",
            "end_time",
        )
        if c in frame.columns
    ]
    for column in step_fields:
        varied = (
            frame.group_by("assembly_lot_id", "step")
            .agg(
                pl.col(column).n_unique().alias("n"),
                pl.col("_row").min().alias("first"),
                pl.col("_row").max().alias("last"),
            )
            .filter(pl.col("n") > 1)
        )
        if varied.height:
            r = varied.row(0, named=True)
            raise AssemblyDataError(
                f"{_where(name, r['last'], column)}: lot {r['assembly_lot_id']!r} step "
                f"{r['step']!r} has another {column} than in row {r['first'] + 1}; a step's own "
                "fields repeat unchanged on each of its reject rows"
            )
    sums = (
        frame.group_by("assembly_lot_id", "step")
        .agg(
            pl.col("reject_qty").sum().alias("rejects"),
            (pl.col("qty_in").first() - pl.col("qty_out").first()).alias("loss"),
            pl.col("_row").max().alias("last"),
        )
        .filter(pl.col("rejects") > pl.col("loss"))
    )
    if sums.height:
        r = sums.row(0, named=True)
        raise AssemblyDataError(
            f"{_where(name, r['last'], 'reject_qty')}: lot {r['assembly_lot_id']!r} step "
            f"{r['step']!r} itemises {r['rejects']} rejects but qty_in - qty_out is {r['loss']}"
        )
    if "step_seq" not in frame.columns:
        first = frame.group_by("assembly_lot_id", "step").agg(pl.col("_row").min().alias("_first"))
        first = first.with_columns(
            pl.col("_first")
            .rank("ordinal")
            .over("assembly_lot_id")
            .cast(pl.Int64)
            .alias("step_seq")
        )
        frame = frame.join(
            first.drop("_first"), on=["assembly_lot_id", "step"], how="left", maintain_order="left"
        )
    frame = frame.sort("_row").drop("_row").with_columns(pl.lit("").alias("run_id"))
    return schema.conform("assembly_steps", frame)


def read_units(
    source: str | PathLike | bytes,
    *,
    name: str | None = None,
    pass_hbins: Sequence[int] = (1,),
) -> pl.DataFrame:
    """Read final-test / burn-in unit results into the canonical ``units`` table (``run_id`` "").

    One row per unit x insertion. ``passed`` is read from its column, else ``hbin in
    pass_hbins`` (bin 1 by default). Checks: a unit appears once per insertion; a row has a
    ``passed`` value or an ``hbin``; strip ``row``/``col`` come together and are >= 0. Raises
    :class:`AssemblyDataError` naming the file, row and column (for duplicates: the unit id and
    both rows).
    """
    data, name = _source(source, name)
    frame = _typed(_raw_frame(data, name), UNIT_COLUMNS, name, "unit")
    if frame.height == 0:
        raise AssemblyDataError(f"{name}: the file has a header but no rows")
    _duplicates(frame, ["unit_id", "insertion"], name, "unit id x insertion")
    for column in ("row", "col", "site", "hbin", "sbin"):
        _nonnegative(frame, column, name)
    if ("row" in frame.columns) != ("col" in frame.columns):
        raise AssemblyDataError(f"{name}: strip positions need both 'row' and 'col' columns")
    if "row" in frame.columns:
        half = frame.get_column("row").is_null() != frame.get_column("col").is_null()
        if half.any():
            row = _bad_row(frame, half)
            raise AssemblyDataError(
                f"{_where(name, row, 'col')}: row and col must both be set or both empty"
            )
    if "passed" not in frame.columns:
        if "hbin" not in frame.columns:
            raise AssemblyDataError(
                f"{name}: no 'passed' and no 'hbin' column: the outcome of each unit is missing"
            )
        frame = frame.with_columns(
            pl.col("hbin").is_in([int(b) for b in pass_hbins]).alias("passed")
        )
    elif "hbin" in frame.columns:
        frame = frame.with_columns(
            pl.col("passed").fill_null(pl.col("hbin").is_in([int(b) for b in pass_hbins]))
        )
    missing = frame.get_column("passed").is_null()
    if missing.any():
        row = _bad_row(frame, missing)
        raise AssemblyDataError(
            f"{_where(name, row, 'passed')}: empty and no hbin to derive it from"
        )
    frame = frame.with_columns(pl.lit("").alias("run_id"))
    return schema.conform("units", frame)


def read_genealogy(source: str | PathLike | bytes, *, name: str | None = None) -> pl.DataFrame:
    """Read genealogy edges into the canonical ``genealogy`` table (``run_id`` "").

    ``relation`` is ``transfer`` (a wafer die placed at a strip position / into a unit: needs
    ``from_wafer_id``, ``from_x``, ``from_y`` and a destination, ``strip_id`` + ``row`` + ``col``
    or ``unit_id``), ``merge`` or ``split`` (lot to lot: ``from_lot_id`` -> ``assembly_lot_id``
    with ``qty``). ``edge_id`` is made from the fields when absent. Checks: known relation, the
    fields each relation needs, a die transferred once, a destination receiving one die.
    """
    from backend_fab.io.maps.lake import edge_ids

    data, name = _source(source, name)
    frame = _typed(_raw_frame(data, name), GENEALOGY_COLUMNS, name, "genealogy")
    if frame.height == 0:
        raise AssemblyDataError(f"{name}: the file has a header but no rows")
    for column in (
        "from_wafer_id",
        "from_x",
        "from_y",
        "assembly_lot_id",
        "strip_id",
        "row",
        "col",
        "unit_id",
        "qty",
        "edge_id",
        "source",
    ):
        if column not in frame.columns:
            dtype = pl.Int64 if column in ("from_x", "from_y", "row", "col", "qty") else pl.String
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(column))
    frame = frame.with_columns(pl.col("relation").str.to_lowercase())
    bad = ~frame.get_column("relation").is_in(list(RELATIONS))
    if bad.any():
        row = _bad_row(frame, bad)
        raise AssemblyDataError(
            f"{_where(name, row, 'relation')}: {frame[row, 'relation']!r} is not one of {', '.join(RELATIONS)}"
        )
    _nonnegative(frame, "qty", name)
    is_t = pl.col("relation") == "transfer"
    needs = [
        (is_t, "from_wafer_id", "a transfer edge needs the source wafer"),
        (is_t, "from_x", "a transfer edge needs the die x"),
        (is_t, "from_y", "a transfer edge needs the die y"),
        (~is_t, "assembly_lot_id", "a merge/split edge needs the destination lot"),
    ]
    for cond, column, why in needs:
        bad = frame.select(cond & pl.col(column).is_null()).to_series()
        if bad.any():
            row = _bad_row(frame, bad)
            raise AssemblyDataError(f"{_where(name, row, column)}: empty; {why}")
    position = (
        pl.col("strip_id").is_not_null() & pl.col("row").is_not_null() & pl.col("col").is_not_null()
    )
    bad = frame.select(is_t & ~position & pl.col("unit_id").is_null()).to_series()
    if bad.any():
        row = _bad_row(frame, bad)
        raise AssemblyDataError(
            f"{_where(name, row, 'unit_id')}: a transfer edge needs a destination: strip_id, row "
            "and col, or unit_id"
        )
    transfers = frame.with_row_index("_row").filter(is_t)
    _duplicates(
        transfers,
        ["from_lot_id", "from_wafer_id", "from_x", "from_y"],
        name,
        "die transferred twice",
    )
    placed = transfers.filter(pl.col("strip_id").is_not_null())
    _duplicates(placed, ["strip_id", "row", "col"], name, "strip position receiving two die")
    _duplicates(
        transfers.filter(pl.col("unit_id").is_not_null()),
        ["unit_id"],
        name,
        "unit receiving two die",
    )
    frame = frame.with_columns(
        pl.col("qty").fill_null(pl.when(is_t).then(1).otherwise(None)),
        pl.col("source").fill_null(pl.lit(f"file {Path(name).name}")),
    )
    missing_qty = frame.get_column("qty").is_null()
    if missing_qty.any():
        row = _bad_row(frame, missing_qty)
        raise AssemblyDataError(
            f"{_where(name, row, 'qty')}: empty; a merge/split edge needs the quantity moved"
        )
    frame = frame.with_columns(
        pl.col("edge_id").fill_null(edge_ids(frame)),
        pl.lit("").alias("run_id"),
    )
    dup = frame.get_column("edge_id").is_duplicated()
    if dup.any():
        row = _bad_row(frame, dup)
        raise AssemblyDataError(
            f"{_where(name, row, 'edge_id')}: edge {frame[row, 'edge_id']!r} appears twice"
        )
    return schema.conform("genealogy", frame)


# --- ingest ------------------------------------------------------------------------------------


def _head_columns(path: Path, head: bytes) -> set[str] | None:
    """Normalised column names of a CSV header line or a Parquet file's schema."""
    if head[:4] == b"PAR1":
        try:
            import pyarrow.parquet as pq

            return {_header_key(c) for c in pq.read_schema(path).names}
        except Exception:
            return None
    line = head.split(b"\n", 1)[0].lstrip(b"\xef\xbb\xbf").strip()
    if b"," not in line or b"\0" in line:
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return {_header_key(c.strip().strip('"')) for c in text.split(",")}


def _has(columns: set[str] | None, spec: Sequence[_Col]) -> bool:
    if not columns:
        return False
    return all(any(k in columns for k in (c.name, *c.aliases)) for c in spec if c.required)


def detect_assembly_steps(path: Path, head: bytes) -> bool:
    """CSV/Parquet with the required assembly-step columns (lot, step, qty_in, qty_out)."""
    return _has(_head_columns(path, head), STEP_COLUMNS)


def detect_units(path: Path, head: bytes) -> bool:
    """CSV/Parquet with ``unit_id`` and ``insertion`` (and not an assembly-step file)."""
    cols = _head_columns(path, head)
    return _has(cols, UNIT_COLUMNS) and not _has(cols, STEP_COLUMNS)


def detect_genealogy(path: Path, head: bytes) -> bool:
    """CSV/Parquet with ``relation`` and ``from_lot_id``."""
    return _has(_head_columns(path, head), GENEALOGY_COLUMNS)


def _runs_row(**values) -> pl.DataFrame:
    return schema.conform(
        "runs", pl.DataFrame({"run_id": [""], **{k: [v] for k, v in values.items()}})
    )


def _single(frame: pl.DataFrame, column: str) -> str | None:
    values = frame.get_column(column).drop_nulls().unique()
    return values[0] if values.len() == 1 else None


def load_assembly_steps(path: Path, content: bytes) -> dict[str, pl.DataFrame]:
    steps = read_assembly_steps(content, name=str(path))
    times = steps.select(pl.col("start_time").min(), pl.col("end_time").max()).row(0)
    return {
        "runs": _runs_row(
            lot_id=_single(steps, "assembly_lot_id"),
            insertion="ASSEMBLY",
            tester_type="assembly steps",
            start_time=times[0],
            finish_time=times[1],
            n_records=steps.height,
            status="ok",
        ),
        "assembly_steps": steps,
    }


def load_units(path: Path, content: bytes) -> dict[str, pl.DataFrame]:
    units = read_units(content, name=str(path))
    times = units.select(
        pl.col("test_time").min().alias("first"), pl.col("test_time").max().alias("last")
    ).row(0)
    return {
        "runs": _runs_row(
            lot_id=_single(units, "ft_lot_id"),
            insertion=_single(units, "insertion") or "FT",
            tester_type="units",
            start_time=times[0],
            finish_time=times[1],
            n_records=units.height,
            n_parts=units.get_column("unit_id").n_unique(),
            status="ok",
        ),
        "units": units,
    }


def load_genealogy(path: Path, content: bytes) -> dict[str, pl.DataFrame]:
    edges = read_genealogy(content, name=str(path))
    return {
        "runs": _runs_row(
            lot_id=_single(edges, "assembly_lot_id"),
            insertion="GENEALOGY",
            tester_type="genealogy edges",
            n_records=edges.height,
            status="ok",
        ),
        "genealogy": edges,
    }


def _register_ingesters() -> None:
    from backend_fab.ingest import register_ingester

    for kind in ("assembly_steps", "units", "genealogy"):
        register_ingester(
            f"backend_fab.assembly:detect_{kind}",
            f"backend_fab.assembly:load_{kind}",
            f"{kind.replace('_', ' ')} (CSV/Parquet)",
        )


_register_ingesters()


# --- statistics --------------------------------------------------------------------------------


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (step-up, monotone, capped at 1)."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def _two_by_two(k: int, n: int, k_rest: int, n_rest: int) -> tuple[float, str]:
    """Two-sided p-value of rate k/n against k_rest/n_rest."""
    from scipy import stats

    table = np.array([[k, n - k], [k_rest, n_rest - k_rest]], dtype=np.int64)
    if n == 0 or n_rest == 0 or table.sum(axis=0).min() == 0:
        return 1.0, "none"
    expected = table.sum(axis=1)[:, None] * table.sum(axis=0)[None, :] / table.sum()
    if expected.min() < 5:
        return float(stats.fisher_exact(table, alternative="two-sided").pvalue), "fisher"
    p = stats.chi2_contingency(table, correction=False).pvalue
    return float(p), "chi2"


def enrichment(
    counts: pl.DataFrame | pl.LazyFrame,
    *,
    level: str | Sequence[str],
    within: Sequence[str] = (),
    n: str = "n",
    k: str = "k",
    alpha: float = 0.05,
) -> pl.DataFrame:
    """Test each level's rate ``k / n`` against the rest of its ``within`` group.

    ``counts`` has one row per (``within``, ``level``) with trial counts ``n`` and event counts
    ``k``. Returns those rows with ``rate``, ``rest_rate``, ``rate_ratio`` (rate / rest_rate),
    ``p_value`` (two-sided: Fisher's exact test where an expected cell count is below 5, else
    Pearson's chi-square on the 2 x 2 table, no continuity correction), ``test``, ``q_value``
    (Benjamini-Hochberg over every row) and ``significant`` (``q_value < alpha`` and the level's
    rate above the rest's), sorted by ``p_value``.
    """
    frame = counts.collect() if isinstance(counts, pl.LazyFrame) else counts
    levels = [level] if isinstance(level, str) else list(level)
    within = list(within)
    frame = frame.with_columns(pl.col(n).cast(pl.Int64), pl.col(k).cast(pl.Int64))
    if within:
        frame = frame.with_columns(
            (pl.col(n).sum().over(within) - pl.col(n)).alias("_n_rest"),
            (pl.col(k).sum().over(within) - pl.col(k)).alias("_k_rest"),
        )
    else:
        frame = frame.with_columns(
            (pl.col(n).sum() - pl.col(n)).alias("_n_rest"),
            (pl.col(k).sum() - pl.col(k)).alias("_k_rest"),
        )
    tests = [
        _two_by_two(a, b, c, d)
        for a, b, c, d in frame.select(k, n, "_k_rest", "_n_rest").iter_rows()
    ]
    p = np.array([t[0] for t in tests], dtype=np.float64)
    q = _bh(p)
    out = frame.with_columns(
        (pl.col(k) / pl.col(n)).alias("rate"),
        (pl.col("_k_rest") / pl.col("_n_rest")).alias("rest_rate"),
        pl.Series("p_value", p, dtype=pl.Float64),
        pl.Series("test", [t[1] for t in tests], dtype=pl.String),
        pl.Series("q_value", q, dtype=pl.Float64),
    ).with_columns(
        (pl.col("rate") / pl.col("rest_rate")).alias("rate_ratio"),
        ((pl.col("q_value") < alpha) & (pl.col("rate") > pl.col("rest_rate"))).alias("significant"),
    )
    keep = [
        *within,
        *levels,
        n,
        k,
        "rate",
        "rest_rate",
        "rate_ratio",
        "p_value",
        "q_value",
        "test",
        "significant",
    ]
    extra = [c for c in frame.columns if c not in keep and not c.startswith("_")]
    return out.select(*keep, *extra).sort("p_value", *within, *levels)


# --- assembly yield ----------------------------------------------------------------------------


def _per_step(steps: pl.LazyFrame) -> pl.LazyFrame:
    """One row per assembly lot x step (the reject rows folded)."""
    return steps.group_by("assembly_lot_id", "step").agg(
        pl.col("step_seq").first(),
        pl.col("qty_in").first(),
        pl.col("qty_out").first(),
        pl.col("reject_qty").sum().alias("itemised"),
        pl.col("equipment").first(),
        pl.col("material_lot").first(),
        pl.col("shift").first(),
        pl.col("start_time").first(),
        pl.col("end_time").first(),
    )


def step_yields(steps: pl.LazyFrame, by: Sequence[str] = ("assembly_lot_id",)) -> pl.LazyFrame:
    """Step yield ``Y_s = qty_out / qty_in`` per ``by`` group and step (DOMAIN §4.3).

    ``steps`` is the ``assembly_steps`` table. ``by`` may name lot-step fields
    (``assembly_lot_id``, ``equipment``, ``material_lot``, ``shift``); ``by=()`` pools all lots.
    Columns: ``by``, ``step``, ``step_seq`` (smallest), ``n_lots``, ``qty_in``, ``qty_out``,
    ``rejects`` (``qty_in - qty_out``), ``itemised`` (sum of ``reject_qty``), ``step_yield``.
    """
    by = list(by)
    return (
        _per_step(steps.lazy())
        .group_by(*by, "step")
        .agg(
            pl.col("step_seq").min(),
            pl.col("assembly_lot_id").n_unique().cast(pl.Int64).alias("n_lots"),
            pl.col("qty_in").sum(),
            pl.col("qty_out").sum(),
            pl.col("itemised").sum(),
        )
        .with_columns(
            (pl.col("qty_in") - pl.col("qty_out")).alias("rejects"),
            (pl.col("qty_out") / pl.col("qty_in")).alias("step_yield"),
        )
        .select(
            *by,
            "step",
            "step_seq",
            "n_lots",
            "qty_in",
            "qty_out",
            "rejects",
            "itemised",
            "step_yield",
        )
        .sort(*by, "step_seq", "step")
    )


def rolled_yield(steps: pl.LazyFrame, by: Sequence[str] = ("assembly_lot_id",)) -> pl.LazyFrame:
    """Rolled throughput yield ``RTY = prod_s Y_s`` per ``by`` group (DOMAIN §4.3).

    Columns: ``by``, ``n_steps``, ``qty_in`` (into the first step), ``qty_out`` (out of the
    last step), ``rolled_yield`` (product of the step yields), ``worst_step`` and its
    ``worst_step_yield``.
    """
    by = list(by)
    ys = step_yields(steps, by)
    agg = [
        pl.len().cast(pl.Int64).alias("n_steps"),
        pl.col("qty_in").sort_by("step_seq").first().alias("qty_in"),
        pl.col("qty_out").sort_by("step_seq").last().alias("qty_out"),
        pl.col("step_yield").product().alias("rolled_yield"),
        pl.col("step").sort_by("step_yield").first().alias("worst_step"),
        pl.col("step_yield").min().alias("worst_step_yield"),
    ]
    if by:
        return ys.group_by(*by).agg(agg).sort(*by)
    return ys.select(agg)


def reject_pareto(steps: pl.LazyFrame, by: Sequence[str] = ("step",)) -> pl.LazyFrame:
    """Reject-code Pareto per ``by`` group (default: per step), largest first.

    Loss that the records do not itemise appears as code ``"(not itemised)"``. Columns: ``by``,
    ``reject_code``, ``reject_qty``, ``ppm`` (of the group's ``qty_in``), ``share`` (of the
    group's rejects), ``cumulative_share``, ``rank`` (1 = largest).
    """
    by = list(by)
    steps = steps.lazy()
    lot_step = _per_step(steps)
    base = lot_step.group_by(*by).agg(pl.col("qty_in").sum().alias("_qty_in"))
    coded = (
        steps.filter(pl.col("reject_code") != "")
        .group_by(*by, "reject_code")
        .agg(pl.col("reject_qty").sum())
    )
    unitemised = (
        lot_step.with_columns(
            (pl.col("qty_in") - pl.col("qty_out") - pl.col("itemised")).alias("reject_qty")
        )
        .group_by(*by)
        .agg(pl.col("reject_qty").sum())
        .filter(pl.col("reject_qty") > 0)
        .with_columns(pl.lit("(not itemised)").alias("reject_code"))
        .select(*by, "reject_code", "reject_qty")
    )
    allrej = (
        pl.concat([coded.select(*by, "reject_code", "reject_qty"), unitemised]).join(
            base, on=by, how="left", maintain_order="left"
        )
        if by
        else pl.concat(
            [
                coded.select("reject_code", "reject_qty"),
                unitemised.select("reject_code", "reject_qty"),
            ]
        ).join(base, how="cross")
    )
    over = by or None
    out = allrej.sort(
        [*by, "reject_qty", "reject_code"], descending=[*([False] * len(by)), True, False]
    )
    share = pl.col("reject_qty") / pl.col("reject_qty").sum()
    cum = pl.col("reject_qty").cum_sum() / pl.col("reject_qty").sum()
    rank = pl.int_range(1, pl.len() + 1)
    if over:
        share, cum, rank = share.over(over), cum.over(over), rank.over(over)
    return out.with_columns(
        (pl.col("reject_qty") / pl.col("_qty_in") * 1e6).alias("ppm"),
        share.alias("share"),
        cum.alias("cumulative_share"),
        rank.cast(pl.Int64).alias("rank"),
    ).select(*by, "reject_code", "reject_qty", "ppm", "share", "cumulative_share", "rank")


def commonality(
    steps: pl.DataFrame | pl.LazyFrame,
    factor: str = "equipment",
    *,
    step: str | Sequence[str] | None = None,
    alpha: float = 0.05,
) -> pl.DataFrame:
    """Is a step's reject rate higher on one equipment / material lot / shift? (DOMAIN §4.3)

    For every step (or those in ``step``) and every level of ``factor``, the units rejected at
    the step (``qty_in - qty_out``) out of those that entered it, against the rest of the step;
    tests and Benjamini-Hochberg q-values as :func:`enrichment`. Columns: ``step``,
    ``factor``, ``level``, ``n_lots``, ``n`` (units in), ``k`` (rejects), ``rate``,
    ``rest_rate``, ``rate_ratio``, ``p_value``, ``q_value``, ``test``, ``significant``.
    """
    if factor not in ("equipment", "material_lot", "shift"):
        raise ValueError(f"factor must be 'equipment', 'material_lot' or 'shift', got {factor!r}")
    lot_step = _per_step(steps.lazy())
    if step is not None:
        lot_step = lot_step.filter(
            pl.col("step").is_in([step] if isinstance(step, str) else list(step))
        )
    counts = (
        lot_step.filter(pl.col(factor).is_not_null())
        .group_by("step", pl.col(factor).alias("level"))
        .agg(
            pl.col("assembly_lot_id").n_unique().cast(pl.Int64).alias("n_lots"),
            pl.col("qty_in").sum().alias("n"),
            (pl.col("qty_in") - pl.col("qty_out")).sum().alias("k"),
        )
        .with_columns(pl.lit(factor).alias("factor"))
        .collect()
    )
    counts = counts.filter(pl.col("level").n_unique().over("step") > 1)
    result = enrichment(counts, level=["factor", "level"], within=["step"], alpha=alpha)
    return result.select(
        "step",
        "factor",
        "level",
        "n_lots",
        "n",
        "k",
        "rate",
        "rest_rate",
        "rate_ratio",
        "p_value",
        "q_value",
        "test",
        "significant",
    )


def assembly_outcomes(
    genealogy: pl.LazyFrame,
    *,
    units: pl.LazyFrame | None = None,
    strip_maps: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Assembly pass / reject of every placed unit, with its strip position and source die.

    One row per transfer edge with a strip position (``genealogy``). A unit is rejected in
    assembly (an X-out) when the strip map marks its position ``Fail`` (``strip_maps``, the
    E142 BinCodeMap of the strip), or, without strip maps, when it never reached final test
    (no row in ``units``). Columns: ``unit_id``, ``insertion`` (``"ASSEMBLY"``),
    ``assembly_lot_id``, ``strip_id``, ``row``, ``col``, ``traced_lot_id``,
    ``traced_wafer_id``, ``traced_x``, ``traced_y``, ``passed``: the input of
    :func:`strip_position_effects` and :func:`wafer_origin_effects` for assembly yield.
    """
    if units is None and strip_maps is None:
        raise ValueError(
            "assembly_outcomes needs units or strip_maps to know which units were rejected"
        )
    placed = genealogy.lazy().filter(
        (pl.col("relation") == "transfer")
        & pl.col("strip_id").is_not_null()
        & pl.col("row").is_not_null()
    )
    out = placed.select(
        pl.coalesce(
            pl.col("unit_id"),
            pl.concat_str(
                pl.col("strip_id"),
                pl.col("row").cast(pl.String),
                pl.col("col").cast(pl.String),
                separator=":",
            ),
        ).alias("unit_id"),
        pl.lit("ASSEMBLY").alias("insertion"),
        "assembly_lot_id",
        "strip_id",
        pl.col("row").cast(pl.Int32),
        pl.col("col").cast(pl.Int32),
        pl.col("from_lot_id").alias("traced_lot_id"),
        pl.col("from_wafer_id").alias("traced_wafer_id"),
        pl.col("from_x").cast(pl.Int32).alias("traced_x"),
        pl.col("from_y").cast(pl.Int32).alias("traced_y"),
    )
    if strip_maps is not None:
        xouts = (
            strip_maps.lazy()
            .filter(pl.col("bin_quality") == "Fail")
            .select(
                "strip_id",
                pl.col("row").cast(pl.Int32),
                pl.col("col").cast(pl.Int32),
                pl.lit(True).alias("_x"),
            )
            .unique()
        )
        return (
            out.join(xouts, on=["strip_id", "row", "col"], how="left", maintain_order="left")
            .with_columns(pl.col("_x").is_null().alias("passed"))
            .drop("_x")
        )
    tested = units.lazy().select("unit_id").unique().with_columns(pl.lit(True).alias("_t"))
    return (
        out.join(tested, on="unit_id", how="left", maintain_order="left")
        .with_columns(pl.col("_t").fill_null(False).alias("passed"))
        .drop("_t")
    )


def _unit_outcomes(
    units: pl.DataFrame | pl.LazyFrame, insertions: Sequence[str] | None
) -> pl.LazyFrame:
    lf = units.lazy()
    if insertions is not None:
        lf = lf.filter(pl.col("insertion").is_in(list(insertions)))
    return lf


def strip_position_effects(
    units: pl.DataFrame | pl.LazyFrame,
    *,
    insertions: Sequence[str] | None = None,
    level: str = "position",
    alpha: float = 0.05,
) -> pl.DataFrame:
    """Fail rate by strip position (DOMAIN §4.3: edge units of strips), each against the rest.

    A unit fails when it failed any of ``insertions`` (default: every insertion present).
    ``level="position"`` tests each (``row``, ``col``); ``"row"`` / ``"col"`` pool the strip's
    rows / columns; ``"class"`` pools positions into ``corner``, ``edge`` and ``interior`` of the
    strip (bounds: the largest row and col seen). Returns :func:`enrichment` columns with ``n``
    units and ``k`` fails.
    """
    levels = {
        "position": ["row", "col", "position_class"],
        "row": ["row"],
        "col": ["col"],
        "class": ["position_class"],
    }
    if level not in levels:
        raise ValueError(f"level must be one of {', '.join(levels)}, got {level!r}")
    per_unit = (
        _unit_outcomes(units, insertions)
        .filter(pl.col("row").is_not_null() & pl.col("col").is_not_null())
        .group_by("unit_id")
        .agg(
            pl.col("row").first(), pl.col("col").first(), (~pl.col("passed")).any().alias("failed")
        )
        .collect()
    )
    if per_unit.height == 0:
        raise ValueError("no unit has a strip position (row, col): nothing to compare")
    max_row = per_unit.get_column("row").max()
    max_col = per_unit.get_column("col").max()
    on_row_edge = (pl.col("row") == 0) | (pl.col("row") == max_row)
    on_col_edge = (pl.col("col") == 0) | (pl.col("col") == max_col)
    per_unit = per_unit.with_columns(
        pl.when(on_row_edge & on_col_edge)
        .then(pl.lit("corner"))
        .when(on_row_edge | on_col_edge)
        .then(pl.lit("edge"))
        .otherwise(pl.lit("interior"))
        .alias("position_class")
    )
    keys = levels[level]
    counts = per_unit.group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("n"), pl.col("failed").sum().cast(pl.Int64).alias("k")
    )
    return enrichment(counts, level=keys, alpha=alpha)


def wafer_origin_effects(
    units: pl.DataFrame | pl.LazyFrame,
    *,
    insertions: Sequence[str] | None = None,
    by: Sequence[str] = ("traced_lot_id", "traced_wafer_id"),
    alpha: float = 0.05,
) -> pl.DataFrame:
    """Fail rate by wafer of origin, each wafer against the rest (DOMAIN §4.3, §4.5).

    ``units`` carries the traced origin (``traced_lot_id``, ``traced_wafer_id``: from the units
    table or :func:`backend_fab.genealogy.trace`) and ``passed``; a unit fails when it failed any
    of ``insertions``. Works as well for assembly outcomes (strip-map positions joined to their
    source die, ``passed`` = not an X-out). Units without a traced origin are left out.
    Returns :func:`enrichment` columns with ``n`` units and ``k`` fails.
    """
    by = list(by)
    per_unit = (
        _unit_outcomes(units, insertions)
        .filter(pl.all_horizontal(pl.col(c).is_not_null() for c in by))
        .group_by("unit_id")
        .agg(*[pl.col(c).first() for c in by], (~pl.col("passed")).any().alias("failed"))
        .group_by(by)
        .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("failed").sum().cast(pl.Int64).alias("k"))
        .collect()
    )
    if per_unit.height == 0:
        raise ValueError(f"no unit has a traced origin ({', '.join(by)}): trace the units first")
    return enrichment(per_unit, level=by, alpha=alpha)
