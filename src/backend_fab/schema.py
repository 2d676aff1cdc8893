"""Canonical table schemas: one column vocabulary for every table backend-fab reads or writes.

Each table is a pyarrow schema plus its key columns and partition columns. ``validate`` checks a
polars frame against a table at the edges (io, lake) and raises :class:`SchemaError` naming the
table, the column and what is wrong. ``docs/data-model.md`` describes every column, its unit and,
for tester data, the STDF record and field it comes from.

Conventions:
- snake_case; ``lot_id``, ``wafer_id``, ``x``, ``y``, ``hbin``, ``sbin``, ``site``, ``test_num``;
- times are UTC ``timestamp[us]``; STDF U4 times are converted from seconds since the epoch;
- "no value" is null, never a magic number (STDF X/Y -32768 and bin 65535 become null);
- every derived row carries ``recipe_hash`` and the source ``run_id`` it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import polars as pl
import pyarrow as pa

from backend_fab.errors import SchemaError

#: Bumped whenever a table changes incompatibly; the lake records it and refuses other versions.
SCHEMA_VERSION = 1

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Table:
    """A canonical table: its schema, key columns (unique, non-null) and partition columns."""

    name: str
    schema: pa.Schema
    keys: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    #: True for tables written as part of a run (committed by the run's ``runs`` row).
    run_scoped: bool = False
    description: str = ""
    #: Columns that may be null even though they look like identifiers.
    nullable: frozenset[str] = field(default_factory=frozenset)

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    @cached_property
    def polars_schema(self) -> dict[str, pl.DataType]:
        # from_batches, not Schema.empty_table(): the latter imports pandas (over a second)
        return dict(self.empty().schema)

    def empty(self) -> pl.DataFrame:
        """An empty polars frame with exactly this table's columns and types."""
        return pl.from_arrow(pa.Table.from_batches([], schema=self.schema))


def _t(name, fields, keys, partition_by=(), run_scoped=False, description=""):
    return Table(
        name=name,
        schema=pa.schema(fields),
        keys=tuple(keys),
        partition_by=tuple(partition_by),
        run_scoped=run_scoped,
        description=description,
    )


RUNS = _t(
    "runs",
    [
        ("run_id", pa.string()),
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("sublot_id", pa.string()),
        ("insertion", pa.string()),
        ("temperature", pa.float64()),
        ("tester", pa.string()),
        ("tester_type", pa.string()),
        ("node", pa.string()),
        ("program", pa.string()),
        ("program_rev", pa.string()),
        ("mode_code", pa.string()),
        ("retest_code", pa.string()),
        ("facility", pa.string()),
        ("start_time", TS),
        ("finish_time", TS),
        ("stdf_version", pa.int16()),
        ("byte_order", pa.string()),
        ("n_records", pa.int64()),
        ("n_parts", pa.int64()),
        ("status", pa.string()),
        ("status_reason", pa.string()),
        ("summary_check", pa.string()),
        ("source_path", pa.string()),
        ("source_size", pa.int64()),
        ("ingested_at", TS),
    ],
    keys=["run_id"],
    description="One test run: one STDF file, one insertion of a lot or sublot.",
)

WAFERS = _t(
    "wafers",
    [
        ("run_id", pa.string()),
        ("wafer_id", pa.string()),
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("head", pa.int16()),
        ("start_time", TS),
        ("finish_time", TS),
        ("part_count", pa.int64()),
        ("good_count", pa.int64()),
        ("retest_count", pa.int64()),
        ("abort_count", pa.int64()),
        ("wafer_size", pa.float64()),
        ("die_height", pa.float64()),
        ("die_width", pa.float64()),
        ("wafer_units", pa.int16()),
        ("wafer_flat", pa.string()),
        ("center_x", pa.int32()),
        ("center_y", pa.int32()),
        ("pos_x", pa.string()),
        ("pos_y", pa.string()),
    ],
    keys=["run_id", "wafer_id"],
    run_scoped=True,
    description="One wafer of a run (WIR/WRR, layout from WCR).",
)

