"""Checksums of ``file://`` images, computed once per version of the file.

A local image is served from where it is (never copied); its SHA-256,
compression and decompressed size are computed by reading it once, in the
background (see :mod:`.flight`: a 20 GB file takes a while), and
remembered under ``<image cache dir>/local/`` by its path, size,
modification time and inode: a file changed in place, or replaced, is
read again.  The agent verifies what it downloads against that checksum,
so a file changed between the reading and the deploy fails the deploy
rather than writing something else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from conductor.images import flight, formats


@dataclasses.dataclass(frozen=True)
class LocalImage:
    """A local image file and what was computed of it."""

    path: Path
    sha256: str
    size: int
    compression: str
    image_size: int | None
    #: ``(st_dev, st_ino, st_size, st_mtime_ns)`` of the file the checksum is of (None: not known).
    identity: tuple[int, int, int, int] | None = None


def _key(path: Path, st: os.stat_result) -> str:
    ident = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def flight_for(root: Path, path: Path) -> flight.Flight[LocalImage]:
    """The computation of ``path``'s checksum as a single-flight job under ``root``.

    :raises flight.WorkFailed: ``path`` is not a readable regular file.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise flight.WorkFailed(f"the image file {path} cannot be read: {exc.strerror or exc}") from None
    if not path.is_file():
        raise flight.WorkFailed(f"the image {path} is not a regular file")
    key = _key(path, st)
    record = root / f"{key}.json"

    def done() -> LocalImage | None:
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return LocalImage(path, data["sha256"], data["size"], data["compression"], data.get("image_size"),
                          (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))

    def work() -> None:
        try:
            digest = formats.digest_file(path)
            compression, image_size = digest.finish()
        except OSError as exc:
            raise flight.WorkFailed(f"reading the image file {path} failed: {exc.strerror or exc}") from None
        except formats.CorruptImage as exc:
            raise flight.WorkFailed(f"the image file {path} is damaged: {exc}") from None
        tmp = root / f".{key}.tmp{os.getpid()}"
        tmp.write_text(json.dumps({"path": str(path), "sha256": digest.sha256, "size": digest.size,
                                   "compression": compression, "image_size": image_size}), encoding="utf-8")
        os.replace(tmp, record)

    return flight.Flight(root, key, done, work, lambda: f"computing the checksum of {path}")


def poll(root: Path, path: Path, since: float) -> LocalImage | flight.Running | flight.Failed:
    """Non-blocking: what was computed of ``path``, or the computation under way, or its failure."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        return flight.poll(flight_for(root, path), since)
    except flight.WorkFailed as exc:
        return flight.Failed(str(exc))


def compute(root: Path, path: Path) -> LocalImage:
    """Blocking: what was computed of ``path`` (computing it now if need be).

    :raises flight.WorkFailed: the file cannot be read or is damaged.
    """
    root.mkdir(parents=True, exist_ok=True)
    return flight.run(flight_for(root, path))
