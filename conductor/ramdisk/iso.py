"""A bootable ISO 9660 image of the agent ramdisk, for Redfish virtual media boot.

On the virtual media path no DHCP server hands the machine a boot script,
so the agent's kernel arguments (:func:`conductor.ramdisk.kernel_args`:
API URL, node, agent token, plus the console) are baked into the ISO's boot
configuration: one small ISO per node and workflow.  Layout::

    /isolinux/isolinux.bin   BIOS El Torito boot image, no emulation (Debian isolinux)
    /isolinux/ldlinux.c32    isolinux's core module (Debian syslinux-common)
    /isolinux/isolinux.cfg   SERIAL, no prompt, LINUX, INITRD, APPEND <kernel args>
    /isolinux/boot.cat       the El Torito boot catalog (xorriso)
    /isolinux/efiboot.img    UEFI El Torito image: a FAT holding EFI/BOOT/BOOTX64.EFI, GRUB
    /conductor-agent/grub.cfg  GRUB's menu: linux, initrd, the same kernel args
    /agent.kernel            the ramdisk's kernel, as built
    /agent.initramfs         the ramdisk's initramfs, as built (not recompressed)

BIOS boots isolinux, from a CD-ROM or (the image is isohybrid, with
isolinux's ``isohdpfx.bin`` MBR) a disk or USB stick.  UEFI boots GRUB
(when the host has ``grub-mkimage`` and GRUB's x86_64-efi modules, or
``uefi=True``): a standalone ``BOOTX64.EFI`` made with ``grub-mkimage``
whose built-in config finds ``/conductor-agent/grub.cfg`` on the ISO 9660
side and reads it, so the FAT image holds no per-node data and is the
same for every node.

Fast per node: :func:`build_iso` writes only the two boot configs (and
copies isolinux's two small files, 160 KB) into a scratch directory, plus
the 1 MiB EFI image (``grub-mkimage``, ``mkfs.vfat``, mtools: ~0.1 s);
xorriso grafts the kernel and initramfs straight from where the build left
them (``-graft-points``), so an 11 MB ISO takes 0.1-0.3 s with a warm page
cache.  xorriso patches the boot info table into its output, not into the
source ``isolinux.bin``.

Reproducible: one time, ``$SOURCE_DATE_EPOCH`` (else 1, one second after
1970: xorriso takes 0 for "not set"), is every file's and
directory's (``--set_all_file_dates``: the inputs' own times change from build
to build) and the volume's (``--modification-date``, which is also the volume
UUID; xorriso also gets ``SOURCE_DATE_EPOCH`` and ``TZ=UTC``); the volume id is a
parameter.  The EFI image's FAT has a fixed serial (``mkfs.vfat --invariant``)
and 1980-01-01 times.  The same inputs, kernel arguments and tools give the
same bytes.

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
#: GRUB's x86_64-efi modules (Debian grub-efi-amd64-bin); grub-mkimage is in grub-common.
GRUB_EFI_MODULES_DIR = "/usr/lib/grub/x86_64-efi"
#: What BOOTX64.EFI is built with: read the ISO, find its config, boot Linux, talk on serial.
GRUB_MODULES = ("iso9660", "search", "search_fs_file", "configfile", "normal", "linux", "gzio", "echo",
                "test", "serial", "terminal", "all_video", "efi_gop")
#: Where GRUB's per-node config is on the ISO 9660 side (a name no installed system uses).
GRUB_CFG_ON_ISO = "/conductor-agent/grub.cfg"
#: BOOTX64.EFI's built-in config: the ISO is the device that holds GRUB_CFG_ON_ISO.
GRUB_EMBEDDED_CFG = (f"search --no-floppy --file --set=root {GRUB_CFG_ON_ISO}\n"
                     f"configfile ($root){GRUB_CFG_ON_ISO}\n")
#: The UEFI El Torito image: a 1 MiB FAT12 (BOOTX64.EFI is ~0.7 MB).
EFI_IMAGE_KIB = 1024
#: FAT cannot go before 1980-01-01; every file on the EFI image has this time.
FAT_EPOCH = 315532800


class IsoError(BuildError):
    """The ISO could not be built (a tool or boot file is missing, xorriso failed)."""


@dataclasses.dataclass(frozen=True)
class Iso:
    """A built ISO and what it boots with."""

    image: Artifact
    kernel_args: str
    volume_id: str
    #: Whether it also boots under UEFI (GRUB), not only BIOS (isolinux).
    uefi: bool
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


def _tool(name: str) -> str | None:
    # mkfs.vfat lives in /usr/sbin, which a user's PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def missing_uefi_tools() -> list[str]:
    """What the UEFI part needs and this host lacks, as ``what (Debian package)``."""
    needs = {"grub-mkimage": "grub-common", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools"}
    missing = [f"{name} (Debian package {package})" for name, package in needs.items() if _tool(name) is None]
    if not os.path.isfile(os.path.join(GRUB_EFI_MODULES_DIR, "linux.mod")):
        missing.append(f"{GRUB_EFI_MODULES_DIR} (Debian package grub-efi-amd64-bin)")
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


def grub_cfg(kernel_args: str) -> str:
    """The ISO's ``grub.cfg`` for UEFI: boot the agent at once with ``kernel_args``, also on serial port 0.

    Each argument is single-quoted, so GRUB expands nothing in it (no ``$``, ``;``
    or ``#`` surprises); :func:`check_kernel_args` has refused quotes in it.

    :raises ValueError: see :func:`check_kernel_args`.
    """
    quoted = " ".join(f"'{word}'" for word in check_kernel_args(kernel_args).split())
    return ("serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n"
            "set timeout=0\nset gfxpayload=keep\nmenuentry agent {\n"
            f"  linux {KERNEL_ON_ISO} {quoted}\n  initrd {INITRAMFS_ON_ISO}\n}}\n")


def _run(args: list[str], env: dict[str, str]) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300,
                              env={**os.environ, **env})
    except FileNotFoundError as exc:  # removed since it was looked for
        raise IsoError(f"{args[0]} is not installed") from exc
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-500:]
        raise IsoError(f"{' '.join(args)} failed ({done.returncode}): {output}")


def efi_image(out: Path, scratch: Path) -> Path:
    """Write ``out``: a FAT image holding ``EFI/BOOT/BOOTX64.EFI``, GRUB that reads the ISO's grub.cfg.

    :raises IsoError: a tool is missing or failed.
    """
    missing = missing_uefi_tools()
    if missing:
        raise IsoError(f"the UEFI boot image needs {', '.join(missing)}")
    embedded, loader = scratch / "embedded.cfg", scratch / "BOOTX64.EFI"
    embedded.write_text(GRUB_EMBEDDED_CFG)
    env = {"TZ": "UTC", "SOURCE_DATE_EPOCH": str(FAT_EPOCH), "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": os.devnull}
    grub_mkimage, mkfs, mmd, mcopy = (str(_tool(name)) for name in ("grub-mkimage", "mkfs.vfat", "mmd", "mcopy"))
    _run([grub_mkimage, "-O", "x86_64-efi", "-d", GRUB_EFI_MODULES_DIR, "-o", str(loader),
          "-p", os.path.dirname(GRUB_CFG_ON_ISO), "-c", str(embedded), *GRUB_MODULES], env)
    os.utime(loader, (FAT_EPOCH, FAT_EPOCH))
    _run([mkfs, "--invariant", "-n", "EFIBOOT", "-C", str(out), str(EFI_IMAGE_KIB)], env)
    _run([mmd, "-i", str(out), "::/EFI", "::/EFI/BOOT"], env)
    _run([mcopy, "-m", "-i", str(out), str(loader), "::/EFI/BOOT/BOOTX64.EFI"], env)
    return out


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
                    hybrid_mbr: Path, mtime: int, grub_dir: Path | None = None) -> list[str]:
    """The xorriso (mkisofs emulation) command that writes ``out`` from the scratch dir and the ramdisk.

    Every file and directory gets the time ``mtime`` (not its own: the inputs' times
    differ from build to build), the volume times and UUID too (``$SOURCE_DATE_EPOCH``).
    With ``grub_dir`` (holding grub.cfg; ``stage`` then holds efiboot.img), UEFI boots too.
    """
    volume_date = time.strftime("%Y%m%d%H%M%S00", time.gmtime(max(mtime, 1)))
    return [
        "xorriso", "-as", "mkisofs", "-quiet", "-o", str(out), "-V", volume_id, "-R", "-J",
        "--set_all_file_dates", iso_time(mtime), f"--modification-date={volume_date}",
        "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
        "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
        "-isohybrid-mbr", str(hybrid_mbr),
        *(["-eltorito-alt-boot", "-e", "isolinux/efiboot.img", "-no-emul-boot", "-isohybrid-gpt-basdat"]
          if grub_dir else []),
        "-graft-points", f"/isolinux={stage}",
        *([f"{os.path.dirname(GRUB_CFG_ON_ISO)}={grub_dir}"] if grub_dir else []),
        f"{KERNEL_ON_ISO}={kernel}", f"{INITRAMFS_ON_ISO}={initramfs}",
    ]


def build_iso(out: Path, kernel: Path, initramfs: Path, kernel_args: str, volume_id: str = DEFAULT_VOLUME_ID,
              mtime: int | None = None, uefi: bool | None = None) -> Iso:
    """Write the bootable ISO ``out`` (mode 0600) that boots ``kernel`` + ``initramfs`` with ``kernel_args``.

    For one node: ``build_iso(out, kernel, initramfs, node_kernel_args(api_url, node, token))``.
    The kernel and initramfs are read in place, not copied or recompressed.

    :param mtime: the ISO's times (default ``$SOURCE_DATE_EPOCH``, else 1: xorriso takes 0 for "not set").
    :param uefi: also boot under UEFI (GRUB): ``None`` when this host has the tools
        (:func:`missing_uefi_tools`), ``True`` always (or fail), ``False`` never.
    :raises ValueError: bad kernel arguments or volume id.
    :raises IsoError: a tool or boot file is missing, an input is missing, or xorriso failed.
    """
    cfg = isolinux_cfg(kernel_args)
    if uefi is None:
        uefi = not missing_uefi_tools()
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
        grub_dir = None
        if uefi:
            grub_dir = Path(tmp, "grub")
            grub_dir.mkdir()
            (grub_dir / os.path.basename(GRUB_CFG_ON_ISO)).write_text(grub_cfg(kernel_args))
            efi_image(stage / "efiboot.img", Path(tmp))
        partial = Path(tmp, "image.iso")
        command = xorriso_command(partial, stage, kernel.absolute(), initramfs.absolute(), volume_id, hybrid_mbr,
                                  mtime, grub_dir)
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
               bool(uefi), time.monotonic() - started)
