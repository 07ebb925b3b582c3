"""A small bootable raw disk image from Debian packages: the "operating system" a demo deploy writes.

The end-to-end VM test, ``bench/vm_provision.py`` and ``conductor demo
--vm`` deploy this image onto a QEMU machine's disk through the agent
ramdisk; the machine then boots from its disk, prints one line to its
serial console and powers itself off, which proves the deploy wrote a
working disk.  Layout (a whole-disk image, what SeaBIOS boots)::

    sector 0    MBR: syslinux's boot code (mbr.bin, syslinux-common), a disk
                signature, one active partition of type 0x0e (FAT16, LBA)
    1 MiB ...   the FAT16 partition (mkfs.vfat --offset): syslinux's boot
                sector, LDLINUX.SYS and LDLINUX.C32 (syslinux --install
                --offset), then LINUX, INITRD.IMG, SYSLINUX.CFG (mcopy)

``LINUX`` is the agent ramdisk's own kernel (Debian's ``linux-image-amd64``)
and ``INITRD.IMG`` a tiny initramfs (busybox from ``busybox-static``, written
by :mod:`conductor.ramdisk.cpio`) whose ``/init`` prints
``CONDUCTOR-DEMO-IMAGE-BOOTED <marker>`` to the console (``console=ttyS0``)
and runs ``poweroff -f`` (QEMU exits).  The marker is a parameter, so a
test can tell its own boot from any other.  Both packages come from the
ramdisk builder's cache (:func:`conductor.ramdisk.build.unpacked_packages`):
nothing is downloaded twice.

No root is needed: mtools writes the filesystem inside the file (no loop
mount), and the Debian ``syslinux`` installer works through mtools.

Reproducible: the same packages and host tools give the same bytes.
Every file on the FAT filesystem carries one time, ``$SOURCE_DATE_EPOCH``
(else 1980-01-01, FAT's first day), which the tools are given: mcopy
copies the files' own times (``-m``), mtools stamps syslinux's files with
``$SOURCE_DATE_EPOCH`` (as mtools 4.0.32 does), FAT stores local time
(the tools run with ``TZ=UTC``); ``mkfs.vfat --invariant`` fixes the volume
id and its own times; the MBR's disk signature comes from the marker; the
gzip variant has no name or time in its header.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from conductor.ramdisk import cpio
from conductor.ramdisk.build import Artifact, BuildError, _sha256, unpacked_packages

#: The first words of the line the image's /init prints; the marker follows.
BOOTED = "CONDUCTOR-DEMO-IMAGE-BOOTED"
DEFAULT_MARKER = "demo"
DEFAULT_NAME = "demo-disk.img"
SECTOR = 512
MIB = 1 << 20
#: The partition starts at 1 MiB (sector 2048), as partitioning tools do.
PART_START = 2048
#: FAT16 (at least 4085 clusters) and FAT16's 2 GiB: the sizes this builder makes.
MIN_SIZE_MIB, MAX_SIZE_MIB = 8, 1024
#: Free space left on the filesystem beyond its files, when the size is chosen here.
SLACK = 2 * MIB
#: The size of ldlinux.sys plus ldlinux.c32 (about 120 KB with syslinux 6.04), rounded up.
SYSLINUX_FILES = 256 * 1024
#: FAT keeps local time and cannot go before 1980-01-01.
FAT_EPOCH = 315532800
LABEL = "DEMODISK"
PART_TYPE = 0x0E  # FAT16 with LBA addressing
KERNEL_ARGS = "console=ttyS0,115200 panic=-1"

#: The binaries the build runs, and the Debian package of each.
TOOLS = {"mkfs.vfat": "dosfstools", "mcopy": "mtools", "syslinux": "syslinux"}
#: syslinux's MBR boot code (Debian: syslinux-common), elsewhere in other distributions.
MBR_PATHS = ("/usr/lib/syslinux/mbr/mbr.bin", "/usr/lib/syslinux/bios/mbr.bin", "/usr/share/syslinux/mbr.bin")
MBR_PACKAGE = "syslinux-common"

#: The image's /init (busybox ash): the marker line, then power off.  If
#: poweroff fails, init exits, the kernel panics and ``panic=-1`` reboots
#: (QEMU started with ``-no-reboot`` exits then too).
INIT = f"""#!/bin/sh
# The demo image's whole operating system: say it booted from its disk, power off.
export PATH=/bin
busybox mount -t proc proc /proc
read -r marker < /etc/conductor-marker
printf '\\n%s %s\\n' {BOOTED} "$marker"
busybox sync
busybox poweroff -f
"""

SYSLINUX_CFG = f"""SERIAL 0 115200
DEFAULT demo
PROMPT 0
TIMEOUT 0
LABEL demo
  LINUX /LINUX
  INITRD /INITRD.IMG
  APPEND {KERNEL_ARGS}
