"""STDF V4 decoding kernels: index the records of a byte buffer, walk their fields, gather columns.

The reader (``backend_fab.io.stdf``) drives these in three steps, none of which loops over records
in Python:

1. :func:`index_records` finds every complete record (offset, type key, length) in a ``uint8``
   buffer in one pass;
2. :func:`walk_fields` walks the fields of the records of one type, driven by a *field program*
   (one type code per field, see ``FT_*``), checks that no field runs past its record and stores
   where the requested fields start;
3. :func:`gather_columns` (fixed-position fields of the hot PTR/MPR/FTR records, one pass),
   :func:`gather_uint`, :func:`gather_strings`, :func:`gather_uint_arrays`, :func:`gather_nibbles`
   turn those starts into columns; :func:`record_kinds` and :func:`assign_parts` link results to
   parts (PIR..PRR per head/site, sites interleaved); :func:`carry_forward` resolves PTR/MPR
   default data (first record of a test); :func:`retest_chains` and :func:`previous_in_group`
   mark superseded retests; :func:`group_ids`, :func:`first_per_group` and
   :func:`count_repeated_pairs` group by integer keys in O(n).

Every wrapper validates its inputs and hands the kernel read-only views (one compiled
specialisation whether the caller's arrays are writable or not); state arrays that
:func:`assign_parts` updates are the caller's, documented as such.

Byte order is a flag (``big_endian``), taken from FAR.CPU_TYPE. Reference: STDF V4 specification
(Teradyne, 1997) and its V4-2007 addendum.
"""

from __future__ import annotations

import numba
import numpy as np

from backend_fab_kernels._config import JIT
from backend_fab_kernels._core import as_array, check_out

# Field type codes of a field program (see walk_fields).
FT_U1, FT_U2, FT_U4, FT_U8 = 0, 1, 2, 3
FT_I1, FT_I2, FT_I4, FT_I8 = 4, 5, 6, 7
FT_R4, FT_R8, FT_B1, FT_C1 = 8, 9, 10, 11
FT_CN, FT_SN, FT_BN, FT_DN = 20, 21, 22, 23
FT_N1, FT_UF, FT_CF, FT_VN = 24, 25, 26, 27

#: Byte sizes of the fixed-size field codes 0..11.
FIXED_SIZES = np.array([1, 2, 4, 8, 1, 2, 4, 8, 4, 8, 1, 1], dtype=np.int64)

#: Byte size of a GDR value per type code (-1 = variable or invalid, handled in the walker).
_VN_SIZES = np.array([0, 1, 2, 4, 1, 2, 4, 4, 8, -1, -1, -1, -1, 1], dtype=np.int64)

#: walk_fields: the relative start of a field the record omits.
ABSENT = 0xFFFF

#: index_records status codes.
INDEX_OK = 0
INDEX_ZERO_HEADER = 1

#: assign_parts record kinds.
KIND_OTHER, KIND_PIR, KIND_PRR, KIND_RESULT = 0, 1, 2, 3
#: assign_parts error codes.
PARTS_OK, PARTS_PRR_WITHOUT_PIR, PARTS_PIR_TWICE = 0, 1, 2


def _ro(name: str, a, dtype, ndim: int = 1) -> np.ndarray:
    """A read-only view of a validated input: writable and read-only callers then share one
    compiled specialisation (numba types the two apart), which halves compile time."""
    arr = as_array(name, a, dtype, ndim=ndim).view()
    arr.flags.writeable = False
    return arr


@numba.njit(**JIT)
def _read_uint(buf, p, size, big_endian):
    v = np.int64(0)
    if big_endian:
        for i in range(size):
            v = (v << 8) | np.int64(buf[p + i])
    else:
        for i in range(size - 1, -1, -1):
            v = (v << 8) | np.int64(buf[p + i])
    return v


@numba.njit(**JIT)
def _index_records(buf, start, big_endian):
    # one pass into arrays sized for the worst case (a record is at least 4 bytes); np.empty
    # does not touch the pages it does not use, and the result is copied to its true size
    n = buf.size
    cap = (n - start) // 4 + 1
    offsets = np.empty(cap, dtype=np.int64)
    keys = np.empty(cap, dtype=np.uint16)
    lengths = np.empty(cap, dtype=np.int32)
    pos = start
    count = 0
    status = INDEX_OK
    while pos + 4 <= n:
        if big_endian:
            length = (np.int64(buf[pos]) << 8) | np.int64(buf[pos + 1])
        else:
            length = (np.int64(buf[pos + 1]) << 8) | np.int64(buf[pos])
        typ = buf[pos + 2]
        sub = buf[pos + 3]
        if length == 0 and typ == 0 and sub == 0:
            status = INDEX_ZERO_HEADER
            break
        if pos + 4 + length > n:
            break
        offsets[count] = pos
        keys[count] = (np.uint16(typ) << 8) | np.uint16(sub)
        lengths[count] = length
        count += 1
        pos += 4 + length
    return offsets[:count].copy(), keys[:count].copy(), lengths[:count].copy(), pos, status


