"""STDF reader on hand-built files: byte orders, omitted fields, defaults, sites, retests, faults.

Files are built record by record with ``stdf_spec.encode_record`` (the spec tables, struct
packing), so each test states exactly which bytes it feeds the reader.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import zipfile

import polars as pl
import pytest

from backend_fab import schema
from backend_fab.errors import StdfError
from backend_fab.io import stdf_spec as spec
from backend_fab.io.stdf import iter_stdf, read_stdf

# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------

MIR = {
    "SETUP_T": 1_700_000_000, "START_T": 1_700_000_060, "STAT_NUM": 1, "MODE_COD": "P",
    "RTST_COD": " ", "PROT_COD": " ", "BURN_TIM": 65535, "CMOD_COD": " ", "LOT_ID": "LOT1",
    "PART_TYP": "PRODA", "NODE_NAM": "tester7", "TSTR_TYP": "J750", "JOB_NAM": "prog",
    "JOB_REV": "B", "SBLOT_ID": "S1", "OPER_NAM": "op", "EXEC_TYP": "IG-XL", "EXEC_VER": "9",
    "TEST_COD": "WS1", "TST_TEMP": "25",
}  # fmt: skip
MRR = {"FINISH_T": 1_700_003_600}


def encode(records, order: str = "<", far: bool = True) -> bytes:
    """FAR (unless ``far`` is False) followed by ``records`` = [(name, fields), ...]."""
    out = b""
    if far:
        out += spec.encode_record(
            "FAR", {"CPU_TYPE": spec.cpu_type_for(order), "STDF_VER": 4}, order
        )
    for name, fields in records:
        out += spec.encode_record(name, fields, order)
    return out


def ptr(test, site, result, head=1, flags=0, **extra):
    return ("PTR", {"TEST_NUM": test, "HEAD_NUM": head, "SITE_NUM": site, "TEST_FLG": flags,
                    "PARM_FLG": 0, "RESULT": result, **extra})  # fmt: skip


def prr(site, hbin, sbin, x, y, head=1, flags=0, part_id="", **extra):
    return ("PRR", {"HEAD_NUM": head, "SITE_NUM": site, "PART_FLG": flags, "NUM_TEST": 1,
                    "HARD_BIN": hbin, "SOFT_BIN": sbin, "X_COORD": x, "Y_COORD": y,
                    "TEST_T": 15, "PART_ID": part_id, **extra})  # fmt: skip


def pir(site, head=1):
    return ("PIR", {"HEAD_NUM": head, "SITE_NUM": site})


def full_ptr(test, site, result, lo=0.0, hi=1.0, units="V", name="T", head=1, opt=0x0E):
    return ptr(test, site, result, head=head, TEST_TXT=name, ALARM_ID="", OPT_FLAG=opt,
               RES_SCAL=0, LLM_SCAL=0, HLM_SCAL=0, LO_LIMIT=lo, HI_LIMIT=hi, UNITS=units,
               C_RESFMT="", C_LLMFMT="", C_HLMFMT="")  # fmt: skip


def run(body, order="<", mir=None, wafer=True):
    """A complete file: FAR, MIR, [WIR], body, [WRR], MRR."""
    recs = [("MIR", mir or MIR)]
    if wafer:
        recs.append(("WIR", {"HEAD_NUM": 1, "SITE_GRP": 255, "START_T": 1_700_000_100,
                             "WAFER_ID": "W01"}))  # fmt: skip
    recs += body
    if wafer:
        n = sum(1 for r in body if r[0] == "PRR")
        recs.append(("WRR", {"HEAD_NUM": 1, "SITE_GRP": 255, "FINISH_T": 1_700_000_900,
                             "PART_CNT": n, "WAFER_ID": "W01"}))  # fmt: skip
    recs.append(("MRR", MRR))
    return encode(recs, order)


def two_site_body():
    """Two sites interleaved; site 2 finishes first; a third part on site 1."""
    return [
        pir(1), pir(2),
        full_ptr(100, 2, 0.25, name="VDD"), full_ptr(100, 1, 0.5, name="VDD"),
        ptr(200, 1, 3.0, flags=0x80), ptr(200, 2, 1.5),
        prr(2, 1, 1, 3, 4), prr(1, 5, 50, 1, 2, flags=0x08),
        pir(1), ptr(100, 1, 0.75), prr(1, 1, 1, 2, 2),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# content
# --------------------------------------------------------------------------------------------


def test_tables_follow_the_schema_and_mir():
    data = read_stdf(run(two_site_body()))
    for name, frame in data.tables().items():
        schema.validate(name, frame)
    r = data.runs.row(0, named=True)
    assert (r["product"], r["lot_id"], r["sublot_id"]) == ("PRODA", "LOT1", "S1")
    assert (r["insertion"], r["temperature"], r["program"], r["program_rev"]) == (
        "WS1",
        25.0,
        "prog",
        "B",
    )
    assert (r["tester"], r["tester_type"], r["node"], r["mode_code"]) == (
        "tester7",
        "J750",
        "tester7",
        "P",
    )
    assert r["retest_code"] is None  # a blank C1 is "no value"
    assert (
        r["start_time"].timestamp() == 1_700_000_060
        and r["finish_time"].timestamp() == 1_700_003_600
    )
    assert (r["n_parts"], r["status"], r["byte_order"], r["stdf_version"]) == (3, "ok", "little", 4)
    assert r["source_path"] is None and r["source_size"] == len(run(two_site_body()))
    for table in ("die", "results", "wafers"):
        frame = getattr(data, table)
        assert frame["product"].unique().to_list() == ["PRODA"]
        assert frame["lot_id"].unique().to_list() == ["LOT1"]
        assert frame["run_id"].unique().to_list() == [data.run_id]


def test_multi_site_interleave_assigns_results_to_their_part():
    data = read_stdf(run(two_site_body()))
    die = data.die
    # part_seq follows the PRR order: site 2 ended first
    assert die.select("part_seq", "site", "hbin", "sbin", "x", "y").rows() == [
        (0, 2, 1, 1, 3, 4), (1, 1, 5, 50, 1, 2), (2, 1, 1, 1, 2, 2)
    ]  # fmt: skip
    assert die["passed"].to_list() == [True, False, True]
    assert die["wafer_id"].to_list() == ["W01"] * 3
    res = data.results.sort("part_seq", "test_num")
    assert res.select("part_seq", "test_num", "value").rows() == [
        (0, 100, 0.25), (0, 200, 1.5), (1, 100, 0.5), (1, 200, 3.0), (2, 100, 0.75)
    ]  # fmt: skip
    assert res["passed"].to_list() == [True, True, True, False, True]
    assert res["pin"].unique().to_list() == [-1] and res["kind"].unique().to_list() == ["P"]


def test_both_byte_orders_give_the_same_tables():
    little = read_stdf(run(two_site_body(), "<"))
    big = read_stdf(run(two_site_body(), ">"))
    assert big.runs["byte_order"].item() == "big"
    assert little.run_id != big.run_id  # different bytes, different run
    for name in ("die", "results", "tests", "wafers", "bins"):
        a = getattr(little, name).drop("run_id")
        b = getattr(big, name).drop("run_id")
        assert a.equals(b), name
    for rec in ("MIR", "PTR", "PRR", "WIR"):
        assert little.records(rec).drop("byte_offset").equals(big.records(rec).drop("byte_offset"))


@pytest.mark.parametrize("order", ["<", ">"])
def test_unknown_cpu_type_is_refused(order):
    data = bytearray(run(two_site_body(), order))
    for cpu in (0, 3, 255):
        data[4] = cpu
        with pytest.raises(StdfError, match="CPU_TYPE") as info:
            read_stdf(bytes(data))
        assert info.value.offset == 4 and info.value.record_index == 0


def test_omitted_trailing_fields_take_spec_defaults():
    short_mir = {k: MIR[k] for k in list(MIR)[:9]}  # ends after CMOD_COD... LOT_ID absent
    short_mir["LOT_ID"] = "L9"
    body = [pir(1), ptr(7, 1, 1.0),
            ("PRR", {"HEAD_NUM": 1, "SITE_NUM": 1, "PART_FLG": 0, "NUM_TEST": 1, "HARD_BIN": 3})]  # fmt: skip
    data = read_stdf(run(body, mir=short_mir, wafer=False))
    r = data.runs.row(0, named=True)
    assert r["lot_id"] == "L9" and r["product"] is None and r["insertion"] == "UNKNOWN"
    assert r["temperature"] is None
    die = data.die.row(0, named=True)
    assert die["hbin"] == 3 and die["sbin"] is None  # SOFT_BIN omitted: 65535, "no bin"
    assert die["x"] is None and die["y"] is None and die["test_time_ms"] is None
    assert die["part_id"] is None and die["wafer_id"] is None
    prr_rec = data.records("PRR").row(0, named=True)
    assert (prr_rec["SOFT_BIN"], prr_rec["X_COORD"], prr_rec["PART_ID"]) == (65535, -32768, "")
    mir_rec = data.records("MIR").row(0, named=True)
    assert mir_rec["TEST_COD"] == "" and mir_rec["PART_TYP"] == ""
    ptr_rec = data.records("PTR").row(0, named=True)
    assert ptr_rec["RESULT"] == 1.0 and ptr_rec["OPT_FLAG"] is None and ptr_rec["TEST_TXT"] == ""


def test_insertion_and_temperature_fallbacks():
    for cod, flow, temp, want_ins, want_t in [
        ("", "FT1", "125C", "FT1", 125.0), ("", "", "-40", "UNKNOWN", -40.0),
        ("FT2", "X", "HOT", "FT2", None), ("", "", "", "UNKNOWN", None),
    ]:  # fmt: skip
        mir = {**MIR, "TEST_COD": cod, "TST_TEMP": temp, "USER_TXT": "", "AUX_FILE": "",
               "PKG_TYP": "", "FAMLY_ID": "", "DATE_COD": "", "FACIL_ID": "", "FLOOR_ID": "",
               "PROC_ID": "", "OPER_FRQ": "", "SPEC_NAM": "", "SPEC_VER": "", "FLOW_ID": flow}  # fmt: skip
        r = read_stdf(run([pir(1), prr(1, 1, 1, 0, 0)], mir=mir)).runs.row(0, named=True)
        assert (r["insertion"], r["temperature"]) == (want_ins, want_t)


def test_default_limits_are_carried_forward_per_test_and_site():
    body = [
        pir(1), pir(2),
        # first PTR of test 10 on each site: different limits per site
        full_ptr(10, 1, 0.5, lo=-1.0, hi=1.0, units="mA", name="IDD"),
        full_ptr(10, 2, 0.6, lo=-2.0, hi=2.0, units="mA", name="IDD"),
        # test 11: no high limit (OPT_FLAG bit 7)
        full_ptr(11, 1, 0.1, lo=0.0, hi=9.0, opt=0x8E, name="LEAK"),
        prr(1, 1, 1, 0, 0), prr(2, 1, 1, 1, 0),
        pir(1), pir(2),
        ptr(10, 1, 0.7),  # all defaults omitted
        # LO_LIMIT flagged "use default" (bit 4), HI_LIMIT overridden for this record only
        ptr(10, 2, 0.8, TEST_TXT="", ALARM_ID="", OPT_FLAG=0x1E, RES_SCAL=0, LLM_SCAL=0,
            HLM_SCAL=0, LO_LIMIT=123.0, HI_LIMIT=5.0),
        ptr(11, 1, 0.2),
        prr(1, 1, 1, 0, 1), prr(2, 1, 1, 1, 1),
        pir(2), ptr(10, 2, 0.9), prr(2, 1, 1, 2, 1),
    ]  # fmt: skip
    data = read_stdf(run(body))
    tests = data.tests.sort("test_num")
    assert tests.select("test_num", "test_name", "lo_limit", "hi_limit", "units").rows() == [
        (10, "IDD", -1.0, 1.0, "mA"), (11, "LEAK", 0.0, None, "V")
    ]  # fmt: skip
    assert tests["exec_count"].to_list() == [5, 2]
    resolved = data.records("PTR", resolve_defaults=True).filter(pl.col("TEST_NUM") == 10)
    assert resolved.select("SITE_NUM", "LO_LIMIT", "HI_LIMIT", "UNITS").rows() == [
        (1, -1.0, 1.0, "mA"), (2, -2.0, 2.0, "mA"), (1, -1.0, 1.0, "mA"),
        (2, -2.0, 5.0, "mA"),  # own HI_LIMIT, site 2's default LO_LIMIT
        (2, -2.0, 2.0, "mA"),  # the override held for its record only
    ]  # fmt: skip
    leak = data.records("PTR", resolve_defaults=True).filter(pl.col("TEST_NUM") == 11)
    assert leak["HI_LIMIT"].to_list() == [None, None] and leak["LO_LIMIT"].to_list() == [0.0, 0.0]
    raw = data.records("PTR").filter(pl.col("TEST_NUM") == 10)
    assert raw["LO_LIMIT"].to_list() == [-1.0, -2.0, None, 123.0, None]  # raw fields as written


def test_mpr_pins_and_ftr_rows():
    body = [
        pir(1),
        ("MPR", {"TEST_NUM": 30, "HEAD_NUM": 1, "SITE_NUM": 1, "TEST_FLG": 0, "PARM_FLG": 0,
                 "RTN_STAT": [1, 2, 3], "RTN_RSLT": [0.5, 1.5, 2.5], "TEST_TXT": "VOH",
                 "ALARM_ID": "", "OPT_FLAG": 0x0E, "RES_SCAL": 0, "LLM_SCAL": 0, "HLM_SCAL": 0,
                 "LO_LIMIT": 0.0, "HI_LIMIT": 3.0, "START_IN": 0.0, "INCR_IN": 0.0,
                 "RTN_INDX": [7, 8, 9], "UNITS": "V"}),
        ("FTR", {"TEST_NUM": 40, "HEAD_NUM": 1, "SITE_NUM": 1, "TEST_FLG": 0x80}),
        prr(1, 2, 2, 0, 0, flags=0x08),
        pir(1),
        # no RTN_INDX: the pins of the test's first MPR apply
        ("MPR", {"TEST_NUM": 30, "HEAD_NUM": 1, "SITE_NUM": 1, "TEST_FLG": 0, "PARM_FLG": 0,
                 "RTN_ICNT": 0, "RSLT_CNT": 2, "RTN_RSLT": [0.25, 0.75]}),
        ("FTR", {"TEST_NUM": 40, "HEAD_NUM": 1, "SITE_NUM": 1, "TEST_FLG": 0x00}),
        prr(1, 1, 1, 1, 0),
    ]  # fmt: skip
    data = read_stdf(run(body))
    res = data.results
    assert res.select("part_seq", "test_num", "pin", "kind", "value", "passed").rows() == [
        (0, 30, 7, "M", 0.5, True), (0, 30, 8, "M", 1.5, True), (0, 30, 9, "M", 2.5, True),
        (0, 40, -1, "F", None, False),
        (1, 30, 7, "M", 0.25, True), (1, 30, 8, "M", 0.75, True), (1, 40, -1, "F", None, True),
    ]  # fmt: skip
    tests = data.tests.sort("test_num")
    assert tests.select("test_num", "kind", "test_name", "hi_limit", "exec_count", "fail_count").rows() == [
        (30, "M", "VOH", 3.0, 2, 0), (40, "F", None, None, 2, 1)
    ]  # fmt: skip
    mpr = data.records("MPR")
    assert mpr["RTN_STAT"].to_list() == [[1, 2, 3], []]
    assert mpr["RTN_INDX"].to_list() == [[7, 8, 9], None]


def test_retests_supersede_by_xy_and_by_part_id():
    body = [
        pir(1), prr(1, 5, 5, 1, 1, part_id="a"),           # 0: fails
        pir(1), prr(1, 1, 1, 1, 1, flags=0x02, part_id="b"),  # 1: retest of (1,1)
        pir(1), prr(1, 1, 1, 1, 1, flags=0x02, part_id="c"),  # 2: retest of 1
        pir(1), prr(1, 1, 1, 2, 1, part_id="d"),           # 3
        pir(1), prr(1, 1, 1, 9, 9, flags=0x01, part_id="d"),  # 4: same PART_ID as 3
        pir(1), prr(1, 1, 1, 5, 5),                        # 5
        pir(1), prr(1, 1, 1, 5, 5),                        # 6: same X/Y, no flag: a new part
        pir(1), prr(1, 1, 1, 7, 7, flags=0x02),            # 7: flagged, nothing earlier
    ]  # fmt: skip
    die = read_stdf(run(body)).die
    assert die["retest_index"].to_list() == [0, 1, 2, 0, 1, 0, 0, 0]
    assert die["final"].to_list() == [False, False, True, False, True, True, True, True]


def test_wafers_layout_and_null_codes():
    body = [
        ("WCR", {"WAFR_SIZ": 200.0, "DIE_HT": 5.0, "DIE_WID": 4.0, "WF_UNITS": 3, "WF_FLAT": "D",
                 "CENTER_X": -32768, "CENTER_Y": 7, "POS_X": "R", "POS_Y": " "}),
        pir(1), prr(1, 65535, 65535, -32768, -32768), pir(1), prr(1, 1, 2, 0, 0),
    ]  # fmt: skip
    data = read_stdf(run(body))
    w = data.wafers.row(0, named=True)
    assert (w["wafer_id"], w["wafer_size"], w["die_height"], w["die_width"]) == (
        "W01",
        200.0,
        5.0,
        4.0,
    )
    assert (w["wafer_units"], w["wafer_flat"], w["center_x"], w["center_y"]) == (3, "D", None, 7)
    assert (w["pos_x"], w["pos_y"], w["part_count"], w["good_count"]) == ("R", None, 2, 2)
    assert w["start_time"].timestamp() == 1_700_000_100
    d = data.die.row(0, named=True)
    assert (d["hbin"], d["sbin"], d["x"], d["y"]) == (None, None, None, None)


def test_summary_records_are_checked_not_trusted():
    body = [
        *two_site_body(),
        ("PCR", {"HEAD_NUM": 255, "SITE_NUM": 0, "PART_CNT": 3, "RTST_CNT": 0, "ABRT_CNT": 0,
                 "GOOD_CNT": 5, "FUNC_CNT": 4294967295}),
        ("HBR", {"HEAD_NUM": 255, "SITE_NUM": 0, "HBIN_NUM": 1, "HBIN_CNT": 2, "HBIN_PF": "P",
                 "HBIN_NAM": "GOOD"}),
        ("HBR", {"HEAD_NUM": 1, "SITE_NUM": 1, "HBIN_NUM": 5, "HBIN_CNT": 4, "HBIN_PF": "F"}),
        ("TSR", {"HEAD_NUM": 255, "SITE_NUM": 0, "TEST_TYP": "P", "TEST_NUM": 100,
                 "EXEC_CNT": 3, "FAIL_CNT": 1}),
    ]  # fmt: skip
    data = read_stdf(run(body))
    check = data.summary_check
    assert data.status == "ok" and not check["ok"]
    found = {(m["record"], m["field"]): (m["stated"], m["derived"]) for m in check["mismatches"]}
    assert found == {("PCR", "GOOD_CNT"): (5, 2), ("HBR", "HBIN_CNT"): (4, 1),
                     ("TSR", "FAIL_CNT"): (1, 0)}  # fmt: skip
    assert check["n_checked"] == 9  # PCR x4 (FUNC_CNT is not derivable), HBR x2, TSR x2, WRR x1
    bins = data.bins.sort("head", "bin")
    assert bins.select("kind", "bin", "head", "site", "count", "pass_fail", "name").rows() == [
        ("H", 5, 1, 1, 4, "F", None), ("H", 1, 255, 255, 2, "P", "GOOD")
    ]  # fmt: skip


def test_bins_from_prrs_when_no_summary():
    data = read_stdf(run(two_site_body()))
    assert data.summary_check["bins_source"] == "PRR"
    assert data.bins.filter(pl.col("kind") == "H").select("bin", "count", "pass_fail").rows() == [
        (1, 2, "P"), (5, 1, "F")
    ]  # fmt: skip


def test_unknown_records_are_skipped_by_length():
    good = run(two_site_body())
    # insert a record of an unknown type (180/7) after the MIR
    cut = good.index(spec.encode_record("WIR", {"HEAD_NUM": 1, "SITE_GRP": 255,
                                                "START_T": 1_700_000_100, "WAFER_ID": "W01"}))  # fmt: skip
    odd = good[:cut] + b"\x05\x00\xb4\x07hello" + good[cut:]
    data = read_stdf(odd)
    assert data.record_counts["UNKNOWN(180,7)"] == 1
    assert data.die.drop("run_id").equals(read_stdf(good).die.drop("run_id"))
    assert any("UNKNOWN(180,7)" in n for n in data.summary_check["notes"])


def test_run_id_is_the_hash_of_decompressed_bytes(tmp_path):
    raw = run(two_site_body())
    path = tmp_path / "a.weird-name"
    path.write_bytes(gzip.compress(raw))
    data = read_stdf(path)
    assert data.run_id == hashlib.sha256(raw).hexdigest() == read_stdf(raw).run_id
    assert data.runs["source_path"].item() == str(path.resolve())
    assert data.runs["source_size"].item() == path.stat().st_size


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zip"])
def test_compressed_input_is_detected_by_magic(kind):
    raw = run(two_site_body())
    if kind == "gzip":
        packed = gzip.compress(raw)
    elif kind == "bzip2":
        packed = bz2.compress(raw)
    elif kind == "xz":
        packed = lzma.compress(raw)
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("lot.stdf", raw)
        packed = buf.getvalue()
    assert read_stdf(packed).die.equals(read_stdf(raw).die)


def test_zip_with_two_members_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.stdf", run(two_site_body()))
        zf.writestr("b.stdf", run(two_site_body()))
    with pytest.raises(StdfError, match="holds 2 files"):
        read_stdf(buf.getvalue())


def test_decompression_bomb_stops_early():
    bomb = gzip.compress(run(two_site_body()) + bytes(64 << 20), compresslevel=9)
    assert len(bomb) < 200_000
    with pytest.raises(StdfError, match="max_expanded_bytes") as info:
        read_stdf(bomb, max_expanded_bytes=4 << 20)
    assert info.value.offset == 4 << 20
    with pytest.raises(StdfError, match="max_expanded_bytes"):  # fatal even when salvaging
        read_stdf(bomb, errors="salvage", max_expanded_bytes=4 << 20)
    with pytest.raises(StdfError, match="max_expanded_bytes"):
        next(iter_stdf(bomb, max_expanded_bytes=4 << 20))


def test_streaming_batches_never_split_parts():
    body = [pir(1), pir(2)]
    for t in range(20):
        body += [ptr(t, 1, t * 0.5), ptr(t, 2, t * 0.25)]
    body += [prr(1, 1, 1, 0, 0), prr(2, 1, 1, 1, 0)]
    for p in range(30):
        body += [pir(1), *[ptr(t, 1, p + t) for t in range(10)], prr(1, 1, 1, p, 5)]
    raw = run(body)
    whole = read_stdf(raw)
    batches = list(iter_stdf(raw, batch_rows=25, chunk_bytes=1 << 16))
    assert [b.index for b in batches] == list(range(len(batches))) and len(batches) > 3
    assert batches[0].die.height == 2 and batches[0].results.height == 40  # one part pair > 25
    for b in batches:
        assert set(b.results["part_seq"].to_list()) <= set(b.die["part_seq"].to_list())
        assert b.first_part == (b.die["part_seq"].min() if b.die.height else b.first_part)
        for name, frame in b.tables().items():
            schema.validate(name, frame)
    assert pl.concat([b.results for b in batches]).equals(whole.results)
    assert pl.concat([b.die for b in batches]).equals(whole.die)
    assert batches[-1].runs.height == 1 and all(b.runs.height == 0 for b in batches[:-1])
    assert batches[-1].tests.equals(whole.tests)


def test_source_path_names_bytes():
    raw = run(two_site_body())
    data = read_stdf(raw, source_path="/data/lot1.stdf.gz")
    assert data.runs["source_path"].item() == "/data/lot1.stdf.gz"
    assert data.runs["source_size"].item() == len(raw)
    with pytest.raises(StdfError, match=r"/data/lot1\.stdf") as info:
        read_stdf(raw[:-2], source_path="/data/lot1.stdf")
    assert info.value.path == "/data/lot1.stdf"


def test_bad_arguments():
    with pytest.raises(ValueError, match="errors"):
        read_stdf(b"x", errors="ignore")
    with pytest.raises(TypeError):
        read_stdf(12)
    with pytest.raises(ValueError, match="batch_rows"):
        next(iter_stdf(b"x", batch_rows=0))


# --------------------------------------------------------------------------------------------
# damaged input: StdfError naming the file, byte offset and record index; salvage keeps the rest
# --------------------------------------------------------------------------------------------


def _fault(data: bytes, match: str) -> StdfError:
    with pytest.raises(StdfError, match=match) as info:
        read_stdf(data)
    err = info.value
    assert err.path == "<bytes>" and "<bytes>" in str(err)
    with pytest.raises(StdfError, match=match):
        for _ in iter_stdf(data, chunk_bytes=1 << 16):
            pass
    return err


def test_empty_file(tmp_path):
    path = tmp_path / "empty.stdf"
    path.write_bytes(b"")
    with pytest.raises(StdfError, match="empty file") as info:
        read_stdf(path)
    assert info.value.path == str(path) and info.value.offset == 0
    with pytest.raises(StdfError, match="cannot read"):
        read_stdf(tmp_path / "missing.stdf")


def test_missing_far():
    body = run(two_site_body())[6:]  # drop the FAR
    err = _fault(body, "first record must be a FAR")
    assert (err.offset, err.record_index) == (0, 0)
    with pytest.raises(StdfError, match="first record must be a FAR"):
        read_stdf(body, errors="salvage")  # nothing before the fault to keep


def test_truncated_last_record_and_salvage():
    good = run(two_site_body())
    cut = good[: len(good) - 2]  # inside the MRR
    err = _fault(cut, "truncated record: a MRR record")
    last_offset = len(good) - (4 + len(spec.encode_record("MRR", MRR)) - 4)
    assert err.offset == last_offset
    data = read_stdf(cut, errors="salvage")
    assert data.status == "salvaged" and "truncated record" in data.status_reason
    assert f"byte offset {last_offset}" in data.status_reason
    assert data.die.height == 3 and data.results.height == 5
    assert data.runs["finish_time"].item() is None


def test_cut_inside_a_part_drops_the_open_part_when_salvaging():
    good = run(two_site_body())
    third_pir = good.rindex(spec.encode_record("PIR", {"HEAD_NUM": 1, "SITE_NUM": 1}))
    cut = good[: third_pir + 10]  # PIR complete, the next PTR cut
    _fault(cut, "truncated record")
    data = read_stdf(cut, errors="salvage")
    assert data.die.height == 2 and data.results.height == 4
    assert "1 part(s) without PRR dropped" in data.status_reason


def test_file_ending_at_a_record_boundary_without_mrr():
    good = run(two_site_body())
    cut = good[: -len(spec.encode_record("MRR", MRR))]
    _fault(cut, "no MRR record")
    assert read_stdf(cut, errors="salvage").status == "salvaged"


def test_zero_bytes_where_a_record_should_be():
    good = run(two_site_body())
    pos = good.index(spec.encode_record("PIR", {"HEAD_NUM": 1, "SITE_NUM": 2}))
    bad = good[:pos] + bytes(64) + good[pos:]
    err = _fault(bad, "run of zero bytes")
    assert err.offset == pos
    data = read_stdf(bad, errors="salvage")
    assert data.status == "salvaged" and data.die.height == 0


def test_prr_without_pir():
    body = [pir(1), prr(1, 1, 1, 0, 0), prr(1, 1, 1, 0, 0)]
    good = run(body)
    err = _fault(good, "PRR without PIR on head 1 site 1")
    assert err.record_index == 5  # FAR MIR WIR PIR PRR [PRR]
    data = read_stdf(good, errors="salvage")
    assert data.die.height == 1 and data.status == "salvaged"


def test_impossible_rec_len_and_overrunning_fields():
    good = run(two_site_body())
    pos = good.index(spec.encode_record("PIR", {"HEAD_NUM": 1, "SITE_NUM": 2}))
    short_ptr = b"\x03\x00\x0f\x0a\x01\x02\x03"  # a PTR of 3 bytes
    err = _fault(good[:pos] + short_ptr + good[pos:], "impossible REC_LEN 3 for a PTR")
    assert err.offset == pos
    # a PTR whose TEST_TXT length byte points past the record end
    overrun = spec.encode_record("PTR", {"TEST_NUM": 1, "HEAD_NUM": 1, "SITE_NUM": 1,
                                         "TEST_FLG": 0, "PARM_FLG": 0, "RESULT": 1.0,
                                         "TEST_TXT": "abc"})  # fmt: skip
    overrun = overrun[:-1]
    overrun = bytes([overrun[0] - 0, 0]) + overrun[2:]
    overrun = (len(overrun) - 4).to_bytes(2, "little") + overrun[2:]
    _fault(good[:pos] + overrun + good[pos:], "field TEST_TXT runs past the end")


def test_garbage_bytes_appended():
    good = run(two_site_body())
    _fault(good + b"\xff\xff\x01", "truncated record")
    _fault(good + b"\x10\x00\x0f\x0a" + b"\x01" * 6, "truncated record")


def test_second_far_is_refused():
    good = run(two_site_body())
    _fault(good + good, "a second FAR")


def test_stdf_v3_is_refused():
    data = bytearray(run(two_site_body()))
    data[5] = 3
    err = _fault(bytes(data), "STDF_VER is 3")
    assert err.offset == 5
