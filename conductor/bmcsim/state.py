"""The fleet's state table: one fixed-size record per BMC in shared memory.

The table lives in an anonymous ``memfd`` created by the control process and
handed to every shard process (``pass_fds``), so a BMC's power state, boot
device and faults survive the restart of the shard process that serves it,
and the control process can read any BMC without asking a (possibly wedged)
shard.

There are no cross-process locks on purpose: a shard killed while holding a
lock would wedge the control process.  Instead every field has exactly one
writer:

* the **shard** writes what a BMC does: power, pending transition, boot
  device, counters, its heartbeat;
* the **control process** writes what an operator asks for: faults, the
  power delay, and "drift" requests (``force_seq``/``force_power``/
  ``force_cause``), which the shard applies and acknowledges with
  ``applied_force_seq``.  The VM manager (:mod:`.vmmanager`) uses the same
  requests to write back a virtual machine's real state (its process
  exited, or could not start).

Each writer packs only its own fields (never the whole record), and 8-byte
aligned stores are atomic on the machines we run on, so a reader never sees
a half-written float.  The control process writes the shard-owned fields
once, before any shard starts.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any


class PowerState(enum.StrEnum):
    """The power state a BMC reports."""

    ON = "on"
    OFF = "off"


class Directive(enum.IntEnum):
    """A pending power transition (0 is "none"); values are ours, not IPMI's."""

    NONE = 0
    ON = 1
    OFF = 2
    CYCLE = 3
    RESET = 4
    SOFT = 5
    #: An ACPI reboot (Redfish ``GracefulRestart``) of a VM BMC: the guest shuts
    #: down, then the machine boots again; other BMCs get ``RESET``.
    SOFT_RESTART = 6


class BootDevice(enum.StrEnum):
    """Boot devices the simulator understands (IPMI boot flags selector)."""

    DEFAULT = "default"
    PXE = "pxe"
    DISK = "disk"
    SAFE = "safe"
    CDROM = "cdrom"
    BIOS = "bios"
    FLOPPY = "floppy"


#: Boot device <-> the 4-bit "boot device selector" of IPMI boot flags
#: parameter 5, data byte 2, bits 5:2 (IPMI 2.0 table 28-14).
BOOT_SELECTOR: dict[BootDevice, int] = {
    BootDevice.DEFAULT: 0,
    BootDevice.PXE: 1,
    BootDevice.DISK: 2,
    BootDevice.SAFE: 3,
    BootDevice.CDROM: 5,
    BootDevice.BIOS: 6,
    BootDevice.FLOPPY: 15,
}
SELECTOR_BOOT: dict[int, BootDevice] = {v: k for k, v in BOOT_SELECTOR.items()}

# boot_flags bits (ours, packed into one byte of the record)
BOOT_VALID = 1
BOOT_PERSISTENT = 2
BOOT_UEFI = 4


class ForceCause(enum.IntEnum):
    """Why the control process set a BMC's power directly (the event's ``cause``)."""

    DRIFT = 0  # an operator, behind the conductor's back
    VM_EXIT = 1  # the BMC's virtual machine stopped by itself (guest power off, crash, killed)
    VM_FAILED = 2  # the BMC's virtual machine could not start
    VM_STARTED = 3  # the BMC's virtual machine runs (its power on is complete)
    VM_REBOOT = 4  # the guest shut down for a graceful restart: boot the machine again

    @property
    def label(self) -> str:
        """The event's ``cause``: ``drift``, ``vm-exit``, ``vm-failed``, ``vm-started`` or ``vm-reboot``."""
        return self.name.lower().replace("_", "-")


class FaultBit(enum.IntFlag):
    """Boolean faults, packed into one byte of the record."""

    REJECT_PASSWORD = 1
    STUCK = 2
    FLAP = 4
    UNREACHABLE = 8
    IGNORE_ACPI = 16


