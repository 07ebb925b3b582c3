"""A bootable ISO 9660 image of the agent ramdisk, for Redfish virtual media boot.

On the virtual media path no DHCP server hands the machine a boot script,
so the agent's kernel arguments (:func:`conductor.ramdisk.kernel_args`:
API URL, node, agent token, plus the console) are baked into the ISO's boot
configuration: one small ISO per node and workflow.  Layout::

    /isolinux/isolinux.bin   El Torito boot image, no emulation (Debian isolinux)
    /isolinux/ldlinux.c32    isolinux's core module (Debian syslinux-common)
    /isolinux/isolinux.cfg   SERIAL, no prompt, LINUX, INITRD, APPEND <kernel args>
    /isolinux/boot.cat       the El Torito boot catalog (xorriso)
    /agent.kernel            the ramdisk's kernel, as built
    /agent.initramfs         the ramdisk's initramfs, as built (not recompressed)

BIOS boot only: isolinux from a CD-ROM, or from a disk or USB stick (the
image is isohybrid, with isolinux's ``isohdpfx.bin`` MBR).  UEFI boot is
not built (it would need a FAT El Torito image holding an EFI loader,
e.g. from ``grub-efi-amd64-bin``).

Fast per node: :func:`build_iso` writes only ``isolinux.cfg`` (and copies
the two small isolinux files, 160 KB) into a scratch directory; xorriso
grafts the kernel and initramfs straight from where the build left them
(``-graft-points``), so an 11 MB ISO takes about 0.1 s with a warm page
cache.  xorriso patches the boot info table into its output, not into the
source ``isolinux.bin``.

Reproducible: one time, ``$SOURCE_DATE_EPOCH`` (else 1, one second after
1970: xorriso takes 0 for "not set"), is every file's and
directory's (``--set_all_file_dates``: the inputs' own times change from build
to build) and the volume's (``--modification-date``, which is also the volume
UUID; xorriso also gets ``SOURCE_DATE_EPOCH`` and ``TZ=UTC``); the volume id is a
parameter.  The same inputs, kernel arguments and
xorriso give the same bytes.

The ISO holds the node's agent token: it is written mode 0600 and should be
served only to that node's BMC, and deleted when the workflow ends.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conductor.ramdisk import kernel_args as agent_kernel_args
from conductor.ramdisk.build import Artifact, BuildError, _sha256

DEFAULT_NAME = "agent.iso"
DEFAULT_VOLUME_ID = "CONDUCTOR_AGENT"
#: Console parameters added to the agent's own: the screen, and the serial
#: port the last ``console=`` makes ``/dev/console`` (the agent logs there).
CONSOLE_ARGS = "console=tty0 console=ttyS0,115200"
#: The kernel's x86 command-line limit (COMMAND_LINE_SIZE), bytes.
MAX_KERNEL_ARGS = 2048
#: Names on the ISO (Rock Ridge; isolinux 6 reads it).
KERNEL_ON_ISO = "/agent.kernel"
INITRAMFS_ON_ISO = "/agent.initramfs"

ISOLINUX_BIN = ("/usr/lib/ISOLINUX/isolinux.bin", "/usr/lib/syslinux/isolinux.bin",
                "/usr/share/syslinux/isolinux.bin")
ISOHYBRID_MBR = ("/usr/lib/ISOLINUX/isohdpfx.bin", "/usr/lib/syslinux/isohdpfx.bin",
                 "/usr/share/syslinux/isohdpfx.bin")
LDLINUX_C32 = ("/usr/lib/syslinux/modules/bios/ldlinux.c32", "/usr/lib/syslinux/bios/ldlinux.c32",
               "/usr/share/syslinux/ldlinux.c32")


class IsoError(BuildError):
    """The ISO could not be built (a tool or boot file is missing, xorriso failed)."""


@dataclasses.dataclass(frozen=True)
class Iso:
    """A built ISO and what it boots with."""

    image: Artifact
    kernel_args: str
    volume_id: str
    seconds: float


def _first(paths: tuple[str, ...]) -> Path | None:
    return next((Path(p) for p in paths if os.path.isfile(p)), None)


def missing_tools() -> list[str]:
    """What the build needs and this host lacks, as ``what (Debian package)``; empty when all are there."""
    missing = []
    if shutil.which("xorriso") is None:
        missing.append("xorriso (Debian package xorriso)")
    if _first(ISOLINUX_BIN) is None or _first(ISOHYBRID_MBR) is None:
        missing.append("isolinux.bin and isohdpfx.bin (Debian package isolinux)")
    if _first(LDLINUX_C32) is None:
        missing.append("ldlinux.c32 (Debian package syslinux-common)")
    return missing


def check_kernel_args(args: str) -> str:
    """``args`` with runs of spaces made single, if it can be one isolinux ``APPEND`` line.

    :raises ValueError: a quote, a backslash or a control character (a newline would start
        a new configuration line; the kernel treats quotes specially), or longer than the
        kernel takes.
    """
    bad = [c for c in args if c in "\"'\\" or (c.isspace() and c != " ") or not c.isprintable()]
    if bad:
        raise ValueError(f"kernel arguments must be printable, without quotes, backslashes, tabs or "
                         f"newlines: {args!r}")
    words = args.split()
    if not words:
        raise ValueError("the kernel arguments are empty")
    joined = " ".join(words)
    if len(joined) > MAX_KERNEL_ARGS - 100:  # room for BOOT_IMAGE= and initrd= that isolinux adds
        raise ValueError(f"the kernel arguments are {len(joined)} bytes; at most {MAX_KERNEL_ARGS - 100} fit")
    return joined


def node_kernel_args(api_url: str, node: str, token: str, extra: str = CONSOLE_ARGS) -> str:
    """The agent's arguments for one node (:func:`conductor.ramdisk.kernel_args`), then ``extra``.

    :raises ValueError: a value with whitespace or quotes, or bad ``extra``.
    """
    return check_kernel_args(f"{extra} {agent_kernel_args(api_url, node, token)}")


def isolinux_cfg(kernel_args: str) -> str:
    """The ISO's ``isolinux.cfg``: boot the agent at once with ``kernel_args``, also on serial port 0.

    :raises ValueError: see :func:`check_kernel_args`.
    """
    return (f"SERIAL 0 115200\nDEFAULT agent\nPROMPT 0\nTIMEOUT 0\nLABEL agent\n"
            f"  LINUX {KERNEL_ON_ISO}\n  INITRD {INITRAMFS_ON_ISO}\n  APPEND {check_kernel_args(kernel_args)}\n")


def check_volume_id(volume_id: str) -> str:
    """The volume id, if it is 1 to 32 of ``A-Z 0-9 _`` (ISO 9660's d-characters).

    :raises ValueError: otherwise.
    """
    if not 1 <= len(volume_id) <= 32 or not all(c.isascii() and (c.isupper() or c.isdigit() or c == "_")
                                                 for c in volume_id):
        raise ValueError(f"the volume id must be 1 to 32 of A-Z, 0-9 and _: {volume_id!r}")
    return volume_id


def iso_time(mtime: int) -> str:
    """``mtime`` (seconds since 1970) as an xorriso time string (at least 1: xorriso takes 0 for "not set")."""
    return f"={max(mtime, 1)}"


def xorriso_command(out: Path, stage: Path, kernel: Path, initramfs: Path, volume_id: str,
                    hybrid_mbr: Path, mtime: int) -> list[str]:
    """The xorriso (mkisofs emulation) command that writes ``out`` from the scratch dir and the ramdisk.

    Every file and directory gets the time ``mtime`` (not its own: the inputs' times
    differ from build to build), the volume times and UUID too (``$SOURCE_DATE_EPOCH``).
    """
    volume_date = time.strftime("%Y%m%d%H%M%S00", time.gmtime(max(mtime, 1)))
    return [
        "xorriso", "-as", "mkisofs", "-quiet", "-o", str(out), "-V", volume_id, "-R", "-J",
        "--set_all_file_dates", iso_time(mtime), f"--modification-date={volume_date}",
        "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
        "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
        "-isohybrid-mbr", str(hybrid_mbr),
        "-graft-points", f"/isolinux={stage}", f"{KERNEL_ON_ISO}={kernel}", f"{INITRAMFS_ON_ISO}={initramfs}",
    ]


def build_iso(out: Path, kernel: Path, initramfs: Path, kernel_args: str, volume_id: str = DEFAULT_VOLUME_ID,
              mtime: int | None = None) -> Iso:
    """Write the bootable ISO ``out`` (mode 0600) that boots ``kernel`` + ``initramfs`` with ``kernel_args``.

    For one node: ``build_iso(out, kernel, initramfs, node_kernel_args(api_url, node, token))``.
    The kernel and initramfs are read in place, not copied or recompressed.

    :param mtime: the ISO's times (default ``$SOURCE_DATE_EPOCH``, else 0).
    :raises ValueError: bad kernel arguments or volume id.
    :raises IsoError: a tool or boot file is missing, an input is missing, or xorriso failed.
    """
    cfg = isolinux_cfg(kernel_args)
    check_volume_id(volume_id)
    missing = missing_tools()
    if missing:
        raise IsoError(f"building the ISO needs {', '.join(missing)}")
    for path in (kernel, initramfs):
        if not path.is_file():
            raise IsoError(f"{path} is missing (conductor ramdisk build)")
    started = time.monotonic()
    if mtime is None:
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH") or 0)
    isolinux_bin, hybrid_mbr, ldlinux = _first(ISOLINUX_BIN), _first(ISOHYBRID_MBR), _first(LDLINUX_C32)
    assert isolinux_bin and hybrid_mbr and ldlinux  # checked by missing_tools()
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        stage = Path(tmp, "isolinux")
        stage.mkdir()
        # Copies: xorriso leaves its inputs alone, but a copy is cheap (160 KB) and makes sure.
        shutil.copyfile(isolinux_bin, stage / "isolinux.bin")
        shutil.copyfile(ldlinux, stage / "ldlinux.c32")
        (stage / "isolinux.cfg").write_text(cfg)
        partial = Path(tmp, "image.iso")
        command = xorriso_command(partial, stage, kernel.absolute(), initramfs.absolute(), volume_id, hybrid_mbr,
                                   mtime)
        # The token is in the ISO: nobody else may read it, from the first byte written.
        old = os.umask(0o077)
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300,
                                  env={**os.environ, "SOURCE_DATE_EPOCH": str(max(mtime, 1)), "TZ": "UTC"})
        except FileNotFoundError as exc:  # removed since missing_tools() looked
            raise IsoError("xorriso is not installed (Debian package xorriso)") from exc
        finally:
            os.umask(old)
        if done.returncode != 0 or not partial.is_file():
            output = (done.stderr.strip() or done.stdout.strip())[-500:]
            raise IsoError(f"xorriso failed ({done.returncode}): {output}")
        os.chmod(partial, 0o600)
        os.replace(partial, out)
    return Iso(Artifact(out, out.stat().st_size, _sha256(out)), check_kernel_args(kernel_args), volume_id,
               time.monotonic() - started)
