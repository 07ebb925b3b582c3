"""One simulated BMC: pyghmi's IPMI server side, backed by the state table.

This module runs only inside shard processes (see :mod:`.shard`).  It
subclasses pyghmi's ``Bmc`` and ``ServerSession`` for the RMCP+ handshake,
crypto and message framing, and works around the pyghmi 1.6.19 server bugs
that matter to us, without patching pyghmi itself:

* **Cipher suites.** pyghmi's server only does suite 3 (HMAC-SHA1,
  HMAC-SHA1-96, AES-CBC-128) but accepts any proposal; pyghmi's own client
  proposes suite 17 (SHA-256) first and then crashes in ``_got_rakp2``.  We
  refuse other proposals with RMCP+ status 0x11, and clients fall back to 3.
* **I/O.** ``IpmiServer.__init__`` registers the socket in pyghmi's global
  I/O thread, whose ``_io_graball`` reads every socket on every wake-up and
  whose routing table is mutated by the listening thread without a lock; a
  lost race kills that thread and leaves the process alive and deaf.  We
  build the server without it: the shard's own epoll loop reads the socket
  and hands each datagram to :meth:`SimBmc.handle_packet`.
* **Routing.** pyghmi routes by client address in a process-wide dict; an
  IPMI 1.5 packet from a re-logging client deletes that client's sessions
  with *every* BMC in the process, and a packet still queued for a deleted
  session then hits ``'ServerSession' object has no attribute
  'sessionless_data'``.  We keep sessions per BMC and route explicitly.
* **Unknown user.** pyghmi's server ignores a RAKP1 for an unknown user (the
  client waits for a timeout); we answer RAKP2 status 0x0D like a real BMC.
* **Boot flags.** The base class ignores the persistent and UEFI bits and
  always reports "valid, one-time"; we keep all three and clear a one-time
  override when the machine boots, as firmware does.
* **Privilege.** "Set Session Privilege Level" with level 0 ("report
  current") raised AttributeError; we answer it.
"""

from __future__ import annotations

import collections
import logging
import socket
import struct
import time
import uuid as uuidlib
from typing import TYPE_CHECKING, Any, cast

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.constants as ipmi_constants
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession

from conductor.bmcsim.events import REBOOT_CAUSES
from conductor.bmcsim.state import (
    BOOT_PERSISTENT,
    BOOT_UEFI,
    BOOT_VALID,
    SELECTOR_BOOT,
    BootDevice,
    Directive,
    FaultBit,
    ForceCause,
    PowerState,
    StateTable,
    transition_target,
)

if TYPE_CHECKING:
    from conductor.bmcsim.shard import Shard

LOG = logging.getLogger(__name__)

# RMCP+ status codes (IPMI 2.0 table 13-15).
RMCP_NO_CIPHER_MATCH = 0x11
RMCP_UNAUTHORIZED_NAME = 0x0D
# IPMI completion codes.
CC_OK = 0x00
CC_PARAM_UNSUPPORTED = 0x80
CC_BAD_LENGTH = 0xC7
CC_INVALID_DATA = 0xCC
# The only algorithms pyghmi's server implements: auth HMAC-SHA1 (1),
# integrity HMAC-SHA1-96 (1), confidentiality AES-CBC-128 (1) = suite 3.
SUITE3 = (1, 1, 1)
# Counters in the state table.
C_POWER, C_PACKETS, C_COMMANDS, C_LOGINS = range(4)
SESSION_IDLE_TIMEOUT = 60.0  # seconds; what most BMCs use