@dataclass(frozen=True)
class Faults:
    """The faults injected into one BMC.

    :ivar drop: fraction (0..1) of incoming packets silently dropped.
    :ivar latency: seconds added before each packet is handled.
    :ivar reject_password: the BMC behaves as if it had another password.
    :ivar stuck: power commands are accepted but never change anything.
    :ivar flap: the power state toggles by itself every ``flap_period`` s.
    :ivar unreachable: every packet is dropped.
    :ivar ignore_acpi: a soft power off (ACPI) is accepted but ignored.
    """

    drop: float = 0.0
    latency: float = 0.0
    reject_password: bool = False
    stuck: bool = False
    flap: bool = False
    unreachable: bool = False
    ignore_acpi: bool = False
    flap_period: float = 2.0

    @property
    def bits(self) -> FaultBit:
        """The boolean faults as a bit field."""
        bits = FaultBit(0)
        for name, bit in _FAULT_FLAGS.items():
            if getattr(self, name):
                bits |= bit
        return bits

    @property
    def active(self) -> bool:
        """True when any fault is set."""
        return bool(self.bits) or self.drop > 0 or self.latency > 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


_FAULT_FLAGS: dict[str, FaultBit] = {
    "reject_password": FaultBit.REJECT_PASSWORD,
    "stuck": FaultBit.STUCK,
    "flap": FaultBit.FLAP,
    "unreachable": FaultBit.UNREACHABLE,
    "ignore_acpi": FaultBit.IGNORE_ACPI,
}
FAULT_NAMES = (*_FAULT_FLAGS, "drop", "latency", "flap_period")