DIE = _t(
    "die",
    [
        ("run_id", pa.string()),
        ("part_seq", pa.int64()),
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("wafer_id", pa.string()),
        ("head", pa.int16()),
        ("site", pa.int16()),
        ("x", pa.int32()),
        ("y", pa.int32()),
        ("hbin", pa.int32()),
        ("sbin", pa.int32()),
        ("passed", pa.bool_()),
        ("part_flags", pa.int16()),
        ("num_tests", pa.int32()),
        ("test_time_ms", pa.float64()),
        ("part_id", pa.string()),
        ("part_txt", pa.string()),
        ("retest_index", pa.int16()),
        ("final", pa.bool_()),
        ("ecid", pa.string()),
    ],
    keys=["run_id", "part_seq"],
    partition_by=["product", "lot_id"],
    run_scoped=True,
    description="One tested part instance (PIR..PRR). Retests are kept; `final` marks the survivor.",
)

TESTS = _t(
    "tests",
    [
        ("run_id", pa.string()),
        ("test_num", pa.int64()),
        ("kind", pa.string()),
        ("test_name", pa.string()),
        ("lo_limit", pa.float64()),
        ("hi_limit", pa.float64()),
        ("lo_spec", pa.float64()),
        ("hi_spec", pa.float64()),
        ("units", pa.string()),
        ("res_scale", pa.int16()),
        ("llm_scale", pa.int16()),
        ("hlm_scale", pa.int16()),
        ("exec_count", pa.int64()),
        ("fail_count", pa.int64()),
    ],
    keys=["run_id", "test_num", "kind"],
    run_scoped=True,
    description="One test of a run with the defaults carried from its first PTR/MPR (and TSR).",
)

RESULTS = _t(
    "results",
    [
        ("run_id", pa.string()),
        ("part_seq", pa.int64()),
        ("test_num", pa.int64()),
        ("pin", pa.int32()),
        ("kind", pa.string()),
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("value", pa.float64()),
        ("test_flags", pa.int16()),
        ("parm_flags", pa.int16()),
        ("passed", pa.bool_()),
    ],
    keys=["run_id", "part_seq", "test_num", "pin"],
    partition_by=["product", "lot_id"],
    run_scoped=True,
    description="One measured value: PTR (pin -1), MPR (one row per pin), FTR (value null).",
)

BINS = _t(
    "bins",
    [
        ("run_id", pa.string()),
        ("kind", pa.string()),
        ("bin", pa.int32()),
        ("head", pa.int16()),
        ("site", pa.int16()),
        ("count", pa.int64()),
        ("pass_fail", pa.string()),
        ("name", pa.string()),
    ],
    keys=["run_id", "kind", "bin", "head", "site"],
    run_scoped=True,
    description="HBR/SBR summary counts per bin (head 255 = all heads; site 255 = all sites).",
)

LAYOUTS = _t(
    "layouts",
    [
        ("product", pa.string()),
        ("wafer_size_mm", pa.float64()),
        ("die_width_mm", pa.float64()),
        ("die_height_mm", pa.float64()),
        ("edge_exclusion_mm", pa.float64()),
        ("notch", pa.string()),
        ("pos_x", pa.string()),
        ("pos_y", pa.string()),
        ("center_x", pa.float64()),
        ("center_y", pa.float64()),
        ("reticle_cols", pa.int32()),
        ("reticle_rows", pa.int32()),
        ("reticle_offset_x", pa.int32()),
        ("reticle_offset_y", pa.int32()),
        ("gross_die", pa.int64()),
        ("pass_hbins", pa.string()),
    ],
    keys=["product"],
    description="Wafer layout of a product: geometry, orientation, reticle, gross die, pass bins.",
)

GENEALOGY = _t(
    "genealogy",
    [
        ("edge_id", pa.string()),
        ("relation", pa.string()),
        ("from_lot_id", pa.string()),
        ("from_wafer_id", pa.string()),
        ("from_x", pa.int32()),
        ("from_y", pa.int32()),
        ("assembly_lot_id", pa.string()),
        ("strip_id", pa.string()),
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("unit_id", pa.string()),
        ("qty", pa.int64()),
        ("source", pa.string()),
        ("run_id", pa.string()),
    ],
    keys=["edge_id"],
    run_scoped=True,
    description="Traceability edges: wafer die -> assembly lot / strip position -> unit.",
)

ASSEMBLY_STEPS = _t(
    "assembly_steps",
    [
        ("assembly_lot_id", pa.string()),
        ("step", pa.string()),
        ("step_seq", pa.int32()),
        ("qty_in", pa.int64()),
        ("qty_out", pa.int64()),
        ("reject_code", pa.string()),
        ("reject_qty", pa.int64()),
        ("equipment", pa.string()),
        ("material_lot", pa.string()),
        ("shift", pa.string()),
        ("start_time", TS),
        ("end_time", TS),
        ("run_id", pa.string()),
    ],
    keys=["assembly_lot_id", "step", "reject_code"],
    run_scoped=True,
    description="One assembly step of an assembly lot, one row per reject code ('' = no reject).",
)

