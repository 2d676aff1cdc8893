"""STDF V4 and V4-2007 record layouts as data: one source of truth for the reader and the writer.

Reference: *Standard Test Data Format (STDF) Specification, Version 4* (Teradyne, 1997) and its
*V4-2007* addendum (scan test records VUR, PSR, NMR, CNR, SSR, CDR, STR).

Every record is a 4-byte header (``REC_LEN`` U2, ``REC_TYP`` U1, ``REC_SUB`` U1; ``REC_LEN`` counts the
bytes after the header) followed by its fields in the order listed here. The byte order of every
multi-byte number is that of ``FAR.CPU_TYPE`` (:data:`CPU_TYPES`). A record may end early: the
omitted trailing fields take their ``missing`` value (the spec's "missing/invalid data" value) or
are null where the spec defines none. PTR/MPR fields after ``OPT_FLAG`` omitted (or flagged
invalid) take the value of the first PTR/MPR of the same test instead (:class:`PtrOptFlag`).

Field type codes (``Field.type``):

==========  ==============================================================================
``U1..U8``  unsigned integer of 1, 2, 4 or 8 bytes
``I1..I4``  signed integer of 1, 2 or 4 bytes
``R4, R8``  IEEE-754 float of 4 or 8 bytes
``B1``      one byte of bit flags (an unsigned int)
``C1``      one character
``Cn``      string: U1 length then that many bytes (max 255)
``Sn``      string: U2 length then that many bytes (V4-2007)
``Cf``      fixed-length string, its length held in the field named by ``Field.size_from``
``Bn``      bytes: U1 length then that many bytes
``Dn``      bits: U2 bit count then ``ceil(count / 8)`` bytes
``N1``      a 4-bit nibble; arrays ``k x N1`` pack two per byte, low nibble first
``Uf``      unsigned integer whose width (1, 2, 4 or 8 bytes) is held in ``Field.size_from`` (STR)
``Vn``      GDR generic datum: one U1 type code (:data:`GDR_TYPES`) then a value of that type
==========  ==============================================================================

An array field (``k x TYPE``) has ``Field.count`` set to the name of the field holding ``k``.
Strings are decoded as Latin-1 (every byte is a character), so arbitrary bytes survive a round trip.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag

__all__ = [
    "CPU_TYPES",
    "GDR_TYPES",
    "HEADER_SIZE",
    "MISSING_BIN",
    "MISSING_U2",
    "MISSING_U4",
    "MISSING_XY",
    "RECORDS",
    "RECORDS_BY_KEY",
    "SCALAR_SIZES",
    "STRUCT_CODES",
    "V4_2007_RECORDS",
    "V4_RECORDS",
    "Field",
    "FtrOptFlag",
    "ParmFlag",
    "PartFlag",
    "PtrOptFlag",
    "RecordSpec",
    "TestFlag",
    "TsrOptFlag",
    "byte_order_for_cpu",
    "cpu_type_for",
    "encode_record",
    "record_spec",
]

#: Bytes of the record header (REC_LEN U2, REC_TYP U1, REC_SUB U1).
HEADER_SIZE = 4

#: FAR.CPU_TYPE -> struct byte-order character. 0 (DEC VAX, VAX floats) is not supported.
CPU_TYPES: dict[int, str] = {1: ">", 2: "<"}

#: "No coordinate" in PRR.X_COORD / Y_COORD and WCR.CENTER_X / CENTER_Y.
MISSING_XY = -32768
#: "No bin" in PRR.SOFT_BIN (and HARD_BIN where a tester writes it).
MISSING_BIN = 65535
MISSING_U2 = 65535
#: "Not given" in the U4 counts of PCR, WRR and TSR.
MISSING_U4 = 4294967295

#: Byte size of every fixed-size scalar type code.
SCALAR_SIZES: dict[str, int] = {
    "U1": 1, "U2": 2, "U4": 4, "U8": 8,
    "I1": 1, "I2": 2, "I4": 4, "I8": 8,
    "R4": 4, "R8": 8, "B1": 1, "C1": 1,
}  # fmt: skip

#: ``struct`` format character of every fixed-size scalar type code (prefix a byte order).
STRUCT_CODES: dict[str, str] = {
    "U1": "B", "U2": "H", "U4": "I", "U8": "Q",
    "I1": "b", "I2": "h", "I4": "i", "I8": "q",
    "R4": "f", "R8": "d", "B1": "B", "C1": "c",
}  # fmt: skip

#: GDR ``Vn`` type codes -> the type of the value that follows (``B0`` = one pad byte, no value).
GDR_TYPES: dict[int, str] = {
    0: "B0", 1: "U1", 2: "U2", 3: "U4", 4: "I1", 5: "I2", 6: "I4",
    7: "R4", 8: "R8", 10: "Cn", 11: "Bn", 12: "Dn", 13: "N1",
}  # fmt: skip


class PartFlag(IntFlag):
    """PRR.PART_FLG bits (spec V4, PRR)."""

    SUPERSEDES_PART_ID = 0x01  #: retest: supersedes an earlier part with the same PART_ID
    SUPERSEDES_XY = 0x02  #: retest: supersedes an earlier part with the same X_COORD/Y_COORD
    ABNORMAL_END = 0x04  #: testing ended abnormally
    FAILED = 0x08  #: the part failed (meaningful only when NO_PASS_FAIL is clear)
    NO_PASS_FAIL = 0x10  #: no pass/fail indication


class TestFlag(IntFlag):
    """PTR/MPR/FTR TEST_FLG bits."""

    ALARM = 0x01
    RESULT_INVALID = 0x02  #: RESULT is not valid
    UNRELIABLE = 0x04
    TIMEOUT = 0x08
    NOT_EXECUTED = 0x10  #: test not executed (a PTR that only carries defaults sets it)
    ABORTED = 0x20
    NO_PASS_FAIL = 0x40  #: completed without pass/fail indication
    FAILED = 0x80  #: test failed (meaningful only when NO_PASS_FAIL is clear)


class ParmFlag(IntFlag):
    """PTR/MPR PARM_FLG bits."""

    SCALE_ERROR = 0x01
    DRIFT_ERROR = 0x02
    OSCILLATION = 0x04
    ABOVE_HIGH_LIMIT = 0x08
    BELOW_LOW_LIMIT = 0x10
    PASSED_ALTERNATE_LIMITS = 0x20
    LO_LIMIT_INCLUSIVE = 0x40  #: low limit comparison is >= (else >)
    HI_LIMIT_INCLUSIVE = 0x80  #: high limit comparison is <= (else <)


class PtrOptFlag(IntFlag):
    """PTR/MPR OPT_FLAG bits. "Invalid" bits mean "use the default from the first record"."""

    RES_SCAL_INVALID = 0x01  #: RES_SCAL invalid: use the first record's
    START_IN_INVALID = 0x02  #: MPR: START_IN and INCR_IN invalid (PTR: reserved, set to 1)
    NO_LO_SPEC = 0x04  #: no low specification limit
    NO_HI_SPEC = 0x08  #: no high specification limit
    LO_LIMIT_INVALID = 0x10  #: LO_LIMIT (and LLM_SCAL) invalid: use the first record's
    HI_LIMIT_INVALID = 0x20  #: HI_LIMIT (and HLM_SCAL) invalid: use the first record's
    NO_LO_LIMIT = 0x40  #: this test has no low limit
    NO_HI_LIMIT = 0x80  #: this test has no high limit


class FtrOptFlag(IntFlag):
    """FTR.OPT_FLAG bits: a set bit marks the field invalid."""

    CYCL_CNT_INVALID = 0x01
    REL_VADR_INVALID = 0x02
    REPT_CNT_INVALID = 0x04
    NUM_FAIL_INVALID = 0x08
    FAIL_AD_INVALID = 0x10  #: XFAIL_AD and YFAIL_AD invalid
    VECT_OFF_INVALID = 0x20


class TsrOptFlag(IntFlag):
    """TSR.OPT_FLAG bits: a set bit marks the field invalid."""

    TEST_MIN_INVALID = 0x01
    TEST_MAX_INVALID = 0x02
    TEST_TIM_INVALID = 0x04
    TST_SUMS_INVALID = 0x10
    TST_SQRS_INVALID = 0x20


@dataclass(frozen=True)
class Field:
    """One field of a record: spec name, type code, array count field, missing value."""

    name: str
    type: str
    #: For an array field ``k x TYPE``: the name of the earlier field that holds ``k``.
    count: str | None = None
    #: The spec's missing/invalid value, used when the field is omitted (None: null).
    missing: object = None
    #: For ``Cf`` and ``Uf``: the name of the earlier field holding the byte width.
    size_from: str | None = None

    @property
    def is_array(self) -> bool:
        return self.count is not None

    @property
    def fixed_size(self) -> int | None:
        """Bytes of a scalar of fixed size, None for variable-size types and arrays."""
        if self.count is not None:
            return None
        return SCALAR_SIZES.get(self.type)


@dataclass(frozen=True)
class RecordSpec:
    """One record type: name, (REC_TYP, REC_SUB), fields in file order."""

    name: str
    typ: int
    sub: int
    fields: tuple[Field, ...]
    description: str
    #: "V4" or "V4-2007".
    version: str = "V4"
    #: Bytes of the leading fields without a missing value: a shorter REC_LEN is malformed.
    min_len: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return (self.typ, self.sub)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}; fields: {', '.join(self.field_names)}")


def _f(name: str, type_: str, missing: object = None, *, count: str | None = None,
       size_from: str | None = None) -> Field:  # fmt: skip
    return Field(name, type_, count=count, missing=missing, size_from=size_from)


def _cn(*names: str) -> tuple[Field, ...]:
    return tuple(Field(n, "Cn", missing="") for n in names)


_U4M = MISSING_U4

_SPECS: tuple[RecordSpec, ...] = (
    RecordSpec("FAR", 0, 10, (_f("CPU_TYPE", "U1"), _f("STDF_VER", "U1")),
               "File Attributes Record: byte order and STDF version; first in every file.",
               min_len=2),
    RecordSpec("ATR", 0, 20, (_f("MOD_TIM", "U4"), _f("CMD_LINE", "Cn", "")),
               "Audit Trail Record: a program that modified the file."),
    RecordSpec("VUR", 0, 30, (_f("UPD_CNT", "U1", 0), _f("UPD_NAM", "Cn", count="UPD_CNT")),
               "Version Update Record: the V4 updates the file follows (e.g. 'V4-2007').",
               version="V4-2007"),
    RecordSpec("MIR", 1, 10, (
        _f("SETUP_T", "U4"), _f("START_T", "U4"), _f("STAT_NUM", "U1"),
        _f("MODE_COD", "C1", " "), _f("RTST_COD", "C1", " "), _f("PROT_COD", "C1", " "),
        _f("BURN_TIM", "U2", MISSING_U2), _f("CMOD_COD", "C1", " "),
        *_cn("LOT_ID", "PART_TYP", "NODE_NAM", "TSTR_TYP", "JOB_NAM", "JOB_REV", "SBLOT_ID",
             "OPER_NAM", "EXEC_TYP", "EXEC_VER", "TEST_COD", "TST_TEMP", "USER_TXT", "AUX_FILE",
             "PKG_TYP", "FAMLY_ID", "DATE_COD", "FACIL_ID", "FLOOR_ID", "PROC_ID", "OPER_FRQ",
             "SPEC_NAM", "SPEC_VER", "FLOW_ID", "SETUP_ID", "DSGN_REV", "ENG_ID", "ROM_COD",
             "SERL_NUM", "SUPR_NAM"),
    ), "Master Information Record: lot, product, tester, program of the run."),
    RecordSpec("MRR", 1, 20, (
        _f("FINISH_T", "U4"), _f("DISP_COD", "C1", " "), *_cn("USR_DESC", "EXC_DESC"),
    ), "Master Results Record: end of the run; last in every file."),
    RecordSpec("PCR", 1, 30, (
        _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("PART_CNT", "U4"),
        _f("RTST_CNT", "U4", _U4M), _f("ABRT_CNT", "U4", _U4M), _f("GOOD_CNT", "U4", _U4M),
        _f("FUNC_CNT", "U4", _U4M),
    ), "Part Count Record: part counts per head/site (HEAD_NUM 255 = all heads and sites)."),
    RecordSpec("HBR", 1, 40, (
        _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("HBIN_NUM", "U2"), _f("HBIN_CNT", "U4"),
        _f("HBIN_PF", "C1", " "), _f("HBIN_NAM", "Cn", ""),
    ), "Hardware Bin Record: parts per hard bin per head/site (255 = all)."),
    RecordSpec("SBR", 1, 50, (
        _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("SBIN_NUM", "U2"), _f("SBIN_CNT", "U4"),
        _f("SBIN_PF", "C1", " "), _f("SBIN_NAM", "Cn", ""),
    ), "Software Bin Record: parts per soft bin per head/site (255 = all)."),
    RecordSpec("PMR", 1, 60, (
        _f("PMR_INDX", "U2"), _f("CHAN_TYP", "U2", 0), *_cn("CHAN_NAM", "PHY_NAM", "LOG_NAM"),
        _f("HEAD_NUM", "U1", 1), _f("SITE_NUM", "U1", 1),
    ), "Pin Map Record: a tester channel and its physical and logical pin names."),
    RecordSpec("PGR", 1, 62, (
        _f("GRP_INDX", "U2"), _f("GRP_NAM", "Cn", ""), _f("INDX_CNT", "U2", 0),
        _f("PMR_INDX", "U2", count="INDX_CNT"),
    ), "Pin Group Record: a named group of PMR pins."),
    RecordSpec("PLR", 1, 63, (
        _f("GRP_CNT", "U2", 0), _f("GRP_INDX", "U2", count="GRP_CNT"),
        _f("GRP_MODE", "U2", count="GRP_CNT"), _f("GRP_RADX", "U1", count="GRP_CNT"),
        _f("PGM_CHAR", "Cn", count="GRP_CNT"), _f("RTN_CHAR", "Cn", count="GRP_CNT"),
        _f("PGM_CHAL", "Cn", count="GRP_CNT"), _f("RTN_CHAL", "Cn", count="GRP_CNT"),
    ), "Pin List Record: display modes and radixes of pins and groups."),
    RecordSpec("RDR", 1, 70, (
        _f("NUM_BINS", "U2", 0), _f("RTST_BIN", "U2", count="NUM_BINS"),
    ), "Retest Data Record: the hard bins being retested (NUM_BINS 0 = all)."),
    RecordSpec("SDR", 1, 80, (
        _f("HEAD_NUM", "U1"), _f("SITE_GRP", "U1"), _f("SITE_CNT", "U1", 0),
        _f("SITE_NUM", "U1", count="SITE_CNT"),
        *_cn("HAND_TYP", "HAND_ID", "CARD_TYP", "CARD_ID", "LOAD_TYP", "LOAD_ID", "DIB_TYP",
             "DIB_ID", "CABL_TYP", "CABL_ID", "CONT_TYP", "CONT_ID", "LASR_TYP", "LASR_ID",
             "EXTR_TYP", "EXTR_ID"),
    ), "Site Description Record: handler/prober, probe card, load board of a site group."),
    RecordSpec("PSR", 1, 90, (
        _f("CONT_FLG", "B1", 0), _f("PSR_INDX", "U2"), _f("PSR_NAM", "Cn", ""),
        _f("OPT_FLG", "B1", 0xFF), _f("TOTP_CNT", "U2", 0), _f("LOCP_CNT", "U2", 0),
        _f("PAT_BGN", "U8", count="LOCP_CNT"), _f("PAT_END", "U8", count="LOCP_CNT"),
        _f("PAT_FILE", "Cn", count="LOCP_CNT"), _f("PAT_LBL", "Cn", count="LOCP_CNT"),
        _f("FILE_UID", "Cn", count="LOCP_CNT"), _f("ATPG_DSC", "Cn", count="LOCP_CNT"),
        _f("SRC_ID", "Cn", count="LOCP_CNT"),
    ), "Pattern Sequence Record: the patterns of a scan test.", version="V4-2007"),
    RecordSpec("NMR", 1, 91, (
        _f("CONT_FLG", "B1", 0), _f("TOTM_CNT", "U2", 0), _f("LOCM_CNT", "U2", 0),
        _f("PMR_INDX", "U2", count="LOCM_CNT"), _f("ATPG_NAM", "Cn", count="LOCM_CNT"),
    ), "Name Map Record: PMR index -> ATPG signal name.", version="V4-2007"),
    RecordSpec("CNR", 1, 92, (
        _f("CHN_NUM", "U2"), _f("BIT_POS", "U4"), _f("CELL_NAM", "Sn", ""),
    ), "Cell Name Record: scan cell name of a chain bit.", version="V4-2007"),
    RecordSpec("SSR", 1, 93, (
        _f("SSR_NAM", "Cn", ""), _f("CHN_CNT", "U2", 0), _f("CHN_LIST", "U2", count="CHN_CNT"),
    ), "Scan Structure Record: the scan chains of a design.", version="V4-2007"),
    RecordSpec("CDR", 1, 94, (
        _f("CONT_FLG", "B1", 0), _f("CDR_INDX", "U2"), _f("CHN_NAM", "Cn", ""),
        _f("CHN_LEN", "U4", 0), _f("SIN_PIN", "U2", 0), _f("SOUT_PIN", "U2", 0),
        _f("MSTR_CNT", "U1", 0), _f("M_CLKS", "U2", count="MSTR_CNT"),
        _f("SLAV_CNT", "U1", 0), _f("S_CLKS", "U2", count="SLAV_CNT"),
        _f("INV_VAL", "U1", 255), _f("LST_CNT", "U2", 0), _f("CELL_LST", "Sn", count="LST_CNT"),
    ), "Chain Description Record: one scan chain.", version="V4-2007"),
    RecordSpec("WIR", 2, 10, (
        _f("HEAD_NUM", "U1"), _f("SITE_GRP", "U1", 255), _f("START_T", "U4"),
        _f("WAFER_ID", "Cn", ""),
    ), "Wafer Information Record: start of a wafer on a head."),
    RecordSpec("WRR", 2, 20, (
        _f("HEAD_NUM", "U1"), _f("SITE_GRP", "U1", 255), _f("FINISH_T", "U4"),
        _f("PART_CNT", "U4"), _f("RTST_CNT", "U4", _U4M), _f("ABRT_CNT", "U4", _U4M),
        _f("GOOD_CNT", "U4", _U4M), _f("FUNC_CNT", "U4", _U4M),
        *_cn("WAFER_ID", "FABWF_ID", "FRAME_ID", "MASK_ID", "USR_DESC", "EXC_DESC"),
    ), "Wafer Results Record: end of a wafer with its part counts."),
    RecordSpec("WCR", 2, 30, (
        _f("WAFR_SIZ", "R4", 0.0), _f("DIE_HT", "R4", 0.0), _f("DIE_WID", "R4", 0.0),
        _f("WF_UNITS", "U1", 0), _f("WF_FLAT", "C1", " "), _f("CENTER_X", "I2", MISSING_XY),
        _f("CENTER_Y", "I2", MISSING_XY), _f("POS_X", "C1", " "), _f("POS_Y", "C1", " "),
    ), "Wafer Configuration Record: wafer size, die size, units, flat, centre, axis directions."),
    RecordSpec("PIR", 5, 10, (_f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1")),
               "Part Information Record: a part starts on a head/site.", min_len=2),
    RecordSpec("PRR", 5, 20, (
        _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("PART_FLG", "B1"), _f("NUM_TEST", "U2"),
        _f("HARD_BIN", "U2"), _f("SOFT_BIN", "U2", MISSING_BIN), _f("X_COORD", "I2", MISSING_XY),
        _f("Y_COORD", "I2", MISSING_XY), _f("TEST_T", "U4", 0), _f("PART_ID", "Cn", ""),
        _f("PART_TXT", "Cn", ""), _f("PART_FIX", "Bn", b""),
    ), "Part Results Record: a part ends on a head/site with its bins and coordinates.",
        min_len=7),
    RecordSpec("TSR", 10, 30, (
        _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("TEST_TYP", "C1", " "),
        _f("TEST_NUM", "U4"), _f("EXEC_CNT", "U4", _U4M), _f("FAIL_CNT", "U4", _U4M),
        _f("ALRM_CNT", "U4", _U4M), *_cn("TEST_NAM", "SEQ_NAME", "TEST_LBL"),
        _f("OPT_FLAG", "B1", 0xFF), _f("TEST_TIM", "R4"), _f("TEST_MIN", "R4"),
        _f("TEST_MAX", "R4"), _f("TST_SUMS", "R4"), _f("TST_SQRS", "R4"),
    ), "Test Synopsis Record: execution and fail counts of a test per head/site (255 = all)."),
    RecordSpec("PTR", 15, 10, (
        _f("TEST_NUM", "U4"), _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("TEST_FLG", "B1"),
        _f("PARM_FLG", "B1"), _f("RESULT", "R4"), _f("TEST_TXT", "Cn", ""),
        _f("ALARM_ID", "Cn", ""), _f("OPT_FLAG", "B1"), _f("RES_SCAL", "I1"),
        _f("LLM_SCAL", "I1"), _f("HLM_SCAL", "I1"), _f("LO_LIMIT", "R4"), _f("HI_LIMIT", "R4"),
        _f("UNITS", "Cn"), _f("C_RESFMT", "Cn"), _f("C_LLMFMT", "Cn"), _f("C_HLMFMT", "Cn"),
        _f("LO_SPEC", "R4"), _f("HI_SPEC", "R4"),
    ), "Parametric Test Record: one measured value of a part.", min_len=7),
    RecordSpec("MPR", 15, 15, (
        _f("TEST_NUM", "U4"), _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("TEST_FLG", "B1"),
        _f("PARM_FLG", "B1"), _f("RTN_ICNT", "U2", 0), _f("RSLT_CNT", "U2", 0),
        _f("RTN_STAT", "N1", count="RTN_ICNT"), _f("RTN_RSLT", "R4", count="RSLT_CNT"),
        _f("TEST_TXT", "Cn", ""), _f("ALARM_ID", "Cn", ""), _f("OPT_FLAG", "B1"),
        _f("RES_SCAL", "I1"), _f("LLM_SCAL", "I1"), _f("HLM_SCAL", "I1"), _f("LO_LIMIT", "R4"),
        _f("HI_LIMIT", "R4"), _f("START_IN", "R4"), _f("INCR_IN", "R4"),
        _f("RTN_INDX", "U2", count="RTN_ICNT"), _f("UNITS", "Cn"), _f("UNITS_IN", "Cn"),
        _f("C_RESFMT", "Cn"), _f("C_LLMFMT", "Cn"), _f("C_HLMFMT", "Cn"), _f("LO_SPEC", "R4"),
        _f("HI_SPEC", "R4"),
    ), "Multiple-Result Parametric Record: one value per pin of a part.", min_len=7),
    RecordSpec("FTR", 15, 20, (
        _f("TEST_NUM", "U4"), _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("TEST_FLG", "B1"),
        _f("OPT_FLAG", "B1", 0xFF), _f("CYCL_CNT", "U4", 0), _f("REL_VADR", "U4", 0),
        _f("REPT_CNT", "U4", 0), _f("NUM_FAIL", "U4", 0), _f("XFAIL_AD", "I4", 0),
        _f("YFAIL_AD", "I4", 0), _f("VECT_OFF", "I2", 0), _f("RTN_ICNT", "U2", 0),
        _f("PGM_ICNT", "U2", 0), _f("RTN_INDX", "U2", count="RTN_ICNT"),
        _f("RTN_STAT", "N1", count="RTN_ICNT"), _f("PGM_INDX", "U2", count="PGM_ICNT"),
        _f("PGM_STAT", "N1", count="PGM_ICNT"), _f("FAIL_PIN", "Dn", b""),
        *_cn("VECT_NAM", "TIME_SET", "OP_CODE", "TEST_TXT", "ALARM_ID", "PROG_TXT", "RSLT_TXT"),
        _f("PATG_NUM", "U1", 255), _f("SPIN_MAP", "Dn", b""),
    ), "Functional Test Record: pass/fail of a functional (pattern) test of a part.",
        min_len=7),
    RecordSpec("STR", 15, 30, (
        _f("CONT_FLG", "B1", 0), _f("TEST_NUM", "U4"), _f("HEAD_NUM", "U1"),
        _f("SITE_NUM", "U1"), _f("PSR_REF", "U2", 0), _f("TEST_FLG", "B1"),
        *_cn("LOG_TYP", "TEST_TXT", "ALARM_ID", "PROG_TXT", "RSLT_TXT"),
        _f("Z_VAL", "U1", 0), _f("FMU_FLG", "B1", 0), _f("MASK_MAP", "Dn", b""),
        _f("FAL_MAP", "Dn", b""), _f("CYC_CNT", "U8", 0), _f("TOTF_CNT", "U4", 0),
        _f("TOTL_CNT", "U4", 0), _f("CYC_BASE", "U8", 0), _f("BIT_BASE", "U4", 0),
        _f("COND_CNT", "U2", 0), _f("LIM_CNT", "U2", 0), _f("CYC_SIZE", "U1"),
        _f("PMR_SIZE", "U1"), _f("CHN_SIZE", "U1"), _f("PAT_SIZE", "U1"),
        _f("BIT_SIZE", "U1"), _f("U1_SIZE", "U1"), _f("U2_SIZE", "U1"),
        _f("U3_SIZE", "U1"), _f("UTX_SIZE", "U1"), _f("CAP_BGN", "U2", 0),
        _f("LIM_INDX", "U2", count="LIM_CNT"), _f("LIM_SPEC", "U4", count="LIM_CNT"),
        _f("COND_LST", "Cn", count="COND_CNT"),
        _f("CYCO_CNT", "U2", 0), _f("CYC_OFST", "Uf", count="CYCO_CNT", size_from="CYC_SIZE"),
        _f("PMR_CNT", "U2", 0), _f("PMR_INDX", "Uf", count="PMR_CNT", size_from="PMR_SIZE"),
        _f("CHN_CNT", "U2", 0), _f("CHN_NUM", "Uf", count="CHN_CNT", size_from="CHN_SIZE"),
        _f("EXP_CNT", "U2", 0), _f("EXP_DATA", "U1", count="EXP_CNT"),
        _f("CAP_CNT", "U2", 0), _f("CAP_DATA", "U1", count="CAP_CNT"),
        _f("NEW_CNT", "U2", 0), _f("NEW_DATA", "U1", count="NEW_CNT"),
        _f("PAT_CNT", "U2", 0), _f("PAT_NUM", "Uf", count="PAT_CNT", size_from="PAT_SIZE"),
        _f("BPOS_CNT", "U2", 0), _f("BIT_POS", "Uf", count="BPOS_CNT", size_from="BIT_SIZE"),
        _f("USR1_CNT", "U2", 0), _f("USR1", "Uf", count="USR1_CNT", size_from="U1_SIZE"),
        _f("USR2_CNT", "U2", 0), _f("USR2", "Uf", count="USR2_CNT", size_from="U2_SIZE"),
        _f("USR3_CNT", "U2", 0), _f("USR3", "Uf", count="USR3_CNT", size_from="U3_SIZE"),
        _f("TXT_CNT", "U2", 0), _f("USER_TXT", "Cf", count="TXT_CNT", size_from="UTX_SIZE"),
    ), "Scan Test Record: scan fail data of a part (V4-2007).", version="V4-2007"),
    RecordSpec("BPS", 20, 10, (_f("SEQ_NAME", "Cn", ""),),
               "Begin Program Section Record: start of a program section."),
    RecordSpec("EPS", 20, 20, (), "End Program Section Record: end of a program section."),
    RecordSpec("GDR", 50, 10, (_f("FLD_CNT", "U2", 0), _f("GEN_DATA", "Vn", count="FLD_CNT")),
               "Generic Data Record: tester-specific typed values."),
    RecordSpec("DTR", 50, 30, (_f("TEXT_DAT", "Cn", ""),),
               "Datalog Text Record: free text written by the test program."),
)  # fmt: skip

#: Record name -> spec, in the order of the specification.
RECORDS: dict[str, RecordSpec] = {s.name: s for s in _SPECS}
#: (REC_TYP, REC_SUB) -> spec.
RECORDS_BY_KEY: dict[tuple[int, int], RecordSpec] = {s.key: s for s in _SPECS}
V4_RECORDS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.version == "V4")
V4_2007_RECORDS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.version == "V4-2007")


def record_spec(rec: str | tuple[int, int]) -> RecordSpec:
    """The spec of a record, by name (``"PTR"``, any case) or by ``(REC_TYP, REC_SUB)``."""
    spec = RECORDS.get(rec.upper()) if isinstance(rec, str) else RECORDS_BY_KEY.get(tuple(rec))
    if spec is None:
        raise KeyError(f"unknown STDF record {rec!r}; known: {', '.join(RECORDS)}")
    return spec


def byte_order_for_cpu(cpu_type: int) -> str:
    """FAR.CPU_TYPE -> ``">"`` (1, big-endian) or ``"<"`` (2, little-endian); KeyError otherwise."""
    try:
        return CPU_TYPES[cpu_type]
    except KeyError:
        raise KeyError(
            f"FAR.CPU_TYPE {cpu_type} is not supported (1 = big-endian, 2 = little-endian)"
        ) from None


def cpu_type_for(byte_order: str) -> int:
    """``"<"``/``"little"`` -> 2, ``">"``/``"big"`` -> 1 (the FAR.CPU_TYPE to write)."""
    if byte_order in ("<", "little"):
        return 2
    if byte_order in (">", "big"):
        return 1
    raise ValueError(f"byte_order must be '<', '>', 'little' or 'big', got {byte_order!r}")


_GDR_CODES = {name: code for code, name in GDR_TYPES.items()}


def _text_bytes(value) -> bytes:
    return value if isinstance(value, (bytes, bytearray)) else str(value).encode("latin-1")


def _encode_item(f: Field, value, order: str, width: int) -> bytes:
    t = f.type
    if t in STRUCT_CODES:
        if t == "C1":
            raw = _text_bytes(value)
            if len(raw) != 1:
                raise ValueError(f"{f.name}: a C1 field holds exactly one character, got {value!r}")
            return raw
        return struct.pack(order + STRUCT_CODES[t], value)
    if t in ("Cn", "Bn"):
        raw = _text_bytes(value)
        if len(raw) > 255:
            raise ValueError(f"{f.name}: {t} holds at most 255 bytes, got {len(raw)}")
        return bytes([len(raw)]) + raw
    if t == "Sn":
        raw = _text_bytes(value)
        return struct.pack(order + "H", len(raw)) + raw
    if t == "Cf":
        raw = _text_bytes(value)
        if len(raw) > width:
            raise ValueError(f"{f.name}: {value!r} is longer than the fixed width {width}")
        return raw.ljust(width, b" ")
    if t == "Uf":
        return int(value).to_bytes(width, "big" if order == ">" else "little")
    if t == "Dn":
        nbits, data = value if isinstance(value, tuple) else (8 * len(value), value)
        if len(data) != (nbits + 7) // 8:
            raise ValueError(f"{f.name}: {nbits} bits need {(nbits + 7) // 8} bytes")
        return struct.pack(order + "H", nbits) + bytes(data)
    if t == "Vn":
        name, item = value
        code = _GDR_CODES[name]
        if name == "B0":
            return bytes([code])
        if name == "N1":
            return bytes([code, int(item) & 0x0F])
        return bytes([code]) + _encode_item(Field(f.name, name), item, order, 0)
    raise ValueError(f"{f.name}: cannot encode type {t}")  # pragma: no cover


def encode_record(rec: str | tuple[int, int], values: dict, byte_order: str = "<") -> bytes:
    """One complete record (header included) from ``values`` (spec field name -> value).

    Fields after the last one named in ``values`` are omitted (the record ends early, as the
    spec allows); a field before it that ``values`` lacks is written with its ``missing`` value
    (0 / empty where the spec defines none). An array's count field defaults to the length of
    the array. Values: numbers for numeric types, ``str`` (Latin-1) or ``bytes`` for C1/Cn/Sn/Cf,
    ``bytes`` for Bn, ``bytes`` or ``(bit_count, bytes)`` for Dn, lists for arrays (nibbles as
    ints 0..15), ``(type_name, value)`` pairs for GDR ``GEN_DATA`` (``("B0", None)`` = pad byte).
    ``byte_order``: ``"<"``/``"little"`` or ``">"``/``"big"``.
    """
    rs = record_spec(rec)
    order = ">" if cpu_type_for(byte_order) == 1 else "<"
    names = rs.field_names
    unknown = set(values) - set(names)
    if unknown:
        raise KeyError(f"{rs.name} has no field(s) {sorted(unknown)}")
    values = dict(values)
    for f in rs.fields:
        if f.count is not None and f.name in values and f.count not in values:
            values[f.count] = len(values[f.name])
    last = max((names.index(n) for n in values), default=-1)
    out = bytearray()
    done: dict[str, object] = {}
    for f in rs.fields[: last + 1]:
        if f.name in values:
            value = values[f.name]
        elif f.count is not None:
            value = []
        elif f.missing is not None:
            value = f.missing
        elif f.type in ("Cn", "Sn", "C1"):
            value = "" if f.type != "C1" else " "
        elif f.type in ("Bn", "Dn"):
            value = b""
        else:
            value = 0
        width = int(done.get(f.size_from, 0)) if f.size_from else 0
        if f.count is not None:
            items = list(value)
            if len(items) != int(done[f.count]):
                raise ValueError(
                    f"{rs.name}.{f.name}: {len(items)} items but {f.count} = {done[f.count]}"
                )
            if f.type == "N1":
                packed = bytearray((len(items) + 1) // 2)
                for i, v in enumerate(items):
                    packed[i // 2] |= (int(v) & 0x0F) << (4 * (i % 2))
                out += packed
            else:
                for item in items:
                    out += _encode_item(f, item, order, width)
        else:
            out += _encode_item(f, value, order, width)
        done[f.name] = value
    if len(out) > 0xFFFF:
        raise ValueError(f"{rs.name}: {len(out)} bytes exceed the 65535-byte REC_LEN limit")
    return struct.pack(order + "HBB", len(out), rs.typ, rs.sub) + bytes(out)