@dataclass(frozen=True)
class BMCState:
    """A snapshot of one BMC as the table holds it (see :meth:`StateTable.read`)."""

    power: PowerState
    pending: Directive
    pending_deadline: float
    boot_device: BootDevice
    boot_persistent: bool
    boot_uefi: bool
    faults: Faults
    delay: float
    power_changes: int
    packets: int
    commands: int
    logins: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form; ``pending_in`` is seconds left, or None."""
        left = None
        if self.pending:
            left = round(max(0.0, self.pending_deadline - time.monotonic()), 3)
        return {
            "power": str(self.power),
            "pending": self.pending.name.lower() if self.pending else None,
            "pending_in": left,
            "boot_device": str(self.boot_device),
            "boot_persistent": self.boot_persistent,
            "boot_uefi": self.boot_uefi,
            "faults": self.faults.as_dict(),
            "delay": self.delay,
            "power_changes": self.power_changes,
            "packets": self.packets,
            "commands": self.commands,
            "logins": self.logins,
        }


# --- record layout --------------------------------------------------------
# Shard-owned fields.
_POWER = struct.Struct("<BBBB")  # power, pending, boot selector, boot flags @0
_DEADLINE = struct.Struct("<d")  # @8 monotonic deadline of the pending transition
_APPLIED = struct.Struct("<I")  # @16 last force_seq applied
_COUNTERS = struct.Struct("<IIII")  # @20 power_changes, packets, commands, logins
# Control-owned fields.
_FAULTBITS = struct.Struct("<BB")  # @40 fault bits, force_power
_FORCE_CAUSE = 42  # one byte: ForceCause of the force request
_FORCE_SEQ = struct.Struct("<I")  # @44
_FLOATS = struct.Struct("<dddd")  # @48 drop, latency, flap_period, delay
RECORD_SIZE = 80

# Shard header: heartbeat counter, time of last loop turn, errors, pid.
_SHARD = struct.Struct("<QdII")
SHARD_SIZE = 32


@dataclass(frozen=True)
class ShardHealth:
    """What a shard process last wrote about itself."""

    heartbeat: int
    last_loop: float
    errors: int
    pid: int


class StateTable:
    """Shared-memory records for ``count`` BMCs and ``shards`` shard headers.

    Create it in the control process with :meth:`create`; a shard attaches
    with :meth:`attach` to the file descriptor it inherited.
    """

    def __init__(self, fd: int, count: int, shards: int) -> None:
        self.fd = fd
        self.count = count
        self.shards = shards
        self._shard_base = count * RECORD_SIZE
        self._mm = mmap.mmap(fd, self._shard_base + shards * SHARD_SIZE)

    @classmethod
    def create(cls, count: int, shards: int, delay: float) -> StateTable:
        """Create a zeroed table (all BMCs off, boot default, no faults).

        :raises OSError: when the memfd cannot be created.
        """
        fd = os.memfd_create("bmcsim-state", 0)
        os.ftruncate(fd, count * RECORD_SIZE + shards * SHARD_SIZE)
        table = cls(fd, count, shards)
        for index in range(count):
            table.write_faults(index, Faults())
            table.write_delay(index, delay)
        return table

    @classmethod
    def attach(cls, fd: int, count: int, shards: int) -> StateTable:
        """Map a table whose descriptor was inherited from the control process."""
        return cls(fd, count, shards)

    def close(self) -> None:
        """Unmap and close the descriptor."""
        self._mm.close()
        os.close(self.fd)

    # --- reading (anyone) -------------------------------------------------
    def read(self, index: int) -> BMCState:
        """A snapshot of one record, with a due pending transition shown done.

        A transition whose deadline has passed is reported as completed even
        if the shard has not written it yet (it may be wedged or restarting),
        so the control API never shows a stale power state.
        """
        off = index * RECORD_SIZE
        power, pending, selector, flags = _POWER.unpack_from(self._mm, off)
        (deadline,) = _DEADLINE.unpack_from(self._mm, off + 8)
        changes, packets, commands, logins = _COUNTERS.unpack_from(self._mm, off + 20)
        power_state = PowerState.ON if power else PowerState.OFF
        if pending and time.monotonic() >= deadline:
            power_state = transition_target(Directive(pending)) or power_state
            pending = Directive.NONE
        return BMCState(
            power=power_state,
            pending=Directive(pending),
            pending_deadline=deadline,
            boot_device=(SELECTOR_BOOT.get(selector, BootDevice.DEFAULT)
                         if flags & BOOT_VALID else BootDevice.DEFAULT),
            boot_persistent=bool(flags & BOOT_PERSISTENT) if flags & BOOT_VALID else True,
            boot_uefi=bool(flags & BOOT_UEFI),
            faults=self.read_faults(index),
            delay=self.read_delay(index),
            power_changes=changes,
            packets=packets,
            commands=commands,
            logins=logins,
        )

    def read_raw_power(self, index: int) -> tuple[int, int, float]:
        """``(power, pending, deadline)`` exactly as stored."""
        off = index * RECORD_SIZE
        power, pending, _, _ = _POWER.unpack_from(self._mm, off)
        (deadline,) = _DEADLINE.unpack_from(self._mm, off + 8)
        return power, pending, deadline

    def read_boot(self, index: int) -> tuple[int, int]:
        """``(selector, flags)`` exactly as stored."""
        _, _, selector, flags = _POWER.unpack_from(self._mm, index * RECORD_SIZE)
        return selector, flags

    def read_fault_bits(self, index: int) -> FaultBit:
        """The boolean faults only (cheap; used per packet)."""
        return FaultBit(self._mm[index * RECORD_SIZE + 40])

    def read_faults(self, index: int) -> Faults:
        """All faults of one BMC."""
        off = index * RECORD_SIZE
        bits, _ = _FAULTBITS.unpack_from(self._mm, off + 40)
        drop, latency, flap_period, _ = _FLOATS.unpack_from(self._mm, off + 48)
        kwargs = {name: bool(bits & bit) for name, bit in _FAULT_FLAGS.items()}
        return Faults(drop=drop, latency=latency, flap_period=flap_period, **kwargs)

    def read_net_faults(self, index: int) -> tuple[FaultBit, float, float]:
        """``(bits, drop, latency)``: what the shard checks for every packet."""
        off = index * RECORD_SIZE
        drop, latency = struct.unpack_from("<dd", self._mm, off + 48)
        return FaultBit(self._mm[off + 40]), drop, latency

    def read_delay(self, index: int) -> float:
        """Seconds a power transition of this BMC takes."""
        return float(struct.unpack_from("<d", self._mm, index * RECORD_SIZE + 72)[0])

    def read_force(self, index: int) -> tuple[int, int, int]:
        """``(force_seq, force_power, applied_force_seq)``."""
        off = index * RECORD_SIZE
        _, force_power = _FAULTBITS.unpack_from(self._mm, off + 40)
        (seq,) = _FORCE_SEQ.unpack_from(self._mm, off + 44)
        (applied,) = _APPLIED.unpack_from(self._mm, off + 16)
        return seq, force_power, applied

    def read_force_cause(self, index: int) -> ForceCause:
        """Why the last drift request was made (read once its seq is new)."""
        value = self._mm[index * RECORD_SIZE + _FORCE_CAUSE]
        return ForceCause(value) if value in ForceCause._value2member_map_ else ForceCause.DRIFT

    def read_shard(self, shard: int) -> ShardHealth:
        """The header a shard process keeps up to date."""
        return ShardHealth(*_SHARD.unpack_from(self._mm, self._shard_base + shard * SHARD_SIZE))

    # --- shard-owned writes -------------------------------------------------
    def write_power(self, index: int, power: int, pending: int, deadline: float) -> None:
        """Set power, pending directive and its deadline (shard only)."""
        off = index * RECORD_SIZE
        _, _, selector, flags = _POWER.unpack_from(self._mm, off)
        # The deadline goes first so a reader that sees the new pending
        # directive also sees its deadline.
        _DEADLINE.pack_into(self._mm, off + 8, deadline)
        _POWER.pack_into(self._mm, off, power, pending, selector, flags)

    def write_boot(self, index: int, selector: int, flags: int) -> None:
        """Set the boot device selector and flags (shard only)."""
        self._mm[index * RECORD_SIZE + 2] = selector & 0xFF
        self._mm[index * RECORD_SIZE + 3] = flags & 0xFF

    def write_applied(self, index: int, seq: int) -> None:
        """Acknowledge a drift request (shard only)."""
        _APPLIED.pack_into(self._mm, index * RECORD_SIZE + 16, seq)

    def bump(self, index: int, counter: int) -> None:
        """Increment counter 0..3 (power_changes, packets, commands, logins)."""
        off = index * RECORD_SIZE + 20 + 4 * counter
        (value,) = struct.unpack_from("<I", self._mm, off)
        struct.pack_into("<I", self._mm, off, (value + 1) & 0xFFFFFFFF)

    def write_shard(self, shard: int, heartbeat: int, errors: int, pid: int) -> None:
        """Update a shard's header (that shard only)."""
        _SHARD.pack_into(self._mm, self._shard_base + shard * SHARD_SIZE,
                         heartbeat, time.monotonic(), errors, pid)

    # --- control-owned writes ---------------------------------------------
    def write_faults(self, index: int, faults: Faults) -> None:
        """Replace the faults of one BMC (control process only)."""
        off = index * RECORD_SIZE
        _, _, _, delay = _FLOATS.unpack_from(self._mm, off + 48)
        _FLOATS.pack_into(self._mm, off + 48, min(max(faults.drop, 0.0), 1.0),
                          max(faults.latency, 0.0), max(faults.flap_period, 0.05), delay)
        self._mm[off + 40] = int(faults.bits)

    def write_delay(self, index: int, delay: float) -> None:
        """Set the power transition delay of one BMC (control process only)."""
        struct.pack_into("<d", self._mm, index * RECORD_SIZE + 72, max(delay, 0.0))

    def request_force(self, index: int, power: PowerState, cause: ForceCause = ForceCause.DRIFT) -> int:
        """Ask the shard to set power directly ("drift"); returns the request seq.

        Not thread-safe: callers in the control process serialise (see
        :meth:`conductor.bmcsim.fleet.Fleet.force_power`).
        """
        off = index * RECORD_SIZE
        (seq,) = _FORCE_SEQ.unpack_from(self._mm, off + 44)
        seq = (seq + 1) & 0xFFFFFFFF or 1
        # The seq goes last: a shard that sees it also sees power and cause.
        self._mm[off + _FORCE_CAUSE] = int(cause)
        self._mm[off + 41] = 1 if power == PowerState.ON else 0
        _FORCE_SEQ.pack_into(self._mm, off + 44, seq)
        return seq

    def init_power(self, index: int, power: PowerState) -> None:
        """Set the initial power state, before any shard runs (control only)."""
        self.write_power(index, 1 if power == PowerState.ON else 0, 0, 0.0)


def transition_target(directive: Directive) -> PowerState | None:
    """The power state a pending directive ends in (None for NONE)."""
    if directive in (Directive.ON, Directive.CYCLE, Directive.RESET, Directive.SOFT_RESTART):
        return PowerState.ON
    if directive in (Directive.OFF, Directive.SOFT):
        return PowerState.OFF
    return None
