"""STDF decoding kernels against naive.py (exact: integer and byte outputs)."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from backend_fab_kernels import stdf_decode as k
from grid_strategies import read_only
from hypothesis import given
from hypothesis import strategies as st

# field type codes the walker knows, split by how a program may use them
SCALARS = [k.FT_U1, k.FT_U2, k.FT_U4, k.FT_U8, k.FT_I1, k.FT_I2, k.FT_I4, k.FT_R4, k.FT_R8,
           k.FT_B1, k.FT_C1]  # fmt: skip
VARIABLE = [k.FT_CN, k.FT_SN, k.FT_BN, k.FT_DN]
ARRAY_ONLY = [k.FT_N1, k.FT_UF, k.FT_CF, k.FT_VN]


@st.composite
def programs(draw):
    """A field program: types, count_refs, size_refs (arrays count with earlier U1/U2 fields;
    Uf/Cf item widths come from earlier U1 fields)."""
    n = draw(st.integers(1, 8))
    types, crefs, srefs = [], [], []
    for f in range(n):
        unsigned = [i for i in range(f) if types[i] in (k.FT_U1, k.FT_U2) and crefs[i] < 0]
        kind = draw(
            st.sampled_from(["scalar", "variable", "array"] if unsigned else ["scalar", "variable"])
        )
        if kind == "scalar":
            types.append(draw(st.sampled_from(SCALARS)))
            crefs.append(-1)
            srefs.append(-1)
        elif kind == "variable":
            types.append(draw(st.sampled_from(VARIABLE)))
            crefs.append(-1)
            srefs.append(-1)
        else:
            # the item width of Uf/Cf arrays comes from a U1 field (STDF V4-2007)
            u1 = [i for i in unsigned if types[i] == k.FT_U1]
            allowed = SCALARS + VARIABLE + ARRAY_ONLY
            if not u1:
                allowed = [t for t in allowed if t not in (k.FT_UF, k.FT_CF)]
            t = draw(st.sampled_from(allowed))
            types.append(t)
            crefs.append(draw(st.sampled_from(unsigned)))
            srefs.append(draw(st.sampled_from(u1)) if t in (k.FT_UF, k.FT_CF) else -1)
    return np.array(types, np.int64), np.array(crefs, np.int64), np.array(srefs, np.int64)


@st.composite
def record_buffers(draw, max_records=6):
    """A buffer of records (4-byte header + random payload), offsets and lengths."""
    big = draw(st.booleans())
    payloads = draw(st.lists(st.binary(max_size=40), max_size=max_records))
    buf = bytearray()
    offsets, lengths = [], []
    for p in payloads:
        offsets.append(len(buf))
        lengths.append(len(p))
        buf += len(p).to_bytes(2, "big" if big else "little") + b"\x0f\x0a" + p
    return (
        np.frombuffer(bytes(buf), np.uint8),
        np.array(offsets, np.int64),
        np.array(lengths, np.int32),
        big,
    )


def _assert_same(out, ref):
    assert len(out) == len(ref)
    for a, b in zip(out, ref, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert int(a) == int(b)


@given(st.binary(max_size=300), st.integers(0, 10), st.booleans())
def test_index_records_matches_naive(data, start, big):
    buf = read_only(np.frombuffer(data, np.uint8))
    start = min(start, len(data))
    _assert_same(k.index_records(buf, start, big), naive.index_records(buf, start, big))


@given(st.lists(st.binary(max_size=30), max_size=8), st.booleans())
def test_index_records_well_formed_stream(payloads, big):
    order = "big" if big else "little"
    data = b"".join(len(p).to_bytes(2, order) + b"\x05\x0a" + p for p in payloads)
    _offsets, keys, lengths, end, status = k.index_records(np.frombuffer(data, np.uint8), 0, big)
    assert end == len(data) and status == k.INDEX_OK
    assert lengths.tolist() == [len(p) for p in payloads]
    assert set(keys.tolist()) <= {0x050A}


@given(record_buffers(), programs(), st.data())
def test_walk_fields_matches_naive(rec, prog, data):
    buf, offsets, lengths, big = rec
    types, crefs, srefs = prog
    store = np.array(
        data.draw(st.lists(st.integers(0, types.size - 1), unique=True, max_size=types.size)),
        np.int64,
    )
    out = k.walk_fields(read_only(buf), offsets, lengths, big, types, crefs, srefs, store)
    ref = naive.walk_fields(buf, offsets, lengths, big, types, crefs, srefs, store)
    bad = int(ref[3])
    assert int(out[3]) == bad and int(out[4]) == int(ref[4])
    upto = offsets.size if bad < 0 else bad + 1  # the walk stops at the first malformed record
    np.testing.assert_array_equal(out[0][:upto], ref[0][:upto])
    np.testing.assert_array_equal(out[1][:, :upto], ref[1][:, :upto])
    np.testing.assert_array_equal(out[2][:, :upto], ref[2][:, :upto])


@given(st.binary(min_size=1, max_size=64), st.data(), st.sampled_from([1, 2, 4, 8]), st.booleans())
def test_gather_uint_matches_naive(data, draw, size, big):
    buf = np.frombuffer(data, np.uint8)
    starts = np.array(
        draw.draw(st.lists(st.integers(-1, max(len(data) - size, -1)), max_size=10)), np.int64
    )
    if len(data) < size:
        starts[:] = -1
    np.testing.assert_array_equal(
        k.gather_uint(read_only(buf), starts, size, big), naive.gather_uint(buf, starts, size, big)
    )


@given(st.lists(st.binary(max_size=12), max_size=6), st.sampled_from([1, 2]), st.booleans(),
       st.booleans(), st.data())  # fmt: skip
def test_gather_strings_matches_naive(items, prefix, big, latin1, data):
    order = "big" if big else "little"
    buf = b"".join(len(x).to_bytes(prefix, order) + x for x in items)
    starts, p = [], 0
    for x in items:
        starts.append(p if data.draw(st.booleans()) else -1)
        p += prefix + len(x)
    arr = np.frombuffer(buf, np.uint8)
    st_ = np.array(starts, np.int64)
    _assert_same(
        k.gather_strings(read_only(arr), st_, prefix, big, latin1),
        naive.gather_strings(arr, st_, prefix, big, latin1),
    )
    if latin1:
        text, offs = k.gather_strings(arr, st_, prefix, big, True)
        for i, x in enumerate(items):  # valid UTF-8 holding the Latin-1 characters
            want = x.decode("latin-1") if starts[i] >= 0 else ""
            assert bytes(text[offs[i] : offs[i + 1]]).decode("utf-8") == want


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=6),
       st.sampled_from([1, 2, 4, 8]), st.booleans(), st.data())  # fmt: skip
def test_gather_arrays_matches_naive(shape, size, big, data):
    buf = data.draw(st.binary(min_size=sum(c for c, _ in shape) * size,
                              max_size=sum(c for c, _ in shape) * size))  # fmt: skip
    arr = np.frombuffer(buf, np.uint8)
    starts, counts, p = [], [], 0
    for c, present in shape:
        starts.append(p if present else -1)
        counts.append(c)
        p += c * size
    st_, ct = np.array(starts, np.int64), np.array(counts, np.int64)
    _assert_same(k.gather_uint_arrays(read_only(arr), st_, ct, size, big),
                 naive.gather_uint_arrays(arr, st_, ct, size, big))  # fmt: skip
    nib_starts = np.array([s // size if s >= 0 else -1 for s in starts], np.int64)
    if arr.size:
        nib_counts = np.minimum(ct, 2 * (arr.size - np.maximum(nib_starts, 0)))
        _assert_same(k.gather_nibbles(read_only(arr), nib_starts, nib_counts),
                     naive.gather_nibbles(arr, nib_starts, nib_counts))  # fmt: skip


@st.composite
def part_streams(draw):
    n = draw(st.integers(0, 40))
    kinds = draw(st.lists(st.sampled_from([0, 1, 2, 3]), min_size=n, max_size=n))
    heads = draw(st.lists(st.integers(1, 2), min_size=n, max_size=n))
    sites = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    return np.array(kinds, np.uint8), np.array(heads, np.int64), np.array(sites, np.int64)


@given(part_streams(), st.integers(0, 3))
def test_assign_parts_matches_naive(stream, n_open):
    kinds, heads, sites = stream
    outs = []
    for impl in (k.assign_parts, naive.assign_parts):
        open_slot = np.full(65536, -1, np.int64)
        for j in range(n_open):  # parts left open by an earlier chunk
            open_slot[256 * 3 + j] = j
        slot_part = np.full(n_open + kinds.size + 1, -1, np.int64)
        res = impl(
            read_only(kinds), read_only(heads), read_only(sites), open_slot, n_open, 0, slot_part
        )
        outs.append((res, open_slot, slot_part))
    (res, o1, s1), (ref, o2, s2) = outs
    _assert_same(res, ref)
    np.testing.assert_array_equal(o1, o2)
    if ref[5] == 0:
        np.testing.assert_array_equal(s1, s2)


@given(st.lists(st.tuples(st.floats(-1e6, 1e6, width=32), st.integers(0, 2), st.integers(0, 3),
                          st.integers(0, 2)), max_size=30))  # fmt: skip
def test_carry_forward_matches_naive(rows):
    values = np.array([r[0] for r in rows], np.float32)
    given_ = np.array([r[1] for r in rows], np.uint8)
    test = np.array([r[3] for r in rows], np.int64)
    local = test * 4 + np.array([r[2] for r in rows], np.int64)
    out, valid = k.carry_forward(read_only(values), given_, local, test)
    ref_out, ref_valid = naive.carry_forward(values, given_, local, test)
    np.testing.assert_array_equal(valid, ref_valid)
    np.testing.assert_array_equal(out[valid], ref_out[valid])


@given(st.data())
def test_retest_chains_matches_naive(data):
    n = data.draw(st.integers(0, 30))
    pred = np.array([data.draw(st.integers(-1, i - 1)) for i in range(n)], np.int64)
    _assert_same(k.retest_chains(read_only(pred)), naive.retest_chains(pred))


@given(st.lists(st.integers(-(2**62), 2**62) | st.integers(0, 5), max_size=300), st.data())
def test_grouping_kernels_match_naive(keys, data):
    arr = np.array(keys, np.int64)
    ids, first = k.group_ids(read_only(arr))
    _assert_same((ids, first), naive.group_ids(arr))
    flags = np.array(data.draw(st.lists(st.booleans(), min_size=arr.size, max_size=arr.size)), bool)
    np.testing.assert_array_equal(
        k.first_per_group(ids, flags, first.size), naive.first_per_group(ids, flags, first.size)
    )
    b = np.array(
        data.draw(st.lists(st.integers(0, 3), min_size=arr.size, max_size=arr.size)), np.int64
    )
    assert k.count_repeated_pairs(ids, b, 4) == naive.count_repeated_pairs(ids, b, 4)


@given(record_buffers(), st.lists(st.tuples(st.integers(0, 12), st.sampled_from([1, 2, 4])),
                                  max_size=5))  # fmt: skip
def test_gather_columns_matches_naive(rec, fields):
    buf, offsets, lengths, big = rec
    rel = np.array([f[0] for f in fields], np.int64)
    sizes = np.array([f[1] for f in fields], np.int64)
    _assert_same(k.gather_columns(read_only(buf), offsets, lengths, rel, sizes, big),
                 naive.gather_columns(buf, offsets, lengths, rel, sizes, big))  # fmt: skip


@given(st.lists(st.tuples(st.sampled_from([0x050A, 0x0514, 0x0F0A, 0x0F0F, 0x0F14, 0x010A]),
                          st.binary(max_size=9)), max_size=8))  # fmt: skip
def test_record_kinds_matches_naive(recs):
    buf = b"".join(len(p).to_bytes(2, "little") + k.to_bytes(2, "big") + p for k, p in recs)
    arr = np.frombuffer(buf, np.uint8)
    offsets, keys, lengths, _, _ = k.index_records(arr)
    _assert_same(k.record_kinds(read_only(arr), offsets, keys, lengths),
                 naive.record_kinds(arr, offsets, keys, lengths))  # fmt: skip


@given(st.lists(st.integers(-1, 4), max_size=40))
def test_previous_in_group_matches_naive(ids):
    arr = np.array(ids, np.int64)
    np.testing.assert_array_equal(
        k.previous_in_group(read_only(arr), 5), naive.previous_in_group(arr, 5)
    )


def test_count_repeated_pairs_hash_fallback():
    a = np.array([0, 5, 0, 2**40], np.int64)
    b = np.array([1, 1, 1, 2], np.int64)
    assert k.count_repeated_pairs(a, b, 3) == 1  # bitmap too large: hashing path


def test_wrappers_reject_bad_input():
    buf = np.zeros(8, np.uint8)
    with pytest.raises(ValueError, match="outside"):
        k.index_records(buf, 9)
    with pytest.raises(ValueError, match="earlier U1 or U2"):
        k.walk_fields(buf, [0], [4], False, [k.FT_R4, k.FT_U1], [-1, 0], [-1, -1], [])
    with pytest.raises(ValueError, match="only valid as an array"):
        k.walk_fields(buf, [0], [4], False, [k.FT_N1], [-1], [-1], [])
    with pytest.raises(ValueError, match="size_refs must name an earlier U1"):  # U2 width field
        k.walk_fields(buf, [0], [4], False, [k.FT_U2, k.FT_UF], [-1, 0], [-1, 0], [])
    with pytest.raises(ValueError, match="past the end"):
        k.walk_fields(buf, [6], [4], False, [k.FT_U1], [-1], [-1], [])
    with pytest.raises(ValueError, match="size must be"):
        k.gather_uint(buf, [0], 3, False)
    with pytest.raises(ValueError, match="open_slot"):
        k.assign_parts([1], [1], [1], np.zeros(10, np.int64), 0, 0, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="pred"):
        k.retest_chains([0])
    with pytest.raises(ValueError, match="given"):
        k.carry_forward([1.0], [3], [0], [0])