class SimServerSession(serversession.ServerSession):
    """A server-side RMCP+ session with cipher-suite and user checks."""

    bmc: SimBmc

    def __init__(self, authdata: Any, kg: bytes | None, clientaddr: tuple,
                 netsocket: socket.socket, request: bytearray,
                 uuid: uuidlib.UUID, bmc: SimBmc) -> None:
        self.refused = False
        self.clientpriv = 4
        self.last_seen = time.monotonic()
        super().__init__(authdata, kg, clientaddr, netsocket, request, uuid, bmc)
        # ServerSession registers itself in pyghmi's process-wide routing
        # table, which we do not use; drop it so the table does not grow with
        # every ipmitool call (each comes from a new source port).
        handlers = ipmisession.Session.bmc_handlers.get(clientaddr)
        if handlers is not None:
            handlers.pop(bmc.port, None)
            if not handlers:
                ipmisession.Session.bmc_handlers.pop(clientaddr, None)

    def create_open_session_response(self, request: bytearray) -> bytearray:
        """Accept cipher suite 3 only; refuse anything else with status 0x11.

        Request layout (IPMI 2.0 table 13-9): tag, role, 2 reserved, the
        console session id, then three 8-byte algorithm payloads whose 5th
        byte is the algorithm number.
        """
        proposal = tuple(request[off] & 0x3F for off in (12, 20, 28)) if len(request) >= 32 else ()
        if proposal != SUITE3:
            self.refused = True
            self.clientsessionid = request[4:8]
            return bytearray([request[0], RMCP_NO_CIPHER_MATCH, 0, 0]) + request[4:8]
        return cast(bytearray, super().create_open_session_response(request))

    def _got_rakp1(self, data: bytearray) -> None:
        namelen = data[27] if len(data) > 27 else 0
        name = bytes(data[28:28 + namelen]).decode("utf-8", "replace")
        if not namelen or name not in self.bmc.usernames:
            # Say so, as a real BMC does, instead of letting the client time out.
            self.send_payload(bytearray([data[0], RMCP_UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid,
                              ipmi_constants.payload_types["rakp2"], retry=False)
            return
        super()._got_rakp1(data)

    def _got_rakp3(self, data: bytearray) -> None:
        super()._got_rakp3(data)
        if getattr(self, "ipmicallback", None) is not None:
            self.bmc.table.bump(self.bmc.index, C_LOGINS)

    def handle_client_request(self, request: dict) -> None:
        """Answer privilege level 0 ("report current") that pyghmi trips on."""
        if request["netfn"] == 6 and request["command"] == 0x3B and request["data"][0] <= 1:
            self._send_ipmi_net_payload(code=CC_OK, data=[self.clientpriv])
            return
        super().handle_client_request(request)

    def close_server_session(self) -> None:
        """The client logged out: forget the session."""
        self.bmc.forget(self)


class _Credentials:
    """``authdata`` for pyghmi: returns a wrong password under that fault."""

    def __init__(self, bmc: SimBmc, users: dict[str, str]) -> None:
        self._bmc = bmc
        self._users = users

    def get(self, name: str, default: str | None = None) -> str | None:
        password = self._users.get(name, default)
        if password is not None and self._bmc.fault_bits() & FaultBit.REJECT_PASSWORD:
            # The BMC signs RAKP2 with a password the client does not know,
            # which is exactly what a client with a wrong password sees.
            return password + "\x00rejected"
        return password


class SimBmc(pyghmi_bmc.Bmc):
    """One BMC: a UDP socket, its sessions, and its record in the state table.

    :param index: the BMC's record in ``table``.
    :param name: used in events and logs.
    :param users: ``{username: password}``.
    :param vm: a virtual machine is behind this BMC (see :mod:`.vmmanager`):
        a soft power off is only passed on (the guest decides), and the
        control process writes the machine's real state back.
    """

    def __init__(self, shard: Shard, table: StateTable, index: int, name: str,
                 sock: socket.socket, port: int, users: dict[str, str],
                 bmc_uuid: uuidlib.UUID, vm: bool = False) -> None:
        # Deliberately not calling IpmiServer.__init__: it binds the socket
        # into pyghmi's global I/O thread (see the module docstring).  These
        # are the attributes it would set.
        self.revision = 0
        self.deviceid = 0
        self.firmwaremajor = 1
        self.firmwareminor = 0
        self.ipmiversion = 2
        self.additionaldevices = 0
        self.mfgid = 0
        self.prodid = 0
        self.pktqueue: collections.deque[Any] = collections.deque()
        self.uuid = bmc_uuid
        self.authcap = struct.pack("BBBBBBBBB", 0, 1, 0b10000000, 0b00000100, 0b00000010, 0, 0, 0, 0)
        self.kg = None
        self.timeout = 60
        self.port = port
        self.serversocket = sock
        self.shard = shard
        self.table = table
        self.index = index
        self.name = name
        self.usernames = frozenset(users)
        self.authdata = _Credentials(self, users)
        self.sessions: dict[tuple, SimServerSession] = {}
        self.next_flap: float | None = None
        self.vm = vm

    # --- packets --------------------------------------------------------------
    def fault_bits(self) -> FaultBit:
        """The boolean faults currently injected."""
        return self.table.read_fault_bits(self.index)

    def handle_packet(self, data: bytes, addr: tuple) -> None:
        """Handle one datagram from ``addr`` (faults were applied by the shard)."""
        self.table.bump(self.index, C_PACKETS)
        if len(data) < 16 or data[0] != 6 or data[2:4] != b"\xff\x07":
            return  # not IPMI (an ASF ping, noise)
        if data[4] != 6:
            # IPMI 1.5 framing is only used before a session exists (Get
            # Channel Authentication Capabilities).
            self.sessionless_data(data, addr)
            return
        ptype = data[5] & 0x3F
        if ptype == 0x10:  # RMCP+ Open Session Request: always a new session
            opened = SimServerSession(self.authdata, self.kg, addr, self.serversocket,
                                      bytearray(data[16:]), self.uuid, bmc=self)
            if not opened.refused:
                self.sessions[addr] = opened
            return
        if ptype == 0 and data[6:10] == b"\x00\x00\x00\x00":
            self.sessionless_data(data, addr)  # e.g. Get Channel Cipher Suites
            return
        session = self.sessions.get(addr)
        if session is None:
            return  # a session we expired or never had: a real BMC drops it
        session.last_seen = time.monotonic()
        session._handle_ipmi_packet(bytearray(data), sockaddr=addr,
                                    qent=(data, addr, self.serversocket, True))

    def forget(self, session: SimServerSession) -> None:
        """Drop a session (logout or idle expiry)."""
        if self.sessions.get(session.sockaddr) is session:
            del self.sessions[session.sockaddr]

    def expire_sessions(self, now: float) -> None:
        """Drop sessions idle for longer than the BMC's session timeout."""
        for addr, session in list(self.sessions.items()):
            if now - session.last_seen > SESSION_IDLE_TIMEOUT:
                del self.sessions[addr]

    # --- power ------------------------------------------------------------------
    def get_power_state(self) -> str:
        """'on' or 'off', completing a due transition first."""
        self.settle()
        power, _, _ = self.table.read_raw_power(self.index)
        return "on" if power else "off"

    def power_on(self) -> int:
        return self._command(Directive.ON)

    def power_off(self) -> int:
        return self._command(Directive.OFF)

    def power_cycle(self) -> int:
        return self._command(Directive.CYCLE)

    def power_reset(self) -> int:
        return self._command(Directive.RESET)

    def power_shutdown(self) -> int:
        return self._command(Directive.SOFT)

    def pulse_diag(self) -> int:
        return CC_OK  # an NMI changes nothing we model

    def cold_reset(self) -> int:
        return CC_OK  # resetting the BMC itself is not modelled

    def get_system_guid(self) -> uuidlib.UUID:
        return self.uuid

    def _command(self, directive: Directive) -> int:
        """Start a power transition that completes ``delay`` seconds from now.

        A new command supersedes a pending one.  Commands that would change
        nothing (on when on, off/reset when off) are accepted and ignored, as
        most BMCs do.  A power cycle turns the machine off at once and back
        on after the delay.
        """
        self.table.bump(self.index, C_COMMANDS)
        bits = self.fault_bits()
        if bits & FaultBit.STUCK:
            return CC_OK  # accepted, never acted on
        now = time.monotonic()
        self.settle(now)
        power, _pending, _ = self.table.read_raw_power(self.index)
        if directive == Directive.SOFT and bits & FaultBit.IGNORE_ACPI:
            return CC_OK  # the OS ignores the ACPI power button
        if directive in (Directive.OFF, Directive.SOFT, Directive.RESET) and not power:
            self.table.write_power(self.index, 0, Directive.NONE, 0.0)  # cancels a pending on
            return CC_OK
        if directive == Directive.SOFT and self.vm:
            self._pass_acpi("soft")
            return CC_OK
        if directive == Directive.ON and power:
            self.table.write_power(self.index, 1, Directive.NONE, 0.0)  # cancels a pending off
            return CC_OK
        if directive == Directive.CYCLE and power:
            self._change(PowerState.ON, PowerState.OFF, "cycle")
            power = 0
        deadline = now + self.table.read_delay(self.index)
        self.table.write_power(self.index, power, directive, deadline)
        self.settle(now)  # a zero delay completes before we answer
        if self.table.read_raw_power(self.index)[1]:
            self.shard.schedule(deadline, self.settle)
        return CC_OK

    def settle(self, now: float | None = None) -> None:
        """Complete the pending transition if its deadline has passed."""
        power, pending, deadline = self.table.read_raw_power(self.index)
        if not pending:
            return
        if now is None:
            now = time.monotonic()
        if now < deadline:
            return
        directive = Directive(pending)
        target = transition_target(directive)
        old = PowerState.ON if power else PowerState.OFF
        if self.vm and old == PowerState.ON and directive in (Directive.SOFT, Directive.SOFT_RESTART):
            # Redfish's GracefulShutdown / GracefulRestart (its process only
            # writes the directive): the guest decides, as for IPMI's soft off.
            self.table.write_power(self.index, 1, Directive.NONE, 0.0)
            self._pass_acpi("soft" if directive == Directive.SOFT else "soft-restart")
            return
        if directive == Directive.SOFT_RESTART:
            directive = Directive.RESET  # no guest to ask: a plain reset
        if self.vm and old == PowerState.OFF and target == PowerState.ON:
            # A virtual machine is on once its QEMU runs: the event asks the
            # VM manager to start it, and the BMC reads "off" until the
            # manager writes "on" back (a "vm-started" event), or for good
            # if it cannot start ("vm-failed").
            self.table.write_power(self.index, 0, Directive.NONE, 0.0)
            self._event(old, PowerState.ON, directive.name.lower())
            return
        self.table.write_power(self.index, 1 if target == PowerState.ON else 0, Directive.NONE, 0.0)
        self._event(old, target or old, directive.name.lower())

    def _pass_acpi(self, cause: str) -> None:
        """Pass an ACPI request to a VM BMC's machine (an on -> on event with ``cause``).

        A virtual machine powers off (or reboots) when its guest says so: the
        VM manager presses the power button and writes back "off" once the
        machine has really stopped (or boots it again: a graceful restart).
        """
        selector, flags = self.table.read_boot(self.index)
        self.shard.emit({"type": "power", "index": self.index, "old": "on", "new": "on",
                         "cause": cause, "boot_device": str(SELECTOR_BOOT.get(selector, BootDevice.DEFAULT)),
                         "persistent": bool(flags & BOOT_PERSISTENT), "uefi": bool(flags & BOOT_UEFI),
                         "time": time.time()})

    def _change(self, old: PowerState, new: PowerState, cause: str) -> None:
        self.table.write_power(self.index, 1 if new == PowerState.ON else 0, Directive.NONE, 0.0)
        self._event(old, new, cause)

    def _event(self, old: PowerState, new: PowerState, cause: str) -> None:
        """Record a power change, consume a one-time boot override, tell the parent."""
        selector, flags = self.table.read_boot(self.index)
        device = SELECTOR_BOOT.get(selector, BootDevice.DEFAULT) if flags & BOOT_VALID else BootDevice.DEFAULT
        persistent = bool(flags & BOOT_PERSISTENT)
        booted = new == PowerState.ON and (old == PowerState.OFF or cause in REBOOT_CAUSES)
        if booted and flags & BOOT_VALID and not persistent:
            # Firmware clears a one-time override once it has used it.
            self.table.write_boot(self.index, 0, flags & BOOT_UEFI)
        self.table.bump(self.index, C_POWER)
        self.shard.emit({"type": "power", "index": self.index, "old": str(old), "new": str(new),
                         "cause": cause, "boot_device": str(device), "persistent": persistent,
                         "uefi": bool(flags & BOOT_UEFI), "time": time.time()})

    def tick(self, now: float) -> None:
        """Periodic work: due transitions, drift requests, flapping."""
        self.settle(now)
        seq, force_power, applied = self.table.read_force(self.index)
        if seq != applied:
            power, _, _ = self.table.read_raw_power(self.index)
            old = PowerState.ON if power else PowerState.OFF
            new = PowerState.ON if force_power else PowerState.OFF
            self.table.write_power(self.index, 1 if force_power else 0, Directive.NONE, 0.0)
            cause = self.table.read_force_cause(self.index)
            # A VM that failed to start stays off, said so; one whose guest shut down for a graceful
            # restart stays on and boots again.
            if old != new or cause in (ForceCause.VM_FAILED, ForceCause.VM_REBOOT):
                self._event(old, new, cause.label)
            self.table.write_applied(self.index, seq)
        if not self.fault_bits() & FaultBit.FLAP:
            self.next_flap = None
            return
        if self.next_flap is None:
            self.next_flap = now + self.table.read_faults(self.index).flap_period
        elif now >= self.next_flap:
            power, _, _ = self.table.read_raw_power(self.index)
            old = PowerState.ON if power else PowerState.OFF
            self._change(old, PowerState.OFF if power else PowerState.ON, "flap")
            self.next_flap = now + self.table.read_faults(self.index).flap_period

    # --- boot device ------------------------------------------------------------
    def get_system_boot_options(self, request: dict, session: SimServerSession) -> None:
        """Get System Boot Options; parameter 5 reports all three flags."""
        param = request["data"][0] & 0x7F if request["data"] else 0xFF
        if param == 5:
            selector, flags = self.table.read_boot(self.index)
            data1 = data2 = 0
            if flags & BOOT_VALID:
                data1 = 0x80 | (0x40 if flags & BOOT_PERSISTENT else 0) | (0x20 if flags & BOOT_UEFI else 0)
                data2 = (selector & 0xF) << 2
            session.send_ipmi_response(data=[1, 5, data1, data2, 0, 0, 0])
        elif param in (0, 3):  # set-in-progress, service partition scan
            session.send_ipmi_response(data=[1, param, 0])
        elif param == 4:  # boot info acknowledge
            session.send_ipmi_response(data=[1, 4, 0, 0])
        else:
            session.send_ipmi_response(code=CC_PARAM_UNSUPPORTED)

    def set_system_boot_options(self, request: dict, session: SimServerSession) -> None:
        """Set System Boot Options; parameter 5 stores valid/persistent/UEFI + device."""
        data = request["data"]
        param = data[0] & 0x7F if data else 0xFF
        if param in (0, 3, 4):
            session.send_ipmi_response()  # bookkeeping parameters: accept
            return
        if param != 5:
            session.send_ipmi_response(code=CC_PARAM_UNSUPPORTED)
            return
        if len(data) < 3:
            session.send_ipmi_response(code=CC_BAD_LENGTH)
            return
        selector = (data[2] >> 2) & 0xF
        if selector not in SELECTOR_BOOT:
            session.send_ipmi_response(code=CC_INVALID_DATA)
            return
        flags = 0
        if data[1] & 0x80 and selector:
            flags = BOOT_VALID | (BOOT_PERSISTENT if data[1] & 0x40 else 0)
        if data[1] & 0x20:
            flags |= BOOT_UEFI
        self.table.write_boot(self.index, selector if flags & BOOT_VALID else 0, flags)
        session.send_ipmi_response()
