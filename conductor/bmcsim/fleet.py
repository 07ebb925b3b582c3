"""A fleet of simulated BMCs, controlled from the current process.

``Fleet`` is the simulator's control process: it owns the state table,
starts one child process per shard of BMCs (see :mod:`.shard`), supervises
them (see :mod:`.supervisor`) and turns their events into calls of the
registered power hooks.  The control process never imports pyghmi, so a
test can drive the fleet with the pyghmi client in the same process.

Usage::

    with Fleet(count=10, delay=1.0) as fleet:
        fleet.on_power_change(lambda ev: print(ev.bmc, ev.old, "->", ev.new))
        fleet.set_fault("sim-0003", drop=0.3)
        ...

With ``vms=VmSpec(count=2)`` the fleet also has BMCs that drive real QEMU
machines (``vm-0000``...; see :mod:`.vmmanager` and docs/vm.md)::

    with Fleet(0, vms=VmSpec(count=2, directory=tmp)) as fleet:
        fleet.vm("vm-0000")["disk"]     # its disk file, console log, pid...

For a fleet in another process, see :class:`conductor.bmcsim.control.RemoteFleet`.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from conductor.bmcsim.events import EventHub, PowerEvent, PowerHook
from conductor.bmcsim.inventory import BMCSpec, inventory_document, write_document
from conductor.bmcsim.redfish_service import RedfishError, RedfishService
from conductor.bmcsim.redfish_state import FAULT_NAMES as REDFISH_FAULT_NAMES
from conductor.bmcsim.state import FAULT_NAMES, Faults, ForceCause, PowerState, StateTable
from conductor.bmcsim.supervisor import Restart, ShardProcess, wedge_reason
from conductor.bmcsim.vm import VmError, VmSpec, vm_mac

if TYPE_CHECKING:
    from conductor.bmcsim.vmmanager import VmManager

LOG = logging.getLogger(__name__)

BMCS_PER_SHARD = 250  # measured: keeps a shard's loop well under 1 ms per packet
EVENT_HISTORY = 10_000


class FleetError(RuntimeError):
    """The fleet could not start, or a BMC name is unknown."""


class Fleet:
    """N simulated BMCs on ``host``, UDP ports ``base_port .. base_port+N-1``.

    :param count: number of in-memory BMCs (default 1, or 0 with ``vms``).
    :param vms: VM BMCs besides those: each drives a QEMU machine; they
        come after the others (indices and ports), named ``vms.name_prefix``
        + a number.
    :param base_port: first UDP port; None picks a free range.
    :param delay: seconds a power transition takes.
    :param password_mode: ``same`` (every BMC uses ``password``) or
        ``per-bmc`` (a random password each, see :meth:`inventory`).
    :param shards: child processes; None = one per 250 BMCs.
    :param initial_power: power state of every BMC at start.
    :param probe_interval: seconds between watchdog probes of a shard.
    :param probe_failures: missed probes in a row before a restart.
    :param stderr: where shard processes log (default: inherited).
    :param redfish_port: also serve Redfish (see :mod:`.redfish_service`):
        BMC ``i`` on TCP port ``redfish_port + i``; 0 picks free ports;
        None (the default): IPMI only.
    :param redfish_tls: HTTPS with a self-signed certificate (else HTTP).
    """

    def __init__(self, count: int | None = None, *, vms: VmSpec | None = None, base_port: int | None = None,
                 host: str = "127.0.0.1",
                 delay: float = 0.0, username: str = "admin", password: str = "password",
                 password_mode: str = "same", shards: int | None = None, name_prefix: str = "sim-",
                 initial_power: str = "off", probe_interval: float = 1.0, probe_timeout: float = 1.0,
                 probe_failures: int = 3, start_timeout: float = 30.0,
                 stderr: IO[bytes] | int | None = None, redfish_port: int | None = None,
                 redfish_tls: bool = True) -> None:
        if count is None:
            count = 0 if vms else 1
        vm_count = vms.count if vms else 0
        if count < 0 or count + vm_count < 1:
            raise ValueError("a fleet needs at least one BMC")
        plain, count = count, count + vm_count
        if password_mode not in ("same", "per-bmc"):
            raise ValueError("password_mode must be 'same' or 'per-bmc'")
        self.host = host
        self.count = count
        self.delay = delay
        self.initial_power = PowerState(initial_power)
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.probe_failures = probe_failures
        self.start_timeout = start_timeout
        self._stderr = stderr
        self.base_port = base_port if base_port is not None else find_free_ports(count, host)
        nshards = shards or max(1, math.ceil(count / BMCS_PER_SHARD))
        self.shard_count = min(nshards, count)
        self.bmcs: list[BMCSpec] = []
        for i in range(count):
            name = f"{name_prefix}{i:04d}" if i < plain else f"{vms.name_prefix if vms else ''}{i - plain:04d}"
            self.bmcs.append(BMCSpec(
                name=name, index=i, host=host, port=self.base_port + i, username=username,
                password=password if password_mode == "same" else secrets.token_urlsafe(12),
                shard=i * self.shard_count // count, vm=i >= plain, mac=vm_mac(name) if i >= plain else None))
        self._by_name = {bmc.name: bmc for bmc in self.bmcs}
        if len(self._by_name) < count:
            raise ValueError("BMC names clash: give the VMs another name_prefix")
        macs = [bmc.mac for bmc in self.bmcs if bmc.mac]
        if len(set(macs)) < len(macs):
            raise ValueError("two VM names hash to one MAC: change the VMs' name_prefix")
        self.vm_spec = vms
        self._vms: VmManager | None = None
        self._force_lock = threading.Lock()
        self._hub = EventHub([bmc.name for bmc in self.bmcs], EVENT_HISTORY)
        self._table: StateTable | None = None
        self._shards: list[ShardProcess] = []
        self._watchdog_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.restarts: list[Restart] = []
        self.started_in: float | None = None
        self.redfish_port = redfish_port
        self.redfish_tls = redfish_tls
        #: The Redfish front end (None: IPMI only).
        self.redfish: RedfishService | None = None

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> Fleet:
        """Start every shard and wait until each serves its BMCs.

        :raises FleetError: a shard failed to start (e.g. a port is taken).
        """
        began = time.monotonic()
        self._table = StateTable.create(self.count, self.shard_count, self.delay)
        for bmc in self.bmcs:
            self._table.init_power(bmc.index, self.initial_power)
        if self.vm_spec is not None:
            # Only a fleet with VMs loads the code that runs them (threads,
            # QMP, ctypes for the parent-death signal): shards and plain
            # fleets stay as lean as before.
            from conductor.bmcsim.vmmanager import VmManager

            vms = VmManager(self.vm_spec, self.bmcs, self.force_power, self._ack_media)
            try:
                vms.start(powered_on=[b.name for b in self.bmcs if b.vm and self.initial_power == PowerState.ON])
            except OSError as exc:
                vms.stop()
                self.stop()
                raise FleetError(f"cannot prepare the VMs: {exc}") from None
            self._vms = vms
            self._hub.add_hook(vms.on_power)
            self._hub.add_media_hook(vms.on_media)
        for shard_id in range(self.shard_count):
            specs = [bmc.shard_config() for bmc in self.bmcs if bmc.shard == shard_id]
            self._shards.append(ShardProcess(shard_id, specs, self.host, self._table, self._stderr))
        self._hub.start()
        try:
            for shard in self._shards:
                self._hub.add_pipe(shard.spawn(), shard)
            self._wait_ready(self._shards)
            if self.redfish_port is not None:
                # A VM BMC's virtual media reaches its machine: the Redfish process keeps the image
                # in the VM's directory and tells the VM manager through an event pipe of its own.
                media = {name: self._vms.media_file(name) for name in self._vms.names} if self._vms else {}
                self.redfish = RedfishService(self.bmcs, self.host, self._table, port=self.redfish_port,
                                              tls=self.redfish_tls, stderr=self._stderr, media_files=media)
                self.redfish.start(preferred_base=self.base_port)
                if self.redfish.event_fd is not None:
                    self._hub.add_pipe(self.redfish.event_fd, self.redfish)
        except RedfishError as exc:
            self.stop()
            raise FleetError(f"Redfish: {exc}") from None
        except BaseException:
            self.stop()
            raise
        self._watchdog_thread = threading.Thread(target=self._watchdog, name="bmcsim-watchdog",
                                                 daemon=True)
        self._watchdog_thread.start()
        self.started_in = time.monotonic() - began
        LOG.info("fleet of %d BMCs on %s:%d-%d started in %.2f s (%d shards)", self.count, self.host,
                 self.base_port, self.base_port + self.count - 1, self.started_in, self.shard_count)
        return self

    def stop(self) -> None:
        """Stop every shard process and thread; safe to call twice."""
        self._stopping.set()
        if self._watchdog_thread is not None:
            self._watchdog_thread.join(10)
            self._watchdog_thread = None
        if self.redfish is not None:
            self.redfish.stop()
        if self._vms is not None:
            # Before the shards: a VM quitting must not be written back to a table being closed.
            self._vms.stop()
        for shard in self._shards:
            with shard.lock:
                shard.terminate()
        self._hub.stop()
        if self._table is not None:
            self._table.close()
            self._table = None

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- BMCs -----------------------------------------------------------------------
    def bmc(self, name: str) -> BMCSpec:
        """The BMC called ``name``.

        :raises FleetError: no such BMC.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise FleetError(f"no BMC named {name!r}") from None

    def state(self, name: str) -> dict[str, Any]:
        """Everything about one BMC: address, power, boot device, faults, counters.

        :raises FleetError: no such BMC.
        """
        bmc = self.bmc(name)
        state = {**bmc.public_dict(), **self.table.read(bmc.index).as_dict()}
        if bmc.vm and self._vms is not None:
            state["vm"] = self._vms.status(name)
        if self.redfish is not None:
            state["redfish"] = self.redfish.state(bmc)
        return state

    def states(self) -> list[dict[str, Any]]:
        """:meth:`state` of every BMC."""
        return [self.state(bmc.name) for bmc in self.bmcs]

    def set_fault(self, name: str, **faults: Any) -> Faults:
        """Change some faults of one BMC (others keep their value); effective at once.

        Keywords: ``drop``, ``latency``, ``reject_password``, ``stuck``,
        ``flap``, ``unreachable``, ``ignore_acpi``, ``flap_period``; with
        Redfish also ``http_error``, ``http_error_rate``, ``retry_after``
        (see :mod:`.redfish_state`).

        :raises FleetError: no such BMC.
        :raises ValueError: unknown fault name.
        """
        http = {k: faults.pop(k) for k in REDFISH_FAULT_NAMES if k in faults}
        unknown = set(faults) - set(FAULT_NAMES)
        if unknown or (http and self.redfish is None):
            known = (*FAULT_NAMES, *(REDFISH_FAULT_NAMES if self.redfish is not None else ()))
            raise ValueError(f"unknown faults {sorted(unknown | set(http))}; known: {', '.join(known)}")
        bmc = self.bmc(name)
        if http and self.redfish is not None:
            self.redfish.set_fault(bmc, **http)
        current = self.table.read_faults(bmc.index).as_dict()
        current.update({k: v for k, v in faults.items() if v is not None})
        new = Faults(**current)
        self.table.write_faults(bmc.index, new)
        return new

    def clear_faults(self, name: str) -> None:
        """Remove every fault of one BMC.

        :raises FleetError: no such BMC.
        """
        self.table.write_faults(self.bmc(name).index, Faults())
        if self.redfish is not None:
            self.redfish.clear_faults(self.bmc(name))

    def set_power(self, name: str, state: str, wait: float = 2.0) -> dict[str, Any]:
        """Change a BMC's power state behind the conductor's back ("drift").

        The shard applies it within ~0.1 s (and fires the hooks); this waits
        up to ``wait`` seconds for that and returns the BMC's state.

        :raises FleetError: no such BMC.
        """
        bmc = self.bmc(name)
        seq = self.force_power(bmc.index, PowerState(state))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.table.read_force(bmc.index)[2] != seq:
            time.sleep(0.01)
        return self.state(name)

    def force_power(self, index: int, power: PowerState, cause: ForceCause = ForceCause.DRIFT) -> int:
        """Ask BMC ``index``'s shard to set its power (any thread); returns the request's seq."""
        with self._force_lock:
            if self._table is None or self._stopping.is_set():
                return 0
            return self._table.request_force(index, power, cause)

    def _ack_media(self, index: int, seq: int, ok: bool) -> None:
        """The VM manager applied media change ``seq`` of BMC ``index`` (or could not): tell the Redfish process."""
        redfish = self.redfish
        if redfish is not None and redfish.rftable is not None and not self._stopping.is_set():
            redfish.rftable.ack_media(index, seq, ok)

    def set_delay(self, delay: float, name: str | None = None) -> None:
        """Change the power transition delay of one BMC, or of all."""
        targets = [self.bmc(name)] if name else self.bmcs
        for bmc in targets:
            self.table.write_delay(bmc.index, delay)
        if name is None:
            self.delay = delay

    # --- virtual machines -------------------------------------------------------------
    @property
    def vm_names(self) -> frozenset[str]:
        """Names of the BMCs that drive a VM."""
        return frozenset(bmc.name for bmc in self.bmcs if bmc.vm)

    def _vm_manager(self, name: str) -> VmManager:
        if not self.bmc(name).vm:
            raise FleetError(f"{name} is not a VM BMC")
        if self._vms is None:
            raise FleetError("the fleet is not running")
        return self._vms

    def vm(self, name: str) -> dict[str, Any]:
        """The VM behind BMC ``name``: ``mac``, ``disk``, ``console_log``,
        ``console_offset`` (where its current boot's output starts), ``running``,
        ``pid``, ``boot``, ``media`` (the image in its CD-ROM), ``command``, ``last_error``,
        ``last_exit``, ``history``...

        :raises FleetError: no such BMC, or not a VM BMC.
        """
        return self._vm_manager(name).status(name)

    def vms(self) -> list[dict[str, Any]]:
        """:meth:`vm` of every VM BMC."""
        return [self.vm(name) for name in sorted(self.vm_names)]

    def configure_vm(self, name: str, *, disk: str | os.PathLike[str] | None = None,
                     disk_format: str | None = None, qemu: str | None = None) -> dict[str, Any]:
        """Give a VM another disk file (created at its size if missing), disk format or QEMU binary.

        Effective from its next start.

        :raises FleetError: no such BMC, or not a VM BMC.
        :raises ValueError: an unknown disk format.
        """
        return self._vm_manager(name).configure(name, disk=disk, disk_format=disk_format, qemu=qemu)

    def vm_qmp(self, name: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command on the running VM behind ``name`` (``query-status``...).

        :raises FleetError: no such BMC, not a VM BMC, not running, or QEMU refused it.
        """
        try:
            return self._vm_manager(name).qmp(name, command, arguments)
        except VmError as exc:
            raise FleetError(str(exc)) from None

    # --- inventory -----------------------------------------------------------------
    def inventory(self) -> dict[str, Any]:
        """The ``{"nodes": [...]}`` document ``conductor node import`` reads.

        With Redfish, each entry also has ``driver_infos``: the driver_info
        of each driver that can drive it (``node import --driver redfish``).
        """
        document = inventory_document(self.bmcs)
        if self.redfish is not None:
            for entry, bmc in zip(document["nodes"], self.bmcs, strict=True):
                entry["driver_infos"] = {entry["driver"]: entry["driver_info"],
                                         "redfish": self.redfish.driver_info(bmc)}
        return document

    def write_inventory(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`inventory` to ``path`` (mode 0600: it holds passwords)."""
        return write_document(self.inventory(), path)

    def redfish_driver_info(self, name: str) -> dict[str, Any] | None:
        """The ``redfish`` driver_info of BMC ``name`` (None without Redfish).

        :raises FleetError: no such BMC.
        """
        bmc = self.bmc(name)
        return self.redfish.driver_info(bmc) if self.redfish is not None else None

    # --- events ---------------------------------------------------------------------
    def on_power_change(self, hook: PowerHook) -> PowerHook:
        """Call ``hook(event)`` for every power change (usable as a decorator).

        Hooks run one at a time in a dispatcher thread of this process, in
        event order; an exception in a hook is logged and does not stop
        the others.  See :class:`~conductor.bmcsim.events.PowerEvent`.
        """
        self._hub.add_hook(hook)
        return hook

    def remove_power_hook(self, hook: PowerHook) -> None:
        """Stop calling ``hook``."""
        self._hub.remove_hook(hook)

    def events(self, since: int = 0, timeout: float = 0.0) -> list[PowerEvent]:
        """Events with ``seq > since`` (the last 10,000), waiting up to ``timeout`` for one."""
        return self._hub.events(since, timeout)

    # --- supervision ----------------------------------------------------------------
    def shards(self) -> list[dict[str, Any]]:
        """Health of every shard (pid, heartbeat, probe misses, restarts)."""
        return [shard.status() for shard in self._shards]

    def crash_shard(self, shard: int) -> None:
        """Test aid: SIGKILL a shard's process (the watchdog restarts it)."""
        process = self._shards[shard].process
        if process is not None:
            process.kill()

    def wedge_shard(self, shard: int) -> None:
        """Test aid: SIGSTOP a shard's process: alive, answering nothing."""
        process = self._shards[shard].process
        if process is not None:
            process.send_signal(19)  # SIGSTOP

    def restart_shard(self, shard: int, reason: str) -> Restart:
        """Kill and restart one shard; its BMCs keep their state.

        :raises FleetError: the new process did not become ready.
        """
        proc = self._shards[shard]
        began = time.monotonic()
        with proc.lock:
            if self._stopping.is_set():
                raise FleetError("fleet is stopping")
            LOG.warning("restarting shard %d (BMCs %s..%s): %s", shard, proc.bmcs[0]["name"],
                        proc.bmcs[-1]["name"], reason)
            proc.kill()
            self._hub.add_pipe(proc.spawn(), proc)
            self._wait_ready([proc])
            proc.restarts += 1
            record = Restart(shard, reason, time.time(), time.monotonic() - began)
            proc.last_restart = record
            self.restarts.append(record)
        return record

    @property
    def table(self) -> StateTable:
        """The state table (the fleet must be started)."""
        if self._table is None:
            raise FleetError("the fleet is not running")
        return self._table

    # --- internals ------------------------------------------------------------------
    def _wait_ready(self, shards: list[ShardProcess]) -> None:
        deadline = time.monotonic() + self.start_timeout
        for shard in shards:
            while not shard.ready.wait(0.05):
                if shard.failure:
                    raise FleetError(f"shard {shard.shard} could not start: {shard.failure}")
                if shard.exit_code() is not None and not shard.failure:
                    # give the reader a moment to collect the "failed" line
                    time.sleep(0.1)
                    reason = shard.failure or f"exited with status {shard.exit_code()}"
                    raise FleetError(f"shard {shard.shard} could not start: {reason}")
                if time.monotonic() > deadline:
                    raise FleetError(f"shard {shard.shard} not ready after {self.start_timeout} s")

    def _watchdog(self) -> None:
        """Probe every shard; restart the dead and the wedged."""
        heartbeat_limit = self.probe_failures * self.probe_interval + self.probe_timeout
        while not self._stopping.wait(self.probe_interval):
            for shard in self._shards:
                if self._stopping.is_set():
                    return
                if shard.lock.locked():
                    continue  # being restarted or stopped
                reason = wedge_reason(shard, self.probe_timeout, self.probe_failures, heartbeat_limit)
                if reason is None:
                    continue
                try:
                    self.restart_shard(shard.shard, reason)
                except (FleetError, OSError) as exc:
                    LOG.error("restart of shard %d failed: %s; will retry", shard.shard, exc)


def _ephemeral_low(default: int = 32768) -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def find_free_ports(count: int, host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A base port such that ``count`` consecutive UDP ports are free now.

    :raises FleetError: none found.
    """
    import random

    # Below the kernel's ephemeral range: ports picked there can be taken
    # by any client's outgoing socket between this check and the shards' bind.
    low, high = 10000, _ephemeral_low() - count
    for _ in range(attempts):
        base = random.randint(low, max(low, high))
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise FleetError(f"no {count} consecutive free UDP ports on {host}")
