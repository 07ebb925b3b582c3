"""One simulated BMC's Redfish service: the resource tree and what each request does.

This module is the protocol; :mod:`.redfish_server` carries it over HTTP(S)
and adds the network faults.  Each BMC is a whole Redfish service of its
own (its own port, as a real BMC is its own host), with one system,
``/redfish/v1/Systems/<bmc name>``, and:

* ``ServiceRoot``, the OData service document and ``$metadata``;
* ``SessionService`` and its ``Sessions``: ``POST`` with ``UserName`` and
  ``Password`` creates a session (``X-Auth-Token`` and ``Location``
  headers), ``DELETE`` ends it; HTTP Basic authentication works too;
* the ``ComputerSystem``: ``PowerState``, ``Boot`` (override target,
  enabled, mode, with ``@Redfish.AllowableValues``; ``PATCH`` sets them),
  the ``#ComputerSystem.Reset`` action with its allowable ``ResetType``
  values, ``ProcessorSummary``, ``MemorySummary``, and the ``Processors``,
  ``Memory``, ``SimpleStorage``, ``Storage`` (its ``Drives`` live in the chassis) and
  ``EthernetInterfaces`` collections, built from the same hardware the
  simulated agent reports (:func:`conductor.bmcsim.agent.inventory`: the
  same MACs, CPUs, memory and disks);
* a ``Manager`` with a ``VirtualMedia`` collection (one CD drive whose
  ``InsertMedia``/``EjectMedia`` actions record the image; the server
  fetches it first, and for a VM BMC hands it to the VM manager, which
  attaches it to the machine's CD-ROM: :mod:`.redfish_server`) and a ``Chassis``.

Power and boot device are the machine's record in the fleet's state table,
shared with IPMI: a BMC can be driven by either protocol.  The shard that
serves the BMC's IPMI stays the one that completes power transitions (and
tells the fleet's hooks, consumes one-time boot overrides).  This process
only starts them, under one rule: it never writes a record whose pending
transition is due, or due within :data:`SETTLE_MARGIN` (the shard may be
completing it at that very moment); such a command waits in
:attr:`Machine.queued` until the shard is done (a few tens of ms), and the
``Reset`` is answered at once.  What remains unguarded is a command racing
a drift or flap the control process injects, or an IPMI command to the
same BMC in the same microsecond; drive a BMC by one protocol at a time.

A BMC with a QEMU machine behind it (the VM backend) reads "on" only once
its shard has written it (QEMU runs).  Its ``GracefulShutdown`` and
``GracefulRestart`` are ACPI requests to the guest: this process writes
them as directives (``SOFT``, ``SOFT_RESTART``) and the shard passes them on
to the VM manager as it does IPMI's soft power off (the power button; "off"
once the guest has powered off, or for a restart a new boot).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from conductor.bmcsim.agent import inventory as hardware_of
from conductor.bmcsim.redfish_state import RedfishTable
from conductor.bmcsim.state import (
    BOOT_PERSISTENT,
    BOOT_SELECTOR,
    BOOT_UEFI,
    BOOT_VALID,
    BootDevice,
    Directive,
    FaultBit,
    StateTable,
)

#: A pending power transition due within this many seconds belongs to its shard.
SETTLE_MARGIN = 0.1
#: Most sessions one BMC keeps (the oldest goes first, as on many BMCs).
MAX_SESSIONS = 64
SESSION_TIMEOUT = 1800  # seconds, as advertised by the SessionService
ROOT = "/redfish/v1"
C_REQUESTS, C_SESSIONS = range(2)

#: Resource types (schema versions published in DMTF's DSP8010).
TYPES = {
    "ServiceRoot": "#ServiceRoot.v1_15_0.ServiceRoot",
    "SessionService": "#SessionService.v1_1_8.SessionService",
    "Session": "#Session.v1_5_0.Session",
    "ComputerSystem": "#ComputerSystem.v1_20_0.ComputerSystem",
    "Processor": "#Processor.v1_18_0.Processor",
    "Memory": "#Memory.v1_17_0.Memory",
    "SimpleStorage": "#SimpleStorage.v1_3_0.SimpleStorage",
    "Storage": "#Storage.v1_15_0.Storage",
    "Drive": "#Drive.v1_17_0.Drive",
    "EthernetInterface": "#EthernetInterface.v1_9_0.EthernetInterface",
    "Manager": "#Manager.v1_18_0.Manager",
    "VirtualMedia": "#VirtualMedia.v1_6_0.VirtualMedia",
    "Chassis": "#Chassis.v1_23_0.Chassis",
}

#: Redfish boot override targets <-> the state table's boot devices.
BOOT_TARGETS: dict[str, BootDevice] = {
    "None": BootDevice.DEFAULT,
    "Pxe": BootDevice.PXE,
    "Hdd": BootDevice.DISK,
    "Cd": BootDevice.CDROM,
    "BiosSetup": BootDevice.BIOS,
    "Floppy": BootDevice.FLOPPY,
}
TARGET_OF = {device: target for target, device in BOOT_TARGETS.items()}
BOOT_ENABLED = ("Disabled", "Once", "Continuous")
BOOT_MODES = ("UEFI", "Legacy")
#: ``ResetType`` -> what the machine does; ``PushPowerButton`` depends on the power state.
RESET_TYPES: dict[str, Directive | None] = {
    "On": Directive.ON,
    "ForceOff": Directive.OFF,
    "GracefulShutdown": Directive.SOFT,
    "ForceRestart": Directive.RESET,
    "GracefulRestart": Directive.RESET,
    "ForceOn": Directive.ON,
    "PushPowerButton": None,
    "Nmi": None,
}


@dataclasses.dataclass
class Response:
    """What to answer: status, JSON (or text) body, extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def payload(self) -> bytes:
        """The body as bytes."""
        if self.body is None:
            return b""
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body, separators=(",", ":")).encode()


