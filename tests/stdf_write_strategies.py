"""Hypothesis strategies for STDF record streams, drawn from the record spec itself.

``record_values(rec)`` draws the field values of one record, cut after a random field (the
trailing fields omitted, as real testers do) but never shorter than the record's ``min_len``.
``record_streams()`` draws whole streams: FAR first, then a mix of record types including
multi-site PIR/PTR/PRR interleaving. ``ascii_only`` and ``gdr_pad=False`` restrict the draws
to what pystdf (the test-time oracle) can decode.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from backend_fab.io import stdf_spec as spec

_INT_RANGES = {
    "U1": (0, 2**8 - 1), "U2": (0, 2**16 - 1), "U4": (0, 2**32 - 1), "U8": (0, 2**64 - 1),
    "I1": (-(2**7), 2**7 - 1), "I2": (-(2**15), 2**15 - 1), "I4": (-(2**31), 2**31 - 1),
    "I8": (-(2**63), 2**63 - 1), "B1": (0, 255),
}  # fmt: skip


def _alphabet(ascii_only: bool):
    # pystdf decodes strings as ASCII; the reader decodes Latin-1, so any byte survives there
    return (
        st.characters(min_codepoint=32, max_codepoint=126)
        if ascii_only
        else st.characters(min_codepoint=0, max_codepoint=255)
    )


def scalar(type_: str, *, ascii_only: bool = False, width: int | None = None, max_len: int = 5):
    """A value of one (non-array) field type."""
    if type_ in _INT_RANGES:
        lo, hi = _INT_RANGES[type_]
        return st.integers(lo, hi)
    if type_ == "R4":
        return st.floats(width=32, allow_nan=False)
    if type_ == "R8":
        return st.floats(allow_nan=False)
    if type_ == "C1":
        return st.text(_alphabet(ascii_only), min_size=1, max_size=1)
    if type_ in ("Cn", "Sn"):
        return st.text(_alphabet(ascii_only), max_size=max_len)
    if type_ == "Cf":
        return st.text(_alphabet(ascii_only), min_size=width, max_size=width)
    if type_ == "Bn":
        return st.binary(max_size=max_len)
    if type_ == "Dn":
        return st.integers(0, 40).flatmap(
            lambda n: st.binary(min_size=(n + 7) // 8, max_size=(n + 7) // 8).map(lambda b: (n, b))
        )
    if type_ == "N1":
        return st.integers(0, 15)
    if type_ == "Uf":
        return st.integers(0, 2 ** (8 * width) - 1)
    raise ValueError(type_)


def gdr_items(*, ascii_only: bool = False, pad: bool = True, min_size: int = 0, max_size: int = 6):
    """GDR GEN_DATA: a list of (type_code, value)."""
    codes = [c for c in spec.GDR_TYPES if pad or c != 0]

    def item(code):
        kind = spec.GDR_TYPES[code]
        if kind == "B0":
            return st.just((0, None))
        return scalar(kind, ascii_only=ascii_only).map(lambda v: (code, v))

    return st.lists(st.sampled_from(codes).flatmap(item), min_size=min_size, max_size=max_size)


def _min_fields(rec: spec.RecordSpec) -> int:
    """Fields a valid record always holds: those covering ``min_len`` and every field without a
    missing value that comes before the first string or array field (PCR.PART_CNT,
    PTR.RESULT, TSR.TEST_NUM, MIR.STAT_NUM ...); the rest may be cut off."""
    size = 0
    least = len(rec.fields)
    for i, f in enumerate(rec.fields):
        if size >= rec.min_len:
            least = i
            break
        size += f.fixed_size or 0
    required = 0
    for i, f in enumerate(rec.fields):
        if f.count is not None or f.fixed_size is None:
            break
        if f.missing is None:
            required = i + 1
    return max(least if size >= rec.min_len else len(rec.fields), required)


@st.composite
def record_values(draw, rec: spec.RecordSpec | str, *, ascii_only: bool = False, gdr_pad: bool = True,
                  full: bool = False, fixed: dict | None = None, keep_counts: bool = False):  # fmt: skip
    """Field values of one record of type ``rec``, cut after a random field unless ``full``.

    ``keep_counts`` never cuts before an array's count field (pystdf fails on such records).
    """
    rec = spec.record_spec(rec) if isinstance(rec, str) else rec
    fixed = fixed or {}
    counts = {f.count for f in rec.fields if f.count}
    widths = {f.size_from: f.type for f in rec.fields if f.size_from}
    names = rec.field_names
    least = max([_min_fields(rec), *(names.index(k) + 1 for k in fixed)])
    if keep_counts:
        least = max([least, *(names.index(c) + 1 for c in counts)])
    n = len(rec.fields) if full else draw(st.integers(least, len(rec.fields)))
    values: dict = {}
    for f in rec.fields[:n]:
        if f.name in fixed:
            values[f.name] = fixed[f.name]
        elif f.name in counts:
            values[f.name] = draw(st.integers(0, 3))
        elif f.name in widths:
            kind = widths[f.name]
            values[f.name] = draw(
                st.sampled_from([1, 2, 4, 8]) if kind == "Uf" else st.integers(0, 5)
            )
        elif f.count is not None:
            k = values[f.count]
            if f.type == "Vn":
                values[f.name] = draw(
                    gdr_items(ascii_only=ascii_only, pad=gdr_pad, min_size=k, max_size=k)
                )
            else:
                width = values.get(f.size_from) if f.size_from else None
                elem = scalar(f.type, ascii_only=ascii_only, width=width)
                values[f.name] = draw(st.lists(elem, min_size=k, max_size=k))
        else:
            values[f.name] = draw(scalar(f.type, ascii_only=ascii_only))
    return values


def as_float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


@st.composite
def multisite_parts(draw, *, ascii_only: bool = False, max_sites: int = 3, max_parts: int = 4,
                    result_kinds: tuple[str, ...] = ("PTR", "MPR", "FTR"),
                    keep_counts: bool = False):  # fmt: skip
    """PIR ... interleaved results ... PRR of several sites on one head, as (name, values)."""
    sites = draw(st.lists(st.integers(0, 255), min_size=1, max_size=max_sites, unique=True))
    head = draw(st.integers(0, 254))
    tests = draw(
        st.lists(
            st.tuples(st.sampled_from(result_kinds), st.integers(0, 2**32 - 1)),
            min_size=1, max_size=3, unique_by=lambda t: t[1],
        )
    )  # fmt: skip
    out = []
    n_touchdowns = draw(st.integers(1, max(1, max_parts // len(sites))))
    for _ in range(n_touchdowns):
        for site in sites:
            out.append(("PIR", {"HEAD_NUM": head, "SITE_NUM": site}))
        for kind, num in tests:
            for site in sites:
                fixed = {"TEST_NUM": num, "HEAD_NUM": head, "SITE_NUM": site}
                out.append(
                    (
                        kind,
                        draw(
                            record_values(
                                kind, ascii_only=ascii_only, fixed=fixed, keep_counts=keep_counts
                            )
                        ),
                    )
                )
        for site in draw(st.permutations(sites)):
            fixed = {"HEAD_NUM": head, "SITE_NUM": site}
            out.append(("PRR", draw(record_values("PRR", ascii_only=ascii_only, fixed=fixed))))
    return out


@st.composite
def record_streams(draw, *, ascii_only: bool = False, gdr_pad: bool = True, v4_2007: bool = True,
                   max_records: int = 5, keep_counts: bool = False):  # fmt: skip
    """A stream of records after FAR: random types (any field values) and a multi-site block."""
    names = [n for n in spec.RECORDS if n != "FAR" and (v4_2007 or spec.RECORDS[n].version == "V4")]
    # PIR/PRR/PTR of random heads and sites would make part linking ambiguous for a reader that
    # checks it; they come in well-formed multi-site blocks instead
    free = [n for n in names if n not in ("PIR", "PRR", "PTR", "MPR", "FTR", "STR")]
    recs = draw(
        st.lists(
            st.sampled_from(free).flatmap(
                lambda n: record_values(
                    n, ascii_only=ascii_only, gdr_pad=gdr_pad, keep_counts=keep_counts
                ).map(lambda v, n=n: (n, v))
            ),
            max_size=max_records,
        )
    )
    kinds = ("PTR", "MPR", "FTR", "STR") if v4_2007 else ("PTR", "MPR", "FTR")
    block = draw(
        multisite_parts(ascii_only=ascii_only, result_kinds=kinds, keep_counts=keep_counts)
    )
    at = draw(st.integers(0, len(recs)))
    return recs[:at] + block + recs[at:]
