"""The dnsmasq configuration and command line, from the settings.

Everything dnsmasq reads or writes lives in ``<data dir>/dhcp/``: the
configuration (``dnsmasq.conf``, rewritten at every start), the host
entries (``hosts/``), its leases and its pid file.  ``--conf-file`` keeps it
away from ``/etc/dnsmasq.conf`` and ``/etc/dnsmasq.d``; ``--port=0`` turns
its DNS server off (only DHCP and TFTP run).
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import os
import pwd
import re
import shutil
from pathlib import Path

from conductor.exceptions import InvalidInput
from conductor.settings import Settings

#: How long a lease lasts.  Short: a node the conductor stops answering
#: (its provisioning is over) lets its address go within this time, and a
#: small range serves many boots (firmware, iPXE and the agent each take one).
LEASE_TIME = "10m"
#: What legacy BIOS PXE firmware loads over TFTP: iPXE using the firmware's own NIC driver (UNDI).
BIOS_BOOT_FILE = "undionly.kpxe"
#: What x86-64 UEFI PXE firmware loads: iPXE using the firmware's network protocol (SNP).
EFI_BOOT_FILE = "snponly.efi"
#: Client system architectures (DHCP option 93, RFC 4578 and IANA's registry):
#: 0 is x86 BIOS, 7 and 9 are x86-64 UEFI.  Other architectures get no boot
#: file (there is no iPXE of theirs in ``tftp_root``), nor does a client that
#: sends no option 93 (the agent's own DHCP client, an operating system).
BIOS_ARCHES = (0,)
EFI64_ARCHES = (7, 9)
#: The path of the generic iPXE script on the API (it chains to ``/v1/boot/<mac>``).
BOOT_SCRIPT_PATH = "/v1/boot"
#: Longest boot file name a DHCP reply carries (the BOOTP ``file`` field is 128 bytes, NUL-terminated).
MAX_BOOT_FILE = 127
#: Linux interface names: up to 15 characters; no separators dnsmasq's syntax uses.
_INTERFACE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")


@dataclasses.dataclass(frozen=True)
class DhcpConfig:
    """What ``conductor up`` runs dnsmasq with."""

    interface: str
    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address
    #: The URL iPXE gets as its boot file: the API's generic boot script.
    boot_url: str
    tftp_root: Path
    #: The dnsmasq program, as configured (see :meth:`program`).
    dnsmasq: str
    #: ``<data dir>/dhcp``.
    directory: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> DhcpConfig | None:
        """The configuration the settings ask for; None when DHCP is not configured.

        :raises InvalidInput: only one of ``dhcp_interface`` and ``dhcp_range``
            is set, or a value dnsmasq cannot be given.
        """
        interface, span = settings.dhcp_interface.strip(), settings.dhcp_range.strip()
        if not interface and not span:
            return None
        if not interface or not span:
            raise InvalidInput(
                "Set both dhcp_interface and dhcp_range (conductor up --dhcp-interface IF --dhcp-range A,B), "
                "or neither.",
                errors={"dhcp_interface" if not interface else "dhcp_range": "required with the other"},
            )
        if not _INTERFACE.match(interface):
            raise InvalidInput(f"dhcp_interface {interface!r} is not a network interface name.",
                               errors={"dhcp_interface": "not an interface name"})
        first, last = _parse_range(span)
        boot_url = settings.agent_url.rstrip("/") + BOOT_SCRIPT_PATH
        if len(boot_url.encode()) > MAX_BOOT_FILE or re.search(r"[\s,#]", boot_url):
            raise InvalidInput(
                f"The boot URL {boot_url!r} (agent_api_url + {BOOT_SCRIPT_PATH}) cannot be sent by DHCP: it must "
                f"be at most {MAX_BOOT_FILE} bytes, without spaces, commas or '#'.",
                errors={"agent_api_url": "unusable as a DHCP boot file name"},
            )
        tftp_root = Path(settings.tftp_root).expanduser()
        directory = settings.data_dir / "dhcp"
        for name, path in (("tftp_root", tftp_root), ("data_dir", directory)):
            if re.search(r"[\s,#]", str(path)):
                raise InvalidInput(f"{name} {str(path)!r} cannot be given to dnsmasq: no spaces, commas or '#'.",
                                   errors={name: "unusable by dnsmasq"})
        return cls(interface, first, last, boot_url, tftp_root, settings.dnsmasq_path, directory)

    @property
    def conf_file(self) -> Path:
        return self.directory / "dnsmasq.conf"

    @property
    def hosts_dir(self) -> Path:
        """One file per MAC that is answered (``dhcp-hostsdir``)."""
        return self.directory / "hosts"

    @property
    def pid_file(self) -> Path:
        return self.directory / "dnsmasq.pid"

    @property
    def lease_file(self) -> Path:
        return self.directory / "dnsmasq.leases"

    def render(self) -> str:
        """The text of ``dnsmasq.conf``."""
        bios = "\n".join(f"dhcp-match=set:bios,option:client-arch,{arch}" for arch in BIOS_ARCHES)
        efi64 = "\n".join(f"dhcp-match=set:efi64,option:client-arch,{arch}" for arch in EFI64_ARCHES)
        return f"""\
