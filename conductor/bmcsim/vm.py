"""Virtual machines behind simulated BMCs: what they are and how QEMU runs them.

A fleet declared with ``vms=VmSpec(...)`` gets, besides (or instead of) its
in-memory BMCs, BMCs that each drive a real ``qemu-system-x86_64``: its
power on starts the process, power off quits it, and so on (see
:mod:`.vmmanager`, which runs them).  This module holds the pure parts:

* :class:`VmSpec`, the declaration (count, memory, CPUs, disk, where files
  go, the accelerator, the network);
* :class:`UserNetwork`, QEMU's user-mode network (the default), with its
  DHCP handing iPXE a boot-file URL; another network (a tap on a bridge)
  implements :class:`Network` the same way;
* :func:`qemu_command`, the command line of one machine, and
  :func:`boot_order`, the BMC's boot device in QEMU's terms;
* :func:`create_disk`, :func:`vm_mac`, :func:`parse_size`;
* :data:`POWEROFF_BOOT_SECTOR`: a 512-byte guest that prints a line on the
  serial port and powers the machine off (ACPI), used by the KVM probe
  (:func:`conductor.bmcsim.vmmanager.probe_kvm`) and by tests;
  :data:`ACPI_GUEST_BOOT_SECTOR`, one that powers off only when the ACPI
  power button is pressed (tests of soft power off and graceful restart).

Nothing here starts a process but ``qemu-img``, and the module is cheap to
import: fleets without VMs never load :mod:`.vmmanager`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: iPXE option ROMs of Debian's ``ipxe-qemu`` (BIOS and UEFI in one image).
IPXE_ROMS = {"virtio-net-pci": "/usr/lib/ipxe/qemu/efi-virtio.rom",
             "e1000": "/usr/lib/ipxe/qemu/efi-e1000.rom"}
#: Extra device options per NIC model.  Debian's virtio ROM is built for the
#: modern virtio-net (PCI id 1af4:1041); QEMU's default "transitional" device
#: shows the legacy id 1af4:1000 on a PCI bus and SeaBIOS then skips the ROM.
NIC_OPTIONS = {"virtio-net-pci": ",disable-legacy=on", "e1000": ""}
ACCELS = ("tcg", "kvm", "auto")
#: The machine's CD-ROM: an IDE drive (QEMU's block backend ``CDROM_DRIVE``,
#: device ``CDROM_DEVICE``) that is always there, empty or holding the image
#: inserted through the BMC's Redfish virtual media.
CDROM_DRIVE = "cd0"
CDROM_DEVICE = "cdrom0"
DISK_FORMATS = ("raw", "qcow2")

#: A boot sector (i386, real mode) that writes :data:`POWEROFF_MESSAGE` to
#: COM1 and powers off through the ACPI PM1a control register of QEMU's
#: ``pc`` machine (port 0x604, SLP_EN).  Assembled from::
#:
#:     cli; xor ax,ax; mov ds,ax; mov si,0x7c1d
#:   1: lodsb; test al,al; jz 2f; mov dx,0x3f8; out dx,al; jmp 1b
#:   2: mov dx,0x604; mov ax,0x2000; out dx,ax
#:   3: hlt; jmp 3b
#:   msg: .ascii "bmcsim-guest: booted from disk, powering off\r\n\0"
POWEROFF_MESSAGE = "bmcsim-guest: booted from disk, powering off"


def poweroff_boot_sector(message: str) -> bytes:
    """The boot sector of :data:`POWEROFF_BOOT_SECTOR`, printing ``message`` (ASCII, < 440 bytes) instead.

    Loaded at 0x7c00 it runs as a disk's MBR and as a CD's El Torito
    no-emulation boot image alike.
    """
    return (bytes.fromhex("fa31c08ed8be1d7cac84c07406baf803eeebf5ba0406b80020eff4ebfd")
            + message.encode("ascii") + b"\r\n\0").ljust(510, b"\0") + b"\x55\xaa"


POWEROFF_BOOT_SECTOR = poweroff_boot_sector(POWEROFF_MESSAGE)

#: A boot sector (i386, real mode) for an ACPI-aware guest: it enables the
#: power button event (PM1a_EN, port 0x602), prints :data:`ACPI_GUEST_UP`,
#: sleeps until the button's status bit (PM1a_STS, port 0x600, bit 8) is set
#: by QEMU's ``system_powerdown``, then prints :data:`ACPI_GUEST_OFF` and
#: powers off (SLP_EN, port 0x604).  Assembled (GNU as, ``.code16``) from::
#:
#:     cli; xor ax,ax; mov ds,ax; mov dx,0x602; mov ax,0x100; out dx,ax
#:     mov si,UP; call print; mov dx,0x600
#:   1: sti; hlt; in ax,dx; test ax,0x100; jz 1b
#:     cli; mov si,OFF; call print; mov dx,0x604; mov ax,0x2000; out dx,ax
#:   2: hlt; jmp 2b
#:   print: push dx
#:   3: lodsb; test al,al; jz 4f; mov dx,0x3f8; out dx,al; jmp 3b
#:   4: pop dx; ret
#:   UP: .ascii "...\r\n\0"; OFF: .ascii "...\r\n\0"
ACPI_GUEST_UP = "bmcsim-guest: up, waiting for the ACPI power button"
ACPI_GUEST_OFF = "bmcsim-guest: ACPI power button pressed, powering off"
_ACPI_CODE = 60  # bytes of code before the first message
ACPI_GUEST_BOOT_SECTOR = (
    bytes.fromhex("fa31c08ed8ba0206b80001efbe3c7ce81c00ba0006fbf4eda9000174f8fabe")
    + (0x7C00 + _ACPI_CODE + len(ACPI_GUEST_UP) + 3).to_bytes(2, "little")
    + bytes.fromhex("e80a00ba0406b80020eff4ebfd52ac84c07406baf803eeebf55ac3")
    + ACPI_GUEST_UP.encode() + b"\r\n\0" + ACPI_GUEST_OFF.encode() + b"\r\n\0"
).ljust(510, b"\0") + b"\x55\xaa"

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes from ``2G``, ``512M``, ``1024k``, ``2GiB`` or an integer (binary units).

    :raises ValueError: not a size.
    """
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a size (e.g. 2G, 512M)")
        size = int(match.group(1)) << (10 * " kmgt".index(match.group(2).lower() or " "))
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size


