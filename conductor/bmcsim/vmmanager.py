"""The VM manager: runs the QEMU machines behind a fleet's VM BMCs.

Where things live.  The QEMU processes are children of the fleet's
**control process**, not of the shards: a shard restarted by the watchdog
(see :mod:`.supervisor`) loses nothing, and a VM runs on while its BMC's
shard is down.  The manager sees what the BMCs do through the fleet's
power events (a hook, like the simulated agent's) and writes back what the
machines really do through the state table's "force" requests
(:meth:`conductor.bmcsim.state.StateTable.request_force`), so there is still
one writer per field: the shard writes the power state, the manager asks it to.

What a power event does to a VM::

    booted (off -> on: on, cycle, drift, flap)   start QEMU, boot order from the event
    reset (on -> on)                            QMP system_reset; a restart of the process
                                                when the boot order changes (a one-time
                                                override, or another persistent device)
    soft (on -> on, VM BMCs only)               QMP system_powerdown (ACPI power button);
                                                the BMC reads "off" once the guest powers off
    soft-restart (on -> on, Redfish             QMP system_powerdown; once the guest has
      GracefulRestart)                          powered off, a vm-reboot write-back boots
                                                the machine again (the BMC stays "on")
    -> off (off, cycle, drift, flap, vm-*)      QMP quit (SIGKILL to its process group
                                                after stop_timeout)

Virtual media (a :class:`~conductor.bmcsim.events.MediaEvent` from the
Redfish process, through the fleet's hub): the image file becomes the
medium of the machine's IDE CD-ROM, at once when QEMU runs (QMP
``blockdev-change-medium``; ``eject`` for an EjectMedia) and on its
``-drive`` at every later start; the manager acknowledges each change in
the Redfish table (``ack``), which the Redfish process waits for before it
answers the action.

and what a machine does to its BMC: a QEMU process that exits by itself
(guest power off, crash, SIGKILL from outside) or cannot start (bad disk
path, missing binary, QEMU refusing its arguments) makes the BMC read
"off" (events with cause ``vm-exit`` / ``vm-failed``), and the reason is in
:meth:`VmManager.status` (``last_error``, ``last_exit``, ``history``).
A power on from off completes only once QEMU runs: the BMC's shard passes
the request on (an off -> on event) but keeps reading "off", and the
manager writes "on" back when the machine has started (an off -> on event
with cause ``vm-started``); a machine that cannot start never reads "on".

Each VM has a worker thread that owns its process and its QMP connection:
power actions, QMP calls from the control API and exit checks (every
``POLL`` s) are serialised there, and VMs never wait on each other.  The
worker also is the process's parent thread for ``PR_SET_PDEATHSIG``
(Linux sends the signal when the *thread* that forked dies), so it lives
as long as the manager.  No QEMU outlives the simulator: :meth:`stop`
quits every machine; each runs in a process group of its own, with
SIGTERM as parent-death signal should the control process be killed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from conductor.bmcsim.events import MediaEvent, PowerEvent
from conductor.bmcsim.inventory import BMCSpec
from conductor.bmcsim.qmp import QmpClient, QmpError
from conductor.bmcsim.state import ForceCause, PowerState
from conductor.bmcsim.vm import (
    CDROM_DEVICE,
    POWEROFF_MESSAGE,
    VmError,
    VmFiles,
    VmSpec,
    boot_order,
    create_disk,
    qemu_command,
    write_poweroff_disk,
)
from conductor.procs import die_with_parent

LOG = logging.getLogger(__name__)

POLL = 0.1  # seconds between a worker's checks of its process
HISTORY = 100  # lines of history kept per VM
MAX_SOCKET_PATH = 100  # a unix socket path must fit in sun_path (108 bytes)

#: ``force(index, power, cause)``: ask the BMC's shard to set its power.
Force = Callable[[int, PowerState, ForceCause], object]
#: ``ack(index, seq, ok)``: tell the Redfish process that media change ``seq`` was applied (or not).
MediaAck = Callable[[int, int, bool], None]
#: What a guest's own power off is called in :attr:`Machine.last_exit` (and by :meth:`Machine.check`).
GUEST_POWERED_OFF = "the guest powered off"


class Machine:
    """One VM: its files, its QEMU process and what happened to it.

    Only its worker thread changes it; :meth:`status` may be read from any thread.
    """

    def __init__(self, spec: VmSpec, bmc: BMCSpec, files: VmFiles, accel: str) -> None:
        assert bmc.mac is not None
        self.spec = spec
        self.bmc = bmc
        self.name = bmc.name
        self.mac = bmc.mac
        self.files = files
        self.disk_format = spec.disk_format
        self.accel = accel
        self.process: subprocess.Popen[bytes] | None = None
        self.qmp: QmpClient | None = None
        self.boot: dict[str, Any] | None = None
        self.command: list[str] = []
        self.started_at: float | None = None
        self.start_seconds: float | None = None
        self.starts = 0
        self.console_offset = 0
        self.last_error: str | None = None
        self.last_exit: dict[str, Any] | None = None
        #: The image in the CD-ROM (virtual media inserted over Redfish), kept across starts.
        self.media: Path | None = None
        #: A graceful restart is under way: the guest's power off is a reboot.
        self.restart_pending = False
        self._stopping = False  # an exit now is ours, not the machine's
        self._lock = threading.Lock()
        self._history: collections.deque[tuple[float, str]] = collections.deque(maxlen=HISTORY)

    # --- reading ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the QEMU process runs."""
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any]:
        """JSON-friendly: files, process, boot, errors, history."""
        process = self.process
        with self._lock:
            history = [[round(at, 3), what] for at, what in self._history]
        return {
            "name": self.name, "mac": self.mac, "memory_mb": self.spec.memory_mb, "cpus": self.spec.cpus,
            "disk": str(self.files.disk), "disk_format": self.disk_format, "disk_size": self.spec.disk_bytes,
            "console_log": str(self.files.console), "console_offset": self.console_offset,
            "qemu_log": str(self.files.qemu_log), "qmp_socket": str(self.files.qmp), "qemu": self.files.qemu,
            "accel": self.accel,
            "running": process is not None and process.poll() is None,
            "pid": process.pid if process is not None and process.poll() is None else None,
            "boot": dict(self.boot) if self.boot else None,
            "media": str(self.media) if self.media is not None else None,
            "command": list(self.command), "started_at": self.started_at, "start_seconds": self.start_seconds,
            "starts": self.starts, "last_error": self.last_error, "last_exit": self.last_exit,
            "history": history,
        }

    def note(self, what: str) -> None:
        """Add a line to the history (and the log)."""
        LOG.info("vm %s: %s", self.name, what)
        with self._lock:
            self._history.append((time.time(), what))

    # --- actions (worker thread) -----------------------------------------------
    def start(self, device: str, persistent: bool) -> None:
        """Start QEMU booting as the BMC's boot device says; returns once QMP answers.

        :raises VmError: the disk cannot be created, QEMU cannot be run, or
            it exited (or did not answer) before QMP was up; the process is gone then.
        """
        order, once = boot_order(device, persistent)
        self.starts += 1
        began = time.monotonic()
        try:
            if create_disk(self.files.disk, self.spec.disk_bytes, self.disk_format):
                self.note(f"created {self.disk_format} disk {self.files.disk} ({self.spec.disk_bytes} bytes)")
        except OSError as exc:
            raise self._failed(f"cannot create disk {self.files.disk}: {exc}") from None
        media = self.media
        if media is not None and not media.is_file():
            self.note(f"the inserted media {media} is gone: the CD-ROM is empty")
            media = None
        self.command = qemu_command(self.spec, self.name, self.mac, self.files, self.accel, order, once,
                                    self.disk_format, media)
        with contextlib.suppress(FileNotFoundError):
            self.files.qmp.unlink()
        try:
            with open(self.files.console, "ab") as console:
                console.write(f"\r\n[bmcsim] {self.name} power on: boot {device}"
                              f"{'' if persistent or device == 'default' else ' (once)'}, "
                              f"order {once or order}\r\n".encode())
                self.console_offset = console.tell()
            log = open(self.files.qemu_log, "ab")  # noqa: SIM115 - handed to the child
        except OSError as exc:
            raise self._failed(f"cannot write {exc.filename}: {exc.strerror}") from None
        try:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command)}\n".encode())
            log.flush()
            try:
                # preexec_fn: see the module docstring (PDEATHSIG, process group).
                process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           start_new_session=True, preexec_fn=die_with_parent(os.getpid()))
            except OSError as exc:
                raise self._failed(f"cannot run {self.files.qemu}: {exc.strerror or exc}") from None
        finally:
            log.close()
        # Published (self.process) only once QMP answers: a reader that sees
        # the pid sees a started machine with its boot order.
        deadline = began + self.spec.start_timeout
        while True:
            if process.poll() is not None:
                raise self._failed(f"QEMU exited with status {process.returncode} at start: {self._log_tail()}")
            if self.files.qmp.exists():
                try:
                    qmp = QmpClient(str(self.files.qmp), timeout=5.0)
                    break
                except QmpError:
                    pass  # not listening yet
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise self._failed(f"QEMU did not answer on QMP within {self.spec.start_timeout} s")
            time.sleep(0.02)
        self.started_at = time.time()
        self.start_seconds = round(time.monotonic() - began, 3)
        self.boot = {"device": device, "persistent": persistent, "order": order, "once": once}
        self.last_error = None
        self._stopping = False
        self.qmp = qmp
        self.process = process
        self.note(f"started (pid {process.pid}, boot {device}, order {once or order}) "
                  f"in {self.start_seconds:.2f} s")

    def stop(self, why: str) -> None:
        """Quit QEMU (QMP ``quit``), SIGKILL its group after ``stop_timeout``; no-op if not running."""
        process = self.process
        if process is None:
            return
        self._stopping = True
        if process.poll() is None and self.qmp is not None:
            with contextlib.suppress(QmpError):
                self.qmp.execute("quit")
        try:
            process.wait(self.spec.stop_timeout)
        except subprocess.TimeoutExpired:
            self.note(f"QEMU did not quit within {self.spec.stop_timeout} s: killing it")
            self._kill()
        self._gone(f"stopped ({why})")

    def powerdown(self) -> None:
        """Press the ACPI power button (QMP ``system_powerdown``)."""
        self._qmp("system_powerdown")
        self.note("ACPI power button pressed (system_powerdown)")

    def set_media(self, media: Path | None) -> None:
        """Put ``media`` into the CD-ROM (None: eject), now if QEMU runs, else from its next start.

        :raises VmError: QEMU refused the change (the drive keeps what it had).
        """
        if self.running:
            if media is None:
                self._qmp("eject", {"id": CDROM_DEVICE, "force": True})
            else:
                self._qmp("blockdev-change-medium", {"id": CDROM_DEVICE, "filename": str(media), "format": "raw",
                                                     "read-only-mode": "read-only"})
        self.media = media
        when = "" if self.running else " (from the next start)"
        self.note(f"virtual media inserted: {media}{when}" if media is not None else f"virtual media ejected{when}")

    def reset(self) -> None:
        """Hard reset (QMP ``system_reset``); a one-time boot order is used up."""
        self._qmp("system_reset")
        if self.boot is not None:
            self.boot["once"] = None
        self.note("reset (system_reset)")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Any QMP command (``query-status``, ``human-monitor-command``...).

        :raises VmError: not running, or QEMU refused it.
        """
        return self._qmp(command, arguments)

    def check(self) -> str | None:
        """Notice QMP events, and the process's exit; a description if it exited by itself."""
        process = self.process
        # Exit first, then events: all that QEMU sent before exiting is read.
        exited = process is not None and process.poll() is not None
        if self.qmp is not None:
            for event in self.qmp.poll_events():
                self._on_qmp_event(event)
        if process is None or not exited:
            return None
        if self._stopping:
            return None
        why = self._exit_reason(process.returncode)
        self._gone(why)
        return why

    # --- internals -----------------------------------------------------------------
    def _qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        if self.qmp is None or not self.running:
            raise VmError(f"{self.name}: QEMU is not running")
        try:
            return self.qmp.execute(command, arguments)
        except QmpError as exc:
            raise VmError(f"{self.name}: {exc}") from None

    def _on_qmp_event(self, event: dict[str, Any]) -> None:
        name = event.get("event", "?")
        data = event.get("data") or {}
        if name == "RESET" and self.boot is not None:
            self.boot["once"] = None  # QEMU restores the boot order on the first reset
        detail = ", ".join(f"{k}={v}" for k, v in data.items())
        self.note(f"QMP event {name}" + (f" ({detail})" if detail else ""))

    def _exit_reason(self, code: int) -> str:
        shutdown = [e for e in (self.qmp.events if self.qmp else ()) if e.get("event") == "SHUTDOWN"]
        if shutdown and (shutdown[-1].get("data") or {}).get("guest"):
            return GUEST_POWERED_OFF
        if code < 0:
            return f"QEMU was killed by signal {signal.Signals(-code).name}"
        return f"QEMU exited with status {code}: {self._log_tail()}"

    def _gone(self, why: str) -> None:
        process = self.process
        if self.qmp is not None:
            for event in self.qmp.poll_events():  # those that came with the exit (SHUTDOWN...)
                self._on_qmp_event(event)
            self.qmp.close()
            self.qmp = None
        self.process = None
        code = process.returncode if process is not None else None
        self.last_exit = {"at": time.time(), "status": code, "reason": why}
        self.boot = None
        self.note(why)

    def _kill(self) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _log_tail(self) -> str:
        try:
            lines = self.files.qemu_log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no QEMU log)"
        tail = [line for line in lines[-5:] if not line.startswith("--- ")]
        return " / ".join(tail)[-500:] or "(nothing in the QEMU log)"

    def _failed(self, message: str) -> VmError:
        self.last_error = message
        self.boot = None
        self.note(f"failed to start: {message}")
        return VmError(f"{self.name}: {message}")


