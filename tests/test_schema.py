"""Canonical schemas: validate() names the table, the column and what is wrong."""

from __future__ import annotations

import polars as pl
import pytest

from backend_fab import schema
from backend_fab.errors import BackendFabError, SchemaError


def _die(**overrides):
    frame = schema.conform(
        "die",
        pl.DataFrame(
            {
                "run_id": ["r", "r"],
                "part_seq": [0, 1],
                "x": pl.Series([1, 2], dtype=pl.Int32),
                "y": pl.Series([1, 1], dtype=pl.Int32),
                "hbin": pl.Series([1, 2], dtype=pl.Int32),
                "passed": [True, False],
            }
        ),
    )
    return frame.with_columns(**overrides) if overrides else frame


def test_every_table_has_keys_in_its_schema():
    for name, spec in schema.TABLES.items():
        assert spec.keys, name
        for col in (*spec.keys, *spec.partition_by):
            assert col in spec.columns, (name, col)
        assert schema.validate(name, spec.empty()).height == 0


def test_valid_frame_passes_and_keeps_canonical_order():
    frame = _die()
    shuffled = frame.select(reversed(frame.columns))
    assert schema.validate("die", shuffled).columns == schema.DIE.columns


def test_missing_column_is_named():
    with pytest.raises(SchemaError, match=r"table 'die': missing column 'hbin'") as info:
        schema.validate("die", _die().drop("hbin"))
    assert info.value.table == "die" and info.value.column == "hbin"


def test_wrong_type_names_expected_and_found():
    with pytest.raises(SchemaError, match=r"column 'x' has type Int64, expected Int32"):
        schema.validate("die", _die(x=pl.col("x").cast(pl.Int64)))


def test_extra_column_is_refused_unless_not_strict():
    frame = _die(extra=pl.lit(1))
    with pytest.raises(SchemaError, match="unexpected column 'extra'"):
        schema.validate("die", frame)
    assert "extra" not in schema.validate("die", frame, strict=False).columns


def test_null_key_is_refused():
    frame = _die(part_seq=pl.Series([0, None], dtype=pl.Int64))
    with pytest.raises(SchemaError, match=r"key column 'part_seq' has 1 null"):
        schema.validate("die", frame)


def test_duplicate_keys_are_refused():
    frame = _die(part_seq=pl.Series([3, 3], dtype=pl.Int64))
    with pytest.raises(SchemaError, match=r"duplicate key \(run_id='r', part_seq=3\)"):
        schema.validate("die", frame)


def test_unknown_table():
    with pytest.raises(SchemaError, match="unknown table 'nope'"):
        schema.validate("nope", pl.DataFrame())


def test_conform_fills_absent_columns_and_refuses_lossy_casts():
    frame = schema.conform("runs", pl.DataFrame({"run_id": ["a"], "n_parts": [5]}))
    assert frame.columns == schema.RUNS.columns
    assert frame.item(0, "lot_id") is None
    with pytest.raises(SchemaError):
        schema.conform("runs", pl.DataFrame({"run_id": ["a"], "n_parts": ["five"]}))


def test_schema_error_is_in_the_family():
    assert issubclass(SchemaError, BackendFabError)


def test_register_refuses_a_conflicting_schema():
    import pyarrow as pa

    t = schema.Table("test_extra_table", pa.schema([("k", pa.string())]), keys=("k",))
    assert schema.register(t) is t
    assert schema.register(t) is t
    other = schema.Table("test_extra_table", pa.schema([("k", pa.int64())]), keys=("k",))
    with pytest.raises(SchemaError, match="already registered"):
        schema.register(other)