def error(status: int, message_id: str, message: str, **extra: Any) -> Response:
    """A Redfish error response (``error`` with ``@Message.ExtendedInfo``)."""
    info = {"@odata.type": "#Message.v1_1_1.Message", "MessageId": f"Base.1.8.{message_id}",
            "Message": message, "Severity": "Critical" if status >= 500 else "Warning",
            "MessageSeverity": "Critical" if status >= 500 else "Warning",
            "Resolution": extra.pop("resolution", "None.")}
    body = {"error": {"code": f"Base.1.8.{'GeneralError' if status >= 500 else message_id}",
                      "message": message, "@Message.ExtendedInfo": [info]}}
    return Response(status, body, extra.pop("headers", {}))


class Machine:
    """One BMC's record in the state table, as the Redfish process may touch it (see the module docstring)."""

    def __init__(self, table: StateTable, index: int, vm: bool = False) -> None:
        self.table = table
        self.index = index
        #: A QEMU machine is behind the BMC: it is on only once the shard says so (QEMU runs).
        self.vm = vm
        #: A power command waiting for the shard to complete a due transition.
        self.queued: Directive | None = None

    def power_state(self) -> str:
        """``On`` or ``Off`` (a due transition counts as done, except a VM's power on: QEMU must run first)."""
        if self.vm:
            return "On" if self.table.read_raw_power(self.index)[0] else "Off"
        return "On" if self.table.read(self.index).power == "on" else "Off"

    def busy(self, now: float) -> bool:
        """Whether a pending transition is due (or nearly): the shard's to complete, not ours to touch."""
        _, pending, deadline = self.table.read_raw_power(self.index)
        return bool(pending) and now >= deadline - SETTLE_MARGIN

    def command(self, directive: Directive, now: float) -> None:
        """Start a power transition (or queue it; see :meth:`apply`).  A later command supersedes it."""
        self.queued = directive
        self.apply(now)

    def apply(self, now: float) -> bool:
        """Write the queued command unless a transition is due; True once nothing is queued.

        The same rules as the IPMI side (:meth:`conductor.bmcsim.bmc.SimBmc._command`):
        a stuck BMC accepts and ignores; a command that changes nothing
        cancels a pending transition; otherwise the transition completes
        ``delay`` seconds from now (done by the shard).
        """
        directive = self.queued
        if directive is None:
            return True
        if self.busy(now):
            return False
        self.queued = None
        bits = self.table.read_fault_bits(self.index)
        if bits & FaultBit.STUCK:
            return True
        if directive in (Directive.SOFT, Directive.SOFT_RESTART) and bits & FaultBit.IGNORE_ACPI:
            return True
        power, _, _ = self.table.read_raw_power(self.index)
        if directive in (Directive.OFF, Directive.SOFT, Directive.RESET, Directive.SOFT_RESTART) and not power:
            self.table.write_power(self.index, 0, Directive.NONE, 0.0)
        elif directive == Directive.ON and power:
            self.table.write_power(self.index, 1, Directive.NONE, 0.0)
        else:
            self.table.write_power(self.index, power, directive, now + self.table.read_delay(self.index))
        return True

    def boot(self) -> dict[str, Any]:
        """The ``Boot`` override as Redfish shows it."""
        state = self.table.read(self.index)
        _, flags = self.table.read_boot(self.index)
        valid = bool(flags & BOOT_VALID) and state.boot_device != BootDevice.DEFAULT
        return {
            "BootSourceOverrideTarget": TARGET_OF.get(state.boot_device, "None") if valid else "None",
            "BootSourceOverrideEnabled": ("Continuous" if flags & BOOT_PERSISTENT else "Once") if valid
            else "Disabled",
            "BootSourceOverrideMode": "UEFI" if flags & BOOT_UEFI else "Legacy",
        }

    def set_boot(self, target: str, enabled: str, mode: str) -> None:
        """Write a boot override (the caller made sure no transition is due: :meth:`busy`)."""
        flags = BOOT_UEFI if mode == "UEFI" else 0
        device = BOOT_TARGETS[target]
        if enabled == "Disabled" or device == BootDevice.DEFAULT:
            self.table.write_boot(self.index, 0, flags)
            return
        flags |= BOOT_VALID | (BOOT_PERSISTENT if enabled == "Continuous" else 0)
        self.table.write_boot(self.index, BOOT_SELECTOR[device], flags)


