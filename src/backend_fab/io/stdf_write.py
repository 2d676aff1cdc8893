"""STDF V4 / V4-2007 writer: any record stream, and whole runs from the canonical tables.

Two levels:

- :func:`write_records` / :func:`encode_record` encode any record of :mod:`stdf_spec` from a dict
  of field values, in either byte order, with omitted trailing fields. They serve tests that
  need exact control over the bytes (odd layouts, random streams, V4-2007 records).
- :func:`write_stdf` writes a whole run from the canonical tables (``runs``, ``wafers``, ``die``,
  ``tests``, ``results``, ``bins``, optionally ``layouts``) the way a tester does: FAR, MIR,
  WCR, per wafer WIR ... PIR / PTR ... / PRR ... WRR, then TSR, HBR/SBR, PCR, MRR. The first PTR
  of a test on a site carries its limits and units; later ones only set OPT_FLAG bits saying
  "use the default". Millions of PTR are written with numpy (fixed-size records as structured
  arrays scattered into one buffer), not a Python loop per record.

Reference: *Standard Test Data Format (STDF) Specification, Version 4* (Teradyne, 1997) and its
V4-2007 addendum.

Canonical columns -> STDF fields (the inverse of the reader's mapping, ``docs/data-model.md``):

- ``runs``: MIR.LOT_ID, PART_TYP (product), SBLOT_ID, TEST_COD (insertion), TST_TEMP
  (temperature as text), NODE_NAM (node), SERL_NUM (tester, when it differs from node),
  TSTR_TYP, JOB_NAM, JOB_REV, MODE_COD, RTST_COD, FACIL_ID, SETUP_T = START_T (start_time);
  MRR.FINISH_T (finish_time). Times are whole seconds since 1970 (U4).
- ``die``: PIR/PRR HEAD_NUM, SITE_NUM, X/Y_COORD (null -> -32768), HARD/SOFT_BIN (null ->
  65535), PART_FLG (bits 3/4 from ``passed``), NUM_TEST (null -> the part's result records),
  TEST_T (ms), PART_ID, PART_TXT; ``wafer_id`` groups parts between WIR and WRR.
- ``results``: PTR (kind P, pin -1), MPR (kind M, one record per part and test, pins in
  RTN_INDX), FTR (kind F); RESULT as R4 (null -> NaN), TEST_FLG, PARM_FLG (null test flags
  follow ``passed``).
- ``tests``: TEST_TXT, limits, specs, units and scales in the first record of each test on each
  head/site; TSR (head/site 255) with executions and fails counted from the results.
- ``bins``: HBR/SBR as given (else one per bin for all sites, counted from the die); PCR and
  WRR counts from the die; WCR from the wafers' layout columns (else ``layouts``, in mm).

Field values for :func:`encode_record` (and what :func:`backend_fab.io.stdf.read_stdf` gives back):

==============  ==========================================================================
``U*, I*, B1``  int
``R4, R8``      float
``C1``          a one-character str (or one byte)
``Cn, Sn, Cf``  str (encoded Latin-1, so every byte value survives) or bytes
``Bn``          bytes
``Dn``          bytes (bit count = 8 x length) or ``(bit_count, bytes)``
``N1``          int 0..15 (arrays: a list; packed two per byte, low nibble first)
``Vn``          a list of ``(type_code, value)`` pairs (:data:`stdf_spec.GDR_TYPES`; code 0 is
                a pad byte whose value is ignored)
arrays          a list of the element type; the count field, when not given, is the length
==============  ==========================================================================
"""

from __future__ import annotations

import datetime as _dt
import gzip
import math
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from backend_fab import schema
from backend_fab.errors import SchemaError
from backend_fab.io import stdf_spec as spec
from backend_fab.io.stdf_spec import RecordSpec

__all__ = ["encode_record", "write_records", "write_stdf"]


# --- low level: one record from a dict -----------------------------------------------------------


def _order(byte_order: str) -> str:
    spec.cpu_type_for(byte_order)  # validates
    return "<" if byte_order in ("<", "little") else ">"


def _text(value, what: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what}: {value!r} has characters outside Latin-1, which STDF cannot hold"
            ) from exc
    raise TypeError(f"{what}: expected str or bytes, got {type(value).__name__}")


def _dn(value, what: str) -> tuple[int, bytes]:
    if isinstance(value, tuple):
        nbits, data = value
        data = bytes(data)
        if not 0 <= nbits <= 8 * len(data) or len(data) != (nbits + 7) // 8:
            raise ValueError(f"{what}: {nbits} bits need {(nbits + 7) // 8} bytes, got {len(data)}")
        return int(nbits), data
    data = bytes(value)
    return 8 * len(data), data


class _Encoder:
    """Encodes the fields of one record type in one byte order."""

    def __init__(self, rec: RecordSpec, order: str):
        self.rec = rec
        self.order = order
        self.index = {f.name: i for i, f in enumerate(rec.fields)}
        # count field -> the array fields it sizes
        self.sized: dict[str, list[str]] = {}
        for f in rec.fields:
            if f.count is not None:
                self.sized.setdefault(f.count, []).append(f.name)
        self._structs = {t: struct.Struct(order + c) for t, c in spec.STRUCT_CODES.items()}
        self._u2 = self._structs["U2"]

    def _scalar(self, type_: str, value, what: str, width: int | None = None) -> bytes:
        if type_ == "C1":
            raw = _text(value, what) if not isinstance(value, int) else bytes([value])
            if len(raw) != 1:
                raise ValueError(f"{what}: C1 takes exactly one character, got {value!r}")
            return raw
        if type_ in ("Cn", "Bn"):
            raw = _text(value, what) if type_ == "Cn" else bytes(value)
            if len(raw) > 255:
                raise ValueError(f"{what}: {type_} holds at most 255 bytes, got {len(raw)}")
            return bytes([len(raw)]) + raw
        if type_ == "Sn":
            raw = _text(value, what)
            if len(raw) > 65535:
                raise ValueError(f"{what}: Sn holds at most 65535 bytes, got {len(raw)}")
            return self._u2.pack(len(raw)) + raw
        if type_ == "Cf":
            raw = _text(value, what)
            if len(raw) > width:
                raise ValueError(f"{what}: longer than its fixed width {width}: {value!r}")
            return raw.ljust(width, b" ")
        if type_ == "Dn":
            nbits, raw = _dn(value, what)
            if nbits > 65535:
                raise ValueError(f"{what}: Dn holds at most 65535 bits, got {nbits}")
            return self._u2.pack(nbits) + raw
        if type_ == "Uf":
            code = {1: "U1", 2: "U2", 4: "U4", 8: "U8"}.get(width)
            if code is None:
                raise ValueError(f"{what}: Uf width must be 1, 2, 4 or 8, got {width}")
            return self._pack(code, value, what)
        if type_ == "N1":
            v = int(value)
            if not 0 <= v <= 15:
                raise ValueError(f"{what}: a nibble is 0..15, got {value!r}")
            return bytes([v])
        return self._pack(type_, value, what)

    def _pack(self, type_: str, value, what: str) -> bytes:
        try:
            return self._structs[type_].pack(value)
        except struct.error as exc:
            raise ValueError(f"{what}: {value!r} does not fit {type_} ({exc})") from exc
        except KeyError:
            raise ValueError(f"{what}: unknown field type {type_!r}") from None

    def _gdr(self, items, what: str) -> bytes:
        out = bytearray()
        for i, item in enumerate(items):
            code, value = item
            kind = spec.GDR_TYPES.get(int(code))
            if kind is None:
                raise ValueError(f"{what}[{i}]: unknown GDR type code {code!r}")
            out.append(int(code))
            if kind == "B0":
                continue
            out += self._scalar(kind, value, f"{what}[{i}]")
        return bytes(out)

    def encode(self, values: Mapping) -> bytes:
        rec = self.rec
        name = rec.name
        unknown = [k for k in values if k not in self.index]
        if unknown:
            raise ValueError(
                f"{name} has no field {unknown[0]!r}; fields: {', '.join(rec.field_names)}"
            )
        last = -1
        for k, v in values.items():
            if v is not None:
                last = max(last, self.index[k])
        # an array given implies its count field, which comes earlier
        done: dict[str, object] = {}
        out = bytearray()
        for f in rec.fields[: last + 1]:
            what = f"{name}.{f.name}"
            v = values.get(f.name)
            if f.name in self.sized and v is None:
                lengths = {len(values[a]) for a in self.sized[f.name] if values.get(a) is not None}
                if len(lengths) > 1:
                    raise ValueError(
                        f"{what}: the arrays it counts have different lengths {lengths}"
                    )
                v = lengths.pop() if lengths else (f.missing if f.missing is not None else 0)
            if f.count is not None:
                k = int(done[f.count])
                if v is None:
                    if k:
                        raise ValueError(
                            f"{what}: {f.count}={k} but the array is not given while a later "
                            f"field is; give all {k} elements"
                        )
                    v = []
                if len(v) != k:
                    raise ValueError(f"{what}: {f.count} says {k} elements, got {len(v)}")
                width = int(done[f.size_from]) if f.size_from else None
                if f.type == "N1":
                    nibbles = [int(x) for x in v]
                    if any(not 0 <= x <= 15 for x in nibbles):
                        raise ValueError(f"{what}: nibbles are 0..15, got {nibbles}")
                    for j in range(0, k, 2):
                        lo = nibbles[j]
                        hi = nibbles[j + 1] if j + 1 < k else 0
                        out.append(lo | (hi << 4))
                elif f.type == "Vn":
                    out += self._gdr(v, what)
                else:
                    for j, x in enumerate(v):
                        out += self._scalar(f.type, x, f"{what}[{j}]", width)
                done[f.name] = v
                continue
            if v is None:
                if f.missing is None:
                    raise ValueError(
                        f"{what} is required: it has no 'missing' value and a later field is given"
                    )
                v = f.missing
            width = int(done[f.size_from]) if f.size_from else None
            out += self._scalar(f.type, v, what, width)
            done[f.name] = v
        if len(out) > 65535:
            raise ValueError(f"{name}: {len(out)} bytes of fields; a record holds at most 65535")
        return self._u2.pack(len(out)) + bytes((rec.typ, rec.sub)) + bytes(out)


