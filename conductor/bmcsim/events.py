"""Power events: what the fleet tells its hooks when a machine changes state.

A simulated deploy agent (or a test) registers a hook with
:meth:`conductor.bmcsim.fleet.Fleet.on_power_change` and reacts, e.g. to a
machine that boots from the network::

    def agent(event: PowerEvent) -> None:
        if event.booted and event.boot_device == "pxe":
            ...  # pretend the ramdisk came up and call the conductor back

The fleet's Redfish process sends one more kind, :class:`MediaEvent`: the
virtual CD of a VM BMC got media or lost it, for the VM manager
(:meth:`EventHub.add_media_hook`), which attaches it to the machine.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import selectors
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PowerEvent:
    """One power change of one BMC.

    :ivar seq: position in the fleet's event stream (starts at 1).
    :ivar bmc: the BMC's name.
    :ivar old: power state before (``on``/``off``).
    :ivar new: power state after; equal to ``old`` for a reset, and for a
        soft power off of a VM BMC (the ACPI request: "off" follows, as a
        ``vm-exit`` event, when the guest has powered off).
    :ivar cause: ``on``, ``off``, ``soft``, ``cycle``, ``reset`` (IPMI
        commands), ``drift`` (set behind the conductor's back), ``flap``;
        for VM BMCs also ``vm-exit`` (the QEMU process ended by itself: guest
        power off, crash, killed), ``vm-failed`` (it could not start),
        ``soft-restart`` (an ACPI reboot asked: on -> on, the guest shuts
        down first) and ``vm-reboot`` (it did: the machine boots again).
    :ivar boot_device: the device the machine boots from if it booted
        (the override, or ``default``); a one-time override is used up.
    :ivar persistent: whether that override was persistent.
    :ivar uefi: whether the override asked for UEFI boot.
    :ivar time: wall-clock time of the change.
    """

    seq: int
    bmc: str
    old: str
    new: str
    cause: str
    boot_device: str
    persistent: bool
    uefi: bool
    time: float

    @property
    def booted(self) -> bool:
        """True when the machine started booting (off -> on, a reset, or the second half of a graceful restart)."""
        return self.new == "on" and (self.old == "off" or self.cause in REBOOT_CAUSES)

    @classmethod
    def from_message(cls, message: dict[str, Any], name: str, seq: int) -> PowerEvent:
        """Build from a shard's event line."""
        return cls(seq=seq, bmc=name, old=message["old"], new=message["new"], cause=message["cause"],
                   boot_device=message["boot_device"], persistent=message["persistent"],
                   uefi=message["uefi"], time=message["time"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (with ``booted``)."""
        return {**asdict(self), "booted": self.booted}


#: Causes of an on -> on event that boots the machine again.
REBOOT_CAUSES = ("reset", "vm-reboot")


@dataclass(frozen=True)
class MediaEvent:
    """Virtual media inserted into, or ejected from, a VM BMC's CD drive (over Redfish).

    :ivar index: the BMC's index.
    :ivar bmc: its name.
    :ivar file: the image, fetched by the BMC from the URL it was given, as a
        local file; None: ejected.
    :ivar seq: the Redfish process's number for this change of this BMC; the
        VM manager acknowledges it (:meth:`conductor.bmcsim.redfish_state.RedfishTable.ack_media`).
    """

    index: int
    bmc: str
    file: str | None
    seq: int


#: A power hook: called with each event, in order, in the fleet's dispatcher thread.
PowerHook = Callable[[PowerEvent], None]
#: A media hook: called with each media event, in the same thread and order as the power hooks.
MediaHook = Callable[[MediaEvent], None]


class EventHub:
    """Reads shards' event pipes, keeps recent events, and calls the hooks.

    Two threads: a reader that owns a selector over every shard's pipe and
    the Redfish process's (a shard never blocks on us: it drops events if
    we stop reading), and a
    dispatcher that calls the hooks one at a time, in event order, so a slow
    hook delays other hooks but never the reader.

    :param names: BMC names by index (events carry the index).
    """

    def __init__(self, names: list[str], history: int = 10_000) -> None:
        self._names = names
        self._hooks: list[PowerHook] = []
        self._media_hooks: list[MediaHook] = []
        self._history: collections.deque[PowerEvent] = collections.deque(maxlen=history)
        self._seq = 0
        self._cond = threading.Condition()
        self._queue: queue.SimpleQueue[PowerEvent | MediaEvent | None] = queue.SimpleQueue()
        # Only the reader thread touches the selector; others hand it new
        # pipes through _new_pipes and wake it with a byte on _wake_w.
        self._selector = selectors.DefaultSelector()
        self._new_pipes: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._buffers: dict[int, bytes] = {}
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._read, name="bmcsim-events", daemon=True),
                         threading.Thread(target=self._dispatch, name="bmcsim-hooks", daemon=True)]

    def start(self) -> None:
        """Start the reader and dispatcher threads."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads and close every pipe."""
        self._stopping.set()
        self._queue.put(None)
        self._wake()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(5)
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            os.close(key.fd)
        while not self._new_pipes.empty():
            os.close(self._new_pipes.get()[0])
        if self._wake_w >= 0:
            os.close(self._wake_w)
            self._wake_w = -1

    def add_pipe(self, fd: int, shard: Any) -> None:
        """Read events from ``fd`` (the read end of a shard's or the Redfish process's pipe); any thread."""
        self._new_pipes.put((fd, shard))
        self._wake()

    def add_hook(self, hook: PowerHook) -> None:
        """Call ``hook`` for every later event."""
        self._hooks.append(hook)

    def remove_hook(self, hook: PowerHook) -> None:
        """Stop calling ``hook``."""
        self._hooks.remove(hook)

    def add_media_hook(self, hook: MediaHook) -> None:
        """Call ``hook`` for every later media event."""
        self._media_hooks.append(hook)

    def events(self, since: int = 0, timeout: float = 0.0) -> list[PowerEvent]:
        """Events with ``seq > since``, waiting up to ``timeout`` for one."""
        with self._cond:
            if timeout and self._seq <= since:
                self._cond.wait_for(lambda: self._seq > since, timeout)
            return [ev for ev in self._history if ev.seq > since]

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already stopped
            os.write(self._wake_w, b"x")

    def _read(self) -> None:
        while not self._stopping.is_set():
            while not self._new_pipes.empty():
                fd, shard = self._new_pipes.get()
                self._selector.register(fd, selectors.EVENT_READ, shard)
                self._buffers[fd] = b""
            for key, _ in self._selector.select(0.5):
                if key.data is None:
                    os.read(self._wake_r, 4096)
                else:
                    self._read_pipe(key.fd, key.data)

    def _read_pipe(self, fd: int, shard: Any) -> None:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:  # that shard process is gone; its successor has a new pipe
            self._selector.unregister(fd)
            self._buffers.pop(fd, None)
            os.close(fd)
            return
        *lines, rest = (self._buffers.get(fd, b"") + chunk).split(b"\n")
        self._buffers[fd] = rest
        for line in lines:
            self._handle(line, shard)

    def _handle(self, line: bytes, shard: Any) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            LOG.error("%s sent garbage: %r", shard, line[:200])
            return
        kind = message.get("type")
        if kind == "ready":
            shard.ready.set()
        elif kind == "failed":
            shard.failure = message.get("error", "unknown error")
        elif kind == "power":
            with self._cond:
                self._seq += 1
                event = PowerEvent.from_message(message, self._names[message["index"]], self._seq)
                self._history.append(event)
                self._cond.notify_all()
            self._queue.put(event)
        elif kind == "media":
            self._queue.put(MediaEvent(message["index"], self._names[message["index"]], message.get("file"),
                                       message["seq"]))

    def _dispatch(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            hooks: list[Any] = list(self._media_hooks if isinstance(event, MediaEvent) else self._hooks)
            for hook in hooks:
                try:
                    hook(event)
                except Exception:  # a hook's bug must not stop the fleet's events
                    LOG.exception("power hook %r failed on %s", hook, event)