UNITS = _t(
    "units",
    [
        ("unit_id", pa.string()),
        ("insertion", pa.string()),
        ("ecid", pa.string()),
        ("ft_lot_id", pa.string()),
        ("assembly_lot_id", pa.string()),
        ("strip_id", pa.string()),
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("site", pa.int16()),
        ("hbin", pa.int32()),
        ("sbin", pa.int32()),
        ("passed", pa.bool_()),
        ("test_time", TS),
        ("traced_lot_id", pa.string()),
        ("traced_wafer_id", pa.string()),
        ("traced_x", pa.int32()),
        ("traced_y", pa.int32()),
        ("run_id", pa.string()),
    ],
    keys=["unit_id", "insertion"],
    run_scoped=True,
    description="One final-test or burn-in result of a packaged unit.",
)

DISPOSITIONS = _t(
    "dispositions",
    [
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("wafer_id", pa.string()),
        ("x", pa.int32()),
        ("y", pa.int32()),
        ("run_id", pa.string()),
        ("part_seq", pa.int64()),
        ("rule", pa.string()),
        ("reason_bits", pa.int32()),
        ("original_hbin", pa.int32()),
        ("original_sbin", pa.int32()),
        ("new_bin", pa.int32()),
        ("final_rule", pa.bool_()),
        ("test_num", pa.int64()),
        ("value", pa.float64()),
        ("lo_limit", pa.float64()),
        ("hi_limit", pa.float64()),
        ("parameters", pa.string()),
        ("recipe_hash", pa.string()),
    ],
    keys=["lot_id", "recipe_hash", "run_id", "part_seq", "rule", "test_num"],
    partition_by=["product", "lot_id"],
    description="Every PAT reason for every die; `final_rule` marks the one bin kept by precedence.",
)

LIMITS = _t(
    "limits",
    [
        ("product", pa.string()),
        ("limit_type", pa.string()),
        ("key", pa.string()),
        ("method", pa.string()),
        ("version", pa.int32()),
        ("scope", pa.string()),
        ("level1_lo", pa.float64()),
        ("level1_hi", pa.float64()),
        ("level2_lo", pa.float64()),
        ("level2_hi", pa.float64()),
        ("center", pa.float64()),
        ("spread", pa.float64()),
        ("n_lots", pa.int64()),
        ("n_points", pa.int64()),
        ("data_from", TS),
        ("data_to", TS),
        ("valid_from", TS),
        ("valid_to", TS),
        ("parameters", pa.string()),
        ("created_at", TS),
    ],
    keys=["product", "limit_type", "key", "method", "version"],
    description="Versioned SYL/SBL and static PAT limits (two levels) with their data window.",
)

SCORES = _t(
    "scores",
    [
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("wafer_id", pa.string()),
        ("recipe_hash", pa.string()),
        ("run_ids", pa.string()),
        ("n_tested", pa.int64()),
        ("n_good", pa.int64()),
        ("yield_first_pass", pa.float64()),
        ("yield_final", pa.float64()),
        ("yield_after_pat", pa.float64()),
        ("syl_level", pa.int16()),
        ("sbl_level", pa.int16()),
        ("pat_loss", pa.string()),
        ("n_clusters", pa.int32()),
        ("largest_cluster", pa.int32()),
        ("join_count_z", pa.float64()),
        ("pattern_class", pa.string()),
        ("pattern_probability", pa.float64()),
        ("alarm_level", pa.int16()),
        ("scored_at", TS),
    ],
    keys=["lot_id", "recipe_hash", "wafer_id"],
    partition_by=["product"],
    description="Nightly scores per lot (wafer_id '' = the whole lot) and per wafer.",
)

ALARMS = _t(
    "alarms",
    [
        ("product", pa.string()),
        ("lot_id", pa.string()),
        ("wafer_id", pa.string()),
        ("recipe_hash", pa.string()),
        ("rule", pa.string()),
        ("key", pa.string()),
        ("level", pa.int16()),
        ("evidence", pa.string()),
        ("figure", pa.string()),
        ("raised_at", TS),
    ],
    keys=["lot_id", "recipe_hash", "wafer_id", "rule", "key"],
    description="Alarms raised by the nightly batch; level 1 = review, 2 = hold.",
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        RUNS,
        WAFERS,
        DIE,
        TESTS,
        RESULTS,
        BINS,
        LAYOUTS,
        GENEALOGY,
        ASSEMBLY_STEPS,
        UNITS,
        DISPOSITIONS,
        LIMITS,
        SCORES,
        ALARMS,
    )
}


