"""The newc writer: read back by our reader and by an independent cpio, byte-for-byte reproducible."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conductor.ramdisk import cpio

ENTRIES = [
    cpio.Entry.file("init", b"#!/bin/sh\necho hi\n", 0o755),
    cpio.Entry.symlink("bin/sh", "busybox"),
    cpio.Entry.file("bin/busybox", bytes(range(256)) * 5 + b"x", 0o755),  # 1281 bytes: needs padding
    cpio.Entry.file("lib/modules/6.1.0/kernel/drivers/block/virtio_blk.ko", b"\x7fELF" + b"\0" * 61),
    cpio.Entry.file("etc/empty", b""),
    cpio.Entry.chardev("dev/console", 5, 1),
    cpio.Entry.directory("proc"),
]


def _archive(entries=ENTRIES, mtime: int = 0) -> bytes:
    out = io.BytesIO()
    cpio.write(out, entries, mtime=mtime)
    return out.getvalue()


def test_reads_back_with_parents_first_and_sorted() -> None:
    members = cpio.read(_archive())
    names = [m[0] for m in members]
    assert names == sorted(names, key=lambda n: n.split("/"))
    for name in names:  # every parent comes before its children
        parent = name.rpartition("/")[0]
        assert not parent or names.index(parent) < names.index(name)
    by_name = {m[0]: m for m in members}
    assert by_name["init"][2] == b"#!/bin/sh\necho hi\n" and stat.S_IMODE(by_name["init"][1]) == 0o755
    assert by_name["bin/busybox"][2] == bytes(range(256)) * 5 + b"x"
    assert stat.S_ISLNK(by_name["bin/sh"][1]) and by_name["bin/sh"][2] == b"busybox"
    assert stat.S_ISCHR(by_name["dev/console"][1]) and by_name["dev/console"][3] == (5, 1)
    assert stat.S_ISDIR(by_name["lib/modules/6.1.0/kernel/drivers"][1])  # added parent
    assert by_name["etc/empty"][2] == b""


def test_layout_is_aligned_and_padded() -> None:
    data = _archive()
    assert data.startswith(b"070701") and len(data) % 512 == 0
    assert b"TRAILER!!!\0" in data
    offset = 0
    for _ in range(3):  # headers start on 4-byte boundaries
        assert data[offset:offset + 6] == b"070701" and offset % 4 == 0
        namesize = int(data[offset + 94:offset + 102], 16)
        size = int(data[offset + 54:offset + 62], 16)
        start = offset + 110 + namesize
        start += -start % 4
        offset = start + size + (-size % 4)


def test_reproducible_whatever_the_input_order_and_compressed() -> None:
    assert _archive() == _archive(list(reversed(ENTRIES)))
    packed = [io.BytesIO(), io.BytesIO()]
    for out in packed:
        cpio.write_gzip(out, ENTRIES, mtime=1700000000)
    assert packed[0].getvalue() == packed[1].getvalue()
    assert gzip.decompress(packed[0].getvalue()) == _archive(mtime=1700000000)
    assert int(gzip.decompress(packed[0].getvalue())[46:54], 16) == 1700000000  # the mtime field


@pytest.mark.parametrize("path", ["/init", "", "a/../../etc/passwd"])
def test_refuses_paths_outside_the_archive(path: str) -> None:
    with pytest.raises(ValueError):
        _archive([cpio.Entry.file(path, b"x")])


def test_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="twice"):
        _archive([cpio.Entry.file("a", b"1"), cpio.Entry.file("a", b"2")])


def _independent_cpio() -> list[str] | None:
    if shutil.which("busybox"):
        return ["busybox", "cpio"]
    if shutil.which("cpio"):
        return ["cpio"]
    return None


@pytest.mark.skipif(_independent_cpio() is None, reason="neither busybox nor cpio is installed")
def test_an_independent_cpio_extracts_it(tmp_path: Path) -> None:
    command = _independent_cpio()
    assert command is not None
    # Without the device node: extracting one needs root (and is not the point here).
    entries = [e for e in ENTRIES if not stat.S_ISCHR(e.mode)]
    listing = subprocess.run([*command, "-t"], input=_archive(entries), capture_output=True, check=True)
    assert set(listing.stdout.decode().split()) >= {"init", "bin/busybox", "bin/sh", "etc/empty"}
    subprocess.run([*command, "-i", "-d"], input=_archive(entries), cwd=tmp_path, capture_output=True,
                   check=True)
    assert (tmp_path / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(tmp_path / "init", os.X_OK)
    assert os.readlink(tmp_path / "bin" / "sh") == "busybox"
    assert (tmp_path / "bin" / "busybox").read_bytes() == bytes(range(256)) * 5 + b"x"
    assert (tmp_path / "lib/modules/6.1.0/kernel/drivers/block/virtio_blk.ko").stat().st_size == 65