def index_records(buf, start: int = 0, big_endian: bool = False):
    """Index the complete records of an STDF byte buffer from ``start``.

    Returns ``(offsets, keys, lengths, end, status)``: per record its header byte offset (int64),
    ``REC_TYP << 8 | REC_SUB`` (uint16) and ``REC_LEN`` (int32, bytes after the 4-byte header);
    ``end`` is the offset just past the last complete record (where an incomplete one starts, or
    ``buf.size``); ``status`` is ``INDEX_ZERO_HEADER`` when the walk stopped at a header of four
    zero bytes (a run of zero bytes where a record should be), else ``INDEX_OK``.
    """
    arr = _ro("buf", buf, np.uint8, ndim=1)
    if not 0 <= int(start) <= arr.size:
        raise ValueError(f"start {start} is outside the buffer of {arr.size} bytes")
    return _index_records(arr, np.int64(start), bool(big_endian))


@numba.njit(**JIT)
def _walk_fields(
    buf, offsets, lengths, big_endian, types, count_refs, size_refs, store, run_len, run_bytes,
    needed,
):  # fmt: skip
    n = offsets.size
    nf = types.size
    ns = store.size
    slot = np.full(nf, -1, dtype=np.int64)
    for s in range(ns):
        slot[store[s]] = s
    n_present = np.zeros(n, dtype=np.int16)
    starts = np.empty((ns, n), dtype=np.uint16)
    counts = np.empty((ns, n), dtype=np.uint16)
    values = np.zeros(nf, dtype=np.int64)
    bad_record = -1
    bad_field = -1
    for r in range(n):
        p = offsets[r] + 4
        base = p
        end = p + lengths[r]
        k = 0
        ok = True
        for s in range(ns):
            starts[s, r] = ABSENT
            counts[s, r] = 0
        f = 0
        while f < nf:
            t = types[f]
            cref = count_refs[f]
            rl = run_len[f]
            if rl > 0 and p + run_bytes[f] <= end:
                # a run of fixed-size fields nobody stores or reads a count from
                p += run_bytes[f]
                f += rl
                k = f
                continue
            if p >= end:
                # the record ends here; an array whose count (present) is 0 is still present
                if cref >= 0 and cref < k and values[cref] == 0:
                    s = slot[f]
                    if s >= 0:
                        starts[s, r] = p - base
                        counts[s, r] = 0
                    k = f + 1
                    f += 1
                    continue
                break
            if cref < 0 and t == FT_CN:
                # a single Cn string (the common variable-size field)
                size = 1 + np.int64(buf[p])
                if p + size > end:
                    ok = False
                    k = f
                    break
                s = slot[f]
                if s >= 0:
                    starts[s, r] = p - base
                    counts[s, r] = 1
                p += size
                k = f + 1
                f += 1
                continue
            nitems = 1
            if cref >= 0:
                nitems = values[cref]
            if nitems < 0:
                ok = False
                k = f
                break
            size = 0
            if cref < 0 and t <= FT_C1:
                size = FIXED_SIZES[t]
                if p + size <= end and needed[f]:
                    values[f] = _read_uint(buf, p, size, big_endian)
            elif cref >= 0 and t <= FT_C1:
                size = nitems * FIXED_SIZES[t]
            elif t == FT_N1:
                size = (nitems + 1) // 2
            elif t in (FT_UF, FT_CF):
                width = values[size_refs[f]]
                if (
                    t == FT_UF
                    and nitems > 0
                    and width != 1
                    and width != 2
                    and width != 4
                    and width != 8
                ):
                    ok = False
                    k = f
                    break
                size = nitems * width
            else:
                # variable-size items (Cn, Sn, Bn, Dn, Vn), one or an array of them
                q = p
                for _ in range(nitems):
                    if t in (FT_CN, FT_BN):
                        if q + 1 > end:
                            ok = False
                            break
                        q += 1 + np.int64(buf[q])
                    elif t == FT_SN:
                        if q + 2 > end:
                            ok = False
                            break
                        q += 2 + _read_uint(buf, q, 2, big_endian)
                    elif t == FT_DN:
                        if q + 2 > end:
                            ok = False
                            break
                        q += 2 + (_read_uint(buf, q, 2, big_endian) + 7) // 8
                    else:  # Vn: a type byte then a value of that type
                        if q + 1 > end:
                            ok = False
                            break
                        code = np.int64(buf[q])
                        q += 1
                        if code < 0 or code > 13 or code == 9:
                            ok = False
                            break
                        if code == 10 or code == 11:
                            if q + 1 > end:
                                ok = False
                                break
                            q += 1 + np.int64(buf[q])
                        elif code == 12:
                            if q + 2 > end:
                                ok = False
                                break
                            q += 2 + (_read_uint(buf, q, 2, big_endian) + 7) // 8
                        else:
                            q += _VN_SIZES[code]
                    if q > end:
                        ok = False
                        break
                size = q - p
            if not ok or p + size > end:
                ok = False
                k = f
                break
            s = slot[f]
            if s >= 0:
                starts[s, r] = p - base
                counts[s, r] = nitems
            p += size
            k = f + 1
            f += 1
        n_present[r] = k
        if not ok:
            bad_record = r
            bad_field = k
            for rr in range(r + 1, n):
                for s in range(ns):
                    starts[s, rr] = ABSENT
                    counts[s, rr] = 0
            break
    return n_present, starts, counts, bad_record, bad_field