"""


class DiskImageError(BuildError):
    """The disk image could not be built (a tool is missing or failed, the size is too small)."""


@dataclasses.dataclass(frozen=True)
class DiskImage:
    """A built image: the raw file, its gzip variant, and what is in it."""

    image: Artifact
    compressed: Artifact | None
    marker: str
    kernel_release: str
    #: ``name=version`` of the Debian packages in it and of the host tools that built it.
    packages: tuple[str, ...]
    seconds: float

    @property
    def line(self) -> str:
        """The line the image prints on its serial console when it boots."""
        return marker_line(self.marker)


def marker_line(marker: str) -> str:
    """``CONDUCTOR-DEMO-IMAGE-BOOTED <marker>``: what a VM booted from the image prints."""
    return f"{BOOTED} {marker}"


def check_marker(marker: str) -> str:
    """The marker, if it is 1 to 200 printable ASCII characters without spaces.

    :raises ValueError: otherwise (it is one word on one line of a serial console).
    """
    if not 1 <= len(marker) <= 200 or not all(33 <= ord(c) <= 126 for c in marker):
        raise ValueError(f"the marker must be 1 to 200 printable ASCII characters without spaces: {marker!r}")
    return marker


def _tool(name: str) -> str | None:
    # mkfs.vfat lives in /usr/sbin, which a user's PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def mbr_code() -> Path | None:
    """syslinux's ``mbr.bin``, if installed."""
    return next((Path(p) for p in MBR_PATHS if os.path.isfile(p)), None)


def missing_tools() -> list[str]:
    """What the build needs and this host lacks, as ``binary (Debian package)``; empty when all are there."""
    missing = [f"{name} (Debian package {package})" for name, package in TOOLS.items() if _tool(name) is None]
    if mbr_code() is None:
        missing.append(f"mbr.bin (Debian package {MBR_PACKAGE})")
    return missing


def tool_versions() -> tuple[str, ...]:
    """``package=version`` of the host packages the build runs (empty without dpkg-query)."""
    names = sorted({*TOOLS.values(), MBR_PACKAGE})
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Package}=${Version}\\n", *names],
                              capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(line for line in done.stdout.splitlines() if line.split("=", 1)[-1])


def _chs(lba: int, heads: int = 255, sectors: int = 63) -> bytes:
    """The 3-byte cylinder/head/sector address of ``lba`` (1023/254/63 past what CHS can reach)."""
    cylinder, rest = divmod(lba, heads * sectors)
    head, sector = divmod(rest, sectors)
    if cylinder > 1023:
        cylinder, head, sector = 1023, heads - 1, sectors - 1
    return bytes((head, ((cylinder >> 2) & 0xC0) | (sector + 1), cylinder & 0xFF))


def mbr(boot_code: bytes, start: int, sectors: int, signature: int, part_type: int = PART_TYPE) -> bytes:
    """A 512-byte MBR: ``boot_code`` (at most 440 bytes), the disk signature, one active partition.

    :raises ValueError: boot code too long, or a partition that does not fit an MBR.
    """
    if len(boot_code) > 440:
        raise ValueError(f"MBR boot code is {len(boot_code)} bytes; at most 440 fit")
    if start < 1 or sectors < 1 or start + sectors > 1 << 32:
        raise ValueError(f"partition of {sectors} sectors at {start} does not fit an MBR")
    entry = struct.pack("<B3sB3sII", 0x80, _chs(start), part_type, _chs(start + sectors - 1), start, sectors)
    return (boot_code.ljust(440, b"\0") + struct.pack("<IH", signature, 0)
            + entry + bytes(16 * 3) + b"\x55\xaa")


def initramfs_entries(busybox: Path, marker: str, release_note: str) -> list[cpio.Entry]:
    """The image's initramfs: busybox, /init and the marker."""
    return [
        cpio.Entry.file("init", INIT.encode(), 0o755),
        cpio.Entry.file("etc/conductor-marker", (check_marker(marker) + "\n").encode()),
        cpio.Entry.file("etc/conductor-demo-release", release_note.encode()),
        cpio.Entry.file("bin/busybox", busybox.read_bytes(), 0o755),
        cpio.Entry.symlink("bin/sh", "busybox"),
        cpio.Entry.chardev("dev/console", 5, 1),
        cpio.Entry.chardev("dev/null", 1, 3, 0o666),
        cpio.Entry.directory("proc"),
    ]


