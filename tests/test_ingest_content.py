"""Ingest's content layer: compression by magic number, size limits, damage, STDF detection."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import zipfile

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from backend_fab.errors import IngestError
from backend_fab.ingest import (
    compression_of,
    content_hash,
    is_stdf,
    read_content,
    read_head,
)

FAR_LE = b"\x02\x00\x00\x0a\x02\x04"
FAR_BE = b"\x00\x02\x00\x0a\x01\x04"


def _zip(data: bytes, name: str = "member.stdf", extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
        for k, v in (extra or {}).items():
            zf.writestr(k, v)
    return buf.getvalue()


COMPRESS = {
    None: lambda b: b,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zip": _zip,
}


@given(
    data=st.binary(max_size=3000),
    kind=st.sampled_from(sorted(COMPRESS, key=str)),
    split=st.integers(0, 3000),
)
def test_read_content_expands_every_format(tmp_path_factory, data, kind, split):
    # content is classified by its magic number: plain data cannot start like a compressed file
    assume(kind is not None or compression_of(data) is None)
    if kind in ("gzip", "bzip2", "xz"):
        # concatenated members are one stream (gzip -c a b > ab.gz)
        packed = COMPRESS[kind](data[:split]) + COMPRESS[kind](data[split:])
    else:
        packed = COMPRESS[kind](data)
    path = tmp_path_factory.mktemp("c") / "file.bin"
    path.write_bytes(packed)
    content = read_content(path)
    assert content.data == data
    assert content.compression == kind
    assert content.size_on_disk == len(packed)
    assert content.problem is None
    assert content_hash(content.data) == hashlib.sha256(data).hexdigest()
    head, _ = read_head(path, 100)
    assert head == data[:100]


def test_large_gzip_streams_in_chunks(tmp_path):
    data = bytes(range(256)) * 40_000  # 10 MB: several output chunks per input chunk
    path = tmp_path / "big.gz"
    path.write_bytes(gzip.compress(data, compresslevel=1))
    assert read_content(path).data == data


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz"])
def test_truncated_stream_raises_or_salvages_prefix(tmp_path, kind):
    data = b"".join(i.to_bytes(4, "little") for i in range(200_000))
    # bzip2 level 1 uses 100 kB blocks, so a cut file still holds whole blocks to salvage
    packed = bz2.compress(data, 1) if kind == "bzip2" else COMPRESS[kind](data)
    path = tmp_path / "cut.bin"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    with pytest.raises(IngestError, match="truncated") as info:
        read_content(path)
    assert str(path) in str(info.value)
    salvaged = read_content(path, partial_ok=True)
    assert "truncated" in salvaged.problem
    assert 0 < len(salvaged.data) < len(data)
    assert data.startswith(salvaged.data)


def test_corrupt_gzip_names_file_and_offset(tmp_path):
    packed = bytearray(gzip.compress(bytes(range(256)) * 400))
    packed[40:60] = b"\xff" * 20
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(IngestError, match="corrupt") as info:
        read_content(path)
    assert "byte offset" in str(info.value)
    assert str(path) in str(info.value)


def test_trailing_zeros_are_padding_but_garbage_is_an_error(tmp_path):
    data = b"payload" * 100
    padded = tmp_path / "padded.gz"
    padded.write_bytes(gzip.compress(data) + b"\0" * 512)
    assert read_content(padded).data == data
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(gzip.compress(data) + b"not gzip at all")
    with pytest.raises(IngestError, match="not gzip"):
        read_content(garbage)


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zip"])
def test_expansion_limit_refuses_bombs(tmp_path, kind):
    data = b"\0" * (3 * 2**20)
    path = tmp_path / "bomb.bin"
    path.write_bytes(COMPRESS[kind](data))
    with pytest.raises(IngestError, match="expands"):
        read_content(path, max_expanded_bytes=2**20)
    with pytest.raises(IngestError, match="expands"):  # salvage does not lift the limit
        read_content(path, max_expanded_bytes=2**20, partial_ok=True)
    assert len(read_content(path, max_expanded_bytes=4 * 2**20).data) == len(data)


def test_zip_must_hold_exactly_one_file(tmp_path):
    path = tmp_path / "two.zip"
    path.write_bytes(_zip(b"a", extra={"b.stdf": b"b"}))
    with pytest.raises(IngestError, match="holds 2 files"):
        read_content(path)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(_zip(b"x" * 5000)[:50])
    with pytest.raises(IngestError, match="zip archive is corrupt or truncated"):
        read_content(cut)


def test_read_head_never_raises_on_damage(tmp_path):
    data = FAR_BE + bytes(range(256)) * 1000
    packed = gzip.compress(data)
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    head, kind = read_head(path)
    assert kind == "gzip"
    assert head.startswith(FAR_BE)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert read_head(empty) == (b"", None)


def test_is_stdf_recognises_far_in_both_byte_orders(tmp_path):
    assert is_stdf(tmp_path, FAR_LE + b"rest")
    assert is_stdf(tmp_path, FAR_BE)
    assert not is_stdf(tmp_path, b"")
    assert not is_stdf(tmp_path, FAR_LE[:4])
    assert not is_stdf(tmp_path, b"\x00\x02\x01\x0a\x01\x04")  # REC_TYP 1 (MIR family)
    assert not is_stdf(tmp_path, b"\x03\x00\x00\x0a\x02\x04")  # REC_LEN 3
    assert not is_stdf(tmp_path, b"lot,wafer,x,y\n")
