"""A reproducible cpio "newc" writer (the format the kernel unpacks as an initramfs).

Entries are written sorted by path, parents before children, owned by
root, with one fixed mtime and inode numbers counted from 1, so that the
same inputs give the same bytes.  Wrapped in gzip with a zero header mtime
and no file name (:func:`write_gzip`).

Format (``Documentation/driver-api/early-userspace/buffer-format.rst`` in
the kernel): per entry a 110-byte ASCII header (``070701`` then 13 fields
of 8 hex digits), the NUL-terminated name padded to a multiple of 4, the
data padded to a multiple of 4; the archive ends with ``TRAILER!!!``.
"""

from __future__ import annotations

import dataclasses
import gzip
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # _typeshed exists for type checkers only
    from _typeshed import SupportsWrite

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One archive member.  ``path`` is relative (``bin/busybox``), no leading slash."""

    path: str
    mode: int  # type bits and permissions, as in st_mode
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # device nodes: (major, minor)

    @classmethod
    def directory(cls, path: str, perm: int = 0o755) -> Entry:
        return cls(path, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, path: str, data: bytes, perm: int = 0o644) -> Entry:
        return cls(path, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, path: str, target: str) -> Entry:
        return cls(path, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def chardev(cls, path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return cls(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int], namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """All entries plus any missing parent directories, sorted by path.

    :raises ValueError: an absolute, empty or repeated path.
    """
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = entry.path.strip("/") if entry.path not in ("", "/") else ""
        if not path or entry.path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"cpio entry paths must be relative and inside the archive: {entry.path!r}")
        if path in by_path:
            raise ValueError(f"cpio entry {path!r} given twice")
        by_path[path] = entry
    for path in list(by_path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            by_path.setdefault(parent, Entry.directory(parent))
    # Sorting by path components puts every parent before its children.
    return [by_path[p] for p in sorted(by_path, key=lambda p: p.split("/"))]


def write(out: SupportsWrite[bytes], entries: Iterable[Entry], mtime: int = 0) -> int:
    """Write ``entries`` (plus missing parent directories) as a newc archive; returns bytes written."""
    written = 0
    for ino, entry in enumerate(_with_parents(entries), start=1):
        name = entry.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        data = b"" if stat.S_ISDIR(entry.mode) or stat.S_ISCHR(entry.mode) or stat.S_ISBLK(entry.mode) else entry.data
        head = _header(ino, entry.mode, nlink, mtime, len(data), entry.rdev, len(name))
        chunk = head + name + _pad(len(head) + len(name)) + data + _pad(len(data))
        out.write(chunk)
        written += len(chunk)
    name = TRAILER.encode() + b"\0"
    head = _header(0, 0, 1, 0, 0, (0, 0), len(name))
    tail = head + name + _pad(len(head) + len(name))
    # Pad the archive to a 512-byte boundary, as cpio(1) does.
    tail += b"\0" * (-(written + len(tail)) % 512)
    out.write(tail)
    return written + len(tail)


def write_gzip(out: BinaryIO, entries: Iterable[Entry], mtime: int = 0, level: int = 9) -> None:
    """:func:`write` through gzip, with no name and a zero time in the gzip header (reproducible)."""
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=level, mtime=0) as packed:
        write(packed, entries, mtime)


def read(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """Parse a newc archive (uncompressed) into ``(path, mode, data, rdev)``; for tests and inspection.

    :raises ValueError: not a newc archive.
    """
    members: list[tuple[str, int, bytes, tuple[int, int]]] = []
    offset = 0
    while True:
        if data[offset:offset + 6] != MAGIC:
            raise ValueError(f"no newc header at offset {offset}")
        fields = [int(data[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_at = offset + 110
        name = data[name_at:name_at + namesize - 1].decode()
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        if name == TRAILER:
            return members
        members.append((name, mode, data[data_at:data_at + size], rdev))
        offset = data_at + size + (-size % 4)
