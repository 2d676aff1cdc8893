"""Build polars frames in a table's exact schema without the cost of key validation.

The generator makes frames of millions of rows; :func:`backend_fab.schema.validate` (duplicate-key
check) is run by the lake on write and by the tests, not on every generated frame. Columns are
made with direct Series operations (no expression engine round trip per column): that per-call
overhead, not the data, dominates small frames.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import numpy as np
import polars as pl

from backend_fab import schema

_TS = pl.Datetime("us", "UTC")
_SCHEMAS: dict[str, tuple[object, dict[str, pl.DataType]]] = {}


class BufferPool:
    """Recycles large numpy buffers between the runs of one generator.

    The generator hands its big columns to polars without copying, so every run would otherwise
    fault in fresh pages for ~40 bytes per result row; on a loaded virtual machine that costs
    more CPU than computing the rows. A consumer that handles runs one at a time (writing a lake,
    iterating :meth:`SynthFab.iter_runs`) releases a run's frames before the next one is made;
    the pool then hands the same memory out again.

    A buffer is free when nothing but the pool references it: every numpy view, polars Series
    or Arrow array built on it holds a reference to it, so a buffer still in use is never
    handed out (data stays immutable once returned). Buffers under ``min_bytes`` come from numpy
    directly (the C allocator recycles those). At most ``max_buffers`` are kept; the pool is not
    thread-safe (one per generator).
    """

    def __init__(self, min_bytes: int = 1 << 20, max_buffers: int = 48):
        self.min_bytes = int(min_bytes)
        self.max_buffers = int(max_buffers)
        self._buffers: list[np.ndarray] = []
        probe = [np.empty(0, dtype=np.uint8)]
        self._idle = self._refs(probe, 0)  # the count of a buffer only the pool holds

    @staticmethod
    def _refs(buffers: list, i: int) -> int:
        return sys.getrefcount(buffers[i])

    def empty(self, shape, dtype) -> np.ndarray:
        """An uninitialised C-contiguous array (like :func:`numpy.empty`)."""
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < self.min_bytes:
            return np.empty(shape, dtype=dtype)
        buffers = self._buffers
        fits = [
            i
            for i in range(len(buffers))
            if nbytes <= buffers[i].size <= 2 * nbytes and self._refs(buffers, i) == self._idle
        ]
        best = min(fits, key=lambda i: buffers[i].size) if fits else -1
        if best < 0:
            if len(buffers) >= self.max_buffers:
                free = [i for i in range(len(buffers)) if self._refs(buffers, i) == self._idle]
                if not free:
                    return np.empty(shape, dtype=dtype)
                buffers.pop(min(free, key=lambda i: buffers[i].size))
            # a little headroom: the next run's column is rarely exactly as long
            buffers.append(np.empty(nbytes + nbytes // 8, dtype=np.uint8))
            best = len(buffers) - 1
        return buffers[best][:nbytes].view(dtype).reshape(shape)

    def zeros(self, shape, dtype) -> np.ndarray:
        """A zeroed C-contiguous array (like :func:`numpy.zeros`)."""
        out = self.empty(shape, dtype)
        out.fill(0)
        return out


def polars_schema(table: str) -> dict[str, pl.DataType]:
    """The polars schema of a table (cached: building it from Arrow costs milliseconds)."""
    spec = schema.table(table)
    cached = _SCHEMAS.get(table)
    if cached is None or cached[0] is not spec:
        cached = (spec, spec.polars_schema)
        _SCHEMAS[table] = cached
    return cached[1]


def _utc(value):
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def const(name: str, value, dtype: pl.DataType, n: int) -> pl.Series:
    """``value`` repeated ``n`` times (strings share one buffer)."""
    s = pl.Series(name, [_utc(value)], dtype=dtype)
    return s.new_from_index(0, n) if n else s.clear()


def column(name: str, value, dtype: pl.DataType, n: int) -> pl.Series:
    """One column of length ``n`` in ``dtype`` from an array, a Series or a scalar (broadcast)."""
    if isinstance(value, pl.Series):
        s = value.alias(name)
    elif isinstance(value, np.ndarray):
        if value.dtype.kind == "M":
            value = value.astype("datetime64[us]").astype(np.int64)
        s = pl.Series(name, value)
    elif isinstance(value, list | tuple):
        s = pl.Series(name, [_utc(v) for v in value], dtype=dtype, strict=False)
    else:
        return const(name, value, dtype, n)
    if s.dtype != dtype:
        s = s.cast(dtype)
    if s.len() != n:
        raise ValueError(f"column {name!r}: {s.len()} values for {n} rows")
    return s


#: Frames up to this many rows get their scalar columns materialised (see :func:`build`).
SMALL_FRAME_ROWS = 1 << 16


def build(table: str, n: int, cols: dict) -> pl.DataFrame:
    """A frame of ``n`` rows with exactly the columns of ``table`` (absent ones null).

    In a large frame, scalars (and absent columns) become polars scalar columns: a broadcast
    literal that is not materialised row by row until a consumer needs it (a run_id repeated
    over millions of result rows would otherwise cost 16 bytes a row). A small frame (at most
    :data:`SMALL_FRAME_ROWS` rows) gets them as plain columns sharing one value buffer: that
    skips the expression engine, whose fixed cost per call is larger than such a frame.
    """
    spec = polars_schema(table)
    unknown = set(cols) - set(spec)
    if unknown:
        raise ValueError(f"table {table!r} has no column(s) {sorted(unknown)}")
    small = n <= SMALL_FRAME_ROWS
    series, exprs, scalars = [], [], False
    for name, dtype in spec.items():
        value = cols.get(name)
        if isinstance(value, pl.Series | np.ndarray | list | tuple):
            series.append(column(name, value, dtype, n))
            exprs.append(pl.col(name))
        elif small:
            series.append(const(name, value, dtype, n))
        else:
            exprs.append(pl.lit(_utc(value), dtype=dtype).alias(name))
            scalars = True
    if not scalars:
        return pl.DataFrame(series)
    if not series:
        return pl.DataFrame({"__rows": np.zeros(n, dtype=np.int8)}).select(exprs)
    return pl.DataFrame(series).select(exprs)


def from_rows(table: str, rows: list[dict]) -> pl.DataFrame:
    """A (small) frame of ``table`` from a list of row dicts; absent keys are null."""
    if not rows:
        return schema.table(table).empty()
    return pl.from_dicts(rows, schema=polars_schema(table))


def view_words(names) -> np.ndarray | None:
    """Arrow string-view words of short labels: a ``(len(names),)`` array of 16-byte items
    (complex128 as a carrier), or ``None`` when a label is longer than 12 UTF-8 bytes.

    A view of a string of at most 12 bytes is its int32 length followed by the bytes, zero padded
    (Arrow columnar format, "Variable-size Binary View Layout"); ``None`` gives zero words (the
    slot is null). Building label columns from these words writes 16 bytes a row in one numpy
    ``take`` and hands the buffer to polars without a copy.
    """
    words = np.zeros((len(names), 4), dtype=np.uint32)
    raw = words.view(np.uint8)
    for i, name in enumerate(names):
        if name is None:
            continue
        b = str(name).encode()
        if len(b) > 12:
            return None
        words[i, 0] = len(b)
        raw[i, 4 : 4 + len(b)] = np.frombuffer(b, dtype=np.uint8)
    return words.view(np.complex128).reshape(len(names))


def string_views(name: str, words: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    """A String column from inline Arrow string-view words (``(n,)`` 16-byte items, see
    :func:`view_words`, or ``(n, 4)`` uint32), null where ``valid`` is False; no copy."""
    import pyarrow as pa

    words = np.ascontiguousarray(words)
    n = words.shape[0]
    validity, nulls = None, 0
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        nulls = int(n - np.count_nonzero(valid))
        if nulls:
            # bits past the end set, as polars' own kernels leave them (same IPC bytes)
            pad = np.ones(-n % 8, dtype=bool)
            validity = pa.py_buffer(np.packbits(np.concatenate([valid, pad]), bitorder="little"))
    arr = pa.Array.from_buffers(
        pa.string_view(), n, [validity, pa.py_buffer(words)], null_count=nulls
    )
    return pl.Series(name, pl.from_arrow(arr), dtype=pl.String)


def string_table(strings) -> tuple[np.ndarray, np.ndarray]:
    """A ``(m, width)`` uint8 table of UTF-8 strings (zero padded) and their byte lengths."""
    raw = [str(x).encode() for x in strings]
    width = max((len(b) for b in raw), default=0)
    table = np.zeros((len(raw), width), dtype=np.uint8)
    for i, b in enumerate(raw):
        table[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return table, np.array([len(b) for b in raw], dtype=np.int32)


def join_tables(*parts) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise concatenation of ``(table, lengths)`` string tables of equal row counts (a part
    with one row is broadcast): row ``i`` of the result is the concatenation of row ``i`` of
    every part, zero padded."""
    m = max(t.shape[0] for t, _ in parts)
    out = np.zeros((m, sum(t.shape[1] for t, _ in parts)), dtype=np.uint8)
    lengths = np.zeros(m, dtype=np.int32)
    start = 0  # where the next part starts while every row so far has the same length
    for t, n in parts:
        w = t.shape[1]
        if start is not None:  # rows are zero padded: a block copy is exact for any lengths
            out[:, start : start + w] = t
        else:
            rows, cols = np.nonzero(np.broadcast_to(np.arange(w) < n[:, None], (m, w)))
            out[rows, lengths[rows] + cols] = np.broadcast_to(t, (m, w))[rows, cols]
        if start is not None and np.all(n == w):
            start += w
        else:
            start = None
        lengths += n
    return out, lengths