class RedfishBMC:
    """The Redfish service of one simulated BMC.

    :param spec: ``{"index", "name", "username", "password", "uuid"}`` and
        optionally ``"mac"`` (the NIC of a VM behind the BMC) and
        ``"media_file"`` (where an inserted image goes for that VM's CD-ROM).
    """

    def __init__(self, spec: dict[str, Any], table: StateTable, rftable: RedfishTable) -> None:
        self.index: int = spec["index"]
        self.name: str = spec["name"]
        self.username: str = spec["username"]
        self._password: str = spec["password"]
        self.uuid: str = spec["uuid"]
        self.machine = Machine(table, self.index, vm=bool(spec.get("vm")))
        self.table = table
        self.rftable = rftable
        self.hardware = hardware_of(self.index)
        if spec.get("mac"):
            self.hardware["nics"] = [{"name": "eth0", "mac": spec["mac"]}]
        #: token -> session id (insertion order: oldest first)
        self.sessions: dict[str, str] = {}
        self._session_users: dict[str, str] = {}
        self._epoch = rftable.session_epoch(self.index)
        self._next_session = 1
        self.media: dict[str, Any] = {"Image": None, "Inserted": False, "WriteProtected": True}
        #: A VM BMC's local copy of the inserted image (the machine's CD-ROM reads it); None: no VM.
        self.media_file: str | None = spec.get("media_file")
        self.system = f"{ROOT}/Systems/{self.name}"
        self.manager = f"{ROOT}/Managers/{self.name}-bmc"
        self.chassis = f"{ROOT}/Chassis/{self.name}"
        self._routes: list[tuple[str, Callable[..., Response]]] = []

    # --- entry point --------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        """Answer one request (``headers`` with lower-case names)."""
        self.rftable.bump(self.index, C_REQUESTS)
        path = target.split("?", 1)[0].split("#", 1)[0]
        if path != "/" and path.endswith("/"):
            path = path.rstrip("/")
        if path in ("/redfish", ""):
            return self._only(method, "GET") or Response(200, {"v1": f"{ROOT}/"})
        if not path.startswith(ROOT):
            return error(404, "ResourceNotFound", f"The resource at {path} was not found.")
        public = {ROOT: self._service_root, f"{ROOT}/odata": self._odata, f"{ROOT}/$metadata": self._metadata}
        if path in public:
            return self._only(method, "GET") or public[path]()
        if path == f"{ROOT}/SessionService/Sessions" and method == "POST":
            return self._login(body)
        user = self._authenticated(headers)
        if user is None:
            return error(401, "NoValidSession", "No valid session or credentials were given.",
                         headers={"WWW-Authenticate": 'Basic realm="bmcsim"'})
        return self._dispatch(method, path, headers, body)

    def expire_if_asked(self) -> None:
        """Drop every session if the control process bumped the epoch."""
        epoch = self.rftable.session_epoch(self.index)
        if epoch != self._epoch:
            self._epoch = epoch
            self.sessions.clear()
            self._session_users.clear()

    # --- authentication -------------------------------------------------------------------------
    def _rejecting(self) -> bool:
        return bool(self.table.read_fault_bits(self.index) & FaultBit.REJECT_PASSWORD)

    def _valid(self, username: Any, password: Any) -> bool:
        # compare_digest: no timing oracle on the password
        return (not self._rejecting() and isinstance(username, str) and isinstance(password, str)
                and secrets.compare_digest(username.encode(), self.username.encode())
                and secrets.compare_digest(password.encode(), self._password.encode()))

    def _authenticated(self, headers: dict[str, str]) -> str | None:
        self.expire_if_asked()
        token = headers.get("x-auth-token")
        if token:
            if token in self.sessions and not self._rejecting():
                return self._session_users.get(token, self.username)
            return None
        authorization = headers.get("authorization", "")
        if authorization[:6].lower() == "basic ":
            try:
                username, _, password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return username if self._valid(username, password) else None
        return None

    def _login(self, body: bytes) -> Response:
        self.expire_if_asked()
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return error(400, "MalformedJSON", "The request body is not valid JSON.")
        if not isinstance(data, dict) or "UserName" not in data or "Password" not in data:
            return error(400, "PropertyMissing", "UserName and Password are required to create a session.")
        if not self._valid(data["UserName"], data["Password"]):
            # Never echo what was sent.
            return error(401, "ResourceAtUriUnauthorized", "Invalid user name or password.")
        while len(self.sessions) >= MAX_SESSIONS:
            oldest = next(iter(self.sessions))
            del self.sessions[oldest]
            self._session_users.pop(oldest, None)
        token = secrets.token_hex(16)
        session_id = str(self._next_session)
        self._next_session += 1
        self.sessions[token] = session_id
        self._session_users[token] = data["UserName"]
        self.rftable.bump(self.index, C_SESSIONS)
        location = f"{ROOT}/SessionService/Sessions/{session_id}"
        return Response(201, self._session(session_id, data["UserName"]),
                        {"X-Auth-Token": token, "Location": location})

    # --- routing ------------------------------------------------------------------------------------
    def _dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        system, manager = self.system, self.manager
        gets: dict[str, Callable[[], Response]] = {
            f"{ROOT}/SessionService": self._session_service,
            f"{ROOT}/SessionService/Sessions": self._sessions,
            f"{ROOT}/Systems": lambda: self._collection(f"{ROOT}/Systems", "ComputerSystemCollection",
                                                        "Computer Systems", [system]),
            system: self._system,
            f"{system}/Processors": lambda: self._collection(
                f"{system}/Processors", "ProcessorCollection", "Processors",
                [f"{system}/Processors/CPU{i}" for i in range(self._sockets())]),
            f"{system}/Memory": lambda: self._collection(
                f"{system}/Memory", "MemoryCollection", "Memory",
                [f"{system}/Memory/DIMM{i}" for i in range(len(self._dimms()))]),
            f"{system}/SimpleStorage": lambda: self._collection(
                f"{system}/SimpleStorage", "SimpleStorageCollection", "Simple Storage", [f"{system}/SimpleStorage/1"]),
            f"{system}/SimpleStorage/1": self._simple_storage,
            f"{system}/Storage": lambda: self._collection(f"{system}/Storage", "StorageCollection", "Storage",
                                                          [f"{system}/Storage/1"]),
            f"{system}/Storage/1": self._storage,
            f"{system}/EthernetInterfaces": lambda: self._collection(
                f"{system}/EthernetInterfaces", "EthernetInterfaceCollection", "Ethernet Interfaces",
                [f"{system}/EthernetInterfaces/{nic['name']}" for nic in self.hardware["nics"]]),
            f"{ROOT}/Managers": lambda: self._collection(f"{ROOT}/Managers", "ManagerCollection", "Managers",
                                                         [manager]),
            manager: self._manager,
            f"{manager}/VirtualMedia": lambda: self._collection(
                f"{manager}/VirtualMedia", "VirtualMediaCollection", "Virtual Media", [f"{manager}/VirtualMedia/Cd"]),
            f"{manager}/VirtualMedia/Cd": self._virtual_media,
            f"{ROOT}/Chassis": lambda: self._collection(f"{ROOT}/Chassis", "ChassisCollection", "Chassis",
                                                        [self.chassis]),
            self.chassis: self._chassis,
            f"{self.chassis}/Drives": lambda: self._collection(
                f"{self.chassis}/Drives", "DriveCollection", "Drives",
                [f"{self.chassis}/Drives/{i}" for i in range(len(self.hardware["disks"]))]),
        }
        posts: dict[str, Callable[[Any], Response]] = {
            f"{system}/Actions/ComputerSystem.Reset": self._reset,
            f"{manager}/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia": self._insert_media,
            f"{manager}/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia": self._eject_media,
        }
        parent, _, leaf = path.rpartition("/")
        if path in gets or (parent in self._members() and leaf in self._members()[parent]):
            if method == "PATCH" and path == system:
                return self._patch_system(body)
            if path.startswith(f"{ROOT}/SessionService/Sessions/") and method == "DELETE":
                return self._logout(leaf)
            allowed = "GET, PATCH" if path == system else "GET, DELETE" if parent.endswith("/Sessions") else "GET"
            if method not in ("GET", "HEAD"):
                return error(405, "OperationNotAllowed", f"{method} is not allowed on {path}.",
                             headers={"Allow": allowed})
            found = gets[path]() if path in gets else self._members()[parent][leaf]()
            found.headers.setdefault("Allow", allowed)
            return found
        if path in posts:
            if method != "POST":
                return error(405, "OperationNotAllowed", f"{method} is not allowed on {path}.",
                             headers={"Allow": "POST"})
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                return error(400, "MalformedJSON", "The request body is not valid JSON.")
            if not isinstance(data, dict):
                return error(400, "MalformedJSON", "The request body must be a JSON object.")
            return posts[path](data)
        return error(404, "ResourceNotFound", f"The resource at {path} was not found.")

    def _members(self) -> dict[str, dict[str, Callable[[], Response]]]:
        """Collection path -> member id -> builder, for the members with ids."""
        system = self.system
        return {
            f"{ROOT}/SessionService/Sessions": {sid: functools.partial(self._session_response, sid)
                                                for sid in self.sessions.values()},
            f"{system}/Processors": {f"CPU{i}": functools.partial(self._processor, i) for i in range(self._sockets())},
            f"{system}/Memory": {f"DIMM{i}": functools.partial(self._dimm, i) for i in range(len(self._dimms()))},
            f"{system}/EthernetInterfaces": {nic["name"]: functools.partial(self._nic, nic)
                                             for nic in self.hardware["nics"]},
            f"{self.chassis}/Drives": {str(i): functools.partial(self._drive, i)
                                           for i in range(len(self.hardware["disks"]))},
        }

    @staticmethod
    def _only(method: str, allowed: str) -> Response | None:
        if method in (allowed, "HEAD"):
            return None
        return error(405, "OperationNotAllowed", f"{method} is not allowed here.", headers={"Allow": allowed})

    # --- resources ---------------------------------------------------------------------------------
    @staticmethod
    def _resource(path: str, kind: str, ident: str, name: str, **fields: Any) -> dict[str, Any]:
        return {"@odata.id": path, "@odata.type": TYPES[kind], "Id": ident, "Name": name, **fields}

    @staticmethod
    def _collection(path: str, kind: str, name: str, members: list[str]) -> Response:
        return Response(200, {"@odata.id": path, "@odata.type": f"#{kind}.{kind}", "Name": name,
                              "Members@odata.count": len(members),
                              "Members": [{"@odata.id": member} for member in members]})

    def _service_root(self) -> Response:
        return Response(200, self._resource(
            f"{ROOT}/", "ServiceRoot", "RootService", "Root Service", RedfishVersion="1.11.0",
            UUID=self.uuid, Product="conductor bmcsim", Vendor="conductor",
            ProtocolFeaturesSupported={"ExpandQuery": {"ExpandAll": False}, "FilterQuery": False,
                                       "SelectQuery": False, "OnlyMemberQuery": False},
            Systems={"@odata.id": f"{ROOT}/Systems"}, Chassis={"@odata.id": f"{ROOT}/Chassis"},
            Managers={"@odata.id": f"{ROOT}/Managers"},
            SessionService={"@odata.id": f"{ROOT}/SessionService"},
            Links={"Sessions": {"@odata.id": f"{ROOT}/SessionService/Sessions"}}))

    @staticmethod
    def _odata() -> Response:
        names = ("Systems", "Chassis", "Managers", "SessionService")
        return Response(200, {
            "@odata.context": f"{ROOT}/$metadata",
            "value": [{"name": "Service", "kind": "Singleton", "url": f"{ROOT}/"}]
            + [{"name": name, "kind": "Singleton", "url": f"{ROOT}/{name}"} for name in names]})

    @staticmethod
    def _metadata() -> Response:
        namespaces = sorted({t.split(".")[0].lstrip("#") for t in TYPES.values()}
                            | {"ComputerSystemCollection", "ProcessorCollection", "MemoryCollection",
                               "SimpleStorageCollection", "StorageCollection", "EthernetInterfaceCollection",
                               "ManagerCollection", "VirtualMediaCollection", "ChassisCollection",
                               "SessionCollection", "DriveCollection"})
        refs = "".join(
            f'<edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/{ns}_v1.xml">'
            f'<edmx:Include Namespace="{ns}"/>'
            + "".join(f'<edmx:Include Namespace="{t.lstrip("#").rsplit(".", 1)[0]}"/>'
                      for t in TYPES.values() if t.lstrip("#").split(".")[0] == ns)
            + "</edmx:Reference>"
            for ns in namespaces)
        xml = ('<?xml version="1.0" encoding="UTF-8"?>'
               '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">'
               f'{refs}<edmx:DataServices><Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" '
               'Namespace="Service"><EntityContainer Name="Service" Extends="ServiceRoot.v1_15_0.ServiceContainer"/>'
               '</Schema></edmx:DataServices></edmx:Edmx>')
        return Response(200, xml, {"Content-Type": "application/xml"})

    def _session_service(self) -> Response:
        return Response(200, self._resource(
            f"{ROOT}/SessionService", "SessionService", "SessionService", "Session Service",
            ServiceEnabled=True, SessionTimeout=SESSION_TIMEOUT, Status={"State": "Enabled", "Health": "OK"},
            Sessions={"@odata.id": f"{ROOT}/SessionService/Sessions"}))

    def _sessions(self) -> Response:
        return self._collection(f"{ROOT}/SessionService/Sessions", "SessionCollection", "Sessions",
                                [f"{ROOT}/SessionService/Sessions/{sid}" for sid in self.sessions.values()])

    def _user_of(self, session_id: str) -> str:
        for token, sid in self.sessions.items():
            if sid == session_id:
                return self._session_users.get(token, self.username)
        return self.username

    def _session_response(self, session_id: str) -> Response:
        return Response(200, self._session(session_id, self._user_of(session_id)))

    def _session(self, session_id: str, user: str) -> dict[str, Any]:
        return self._resource(f"{ROOT}/SessionService/Sessions/{session_id}", "Session", session_id,
                              f"Session {session_id}", UserName=user, SessionType="Redfish")

    def _logout(self, session_id: str) -> Response:
        for token, sid in list(self.sessions.items()):
            if sid == session_id:
                del self.sessions[token]
                self._session_users.pop(token, None)
                return Response(204)
        return error(404, "ResourceNotFound", f"No session {session_id}.")

    def _sockets(self) -> int:
        return 2 if self.hardware["cpus"] >= 16 else 1

    def _dimms(self) -> list[int]:
        """Sizes (MiB) of the memory modules: four equal ones."""
        return [self.hardware["memory_mb"] // 4] * 4

    def _system(self) -> Response:
        hw, system = self.hardware, self.system
        resets = list(RESET_TYPES)
        boot = {**self.machine.boot(),
                "BootSourceOverrideTarget@Redfish.AllowableValues": list(BOOT_TARGETS),
                "BootSourceOverrideMode@Redfish.AllowableValues": list(BOOT_MODES)}
        return Response(200, self._resource(
            system, "ComputerSystem", self.name, f"Simulated machine {self.name}", SystemType="Physical",
            Manufacturer="conductor", Model="bmcsim", SerialNumber=f"SIM{self.index:06d}", UUID=self.uuid,
            PowerState=self.machine.power_state(), Boot=boot,
            ProcessorSummary={"Count": self._sockets(), "LogicalProcessorCount": hw["cpus"],
                              "Model": "Simulated x86-64 CPU"},
            MemorySummary={"TotalSystemMemoryGiB": hw["memory_mb"] / 1024},
            Status={"State": "Enabled", "Health": "OK"},
            Processors={"@odata.id": f"{system}/Processors"}, Memory={"@odata.id": f"{system}/Memory"},
            SimpleStorage={"@odata.id": f"{system}/SimpleStorage"}, Storage={"@odata.id": f"{system}/Storage"},
            EthernetInterfaces={"@odata.id": f"{system}/EthernetInterfaces"},
            Links={"Chassis": [{"@odata.id": self.chassis}], "ManagedBy": [{"@odata.id": self.manager}]},
            Actions={"#ComputerSystem.Reset": {"target": f"{system}/Actions/ComputerSystem.Reset",
                                               "ResetType@Redfish.AllowableValues": resets}}))

    def _processor(self, i: int) -> Response:
        threads = self.hardware["cpus"] // self._sockets()
        return Response(200, self._resource(
            f"{self.system}/Processors/CPU{i}", "Processor", f"CPU{i}", f"Processor {i}", Socket=f"CPU {i}",
            ProcessorType="CPU", ProcessorArchitecture="x86", InstructionSet="x86-64", Manufacturer="conductor",
            Model="Simulated x86-64 CPU", MaxSpeedMHz=3000, TotalCores=max(1, threads // 2), TotalThreads=threads,
            Status={"State": "Enabled", "Health": "OK"}))

    def _dimm(self, i: int) -> Response:
        return Response(200, self._resource(
            f"{self.system}/Memory/DIMM{i}", "Memory", f"DIMM{i}", f"DIMM {i}", CapacityMiB=self._dimms()[i],
            MemoryDeviceType="DDR4", MemoryType="DRAM", OperatingSpeedMhz=3200,
            Status={"State": "Enabled", "Health": "OK"}))

    def _simple_storage(self) -> Response:
        devices = [{"Name": disk["name"], "Model": "bmcsim disk", "CapacityBytes": disk["size_gb"] * 10**9,
                    "Status": {"State": "Enabled", "Health": "OK"}} for disk in self.hardware["disks"]]
        return Response(200, self._resource(f"{self.system}/SimpleStorage/1", "SimpleStorage", "1",
                                            "Simple Storage Controller", Devices=devices,
                                            Status={"State": "Enabled", "Health": "OK"}))

    def _storage(self) -> Response:
        drives = [{"@odata.id": f"{self.chassis}/Drives/{i}"} for i in range(len(self.hardware["disks"]))]
        return Response(200, self._resource(f"{self.system}/Storage/1", "Storage", "1", "Storage", Drives=drives,
                                            **{"Drives@odata.count": len(drives)},
                                            Status={"State": "Enabled", "Health": "OK"}))

    def _drive(self, i: int) -> Response:
        disk = self.hardware["disks"][i]
        return Response(200, self._resource(
            f"{self.chassis}/Drives/{i}", "Drive", str(i), disk["name"], Model="bmcsim disk",
            SerialNumber=f"SIM{self.index:06d}D{i}", CapacityBytes=disk["size_gb"] * 10**9, MediaType="SSD",
            Protocol="SATA", Status={"State": "Enabled", "Health": "OK"}))

    def _nic(self, nic: dict[str, Any]) -> Response:
        return Response(200, self._resource(
            f"{self.system}/EthernetInterfaces/{nic['name']}", "EthernetInterface", nic["name"], nic["name"],
            MACAddress=nic["mac"].upper(), PermanentMACAddress=nic["mac"].upper(), LinkStatus="LinkUp",
            SpeedMbps=10000, InterfaceEnabled=True, Status={"State": "Enabled", "Health": "OK"}))

    def _manager(self) -> Response:
        return Response(200, self._resource(
            self.manager, "Manager", f"{self.name}-bmc", f"BMC of {self.name}", ManagerType="BMC",
            FirmwareVersion="bmcsim-1", UUID=self.uuid, Status={"State": "Enabled", "Health": "OK"},
            PowerState="On", VirtualMedia={"@odata.id": f"{self.manager}/VirtualMedia"},
            Links={"ManagerForServers": [{"@odata.id": self.system}],
                   "ManagerForChassis": [{"@odata.id": self.chassis}]}))

    def _virtual_media(self) -> Response:
        cd = f"{self.manager}/VirtualMedia/Cd"
        image = self.media["Image"]
        return Response(200, self._resource(
            cd, "VirtualMedia", "Cd", "Virtual CD", MediaTypes=["CD", "DVD"], Image=image,
            ImageName=image.rsplit("/", 1)[-1] if image else None, Inserted=self.media["Inserted"],
            WriteProtected=self.media["WriteProtected"],
            ConnectedVia="URI" if self.media["Inserted"] else "NotConnected",
            Actions={"#VirtualMedia.InsertMedia": {"target": f"{cd}/Actions/VirtualMedia.InsertMedia"},
                     "#VirtualMedia.EjectMedia": {"target": f"{cd}/Actions/VirtualMedia.EjectMedia"}}))

    def _chassis(self) -> Response:
        return Response(200, self._resource(
            self.chassis, "Chassis", self.name, f"Chassis of {self.name}", ChassisType="RackMount",
            Manufacturer="conductor", Model="bmcsim", PowerState=self.machine.power_state(),
            Status={"State": "Enabled", "Health": "OK"}, Drives={"@odata.id": f"{self.chassis}/Drives"},
            Links={"ComputerSystems": [{"@odata.id": self.system}], "ManagedBy": [{"@odata.id": self.manager}]}))

    # --- actions ----------------------------------------------------------------------------------------
    def _reset(self, data: dict[str, Any]) -> Response:
        reset = data.get("ResetType")
        if reset not in RESET_TYPES:
            return error(400, "ActionParameterValueNotInList",
                         f"The value {reset!r} of ResetType is not one of {', '.join(RESET_TYPES)}.")
        directive = RESET_TYPES[reset]
        if reset == "GracefulRestart" and self.machine.vm:
            directive = Directive.SOFT_RESTART  # the guest reboots itself (the shard passes it on)
        if reset == "PushPowerButton":
            directive = Directive.SOFT if self.machine.power_state() == "On" else Directive.ON
        if directive is not None:
            self.machine.command(directive, time.monotonic())
        return Response(204)

    def _patch_system(self, body: bytes) -> Response:
        """``PATCH`` of the system: only ``Boot`` may change (the server waited for :meth:`Machine.busy`)."""
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return error(400, "MalformedJSON", "The request body is not valid JSON.")
        if not isinstance(data, dict) or set(data) - {"Boot"} or not isinstance(data.get("Boot"), dict):
            return error(400, "PropertyNotWritable", "Only Boot can be changed on this system.")
        boot = data["Boot"]
        current = self.machine.boot()
        unknown = set(boot) - {"BootSourceOverrideTarget", "BootSourceOverrideEnabled", "BootSourceOverrideMode"}
        if unknown:
            return error(400, "PropertyUnknown", f"Unknown Boot properties: {', '.join(sorted(unknown))}.")
        for key, allowed in (("BootSourceOverrideTarget", tuple(BOOT_TARGETS)),
                             ("BootSourceOverrideEnabled", BOOT_ENABLED), ("BootSourceOverrideMode", BOOT_MODES)):
            if key in boot and boot[key] not in allowed:
                return error(400, "PropertyValueNotInList",
                             f"The value {boot[key]!r} of {key} is not one of {', '.join(allowed)}.")
        target = boot.get("BootSourceOverrideTarget", current["BootSourceOverrideTarget"])
        enabled = boot.get("BootSourceOverrideEnabled")
        if enabled is None:
            enabled = current["BootSourceOverrideEnabled"]
            if enabled == "Disabled" and "BootSourceOverrideTarget" in boot:
                enabled = "Once"
        self.machine.set_boot(target, enabled, boot.get("BootSourceOverrideMode", current["BootSourceOverrideMode"]))
        return Response(204)

    def _insert_media(self, data: dict[str, Any]) -> Response:
        image = data.get("Image")
        if not isinstance(image, str) or not image:
            return error(400, "PropertyMissing", "Image (the URI of the media) is required.")
        if self.media["Inserted"]:
            return error(409, "ResourceInUse", "Media is already inserted; eject it first.")
        self.media = {"Image": image, "Inserted": bool(data.get("Inserted", True)),
                      "WriteProtected": bool(data.get("WriteProtected", True))}
        return Response(204)

    def _eject_media(self, data: dict[str, Any]) -> Response:
        self.media = {"Image": None, "Inserted": False, "WriteProtected": True}
        return Response(204)