def register(table: Table) -> Table:
    """Add a table (e.g. synthetic ground truth) to the vocabulary; re-registering must agree."""
    old = TABLES.get(table.name)
    if old is not None and old.schema != table.schema:
        raise SchemaError(
            f"table {table.name!r} is already registered with another schema", table=table.name
        )
    TABLES[table.name] = table
    return table


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise SchemaError(
            f"unknown table {name!r}; known tables: {', '.join(sorted(TABLES))}", table=name
        ) from None


def validate(name: str, frame: pl.DataFrame | pl.LazyFrame, *, strict: bool = True) -> pl.DataFrame:
    """Check ``frame`` against table ``name`` and return it with columns in canonical order.

    Raises :class:`SchemaError` naming the table and column when a column is missing (or extra,
    with ``strict``), has another type, has nulls in a key column, or when keys repeat.
    Integer columns of a narrower or wider integer type are *not* silently cast: callers build
    frames with :meth:`Table.empty` / the schema so that a mismatch is a real error.
    """
    spec = table(name)
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    expected = spec.polars_schema
    found = dict(frame.schema)
    missing = [c for c in expected if c not in found]
    if missing:
        raise SchemaError(
            f"table {name!r}: missing column {missing[0]!r} (expected {expected[missing[0]]}); "
            f"add it, or build the frame from schema.table({name!r}).empty()",
            table=name,
            column=missing[0],
        )
    extra = [c for c in found if c not in expected]
    if strict and extra:
        raise SchemaError(
            f"table {name!r}: unexpected column {extra[0]!r} ({found[extra[0]]}); "
            f"drop it or register a table that has it",
            table=name,
            column=extra[0],
        )
    for col, dtype in expected.items():
        got = found[col]
        if got == dtype:
            continue
        if got == pl.Null:  # an all-null column built without a type: cast, it carries no data
            continue
        raise SchemaError(
            f"table {name!r}: column {col!r} has type {got}, expected {dtype}",
            table=name,
            column=col,
        )
    frame = frame.select(
        [pl.col(c).cast(d) if found[c] == pl.Null else pl.col(c) for c, d in expected.items()]
    )
    if frame.height:
        for key in spec.keys:
            if key in spec.nullable:
                continue
            n_null = frame.get_column(key).null_count()
            if n_null:
                raise SchemaError(
                    f"table {name!r}: key column {key!r} has {n_null} null value(s); "
                    f"every key ({', '.join(spec.keys)}) must be set",
                    table=name,
                    column=key,
                )
        # a key column holding one value everywhere (run_id within a run) cannot make a
        # duplicate: leave it out of the hashing, which dominates on large results tables
        varying = [k for k in spec.keys if not _constant(frame.get_column(k))]
        if not varying:
            varying = list(spec.keys)
        # hashes first (several times faster than is_duplicated); a collision only costs the
        # exact check below, which decides
        distinct = frame.select(pl.struct(varying).hash().n_unique()).item()
        dup = frame.select(varying).is_duplicated() if distinct != frame.height else None
        if dup is not None and dup.any():
            first = frame.filter(dup).row(0, named=True)
            shown = ", ".join(f"{k}={first[k]!r}" for k in spec.keys)
            raise SchemaError(
                f"table {name!r}: duplicate key ({shown}); {int(dup.sum())} rows share keys",
                table=name,
                column=",".join(spec.keys),
            )
    return frame


def _constant(series: pl.Series) -> bool:
    """True when every value equals the first (nulls were refused before)."""
    return series.len() > 1 and bool((series == series[0]).all())


def conform(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Cast ``frame`` to table ``name`` (adding absent columns as nulls), then validate it.

    For producers that build frames column by column; a cast that loses data raises SchemaError.
    """
    spec = table(name)
    cols = []
    for col, dtype in spec.polars_schema.items():
        if col in frame.columns:
            cols.append(pl.col(col).cast(dtype, strict=True).alias(col))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(col))
    try:
        out = frame.select(cols)
    except pl.exceptions.InvalidOperationError as exc:
        raise SchemaError(f"table {name!r}: {exc}", table=name) from exc
    return validate(name, out)