_ENCODERS: dict[tuple[str, str], _Encoder] = {}


def _encoder(rec: str | tuple[int, int], order: str) -> _Encoder:
    spec_ = spec.record_spec(rec)
    key = (spec_.name, order)
    enc = _ENCODERS.get(key)
    if enc is None:
        enc = _ENCODERS[key] = _Encoder(spec_, order)
    return enc


def encode_record(
    rec: str | tuple[int, int], fields: Mapping | None = None, byte_order: str = "<"
) -> bytes:
    """One STDF record (header included) from a dict of field values.

    ``rec`` is a record name (``"PTR"``) or ``(REC_TYP, REC_SUB)``. The record ends after the last
    field given (not None): later fields are omitted, as the spec allows. An earlier field not
    given takes its spec ``missing`` value; a field that has none (a required one) raises
    ValueError. ``(REC_TYP, REC_SUB)`` of a type the spec does not know, with ``fields`` a bytes
    payload, writes that payload verbatim (to test that readers skip unknown records).
    """
    order = _order(byte_order)
    if isinstance(rec, tuple) and tuple(rec) not in spec.RECORDS_BY_KEY:
        payload = bytes(fields or b"")
        if len(payload) > 65535:
            raise ValueError(f"record {rec}: payload of {len(payload)} bytes exceeds 65535")
        typ, sub = rec
        return struct.pack(order + "HBB", len(payload), typ, sub) + payload
    return _encoder(rec, order).encode(fields or {})


def _open_out(target, compresslevel: int = 6):
    """A binary writer for a path (gzip when it ends with .gz) or an open binary buffer."""
    if isinstance(target, str | os.PathLike):
        path = Path(target)
        if path.suffix == ".gz":
            return gzip.open(path, "wb", compresslevel=compresslevel), True
        return open(path, "wb"), True
    if not hasattr(target, "write"):
        raise TypeError(f"expected a path or a writable binary buffer, got {type(target).__name__}")
    return target, False


def write_records(
    records: Iterable[tuple[str | tuple[int, int], Mapping | bytes | None]],
    path_or_buffer,
    byte_order: str = "<",
) -> int:
    """Write a stream of ``(record_name, fields)`` as STDF; returns bytes written (uncompressed).

    A FAR (CPU_TYPE from ``byte_order``: 1 big-endian, 2 little-endian; STDF_VER 4) is written
    first unless the stream starts with one; a FAR given with another CPU_TYPE raises ValueError.
    A path ending in ``.gz`` is written gzip-compressed. See :func:`encode_record` for values.
    """
    order = _order(byte_order)
    cpu = spec.cpu_type_for(order)
    out, owned = _open_out(path_or_buffer)
    written = 0
    try:
        buf = bytearray()
        first = True
        for rec, fields in records:
            if first:
                first = False
                is_far = (isinstance(rec, str) and rec.upper() == "FAR") or rec == (0, 10)
                if is_far:
                    fields = dict(fields or {})
                    given = fields.get("CPU_TYPE")
                    if given is not None and given != cpu:
                        raise ValueError(
                            f"FAR.CPU_TYPE={given} contradicts byte_order={byte_order!r} "
                            f"(CPU_TYPE {cpu})"
                        )
                    fields.setdefault("CPU_TYPE", cpu)
                    fields.setdefault("STDF_VER", 4)
                else:
                    buf += encode_record("FAR", {"CPU_TYPE": cpu, "STDF_VER": 4}, order)
            buf += encode_record(rec, fields, order)
            if len(buf) >= 1 << 20:
                out.write(buf)
                written += len(buf)
                buf = bytearray()
        if first:
            buf += encode_record("FAR", {"CPU_TYPE": cpu, "STDF_VER": 4}, order)
        out.write(buf)
        written += len(buf)
    finally:
        if owned:
            out.close()
    return written


# --- canonical tables -> one run ------------------------------------------------------------------

_RUN_TABLES = ("runs", "wafers", "die", "tests", "results", "bins")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_MAX_U4 = 2**32 - 1

# PTR OPT_FLAG bits (STDF V4, PTR): a later PTR of a test says "use the first PTR's values"
_OPT_RES_INVALID = 0x01
_OPT_RESERVED = 0x02  # reserved: the spec asks writers to set it
_OPT_NO_LO_SPEC = 0x04
_OPT_NO_HI_SPEC = 0x08
_OPT_LO_INVALID = 0x10
_OPT_HI_INVALID = 0x20
_OPT_NO_LO_LIMIT = 0x40
_OPT_NO_HI_LIMIT = 0x80
_OPT_DEFAULTS = _OPT_RES_INVALID | _OPT_RESERVED | _OPT_LO_INVALID | _OPT_HI_INVALID
_OPT_TEST_BITS = _OPT_NO_LO_SPEC | _OPT_NO_HI_SPEC | _OPT_NO_LO_LIMIT | _OPT_NO_HI_LIMIT

# FTR fields before TEST_TXT, all flagged invalid / empty (canonical tables hold none of them)
_FTR_NO_DATA = {
    "OPT_FLAG": 0xFF, "CYCL_CNT": 0, "REL_VADR": 0, "REPT_CNT": 0, "NUM_FAIL": 0, "XFAIL_AD": 0,
    "YFAIL_AD": 0, "VECT_OFF": 0, "RTN_ICNT": 0, "PGM_ICNT": 0, "FAIL_PIN": b"", "VECT_NAM": "",
    "TIME_SET": "", "OP_CODE": "",
}  # fmt: skip

# record sort key: (touchdown group, phase, position within the phase)
_PHASE_WIR, _PHASE_PIR, _PHASE_RESULT, _PHASE_PRR, _PHASE_WRR = 0, 1, 2, 3, 4
_SUB_BITS = 34
_PHASE_BITS = 3