def vm_mac(name: str) -> str:
    """The MAC of BMC ``name``'s virtual NIC: QEMU's prefix 52:54:00, then 3 bytes of a hash of the name."""
    digest = hashlib.sha256(b"bmcsim-vm:" + name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


class VmError(RuntimeError):
    """A VM could not be started, or a QMP command failed."""


class Network(Protocol):
    """How a VM's NIC reaches the world: the value of QEMU's ``-netdev`` (id ``net0``)."""

    def netdev(self, name: str, mac: str) -> str:
        """The ``-netdev`` argument for VM ``name`` with NIC ``mac``."""
        ...


@dataclass(frozen=True)
class UserNetwork:
    """QEMU user-mode networking: NAT, with a DHCP server of its own.

    The guest is 10.0.2.15 and reaches this host's loopback as 10.0.2.2.
    With ``boot_url`` QEMU's DHCP hands iPXE that URL as the boot file, so
    a network boot fetches e.g. ``http://10.0.2.2:6385/v1/boot`` (the
    conductor's boot script).  No root, no bridge, nothing on the host.

    :param boot_url: DHCP ``bootfile``; None: a network boot finds nothing.
    :param options: extra ``-netdev user`` options (e.g. ``hostfwd=tcp::2222-:22``).
    """

    boot_url: str | None = None
    options: tuple[str, ...] = ()

    def netdev(self, name: str, mac: str) -> str:
        """``user,id=net0[,bootfile=URL]...``."""
        parts = ["user", "id=net0"]
        if self.boot_url:
            parts.append("bootfile=" + escape(self.boot_url))
        parts += list(self.options)
        return ",".join(parts)


@dataclass(frozen=True)
class VmSpec:
    """The virtual machines of a fleet (all alike).

    :param count: how many VM BMCs (named ``{name_prefix}0000``...).
    :param memory_mb: RAM of each.
    :param cpus: virtual CPUs of each.
    :param disk_size: size of each disk when it is created (``2G``, bytes...).
    :param disk_format: ``raw`` (a sparse file; readable as is) or ``qcow2``
        (needs ``qemu-img``).
    :param directory: where disks, serial logs, QEMU logs and QMP sockets
        go; None: a temporary directory removed when the fleet stops.
    :param accel: ``tcg`` (default: works everywhere), ``kvm``, or ``auto``
        (``kvm`` if :func:`probe_kvm` boots a tiny guest through iPXE with
        it, else ``tcg``; costs up to ``probe_timeout`` seconds at start).
    :param network: a :class:`Network`; default :class:`UserNetwork` with no boot URL.
    :param qemu: the QEMU binary (a name on PATH or a path).
    :param nic_model: ``virtio-net-pci`` or ``e1000``.
    :param machine: QEMU machine type (``pc``: SeaBIOS, legacy boot order).
    :param extra_args: appended to every QEMU command line.
    """

    count: int = 1
    memory_mb: int = 512
    cpus: int = 1
    disk_size: int | str = "2G"
    disk_format: str = "raw"
    directory: Path | None = None
    name_prefix: str = "vm-"
    accel: str = "tcg"
    network: Network = field(default_factory=UserNetwork)
    qemu: str = "qemu-system-x86_64"
    nic_model: str = "virtio-net-pci"
    machine: str = "pc"
    extra_args: tuple[str, ...] = ()
    start_timeout: float = 20.0
    stop_timeout: float = 10.0
    probe_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("VM count must not be negative")
        if self.memory_mb < 16 or self.cpus < 1:
            raise ValueError("a VM needs at least 16 MiB of memory and one CPU")
        parse_size(self.disk_size)
        if self.disk_format not in DISK_FORMATS:
            raise ValueError(f"disk_format must be one of {', '.join(DISK_FORMATS)}")
        if self.accel not in ACCELS:
            raise ValueError(f"accel must be one of {', '.join(ACCELS)}")
        if self.nic_model not in IPXE_ROMS:
            raise ValueError(f"nic_model must be one of {', '.join(IPXE_ROMS)}")

    @property
    def disk_bytes(self) -> int:
        """:attr:`disk_size` in bytes."""
        return parse_size(self.disk_size)

    def cli_args(self) -> list[str]:
        """The ``conductor sim run`` options that declare these VMs.

        :raises ValueError: something the command line cannot say (another
            network than :class:`UserNetwork` with a boot URL, a name prefix...).
        """
        network = self.network
        if not isinstance(network, UserNetwork) or network.options or self.name_prefix != "vm-" \
                or self.extra_args or self.nic_model != "virtio-net-pci" or self.machine != "pc":
            raise ValueError("this VmSpec cannot be given on the command line")
        args = ["--vm-count", str(self.count), "--vm-memory", str(self.memory_mb), "--vm-cpus", str(self.cpus),
                "--vm-disk-size", str(self.disk_size), "--vm-disk-format", self.disk_format,
                "--vm-accel", self.accel, "--vm-qemu", self.qemu]
        if self.directory is not None:
            args += ["--vm-dir", str(self.directory)]
        if network.boot_url:
            args += ["--vm-boot-url", network.boot_url]
        return args

    def replace(self, **changes: object) -> VmSpec:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class VmFiles:
    """Where one VM's files are; the disk and binary can be changed at run time."""

    disk: Path
    console: Path
    qemu_log: Path
    qmp: Path
    qemu: str


def missing_requirements(qemu: str = "qemu-system-x86_64", nic_model: str = "virtio-net-pci") -> str | None:
    """Why VMs cannot run here (for a test's skip reason), or None."""
    if shutil.which(qemu) is None:
        return f"{qemu} is not installed (Debian package qemu-system-x86)"
    if not Path(IPXE_ROMS[nic_model]).exists():
        return f"{IPXE_ROMS[nic_model]} is missing (Debian package ipxe-qemu)"
    return None


def escape(value: str) -> str:
    """A value inside a QEMU ``key=value,...`` option (commas doubled)."""
    return value.replace(",", ",,")


def boot_order(device: str, persistent: bool) -> tuple[str, str | None]:
    """QEMU's ``-boot`` ``(order, once)`` for the BMC's boot device.

    ``c`` is the disk, ``n`` the NIC's iPXE, ``d`` the CD-ROM (the virtual
    media inserted over Redfish; empty, the firmware skips it).  A one-time override (not persistent)
    is QEMU's ``once``: used for this boot, and a reset (or a guest reboot)
    goes back to ``order``, the default (disk, then network), as a real
    machine's firmware consumes a one-time override.
    """
    wanted = {"pxe": "nc", "cdrom": "dcn"}.get(device, "cn")
    if device in ("default", "") or persistent:
        return wanted, None
    return "cn", wanted


def qemu_command(spec: VmSpec, name: str, mac: str, files: VmFiles, accel: str, order: str,
                 once: str | None, disk_format: str | None = None, media: Path | None = None) -> list[str]:
    """The command line of VM ``name`` (``disk_format`` overrides the spec's; ``media``: an image in the CD-ROM)."""
    boot = f"order={order}" + (f",once={once}" if once else "")
    serial = f"bmcsim-{name}"[:20]  # virtio-blk serials hold 20 bytes
    return [
        files.qemu, "-name", name, "-nodefaults", "-no-user-config", "-display", "none",
        # graphics=off: SeaBIOS (and iPXE through it) print on the serial port.
        "-machine", f"{spec.machine},graphics=off", "-accel", accel,
        "-m", str(spec.memory_mb), "-smp", str(spec.cpus),
        "-chardev", f"file,id=serial0,path={escape(str(files.console))},append=on", "-serial", "chardev:serial0",
        "-qmp", f"unix:{escape(str(files.qmp))},server=on,wait=off",
        "-drive", f"file={escape(str(files.disk))},format={disk_format or spec.disk_format},if=none,id=disk0",
        "-device", f"virtio-blk-pci,drive=disk0,serial={serial}",
        "-drive", f"if=none,id={CDROM_DRIVE},media=cdrom,readonly=on"
                  + (f",file={escape(str(media))},format=raw" if media is not None else ""),
        "-device", f"ide-cd,drive={CDROM_DRIVE},id={CDROM_DEVICE},bus=ide.1,unit=0",
        "-netdev", spec.network.netdev(name, mac),
        "-device", f"{spec.nic_model},netdev=net0,mac={mac},romfile={IPXE_ROMS[spec.nic_model]}"
                   f"{NIC_OPTIONS[spec.nic_model]}",
        "-boot", boot,
        *spec.extra_args,
    ]


def create_disk(path: Path, size: int, disk_format: str) -> bool:
    """Create the disk at ``path`` if it does not exist; True if created.

    A raw disk is a sparse file; a qcow2 one is made by ``qemu-img create``.
    The parent directory must exist (a disk path in a missing directory is
    a configuration error, reported as such).

    :raises OSError: cannot create it (with the reason).
    """
    if path.exists():
        return False
    if disk_format == "raw":
        with open(path, "xb") as handle:
            handle.truncate(size)
        return True
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no directory {path.parent}")
    if shutil.which("qemu-img") is None:
        raise FileNotFoundError("qemu-img is not installed (Debian package qemu-utils): cannot create a qcow2 disk")
    result = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise OSError(f"qemu-img create failed: {result.stderr.strip() or result.returncode}")
    return True


def write_poweroff_disk(path: Path, size: int = 1 << 20, boot_sector: bytes = POWEROFF_BOOT_SECTOR) -> Path:
    """A raw disk whose boot sector prints :data:`POWEROFF_MESSAGE` and powers off (or another ``boot_sector``)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        handle.write(boot_sector)
    return path