def _run(args: list[str], env: Mapping[str, str]) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300,
                              env={**os.environ, **env})
    except FileNotFoundError as exc:
        raise DiskImageError(f"{args[0]} is not installed") from exc
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-500:]
        raise DiskImageError(f"{' '.join(args)} failed ({done.returncode}): {output}")


def _gzip(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    with source.open("rb") as raw, partial.open("wb") as out, \
            gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as packed:
        shutil.copyfileobj(raw, packed, 1 << 20)
    os.replace(partial, target)


def build_image(out: Path, cache: Path, marker: str = DEFAULT_MARKER, size_mib: int | None = None,
                compressed: bool = True, mtime: int | None = None,
                progress: Callable[[str], None] | None = None) -> DiskImage:
    """Write the bootable raw image ``out`` (and ``out.gz`` when ``compressed``).

    :param cache: the ramdisk builder's package cache (``.deb`` files and their trees).
    :param size_mib: the image size; default: the files plus 2 MiB free, at least 16 MiB.
    :param mtime: the time of every file on the filesystem (default ``$SOURCE_DATE_EPOCH``, else 1980-01-01).
    :raises ValueError: a bad marker or size.
    :raises DiskImageError: a tool is missing or failed, or the files do not fit ``size_mib``.
    :raises conductor.ramdisk.debs.PackageError: a package could not be resolved, downloaded or unpacked.
    """
    check_marker(marker)
    if size_mib is not None and not MIN_SIZE_MIB <= size_mib <= MAX_SIZE_MIB:
        raise ValueError(f"the image size must be {MIN_SIZE_MIB} to {MAX_SIZE_MIB} MiB, not {size_mib}")
    missing = missing_tools()
    if missing:
        raise DiskImageError(f"building the disk image needs {', '.join(missing)}")
    started = time.monotonic()
    if mtime is None:
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH") or 0)
    mtime = max(mtime, FAT_EPOCH)
    got = unpacked_packages(cache, progress)
    note = got.note + f"marker {marker}\n"
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        files = Path(tmp, "files")
        files.mkdir()
        with (files / "INITRD.IMG").open("wb") as handle:
            cpio.write_gzip(handle, initramfs_entries(got.busybox, marker, note), mtime=mtime)
        shutil.copyfile(got.vmlinuz, files / "LINUX")
        (files / "SYSLINUX.CFG").write_text(SYSLINUX_CFG)
        payload = sorted(files.iterdir())
        for path in payload:
            os.utime(path, (mtime, mtime))
        needed = sum(p.stat().st_size for p in payload) + SYSLINUX_FILES
        # FAT16 overhead: two FATs of 2 bytes per cluster and the root directory, under 1% here.
        if size_mib is None:
            size_mib = max(16, math.ceil((PART_START * SECTOR + needed * 1.01 + SLACK) / MIB))
        part_sectors = size_mib * MIB // SECTOR - PART_START
        if needed * 1.01 > part_sectors * SECTOR:
            raise DiskImageError(f"{needed / MIB:.1f} MiB of files do not fit a {size_mib} MiB image")

        image = Path(tmp, "disk.img")
        with image.open("wb") as handle:
            handle.truncate(size_mib * MIB)
        offset = PART_START * SECTOR
        env = {"TZ": "UTC", "SOURCE_DATE_EPOCH": str(mtime), "MTOOLS_SKIP_CHECK": "1",
               "MTOOLSRC": os.devnull}
        mkfs, mcopy, syslinux = (str(_tool(name)) for name in TOOLS)
        # -h: the boot sector's "hidden sectors" says where the partition starts.
        _run([mkfs, "-F", "16", "-n", LABEL, "--invariant", f"--offset={PART_START}", "-h", str(PART_START),
              str(image), str(part_sectors * SECTOR // 1024)], env)
        _run([syslinux, "--install", "--offset", str(offset), str(image)], env)
        _run([mcopy, "-m", "-i", f"{image}@@{offset}", *map(str, payload), "::/"], env)
        code = mbr_code()
        if code is None:  # removed since missing_tools() looked
            raise DiskImageError(f"mbr.bin is missing (Debian package {MBR_PACKAGE})")
        signature = int.from_bytes(hashlib.sha256(marker.encode()).digest()[:4], "little")
        with image.open("r+b") as handle:
            handle.write(mbr(code.read_bytes(), PART_START, part_sectors, signature))
        os.replace(image, out)
    artifact = Artifact(out, out.stat().st_size, _sha256(out))
    packed = None
    if compressed:
        gz = out.with_name(out.name + ".gz")
        _gzip(out, gz)
        packed = Artifact(gz, gz.stat().st_size, _sha256(gz))
    return DiskImage(artifact, packed, marker, got.release, (*got.versions, *tool_versions()),
                     time.monotonic() - started)
