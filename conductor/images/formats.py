"""Image files: their compression, checksum and sizes, in one streaming pass.

Compression is recognised by the file's first bytes, never by its name:
gzip ``1f 8b``, xz ``fd 37 7a 58 5a 00``, zstd ``28 b5 2f fd``; anything
else is a raw image (``none``).  The agent writes raw images as they are
and decompresses gzip and xz (busybox); zstd is recognised so that the
agent can refuse it clearly.

:class:`Digest` is fed the file's chunks as they are read or downloaded.
Besides the SHA-256 and byte count it decompresses gzip and xz on the fly
to count the bytes the agent will write (the decompressed size chooses a
disk that holds the image), in bounded pieces: a few MB of compressed
zeros expand to GBs, never in memory.  A corrupt or truncated compressed
file is found in the same pass.
"""

from __future__ import annotations

import hashlib
import lzma
import zlib
from pathlib import Path

NONE, GZIP, XZ, ZSTD = "none", "gzip", "xz", "zstd"
COMPRESSIONS = (NONE, GZIP, XZ, ZSTD)
MAGIC = {GZIP: b"\x1f\x8b", XZ: b"\xfd7zXZ\x00", ZSTD: b"\x28\xb5\x2f\xfd"}
#: How many first bytes :func:`detect` needs.
HEAD = max(len(m) for m in MAGIC.values())
CHUNK = 1024 * 1024
#: Largest piece of decompressed output held at once.
_OUT = 4 * 1024 * 1024


class CorruptImage(ValueError):
    """A compressed image that does not decompress (corrupt or truncated)."""


def detect(head: bytes) -> str:
    """The compression of a file starting with ``head`` (at least :data:`HEAD` bytes when there are)."""
    for name, magic in MAGIC.items():
        if head.startswith(magic):
            return name
    return NONE


class _Counter:
    """Counts the decompressed bytes of a gzip or xz stream (several members or streams allowed)."""

    def __init__(self, compression: str) -> None:
        self.compression = compression
        self.size = 0
        self._new()

    def _new(self) -> None:
        if self.compression == GZIP:
            self._z: zlib._Decompress | None = zlib.decompressobj(wbits=31)
            self._x: lzma.LZMADecompressor | None = None
        else:
            self._z, self._x = None, lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        self._started = False

    def feed(self, data: bytes) -> None:
        while data:
            self._started = True
            try:
                data = self._gzip(data) if self._z is not None else self._xz(data)
            except (zlib.error, lzma.LZMAError) as exc:
                raise CorruptImage(f"the {self.compression} data is corrupt: {exc}") from None
            if data:
                # What follows one member (stream) is the next one; xz pads streams with zeros.
                if self.compression == XZ:
                    data = data.lstrip(b"\x00")
                    if not data:
                        return
                self._new()

    def _gzip(self, data: bytes) -> bytes:
        assert self._z is not None
        self.size += len(self._z.decompress(data, _OUT))
        while self._z.unconsumed_tail:
            self.size += len(self._z.decompress(self._z.unconsumed_tail, _OUT))
        return self._z.unused_data if self._z.eof else b""

    def _xz(self, data: bytes) -> bytes:
        assert self._x is not None
        self.size += len(self._x.decompress(data, _OUT))
        while not self._x.eof and not self._x.needs_input:
            self.size += len(self._x.decompress(b"", _OUT))
        return self._x.unused_data if self._x.eof else b""

    def finish(self) -> int:
        done = self._z.eof if self._z is not None else self._x.eof  # type: ignore[union-attr]
        if self._started and not done:
            raise CorruptImage(f"the {self.compression} data ends early (truncated)")
        return self.size


class Digest:
    """SHA-256, size, compression and decompressed size of a file fed chunk by chunk."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        #: What was fed before the compression was known (less than HEAD bytes, then the chunk completing them).
        self._pending = b""
        self._counter: _Counter | None = None
        self.size = 0
        self.compression: str | None = None
        #: Why the compressed data does not decompress (raised by :meth:`finish`).
        self.error: CorruptImage | None = None

    def update(self, data: bytes) -> None:
        """Feed the next chunk."""
        self._sha.update(data)
        self.size += len(data)
        if self.compression is None:
            self._pending += data
            if len(self._pending) >= HEAD:
                self._decide()
            return
        self._count(data)

    def _decide(self) -> None:
        self.compression = detect(self._pending[:HEAD])
        if self.compression in (GZIP, XZ):
            self._counter = _Counter(self.compression)
            self._count(self._pending)
        self._pending = b""

    def _count(self, data: bytes) -> None:
        # A corrupt stream stops the counting, not the hashing: a damaged
        # download is then reported as a checksum mismatch, the clearer error.
        if self._counter is None or self.error is not None:
            return
        try:
            self._counter.feed(data)
        except CorruptImage as exc:
            self.error = exc

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def finish(self) -> tuple[str, int | None]:
        """The compression and the decompressed size (None: not known, zstd).

        :raises CorruptImage: a compressed file ends early.
        """
        if self.compression is None:
            self._decide()
        assert self.compression is not None
        if self.error is not None:
            raise self.error
        if self._counter is not None:
            return self.compression, self._counter.finish()
        return self.compression, (None if self.compression == ZSTD else self.size)


def digest_file(path: Path) -> Digest:
    """A finished :class:`Digest` of the file at ``path`` (read in 1 MiB chunks).

    :raises OSError: the file cannot be read.
    :raises CorruptImage: a compressed file that does not decompress.
    """
    digest = Digest()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    digest.finish()
    return digest