# Written by `conductor up` at each start from its settings (dhcp_interface,
# dhcp_range, tftp_root, agent_api_url): edits here are lost.

# DHCP and TFTP only: no DNS, nothing read from /etc.
port=0
no-resolv
no-hosts
log-facility=-

# One interface; its sockets bound to it, so that other DHCP servers of this
# host (libvirt's, say) keep theirs.
interface={self.interface}
bind-interfaces
dhcp-range={self.first},{self.last},{LEASE_TIME}

# Only the MACs of nodes booting from the network right now are answered:
# one file per MAC in the hosts directory, written and removed by the
# conductor (a new file is read at once; a removed one is forgotten on SIGHUP).
dhcp-hostsdir={self.hosts_dir}
dhcp-ignore=tag:!known

# iPXE says who it is (user class "iPXE", and its own option 175): it gets
# the boot script's URL, which ends the chain.
dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:ipxe,175
dhcp-boot=tag:ipxe,{self.boot_url}

# PXE firmware first loads iPXE over TFTP, by architecture (option 93).
{bios}
{efi64}
dhcp-boot=tag:!ipxe,tag:bios,{BIOS_BOOT_FILE}
dhcp-boot=tag:!ipxe,tag:efi64,{EFI_BOOT_FILE}

enable-tftp
tftp-root={self.tftp_root}
"""

    def write(self) -> None:
        """Create the directory and the hosts directory, and (re)write ``dnsmasq.conf``."""
        self.hosts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.conf_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(self.render(), encoding="utf-8")
        tmp.replace(self.conf_file)

    def program(self) -> str:
        """The dnsmasq executable's path.

        :raises RuntimeError: it is not installed (or ``dnsmasq_path`` names nothing runnable).
        """
        # /usr/sbin is not on every user's PATH.
        search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        found = shutil.which(self.dnsmasq, path=search)
        if found is None:
            raise RuntimeError(
                f"dnsmasq not found (dnsmasq_path = {self.dnsmasq!r}): install the Debian package "
                "dnsmasq-base, or set dnsmasq_path"
            )
        return found

    def argv(self, program: str) -> list[str]:
        """The command line of a dnsmasq that stays in the foreground, as a child of the supervisor."""
        return [
            program,
            "--keep-in-foreground",
            f"--conf-file={self.conf_file}",
            "--port=0",
            f"--pid-file={self.pid_file}",
            f"--dhcp-leasefile={self.lease_file}",
            *_same_identity(),
        ]

    def missing_boot_files(self) -> list[str]:
        """The iPXE binaries PXE firmware is sent that ``tftp_root`` lacks."""
        return [name for name in (BIOS_BOOT_FILE, EFI_BOOT_FILE) if not (self.tftp_root / name).is_file()]

    def running_pid(self) -> int | None:
        """The pid in dnsmasq's pid file (written once it is set up), if any."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


def _parse_range(span: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """``first,last`` as two IPv4 addresses in order.

    :raises InvalidInput: anything else.
    """
    parts = [part.strip() for part in span.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError(span)
        first, last = (ipaddress.IPv4Address(part) for part in parts)
    except ValueError:
        raise InvalidInput(f"dhcp_range {span!r} must be two IPv4 addresses, first,last (e.g. "
                           "192.168.50.100,192.168.50.200).", errors={"dhcp_range": "expected first,last"}) from None
    if first > last:
        raise InvalidInput(f"dhcp_range {span!r}: the first address comes after the last.",
                           errors={"dhcp_range": "first after last"})
    return first, last


def _same_identity() -> list[str]:
    """dnsmasq's ``--user``/``--group``: this process's own.

    Started as root, dnsmasq otherwise becomes ``nobody`` (group ``dip`` on
    Debian) once its sockets are open: that user cannot read the private
    data directory, and the change of identity clears the parent-death
    signal that makes it die with the supervisor.
    """
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
    except KeyError:  # an identity without a name (some containers): dnsmasq's defaults
        return []
    return [f"--user={user}", f"--group={group}"]
