"""Damaged STDF bytes raise StdfError and nothing else: no other exception, hang or crash.

Mutations (byte flips, inserted garbage, runs of zero bytes, deletions, truncation) of a small
hand-built file and of the first 60 kB of a real sample; every outcome must be a run whose tables
follow the schema, or a StdfError naming an offset. Each example decodes a few kB, so the test
is bounded in time.
"""

from __future__ import annotations

import pytest
from helpers import SHARED_DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_stdf_read import full_ptr, pir, prr, ptr, run

from backend_fab import schema
from backend_fab.errors import StdfError
from backend_fab.io.stdf import iter_stdf, read_stdf


def _small() -> bytes:
    body = [("WCR", {"WAFR_SIZ": 200.0, "DIE_HT": 5.0, "DIE_WID": 4.0, "WF_UNITS": 3})]
    for p in range(3):
        body += [pir(1), pir(2), full_ptr(10, 1, 0.5), full_ptr(10, 2, 0.25), ptr(11, 1, 1.0),
                 ("MPR", {"TEST_NUM": 12, "HEAD_NUM": 1, "SITE_NUM": 2, "TEST_FLG": 0,
                          "PARM_FLG": 0, "RTN_STAT": [1, 2], "RTN_RSLT": [0.5, 1.5]}),
                 ("FTR", {"TEST_NUM": 13, "HEAD_NUM": 1, "SITE_NUM": 1, "TEST_FLG": 0x80}),
                 ("GDR", {"GEN_DATA": [("U1", 3), ("B0", None), ("Cn", "x"), ("Dn", (9, b"\x01\x01"))]}),
                 ("DTR", {"TEXT_DAT": "hello"}),
                 prr(1, 1, 1, p, 0), prr(2, 2, 2, p, 1, flags=0x08)]  # fmt: skip
    body += [("TSR", {"HEAD_NUM": 255, "SITE_NUM": 0, "TEST_TYP": "P", "TEST_NUM": 10,
                      "EXEC_CNT": 6, "FAIL_CNT": 0, "ALRM_CNT": 0, "TEST_NAM": "T"}),
             ("HBR", {"HEAD_NUM": 255, "SITE_NUM": 0, "HBIN_NUM": 1, "HBIN_CNT": 3, "HBIN_PF": "P"}),
             ("PCR", {"HEAD_NUM": 255, "SITE_NUM": 0, "PART_CNT": 6})]  # fmt: skip
    return run(body)


SMALL = _small()


def _real_slice() -> bytes | None:
    path = SHARED_DATA / "stdf" / "a595.stdf"
    return path.read_bytes()[:60_000] if path.exists() else None


REAL = _real_slice()


def _check(data: bytes) -> None:
    for errors in ("raise", "salvage"):
        try:
            out = read_stdf(data, errors=errors)
        except StdfError as exc:
            assert exc.offset is None or 0 <= exc.offset <= len(data) + 4
            assert exc.record_index is None or exc.record_index >= 0
            continue
        for name, frame in out.tables().items():
            schema.validate(name, frame)
        assert out.status in ("ok", "salvaged")
        if out.status == "salvaged":
            assert out.status_reason
        for rec in ("PTR", "MPR", "GDR", "WCR"):
            out.records(rec)


@st.composite
def mutations(draw, source: bytes):
    data = bytearray(source)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "zeros", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "zeros":
            data[pos:pos] = bytes(draw(st.integers(1, 64)))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
    return bytes(data)


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(mutations(SMALL))
def test_mutated_small_file_raises_only_stdf_error(data):
    _check(data)


@pytest.mark.skipif(REAL is None, reason="../shared/data/stdf/a595.stdf is absent")
@settings(max_examples=10, suppress_health_check=[HealthCheck.too_slow])
@given(mutations(REAL or b""))
def test_mutated_real_sample_raises_only_stdf_error(data):
    _check(data)


def test_every_truncation_of_the_small_file():
    """Cut at every byte: the whole file decodes, anything shorter is a StdfError (raise)."""
    step = 7
    for cut in range(0, len(SMALL), step):
        with pytest.raises(StdfError):
            read_stdf(SMALL[:cut])
        if cut >= 6:
            try:
                data = read_stdf(SMALL[:cut], errors="salvage")
            except StdfError as exc:  # nothing worth keeping (no MIR yet)
                assert "MIR" in str(exc) or "FAR" in str(exc)
            else:
                assert data.status == "salvaged"
    assert read_stdf(SMALL).status == "ok"


@settings(max_examples=8, suppress_health_check=[HealthCheck.too_slow])
@given(mutations(SMALL))
def test_streaming_raises_only_stdf_error(data):
    try:
        for batch in iter_stdf(data, batch_rows=4, chunk_bytes=1 << 16, errors="salvage"):
            for name, frame in batch.tables().items():
                schema.validate(name, frame)
    except StdfError:
        pass