def walk_fields(buf, offsets, lengths, big_endian, types, count_refs, size_refs, store):
    """Walk the fields of records of one type and locate the fields in ``store``.

    ``types[f]`` is the ``FT_*`` code of field ``f``; ``count_refs[f]`` the index of the earlier
    integer field holding the item count of an array field (-1 for a scalar); ``size_refs[f]``
    the index of the field holding the byte width of ``FT_UF``/``FT_CF`` items (-1 otherwise).
    A record may end before its last field (the rest is omitted); a field that starts inside the
    record but runs past its end makes the record malformed.

    Returns ``(n_present, starts, counts, bad_record, bad_field)``: per record the number of
    leading fields present (int16); per stored field ``s`` and record ``r`` where the field
    starts, in bytes from the start of the record's payload (``starts[s, r]``, uint16,
    ``ABSENT`` when omitted; for length-prefixed types the position of the length) and its item
    count (``counts[s, r]``, uint16, 1 for a scalar, 0 when omitted); the index of the first
    malformed record and field (-1, -1 when none; the walk stops there, and later records hold
    ``ABSENT``/0). Relative uint16 positions keep the output small: a payload is < 64 KiB.
    """
    arr = _ro("buf", buf, np.uint8, ndim=1)
    off = _ro("offsets", offsets, np.int64, ndim=1)
    lens = _ro("lengths", lengths, np.int32, ndim=1)
    if off.size != lens.size:
        raise ValueError(f"offsets ({off.size}) and lengths ({lens.size}) differ in size")
    if off.size and (off.min() < 0 or np.any(off + 4 + lens > arr.size)):
        raise ValueError("a record runs past the end of the buffer")
    ty = _ro("types", types, np.int64, ndim=1)
    cr = _ro("count_refs", count_refs, np.int64, ndim=1)
    sr = _ro("size_refs", size_refs, np.int64, ndim=1)
    st = _ro("store", store, np.int64, ndim=1)
    nf = ty.size
    if cr.size != nf or sr.size != nf:
        raise ValueError("types, count_refs and size_refs must have one entry per field")
    valid_types = set(range(12)) | {FT_CN, FT_SN, FT_BN, FT_DN, FT_N1, FT_UF, FT_CF, FT_VN}
    for f in range(nf):
        if int(ty[f]) not in valid_types:
            raise ValueError(f"field {f}: unknown type code {int(ty[f])}")
        if cr[f] >= f or (cr[f] >= 0 and ty[cr[f]] not in (FT_U1, FT_U2)):
            raise ValueError(f"field {f}: count_refs must name an earlier U1 or U2 field")
        if int(ty[f]) in (FT_UF, FT_CF) and not (0 <= sr[f] < f and ty[sr[f]] == FT_U1):
            raise ValueError(f"field {f}: size_refs must name an earlier U1 field")
        if int(ty[f]) in (FT_N1, FT_UF, FT_CF, FT_VN) and cr[f] < 0:
            raise ValueError(f"field {f}: type code {int(ty[f])} is only valid as an array")
    if st.size and (st.min() < 0 or st.max() >= nf or np.unique(st).size != st.size):
        raise ValueError("store must list distinct field indices")
    # runs of consecutive fixed-size scalars that are neither stored nor referenced as a count
    # or width are skipped in one step (the per-field path handles a record ending inside one)
    special = np.zeros(nf, dtype=np.bool_)
    special[st] = True
    special[cr[cr >= 0]] = True
    special[sr[sr >= 0]] = True
    plain = (ty <= FT_C1) & (cr < 0) & ~special
    run_len = np.zeros(nf, dtype=np.int64)
    run_bytes = np.zeros(nf, dtype=np.int64)
    for f in range(nf - 1, -1, -1):
        if plain[f]:
            nxt = run_len[f + 1] if f + 1 < nf else 0
            run_len[f] = 1 + nxt
            run_bytes[f] = FIXED_SIZES[ty[f]] + (run_bytes[f + 1] if f + 1 < nf else 0)
    needed = np.zeros(nf, dtype=np.bool_)
    needed[cr[cr >= 0]] = True
    needed[sr[sr >= 0]] = True
    return _walk_fields(
        arr, off, lens, bool(big_endian), ty, cr, sr, st, run_len, run_bytes, needed
    )