def _key(group, phase: int, sub) -> np.ndarray:
    return (
        (np.asarray(group, np.int64) << (_SUB_BITS + _PHASE_BITS))
        | (phase << _SUB_BITS)
        | np.asarray(sub, np.int64)
    )


def _get(data, name: str):
    if isinstance(data, Mapping):
        return data.get(name)
    return getattr(data, name, None)


def _collect(frame, run_id: str | None) -> pl.DataFrame | None:
    if frame is None:
        return None
    if isinstance(frame, pl.LazyFrame):
        if run_id is not None and "run_id" in frame.collect_schema().names():
            frame = frame.filter(pl.col("run_id") == run_id)
        return frame.collect()
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"expected a polars DataFrame or LazyFrame, got {type(frame).__name__}")
    if run_id is not None and "run_id" in frame.columns:
        frame = frame.filter(pl.col("run_id") == run_id)
    return frame


def _run_frames(data, run_id: str | None) -> tuple[dict[str, pl.DataFrame], pl.DataFrame | None]:
    raw = {name: _collect(_get(data, name), run_id) for name in _RUN_TABLES}
    runs = raw["runs"]
    if runs is None or runs.height != 1:
        n = 0 if runs is None else runs.height
        hint = " (pass run_id=... to pick one)" if n > 1 else ""
        raise ValueError(
            f"write_stdf writes one run: 'runs' must have exactly one row, got {n}{hint}"
        )
    rid = runs.item(0, "run_id") if "run_id" in runs.columns else None
    rid = rid if rid is not None else "run"
    frames = {}
    for name, frame in raw.items():
        if frame is None:
            frame = schema.table(name).empty()
        if "run_id" not in frame.columns:
            frame = frame.with_columns(pl.lit(rid, pl.String).alias("run_id"))
        frame = frame.with_columns(pl.col("run_id").cast(pl.String).fill_null(rid))
        # die and results can hold millions of rows: cast them (the writer checks what it
        # relies on) rather than re-validate every key of data that came from a reader
        frames[name] = (
            _cast(name, frame) if name in ("die", "results") else schema.conform(name, frame)
        )
    for col in ("part_seq",):
        if frames["die"][col].null_count():
            raise ValueError(f"die.{col} has nulls; every part needs its part_seq")
    for col in ("part_seq", "test_num", "kind"):
        if frames["results"][col].null_count():
            raise ValueError(f"results.{col} has nulls; every result needs it")
    return frames, _collect(_get(data, "layouts"), None)