_DIGITS: dict[int, np.ndarray] = {}


def _digits(first: int, count: int, width: int) -> np.ndarray:
    """``(count, width)`` ASCII digits of ``first .. first + count - 1``, zero filled (rows of a
    cached table; every number must have at most ``width`` digits)."""
    table = _DIGITS.get(width)
    if table is None or table.shape[0] < first + count:
        numbers = np.arange(max(2 * (first + count), 1024), dtype=np.int64)
        table = np.empty((numbers.size, width), dtype=np.uint8)
        for j in range(width - 1, -1, -1):
            table[:, j] = 48 + numbers % 10
            numbers = numbers // 10
        _DIGITS[width] = table
    return table[first : first + count]


def take_rows(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of a 2-d uint8 string table (one block copy per row, not per byte)."""
    table = np.ascontiguousarray(table, dtype=np.uint8)
    m, width = table.shape
    if width == 0:
        return np.zeros((np.size(rows), 0), dtype=np.uint8)
    whole = table.view(np.dtype((np.void, width))).reshape(m)
    return whole.take(np.asarray(rows, dtype=np.int64)).view(np.uint8).reshape(-1, width)


def decimal_table(prefix: str, first: int, count: int, width: int):
    """``(table, lengths)`` of ``prefix + str(first + i).zfill(width)`` for ``i < count``."""
    if first < 0 or (count and first + count - 1 >= 10**width):
        return string_table(f"{prefix}{i:0{width}d}" for i in range(first, first + count))
    digits = _digits(first, count, width)
    return join_tables(string_table([prefix]), (digits, np.full(count, width, dtype=np.int32)))


def table_views(
    name: str, table: np.ndarray, lengths: np.ndarray, rows: np.ndarray, valid=None
) -> pl.Series:
    """A String column whose value ``i`` is row ``rows[i]`` of a string table (zero padded
    rows, see :func:`string_table`), null where ``valid`` is False.

    Built as Arrow string views over the table's bytes: no per-row string is made, and rows
    that repeat share their bytes. A string of up to 12 bytes is inlined in its view (Arrow
    columnar format, "Variable-size Binary View Layout"); a longer one keeps its first 4 bytes
    in the view and points into the table (buffer 0, offset ``row * width``).
    """
    import pyarrow as pa

    table = np.ascontiguousarray(table, dtype=np.uint8)
    width = table.shape[1]
    if table.size >= 2**31:
        raise ValueError(f"table_views({name!r}): string table over 2 GiB")
    rows = np.asarray(rows, dtype=np.int64)
    n = rows.size
    length = np.asarray(lengths, dtype=np.int32)[rows]
    words = np.zeros((n, 4), dtype=np.uint32)
    words[:, 0] = length
    long = length > 12
    all_long = bool(n) and bool(long.all())
    # the view's bytes 4..16 as uint32 words: the string itself (zero padded) when inline, the
    # first 4 bytes only (then buffer index and offset) when long
    n_words = 1 if all_long else 3
    head = np.zeros((table.shape[0], 4 * n_words), dtype=np.uint8)
    head[:, : min(width, 4 * n_words)] = table[:, : 4 * n_words]
    words[:, 1 : 1 + n_words] = head.view(np.uint32)[rows]
    buffers = [None, pa.py_buffer(words)]
    if all_long:
        words[:, 3] = rows * width  # buffer index (word 2) stays 0
        buffers.append(pa.py_buffer(table))
    elif long.any():
        words[long, 2] = 0
        words[long, 3] = rows[long] * width
        buffers.append(pa.py_buffer(table))
    nulls = 0
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        nulls = int(n - np.count_nonzero(valid))
        if nulls:
            pad = np.ones(-n % 8, dtype=bool)  # bits past the end set, as polars leaves them
            buffers[0] = pa.py_buffer(np.packbits(np.concatenate([valid, pad]), bitorder="little"))
    arr = pa.Array.from_buffers(pa.string_view(), n, buffers, null_count=nulls)
    return pl.Series(name, pl.from_arrow(arr), dtype=pl.String)


def labels(codes: np.ndarray, names) -> pl.Series:
    """String column from integer codes into ``names`` (a ``None`` name gives null)."""
    names = list(names)
    codes = np.asarray(codes, dtype=np.int64)
    words = view_words(names)
    if words is None:
        return pl.Series(names, dtype=pl.String).gather(codes)
    valid = None
    if any(v is None for v in names):
        valid = np.array([v is not None for v in names])[codes]
    return string_views("", np.take(words, codes), valid)


def two_labels(mask: np.ndarray, true_label: str, false_label: str) -> pl.Series:
    """String column: ``true_label`` where ``mask`` else ``false_label``."""
    return labels(np.asarray(mask, dtype=np.int64), (false_label, true_label))


def strings(values) -> pl.Series:
    """String column from a (small) object array or list with ``None`` for null."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    return pl.Series(list(values), dtype=pl.String)
