"""The low-level STDF writer: exact bytes, omitted fields, errors, and pystdf as an oracle."""

from __future__ import annotations

import gzip
import io
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdf_write_strategies import as_float32, record_streams

from backend_fab.io import stdf_spec as spec
from backend_fab.io.stdf_write import encode_record, write_records


def test_encode_record_exact_bytes_both_byte_orders():
    fields = {"HEAD_NUM": 1, "SITE_NUM": 3}
    assert encode_record("PIR", fields, "<") == b"\x02\x00\x05\x0a\x01\x03"
    assert encode_record("PIR", fields, ">") == b"\x00\x02\x05\x0a\x01\x03"
    ptr = {"TEST_NUM": 0x01020304, "HEAD_NUM": 1, "SITE_NUM": 2, "TEST_FLG": 0x80,
           "PARM_FLG": 0x10, "RESULT": 1.5}  # fmt: skip
    body = struct.pack(">IBBBBf", 0x01020304, 1, 2, 0x80, 0x10, 1.5)
    assert encode_record("PTR", ptr, ">") == struct.pack(">HBB", len(body), 15, 10) + body
    body = struct.pack("<IBBBBf", 0x01020304, 1, 2, 0x80, 0x10, 1.5)
    assert encode_record("PTR", ptr, "little") == struct.pack("<HBB", len(body), 15, 10) + body


def test_trailing_fields_are_omitted_and_gaps_take_missing_values():
    # MIR cut after LOT_ID: the C1/U2 fields between take their spec missing values
    rec = encode_record("MIR", {"SETUP_T": 1, "START_T": 2, "STAT_NUM": 3, "LOT_ID": "L1"}, "<")
    body = struct.pack("<IIB", 1, 2, 3) + b"  " + b" " + struct.pack("<H", 65535) + b" " + b"\x02L1"
    assert rec == struct.pack("<HBB", len(body), 1, 10) + body
    assert encode_record("EPS") == b"\x00\x00\x14\x14"
    assert encode_record("ATR", {}) == b"\x00\x00\x00\x14"


def test_arrays_counts_nibbles_and_generic_data():
    mpr = encode_record(
        "MPR",
        {"TEST_NUM": 1, "HEAD_NUM": 1, "SITE_NUM": 1, "TEST_FLG": 0, "PARM_FLG": 0,
         "RTN_STAT": [1, 2, 3], "RTN_RSLT": [0.5]},
        ">",
    )  # fmt: skip
    body = (
        struct.pack(">IBBBBHH", 1, 1, 1, 0, 0, 3, 1) + bytes([0x21, 0x03]) + struct.pack(">f", 0.5)
    )
    assert mpr == struct.pack(">HBB", len(body), 15, 15) + body
    gdr = encode_record(
        "GDR", {"GEN_DATA": [(0, None), (2, 258), (10, "ab"), (13, 9), (12, (9, b"\xff\x01"))]}, ">"
    )
    body = (
        struct.pack(">H", 5)
        + b"\x00"
        + b"\x02\x01\x02"
        + b"\x0a\x02ab"
        + b"\x0d\x09"
        + b"\x0c\x00\x09\xff\x01"
    )
    assert gdr == struct.pack(">HBB", len(body), 50, 10) + body


def test_unknown_record_types_are_written_verbatim():
    assert encode_record((180, 7), b"xyz", ">") == b"\x00\x03\xb4\x07xyz"


@pytest.mark.parametrize(
    ("rec", "fields", "match"),
    [
        ("PTR", {"TEST_NUM": 1, "BOGUS": 2}, "has no field 'BOGUS'"),
        ("PTR", {"TEST_NUM": 1, "RESULT": 1.0}, "PTR.HEAD_NUM is required"),
        ("PIR", {"HEAD_NUM": 256, "SITE_NUM": 0}, "does not fit U1"),
        ("DTR", {"TEXT_DAT": "x" * 256}, "at most 255"),
        ("DTR", {"TEXT_DAT": "\u20ac"}, "outside Latin-1"),
        ("MRR", {"FINISH_T": 1, "DISP_COD": "ab"}, "exactly one character"),
        ("PGR", {"GRP_INDX": 1, "INDX_CNT": 2, "PMR_INDX": [1]}, "says 2 elements"),
        (
            "MPR",
            {
                "TEST_NUM": 1,
                "HEAD_NUM": 1,
                "SITE_NUM": 1,
                "TEST_FLG": 0,
                "PARM_FLG": 0,
                "RTN_ICNT": 2,
                "RTN_STAT": [1, 16],
            },
            "nibbles are 0..15",
        ),
        ("GDR", {"GEN_DATA": [(9, 1)]}, "unknown GDR type code"),
        (
            "FTR",
            {"TEST_NUM": 1, "HEAD_NUM": 1, "SITE_NUM": 1, "TEST_FLG": 0, "FAIL_PIN": (17, b"\x00")},
            "17 bits need 3 bytes",
        ),
        ("DTR", {"TEXT_DAT": 5}, "expected str or bytes"),
    ],
)
def test_bad_values_raise_naming_the_field(rec, fields, match):
    with pytest.raises((ValueError, TypeError), match=match):
        encode_record(rec, fields, "<")