@numba.njit(**JIT)
def _gather_uint(buf, starts, size, big_endian):
    n = starts.size
    out = np.zeros(n, dtype=np.int64)
    for i in range(n):
        p = starts[i]
        if p >= 0:
            out[i] = _read_uint(buf, p, size, big_endian)
    return out


def gather_uint(buf, starts, size: int, big_endian: bool):
    """Read one unsigned ``size``-byte integer (1, 2, 4 or 8) at each start; 0 where start < 0.

    Returns int64 bit patterns: view/cast them for signed, float (``R4``/``R8``) or U8 values.
    """
    arr = _ro("buf", buf, np.uint8, ndim=1)
    st = _ro("starts", starts, np.int64, ndim=1)
    if size not in (1, 2, 4, 8):
        raise ValueError(f"size must be 1, 2, 4 or 8, got {size}")
    if st.size and st.max() >= 0 and st.max() + size > arr.size:
        raise ValueError("a start lies past the end of the buffer")
    return _gather_uint(arr, st, np.int64(size), bool(big_endian))


@numba.njit(**JIT)
def _gather_strings(buf, starts, prefix, big_endian, latin1):
    n = starts.size
    out_offsets = np.zeros(n + 1, dtype=np.int64)
    total = 0
    for i in range(n):
        p = starts[i]
        if p >= 0:
            length = _read_uint(buf, p, prefix, big_endian)
            q = p + prefix
            if latin1:
                for j in range(length):
                    total += 2 if buf[q + j] >= 128 else 1
            else:
                total += length
        out_offsets[i + 1] = total
    data = np.empty(total, dtype=np.uint8)
    w = 0
    for i in range(n):
        p = starts[i]
        if p >= 0:
            length = _read_uint(buf, p, prefix, big_endian)
            q = p + prefix
            for j in range(length):
                b = buf[q + j]
                if latin1 and b >= 128:
                    data[w] = 0xC0 | (b >> 6)
                    data[w + 1] = 0x80 | (b & 0x3F)
                    w += 2
                else:
                    data[w] = b
                    w += 1
    return data, out_offsets


def gather_strings(buf, starts, prefix: int = 1, big_endian: bool = False, latin1: bool = True):
    """Collect length-prefixed strings (``Cn``/``Bn``: prefix 1, ``Sn``: prefix 2) into one buffer.

    Returns ``(data, offsets)`` in Arrow's string layout: item ``i`` is
    ``data[offsets[i]:offsets[i + 1]]`` (empty where ``starts[i] < 0``). With ``latin1`` every
    byte is taken as a Latin-1 character and written as UTF-8 (bytes >= 0x80 become two bytes),
    so the result is always valid UTF-8; without it the bytes are copied as they are.
    """
    arr = _ro("buf", buf, np.uint8, ndim=1)
    st = _ro("starts", starts, np.int64, ndim=1)
    if prefix not in (1, 2):
        raise ValueError(f"prefix must be 1 or 2, got {prefix}")
    if st.size and st.max() >= 0 and st.max() + prefix > arr.size:
        raise ValueError("a start lies past the end of the buffer")
    data, off = _gather_strings(arr, st, np.int64(prefix), bool(big_endian), bool(latin1))
    return data, off


@numba.njit(**JIT)
def _gather_uint_arrays(buf, starts, counts, size, big_endian):
    n = starts.size
    list_offsets = np.zeros(n + 1, dtype=np.int64)
    total = 0
    for i in range(n):
        if starts[i] >= 0:
            total += counts[i]
        list_offsets[i + 1] = total
    values = np.empty(total, dtype=np.int64)
    for i in range(n):
        p = starts[i]
        if p >= 0:
            base = list_offsets[i]
            for j in range(counts[i]):
                values[base + j] = _read_uint(buf, p + j * size, size, big_endian)
    return values, list_offsets


def gather_uint_arrays(buf, starts, counts, size: int, big_endian: bool):
    """Read arrays of ``counts[i]`` unsigned ``size``-byte integers starting at ``starts[i]``.

    Returns ``(values, list_offsets)``: the int64 bit patterns of every item, flat, and int64
    offsets (array ``i`` is ``values[list_offsets[i]:list_offsets[i + 1]]``, empty where
    ``starts[i] < 0``).
    """
    arr = _ro("buf", buf, np.uint8, ndim=1)
    st = _ro("starts", starts, np.int64, ndim=1)
    ct = _ro("counts", counts, np.int64, ndim=1)
    if st.size != ct.size:
        raise ValueError("starts and counts differ in size")
    if size not in (1, 2, 4, 8):
        raise ValueError(f"size must be 1, 2, 4 or 8, got {size}")
    used = st >= 0
    if np.any(ct[used] < 0) or (used.any() and np.max(st[used] + ct[used] * size) > arr.size):
        raise ValueError("an array runs past the end of the buffer")
    return _gather_uint_arrays(arr, st, ct, np.int64(size), bool(big_endian))


