"""STDF V4 / V4-2007 reader: tester files -> the canonical tables (runs, wafers, die, tests, results, bins).

``read_stdf(source)`` decodes a whole file into a :class:`StdfData`; ``iter_stdf(source)`` streams a
file of any size as :class:`StdfBatch` chunks with bounded memory. Both take a path or bytes;
gzip, bzip2, xz and single-member zip input is recognised by its magic number and decompressed
as a stream, refusing to expand past ``max_expanded_bytes``.

Decoding runs in numba kernels (``backend_fab_kernels.stdf_decode``): one pass indexes every
record, a field walker checks and locates the fields of each record type, and gather kernels
build the columns; Python only runs per record *type* (and per record for the rare, complex
V4-2007 fields). Record layouts come from :mod:`backend_fab.io.stdf_spec`.

Which STDF field fills which canonical column is documented in ``docs/data-model.md``
(section "Tester tables (STDF)"). Reference: STDF V4 specification (Teradyne, 1997) and the
V4-2007 addendum.

Damaged input raises :class:`~backend_fab.errors.StdfError` naming the file, the byte offset (in
the decompressed stream) and the record index. With ``errors="salvage"`` every complete record
before the fault is kept and the run is marked ``status="salvaged"`` with the reason.
"""

from __future__ import annotations

import bz2
import datetime as _dt
import gzip
import hashlib
import io
import json
import lzma
import math
import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from backend_fab import schema
from backend_fab.errors import StdfError
from backend_fab.io import stdf_spec as spec

__all__ = [
    "DEFAULT_MAX_EXPANDED_BYTES",
    "StdfBatch",
    "StdfData",
    "iter_stdf",
    "read_stdf",
    "record_schema",
]

#: Default limit on the decompressed size of a compressed source (4 GiB).
DEFAULT_MAX_EXPANDED_BYTES = 4 << 30
#: Bytes decompressed or read per step while streaming.
_CHUNK_BYTES = 16 << 20

CANONICAL = ("runs", "wafers", "die", "tests", "results", "bins")

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
)


def _key(name: str) -> int:
    s = spec.RECORDS[name]
    return (s.typ << 8) | s.sub


K = {name: _key(name) for name in spec.RECORDS}
_NAME_BY_KEY = {v: k for k, v in K.items()}

Errors = Literal["raise", "salvage"]


# --------------------------------------------------------------------------------------------
# public containers
# --------------------------------------------------------------------------------------------


