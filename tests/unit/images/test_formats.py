"""Compression by magic bytes; checksum, size and decompressed size in one pass."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conductor.images import formats

RAW = os.urandom(100_000) + b"\x00" * 1_000_000


@pytest.mark.parametrize(("head", "expected"), [
    (b"\x1f\x8b\x08\x00", "gzip"),
    (b"\xfd7zXZ\x00\x00\x04", "xz"),
    (b"\x28\xb5\x2f\xfd\x24", "zstd"),
    (b"\xeb\x63\x90\x10", "none"),  # a boot sector
    (b"", "none"),
    (b"\x1f", "none"),
])
def test_detect_by_magic(head: bytes, expected: str) -> None:
    assert formats.detect(head) == expected


def _digest(data: bytes, piece: int) -> formats.Digest:
    digest = formats.Digest()
    for start in range(0, len(data), piece):
        digest.update(data[start:start + piece])
    return digest


@pytest.mark.parametrize("piece", [1, 3, 65536, 10**7])
@pytest.mark.parametrize(("name", "pack"), [
    ("none", lambda b: b),
    ("gzip", gzip.compress),
    ("xz", lzma.compress),
    ("gzip", lambda b: gzip.compress(b[:1000]) + gzip.compress(b[1000:])),  # two members (pigz, cat)
])
def test_digest_any_chunking(name, pack, piece) -> None:  # type: ignore[no-untyped-def]
    packed = pack(RAW) if piece > 1 else pack(RAW[:3000])
    raw_size = len(RAW) if piece > 1 else 3000
    digest = _digest(packed, piece)
    assert digest.sha256 == hashlib.sha256(packed).hexdigest() and digest.size == len(packed)
    assert digest.finish() == (name, raw_size)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="no zstd")
def test_zstd_is_recognised_with_an_unknown_size(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(RAW)
    subprocess.run(["zstd", "-q", str(tmp_path / "a"), "-o", str(tmp_path / "a.zst")], check=True)
    assert formats.digest_file(tmp_path / "a.zst").finish() == ("zstd", None)


def test_truncated_and_corrupt_compressed_data() -> None:
    packed = gzip.compress(RAW)
    with pytest.raises(formats.CorruptImage, match="ends early"):
        _digest(packed[: len(packed) // 2], 65536).finish()
    broken = bytearray(lzma.compress(RAW))
    broken[200:210] = b"\xff" * 10
    digest = _digest(bytes(broken), 65536)
    # Hashing went on to the end (a mismatch is what a caller reports first).
    assert digest.size == len(broken)
    with pytest.raises(formats.CorruptImage, match="corrupt"):
        digest.finish()


def test_a_bomb_is_counted_not_held() -> None:
    """256 MiB of zeros compress to ~250 KB; counting them must not expand them in memory."""
    import resource

    compressor = zlib_gzip()
    packed = b"".join(compressor)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest = _digest(packed, 1 << 20)
    assert digest.finish() == ("gzip", 256 << 20)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def zlib_gzip() -> list[bytes]:
    import zlib

    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    zeros = b"\x00" * (1 << 20)
    return [compressor.compress(zeros) for _ in range(256)] + [compressor.flush()]