@numba.njit(**JIT)
def _gather_nibbles(buf, starts, counts):
    n = starts.size
    list_offsets = np.zeros(n + 1, dtype=np.int64)
    total = 0
    for i in range(n):
        if starts[i] >= 0:
            total += counts[i]
        list_offsets[i + 1] = total
    values = np.empty(total, dtype=np.uint8)
    for i in range(n):
        p = starts[i]
        if p >= 0:
            base = list_offsets[i]
            for j in range(counts[i]):
                b = buf[p + j // 2]
                values[base + j] = (b & 0x0F) if j % 2 == 0 else (b >> 4)
    return values, list_offsets


def gather_nibbles(buf, starts, counts):
    """Unpack ``k x N1`` nibble arrays (two per byte, first item in the low nibble).

    Returns ``(values uint8, list_offsets int64)`` like :func:`gather_uint_arrays`.
    """
    arr = _ro("buf", buf, np.uint8, ndim=1)
    st = _ro("starts", starts, np.int64, ndim=1)
    ct = _ro("counts", counts, np.int64, ndim=1)
    if st.size != ct.size:
        raise ValueError("starts and counts differ in size")
    used = st >= 0
    if np.any(ct[used] < 0) or (used.any() and np.max(st[used] + (ct[used] + 1) // 2) > arr.size):
        raise ValueError("a nibble array runs past the end of the buffer")
    return _gather_nibbles(arr, st, ct)


@numba.njit(**JIT)
def _assign_parts(kinds, heads, sites, open_slot, next_slot, next_part, slot_part):
    n = kinds.size
    rec_slot = np.full(n, -1, dtype=np.int64)
    rec_part = np.full(n, -1, dtype=np.int64)
    n_open = 0
    sum_hs = 0
    for hs in range(open_slot.size):
        if open_slot[hs] >= 0:
            n_open += 1
            sum_hs += hs
    n_crossed = 0
    error = PARTS_OK
    error_at = -1
    for i in range(n):
        kind = kinds[i]
        if kind == KIND_OTHER:
            continue
        hs = np.int64(heads[i]) * 256 + np.int64(sites[i])
        if kind == KIND_PIR:
            if open_slot[hs] >= 0:
                error = PARTS_PIR_TWICE
                error_at = i
                break
            open_slot[hs] = next_slot
            rec_slot[i] = next_slot
            next_slot += 1
            n_open += 1
            sum_hs += hs
        elif kind == KIND_PRR:
            if open_slot[hs] < 0:
                if n_open != 1:
                    error = PARTS_PRR_WITHOUT_PIR
                    error_at = i
                    break
                # the only open part ends under another head/site number
                hs = sum_hs
                n_crossed += 1
            s = open_slot[hs]
            slot_part[s] = next_part
            rec_slot[i] = s
            rec_part[i] = next_part
            next_part += 1
            open_slot[hs] = -1
            n_open -= 1
            sum_hs -= hs
        else:
            rec_slot[i] = open_slot[hs]
    return rec_slot, rec_part, next_slot, next_part, n_crossed, error, error_at


def assign_parts(kinds, heads, sites, open_slot, next_slot: int, next_part: int, slot_part):
    """Link PIR, PRR and result records to parts, in file order.

    A part is the span PIR..PRR of one (head, site); results of several sites interleave. Each
    PIR opens a *slot* (numbered in PIR order, from ``next_slot``); its PRR gives the slot its
    ``part_seq`` (PRR order, from ``next_part``) in ``slot_part``. A PRR whose (head, site) has no
    open part closes the only open part when exactly one is open (files whose PIR and PRR
    disagree on the numbers; counted in ``n_crossed``), else it is an error. ``open_slot``
    (int64, 65536 entries, index ``head * 256 + site``, -1 = none) and ``slot_part`` (int64, one
    entry per slot ever opened) carry the state across calls and are updated in place: they are
    state owned by the caller, not inputs.

    Returns ``(rec_slot, rec_part, next_slot, next_part, n_crossed, error, error_at)``: per
    record its slot (-1 for results outside any part and for ``KIND_OTHER``) and, for a PRR, its
    part_seq; the first inconsistency (``PARTS_PRR_WITHOUT_PIR`` or ``PARTS_PIR_TWICE``) and its
    record index (the walk stops there; ``PARTS_OK``, -1 when none).
    """
    k = _ro("kinds", kinds, np.uint8, ndim=1)
    h0, s0 = np.asarray(heads), np.asarray(sites)
    if h0.size and (h0.min() < 0 or h0.max() > 255 or s0.min() < 0 or s0.max() > 255):
        raise ValueError("heads and sites must lie in 0..255")
    h = _ro("heads", h0, np.uint8, ndim=1)
    s = _ro("sites", s0, np.uint8, ndim=1)
    if not (k.size == h.size == s.size):
        raise ValueError("kinds, heads and sites differ in size")
    check_out("open_slot", open_slot, np.int64, (65536,))
    if not (isinstance(slot_part, np.ndarray) and slot_part.dtype == np.int64
            and slot_part.ndim == 1 and slot_part.flags.writeable
            and slot_part.flags.c_contiguous):  # fmt: skip
        raise ValueError("slot_part must be a writeable 1-d int64 array")
    n_pir = int(np.count_nonzero(k == KIND_PIR))
    if slot_part.size < next_slot + n_pir:
        raise ValueError(f"slot_part needs at least {next_slot + n_pir} entries")
    return _assign_parts(k, h, s, open_slot, np.int64(next_slot), np.int64(next_part), slot_part)


@numba.njit(**JIT)
def _carry_forward(values, given, key_local, key_test, n_local, n_test):
    n = values.size
    out = np.empty(n, dtype=values.dtype)
    valid = np.zeros(n, dtype=np.bool_)
    local_set = np.zeros(n_local, dtype=np.bool_)
    local_val = np.zeros(n_local, dtype=values.dtype)
    local_ok = np.zeros(n_local, dtype=np.bool_)
    test_set = np.zeros(n_test, dtype=np.bool_)
    test_val = np.zeros(n_test, dtype=values.dtype)
    test_ok = np.zeros(n_test, dtype=np.bool_)
    for i in range(n):
        a = key_local[i]
        t = key_test[i]
        g = given[i]
        if g != 0:
            # the record states the field: 1 = a value, 2 = explicitly "none" (e.g. no limit)
            out[i] = values[i]
            valid[i] = g == 1
            if not local_set[a]:
                local_set[a] = True
                local_val[a] = values[i]
                local_ok[a] = g == 1
            if not test_set[t]:
                test_set[t] = True
                test_val[t] = values[i]
                test_ok[t] = g == 1
        elif local_set[a]:
            out[i] = local_val[a]
            valid[i] = local_ok[a]
        elif test_set[t]:
            out[i] = test_val[t]
            valid[i] = test_ok[t]
        else:
            out[i] = values[i]
    return out, valid


def carry_forward(values, given, key_local, key_test):
    """Resolve STDF default data: a field omitted or flagged invalid takes the first given value.

    ``given[i]`` says what record ``i`` states about the field: 0 = nothing (omitted, or an
    OPT_FLAG "invalid, use the default" bit), 1 = a value (``values[i]``), 2 = "none" (e.g. OPT_FLAG
    "no low limit"). Records are in file order. The default of a record is the first stated
    value of its ``key_local`` group (test, head, site), else of its ``key_test`` group (test):
    "the first PTR for each test ... the default for each subsequent PTR with the same test
    number" (STDF V4, PTR). Keys are dense ids ``0..k-1``.

    Returns ``(resolved, valid)``: the value in force and whether there is one.
    """
    v = np.ascontiguousarray(values).view()
    v.flags.writeable = False
    if v.ndim != 1 or v.dtype.kind not in "iuf":
        raise ValueError("values must be a 1-d numeric array")
    g = _ro("given", given, np.uint8, ndim=1)
    kl = _ro("key_local", key_local, np.int64, ndim=1)
    kt = _ro("key_test", key_test, np.int64, ndim=1)
    if not (v.size == g.size == kl.size == kt.size):
        raise ValueError("values, given, key_local and key_test differ in size")
    if v.size and (kl.min() < 0 or kt.min() < 0 or g.max() > 2):
        raise ValueError("keys must be non-negative and given must be 0, 1 or 2")
    n_local = int(kl.max()) + 1 if kl.size else 0
    n_test = int(kt.max()) + 1 if kt.size else 0
    return _carry_forward(v, g, kl, kt, n_local, n_test)


@numba.njit(**JIT)
def _retest_chains(pred):
    n = pred.size
    retest_index = np.zeros(n, dtype=np.int64)
    final = np.ones(n, dtype=np.bool_)
    for i in range(n):
        j = pred[i]
        if j >= 0:
            retest_index[i] = retest_index[j] + 1
            final[j] = False
    return retest_index, final


def retest_chains(pred):
    """Retest index and final flag of parts from the part each one supersedes.

    ``pred[i]`` is the index of the earlier part that part ``i`` supersedes (STDF PRR.PART_FLG
    bit 0 / bit 1: same PART_ID / same X-Y), or -1. Returns ``(retest_index, final)``: the depth
    of ``i`` in its chain of retests (0 = first test) and False for every part superseded by a
    later one.
    """
    p = _ro("pred", pred, np.int64, ndim=1)
    if p.size and np.any((p >= np.arange(p.size)) | (p < -1)):
        raise ValueError("pred[i] must be -1 or an index below i")
    return _retest_chains(p)


@numba.njit(**JIT)
def _hash_slot(k, mask):
    h = (np.uint64(k) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(17)
    return np.int64(h & np.uint64(mask))


@numba.njit(**JIT)
def _group_ids(keys):
    # open addressing; the table starts small (cache-resident) and doubles at half load
    n = keys.size
    size = 64
    mask = size - 1
    table_id = np.full(size, -1, dtype=np.int64)
    ids = np.empty(n, dtype=np.int64)
    first = np.empty(max(n, 1), dtype=np.int64)
    n_groups = 0
    for i in range(n):
        k = keys[i]
        j = _hash_slot(k, mask)
        while True:
            g = table_id[j]
            if g < 0:
                table_id[j] = n_groups
                first[n_groups] = i
                ids[i] = n_groups
                n_groups += 1
                if 2 * n_groups > size:
                    size *= 2
                    mask = size - 1
                    table_id = np.full(size, -1, dtype=np.int64)
                    for gg in range(n_groups):
                        jj = _hash_slot(keys[first[gg]], mask)
                        while table_id[jj] >= 0:
                            jj = (jj + 1) & mask
                        table_id[jj] = gg
                break
            if keys[first[g]] == k:
                ids[i] = g
                break
            j = (j + 1) & mask
    return ids, first[:n_groups].copy()


def group_ids(keys):
    """Dense group ids of int64 keys, numbered in order of first appearance (one O(n) pass).

    Returns ``(ids, first)``: ``ids[i]`` in ``0..g-1`` and ``first[g]`` the index of the first
    element of group ``g`` (so ``keys[first]`` are the distinct keys in first-seen order).
    """
    k = _ro("keys", keys, np.int64, ndim=1)
    return _group_ids(k)


@numba.njit(**JIT)
def _first_per_group(ids, flags, n_groups):
    out = np.full(n_groups, -1, dtype=np.int64)
    for i in range(ids.size):
        g = ids[i]
        if flags[i] and out[g] < 0:
            out[g] = i
    return out


def first_per_group(ids, flags, n_groups: int):
    """Index of the first element of each group with a true flag (-1 where none)."""
    g = _ro("ids", ids, np.int64, ndim=1)
    f = _ro("flags", flags, np.bool_, ndim=1)
    if g.size != f.size:
        raise ValueError("ids and flags differ in size")
    if g.size and (g.min() < 0 or g.max() >= n_groups):
        raise ValueError(f"ids must lie in 0..{n_groups - 1}")
    return _first_per_group(g, f, np.int64(n_groups))


@numba.njit(**JIT)
def _count_repeated_pairs(a, b, nb):
    seen = np.zeros(((a.max() + 1) * nb + 7) // 8 if a.size else 1, dtype=np.uint8)
    repeated = 0
    for i in range(a.size):
        bit = a[i] * nb + b[i]
        byte = bit >> 3
        m = np.uint8(1) << np.uint8(bit & 7)
        if seen[byte] & m:
            repeated += 1
        else:
            seen[byte] |= m
    return repeated


#: Largest bitmap (bits) count_repeated_pairs uses before it falls back to hashing.
_PAIR_BITMAP_LIMIT = 1 << 30


def count_repeated_pairs(a, b, nb: int) -> int:
    """How many ``(a[i], b[i])`` pairs repeat an earlier pair (0 = all distinct).

    ``a`` and ``b`` are non-negative int64 with ``b < nb``. Uses a bitmap of
    ``(max(a) + 1) * nb`` bits (O(n), cache-friendly for dense ids), or hashing when that
    would exceed 2**30 bits.
    """
    x = _ro("a", a, np.int64, ndim=1)
    y = _ro("b", b, np.int64, ndim=1)
    if x.size != y.size:
        raise ValueError("a and b differ in size")
    if not x.size:
        return 0
    if x.min() < 0 or y.min() < 0 or y.max() >= nb:
        raise ValueError(f"a must be non-negative and b must lie in 0..{nb - 1}")
    if (int(x.max()) + 1) * int(nb) <= _PAIR_BITMAP_LIMIT:
        return int(_count_repeated_pairs(x, y, np.int64(nb)))
    _ids, first = group_ids(x * np.int64(nb) + y)
    return int(x.size - first.size)


@numba.njit(**JIT)
def _previous_in_group(ids, n_groups):
    last = np.full(n_groups, -1, dtype=np.int64)
    prev = np.empty(ids.size, dtype=np.int64)
    for i in range(ids.size):
        g = ids[i]
        if g < 0:
            prev[i] = -1
            continue
        prev[i] = last[g]
        last[g] = i
    return prev


def previous_in_group(ids, n_groups: int):
    """Index of the previous element with the same group id (-1 for the first, or id < 0)."""
    g = _ro("ids", ids, np.int64, ndim=1)
    if g.size and g.max() >= n_groups:
        raise ValueError(f"ids must lie below n_groups={n_groups}")
    return _previous_in_group(g, np.int64(n_groups))


@numba.njit(**JIT)
def _gather_columns(buf, offsets, lengths, rel, sizes, big_endian):
    # records in the outer loop: each record's bytes are touched once (one cache line for most
    # headers); the output is field-major so that every column comes out contiguous
    nf = rel.size
    n = offsets.size
    out = np.empty((nf, n), dtype=np.uint32)
    for i in range(n):
        p = offsets[i] + 4
        length = lengths[i]
        for f in range(nf):
            r = rel[f]
            size = sizes[f]
            if r + size <= length:
                q = p + r
                if size == 1:
                    v = np.uint32(buf[q])
                elif size == 2:
                    if big_endian:
                        v = (np.uint32(buf[q]) << 8) | np.uint32(buf[q + 1])
                    else:
                        v = (np.uint32(buf[q + 1]) << 8) | np.uint32(buf[q])
                elif big_endian:
                    v = (
                        (np.uint32(buf[q]) << 24)
                        | (np.uint32(buf[q + 1]) << 16)
                        | (np.uint32(buf[q + 2]) << 8)
                        | np.uint32(buf[q + 3])
                    )
                else:
                    v = (
                        (np.uint32(buf[q + 3]) << 24)
                        | (np.uint32(buf[q + 2]) << 16)
                        | (np.uint32(buf[q + 1]) << 8)
                        | np.uint32(buf[q])
                    )
                out[f, i] = v
            else:
                out[f, i] = 0
    return out


def gather_columns(buf, offsets, lengths, rel, sizes, big_endian: bool):
    """Fixed-position fields of records: field ``f`` is the unsigned ``sizes[f]``-byte integer
    (1, 2 or 4) at byte ``rel[f]`` of each record's payload (after the 4-byte header).

    Returns a C-contiguous uint32 array ``(len(rel), n)`` (one contiguous row per field): the
    values (bit patterns), 0 where the record ends before the field (``lengths < rel + size``
    tells those apart).
    """
    arr = _ro("buf", buf, np.uint8, ndim=1)
    off = _ro("offsets", offsets, np.int64, ndim=1)
    lens = _ro("lengths", lengths, np.int32, ndim=1)
    r = _ro("rel", rel, np.int64, ndim=1)
    sz = _ro("sizes", sizes, np.int64, ndim=1)
    if off.size != lens.size or r.size != sz.size:
        raise ValueError("offsets/lengths and rel/sizes must pair up")
    if sz.size and (np.any(r < 0) or not np.isin(sz, (1, 2, 4)).all()):
        raise ValueError("rel must be non-negative and sizes 1, 2 or 4")
    if off.size and (off.min() < 0 or np.any(off + 4 + lens > arr.size)):
        raise ValueError("a record runs past the end of the buffer")
    return _gather_columns(arr, off, lens, r, sz, bool(big_endian))


#: Record keys (REC_TYP << 8 | REC_SUB) that record_kinds classifies.
KEY_PIR, KEY_PRR = (5 << 8) | 10, (5 << 8) | 20
KEY_PTR, KEY_MPR, KEY_FTR = (15 << 8) | 10, (15 << 8) | 15, (15 << 8) | 20


@numba.njit(**JIT)
def _record_kinds(buf, offsets, keys, lengths):
    n = offsets.size
    kinds = np.zeros(n, dtype=np.uint8)
    heads = np.zeros(n, dtype=np.uint8)
    sites = np.zeros(n, dtype=np.uint8)
    for i in range(n):
        k = keys[i]
        p = offsets[i] + 4
        if k in (KEY_PIR, KEY_PRR):
            if lengths[i] >= 2:
                kinds[i] = KIND_PIR if k == KEY_PIR else KIND_PRR
                heads[i] = buf[p]
                sites[i] = buf[p + 1]
        elif (k in (KEY_PTR, KEY_MPR, KEY_FTR)) and lengths[i] >= 6:
            kinds[i] = KIND_RESULT
            heads[i] = buf[p + 4]
            sites[i] = buf[p + 5]
    return kinds, heads, sites


def record_kinds(buf, offsets, keys, lengths):
    """Per record: its role for :func:`assign_parts` (``KIND_PIR``, ``KIND_PRR``, ``KIND_RESULT``
    for PTR/MPR/FTR, else ``KIND_OTHER``) and its HEAD_NUM and SITE_NUM (uint8), in one pass.

    A record too short to hold its head and site is ``KIND_OTHER`` (its length is checked
    elsewhere).
    """
    arr = _ro("buf", buf, np.uint8, ndim=1)
    off = _ro("offsets", offsets, np.int64, ndim=1)
    ky = _ro("keys", keys, np.uint16, ndim=1)
    lens = _ro("lengths", lengths, np.int32, ndim=1)
    if not (off.size == ky.size == lens.size):
        raise ValueError("offsets, keys and lengths differ in size")
    if off.size and (off.min() < 0 or np.any(off + 4 + lens > arr.size)):
        raise ValueError("a record runs past the end of the buffer")
    return _record_kinds(arr, off, ky, lens)
