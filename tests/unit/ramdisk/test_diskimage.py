"""The demo disk image's pieces that need neither packages nor tools: the MBR, the marker, the initramfs, the CLI."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from conductor.cli import main
from conductor.ramdisk import cpio, diskimage


def _partitions(sector: bytes) -> list[tuple[int, bytes, int, bytes, int, int]]:
    return [struct.unpack("<B3sB3sII", sector[446 + 16 * i: 462 + 16 * i]) for i in range(4)]


def test_the_mbr_holds_the_boot_code_the_signature_and_one_active_partition() -> None:
    code = bytes(range(256)) + b"\xeb" * 184  # 440 bytes, the most that fit
    sector = diskimage.mbr(code, 2048, 30720, 0x12345678)
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    assert sector[:440] == code
    assert struct.unpack("<IH", sector[440:446]) == (0x12345678, 0)
    first, *rest = _partitions(sector)
    assert rest == [(0, b"\0\0\0", 0, b"\0\0\0", 0, 0)] * 3
    status, chs_start, kind, chs_end, start, sectors = first
    assert (status, kind, start, sectors) == (0x80, 0x0E, 2048, 30720)
    # 255 heads, 63 sectors a track: LBA 2048 is cylinder 0, head 32, sector 33; 32767 is 2/10/8.
    assert chs_start == bytes((32, 33, 0)) and chs_end == bytes((10, 8, 2))


def test_short_boot_code_is_padded_and_far_partitions_get_the_largest_chs() -> None:
    sector = diskimage.mbr(b"\xfa\xeb", 2048, 40_000_000, 1)
    assert sector[:2] == b"\xfa\xeb" and sector[2:440] == bytes(438)
    assert _partitions(sector)[0][3] == bytes((254, 0xC0 | 63, 0xFF))  # 1023/254/63


@pytest.mark.parametrize("code, start, sectors", [(bytes(441), 2048, 100), (b"", 0, 100), (b"", 2048, 1 << 32)])
def test_what_an_mbr_cannot_hold_is_refused(code: bytes, start: int, sectors: int) -> None:
    with pytest.raises(ValueError):
        diskimage.mbr(code, start, sectors, 0)


@pytest.mark.parametrize("marker", ["demo", "run-3f2a9c_1.2", "x" * 200, "node=7;ok!"])
def test_a_marker_is_one_printable_word(marker: str) -> None:
    assert diskimage.check_marker(marker) == marker
    assert diskimage.marker_line(marker) == f"CONDUCTOR-DEMO-IMAGE-BOOTED {marker}"


@pytest.mark.parametrize("marker", ["", "two words", "line\nbreak", "tab\t", "caf\u00e9", "x" * 201])
def test_other_markers_are_refused(marker: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        diskimage.check_marker(marker)


def test_the_initramfs_holds_busybox_an_init_and_the_marker(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF busybox")
    archive = io.BytesIO()
    cpio.write(archive, diskimage.initramfs_entries(busybox, "run-42", "kernel x\n"))
    members = {path: (mode, data) for path, mode, data, _ in cpio.read(archive.getvalue())}
    assert members["init"][0] & 0o777 == 0o755
    init = members["init"][1].decode()
    assert init.startswith("#!/bin/sh\n") and "poweroff -f" in init and "CONDUCTOR-DEMO-IMAGE-BOOTED" in init
    assert members["etc/conductor-marker"][1] == b"run-42\n"
    assert members["bin/busybox"][1] == b"\x7fELF busybox"
    assert members["bin/sh"][1] == b"busybox"
    assert {"dev/console", "proc"} <= set(members)
    with pytest.raises(ValueError):
        diskimage.initramfs_entries(busybox, "not one word", "")


def test_the_boot_config_sends_the_kernel_to_the_serial_console() -> None:
    lines = diskimage.SYSLINUX_CFG.splitlines()
    assert lines[0] == "SERIAL 0 115200"  # syslinux wants it first
    assert "  LINUX /LINUX" in lines and "  INITRD /INITRD.IMG" in lines
    assert "console=ttyS0,115200" in diskimage.KERNEL_ARGS.split()


def test_missing_tools_are_named_with_their_debian_packages(monkeypatch) -> None:
    monkeypatch.setattr(diskimage, "TOOLS", {"conductor-no-such-mkfs": "dosfstools"})
    monkeypatch.setattr(diskimage, "MBR_PATHS", ("/nonexistent/mbr.bin",))
    assert diskimage.missing_tools() == ["conductor-no-such-mkfs (Debian package dosfstools)",
                                         "mbr.bin (Debian package syslinux-common)"]
    with pytest.raises(diskimage.DiskImageError, match="needs conductor-no-such-mkfs"):
        diskimage.build_image(Path("/nonexistent/disk.img"), Path("/nonexistent/cache"))


def test_the_cli_refuses_a_bad_marker_and_says_what_is_missing(monkeypatch, tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["ramdisk", "image", "--out", str(tmp_path / "d.img"), "--marker", "a b"])
    assert done.exit_code == 64 and "printable ASCII" in done.output
    monkeypatch.setattr(diskimage, "TOOLS", {"conductor-no-such-syslinux": "syslinux"})
    done = runner.invoke(main, ["ramdisk", "image", "--out", str(tmp_path / "d.img")])
    assert done.exit_code == 1 and "Debian package syslinux" in done.output
    assert not list(tmp_path.iterdir())