class _Call:
    """A function to run in a worker thread, with its result."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self.func = func
        self.future: Future[Any] = Future()


_STOP = object()


class _Worker:
    """The thread that owns one :class:`Machine`."""

    def __init__(self, machine: Machine, force: Force, ack: MediaAck | None = None) -> None:
        self.machine = machine
        self.force = force
        self.ack = ack
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"vm-{machine.name}", daemon=True)

    def _run(self) -> None:
        machine = self.machine
        while True:
            try:
                item = self.queue.get(timeout=POLL)
            except queue.Empty:
                item = None
            if item is _STOP:
                machine.stop("the simulator stops")
                return
            try:
                if isinstance(item, PowerEvent):
                    self._apply(item)
                elif isinstance(item, MediaEvent):
                    self._media(item)
                elif isinstance(item, _Call):
                    try:
                        item.future.set_result(item.func())
                    except Exception as exc:  # handed to the caller
                        item.future.set_exception(exc)
                gone = machine.check()
            except Exception:  # a bug here must not end the VM's worker
                LOG.exception("vm %s: error handling %r", machine.name, item)
                continue
            if gone is None:
                continue
            if gone == GUEST_POWERED_OFF and machine.restart_pending:
                # A graceful restart: the BMC stays on and the machine boots again
                # (the shard's vm-reboot event, which uses up a one-time boot override).
                machine.restart_pending = False
                machine.note("the guest shut down for a graceful restart: booting again")
                self.force(machine.bmc.index, PowerState.ON, ForceCause.VM_REBOOT)
            else:
                self.force(machine.bmc.index, PowerState.OFF, ForceCause.VM_EXIT)

    def _media(self, event: MediaEvent) -> None:
        machine = self.machine
        ok = True
        try:
            machine.set_media(Path(event.file) if event.file is not None else None)
        except VmError as exc:
            machine.note(f"virtual media {'insert' if event.file else 'eject'} refused: {exc}")
            ok = False
        if self.ack is not None:
            self.ack(event.index, event.seq, ok)

    def _apply(self, event: PowerEvent) -> None:
        machine = self.machine
        if event.cause not in ("soft-restart", ForceCause.VM_STARTED.label):
            machine.restart_pending = False  # anything else the BMC does ends a graceful restart
        if event.new == "off":
            machine.stop(f"BMC power {event.cause}")
            return
        if event.cause in ("soft", "soft-restart"):
            if machine.running:
                try:
                    machine.powerdown()
                    machine.restart_pending = event.cause == "soft-restart"
                except VmError as exc:  # QEMU went away meanwhile: check() sees it
                    machine.note(f"power button not pressed: {exc}")
            return
        if not event.booted or event.cause == ForceCause.VM_STARTED.label:  # ours: the write-back below
            return
        if event.cause == "on" and machine.running:
            # Asked again while its start was being written back: it runs.
            self.force(machine.bmc.index, PowerState.ON, ForceCause.VM_STARTED)
            return
        try:
            if event.cause == "reset" and machine.running and machine.boot is not None:
                order, once = boot_order(event.boot_device, event.persistent)
                if once is None and order == machine.boot["order"]:
                    machine.reset()
                    return
                machine.note(f"reset with boot {event.boot_device}: restarting QEMU for the new boot order")
            if machine.running:
                machine.stop(f"BMC power {event.cause}: booting again")
            machine.start(event.boot_device, event.persistent)
            # Its BMC reads "on" from now (it read "off" while QEMU started).
            self.force(machine.bmc.index, PowerState.ON, ForceCause.VM_STARTED)
        except VmError as exc:
            LOG.error("%s", exc)
            self.force(machine.bmc.index, PowerState.OFF, ForceCause.VM_FAILED)


class VmManager:
    """The machines of a fleet's VM BMCs.

    :param spec: what the machines are.
    :param bmcs: the VM BMCs (with ``mac``).
    :param force: how to set a BMC's power in the state table.
    :param ack: how to acknowledge a virtual media change to the Redfish process.
    """

    def __init__(self, spec: VmSpec, bmcs: Iterable[BMCSpec], force: Force, ack: MediaAck | None = None) -> None:
        self.spec = spec
        self.bmcs = [bmc for bmc in bmcs if bmc.vm]
        self.force = force
        self.ack = ack
        self.accel = spec.accel
        self.accel_reason = "as configured"
        self.directory: Path | None = None
        self._temp_dirs: list[Path] = []
        self._workers: dict[str, _Worker] = {}

    def start(self, powered_on: Iterable[str] = ()) -> VmManager:
        """Resolve the accelerator, prepare the directory, start the workers; boot ``powered_on``.

        :raises OSError: the directory cannot be created.
        """
        if self.spec.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="bmcsim-vms-"))
            self._temp_dirs.append(self.directory)
        else:
            self.directory = Path(self.spec.directory)
            self.directory.mkdir(parents=True, exist_ok=True)
        if self.spec.accel == "auto":
            works, why = probe_kvm(self.spec.qemu, self.spec.probe_timeout, self.spec.nic_model)
            self.accel, self.accel_reason = ("kvm" if works else "tcg"), why
            LOG.warning("VM accelerator: %s (%s)", self.accel, why)
        sockets = self.directory
        if len(str(sockets)) + max((len(b.name) for b in self.bmcs), default=0) + 6 > MAX_SOCKET_PATH:
            sockets = Path(tempfile.mkdtemp(prefix="bmcsim-qmp-"))
            self._temp_dirs.append(sockets)
        suffix = "img" if self.spec.disk_format == "raw" else "qcow2"
        for bmc in self.bmcs:
            files = VmFiles(disk=self.directory / f"{bmc.name}.{suffix}",
                            console=self.directory / f"{bmc.name}.console.log",
                            qemu_log=self.directory / f"{bmc.name}.qemu.log",
                            qmp=sockets / f"{bmc.name}.qmp", qemu=self.spec.qemu)
            _remove(self.media_file(bmc.name))  # a previous run's: no machine has it now
            worker = _Worker(Machine(self.spec, bmc, files, self.accel), self.force, self.ack)
            self._workers[bmc.name] = worker
            worker.thread.start()
        for name in powered_on:
            if name in self._workers:
                self._workers[name].queue.put(PowerEvent(0, name, "off", "on", "on", "default", True, False,
                                                         time.time()))
        return self

    def stop(self) -> None:
        """Quit every machine (in parallel), end the workers, remove temporary directories."""
        for worker in self._workers.values():
            worker.queue.put(_STOP)
        limit = time.monotonic() + self.spec.stop_timeout + 5
        for worker in self._workers.values():
            worker.thread.join(max(0.1, limit - time.monotonic()))
            if worker.thread.is_alive():  # wedged on something: still, no QEMU may survive
                LOG.error("vm %s: worker did not stop; killing QEMU", worker.machine.name)
                worker.machine._kill()
            _remove(self.media_file(worker.machine.name))  # it may hold an agent's token
        for directory in self._temp_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self._temp_dirs.clear()

    def media_file(self, name: str) -> Path:
        """Where VM BMC ``name`` keeps the image inserted into its virtual CD (after :meth:`start`)."""
        assert self.directory is not None
        return self.directory / f"{name}.cd.iso"

    # --- events -----------------------------------------------------------------
    def on_power(self, event: PowerEvent) -> None:
        """The fleet's power hook: hand the event to the VM's worker (never blocks)."""
        worker = self._workers.get(event.bmc)
        if worker is not None:
            worker.queue.put(event)

    def on_media(self, event: MediaEvent) -> None:
        """The fleet's media hook: hand the change to the VM's worker (never blocks), which acknowledges it."""
        worker = self._workers.get(event.bmc)
        if worker is not None:
            worker.queue.put(event)
        elif self.ack is not None:
            self.ack(event.index, event.seq, False)

    # --- reading and steering ---------------------------------------------------------
    @property
    def names(self) -> frozenset[str]:
        """The VM BMCs' names."""
        return frozenset(self._workers)

    def machine(self, name: str) -> Machine:
        """The machine of VM BMC ``name``.

        :raises KeyError: not a VM BMC.
        """
        return self._workers[name].machine

    def status(self, name: str) -> dict[str, Any]:
        """See :meth:`Machine.status`.

        :raises KeyError: not a VM BMC.
        """
        return self.machine(name).status()

    def configure(self, name: str, *, disk: str | os.PathLike[str] | None = None, disk_format: str | None = None,
                  qemu: str | None = None) -> dict[str, Any]:
        """Change a VM's disk file, its format, or the QEMU binary, from its next start.

        :raises KeyError: not a VM BMC.
        :raises ValueError: an unknown disk format.
        """
        machine = self.machine(name)

        def change() -> dict[str, Any]:
            if disk is not None:
                machine.files.disk = Path(disk)
            if disk_format is not None:
                if disk_format not in ("raw", "qcow2"):
                    raise ValueError("disk_format must be raw or qcow2")
                machine.disk_format = disk_format
            if qemu is not None:
                machine.files.qemu = qemu
            machine.note(f"configured: disk {machine.files.disk} ({machine.disk_format}), qemu {machine.files.qemu}")
            return machine.status()

        status: dict[str, Any] = self._call(name, change)
        return status

    def qmp(self, name: str, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """Run a QMP command on a running VM (through its worker, which owns the connection).

        :raises KeyError: not a VM BMC.
        :raises VmError: not running, or QEMU refused the command.
        """
        return self._call(name, lambda: self.machine(name).execute(command, arguments), timeout)

    def _call(self, name: str, func: Callable[[], Any], timeout: float = 30.0) -> Any:
        call = _Call(func)
        self._workers[name].queue.put(call)
        return call.future.result(timeout)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def probe_kvm(qemu: str = "qemu-system-x86_64", timeout: float = 30.0,
              nic_model: str = "virtio-net-pci") -> tuple[bool, str]:
    """Whether KVM really runs a guest here: ``(works, why)``.

    Boots a tiny guest with ``-accel kvm`` the way a VM of the fleet boots:
    firmware, then iPXE (network first; QEMU's DHCP offers no boot file, so
    it gives up), then the disk, whose boot sector powers off.  It must
    exit, having printed its line, within ``timeout`` seconds.  (Measured
    on a nested-KVM host: ``/dev/kvm`` opens and a bare boot sector runs,
    but the guest freezes in iPXE; hence iPXE in the probe.)
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not usable"
    with tempfile.TemporaryDirectory(prefix="bmcsim-kvm-probe-") as tmp:
        files = VmFiles(disk=write_poweroff_disk(Path(tmp) / "disk.img"), console=Path(tmp) / "console.log",
                        qemu_log=Path(tmp) / "qemu.log", qmp=Path(tmp) / "qmp.sock", qemu=qemu)
        spec = VmSpec(memory_mb=128, nic_model=nic_model)
        command = qemu_command(spec, "kvm-probe", "52:54:00:00:00:01", files, "kvm", "nc", None)
        began = time.monotonic()
        try:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=timeout, preexec_fn=die_with_parent(os.getpid()))
        except subprocess.TimeoutExpired:
            return False, f"a KVM guest did not finish booting in {timeout:.0f} s (frozen)"
        except OSError as exc:
            return False, f"cannot run {qemu}: {exc}"
        console = files.console.read_text(errors="replace") if files.console.exists() else ""
        if result.returncode != 0 or POWEROFF_MESSAGE not in console:
            return False, f"a KVM guest failed (status {result.returncode}): {result.stderr.strip()[-300:]}"
        return True, f"a KVM guest booted through iPXE in {time.monotonic() - began:.1f} s"
