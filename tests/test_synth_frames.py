"""The generator's frame helpers: string columns built from numpy buffers, and the buffer pool."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend_fab.synth import generate_fab
from backend_fab.synth._frames import (
    BufferPool,
    decimal_table,
    join_tables,
    labels,
    string_table,
    table_views,
)

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)


@given(st.lists(st.one_of(st.none(), TEXT), min_size=1, max_size=8), st.data())
def test_labels_are_the_gathered_names(names, data):
    codes = np.array(data.draw(st.lists(st.integers(0, len(names) - 1), max_size=40)), dtype=int)
    got = labels(codes, names)
    want = pl.Series([names[c] for c in codes.tolist()], dtype=pl.String)
    assert got.dtype == pl.String and got.to_list() == want.to_list()


@given(st.lists(TEXT, max_size=8), st.lists(TEXT, max_size=8), st.data())
def test_table_views_give_the_table_rows(heads, tails, data):
    m = min(len(heads), len(tails))
    table, lengths = join_tables(string_table(heads[:m]), string_table(tails[:m]))
    rows = data.draw(st.lists(st.integers(0, m - 1), max_size=30)) if m else []
    valid = data.draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows)))
    got = table_views("s", table, lengths, np.array(rows, dtype=np.int64), np.array(valid, bool))
    want = [heads[r] + tails[r] if ok else None for r, ok in zip(rows, valid, strict=True)]
    assert got.to_list() == want
    assert got.null_count() == want.count(None)
    # equal to the same strings built by polars (a consumer cannot tell them apart)
    assert got.equals(pl.Series("s", want, dtype=pl.String))


@pytest.mark.parametrize(
    ("prefix", "first", "count", "width"),
    [("AXA0001-", 1, 250, 5), ("S", 95, 10, 2), ("", 0, 3, 3)],
)
def test_decimal_tables_are_zero_filled_numbers(prefix, first, count, width):
    table, lengths = decimal_table(prefix, first, count, width)
    got = table_views("n", table, lengths, np.arange(count)).to_list()
    assert got == [f"{prefix}{i:0{width}d}" for i in range(first, first + count)]


def test_the_pool_never_hands_out_a_buffer_in_use():
    pool = BufferPool(min_bytes=1024)
    a = pool.empty(1000, np.int64)
    a[:] = np.arange(1000)
    kept = pl.Series("a", a)  # polars holds the numpy memory without copying
    del a
    b = pool.empty(1000, np.int64)
    b[:] = -1
    assert kept.to_list() == list(range(1000))
    del b
    c = pool.empty(900, np.float64)  # b's buffer is free again: handed out, not reallocated
    assert len(pool._buffers) == 2 and any(np.shares_memory(c, x) for x in pool._buffers)
    assert kept.to_list() == list(range(1000))
    small = pool.empty(10, np.int8)  # under min_bytes: plain numpy
    assert not any(np.shares_memory(small, x) for x in pool._buffers)
    z = pool.zeros((3, 500), np.float32)
    assert z.shape == (3, 500) and not z.any()


def _digest(run) -> list[str]:
    out = []
    for name in sorted(run):
        buf = io.BytesIO()
        run[name].write_ipc(buf)
        out.append(f"{name}:{hashlib.sha256(buf.getvalue()).hexdigest()}")
    return out


def test_runs_consumed_one_at_a_time_equal_runs_kept():
    """Buffers are recycled once a consumer drops a run: the data must not change."""
    one_at_a_time = []
    for run in generate_fab("ci", seed=11).iter_runs():
        one_at_a_time.append(_digest(run))
        del run
    kept = generate_fab("ci", seed=11).runs
    assert one_at_a_time == [_digest(run) for run in kept]