@dataclass
class StdfData:
    """A decoded STDF file: the canonical tables plus every record on demand.

    Attributes ``runs`` (one row), ``wafers``, ``die``, ``tests``, ``results``, ``bins`` are
    polars DataFrames with exactly the columns of :mod:`backend_fab.schema`. ``records(name)``
    gives every field of one record type. ``record_counts`` maps record name -> count (unknown
    types as ``"UNKNOWN(typ,sub)"``).
    """

    runs: pl.DataFrame
    wafers: pl.DataFrame
    die: pl.DataFrame
    tests: pl.DataFrame
    results: pl.DataFrame
    bins: pl.DataFrame
    record_counts: dict[str, int]
    source: str
    byte_order: str
    _buf: np.ndarray = field(repr=False, default=None)
    _offsets: np.ndarray = field(repr=False, default=None)
    _keys: np.ndarray = field(repr=False, default=None)
    _lengths: np.ndarray = field(repr=False, default=None)
    _cache: dict = field(repr=False, default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.runs.item(0, "run_id")

    @property
    def status(self) -> str:
        """``"ok"`` or ``"salvaged"``."""
        return self.runs.item(0, "status")

    @property
    def status_reason(self) -> str | None:
        return self.runs.item(0, "status_reason")

    @property
    def summary_check(self) -> dict:
        """The summary-record check (``runs.summary_check``) as a dict."""
        return json.loads(self.runs.item(0, "summary_check"))

    def tables(self) -> dict[str, pl.DataFrame]:
        """The six canonical tables by name, ready for ``Lake.add_run``."""
        return {name: getattr(self, name) for name in CANONICAL}

    def records(self, rec_type: str, *, resolve_defaults: bool = False) -> pl.DataFrame:
        """Every field of every record of one type, in file order.

        Columns: ``sequence_number`` (0-based record index in the file), ``byte_offset`` (of the
        record header in the decompressed stream), ``rec_len``, then the record's fields under
        their spec names (``TEST_NUM``, ...), typed as :func:`record_schema` says. Omitted
        trailing fields take the spec's missing value where it defines one, else null.

        ``resolve_defaults`` (PTR and MPR only): the fields after OPT_FLAG (scales, limits,
        units, formats, specs; MPR also START_IN/INCR_IN/RTN_INDX) hold the value in force for
        the record: its own when given, else the first given value for the same (test, head,
        site), else for the same test (STDF V4, "PTR default data"). Limits flagged "no limit"
        (OPT_FLAG bits 6/7, spec bits 2/3) are null.
        """
        rs = spec.record_spec(rec_type)
        ck = (rs.name, resolve_defaults)
        if ck not in self._cache:
            sel = np.flatnonzero(self._keys == ((rs.typ << 8) | rs.sub))
            frame = _decode_records(
                self._buf,
                self._offsets[sel],
                self._lengths[sel],
                sel.astype(np.int64),
                rs,
                self.byte_order == "big",
            )
            if resolve_defaults:
                if rs.name not in ("PTR", "MPR"):
                    raise ValueError("resolve_defaults applies to PTR and MPR records only")
                frame = _resolve_defaults(frame, rs.name)
            self._cache[ck] = frame
        return self._cache[ck]


@dataclass
class StdfBatch:
    """One chunk of a streamed STDF file (see :func:`iter_stdf`).

    ``die`` and ``results`` hold the parts ``part_seq`` in ``[first_part, first_part +
    die.height)`` and all their results (a part is never split). ``runs``, ``wafers``, ``tests``
    and ``bins`` are empty except in the last batch (``last``), which carries the one ``runs``
    row: write the data tables of every batch first and the runs row last.
    """

    index: int
    last: bool
    first_part: int
    runs: pl.DataFrame
    wafers: pl.DataFrame
    die: pl.DataFrame
    tests: pl.DataFrame
    results: pl.DataFrame
    bins: pl.DataFrame

    @property
    def run_id(self) -> str | None:
        return self.die.item(0, "run_id") if self.die.height else None

    def tables(self) -> dict[str, pl.DataFrame]:
        return {name: getattr(self, name) for name in CANONICAL}


# --------------------------------------------------------------------------------------------
# sources: path or bytes, compressed or not
# --------------------------------------------------------------------------------------------


class _Source:
    def __init__(self, source, max_expanded_bytes: int | None, source_path=None):
        self.max_expanded = (
            DEFAULT_MAX_EXPANDED_BYTES if max_expanded_bytes is None else int(max_expanded_bytes)
        )
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.data = bytes(source) if not isinstance(source, bytes) else source
            self.path = None
            self.label = "<bytes>" if source_path is None else str(source_path)
            self.recorded_path = None if source_path is None else str(source_path)
            self.size = len(self.data)
            head = self.data[:6]
        elif isinstance(source, (str, os.PathLike)):
            self.data = None
            self.path = Path(os.fspath(source))
            self.label = str(self.path)
            self.recorded_path = str(self.path.resolve())
            try:
                self.size = self.path.stat().st_size
                with open(self.path, "rb") as fh:
                    head = fh.read(6)
            except OSError as exc:
                raise StdfError(
                    f"cannot read the file: {exc.strerror or exc}", path=self.label
                ) from exc
            if not self.path.is_file():
                raise StdfError("not a regular file", path=self.label)
        else:
            raise TypeError(f"source must be a path or bytes, not {type(source).__name__}")
        if self.size == 0:
            raise StdfError("empty file (0 bytes): not an STDF file", path=self.label, offset=0)
        self.kind = "plain"
        for magic, kind in _MAGIC:
            if head.startswith(magic):
                self.kind = kind
                break

    def _raw(self):
        return io.BytesIO(self.data) if self.path is None else open(self.path, "rb")

    def err(self, message: str, offset: int | None = None, record_index: int | None = None):
        return StdfError(message, path=self.label, offset=offset, record_index=record_index)

    def stream(self, chunk: int = _CHUNK_BYTES) -> Iterator[bytes]:
        """Decompressed bytes in chunks; StdfError on damaged compression or past the limit."""
        if self.kind == "plain":
            if self.data is not None:
                for i in range(0, len(self.data), chunk):
                    yield self.data[i : i + chunk]
                return
            with self._raw() as fh:
                while block := fh.read(chunk):
                    yield block
            return
        produced = 0
        try:
            with self._raw() as raw, self._decompressor(raw) as fh:
                while True:
                    block = fh.read(chunk)
                    if not block:
                        break
                    produced += len(block)
                    if produced > self.max_expanded:
                        raise self.err(
                            f"{self.kind} data expands past max_expanded_bytes="
                            f"{self.max_expanded:,}; stopped (a decompression bomb, or raise "
                            f"the limit for a genuinely large file)",
                            offset=self.max_expanded,
                        )
                    yield block
        except StdfError:
            raise
        except (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, ValueError,
                NotImplementedError, RuntimeError) as exc:  # fmt: skip
            raise self.err(
                f"damaged {self.kind} data after {produced:,} decompressed bytes: {exc}",
                offset=produced,
            ) from exc

    def _decompressor(self, raw):
        if self.kind == "gzip":
            return gzip.GzipFile(fileobj=raw, mode="rb")
        if self.kind == "bzip2":
            return bz2.BZ2File(raw, mode="rb")
        if self.kind == "xz":
            return lzma.LZMAFile(raw, mode="rb")
        zf = zipfile.ZipFile(raw)
        members = [i for i in zf.infolist() if not i.is_dir()]
        if len(members) != 1:
            zf.close()
            raise self.err(
                f"zip archive holds {len(members)} files; expected exactly one STDF file", offset=0
            )
        if members[0].file_size > self.max_expanded:
            zf.close()
            raise self.err(
                f"zip member {members[0].filename!r} declares {members[0].file_size:,} bytes, "
                f"past max_expanded_bytes={self.max_expanded:,}",
                offset=0,
            )
        return _ZipMember(zf, members[0])

    def read_all(self, salvage: bool) -> tuple[np.ndarray, StdfError | None]:
        """The whole decompressed content; with ``salvage`` a damaged stream keeps its prefix."""
        if self.kind == "plain":
            if self.data is not None:
                return np.frombuffer(self.data, dtype=np.uint8), None
            # read, not mmap: a file truncated by another process while mapped would SIGBUS
            try:
                return np.fromfile(self.path, dtype=np.uint8), None
            except (OSError, ValueError) as exc:
                raise self.err(f"cannot read the file: {exc}") from exc
        parts: list[bytes] = []
        fault = None
        try:
            for block in self.stream():
                parts.append(block)
        except StdfError as exc:
            if not salvage or "max_expanded_bytes" in exc.reason:
                raise
            fault = exc
        return np.frombuffer(b"".join(parts), dtype=np.uint8), fault


class _ZipMember:
    def __init__(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo):
        self.zf = zf
        self.fh = zf.open(info)

    def read(self, n: int) -> bytes:
        return self.fh.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()
        self.zf.close()


# --------------------------------------------------------------------------------------------
# generic record decoding (every field of one record type -> a polars frame)
# --------------------------------------------------------------------------------------------

_FT = {
    "U1": 0, "U2": 1, "U4": 2, "U8": 3, "I1": 4, "I2": 5, "I4": 6, "I8": 7,
    "R4": 8, "R8": 9, "B1": 10, "C1": 11, "Cn": 20, "Sn": 21, "Bn": 22, "Dn": 23,
    "N1": 24, "Uf": 25, "Cf": 26, "Vn": 27,
}  # fmt: skip

_PL_SCALAR = {
    "U1": pl.UInt8, "U2": pl.UInt16, "U4": pl.UInt32, "U8": pl.UInt64,
    "I1": pl.Int8, "I2": pl.Int16, "I4": pl.Int32, "I8": pl.Int64,
    "R4": pl.Float32, "R8": pl.Float64, "B1": pl.UInt8, "C1": pl.String,
    "Cn": pl.String, "Sn": pl.String, "Cf": pl.String, "Bn": pl.Binary,
    "Dn": pl.Struct({"bit_count": pl.UInt16, "bit_data": pl.Binary}),
    "N1": pl.UInt8, "Uf": pl.UInt64,
    "Vn": pl.Struct({"TYPE": pl.String, "VALUE": pl.String}),
}  # fmt: skip

_NP_INT = {
    "U1": np.uint8, "U2": np.uint16, "U4": np.uint32, "U8": np.uint64,
    "I1": np.int8, "I2": np.int16, "I4": np.int32, "I8": np.int64, "B1": np.uint8,
}  # fmt: skip


def record_schema(rec_type: str) -> dict[str, pl.DataType]:
    """The polars schema of ``StdfData.records(rec_type)``.

    Integers keep their STDF width and signedness (B1 flags as UInt8), R4/R8 are Float32/Float64,
    C1/Cn/Sn/Cf are strings (Latin-1), Bn binary, Dn a struct ``{bit_count, bit_data}``, arrays
    ``k x TYPE`` lists, and GDR ``GEN_DATA`` a list of struct ``{TYPE, VALUE}`` where TYPE is the
    Vn type name (``"U1"`` ... ``"N1"``, ``"B0"`` for a pad byte) and VALUE the value as text
    (numbers in Python ``repr``, Bn/Dn as hex, B0 null) — one column for every data type, so the
    table stays flat and exact.
    """
    rs = spec.record_spec(rec_type)
    out: dict[str, pl.DataType] = {
        "sequence_number": pl.Int64,
        "byte_offset": pl.Int64,
        "rec_len": pl.Int32,
    }
    for f in rs.fields:
        base = _PL_SCALAR[f.type]
        out[f.name] = pl.List(base) if f.is_array else base
    return out


@cache
def _program(name: str):
    rs = spec.RECORDS[name]
    names = rs.field_names
    types = np.array([_FT[f.type] for f in rs.fields], dtype=np.int64)
    count_refs = np.array([names.index(f.count) if f.count else -1 for f in rs.fields], np.int64)
    size_refs = np.array(
        [names.index(f.size_from) if f.size_from else -1 for f in rs.fields], np.int64
    )
    return types, count_refs, size_refs


def _walk(buf, offsets, lengths, rs: spec.RecordSpec, big_endian: bool, store):
    from backend_fab_kernels.stdf_decode import walk_fields

    types, count_refs, size_refs = _program(rs.name)
    return walk_fields(
        buf, offsets, lengths, big_endian, types, count_refs, size_refs,
        np.asarray(store, dtype=np.int64),
    )  # fmt: skip


def _absolute(offsets: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Walker positions (relative to the payload, ABSENT when omitted) -> byte offsets (-1)."""
    from backend_fab_kernels.stdf_decode import ABSENT

    return np.where(rel != ABSENT, offsets + 4 + rel.astype(np.int64), -1)


def _as_float(bits: np.ndarray, size: int) -> np.ndarray:
    if size == 4:
        return bits.astype(np.uint32).view(np.float32)
    return bits.view(np.float64)


def _int_values(bits: np.ndarray, t: str) -> np.ndarray:
    dt = np.dtype(_NP_INT[t])
    if dt.kind == "i" and dt.itemsize < 8:
        return bits.astype(np.dtype(f"u{dt.itemsize}")).view(dt)
    if t == "U8":
        return bits.view(np.uint64)
    return bits.astype(dt)


# Columns are built with numpy, polars and pyarrow ``from_buffers`` only: ``pa.array`` and
# ``pa.table`` import pandas (over a second at a cold start) to check their argument.


class _ArrowCArray:
    """Hands a pyarrow array to polars through the Arrow C data interface only.

    ``pl.from_arrow`` imports ``pyarrow.compute`` (~0.2 s at a cold start) to check for chunked
    dictionaries; a single-chunk array built from buffers needs no such check.
    """

    __slots__ = ("array",)

    def __init__(self, array: pa.Array):
        self.array = array

    def __arrow_c_array__(self, requested_schema=None):
        return self.array.__arrow_c_array__(requested_schema)


def _from_arrow(name: str, array: pa.Array) -> pl.Series:
    """A polars Series over ``array`` (zero-copy, without importing ``pyarrow.compute``)."""
    return pl.Series(name, _ArrowCArray(array)).alias(name)


def _validity(absent: np.ndarray) -> pa.Buffer | None:
    if not absent.any():
        return None
    return pa.py_buffer(np.packbits(~absent, bitorder="little"))


def _string_array(buf, starts, prefix, big_endian, binary=False) -> pa.Array:
    from backend_fab_kernels.stdf_decode import gather_strings

    data, offs = gather_strings(buf, starts, prefix, big_endian, latin1=not binary)
    absent = starts < 0
    typ = pa.large_binary() if binary else pa.large_string()
    return pa.Array.from_buffers(
        typ, starts.size, [_validity(absent), pa.py_buffer(offs), pa.py_buffer(data)],
        null_count=int(absent.sum()),
    )  # fmt: skip


def _numeric_series(name: str, values: np.ndarray, absent: np.ndarray, missing) -> pl.Series:
    """A column from numpy values; omitted fields take ``missing`` (or null when None)."""
    if absent.any():
        if missing is not None:
            values = values.copy()
            values[absent] = missing
            return pl.Series(name, values)
        return pl.Series(name, values).scatter(np.flatnonzero(absent), None)
    return pl.Series(name, values)


def _list_series(name: str, values: np.ndarray, offsets: np.ndarray, absent: np.ndarray,
                 item: pa.DataType) -> pl.Series:  # fmt: skip
    child = pa.Array.from_buffers(item, values.size, [None, pa.py_buffer(values)])
    arr = pa.LargeListArray.from_buffers(
        pa.large_list(item), absent.size, [_validity(absent), pa.py_buffer(offsets)],
        children=[child], null_count=int(absent.sum()),
    )  # fmt: skip
    return _from_arrow(name, arr)


def _const(name: str, value, n: int, dtype=pl.String) -> pl.Series:
    """A column of ``n`` copies of ``value`` (null when None)."""
    return pl.Series(name, [value], dtype=dtype).new_from_index(0, n)


def _frame(columns: list) -> pl.DataFrame:
    """A frame from Series and ``(name, value, dtype)`` constants, in the order given.

    Constants become scalar columns that polars broadcasts on use, instead of ``n`` copies of a
    64-character run id per result row. At least one entry must be a Series (it sets the height).
    """
    series = [c for c in columns if isinstance(c, pl.Series)]
    lits = [pl.lit(c[1], dtype=c[2]).alias(c[0]) for c in columns if not isinstance(c, pl.Series)]
    frame = pl.DataFrame(series)
    if lits:
        frame = frame.with_columns(lits)
    return frame.select([c.name if isinstance(c, pl.Series) else c[0] for c in columns])


def _vn_item(buf: np.ndarray, q: int, be: bool) -> tuple[str, str | None, int]:
    code = int(buf[q])
    name = spec.GDR_TYPES[code]
    q += 1
    order = ">" if be else "<"
    if name == "B0":
        return name, None, q
    if name in spec.STRUCT_CODES:
        size = spec.SCALAR_SIZES[name]
        (value,) = struct.unpack_from(order + spec.STRUCT_CODES[name], buf, q)
        return name, repr(value), q + size
    if name == "N1":
        return name, str(int(buf[q]) & 0x0F), q + 1
    if name in ("Cn", "Bn"):
        n = int(buf[q])
        raw = bytes(buf[q + 1 : q + 1 + n])
        return name, (raw.decode("latin-1") if name == "Cn" else raw.hex()), q + 1 + n
    nbits = struct.unpack_from(order + "H", buf, q)[0]
    nbytes = (nbits + 7) // 8
    return name, f"{nbits}:{bytes(buf[q + 2 : q + 2 + nbytes]).hex()}", q + 2 + nbytes


def _complex_array(buf, start: int, count: int, f: spec.Field, be: bool, width: int):
    """Python decoding of arrays of variable-size items (rare V4-2007 fields, GDR data)."""
    order = ">" if be else "<"
    out = []
    q = start
    for _ in range(count):
        if f.type in ("Cn", "Sn"):
            if f.type == "Cn":
                n, q = int(buf[q]), q + 1
            else:
                n, q = struct.unpack_from(order + "H", buf, q)[0], q + 2
            out.append(bytes(buf[q : q + n]).decode("latin-1"))
            q += n
        elif f.type == "Cf":
            out.append(bytes(buf[q : q + width]).decode("latin-1"))
            q += width
        elif f.type == "Uf":
            out.append(int.from_bytes(bytes(buf[q : q + width]), "big" if be else "little"))
            q += width
        else:  # Vn
            name, value, q = _vn_item(buf, q, be)
            out.append({"TYPE": name, "VALUE": value})
    return out


def _decode_records(buf, offsets, lengths, seq, rs: spec.RecordSpec, be: bool) -> pl.DataFrame:
    """All fields of the given records of one type (already validated by the walker)."""
    from backend_fab_kernels.stdf_decode import gather_nibbles, gather_uint, gather_uint_arrays

    n = offsets.size
    nf = len(rs.fields)
    _, rel, counts16, bad, _ = _walk(buf, offsets, lengths, rs, be, np.arange(nf))
    if bad >= 0:  # pragma: no cover - records are validated before they are kept
        raise StdfError(f"{rs.name} record malformed", offset=int(offsets[bad]))
    cols: list[pl.Series] = [
        pl.Series("sequence_number", np.asarray(seq, dtype=np.int64)),
        pl.Series("byte_offset", np.asarray(offsets, dtype=np.int64)),
        pl.Series("rec_len", np.asarray(lengths, dtype=np.int32)),
    ]
    values_by_name: dict[str, np.ndarray] = {}
    for i, f in enumerate(rs.fields):
        st = _absolute(offsets, rel[i])
        absent = st < 0
        t = f.type
        if not f.is_array:
            if t in _NP_INT:
                bits = gather_uint(buf, st, spec.SCALAR_SIZES[t], be)
                values_by_name[f.name] = np.where(absent, -1, bits)
                col = _numeric_series(f.name, _int_values(bits, t), absent, f.missing)
            elif t in ("R4", "R8"):
                size = spec.SCALAR_SIZES[t]
                vals = _as_float(gather_uint(buf, st, size, be), size)
                col = _numeric_series(f.name, vals, absent, f.missing)
            elif t == "C1":
                raw = gather_uint(buf, st, 1, be).astype(np.uint8).tolist()
                missing = f.missing
                col = pl.Series(
                    f.name,
                    [missing if a else chr(b) for a, b in zip(absent.tolist(), raw, strict=True)],
                    dtype=pl.String,
                )
            elif t in ("Cn", "Sn", "Bn"):
                arr = _string_array(buf, st, 2 if t == "Sn" else 1, be, binary=t == "Bn")
                col = _from_arrow(f.name, arr)
                if f.missing is not None and absent.any():
                    col = col.fill_null(f.missing)
            else:  # Dn: {bit_count, bit_data}; every Dn field has the spec missing value "empty"
                nbits = gather_uint(buf, st, 2, be)
                nbytes = (nbits + 7) // 8
                vals, offs = gather_uint_arrays(buf, np.where(absent, -1, st + 2), nbytes, 1, be)
                data = pa.Array.from_buffers(
                    pa.large_binary(), n,
                    [None, pa.py_buffer(offs), pa.py_buffer(vals.astype(np.uint8))],
                )  # fmt: skip
                col = pl.DataFrame(
                    [pl.Series("bit_count", nbits.astype(np.uint16)),
                     _from_arrow("bit_data", data)]
                ).to_struct(f.name)  # fmt: skip
        else:
            cnt = counts16[i].astype(np.int64)
            if t in _NP_INT or t in ("R4", "R8"):
                size = spec.SCALAR_SIZES[t]
                bits, offs = gather_uint_arrays(buf, st, cnt, size, be)
                vals = _as_float(bits, size) if t in ("R4", "R8") else _int_values(bits, t)
                col = _list_series(f.name, vals, offs, absent, pa.from_numpy_dtype(vals.dtype))
            elif t == "N1":
                vals, offs = gather_nibbles(buf, st, cnt)
                col = _list_series(f.name, vals, offs, absent, pa.uint8())
            else:
                items = []
                for r in range(n):
                    if absent[r]:
                        items.append(None)
                        continue
                    width = int(values_by_name[f.size_from][r]) if f.size_from else 0
                    items.append(_complex_array(buf, int(st[r]), int(cnt[r]), f, be, width))
                col = pl.Series(f.name, items, dtype=pl.List(_PL_SCALAR[t]))
        cols.append(col)
    frame = pl.DataFrame(cols)
    want = record_schema(rs.name)
    return frame if dict(frame.schema) == want else frame.cast(want)


#: Below this many records of a type, the pure-Python decoder is faster than building columns.
_PY_DECODE_MAX = 256


def _decode_rows(buf, offsets, lengths, seq, rs: spec.RecordSpec, be: bool) -> list[dict]:
    """Every field of the given (validated) records as dicts: the same values as
    :func:`_decode_records` gives, built in Python for a handful of records."""
    if offsets.size > _PY_DECODE_MAX:
        return _decode_records(buf, offsets, lengths, seq, rs, be).rows(named=True)
    order = ">" if be else "<"
    out = []
    for off, length, sq in zip(offsets.tolist(), lengths.tolist(), seq.tolist(), strict=True):
        p, end = off + 4, off + 4 + length
        row: dict = {"sequence_number": sq, "byte_offset": off, "rec_len": length}
        present: set[str] = set()
        for f in rs.fields:
            if p >= end and not (f.count in present and row[f.count] == 0):
                row[f.name] = _missing_value(f)
                continue
            present.add(f.name)
            t = f.type
            if f.count is None:
                if t == "C1":
                    row[f.name] = chr(buf[p])
                    p += 1
                elif t in spec.STRUCT_CODES:
                    row[f.name] = struct.unpack_from(order + spec.STRUCT_CODES[t], buf, p)[0]
                    p += spec.SCALAR_SIZES[t]
                elif t in ("Cn", "Bn"):
                    n = int(buf[p])
                    raw = bytes(buf[p + 1 : p + 1 + n])
                    row[f.name] = raw.decode("latin-1") if t == "Cn" else raw
                    p += 1 + n
                elif t == "Sn":
                    n = struct.unpack_from(order + "H", buf, p)[0]
                    row[f.name] = bytes(buf[p + 2 : p + 2 + n]).decode("latin-1")
                    p += 2 + n
                else:  # Dn
                    nbits = struct.unpack_from(order + "H", buf, p)[0]
                    nbytes = (nbits + 7) // 8
                    row[f.name] = {
                        "bit_count": nbits,
                        "bit_data": bytes(buf[p + 2 : p + 2 + nbytes]),
                    }
                    p += 2 + nbytes
            else:
                k = int(row[f.count])
                if t in spec.STRUCT_CODES:
                    size = spec.SCALAR_SIZES[t]
                    row[f.name] = list(
                        struct.unpack_from(f"{order}{k}{spec.STRUCT_CODES[t]}", buf, p)
                    )
                    p += k * size
                elif t == "N1":
                    row[f.name] = [(int(buf[p + j // 2]) >> (4 * (j % 2))) & 0x0F for j in range(k)]
                    p += (k + 1) // 2
                else:
                    width = int(row[f.size_from]) if f.size_from else 0
                    items = _complex_array(buf, p, k, f, be, width)
                    row[f.name] = items
                    p = _skip_items(buf, p, k, f, be, width)
        out.append(row)
    return out


def _missing_value(f: spec.Field):
    if f.type == "Dn" and f.missing is not None:
        return {"bit_count": 0, "bit_data": b""}
    return f.missing


def _skip_items(buf, p: int, k: int, f: spec.Field, be: bool, width: int) -> int:
    order = ">" if be else "<"
    for _ in range(k):
        if f.type == "Cn":
            p += 1 + int(buf[p])
        elif f.type == "Sn":
            p += 2 + struct.unpack_from(order + "H", buf, p)[0]
        elif f.type in ("Cf", "Uf"):
            p += width
        else:
            _, _, p = _vn_item(buf, p, be)
    return p


def _resolve_defaults(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """PTR/MPR default data carried forward (see StdfData.records)."""
    from backend_fab_kernels.stdf_decode import carry_forward

    if frame.height == 0:
        return frame
    tn = frame["TEST_NUM"].to_numpy().astype(np.int64)
    hs = frame["HEAD_NUM"].to_numpy().astype(np.int64) * 256 + frame["SITE_NUM"].to_numpy()
    _, key_test = np.unique(tn, return_inverse=True)
    _, key_local = np.unique(tn * 65536 + hs, return_inverse=True)
    opt_present = frame["OPT_FLAG"].is_not_null().to_numpy()
    opt = frame["OPT_FLAG"].fill_null(0).to_numpy().astype(np.int64)

    def given_scalar(col: str, invalid_bits: int, none_bit: int = 0) -> np.ndarray:
        present = frame[col].is_not_null().to_numpy()
        g = np.where(present & ((opt & invalid_bits) == 0), 1, 0)
        if none_bit:
            g = np.where(opt_present & ((opt & none_bit) != 0), 2, g)
        return g.astype(np.uint8)

    plan = {
        "RES_SCAL": given_scalar("RES_SCAL", 0x01),
        "LLM_SCAL": given_scalar("LLM_SCAL", 0x50),
        "HLM_SCAL": given_scalar("HLM_SCAL", 0xA0),
        "LO_LIMIT": given_scalar("LO_LIMIT", 0x10 | 0x40, 0x40),
        "HI_LIMIT": given_scalar("HI_LIMIT", 0x20 | 0x80, 0x80),
        "LO_SPEC": given_scalar("LO_SPEC", 0x04, 0x04),
        "HI_SPEC": given_scalar("HI_SPEC", 0x08, 0x08),
    }
    if name == "MPR":
        plan["START_IN"] = given_scalar("START_IN", 0x02)
        plan["INCR_IN"] = given_scalar("INCR_IN", 0x02)
    out = []
    for col, g in plan.items():
        s = frame[col]
        vals = s.fill_null(0).to_numpy()
        res, ok = carry_forward(vals, g, key_local, key_test)
        out.append(pl.Series(col, res, dtype=s.dtype).scatter(np.flatnonzero(~ok), None))
    # strings: empty = use the default; a single NUL = explicitly none
    string_cols = ["UNITS", "C_RESFMT", "C_LLMFMT", "C_HLMFMT"]
    if name == "MPR":
        string_cols.append("UNITS_IN")
    for col in string_cols:
        s = frame[col]
        lens = s.str.len_bytes().fill_null(0).to_numpy()
        g = np.where(lens > 0, 1, 0).astype(np.uint8)
        g[(s == "\x00").fill_null(False).to_numpy()] = 2
        codes = np.arange(frame.height, dtype=np.int64)
        res, ok = carry_forward(codes, g, key_local, key_test)
        out.append(s.gather(res).scatter(np.flatnonzero(~ok), None).alias(col))
    resolved = frame.with_columns(out)
    if name == "MPR":
        icnt = frame["RTN_ICNT"].fill_null(0).to_numpy()
        g = (icnt > 0).astype(np.uint8)
        g[frame["RTN_INDX"].is_null().to_numpy()] = 0
        codes = np.arange(frame.height, dtype=np.int64)
        res, ok = carry_forward(codes, g, key_local, key_test)
        resolved = resolved.with_columns(
            frame["RTN_INDX"].gather(res).scatter(np.flatnonzero(~ok), None).alias("RTN_INDX")
        )
    return resolved


# --------------------------------------------------------------------------------------------
# the decoder: complete records of a byte stream -> canonical columns, chunk by chunk
# --------------------------------------------------------------------------------------------

# field indices used by the hot paths
_PTR_TXT, _PTR_OPT, _PTR_UNITS = 6, 8, 14
_MPR_STAT, _MPR_RSLT, _MPR_TXT, _MPR_OPT, _MPR_INDX, _MPR_UNITS = 7, 8, 9, 11, 19, 20
_FTR_TXT = 23
_STORE = {
    "PTR": [_PTR_TXT, _PTR_OPT, _PTR_UNITS],
    "MPR": [_MPR_RSLT, _MPR_TXT, _MPR_OPT, _MPR_INDX, _MPR_UNITS],
    "FTR": [_FTR_TXT],
}
#: Record types decoded in full for the canonical tables (few records per file).
_SUMMARY_TYPES = ("MIR", "MRR", "SDR", "WIR", "WRR", "WCR", "PCR", "HBR", "SBR", "TSR")
_RESULT_KIND = {"PTR": "P", "MPR": "M", "FTR": "F"}
_KIND_CODE = {"P": 0, "M": 1, "F": 2}


class _Fault(Exception):
    """A fault found while decoding (becomes StdfError, or ends a salvaged run)."""

    def __init__(self, message: str, offset: int, record_index: int):
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.record_index = record_index


def _grow(arr: np.ndarray, need: int, fill) -> np.ndarray:
    if arr.size >= need:
        return arr
    new = np.full(max(need, 2 * arr.size), fill, dtype=arr.dtype)
    new[: arr.size] = arr
    return new


class _Decoder:
    """Consumes complete records chunk by chunk; keeps the state that spans chunks."""

    def __init__(self, src: _Source, *, results: bool, salvage: bool, stop_record: int | None):
        self.src = src
        self.results_on = results
        self.salvage = salvage
        self.stop_record = stop_record  # salvaged: decode only records before this index
        self.big_endian: bool | None = None
        self.stdf_version: int | None = None
        self.n_records = 0
        self.key_counts = np.zeros(65536, dtype=np.int64)
        self.summary: dict[str, list[dict]] = {n: [] for n in _SUMMARY_TYPES}
        self.open_slot = np.full(65536, -1, dtype=np.int64)
        self.slot_part = np.full(4096, -1, dtype=np.int64)
        self.next_slot = 0
        self.next_part = 0
        self.head_wafer = np.full(256, -1, dtype=np.int64)  # open wafer ordinal per head
        self.wafers: list[dict] = []  # one per WIR (or lone WRR), in order
        self.prr: list[pl.DataFrame] = []
        self.pending: list[dict[str, np.ndarray]] = []  # result columns whose part is open
        self.closed: list[dict[str, np.ndarray]] = []  # result columns with part_seq
        self.closed_rows = 0
        self.defaults: dict[tuple[str, int], dict] = {}  # (kind, test_num) -> first given values
        self.mpr_pins: dict[int, np.ndarray] = {}
        self.exec_counts: list[pl.DataFrame] = []
        self.fault: _Fault | None = None
        self.finished = False
        self.orphans = 0
        self.crossed = 0
        self._events: list = []
        empty = np.zeros(0, np.int64)
        self.last_index = (empty, empty.astype(np.uint16), empty.astype(np.int32))

    # -- FAR ------------------------------------------------------------------------------------
    def _read_far(self, buf: np.ndarray, final: bool) -> None:
        if buf.size < 6:
            if final:
                raise _Fault(
                    f"file too short for an STDF FAR record ({buf.size} bytes; a FAR is 6)", 0, 0
                )
            return
        typ, sub, cpu, ver = int(buf[2]), int(buf[3]), int(buf[4]), int(buf[5])
        if (typ, sub) != (0, 10):
            raise _Fault(
                f"not an STDF V4 file: the first record must be a FAR (type 0/10), found type "
                f"{typ}/{sub}",
                0,
                0,
            )
        if cpu not in spec.CPU_TYPES:
            raise _Fault(
                f"FAR.CPU_TYPE {cpu} is not supported (1 = big-endian, 2 = little-endian"
                f"{'; 0 = DEC VAX floats' if cpu == 0 else ''})",
                4,
                0,
            )
        be = spec.CPU_TYPES[cpu] == ">"
        rec_len = (int(buf[0]) << 8 | int(buf[1])) if be else (int(buf[1]) << 8 | int(buf[0]))
        if rec_len != 2:
            raise _Fault(f"FAR REC_LEN is {rec_len}; a FAR is 2 bytes long", 0, 0)
        if ver != 4:
            raise _Fault(
                f"FAR.STDF_VER is {ver}; only STDF V4 (and V4-2007) files are supported", 5, 0
            )
        self.big_endian = be
        self.stdf_version = ver

    # -- one chunk --------------------------------------------------------------------------------
    def feed(self, buf: np.ndarray, base: int, final: bool) -> int:
        """Decode the complete records at the start of ``buf`` (stream offset ``base``).

        Returns the number of bytes consumed; the caller keeps the rest for the next call.
        Raises _Fault for damaged input (after decoding every record before the fault).
        """
        from backend_fab_kernels.stdf_decode import (
            INDEX_ZERO_HEADER,
            PARTS_PIR_TWICE,
            PARTS_PRR_WITHOUT_PIR,
            assign_parts,
            index_records,
            record_kinds,
        )

        if self.finished:
            return buf.size
        if self.big_endian is None:
            self._read_far(buf, final)
            if self.big_endian is None:
                return 0
        be = self.big_endian
        offsets, keys, lengths, end, status = index_records(buf, 0, be)
        n = offsets.size
        rec0 = self.n_records
        faults: list[_Fault] = []
        if status == INDEX_ZERO_HEADER:
            faults.append(_Fault(
                "a run of zero bytes where a record header should be (REC_LEN 0, type 0/0)",
                base + int(end), rec0 + n,
            ))  # fmt: skip
        elif final and end < buf.size:
            left = buf.size - int(end)
            if left < 4:
                msg = f"truncated record: the file ends {left} byte(s) into a record header"
            else:
                want = (
                    int(buf[end]) << 8 | int(buf[end + 1])
                    if be
                    else (int(buf[end + 1]) << 8 | int(buf[end]))
                )
                name = _NAME_BY_KEY.get(int(buf[end + 2]) << 8 | int(buf[end + 3]), "unknown")
                msg = (
                    f"truncated record: a {name} record (type {int(buf[end + 2])}/"
                    f"{int(buf[end + 3])}) declares REC_LEN {want} but the file ends "
                    f"{left - 4} byte(s) into it"
                )
            faults.append(_Fault(msg, base + int(end), rec0 + n))
        if self.stop_record is not None and rec0 + n > self.stop_record:
            n = max(self.stop_record - rec0, 0)
            faults = []
            self.finished = True
        # group record positions by type (stable: file order within a type)
        order = np.argsort(keys[:n], kind="stable")
        sorted_keys = keys[:n][order]
        bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
        bounds = np.concatenate(([0], bounds, [n])) if n else np.zeros(1, np.int64)
        by_type: dict[int, np.ndarray] = {
            int(sorted_keys[bounds[i]]): order[bounds[i] : bounds[i + 1]]
            for i in range(bounds.size - 1)
        }
        self.last_index = (offsets, keys, lengths)
        walked: dict[str, tuple] = {}
        far_key = K["FAR"]
        for k, idx in by_type.items():
            name = _NAME_BY_KEY.get(k)
            if name is None:
                continue
            rs = spec.RECORDS[name]
            if k == far_key:
                bad = idx[idx + rec0 > 0]
                if bad.size:
                    i = int(bad[0])
                    faults.append(_Fault(
                        "a second FAR record: concatenated STDF files are not one run; split them",
                        base + int(offsets[i]), rec0 + i,
                    ))  # fmt: skip
                continue
            if rs.min_len:
                short = idx[lengths[idx] < rs.min_len]
                if short.size:
                    i = int(short[0])
                    faults.append(_Fault(
                        f"impossible REC_LEN {int(lengths[i])} for a {name} record: its required "
                        f"fields take {rs.min_len} bytes",
                        base + int(offsets[i]), rec0 + i,
                    ))  # fmt: skip
            store = _STORE.get(name, []) if self.results_on else []
            res = _walk(buf, offsets[idx], lengths[idx], rs, be, store)
            if res[3] >= 0:
                i = int(idx[res[3]])
                fname = rs.fields[res[4]].name if res[4] < len(rs.fields) else "?"
                faults.append(_Fault(
                    f"malformed {name} record: field {fname} runs past the end of the record "
                    f"(REC_LEN {int(lengths[i])})",
                    base + int(offsets[i]), rec0 + i,
                ))  # fmt: skip
            walked[name] = (idx, res)
        fault = min(faults, key=lambda f: f.record_index) if faults else None
        n_ok = (fault.record_index - rec0) if fault else n

        # parts: PIR .. PRR per (head, site); results between them
        kinds, heads, sites = record_kinds(buf, offsets[:n_ok], keys[:n_ok], lengths[:n_ok])
        self.slot_part = _grow(self.slot_part, self.next_slot + int((kinds == 1).sum()) + 1, -1)
        rec_slot, rec_part, self.next_slot, self.next_part, crossed, err, err_at = assign_parts(
            kinds, heads, sites, self.open_slot, self.next_slot, self.next_part, self.slot_part
        )
        self.crossed += int(crossed)
        if err:
            i = int(err_at)
            h, s = int(heads[i]), int(sites[i])
            msg = (
                f"PRR without PIR on head {h} site {s}: a part ends that never started"
                if err == PARTS_PRR_WITHOUT_PIR
                else f"PIR on head {h} site {s} while a part is already open there (no PRR)"
            )
            assert err in (PARTS_PRR_WITHOUT_PIR, PARTS_PIR_TWICE)
            fault = _Fault(msg, base + int(offsets[i]), rec0 + i)
            n_ok = i

        def keep(name: str) -> np.ndarray | None:
            idx = by_type.get(K[name])
            if idx is None:
                return None
            if n_ok < n:
                idx = idx[idx < n_ok]
            return idx if idx.size else None

        self.key_counts += np.bincount(keys[:n_ok], minlength=65536)
        seq = rec0 + np.arange(n_ok, dtype=np.int64)
        # summary and header records: every field, as row dicts (few records per file)
        for name in _SUMMARY_TYPES:
            idx = keep(name)
            if idx is not None:
                self.summary[name] += _decode_rows(
                    buf, offsets[idx], lengths[idx], seq[idx], spec.RECORDS[name], be
                )
        self._wafer_events(keep("WIR"), keep("WRR"), seq)
        idx = keep("PRR")
        if idx is not None:
            frame = _decode_records(
                buf, offsets[idx], lengths[idx], seq[idx], spec.RECORDS["PRR"], be
            )
            heads_prr = frame["HEAD_NUM"].to_numpy().astype(np.int64)
            frame = frame.with_columns(
                pl.Series("part_seq", rec_part[idx]),
                pl.Series("wafer_ordinal", self._wafer_at(seq[idx], heads_prr)),
            )
            self.prr.append(frame)
        self._flush_wafer_state()
        if self.results_on:
            for name in ("PTR", "MPR", "FTR"):
                idx = keep(name)
                if idx is not None:
                    m = idx.size  # a prefix of the walked records of this type
                    n_present, starts, counts = walked[name][1][:3]
                    self._results(
                        name, buf, offsets[idx], lengths[idx], seq[idx], rec_slot[idx],
                        (n_present[:m], starts[:, :m], counts[:, :m]),
                    )  # fmt: skip
            self._close_results()
        self.n_records = rec0 + n_ok
        if fault is not None:
            self.finished = True
            raise fault
        consumed = int(offsets[n - 1] + 4 + lengths[n - 1]) if n else 0
        return buf.size if final or self.finished else consumed

    # -- wafers -----------------------------------------------------------------------------------
    def _wafer_events(self, wir_idx, wrr_idx, seq) -> None:
        events = []
        if wir_idx is not None:
            events += [
                (r["sequence_number"], "WIR", r) for r in self.summary["WIR"][-wir_idx.size :]
            ]
        if wrr_idx is not None:
            events += [
                (r["sequence_number"], "WRR", r) for r in self.summary["WRR"][-wrr_idx.size :]
            ]
        events.sort(key=lambda e: e[0])
        self._events = events

    def _wafer_at(self, prr_seq: np.ndarray, prr_head: np.ndarray) -> np.ndarray:
        out = self.head_wafer[prr_head].copy()
        if not self._events:
            return out
        state = self.head_wafer.copy()
        ev_seq = np.array([e[0] for e in self._events], dtype=np.int64)
        # state of every head after each event
        states = np.empty((len(self._events), 256), dtype=np.int64)
        ordinal = len(self.wafers)
        for j, (_, kind, r) in enumerate(self._events):
            h = r["HEAD_NUM"]
            value = (
                ordinal + sum(1 for e in self._events[:j] if e[1] == "WIR") if kind == "WIR" else -1
            )
            if h == 255:
                state[:] = value
            else:
                state[h] = value
            states[j] = state
        pos = np.searchsorted(ev_seq, prr_seq) - 1
        has = pos >= 0
        out[has] = states[pos[has], prr_head[has]]
        return out

    def _flush_wafer_state(self) -> None:
        for _, kind, r in self._events:
            h = r["HEAD_NUM"]
            heads = range(256) if h == 255 else [h]
            if kind == "WIR":
                ordinal = len(self.wafers)
                self.wafers.append({"wir": r, "wrr": None, "head": h})
                for x in heads:
                    self.head_wafer[x] = ordinal
            else:
                open_ord = self.head_wafer[h if h != 255 else 0]
                if open_ord >= 0 and self.wafers[open_ord]["wrr"] is None:
                    self.wafers[open_ord]["wrr"] = r
                else:
                    self.wafers.append({"wir": None, "wrr": r, "head": h})
                for x in heads:
                    self.head_wafer[x] = -1
        self._events = []

    # -- results ------------------------------------------------------------------------------------
    def _results(self, name, buf, offs, lens, seq, slot, walked) -> None:
        from backend_fab_kernels.stdf_decode import gather_columns, gather_uint_arrays, group_ids

        be = self.big_endian
        n_present, starts, counts = walked
        # TEST_NUM, HEAD_NUM, SITE_NUM, TEST_FLG (+ PARM_FLG, + PTR RESULT) in one pass
        rel, sizes = {"PTR": ([0, 4, 5, 6, 7, 8], [4, 1, 1, 1, 1, 4]),
                      "MPR": ([0, 4, 5, 6, 7], [4, 1, 1, 1, 1]),
                      "FTR": ([0, 4, 5, 6], [4, 1, 1, 1])}[name]  # fmt: skip
        fixed = gather_columns(buf, offs, lens, np.array(rel), np.array(sizes), be)
        test_num, test_flg = fixed[0].astype(np.int64), fixed[3].astype(np.int64)
        hs = fixed[1].astype(np.int64) << 8
        hs |= fixed[2]
        kind = _RESULT_KIND[name]
        ids, first = group_ids(test_num)
        tests = _Tests(kind, test_num, ids, first)
        self._count_exec(kind, test_num, hs, test_flg)
        self._test_names(tests, name, buf, offs, starts)
        if name == "PTR":
            parm = fixed[4]
            value = fixed[5].view(np.float32).astype(np.float64)
            value_ok = (lens >= 12) & ((test_flg & 0x02) == 0) & ~np.isnan(value)
            self._ptr_defaults(tests, buf, offs, n_present, starts)
            cols = {
                "slot": slot, "test_num": test_num, "pin": np.full(slot.size, -1, np.int32),
                "kind": np.zeros(slot.size, np.int8), "value": value, "value_ok": value_ok,
                "test_flags": test_flg, "parm_flags": parm, "seq": seq,
            }  # fmt: skip
        elif name == "FTR":
            cols = {
                "slot": slot, "test_num": test_num, "pin": np.full(slot.size, -1, np.int32),
                "kind": np.full(slot.size, 2, np.int8), "value": np.zeros(slot.size),
                "value_ok": np.zeros(slot.size, np.bool_), "test_flags": test_flg,
                "parm_flags": np.zeros(slot.size, np.int64), "seq": seq,
            }  # fmt: skip
        else:  # MPR: one row per returned result, pin from RTN_INDX (own, else the test's default)
            parm = fixed[4]
            s_rslt, s_indx = 0, 3
            bits, roffs = gather_uint_arrays(
                buf, _absolute(offs, starts[s_rslt]), counts[s_rslt].astype(np.int64), 4, be
            )
            pins_own, poffs = gather_uint_arrays(
                buf, _absolute(offs, starts[s_indx]), counts[s_indx].astype(np.int64), 2, be
            )
            self._mpr_defaults(tests, buf, offs, n_present, starts, counts, pins_own, poffs)
            k = np.diff(roffs)
            rec = np.repeat(np.arange(slot.size), k)
            pos = np.arange(int(roffs[-1])) - roffs[:-1][rec]
            j_own = np.diff(poffs)
            pin = pos.copy()
            own = pos < j_own[rec]
            pin[own] = pins_own[poffs[:-1][rec[own]] + pos[own]]
            if (~own).any():
                for t in np.unique(test_num[rec[~own]]).tolist():
                    dflt = self.mpr_pins.get(int(t))
                    if dflt is None:
                        continue
                    sel = (~own) & (test_num[rec] == t) & (pos < dflt.size)
                    pin[sel] = dflt[pos[sel]]
            value = _as_float(bits, 4).astype(np.float64)
            tf = test_flg[rec]
            cols = {
                "slot": slot[rec], "test_num": test_num[rec], "pin": pin,
                "kind": np.ones(rec.size, np.int8), "value": value,
                "value_ok": ((tf & 0x02) == 0) & ~np.isnan(value), "test_flags": tf,
                "parm_flags": parm[rec], "seq": seq[rec],
            }  # fmt: skip
        executed = (cols["test_flags"] & 0x10) == 0
        if not executed.all():
            cols = {c: v[executed] for c, v in cols.items()}
        # narrow types: a batch of a million rows stays ~40 MB
        cols["test_flags"] = cols["test_flags"].astype(np.uint8)
        cols["parm_flags"] = cols["parm_flags"].astype(np.uint8, copy=False)
        cols["pin"] = cols["pin"].astype(np.int32, copy=False)
        cols["test_num"] = cols["test_num"].astype(np.int64, copy=False)
        self.pending.append(cols)

    def _close_results(self) -> None:
        if not self.pending:
            return
        if len(self.pending) == 1:
            cols = self.pending[0]
        else:
            cols = {c: np.concatenate([p[c] for p in self.pending]) for c in self.pending[0]}
        slot = cols["slot"]
        part = np.where(slot >= 0, self.slot_part[np.maximum(slot, 0)], -1)
        orphan = slot < 0
        self.orphans += int(orphan.sum())
        closed = part >= 0
        if closed.all():
            done = dict(cols)
            done["part_seq"] = part
            still = None
        else:
            done = {c: v[closed] for c, v in cols.items()}
            done["part_seq"] = part[closed]
            still = ~closed & ~orphan
        if done["part_seq"].size:
            self.closed.append(done)
            self.closed_rows += done["part_seq"].size
        self.pending = (
            [{c: v[still] for c, v in cols.items()}] if still is not None and still.any() else []
        )

    def take_results(self) -> dict[str, np.ndarray] | None:
        if not self.closed:
            return None
        if len(self.closed) == 1:
            cols = self.closed[0]
        else:
            cols = {c: np.concatenate([p[c] for p in self.closed]) for c in self.closed[0]}
        seq = cols["seq"]
        if seq.size > 1 and not (seq[1:] >= seq[:-1]).all():  # several record types: file order
            order = np.argsort(seq, kind="stable")
            cols = {c: v[order] for c, v in cols.items()}
        self.closed = []
        self.closed_rows = 0
        return cols

    def _count_exec(self, kind, test_num, hs, test_flg) -> None:
        """Executions, fails and records per (test, head, site) of this chunk (numpy)."""
        from backend_fab_kernels.stdf_decode import group_ids

        ids, first = group_ids(test_num * 65536 + hs)
        executed = (test_flg & 0x10) == 0
        failed = executed & ((test_flg & 0xC0) == 0x80)
        n = first.size
        # integer counts of the selected rows (weighted bincount would go through float64)
        n_exec = np.bincount(ids if executed.all() else ids[executed], minlength=n)
        self.exec_counts.append((
            np.full(n, _KIND_CODE[kind], np.int64), test_num[first], hs[first],
            n_exec.astype(np.int64, copy=False),
            np.bincount(ids[failed], minlength=n).astype(np.int64, copy=False),
        ))  # fmt: skip

    def _default_slot(self, kind: str, test: int) -> dict:
        key = (kind, test)
        d = self.defaults.get(key)
        if d is None:
            d = self.defaults[key] = {}
        return d

    def _test_names(self, tests: _Tests, name, buf, offs, starts) -> None:
        field_ix = {"PTR": _PTR_TXT, "MPR": _MPR_TXT, "FTR": _FTR_TXT}[name]
        rel = starts[_STORE[name].index(field_ix)]

        def given_names(rows):
            sub = _absolute(offs[rows], rel[rows])
            has = sub >= 0
            has[has] = buf[sub[has]] > 0
            return has.astype(np.uint8)

        def read(r):
            p = int(offs[r]) + 4 + int(rel[r])
            return bytes(buf[p + 1 : p + 1 + int(buf[p])]).decode("latin-1")

        for rows in self._candidates(tests, ("test_name",)):
            self._first_given(tests, rows, given_names(rows), "test_name", read)

    def _candidates(self, tests: _Tests, fields: tuple[str, ...]):
        """Record subsets to search for defaults: each test's first record, then the records
        of the tests still lacking a field (in file order, so the result is the first record
        that states it)."""
        yield tests.first
        missing = [
            g for g, t in enumerate(tests.uniq.tolist())
            if any(f not in self.defaults.get((tests.kind, t), {}) for f in fields)
        ]  # fmt: skip
        if missing:
            want = np.zeros(tests.first.size, dtype=np.bool_)
            want[missing] = True
            yield np.flatnonzero(want[tests.ids])

    def _first_given(self, tests: _Tests, rows, given: np.ndarray, field_name: str, read) -> None:
        """Set each test's default for ``field_name`` from its first record that states it.

        ``rows``: record indices searched (file order); ``given`` (one per row): 0 = the record
        says nothing, 1 = a value (``read(record)``), 2 = "none".
        """
        from backend_fab_kernels.stdf_decode import first_per_group

        todo = [
            g for g, t in enumerate(tests.uniq.tolist())
            if field_name not in self._default_slot(tests.kind, t)
        ]  # fmt: skip
        if not todo:
            return
        pos = first_per_group(tests.ids[rows], given > 0, tests.uniq.size)
        for g in todo:
            i = int(pos[g])
            if i >= 0:
                r = int(rows[i])
                d = self.defaults[(tests.kind, int(tests.uniq[g]))]
                d[field_name] = read(r) if given[i] == 1 else None

    _OPT_FIELDS = ("res_scal", "llm_scal", "hlm_scal", "lo_limit", "hi_limit", "units",
                   "lo_spec", "hi_spec")  # fmt: skip

    def _opt_defaults(
        self, tests: _Tests, buf, offs, n_present, opt_rel, units_rel, layout
    ) -> None:
        """PTR/MPR default data: scales, limits, units, spec limits of each test's first record."""
        for rows in self._candidates(tests, self._OPT_FIELDS):
            self._opt_defaults_rows(tests, rows, buf, offs, n_present, opt_rel, units_rel, layout)

    def _opt_defaults_rows(self, tests, rows, buf, offs, n_present, opt_rel, units_rel, layout):
        order = ">" if self.big_endian else "<"

        def pos(rel, r):
            return int(offs[r]) + 4 + int(rel[r])

        o_st = _absolute(offs[rows], opt_rel[rows])
        has_opt = o_st >= 0
        opt = np.zeros(rows.size, dtype=np.int64)
        opt[has_opt] = buf[o_st[has_opt]]
        np_ = n_present[rows].astype(np.int64)
        f_opt = layout["OPT_FLAG"]

        def g(offset, invalid, none_bit=0):
            given = ((np_ > f_opt + offset) & ((opt & invalid) == 0)).astype(np.uint8)
            if none_bit:
                given[has_opt & ((opt & none_bit) != 0)] = 2
            return given

        def rd(fmt, off):
            return lambda r: struct.unpack_from(order + fmt, buf, pos(opt_rel, r) + off)[0]

        self._first_given(tests, rows, g(1, 0x01), "res_scal", rd("b", 1))
        self._first_given(tests, rows, g(2, 0x50), "llm_scal", rd("b", 2))
        self._first_given(tests, rows, g(3, 0xA0), "hlm_scal", rd("b", 3))
        self._first_given(tests, rows, g(4, 0x50, 0x40), "lo_limit", rd("f", 4))
        self._first_given(tests, rows, g(5, 0xA0, 0x80), "hi_limit", rd("f", 8))
        u_st = _absolute(offs[rows], units_rel[rows])
        has_u = u_st >= 0
        ulen = np.zeros(rows.size, dtype=np.int64)
        ulen[has_u] = buf[u_st[has_u]]

        def read_units(r):
            p = pos(units_rel, r)
            text = bytes(buf[p + 1 : p + 1 + int(buf[p])]).decode("latin-1")
            return None if text == "\x00" else text

        self._first_given(tests, rows, (ulen > 0).astype(np.uint8), "units", read_units)
        n_strings = layout["n_strings_before_spec"]

        def spec_reader(which):
            def read(r):
                p = pos(units_rel, r)
                for _ in range(n_strings):
                    p += 1 + int(buf[p])
                return struct.unpack_from(order + "f", buf, p + 4 * which)[0]

            return read

        f_lo = layout["LO_SPEC"]
        self._first_given(tests, rows, g(f_lo - f_opt, 0, 0x04), "lo_spec", spec_reader(0))
        self._first_given(tests, rows, g(f_lo + 1 - f_opt, 0, 0x08), "hi_spec", spec_reader(1))

    def _ptr_defaults(self, tests: _Tests, buf, offs, n_present, starts) -> None:
        self._opt_defaults(
            tests, buf, offs, n_present, starts[1], starts[2],
            {"OPT_FLAG": _PTR_OPT, "LO_SPEC": 18, "n_strings_before_spec": 4},
        )  # fmt: skip

    def _mpr_defaults(self, tests: _Tests, buf, offs, n_present, starts, counts, pins, poffs):
        self._opt_defaults(
            tests, buf, offs, n_present, starts[2], starts[4],
            {"OPT_FLAG": _MPR_OPT, "LO_SPEC": 25, "n_strings_before_spec": 5},
        )  # fmt: skip
        from backend_fab_kernels.stdf_decode import ABSENT, first_per_group

        has_pins = (starts[3] != ABSENT) & (counts[3] > 0)
        if has_pins.any():
            rows = first_per_group(tests.ids, has_pins, tests.uniq.size)
            for g, t in enumerate(tests.uniq.tolist()):
                r = int(rows[g])
                if r >= 0 and t not in self.mpr_pins:
                    self.mpr_pins[t] = pins[poffs[r] : poffs[r + 1]].copy()


@dataclass
class _Tests:
    """The records of one result type in a chunk, grouped by test number."""

    kind: str
    test_num: np.ndarray
    ids: np.ndarray
    first: np.ndarray

    @property
    def uniq(self) -> np.ndarray:
        return self.test_num[self.first]


# --------------------------------------------------------------------------------------------
# canonical tables
# --------------------------------------------------------------------------------------------

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
#: polars schemas of the canonical tables this module writes (built once).
_SCHEMAS = {
    n: dict(pl.from_arrow(pa.Table.from_batches([], schema=schema.table(n).schema)).schema)
    for n in CANONICAL
}


def _empty(name: str) -> pl.DataFrame:
    """An empty canonical table (built without ``pa.Schema.empty_table``, which imports pandas)."""
    return pl.DataFrame(schema=_SCHEMAS[name])


_MAX_MISMATCHES = 200


def _text(value) -> str | None:
    """STDF strings -> canonical text: empty, blank C1 and a lone NUL become null."""
    if value is None:
        return None
    value = value.rstrip("\x00")
    return value if value.strip() else None


def _time(seconds) -> _dt.datetime | None:
    if seconds is None or seconds == 0:
        return None
    return _EPOCH + _dt.timedelta(seconds=int(seconds))


def _temperature(text: str | None) -> float | None:
    if text is None:
        return None
    cleaned = text.strip().upper().removesuffix("C").removesuffix("DEG").strip()
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _first(rows: list[dict]) -> dict | None:
    return rows[0] if rows else None


def _concat(frames: list[pl.DataFrame], name: str) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.DataFrame(schema=record_schema(name))
    return pl.concat(frames, how="vertical")


class _Run:
    """Run-level facts shared by the table builders."""

    def __init__(self, dec: _Decoder, src: _Source, run_id: str):
        mir = _first(dec.summary["MIR"])
        if mir is None:
            raise StdfError(
                "no MIR record: the run cannot be identified (lot, product); the file is "
                "damaged or not a complete STDF file",
                path=src.label, offset=None, record_index=dec.n_records,
            )  # fmt: skip
        self.mir = mir
        self.mrr = _first(dec.summary["MRR"])
        self.run_id = run_id
        self.product = _text(mir["PART_TYP"])
        self.lot_id = _text(mir["LOT_ID"])


def _wafer_ids(dec: _Decoder) -> list[str]:
    ids = []
    for i, w in enumerate(dec.wafers):
        wid = _text(w["wir"]["WAFER_ID"]) if w["wir"] else None
        if wid is None and w["wrr"]:
            wid = _text(w["wrr"]["WAFER_ID"])
        ids.append(wid if wid is not None else f"#{i + 1}")
    return ids


def _build_die(dec: _Decoder, run: _Run, wafer_ids: list[str]) -> pl.DataFrame:
    """The die table: one row per PRR, in PRR order (``part_seq``)."""
    from backend_fab_kernels.stdf_decode import group_ids, previous_in_group, retest_chains

    prr = _concat(dec.prr, "PRR")  # chunks in file order: part_seq 0, 1, 2, ...
    n = prr.height
    if "part_seq" not in prr.columns:
        prr = prr.with_columns(_const("part_seq", None, n, pl.Int64),
                               _const("wafer_ordinal", None, n, pl.Int64))  # fmt: skip
    flags = prr["PART_FLG"].to_numpy().astype(np.int64)
    hard_bin = prr["HARD_BIN"].to_numpy().astype(np.int64)
    # PART_FLG bit 4 "no pass/fail indication": fall back to the HBR pass/fail of the hard bin
    pf_of_bin = np.full(65536, -1, dtype=np.int8)
    for r in dec.summary["HBR"]:
        if r["HBIN_PF"] in ("P", "F") and pf_of_bin[r["HBIN_NUM"]] < 0:
            pf_of_bin[r["HBIN_NUM"]] = r["HBIN_PF"] == "P"
    known = (flags & 0x10) == 0
    passed = np.where(known, (flags & 0x08) == 0, pf_of_bin[hard_bin] == 1)
    passed_null = ~known & (pf_of_bin[hard_bin] < 0)
    wafer = prr["wafer_ordinal"].to_numpy().astype(np.int64)
    x = prr["X_COORD"].to_numpy().astype(np.int64)
    y = prr["Y_COORD"].to_numpy().astype(np.int64)
    has_xy = (x != spec.MISSING_XY) & (y != spec.MISSING_XY)
    # retests: PART_FLG bit 0 (same PART_ID) / bit 1 (same X-Y) supersede the latest earlier
    # part with that key on the same wafer (wafer unknown at final test)
    pred = np.full(n, -1, dtype=np.int64)
    if n and (flags & 0x03).any():
        xy_key = ((wafer + 1) << 34) | ((x + 32768) << 17) | (y + 32768)
        ids, first = group_ids(np.where(has_xy, xy_key, -1))
        ids = np.where(has_xy, ids, -1)
        prev_xy = previous_in_group(ids, first.size)
        part_id = prr["PART_ID"].str.strip_chars("\x00 ")
        has_id = (part_id != "").to_numpy()
        codes = part_id.cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
        ids, first = group_ids(np.where(has_id, ((wafer + 1) << 32) | codes, -1))
        ids = np.where(has_id, ids, -1)
        prev_id = previous_in_group(ids, first.size)
        pred = np.where((flags & 1) != 0, prev_id, -1)
        pred = np.where((pred < 0) & ((flags & 2) != 0), prev_xy, pred)
    retest_index, final = retest_chains(pred)
    wafer_id = pl.Series("wafer_id", wafer_ids, dtype=pl.String).gather(
        pl.Series(wafer).set(pl.Series(wafer < 0), None)
    ) if wafer_ids else _const("wafer_id", None, n)  # fmt: skip
    frame = pl.DataFrame(
        [
            _const("run_id", run.run_id, n),
            prr["part_seq"].cast(pl.Int64),
            _const("product", run.product, n),
            _const("lot_id", run.lot_id, n),
            wafer_id.alias("wafer_id"),
            prr["HEAD_NUM"].cast(pl.Int16).alias("head"),
            prr["SITE_NUM"].cast(pl.Int16).alias("site"),
            pl.Series("x", x.astype(np.int32)),
            pl.Series("y", y.astype(np.int32)),
            prr["HARD_BIN"].cast(pl.Int32).alias("hbin"),
            prr["SOFT_BIN"].cast(pl.Int32).alias("sbin"),
            pl.Series("passed", passed),
            pl.Series("part_flags", flags.astype(np.int16)),
            prr["NUM_TEST"].cast(pl.Int32).alias("num_tests"),
            prr["TEST_T"].cast(pl.Float64).alias("test_time_ms"),
            prr["PART_ID"].alias("part_id"),
            prr["PART_TXT"].alias("part_txt"),
            pl.Series("retest_index", retest_index.astype(np.int16)),
            pl.Series("final", final),
            _const("ecid", None, n),
        ]
    )
    # STDF "no value" codes -> null, in one pass
    frame = frame.with_columns(
        pl.when(pl.col("x") != spec.MISSING_XY).then(pl.col("x")).alias("x"),
        pl.when(pl.col("y") != spec.MISSING_XY).then(pl.col("y")).alias("y"),
        pl.when(pl.col("hbin") != spec.MISSING_BIN).then(pl.col("hbin")).alias("hbin"),
        pl.when(pl.col("sbin") != spec.MISSING_BIN).then(pl.col("sbin")).alias("sbin"),
        pl.when(pl.col("test_time_ms") > 0).then(pl.col("test_time_ms")).alias("test_time_ms"),
        pl.when(pl.col("part_id").str.strip_chars("\x00 ") != "").then(pl.col("part_id")).alias("part_id"),
        pl.when(pl.col("part_txt").str.strip_chars("\x00 ") != "").then(pl.col("part_txt")).alias("part_txt"),
        pl.when(pl.Series(passed_null)).then(None).otherwise(pl.col("passed")).alias("passed"),
    )  # fmt: skip
    return schema.validate("die", frame)


def _build_results(cols: dict[str, np.ndarray] | None, run: _Run, notes: list[str]) -> pl.DataFrame:
    """The results table from decoded result columns (file order).

    One row per (part, test, pin): a test repeated within a part keeps its last execution (and
    says so in ``notes``). Checked exactly against ``schema.table("results")``: columns and
    types with :func:`schema.validate` on the empty frame, null-free keys by construction, and
    key uniqueness with an O(n) kernel (the frame can hold millions of rows).
    """
    from backend_fab_kernels.stdf_decode import count_repeated_pairs, group_ids

    if cols is None or cols["part_seq"].size == 0:
        return _empty("results")
    part_seq, test_num, pin = cols["part_seq"], cols["test_num"], cols["pin"]
    tid, tfirst = group_ids(test_num * 131072 + (pin + 1))
    if count_repeated_pairs(part_seq, tid, max(tfirst.size, 1)):
        ids, first = group_ids(part_seq * max(tfirst.size, 1) + tid)
        # keep the last row of every key
        last = np.full(first.size, -1, dtype=np.int64)
        np.maximum.at(last, ids, np.arange(ids.size))
        keep = np.zeros(ids.size, dtype=np.bool_)
        keep[last] = True
        notes.append(
            f"{ids.size - first.size} result row(s) dropped: the same test number (and pin) "
            f"executed more than once within a part; the last execution is kept"
        )
        cols = {c: v[keep] for c, v in cols.items()}
    n = cols["part_seq"].size
    tf = cols["test_flags"]
    kinds = cols["kind"]
    if n and (kinds == kinds[0]).all():
        kind = ("kind", "PMF"[int(kinds[0])], pl.String)
    else:
        kind = pl.Series(kinds).replace_strict({0: "P", 1: "M", 2: "F"}, return_dtype=pl.String)
    value = pl.Series("value", cols["value"], dtype=pl.Float64)
    if not cols["value_ok"].all():
        value = value.scatter(np.flatnonzero(~cols["value_ok"]), None)
    passed = pl.Series("passed", (tf & 0x80) == 0)
    no_pf = (tf & 0x40) != 0
    if no_pf.any():
        passed = passed.scatter(np.flatnonzero(no_pf), None)
    frame = _frame(
        [
            ("run_id", run.run_id, pl.String),
            pl.Series("part_seq", cols["part_seq"], dtype=pl.Int64),
            pl.Series("test_num", cols["test_num"], dtype=pl.Int64),
            pl.Series("pin", cols["pin"].astype(np.int32, copy=False)),
            kind.alias("kind") if isinstance(kind, pl.Series) else kind,
            ("product", run.product, pl.String),
            ("lot_id", run.lot_id, pl.String),
            value,
            pl.Series("test_flags", tf.astype(np.int16)),
            pl.Series("parm_flags", cols["parm_flags"].astype(np.int16)),
            passed,
        ]
    )
    schema.validate("results", frame.head(0))
    return frame


def _wafer_counts(die: pl.DataFrame, wafer_ids: list[str]) -> dict[str, dict[str, int]]:
    """Parts, good parts, retests and aborts per wafer id, derived from the die table."""
    order = {wid: i for i, wid in enumerate(dict.fromkeys(wafer_ids))}
    if not order:
        return {}
    wafer = die["wafer_id"].replace_strict(order, default=-1, return_dtype=pl.Int64).to_numpy()
    flags = die["part_flags"].to_numpy().astype(np.int64)
    tally = _tally(
        wafer,
        good=die["passed"].fill_null(False).to_numpy().astype(np.int64),
        retest=((flags & 3) != 0).astype(np.int64),
        abort=((flags & 4) != 0).astype(np.int64),
    )
    empty = {"n": 0, "good": 0, "retest": 0, "abort": 0}
    return {wid: tally.get(i, empty) for wid, i in order.items()}


def _build_wafers(
    dec: _Decoder, run: _Run, wafer_ids: list[str], die: pl.DataFrame
) -> pl.DataFrame:
    """One row per wafer id (WIR/WRR pairs of the same id merged); counts derived from the PRRs,
    layout from the WCR (which applies to every wafer of the file)."""
    if not wafer_ids:
        return _empty("wafers")
    wcr = _first(dec.summary["WCR"]) or {}

    def code(v, allowed=("U", "D", "L", "R")):
        return v if v in allowed else None

    def xy(v):
        return None if v is None or v == spec.MISSING_XY else v

    def positive(v):
        return float(v) if v else None

    layout = {
        "wafer_size": positive(wcr.get("WAFR_SIZ")), "die_height": positive(wcr.get("DIE_HT")),
        "die_width": positive(wcr.get("DIE_WID")), "wafer_units": wcr.get("WF_UNITS") or None,
        "wafer_flat": code(wcr.get("WF_FLAT")), "center_x": xy(wcr.get("CENTER_X")),
        "center_y": xy(wcr.get("CENTER_Y")), "pos_x": code(wcr.get("POS_X")),
        "pos_y": code(wcr.get("POS_Y")),
    }  # fmt: skip
    merged: dict[str, dict] = {}
    for wid, w in zip(wafer_ids, dec.wafers, strict=True):
        start = _time((w["wir"] or {}).get("START_T"))
        finish = _time((w["wrr"] or {}).get("FINISH_T"))
        row = merged.get(wid)
        if row is None:
            merged[wid] = {"wafer_id": wid, "head": w["head"], "start_time": start,
                           "finish_time": finish}  # fmt: skip
        else:
            if start is not None:
                row["start_time"] = min(filter(None, (row["start_time"], start)))
            if finish is not None:
                row["finish_time"] = max(filter(None, (row["finish_time"], finish)))
    counts = _wafer_counts(die, wafer_ids)
    rows = []
    for wid, row in merged.items():
        c = counts[wid]
        rows.append({
            "run_id": run.run_id, "product": run.product, "lot_id": run.lot_id, **row,
            "part_count": c["n"], "good_count": c["good"], "retest_count": c["retest"],
            "abort_count": c["abort"], **layout,
        })  # fmt: skip
    return schema.validate("wafers", pl.DataFrame(rows, schema=_SCHEMAS["wafers"]))


def _exec_counts(dec: _Decoder) -> dict[str, np.ndarray]:
    """Executions and fails per (kind, test, head, site) over the whole run."""
    from backend_fab_kernels.stdf_decode import group_ids

    if not dec.exec_counts:
        empty = np.zeros(0, np.int64)
        return {c: empty for c in ("kind", "test_num", "head", "site", "exec_count", "fail_count")}
    kind, test, hs, ex, fa = (np.concatenate(c) for c in zip(*dec.exec_counts, strict=True))
    ids, first = group_ids((test * 65536 + hs) * 4 + kind)
    n = first.size
    return {
        "kind": kind[first], "test_num": test[first], "head": hs[first] >> 8,
        "site": hs[first] & 0xFF,
        "exec_count": np.bincount(ids, weights=ex, minlength=n).astype(np.int64),
        "fail_count": np.bincount(ids, weights=fa, minlength=n).astype(np.int64),
    }  # fmt: skip


def _tally(keys: np.ndarray, **weights: np.ndarray) -> dict[int, dict[str, int]]:
    """Sum ``weights`` per distinct integer key (plus ``n``, the count)."""
    from backend_fab_kernels.stdf_decode import group_ids

    if keys.size == 0:
        return {}
    ids, first = group_ids(keys)
    sums = {"n": np.bincount(ids, minlength=first.size)}
    for name, w in weights.items():
        sums[name] = np.bincount(ids, weights=w, minlength=first.size)
    cols = {name: v.astype(np.int64).tolist() for name, v in sums.items()}
    return {
        int(k): {name: cols[name][g] for name in cols} for g, k in enumerate(keys[first].tolist())
    }


def _rows(rows: list[dict], name: str) -> list[dict]:
    return rows


def _build_tests(dec: _Decoder, run: _Run, counts: dict[str, np.ndarray]) -> pl.DataFrame:
    per_test: dict[tuple[str, int], list[int]] = {}
    for k, t, e, f in zip(counts["kind"].tolist(), counts["test_num"].tolist(),
                          counts["exec_count"].tolist(), counts["fail_count"].tolist(),
                          strict=True):  # fmt: skip
        acc = per_test.setdefault(("PMF"[k], t), [0, 0])
        acc[0] += e
        acc[1] += f
    tsr_names: dict[int, str | None] = {}
    tsr_kinds: dict[int, str] = {}
    for r in dec.summary["TSR"]:
        t, typ = r["TEST_NUM"], r["TEST_TYP"]
        if tsr_names.get(t) is None:
            tsr_names[t] = _text(r["TEST_NAM"])
        if typ in ("P", "M", "F"):
            tsr_kinds.setdefault(t, typ)
    keys = set(per_test) | set(dec.defaults)
    known_nums = {t for _, t in keys}
    keys |= {(k, t) for t, k in tsr_kinds.items() if t not in known_nums}
    if not keys:
        return _empty("tests")
    rows = []
    for kind, t in sorted(keys, key=lambda x: (x[1], x[0])):
        d = dec.defaults.get((kind, t), {})
        ex, fa = per_test.get((kind, t), (0, 0))
        rows.append(
            (kind, t, d.get("test_name") or tsr_names.get(t), d.get("lo_limit"),
             d.get("hi_limit"), d.get("lo_spec"), d.get("hi_spec"), _text(d.get("units")),
             d.get("res_scal"), d.get("llm_scal"), d.get("hlm_scal"), ex, fa)
        )  # fmt: skip
    cols = ["kind", "test_num", "test_name", "lo_limit", "hi_limit", "lo_spec", "hi_spec",
            "units", "res_scale", "llm_scale", "hlm_scale", "exec_count", "fail_count"]  # fmt: skip
    want = _SCHEMAS["tests"]
    frame = pl.DataFrame(rows, schema={c: want[c] for c in cols}, orient="row")
    frame = frame.with_columns(_const("run_id", run.run_id, frame.height))
    return schema.validate("tests", frame)


class _Checker:
    """Summary records against counts derived from the PRRs and test records."""

    def __init__(self):
        self.n_checked = 0
        self.n_bad = 0
        self.mismatches: list[dict] = []

    def check(self, record: str, where: dict, fld: str, stated, derived) -> None:
        if stated is None or stated == spec.MISSING_U4:
            return
        self.n_checked += 1
        if int(stated) != int(derived):
            self.n_bad += 1
            if len(self.mismatches) < _MAX_MISMATCHES:
                self.mismatches.append(
                    {"record": record, **where, "field": fld, "stated": int(stated),
                     "derived": int(derived)}
                )  # fmt: skip


def _bins_and_check(
    dec: _Decoder, run: _Run, die: pl.DataFrame, counts: dict[str, np.ndarray],
    wafer_ids: list[str], notes: list[str],
) -> tuple[pl.DataFrame, dict]:  # fmt: skip
    chk = _Checker()
    head = die["head"].to_numpy().astype(np.int64)
    site = die["site"].to_numpy().astype(np.int64)
    hs = head * 256 + site
    flags = die["part_flags"].to_numpy().astype(np.int64)
    good = die["passed"].fill_null(False).to_numpy().astype(np.int64)
    retest = ((flags & 3) != 0).astype(np.int64)
    abort = ((flags & 4) != 0).astype(np.int64)
    weights = {"good": good, "retest": retest, "abort": abort}
    by_hs = _tally(hs, **weights)
    total = {"n": int(hs.size), "good": int(good.sum()), "retest": int(retest.sum()),
             "abort": int(abort.sum())}  # fmt: skip
    empty = {"n": 0, "good": 0, "retest": 0, "abort": 0}

    def scope(h: int, s: int) -> tuple[int, int]:
        """HEAD_NUM 255 means all heads and sites: its SITE_NUM is read as 255."""
        return (255, 255) if h == 255 else (h, s)

    for r in _rows(dec.summary["PCR"], "PCR"):
        h, s = scope(r["HEAD_NUM"], r["SITE_NUM"])
        d = total if h == 255 else by_hs.get(h * 256 + s, empty)
        where = {"head": h, "site": s}
        for stated, derived in (("PART_CNT", "n"), ("GOOD_CNT", "good"), ("RTST_CNT", "retest"),
                                ("ABRT_CNT", "abort")):  # fmt: skip
            chk.check("PCR", where, stated, r[stated], d[derived])
    bin_frames = []
    for rec, kind, col in (("HBR", "H", "hbin"), ("SBR", "S", "sbin")):
        b = die[col].fill_null(spec.MISSING_BIN).to_numpy().astype(np.int64)
        per = _tally(hs * 65536 + b)
        per_all = _tally(b)
        num, cnt, pf_, nam = (f"{kind}BIN_NUM", f"{kind}BIN_CNT", f"{kind}BIN_PF", f"{kind}BIN_NAM")
        rows = _rows(dec.summary[rec], rec)
        for r in rows:
            h, s = scope(r["HEAD_NUM"], r["SITE_NUM"])
            n = (per_all if h == 255 else per).get(
                r[num] if h == 255 else (h * 256 + s) * 65536 + r[num], {"n": 0}
            )["n"]
            chk.check(rec, {"head": h, "site": s, "bin": r[num]}, cnt, r[cnt], n)
        if any(r[num] == spec.MISSING_BIN for r in rows):
            notes.append(f"{rec} for bin 65535 ('no bin') left out of the bins table")
        bin_frames += [
            (kind, r[num], *scope(r["HEAD_NUM"], r["SITE_NUM"]), r[cnt],
             r[pf_] if r[pf_] in ("P", "F") else None, _text(r[nam]))
            for r in rows
            if r[num] != spec.MISSING_BIN
        ]  # fmt: skip
    # TSR: executions and fails per test (and kind when TEST_TYP says) and head/site
    if dec.summary["TSR"]:
        k, t, chs = counts["kind"], counts["test_num"], counts["head"] * 256 + counts["site"]
        ex, fa = counts["exec_count"], counts["fail_count"]
        tables = {
            (True, False): _tally((t * 65536 + chs) * 4 + k, e=ex, f=fa),
            (True, True): _tally(t * 4 + k, e=ex, f=fa),
            (False, False): _tally(t * 65536 + chs, e=ex, f=fa),
            (False, True): _tally(t, e=ex, f=fa),
        }
        for r in _rows(dec.summary["TSR"], "TSR"):
            h, s = scope(r["HEAD_NUM"], r["SITE_NUM"])
            typ = r["TEST_TYP"]
            by_kind = typ in ("P", "M", "F")
            key = r["TEST_NUM"] if h == 255 else r["TEST_NUM"] * 65536 + h * 256 + s
            if by_kind:
                key = key * 4 + _KIND_CODE[typ]
            d = tables[(by_kind, h == 255)].get(key, {"e": 0, "f": 0})
            where = {"head": h, "site": s, "test_num": r["TEST_NUM"]}
            chk.check("TSR", where, "EXEC_CNT", r["EXEC_CNT"], d["e"])
            chk.check("TSR", where, "FAIL_CNT", r["FAIL_CNT"], d["f"])
    # WRR: parts, good parts, retests, aborts per wafer
    if any(w["wrr"] is not None for w in dec.wafers):
        per_wafer = _wafer_counts(die, wafer_ids)
        for wid, w in zip(wafer_ids, dec.wafers, strict=True):
            r = w["wrr"]
            if r is None:
                continue
            d = per_wafer[wid]
            for stated, derived in (("PART_CNT", "n"), ("GOOD_CNT", "good"),
                                    ("RTST_CNT", "retest"), ("ABRT_CNT", "abort")):  # fmt: skip
                chk.check("WRR", {"wafer_id": wid}, stated, r[stated], d[derived])
    bins_source = "HBR/SBR"
    bin_cols = ["kind", "bin", "head", "site", "count", "pass_fail", "name"]
    want = _SCHEMAS["bins"]
    if bin_frames:
        bins = pl.DataFrame(bin_frames, schema={c: want[c] for c in bin_cols}, orient="row")
        keys = ["kind", "bin", "head", "site"]
        if bins.select(keys).is_duplicated().any():
            notes.append("repeated HBR/SBR for the same bin and head/site: counts summed")
            bins = bins.group_by(keys, maintain_order=True).agg(
                pl.col("count").sum(), pl.col("pass_fail").drop_nulls().first(),
                pl.col("name").drop_nulls().first(),
            )  # fmt: skip
    else:
        bins_source = "PRR"
        rows = []
        for kind, col in (("H", "hbin"), ("S", "sbin")):
            b = die[col].to_numpy()
            ok = die["passed"].fill_null(False).to_numpy()
            known = ~die[col].is_null().to_numpy()
            for value in np.unique(b[known]).tolist():
                sel = known & (b == value)
                rows.append((kind, int(value), 255, 255, int(sel.sum()),
                             "P" if ok[sel].all() else "F", None))  # fmt: skip
        bins = pl.DataFrame(rows, schema={c: want[c] for c in bin_cols}, orient="row")
        if die.height:
            notes.append("no HBR/SBR records: bins derived from the PRRs (head/site 255)")
    bins = schema.validate("bins", bins.with_columns(_const("run_id", run.run_id, bins.height)))
    result = {
        "ok": chk.n_bad == 0,
        "n_checked": chk.n_checked,
        "n_mismatches": chk.n_bad,
        "mismatches": chk.mismatches,
        "bins_source": bins_source,
        "notes": notes,
    }
    return bins, result


def _build_runs(dec, run, src, n_parts, status, reason, check) -> pl.DataFrame:
    mir, mrr = run.mir, run.mrr or {}
    insertion = _text(mir["TEST_COD"]) or _text(mir["FLOW_ID"]) or "UNKNOWN"
    row = {
        "run_id": run.run_id,
        "product": run.product,
        "lot_id": run.lot_id,
        "sublot_id": _text(mir["SBLOT_ID"]),
        "insertion": insertion,
        "temperature": _temperature(_text(mir["TST_TEMP"])),
        "tester": _text(mir["SERL_NUM"]) or _text(mir["NODE_NAM"]),
        "tester_type": _text(mir["TSTR_TYP"]),
        "node": _text(mir["NODE_NAM"]),
        "program": _text(mir["JOB_NAM"]),
        "program_rev": _text(mir["JOB_REV"]),
        "mode_code": _text(mir["MODE_COD"]),
        "retest_code": _text(mir["RTST_COD"]),
        "facility": _text(mir["FACIL_ID"]),
        "start_time": _time(mir["START_T"]) or _time(mir["SETUP_T"]),
        "finish_time": _time(mrr.get("FINISH_T")),
        "stdf_version": dec.stdf_version,
        "byte_order": "big" if dec.big_endian else "little",
        "n_records": dec.n_records,
        "n_parts": n_parts,
        "status": status,
        "status_reason": reason,
        "summary_check": json.dumps(check, sort_keys=True),
        "source_path": src.recorded_path,
        "source_size": src.size,
        "ingested_at": _dt.datetime.now(_dt.UTC).replace(microsecond=0),
    }
    return schema.validate("runs", pl.DataFrame([row], schema=_SCHEMAS["runs"]))


def _record_counts(dec: _Decoder) -> dict[str, int]:
    out = {}
    for k in np.flatnonzero(dec.key_counts).tolist():
        name = _NAME_BY_KEY.get(k, f"UNKNOWN({k >> 8},{k & 0xFF})")
        out[name] = int(dec.key_counts[k])
    return out


def _notes(dec: _Decoder) -> list[str]:
    notes = []
    unknown = {n: c for n, c in _record_counts(dec).items() if n.startswith("UNKNOWN")}
    if unknown:
        notes.append(
            "unknown record types skipped: "
            + ", ".join(f"{n} x{c}" for n, c in sorted(unknown.items()))
        )
    if dec.orphans:
        notes.append(f"{dec.orphans} test record(s) outside any PIR..PRR part ignored")
    if dec.crossed:
        notes.append(
            f"{dec.crossed} PRR(s) name another head/site than their PIR; each closed the only "
            f"open part"
        )
    return notes


def _salvage_reason(fault: _Fault | StdfError, open_parts: int) -> str:
    msg = fault.message if isinstance(fault, _Fault) else fault.reason
    off = fault.offset
    idx = fault.record_index
    where = f" at byte offset {off}" if off is not None else ""
    where += f", record #{idx}" if idx is not None else ""
    text = f"{msg}{where}; every complete record before it kept"
    if open_parts:
        text += f"; {open_parts} part(s) without PRR dropped"
    return text


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


class _Sha256:
    """SHA-256 of a buffer computed in a background thread (hashlib releases the GIL)."""

    def __init__(self, buf: np.ndarray):
        self._hash = hashlib.sha256()
        self._thread = threading.Thread(target=self._hash.update, args=(memoryview(buf),))
        self._thread.start()

    def hexdigest(self) -> str:
        self._thread.join()
        return self._hash.hexdigest()


def _check_errors(errors: str) -> bool:
    if errors not in ("raise", "salvage"):
        raise ValueError(f"errors must be 'raise' or 'salvage', got {errors!r}")
    return errors == "salvage"


def _end_checks(dec: _Decoder) -> _Fault | None:
    """Structural checks once every record is read: MRR present, no part left open."""
    open_parts = int(np.count_nonzero(dec.open_slot >= 0))
    if open_parts:
        hs = int(np.flatnonzero(dec.open_slot >= 0)[0])
        return _Fault(
            f"{open_parts} part(s) started by a PIR never ended by a PRR (first on head "
            f"{hs >> 8} site {hs & 0xFF}): the file is truncated or damaged",
            None, dec.n_records,
        )  # fmt: skip
    if not dec.key_counts[K["MRR"]]:
        return _Fault(
            "no MRR record at the end: the file is truncated (it ends at a record boundary)",
            None, dec.n_records,
        )  # fmt: skip
    return None


def _raise(src: _Source, fault: _Fault):
    raise StdfError(
        fault.message, path=src.label, offset=fault.offset, record_index=fault.record_index
    )


def read_stdf(
    source: str | os.PathLike | bytes,
    errors: Errors = "raise",
    *,
    max_expanded_bytes: int | None = DEFAULT_MAX_EXPANDED_BYTES,
    source_path: str | os.PathLike | None = None,
) -> StdfData:
    """Decode an STDF V4 / V4-2007 file into the canonical tables.

    Parameters
    ----------
    source:
        A path, or the file's bytes. gzip, bzip2, xz and single-member zip content is detected by
        its magic number (not the extension) and decompressed.
    errors:
        ``"raise"`` (default): damaged input raises :class:`StdfError` naming the file, the byte
        offset in the decompressed stream and the record index. ``"salvage"``: keep every
        complete record before the first fault and mark the run ``status="salvaged"`` with the
        reason in ``status_reason`` (a file with nothing to keep still raises).
    max_expanded_bytes:
        Refuse compressed input that expands past this many bytes (a decompression bomb); the
        check runs while decompressing, so memory stays bounded. Always fatal.
    source_path:
        When ``source`` is bytes: the file they came from, named in errors and recorded in
        ``runs.source_path`` (``runs.source_size`` stays the size of the bytes given).

    Returns
    -------
    StdfData with ``runs`` (one row; ``run_id`` = SHA-256 of the decompressed bytes),
    ``wafers``, ``die``, ``tests``, ``results``, ``bins`` and ``records(name)``.
    """
    salvage = _check_errors(errors)
    src = _Source(source, max_expanded_bytes, source_path)
    buf, stream_fault = src.read_all(salvage)
    hasher = _Sha256(buf)  # hashes on another core while the kernels (nogil) decode
    dec = _Decoder(src, results=True, salvage=salvage, stop_record=None)
    fault: _Fault | None = None
    try:
        dec.feed(buf, 0, final=stream_fault is None)
    except _Fault as f:
        fault = f
    if fault is None and dec.big_endian is None:
        fault = _Fault("file too short for an STDF FAR record", 0, 0)
    if fault is None and stream_fault is not None:
        fault = _Fault(stream_fault.reason, stream_fault.offset, dec.n_records)
    if fault is None:
        fault = _end_checks(dec)
    if fault is not None and (not salvage or dec.n_records == 0):
        _raise(src, fault)
    open_parts = int(np.count_nonzero(dec.open_slot >= 0))
    tables = _assemble(dec, src, hasher.hexdigest(), fault, open_parts, dec.take_results())
    n = int(dec.n_records)
    data = StdfData(
        **tables,
        record_counts=_record_counts(dec),
        source=src.label,
        byte_order="big" if dec.big_endian else "little",
        _buf=buf,
        _offsets=None,
        _keys=None,
        _lengths=None,
    )
    offsets, keys, lengths = dec.last_index
    data._offsets, data._keys, data._lengths = offsets[:n], keys[:n], lengths[:n]
    return data


def _assemble(dec, src, run_id, fault, open_parts, result_cols) -> dict[str, pl.DataFrame]:
    run = _run_or_raise(dec, src, run_id, fault)
    notes = _notes(dec)
    wafer_ids = _wafer_ids(dec)
    die = _build_die(dec, run, wafer_ids)
    results = _build_results(result_cols, run, notes)
    return {"die": die, "results": results,
            **_run_tables(dec, src, run, fault, open_parts, die, wafer_ids, notes)}  # fmt: skip


def _run_or_raise(dec, src, run_id, fault) -> _Run:
    try:
        return _Run(dec, src, run_id)
    except StdfError:
        if fault is not None:
            raise StdfError(
                f"{fault.message}; nothing to salvage before it (no MIR record)",
                path=src.label, offset=fault.offset, record_index=fault.record_index,
            ) from None  # fmt: skip
        raise


def _run_tables(dec, src, run, fault, open_parts, die, wafer_ids, notes) -> dict[str, pl.DataFrame]:
    """runs (one row), wafers, tests and bins, once every record has been decoded."""
    counts = _exec_counts(dec)
    tests = _build_tests(dec, run, counts)
    wafers = _build_wafers(dec, run, wafer_ids, die)
    bins, check = _bins_and_check(dec, run, die, counts, wafer_ids, notes)
    status, reason = (
        ("ok", None) if fault is None else ("salvaged", _salvage_reason(fault, open_parts))
    )
    runs = _build_runs(dec, run, src, die.height, status, reason, check)
    return {"runs": runs, "wafers": wafers, "tests": tests, "bins": bins}


def _stream_pass(src: _Source, dec: _Decoder, chunk_bytes: int, hasher=None) -> _Fault | None:
    """Feed the decompressed stream to ``dec`` chunk by chunk; return the first fault or None."""
    carry = b""
    base = 0
    try:
        for block in src.stream(chunk_bytes):
            if hasher is not None:
                hasher.update(block)
            data = carry + block if carry else block
            consumed = dec.feed(np.frombuffer(data, dtype=np.uint8), base, final=False)
            carry = data[consumed:]
            base += consumed
            if dec.finished:
                return None
    except _Fault as f:
        return f
    except StdfError as exc:
        if "max_expanded_bytes" in exc.reason or not dec.salvage:
            raise
        try:
            dec.feed(np.frombuffer(carry, dtype=np.uint8), base, final=False)
        except _Fault as f:
            return f
        return _Fault(exc.reason, exc.offset, dec.n_records)
    try:
        dec.feed(np.frombuffer(carry, dtype=np.uint8), base, final=True)
    except _Fault as f:
        return f
    if dec.big_endian is None:
        return _Fault("file too short for an STDF FAR record", 0, 0)
    return None


def iter_stdf(
    source: str | os.PathLike | bytes,
    batch_rows: int = 500_000,
    errors: Errors = "raise",
    *,
    max_expanded_bytes: int | None = DEFAULT_MAX_EXPANDED_BYTES,
    chunk_bytes: int = _CHUNK_BYTES,
    source_path: str | os.PathLike | None = None,
) -> Iterator[StdfBatch]:
    """Stream an STDF file of any size as canonical batches, with bounded memory.

    The (decompressed) stream is read twice, ``chunk_bytes`` at a time: a first pass hashes it
    (``run_id``), checks every record and builds the ``die`` table (so the retest ``final`` flag
    is exact and a damaged file fails before the first batch is yielded); a second pass decodes
    the results. A batch is yielded once its results reach ``batch_rows`` rows (a part is never
    split, so a batch can be larger); the last batch carries ``runs``, ``wafers``, ``tests`` and
    ``bins``. Concatenating the batches gives what :func:`read_stdf` returns.

    Memory: about ``2 * chunk_bytes`` plus one batch plus the ``die`` table (~100 bytes a part).
    ``errors``, ``max_expanded_bytes`` and ``source_path`` are as in :func:`read_stdf`. A damaged
    file raises before the first batch (the first pass checks every record); a file whose
    bytes change between the two passes is not supported.
    """
    salvage = _check_errors(errors)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    if chunk_bytes < 1 << 16:
        raise ValueError(f"chunk_bytes must be at least 65536 (one record), got {chunk_bytes}")
    src = _Source(source, max_expanded_bytes, source_path)
    hasher = hashlib.sha256()
    first = _Decoder(src, results=False, salvage=salvage, stop_record=None)
    fault = _stream_pass(src, first, chunk_bytes, hasher)
    if fault is None:
        fault = _end_checks(first)
    if fault is not None and (not salvage or first.n_records == 0):
        _raise(src, fault)
    return _iter_batches(src, first, fault, hasher.hexdigest(), batch_rows, salvage, chunk_bytes)


def _part_groups(
    part_seq: np.ndarray, start: int, end: int, batch_rows: int
) -> list[tuple[int, int]]:
    """Split parts ``[start, end)`` into consecutive ranges of about ``batch_rows`` results."""
    if end <= start:
        return [(start, end)]
    per_part = np.bincount(part_seq - start, minlength=end - start)
    cum = np.cumsum(per_part)
    groups = []
    lo = start
    base = 0
    while lo < end:
        # first part at which the group reaches batch_rows (a large part stays whole)
        j = int(np.searchsorted(cum, base + batch_rows, side="left"))
        hi = min(max(j + 1 + start, lo + 1), end)
        groups.append((lo, hi))
        base = int(cum[hi - start - 1])
        lo = hi
    return groups


def _rows_of_parts(cols: dict[str, np.ndarray], lo: int, hi: int) -> dict[str, np.ndarray]:
    keep = (cols["part_seq"] >= lo) & (cols["part_seq"] < hi)
    return cols if keep.all() else {c: v[keep] for c, v in cols.items()}


def _iter_batches(src, first, fault, run_id, batch_rows, salvage, chunk_bytes):
    run = _run_or_raise(first, src, run_id, fault)
    wafer_ids = _wafer_ids(first)
    die = _build_die(first, run, wafer_ids)
    open_parts = int(np.count_nonzero(first.open_slot >= 0))
    notes = _notes(first)
    second = _Decoder(
        src, results=True, salvage=salvage, stop_record=first.n_records if fault else None
    )
    state = {"index": 0, "parts": 0}

    def batch(cols, end: int, last: bool, tables=None) -> StdfBatch:
        part_die = die.slice(state["parts"], end - state["parts"])
        b = StdfBatch(
            index=state["index"],
            last=last,
            first_part=state["parts"],
            die=part_die,
            results=_build_results(cols, run, notes),
            **(tables or {n: _empty(n) for n in ("runs", "wafers", "tests", "bins")}),
        )
        state["index"] += 1
        state["parts"] = end
        return b

    def generate():
        carry = b""
        base = 0
        stream = src.stream(chunk_bytes)
        done = False
        while not done:
            try:
                block = next(stream)
            except StopIteration:
                block = None
            except StdfError:  # a damaged stream: the first pass saw it and set the stop record
                block = None
            final = block is None
            data = carry + (block or b"")
            try:
                consumed = second.feed(np.frombuffer(data, dtype=np.uint8), base, final=final)
            except _Fault:  # the first pass recorded it; everything before it is decoded
                consumed = len(data)
                final = True
            carry = data[consumed:]
            base += consumed
            done = final or second.finished
            if second.closed_rows >= batch_rows and not done:
                yield from split(second.take_results(), second.next_part)
        tables = _run_tables(
            second_with_parts(), src, run, fault, open_parts, die, wafer_ids, notes
        )
        cols = second.take_results()
        if cols is not None:
            # everything but the last batch_rows-sized group of parts, then the last batch
            *head, (lo, hi) = _part_groups(cols["part_seq"], state["parts"], die.height, batch_rows)
            for a, b in head:
                yield batch(_rows_of_parts(cols, a, b), b, last=False)
            cols = _rows_of_parts(cols, lo, hi)
        yield batch(cols, die.height, last=True, tables=tables)

    def split(cols, end):
        for a, b in _part_groups(cols["part_seq"], state["parts"], end, batch_rows):
            yield batch(_rows_of_parts(cols, a, b), b, last=False)

    def second_with_parts():
        # wafers and summary records are identical in both passes; the first has the complete
        # picture when the second stopped early at a salvaged fault
        second.wafers = first.wafers
        second.summary = first.summary
        second.key_counts = first.key_counts
        second.n_records = first.n_records
        return second

    return generate()