def test_record_past_65535_bytes_raises():
    with pytest.raises(ValueError, match="at most 65535"):
        encode_record("PGR", {"GRP_INDX": 1, "PMR_INDX": list(range(40000))}, "<")


def test_far_is_added_and_checked():
    buf = io.BytesIO()
    write_records([("DTR", {"TEXT_DAT": "hi"})], buf, ">")
    assert buf.getvalue().startswith(b"\x00\x02\x00\x0a\x01\x04")
    buf = io.BytesIO()
    write_records([("FAR", {}), ("DTR", {"TEXT_DAT": "hi"})], buf, "<")
    assert buf.getvalue().startswith(b"\x02\x00\x00\x0a\x02\x04")
    assert buf.getvalue().count(b"\x00\x0a\x02\x04") == 1
    with pytest.raises(ValueError, match="contradicts"):
        write_records([("FAR", {"CPU_TYPE": 1, "STDF_VER": 4})], io.BytesIO(), "<")
    with pytest.raises(ValueError, match="byte_order"):
        write_records([], io.BytesIO(), "middle")


def test_gz_path_is_compressed(tmp_path):
    recs = [("DTR", {"TEXT_DAT": f"line {i}"}) for i in range(100)]
    n = write_records(recs, tmp_path / "a.stdf.gz", "<")
    plain = io.BytesIO()
    assert write_records(recs, plain, "<") == n
    raw = (tmp_path / "a.stdf.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw) == plain.getvalue()


# --- pystdf as an independent oracle ------------------------------------------------------------


def _pystdf_records(data: bytes) -> list[tuple[str, dict]]:
    from pystdf.IO import Parser

    out: list[tuple[str, dict]] = []

    class Sink:
        def after_send(self, _source, data):
            rectype, fields = data
            out.append(
                (type(rectype).__name__.upper(), dict(zip(rectype.fieldNames, fields, strict=True)))
            )

    parser = Parser(inp=io.BytesIO(data))
    parser.addSink(Sink())
    parser.parse()
    return out


def _as_pystdf(field: spec.Field, value):
    """What pystdf returns for a value we wrote."""
    t = field.type
    if field.count is not None:
        if t == "N1":
            return [
                value[i] | ((value[i + 1] if i + 1 < len(value) else 0) << 4)
                for i in range(0, len(value), 2)
            ]
        if t == "Vn":
            return [_gdr_as_pystdf(code, v) for code, v in value]
        if t == "R4":
            return [as_float32(v) for v in value]
        return list(value)
    if t == "R4":
        return as_float32(value)
    if t in ("Bn",):
        return list(value)
    if t == "Dn":
        return list(value[1])
    return value


def _gdr_as_pystdf(code: int, value):
    kind = spec.GDR_TYPES[code]
    if kind == "R4":
        return as_float32(value)
    if kind == "Bn":
        return list(value)
    if kind == "Dn":
        return list(value[1])
    return value


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    stream=record_streams(ascii_only=True, gdr_pad=False, v4_2007=False, keep_counts=True),
    big=st.booleans(),
)
def test_pystdf_reads_what_we_write(stream, big):
    order = ">" if big else "<"
    buf = io.BytesIO()
    write_records(stream, buf, order)
    got = _pystdf_records(buf.getvalue())
    assert got[0] == ("FAR", {"CPU_TYPE": 1 if big else 2, "STDF_VER": 4})
    got = got[1:]
    assert [name for name, _ in got] == [name for name, _ in stream]
    for (name, values), (_, parsed) in zip(stream, got, strict=True):
        rec = spec.record_spec(name)
        for field in rec.fields:
            if field.name not in parsed:  # pystdf folds GDR.FLD_CNT into GEN_DATA
                continue
            if field.name in values:
                assert parsed[field.name] == _as_pystdf(field, values[field.name]), (
                    name,
                    field.name,
                )
            else:  # omitted: pystdf gives None ([] after a zero-length array)
                assert parsed[field.name] in (None, []), (name, field.name)