def _cast(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with exactly the columns of table ``name`` (absent ones null), cast strictly."""
    spec_ = schema.table(name)
    cols = [
        pl.col(c).cast(t, strict=True) if c in frame.columns else pl.lit(None, t).alias(c)
        for c, t in spec_.polars_schema.items()
    ]
    try:
        return frame.select(cols)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise SchemaError(f"table {name!r}: {exc}", table=name) from exc


def _seconds(ts) -> int:
    if ts is None:
        return 0
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=_dt.UTC)
    s = math.floor((ts - _EPOCH).total_seconds())
    if not 0 <= s <= _MAX_U4:
        raise ValueError(f"time {ts} is outside the STDF U4 range (1970 .. 2106)")
    return s


def _s(value) -> str:
    return "" if value is None else str(value)


def _c1(value, what: str) -> str:
    if value is None or value == "":
        return " "
    if len(value) != 1:
        raise ValueError(f"{what} is a one-character STDF field (C1), got {value!r}")
    return value


def _temperature_text(t) -> str:
    if t is None or not math.isfinite(t):
        return ""
    text = repr(float(t))
    return text[:-2] if text.endswith(".0") else text


def _mir(run: dict) -> dict:
    start = _seconds(run["start_time"])
    tester, node = run["tester"], run["node"]
    return {
        "SETUP_T": start, "START_T": start, "STAT_NUM": 1,
        "MODE_COD": _c1(run["mode_code"], "runs.mode_code"),
        "RTST_COD": _c1(run["retest_code"], "runs.retest_code"),
        "PROT_COD": " ", "BURN_TIM": spec.MISSING_U2, "CMOD_COD": " ",
        "LOT_ID": _s(run["lot_id"]), "PART_TYP": _s(run["product"]), "NODE_NAM": _s(node),
        "TSTR_TYP": _s(run["tester_type"]), "JOB_NAM": _s(run["program"]),
        "JOB_REV": _s(run["program_rev"]), "SBLOT_ID": _s(run["sublot_id"]), "OPER_NAM": "",
        "EXEC_TYP": "", "EXEC_VER": "", "TEST_COD": _s(run["insertion"]),
        "TST_TEMP": _temperature_text(run["temperature"]), "USER_TXT": "", "AUX_FILE": "",
        "PKG_TYP": "", "FAMLY_ID": "", "DATE_COD": "", "FACIL_ID": _s(run["facility"]),
        "FLOOR_ID": "", "PROC_ID": "", "OPER_FRQ": "", "SPEC_NAM": "", "SPEC_VER": "",
        "FLOW_ID": "", "SETUP_ID": "", "DSGN_REV": "", "ENG_ID": "", "ROM_COD": "",
        # the reader takes the tester's name from SERL_NUM, else NODE_NAM
        "SERL_NUM": "" if tester is None or tester == node else str(tester), "SUPR_NAM": "",
    }  # fmt: skip


def _wcr(wafers: pl.DataFrame, layouts: pl.DataFrame | None, product) -> dict | None:
    """WCR from the wafers' layout columns, else from the product's ``layouts`` row (mm)."""
    cols = ["wafer_size", "die_height", "die_width", "wafer_units", "wafer_flat", "center_x",
            "center_y", "pos_x", "pos_y"]  # fmt: skip
    with_layout = wafers.filter(pl.any_horizontal(pl.col(cols).is_not_null()))
    if with_layout.height:
        w = with_layout.row(0, named=True)
        return {
            "WAFR_SIZ": w["wafer_size"] or 0.0, "DIE_HT": w["die_height"] or 0.0,
            "DIE_WID": w["die_width"] or 0.0, "WF_UNITS": w["wafer_units"] or 0,
            "WF_FLAT": _c1(w["wafer_flat"], "wafers.wafer_flat"),
            "CENTER_X": spec.MISSING_XY if w["center_x"] is None else w["center_x"],
            "CENTER_Y": spec.MISSING_XY if w["center_y"] is None else w["center_y"],
            "POS_X": _c1(w["pos_x"], "wafers.pos_x"), "POS_Y": _c1(w["pos_y"], "wafers.pos_y"),
        }  # fmt: skip
    if layouts is None or layouts.height == 0 or "product" not in layouts.columns:
        return None
    rows = layouts.filter(pl.col("product") == product)
    if rows.height == 0:
        return None
    lay = rows.row(0, named=True)
    return {
        "WAFR_SIZ": lay.get("wafer_size_mm") or 0.0, "DIE_HT": lay.get("die_height_mm") or 0.0,
        "DIE_WID": lay.get("die_width_mm") or 0.0, "WF_UNITS": 3,  # millimetres
        "WF_FLAT": _c1(lay.get("notch"), "layouts.notch"),
        # layouts put die (0, 0) nearest the wafer centre
        "CENTER_X": 0, "CENTER_Y": 0,
        "POS_X": _c1(lay.get("pos_x"), "layouts.pos_x"), "POS_Y": _c1(lay.get("pos_y"), "layouts.pos_y"),
    }  # fmt: skip


def _latin1_pool(series: pl.Series, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one Latin-1 byte pool + int64 offsets (n + 1); null is the empty string."""
    s = series.fill_null("")
    n_bytes = s.str.len_bytes()
    too_long = n_bytes > 255
    if s.len() and (s.str.len_chars() != n_bytes).any():
        # non-ASCII: UTF-8 differs from Latin-1, encode one by one (rare in tester data)
        encoded = [_text(v, what) for v in s.to_list()]
        lengths = np.array([len(b) for b in encoded], dtype=np.int64)
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        too_long = lengths > 255
    else:
        arr = s.to_arrow()
        if not isinstance(arr, pa.LargeStringArray):
            arr = arr.cast(pa.large_string())
        arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
        offs = np.frombuffer(arr.buffers()[1], dtype=np.int64)[
            arr.offset : arr.offset + len(arr) + 1
        ]
        raw = arr.buffers()[2]
        data = (
            np.frombuffer(raw, dtype=np.uint8)[offs[0] : offs[-1]]
            if raw is not None
            else np.zeros(0, np.uint8)
        )
        lengths = np.diff(offs)
        too_long = lengths > 255
    if np.any(too_long):
        i = int(np.flatnonzero(too_long)[0])
        raise ValueError(f"{what}: {s[i]!r} is longer than 255 bytes (an STDF Cn string)")
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return data, offsets


class _Assembler:
    """Records as byte pieces with a sort key; :meth:`build` lays them out in key order."""

    def __init__(self):
        self._keys: list[np.ndarray] = []
        self._lens: list[np.ndarray] = []
        self._pieces: list[tuple] = []
        self.n = 0

    def records(self, keys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Register records (sort keys, total byte lengths); returns their record ids."""
        keys = np.asarray(keys, np.int64)
        ids = np.arange(self.n, self.n + keys.size, dtype=np.int64)
        self._keys.append(keys)
        self._lens.append(np.broadcast_to(np.asarray(lengths, np.int64), keys.shape).copy())
        self.n += keys.size
        return ids

    def piece(self, pool: np.ndarray, starts, lengths, ids: np.ndarray, within) -> None:
        """Bytes ``pool[starts[i] : starts[i] + lengths[i]]`` go ``within`` bytes into record ``ids[i]``."""
        n = ids.size
        self._pieces.append((
            np.ascontiguousarray(pool, dtype=np.uint8).reshape(-1),
            np.broadcast_to(np.asarray(starts, np.int64), (n,)),
            np.broadcast_to(np.asarray(lengths, np.int64), (n,)),
            ids,
            np.broadcast_to(np.asarray(within, np.int64), (n,)),
        ))  # fmt: skip

    def fixed(self, arr: np.ndarray, keys) -> np.ndarray:
        """Fixed-size records held in a structured array (one record per element)."""
        size = arr.dtype.itemsize
        ids = self.records(keys, size)
        self.piece(arr.view(np.uint8), np.arange(arr.size, dtype=np.int64) * size, size, ids, 0)
        return ids

    def encoded(self, blobs: list[bytes], keys) -> np.ndarray:
        """Records already encoded (bytes each)."""
        lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
        ids = self.records(keys, lengths)
        starts = np.zeros(len(blobs), np.int64)
        if len(blobs) > 1:
            np.cumsum(lengths[:-1], out=starts[1:])
        pool = np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, np.uint8)
        self.piece(pool, starts, lengths, ids, 0)
        return ids

    def build(self) -> np.ndarray:
        if not self.n:
            return np.zeros(0, np.uint8)
        keys = np.concatenate(self._keys)
        lens = np.concatenate(self._lens)
        order = np.argsort(keys, kind="stable")
        offsets = np.empty(self.n, np.int64)
        ordered = lens[order]
        offsets[order] = np.cumsum(ordered) - ordered
        out = np.empty(int(lens.sum()), dtype=np.uint8)
        for pool, starts, lengths, ids, within in self._pieces:
            _scatter(out, pool, starts, lengths, offsets[ids] + within)
        return out


def _scatter(out: np.ndarray, pool: np.ndarray, starts, lengths, dest, chunk_bytes: int = 1 << 22):
    """``out[dest[i] : dest[i] + lengths[i]] = pool[starts[i] : ...]`` for every piece.

    Pieces adjacent in both ``pool`` and ``out`` form runs copied as one slice (the PTRs of a
    part or of a touchdown are one run); many short runs go through one vectorised gather.
    """
    n = dest.size
    if n == 0:
        return
    lengths = np.broadcast_to(lengths, (n,))
    total = int(lengths.sum())
    if total == 0:
        return
    ends_src = starts[:-1] + lengths[:-1]
    ends_dst = dest[:-1] + lengths[:-1]
    cut = np.flatnonzero((starts[1:] != ends_src) | (dest[1:] != ends_dst)) + 1
    if (cut.size + 1) * 48 <= total:
        first = np.concatenate(([0], cut))
        run_len = np.add.reduceat(lengths, first)
        for a, b, ln in zip(
            starts[first].tolist(), dest[first].tolist(), run_len.tolist(), strict=True
        ):
            out[b : b + ln] = pool[a : a + ln]
        return
    ends = np.cumsum(lengths)
    a = 0
    while a < n:
        base = ends[a - 1] if a else 0
        b = int(np.searchsorted(ends, base + chunk_bytes, side="right"))
        b = max(b, a + 1)
        ln = lengths[a:b]
        size = int(ln.sum())
        if size:
            within = np.arange(size, dtype=np.int64) - np.repeat(np.cumsum(ln) - ln, ln)
            out[np.repeat(dest[a:b], ln) + within] = pool[np.repeat(starts[a:b], ln) + within]
        a = b


def _groups(hs: np.ndarray, wafer: np.ndarray, interleave: bool) -> tuple[np.ndarray, np.ndarray]:
    """Touchdown group and position in it of every part (parts in part_seq order).

    A group is a run of consecutive parts of one wafer on distinct (head, site): the parts a
    multi-site tester tests at once. Without ``interleave`` every part is its own group.
    """
    n = hs.size
    if not interleave or n == 0:
        return np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    gid = np.empty(n, dtype=np.int64)
    local = np.empty(n, dtype=np.int64)
    g, j = -1, 0
    seen: set[int] = set()
    cur = None
    for p, (key, w) in enumerate(zip(hs.tolist(), wafer.tolist(), strict=True)):
        if key in seen or w != cur or p == 0:
            g += 1
            j = 0
            seen.clear()
            cur = w
        seen.add(key)
        gid[p] = g
        local[p] = j
        j += 1
    return gid, local


def _rank_in_runs(sorted_ids: np.ndarray) -> np.ndarray:
    """0, 1, 2 ... within each run of equal values of a sorted array (O(n), no search)."""
    n = sorted_ids.size
    start = np.zeros(n, dtype=np.int64)
    if n > 1:
        new = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
        start[new] = new
        np.maximum.accumulate(start, out=start)
    return np.arange(n, dtype=np.int64) - start


def _first_duplicate(part: np.ndarray, test: np.ndarray, pin: np.ndarray) -> int:
    """Row index of the first repeated (part, test, pin), or -1.

    Tests are few: single-pin rows are counted in a parts x tests table (no sort, no hash of
    millions of rows); multi-pin (MPR) rows, usually few, go through a hash check.
    """
    single = pin < 0
    tests_u = np.sort(pl.Series(test).unique().to_numpy())
    n_cells = (int(part.max()) + 1 if part.size else 0) * max(tests_u.size, 1)
    rows = np.flatnonzero(single)
    if n_cells <= 1 << 26:
        cell = part[rows] * tests_u.size + np.searchsorted(tests_u, test[rows])
        seen_twice = np.bincount(cell, minlength=n_cells)[cell] > 1
    else:
        seen_twice = pl.DataFrame({"p": part[rows], "t": test[rows]}).is_duplicated().to_numpy()
    first = int(rows[np.argmax(seen_twice)]) if seen_twice.any() else -1
    multi = np.flatnonzero(~single)
    if multi.size:
        frame = pl.DataFrame({"p": part[multi], "t": test[multi], "pin": pin[multi]})
        dup = frame.is_duplicated().to_numpy()
        if dup.any():
            j = int(multi[np.argmax(dup)])
            first = j if first < 0 else min(first, j)
    return first


def _check_range(values: np.ndarray, lo: int, hi: int, what: str) -> None:
    if values.size and (values.min() < lo or values.max() > hi):
        bad = values[(values < lo) | (values > hi)][0]
        raise ValueError(f"{what} = {bad} is outside the STDF range {lo}..{hi}")


def _f32(values) -> np.ndarray:
    """float64 -> float32 for R4 fields; null becomes NaN."""
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def _limits_opt(test: dict | None) -> tuple[int, dict]:
    """OPT_FLAG and the optional PTR/MPR fields of a test's first record."""
    test = test or {}
    lo, hi = test.get("lo_limit"), test.get("hi_limit")
    lo_spec, hi_spec = test.get("lo_spec"), test.get("hi_spec")
    res_scale = test.get("res_scale")
    opt = _OPT_RESERVED
    if res_scale is None:
        opt |= _OPT_RES_INVALID
    if lo is None:
        opt |= _OPT_NO_LO_LIMIT
    if hi is None:
        opt |= _OPT_NO_HI_LIMIT
    if lo_spec is None:
        opt |= _OPT_NO_LO_SPEC
    if hi_spec is None:
        opt |= _OPT_NO_HI_SPEC
    fields = {
        "RES_SCAL": res_scale or 0, "LLM_SCAL": test.get("llm_scale") or 0,
        "HLM_SCAL": test.get("hlm_scale") or 0,
        "LO_LIMIT": 0.0 if lo is None else lo, "HI_LIMIT": 0.0 if hi is None else hi,
        "UNITS": _s(test.get("units")), "C_RESFMT": "", "C_LLMFMT": "", "C_HLMFMT": "",
        "LO_SPEC": 0.0 if lo_spec is None else lo_spec, "HI_SPEC": 0.0 if hi_spec is None else hi_spec,
    }  # fmt: skip
    return opt, fields


def _ptr_short_dtype(o: str) -> np.dtype:
    return np.dtype([
        ("rec_len", o + "u2"), ("rec_typ", "u1"), ("rec_sub", "u1"), ("test_num", o + "u4"),
        ("head", "u1"), ("site", "u1"), ("test_flg", "u1"), ("parm_flg", "u1"),
        ("result", o + "f4"), ("test_txt", "u1"), ("alarm_id", "u1"), ("opt_flag", "u1"),
    ])  # fmt: skip


def _prr_dtype(o: str) -> np.dtype:
    return np.dtype([
        ("rec_len", o + "u2"), ("rec_typ", "u1"), ("rec_sub", "u1"), ("head", "u1"),
        ("site", "u1"), ("part_flg", "u1"), ("num_test", o + "u2"), ("hard_bin", o + "u2"),
        ("soft_bin", o + "u2"), ("x", o + "i2"), ("y", o + "i2"), ("test_t", o + "u4"),
        ("id_len", "u1"),
    ])  # fmt: skip


class _Body:
    """WIR ... PIR / results / PRR ... WRR of one run, assembled with numpy."""

    def __init__(self, f: dict[str, pl.DataFrame], order: str, interleave: bool):
        self.f = f
        self.o = order
        self.asm = _Assembler()
        self.tests = {(r["kind"], r["test_num"]): r for r in f["tests"].iter_rows(named=True)}
        die = f["die"].sort("part_seq")
        seq = die["part_seq"].to_numpy()
        if seq.size > 1 and np.any(seq[1:] == seq[:-1]):
            dup = int(seq[1:][seq[1:] == seq[:-1]][0])
            raise ValueError(f"die: part_seq {dup} appears more than once; it identifies a part")
        self.die = die
        n = die.height
        head = die["head"].fill_null(1).cast(pl.Int64).to_numpy()
        site = die["site"].fill_null(1).cast(pl.Int64).to_numpy()
        _check_range(head, 0, 254, "die.head")  # 255 means "all heads" in summary records
        _check_range(site, 0, 255, "die.site")
        self.head, self.site = head, site
        # wafers: in order of their first part, then wafers without parts
        wid = die["wafer_id"]
        order_ids = wid.drop_nulls().unique(maintain_order=True).to_list()
        extra = [w for w in f["wafers"]["wafer_id"].to_list() if w not in set(order_ids)]
        self.wafer_ids = order_ids + extra
        ordinal = {w: i for i, w in enumerate(self.wafer_ids)}
        self.wafer = (
            wid.replace_strict(ordinal, default=-1, return_dtype=pl.Int64).to_numpy()
            if n
            else np.zeros(0, np.int64)
        )
        self.gid, self.local = _groups(head * 256 + site, self.wafer, interleave)
        self.n_groups = int(self.gid[-1]) + 1 if n else 0
        self.gsize = np.bincount(self.gid) if n else np.zeros(0, np.int64)
        self.bins = f["bins"] if f["bins"].height or not n else _bins_from_die(die)
        # good parts as a reader counts them: PRR flags, else the HBR pass/fail of the hard bin
        pass_of = (
            self.bins.filter((pl.col("kind") == "H") & pl.col("pass_fail").is_in(["P", "F"]))
            .group_by("bin")
            .agg((pl.col("pass_fail").first() == "P").alias("bin_passed"))
        )
        self.good = (
            die.select("hbin", "passed")
            .join(pass_of, left_on="hbin", right_on="bin", how="left", maintain_order="left")
            .select(pl.col("passed").fill_null(pl.col("bin_passed")).fill_null(False))
            .to_series()
            .to_numpy()
        )
        self.counts: dict[tuple[str, int], list[int]] = {}  # (kind, test) -> [exec, fail]
        self.n_results_per_part = np.zeros(n, np.int64)

    # -- parts ---------------------------------------------------------------------------------
    def parts(self) -> None:
        o, n = self.o, self.die.height
        if not n:
            return
        pir = np.zeros(n, dtype=np.dtype([("rec_len", o + "u2"), ("rec_typ", "u1"), ("rec_sub", "u1"),
                                          ("head", "u1"), ("site", "u1")]))  # fmt: skip
        pir["rec_len"], pir["rec_typ"], pir["rec_sub"] = 2, 5, 10
        pir["head"], pir["site"] = self.head, self.site
        self.asm.fixed(pir, _key(self.gid, _PHASE_PIR, self.local))

        die = self.die
        # bits 3/4 (failed / no pass-fail indication) follow `passed`, except that a part
        # flagged "no indication" keeps that flag: its `passed` came from its bin's HBR
        given = die["part_flags"].cast(pl.Int64)
        no_indication = ((given.fill_null(0) & 0x10) != 0).to_numpy()
        passed = die["passed"]
        flags = given.fill_null(0).to_numpy() & ~0x18
        flags |= np.where(passed.is_null().to_numpy() | no_indication, 0x10, 0)
        flags |= np.where(passed.fill_null(True).to_numpy() | no_indication, 0, 0x08)
        _check_range(flags, 0, 255, "die.part_flags")
        num_test = (
            die["num_tests"].cast(pl.Int64).fill_null(pl.Series(self.n_results_per_part)).to_numpy()
        )
        _check_range(num_test, 0, 65535, "die.num_tests")
        hbin = die["hbin"].cast(pl.Int64).fill_null(spec.MISSING_BIN).to_numpy()
        sbin = die["sbin"].cast(pl.Int64).fill_null(spec.MISSING_BIN).to_numpy()
        _check_range(hbin, 0, 65535, "die.hbin")
        _check_range(sbin, 0, 65535, "die.sbin")
        x = die["x"].cast(pl.Int64).fill_null(spec.MISSING_XY).to_numpy()
        y = die["y"].cast(pl.Int64).fill_null(spec.MISSING_XY).to_numpy()
        _check_range(x, -32768, 32767, "die.x")
        _check_range(y, -32768, 32767, "die.y")
        t = die["test_time_ms"].fill_null(0.0).round(0).to_numpy()
        _check_range(t, 0, _MAX_U4, "die.test_time_ms")
        id_pool, id_offs = _latin1_pool(die["part_id"], "die.part_id")
        txt_pool, txt_offs = _latin1_pool(die["part_txt"], "die.part_txt")
        id_len, txt_len = np.diff(id_offs), np.diff(txt_offs)

        prr = np.zeros(n, dtype=_prr_dtype(o))
        prr["rec_len"] = 17 + 1 + id_len + 1 + txt_len
        prr["rec_typ"], prr["rec_sub"] = 5, 20
        prr["head"], prr["site"], prr["part_flg"] = self.head, self.site, flags
        prr["num_test"], prr["hard_bin"], prr["soft_bin"] = num_test, hbin, sbin
        prr["x"], prr["y"], prr["test_t"], prr["id_len"] = x, y, t.astype(np.int64), id_len
        size = prr.dtype.itemsize
        ids = self.asm.records(_key(self.gid, _PHASE_PRR, self.local), size + id_len + 1 + txt_len)
        self.asm.piece(prr.view(np.uint8), np.arange(n, dtype=np.int64) * size, size, ids, 0)
        self.asm.piece(id_pool, id_offs[:-1], id_len, ids, size)
        txt_len_u1 = txt_len.astype(np.uint8)
        self.asm.piece(txt_len_u1, np.arange(n, dtype=np.int64), 1, ids, size + id_len)
        self.asm.piece(txt_pool, txt_offs[:-1], txt_len, ids, size + id_len + 1)

    # -- wafers --------------------------------------------------------------------------------
    def wafers(self) -> None:
        if not self.wafer_ids:
            return
        wafers = {r["wafer_id"]: r for r in self.f["wafers"].iter_rows(named=True)}
        die = self.die
        flags = die["part_flags"].fill_null(0).cast(pl.Int64).to_numpy()
        passed = self.good
        blobs, keys = [], []
        for w, wafer_id in enumerate(self.wafer_ids):
            row = wafers.get(wafer_id, {})
            sel = np.flatnonzero(self.wafer == w)
            heads = np.unique(self.head[sel])
            if sel.size:
                head = int(heads[0]) if heads.size == 1 else 255
                if row.get("head") is not None and heads.size == 1 and row["head"] == head:
                    head = int(row["head"])
                g0, g1 = int(self.gid[sel[0]]), int(self.gid[sel[-1]])
                self._check_wafer_span(w, wafer_id, head, g0, g1)
            else:
                head = int(row["head"]) if row.get("head") is not None else 1
                g0 = g1 = self.n_groups + w
            wir = {"HEAD_NUM": head, "SITE_GRP": 255, "START_T": _seconds(row.get("start_time")),
                   "WAFER_ID": wafer_id}  # fmt: skip
            wrr = {
                "HEAD_NUM": head, "SITE_GRP": 255, "FINISH_T": _seconds(row.get("finish_time")),
                "PART_CNT": sel.size, "RTST_CNT": int(np.count_nonzero(flags[sel] & 0x03)),
                "ABRT_CNT": int(np.count_nonzero(flags[sel] & 0x04)),
                "GOOD_CNT": int(np.count_nonzero(passed[sel])), "FUNC_CNT": spec.MISSING_U4,
                "WAFER_ID": wafer_id,
            }  # fmt: skip
            blobs += [encode_record("WIR", wir, self.o), encode_record("WRR", wrr, self.o)]
            keys += [_key(g0, _PHASE_WIR, 0), _key(g1, _PHASE_WRR, 0)]
        self.asm.encoded(blobs, np.array(keys, dtype=np.int64))

    def _check_wafer_span(self, w: int, wafer_id: str, head: int, g0: int, g1: int) -> None:
        """Parts of another wafer (or none) on this head inside this wafer's span cannot be told apart."""
        inside = (self.gid >= g0) & (self.gid <= g1) & (self.wafer != w)
        if head != 255:
            inside &= self.head == head
        if inside.any():
            p = int(np.flatnonzero(inside)[0])
            other = self.wafer_ids[self.wafer[p]] if self.wafer[p] >= 0 else None
            raise ValueError(
                f"die part_seq {self.die['part_seq'][p]} (wafer {other!r}, head {self.head[p]}) "
                f"lies between the first and last part of wafer {wafer_id!r} on the same head: "
                f"STDF cannot tell them apart (a WIR..WRR span holds one wafer per head)"
            )

    # -- results -------------------------------------------------------------------------------
    def results(self) -> None:
        res = self.f["results"].select(
            "part_seq", "test_num", "pin", "kind", "value", "test_flags", "parm_flags", "passed"
        )  # fmt: skip
        if res.height == 0:
            return
        seq = self.die["part_seq"].to_numpy()
        rseq = res["part_seq"].to_numpy()
        if seq.size and seq[0] == 0 and seq[-1] == seq.size - 1:  # part_seq 0..n-1 (as read)
            p = rseq
            unknown = (rseq < 0) | (rseq >= seq.size)
        else:
            p = np.searchsorted(seq, rseq)
            p_clip = np.minimum(p, max(seq.size - 1, 0))
            unknown = (
                (p >= seq.size) | (seq[p_clip] != rseq) if seq.size else np.ones(rseq.size, bool)
            )
        if unknown.any():
            raise ValueError(
                f"results: part_seq {int(rseq[np.flatnonzero(unknown)[0]])} has no row in die; "
                f"every result belongs to a part"
            )
        if p.size > 1 and np.any(p[1:] < p[:-1]):  # results of a part kept in their table order
            order = np.argsort(p, kind="stable")
            res, p = res[order], p[order]
        i = _first_duplicate(p, res["test_num"].to_numpy(), res["pin"].fill_null(-1).to_numpy())
        if i >= 0:
            raise ValueError(
                f"results: part_seq {int(seq[p[i]])}, test_num {res['test_num'][i]}, pin "
                f"{res['pin'][i]} appears more than once; one value per part, test and pin"
            )
        kinds = set(res["kind"].unique().to_list())
        if not kinds <= {"P", "M", "F"}:
            raise ValueError(
                f"results.kind must be P, M or F, got {sorted(kinds - {'P', 'M', 'F'})}"
            )
        _check_range(res["test_num"].to_numpy(), 0, _MAX_U4, "results.test_num")
        for col in ("test_flags", "parm_flags"):
            _check_range(res[col].fill_null(0).cast(pl.Int64).to_numpy(), 0, 255, f"results.{col}")
        # test flags: given, else from passed (bit 6 no pass/fail, bit 7 failed)
        passed = pl.col("passed")
        derived = pl.when(passed.is_null()).then(0x40).when(passed).then(0).otherwise(0x80)
        res = res.with_columns(
            pl.Series("p", p),
            pl.col("test_flags").cast(pl.Int64).fill_null(derived).alias("tflg"),
            pl.col("parm_flags").cast(pl.Int64).fill_null(0).alias("pflg"),
        ).drop("test_flags", "parm_flags", "passed", "part_seq")
        # one record per P/F row and per (part, test) of M rows; rank records within each part
        if "M" in kinds:
            res = res.with_columns(pl.int_range(pl.len()).alias("row"))
            single = res.filter(pl.col("kind") != "M")
            recs_m = (
                res.filter(pl.col("kind") == "M")
                .group_by("p", "test_num", maintain_order=True)
                .agg(pl.col("row", "tflg", "pflg").first(), pl.col("pin"), pl.col("value"))
            )
            first_row = np.concatenate([single["row"].to_numpy(), recs_m["row"].to_numpy()])
            rec_p = np.concatenate([single["p"].to_numpy(), recs_m["p"].to_numpy()])
            by_row = np.argsort(first_row, kind="stable")
            rank = np.empty(first_row.size, np.int64)
            sorted_p = rec_p[by_row]
            rank[by_row] = _rank_in_runs(sorted_p)
        else:
            single, recs_m, rec_p = res, None, p
            rank = _rank_in_runs(p)
        self.n_results_per_part = np.bincount(rec_p, minlength=self.die.height)
        gid, local = self.gid[rec_p], self.local[rec_p]
        sub = rank * self.gsize[gid] + local
        if sub.size and sub.max() >= 1 << _SUB_BITS:
            raise ValueError("too many results in one touchdown to order them")
        keys = _key(gid, _PHASE_RESULT, sub)
        n_single = single.height
        single_keys = keys[:n_single]
        if kinds - {"M"} == {"P"}:
            self._ptr(single, single_keys)
        elif kinds - {"M"}:
            is_p = (single["kind"] == "P").to_numpy()
            self._ptr(single.filter(is_p), single_keys[is_p])
            self._ftr(single.filter(~is_p), single_keys[~is_p])
        if recs_m is not None:
            self._mpr(recs_m, keys[n_single:])

    def untested(self) -> None:
        """Tests of the ``tests`` table without any result: one not-executed record each.

        TEST_FLG bit 4 (not executed) keeps it out of the results and the execution counts
        while it carries the test's name, limits and units, as a tester writes a skipped test.
        It goes after the first touchdown's results (outside any part when there is none).
        """
        todo = [key for key in self.tests if key not in self.counts]
        if not todo:
            return
        if self.die.height:
            head, site = int(self.head[0]), int(self.site[0])
            top = (1 << _SUB_BITS) - 1 - len(todo)
            keys = _key(0, _PHASE_RESULT, top + np.arange(len(todo)))
        else:
            head, site = 1, 1
            keys = _key(self.n_groups + len(self.wafer_ids) + 1, _PHASE_WIR, np.arange(len(todo)))
        blobs = []
        for kind, t in todo:
            info = self.tests[(kind, t)]
            base = {"TEST_NUM": t, "HEAD_NUM": head, "SITE_NUM": site, "TEST_FLG": 0x10}
            name = _s(info["test_name"])
            if kind == "F":
                blobs.append(
                    encode_record("FTR", {**base, **_FTR_NO_DATA, "TEST_TXT": name}, self.o)
                )
                continue
            opt, extra = _limits_opt(info)
            if kind == "P":
                fields = {**base, "PARM_FLG": 0, "RESULT": 0.0, "TEST_TXT": name, "ALARM_ID": "",
                          "OPT_FLAG": opt, **extra}  # fmt: skip
                blobs.append(encode_record("PTR", fields, self.o))
            else:
                fields = {**base, "PARM_FLG": 0, "RTN_ICNT": 0, "RSLT_CNT": 0, "TEST_TXT": name,
                          "ALARM_ID": "", "OPT_FLAG": opt, "START_IN": 0.0, "INCR_IN": 0.0,
                          "UNITS_IN": "", **extra}  # fmt: skip
                blobs.append(encode_record("MPR", fields, self.o))
        self.asm.encoded(blobs, keys)

    def _count(self, kind: str, test_num: np.ndarray, tflg: np.ndarray) -> None:
        """Executions and fails per test (STDF V4 TSR: EXEC_CNT, FAIL_CNT)."""
        if not test_num.size:
            return
        executed = (tflg & 0x10) == 0
        failed = executed & ((tflg & 0xC0) == 0x80)
        per_test = (
            pl.DataFrame({"t": test_num, "e": executed, "f": failed})
            .group_by("t")
            .agg(pl.col("e").sum(), pl.col("f").sum())
        )
        for t, e, fl in per_test.iter_rows():
            c = self.counts.setdefault((kind, t), [0, 0])
            c[0] += int(e)
            c[1] += int(fl)

    def _in_order(self, frame: pl.DataFrame, keys: np.ndarray):
        """Records in output order, and which is the first of its (test, head, site)."""
        if keys.size > 1 and np.any(keys[1:] < keys[:-1]):
            order = np.argsort(keys, kind="stable")
            frame, keys = frame[order], keys[order]
        p = frame["p"].to_numpy()
        test = frame["test_num"].to_numpy().astype(np.int64)
        ident = (test << 16) | (self.head[p] << 8) | self.site[p]
        first = pl.Series(ident).is_first_distinct().to_numpy()
        return frame, keys, p, test, first

    def _ptr(self, frame: pl.DataFrame, keys: np.ndarray) -> None:
        if frame.height == 0:
            return
        frame = frame.select("p", "test_num", "tflg", "pflg", "value")
        frame, keys, p, test, first = self._in_order(frame, keys)
        tflg = frame["tflg"].to_numpy()
        pflg = frame["pflg"].to_numpy()
        value = _f32(frame["value"].fill_null(np.nan).to_numpy())
        self._count("P", test, tflg)
        # first PTR of a test on a head/site: name, limits, units (the test's default data)
        blobs = []
        opt_of: dict[int, int] = {}
        for i in np.flatnonzero(first).tolist():
            t = int(test[i])
            info = self.tests.get(("P", t))
            opt, extra = _limits_opt(info)
            opt_of[t] = opt
            blobs.append(encode_record("PTR", {
                "TEST_NUM": t, "HEAD_NUM": int(self.head[p[i]]), "SITE_NUM": int(self.site[p[i]]),
                "TEST_FLG": int(tflg[i]), "PARM_FLG": int(pflg[i]), "RESULT": float(value[i]),
                "TEST_TXT": _s(info and info["test_name"]), "ALARM_ID": "", "OPT_FLAG": opt, **extra,
            }, self.o))  # fmt: skip
        self.asm.encoded(blobs, keys[first])
        later = ~first
        n = int(later.sum())
        if not n:
            return
        ptr = np.zeros(n, dtype=_ptr_short_dtype(self.o))
        ptr["rec_len"], ptr["rec_typ"], ptr["rec_sub"] = ptr.dtype.itemsize - 4, 15, 10
        ptr["test_num"] = test[later]
        ptr["head"], ptr["site"] = self.head[p[later]], self.site[p[later]]
        ptr["test_flg"], ptr["parm_flg"], ptr["result"] = tflg[later], pflg[later], value[later]
        test_bits = {t: o & _OPT_TEST_BITS for t, o in opt_of.items()}
        ptr["opt_flag"] = _OPT_DEFAULTS | (
            pl.Series(test[later])
            .replace_strict(test_bits, default=0, return_dtype=pl.Int64)
            .to_numpy()
        )
        self.asm.fixed(ptr, keys[later])

    def _ftr(self, frame: pl.DataFrame, keys: np.ndarray) -> None:
        if frame.height == 0:
            return
        frame = frame.select("p", "test_num", "tflg")
        frame, keys, p, test, first = self._in_order(frame, keys)
        tflg = frame["tflg"].to_numpy()
        self._count("F", test, tflg)
        blobs = []
        for i in np.flatnonzero(first).tolist():
            t = int(test[i])
            info = self.tests.get(("F", t))
            blobs.append(encode_record("FTR", {
                "TEST_NUM": t, "HEAD_NUM": int(self.head[p[i]]), "SITE_NUM": int(self.site[p[i]]),
                "TEST_FLG": int(tflg[i]), **_FTR_NO_DATA, "TEST_TXT": _s(info and info["test_name"]),
            }, self.o))  # fmt: skip
        self.asm.encoded(blobs, keys[first])
        later = ~first
        n = int(later.sum())
        if not n:
            return
        o = self.o
        ftr = np.zeros(n, dtype=np.dtype([("rec_len", o + "u2"), ("rec_typ", "u1"), ("rec_sub", "u1"),
                                          ("test_num", o + "u4"), ("head", "u1"), ("site", "u1"),
                                          ("test_flg", "u1")]))  # fmt: skip
        ftr["rec_len"], ftr["rec_typ"], ftr["rec_sub"] = 7, 15, 20
        ftr["test_num"], ftr["test_flg"] = test[later], tflg[later]
        ftr["head"], ftr["site"] = self.head[p[later]], self.site[p[later]]
        self.asm.fixed(ftr, keys[later])

    def _mpr(self, frame: pl.DataFrame, keys: np.ndarray) -> None:
        if frame.height == 0:
            return
        frame, keys, p, test, first = self._in_order(frame, keys)
        tflg = frame["tflg"].to_numpy()
        self._count("M", test, tflg)
        blobs = []
        opt_of: dict[int, tuple[int, dict]] = {}
        for i, row in enumerate(frame.iter_rows(named=True)):
            t = int(test[i])
            pins = row["pin"]
            if any(x is None or not 0 <= x <= 65535 for x in pins):
                raise ValueError(f"results: MPR test {t} has pin {pins}; MPR pins are 0..65535")
            values = [float(np.float32(np.nan if v is None else v)) for v in row["value"]]
            fields = {
                "TEST_NUM": t, "HEAD_NUM": int(self.head[p[i]]), "SITE_NUM": int(self.site[p[i]]),
                "TEST_FLG": int(tflg[i]), "PARM_FLG": int(row["pflg"]),
                "RTN_ICNT": len(pins), "RSLT_CNT": len(pins), "RTN_STAT": [0] * len(pins),
                "RTN_RSLT": values,
            }  # fmt: skip
            if t not in opt_of:
                opt_of[t] = _limits_opt(self.tests.get(("M", t)))
            opt, extra = opt_of[t]
            info = self.tests.get(("M", t))
            if first[i]:
                fields.update(TEST_TXT=_s(info and info["test_name"]), ALARM_ID="", OPT_FLAG=opt,
                              RES_SCAL=extra["RES_SCAL"], LLM_SCAL=extra["LLM_SCAL"],
                              HLM_SCAL=extra["HLM_SCAL"], LO_LIMIT=extra["LO_LIMIT"],
                              HI_LIMIT=extra["HI_LIMIT"], START_IN=0.0, INCR_IN=0.0, RTN_INDX=pins,
                              UNITS=extra["UNITS"], UNITS_IN="", C_RESFMT="", C_LLMFMT="",
                              C_HLMFMT="", LO_SPEC=extra["LO_SPEC"], HI_SPEC=extra["HI_SPEC"])  # fmt: skip
            else:
                # later records: default data by OPT_FLAG, but their own pin list (it may differ)
                fields.update(TEST_TXT="", ALARM_ID="",
                              OPT_FLAG=_OPT_DEFAULTS | (opt & _OPT_TEST_BITS),
                              RES_SCAL=0, LLM_SCAL=0, HLM_SCAL=0, LO_LIMIT=0.0, HI_LIMIT=0.0,
                              START_IN=0.0, INCR_IN=0.0, RTN_INDX=pins)  # fmt: skip
            blobs.append(encode_record("MPR", fields, self.o))
        self.asm.encoded(blobs, keys)


def _bins_from_die(die: pl.DataFrame) -> pl.DataFrame:
    """HBR/SBR rows for all heads and sites (255) counted from the parts; a bin passes when
    every part in it passed (a tester's bin table would say, but the die table does not)."""
    parts = []
    for kind, col in (("H", "hbin"), ("S", "sbin")):
        parts.append(
            die.filter(pl.col(col).is_not_null())
            .group_by(col)
            .agg(pl.len().cast(pl.Int64).alias("count"), pl.col("passed").all().alias("ok"))
            .select(
                pl.lit(kind).alias("kind"),
                pl.col(col).cast(pl.Int32).alias("bin"),
                pl.lit(255, pl.Int16).alias("head"),
                pl.lit(255, pl.Int16).alias("site"),
                "count",
                pl.when(pl.col("ok")).then(pl.lit("P")).otherwise(pl.lit("F")).alias("pass_fail"),
                pl.lit(None, pl.String).alias("name"),
            )
        )
    return pl.concat(parts).sort("kind", "bin")


def _summary(f: dict[str, pl.DataFrame], body: _Body, o: str) -> list[bytes]:
    """TSR per test, HBR/SBR (from ``bins``, else derived from die), PCR and MRR."""
    out = []
    names = {}
    for (kind, t), row in body.tests.items():
        names[(kind, t)] = row["test_name"]
    keys = sorted(set(body.counts) | set(body.tests), key=lambda k: (k[1], k[0]))
    for kind, t in keys:
        ex, fa = body.counts.get((kind, t), (0, 0))
        out.append(encode_record("TSR", {
            "HEAD_NUM": 255, "SITE_NUM": 255, "TEST_TYP": kind, "TEST_NUM": t, "EXEC_CNT": ex,
            "FAIL_CNT": fa, "ALRM_CNT": spec.MISSING_U4, "TEST_NAM": _s(names.get((kind, t))),
        }, o))  # fmt: skip
    die = f["die"]
    bins = body.bins
    for r in bins.iter_rows(named=True):
        k = r["kind"]
        if k not in ("H", "S"):
            raise ValueError(f"bins.kind must be H or S, got {k!r}")
        pre = "HBIN" if k == "H" else "SBIN"
        out.append(encode_record("HBR" if k == "H" else "SBR", {
            "HEAD_NUM": r["head"], "SITE_NUM": r["site"], f"{pre}_NUM": r["bin"],
            f"{pre}_CNT": r["count"], f"{pre}_PF": _c1(r["pass_fail"], "bins.pass_fail"),
            f"{pre}_NAM": _s(r["name"]),
        }, o))  # fmt: skip
    flags = die["part_flags"].fill_null(0).cast(pl.Int64)
    out.append(encode_record("PCR", {
        "HEAD_NUM": 255, "SITE_NUM": 255, "PART_CNT": die.height,
        "RTST_CNT": int(((flags & 0x03) != 0).sum()), "ABRT_CNT": int(((flags & 0x04) != 0).sum()),
        "GOOD_CNT": int(np.count_nonzero(body.good)), "FUNC_CNT": spec.MISSING_U4,
    }, o))  # fmt: skip
    run = f["runs"].row(0, named=True)
    out.append(encode_record("MRR", {"FINISH_T": _seconds(run["finish_time"]), "DISP_COD": " ",
                                     "USR_DESC": "", "EXC_DESC": ""}, o))  # fmt: skip
    return out


def write_stdf(
    data,
    path,
    byte_order: str = "<",
    *,
    run_id: str | None = None,
    interleave: bool = True,
    compresslevel: int = 6,
) -> int:
    """Write one run of canonical tables as an STDF V4 file; returns bytes written (uncompressed).

    ``data``: a mapping or an object with ``runs`` (one row, or pick one with ``run_id``),
    ``wafers``, ``die``, ``tests``, ``results``, ``bins`` (polars DataFrames or LazyFrames; absent
    ones are empty) and optionally ``layouts`` (for the WCR when the wafers carry no layout).
    ``path``: a file path (``.gz`` is written gzip-compressed) or a writable binary buffer.
    ``byte_order``: ``"<"`` little-endian (FAR.CPU_TYPE 2) or ``">"`` big-endian (CPU_TYPE 1).

    The file reads back (:func:`backend_fab.io.stdf.read_stdf`) into the same tables, up to
    what STDF stores: values and limits as float32 (R4), times in whole seconds, test times in
    whole milliseconds, derived columns (``retest_index``, ``final``, counts) recomputed.
    Parts are written in ``part_seq`` order; with ``interleave`` consecutive parts of one wafer
    on distinct sites form a touchdown (PIRs, then their results interleaved site by site, then
    PRRs), as a multi-site tester writes them. The first PTR/MPR/FTR of a test on a head/site
    carries the test's name, limits and units; later ones set OPT_FLAG "use the default" bits.
    Null results values are written as NaN (read back as null); null head/site as 1.
    """
    order = _order(byte_order)
    frames, layouts = _run_frames(data, run_id)
    run = frames["runs"].row(0, named=True)
    body = _Body(frames, order, interleave)
    body.results()  # first: PRR.NUM_TEST defaults to the part's result count
    body.untested()
    body.parts()
    body.wafers()
    cpu = spec.cpu_type_for(order)
    head = [encode_record("FAR", {"CPU_TYPE": cpu, "STDF_VER": 4}, order),
            encode_record("MIR", _mir(run), order)]  # fmt: skip
    if body.die.height:
        sites = pl.DataFrame({"head": body.head, "site": body.site}).unique().sort("head", "site")
        for (h,), grp in sites.group_by("head", maintain_order=True):
            head.append(encode_record("SDR", {"HEAD_NUM": h, "SITE_GRP": 1,
                                              "SITE_NUM": grp["site"].to_list()}, order))  # fmt: skip
    wcr = _wcr(frames["wafers"], layouts, run["product"])
    if wcr is not None:
        head.append(encode_record("WCR", wcr, order))
    out, owned = _open_out(path, compresslevel)
    try:
        written = 0
        for blob in (b"".join(head), body.asm.build(), b"".join(_summary(frames, body, order))):
            out.write(blob if isinstance(blob, bytes) else memoryview(blob))
            written += len(blob)
    finally:
        if owned:
            out.close()
    return written
