"""A shard: one child process serving a slice of the fleet's BMCs.

Run as ``python -m conductor.bmcsim.shard`` by the control process, which
writes a JSON configuration on stdin and passes two descriptors: the state
table (``state_fd``) and the write end of a pipe for events (``event_fd``).

The loop is a plain epoll loop over the BMC sockets (one thread, no pyghmi
I/O thread), so the cost of a packet does not grow with the number of BMCs.
Every packet is handled inside ``try``: one bad packet or one pyghmi bug
costs that packet, never the shard.  Events are written to the pipe without
blocking: if the control process stops reading, events are dropped (and
counted) rather than wedging the shard; the state table stays correct.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import random
import selectors
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any, cast

from conductor.bmcsim.bmc import SimBmc
from conductor.bmcsim.state import FaultBit, StateTable

LOG = logging.getLogger("conductor.bmcsim.shard")

TICK = 0.1  # seconds between drift/flap/heartbeat checks
EXPIRE_EVERY = 10.0  # seconds between idle-session sweeps
MAX_BATCH = 64  # datagrams read from one socket per wake-up (fairness)
MAX_LOGGED_ERRORS = 20  # full tracebacks logged per shard life, then counts only


class Shard:
    """The event loop of one shard process.

    :param config: ``{"shard", "host", "state_fd", "event_fd", "count",
        "shards", "bmcs": [{"index", "name", "port", "username",
        "password", "uuid", "vm"}]}``.
    :raises OSError: when a BMC's port cannot be bound.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.shard_id: int = config["shard"]
        self.table = StateTable.attach(config["state_fd"], config["count"], config["shards"])
        self.event_fd: int = config["event_fd"]
        os.set_blocking(self.event_fd, False)
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._seq = itertools.count()
        self.errors = 0
        self.dropped_events = 0
        self.heartbeat = 0
        self.parent_pid = os.getppid()
        self.bmcs: list[SimBmc] = []
        for spec in config["bmcs"]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((config["host"], spec["port"]))
            bmc = SimBmc(self, self.table, spec["index"], spec["name"], sock, spec["port"],
                         {spec["username"]: spec["password"]}, uuid.UUID(spec["uuid"]),
                         vm=spec.get("vm", False))
            self.bmcs.append(bmc)
            self.selector.register(sock, selectors.EVENT_READ, bmc)

    # --- services for SimBmc ----------------------------------------------------
    def schedule(self, when: float, func: Callable[..., None], *args: Any) -> None:
        """Call ``func(*args)`` at monotonic time ``when`` (or soon after)."""
        heapq.heappush(self.timers, (when, next(self._seq), func, args))

    def emit(self, event: dict[str, Any]) -> None:
        """Send one event line to the control process; never blocks."""
        event["shard"] = self.shard_id
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        try:
            # Lines are far below PIPE_BUF, so a write is all or nothing.
            os.write(self.event_fd, line)
        except BlockingIOError:
            self.dropped_events += 1
        except BrokenPipeError:
            # The control process is gone: nobody will ever serve us again.
            LOG.warning("shard %d: control process gone, exiting", self.shard_id)
            sys.exit(0)

    # --- loop ---------------------------------------------------------------------
    def run(self) -> None:
        """Serve until killed."""
        now = time.monotonic()
        for bmc in self.bmcs:  # transitions left pending by a previous life
            bmc.tick(now)
            _, pending, deadline = self.table.read_raw_power(bmc.index)
            if pending:
                self.schedule(deadline, bmc.settle)
        self.emit({"type": "ready", "pid": os.getpid(), "bmcs": len(self.bmcs)})
        next_tick = now + TICK
        next_expire = now + EXPIRE_EVERY
        while True:
            timeout = next_tick - time.monotonic()
            if self.timers:
                timeout = min(timeout, self.timers[0][0] - time.monotonic())
            for key, _ in self.selector.select(max(timeout, 0.0)):
                self._drain(cast(socket.socket, key.fileobj), key.data)  # only sockets are registered
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, func, args = heapq.heappop(self.timers)
                self._guard(func, *args)
            if now >= next_tick:
                next_tick = now + TICK
                if os.getppid() != self.parent_pid:
                    # Our control process died (we were re-parented): nobody
                    # can supervise or stop us any more, so do not linger.
                    LOG.warning("shard %d: control process gone, exiting", self.shard_id)
                    return
                for bmc in self.bmcs:
                    self._guard(bmc.tick, now)
                if now >= next_expire:
                    next_expire = now + EXPIRE_EVERY
                    for bmc in self.bmcs:
                        bmc.expire_sessions(now)
            self.heartbeat += 1
            self.table.write_shard(self.shard_id, self.heartbeat, self.errors, os.getpid())

    def _drain(self, sock: socket.socket, bmc: SimBmc) -> None:
        for _ in range(MAX_BATCH):
            try:
                # MSG_DONTWAIT because pyghmi's _io_sendto flips the socket
                # back to blocking mode on every reply it sends.
                data, addr = sock.recvfrom(4096, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors surfacing on UDP
                LOG.debug("shard %d: recvfrom on %s: %s", self.shard_id, bmc.name, exc)
                return
            bits, drop, latency = self.table.read_net_faults(bmc.index)
            if bits & FaultBit.UNREACHABLE or (drop and random.random() < drop):
                continue
            if latency:
                self.schedule(time.monotonic() + latency, bmc.handle_packet, data, addr)
            else:
                self._guard(bmc.handle_packet, data, addr)

    def _guard(self, func: Callable[..., None], *args: Any) -> None:
        """Run one unit of work; an exception costs that unit, not the shard."""
        try:
            func(*args)
        except Exception:  # any bug in pyghmi or in us; the shard must live on
            self.errors += 1
            if self.errors <= MAX_LOGGED_ERRORS:
                LOG.error("shard %d: error %d in %s:\n%s", self.shard_id, self.errors,
                          getattr(func, "__qualname__", func), traceback.format_exc())
            elif self.errors % 1000 == 0:
                LOG.error("shard %d: %d errors so far", self.shard_id, self.errors)


def main() -> None:
    """Entry point of a shard process: config on stdin, then serve for ever."""
    logging.basicConfig(level=os.environ.get("BMCSIM_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = json.load(sys.stdin)
    try:
        shard = Shard(config)
    except OSError as exc:
        # Tell the control process why we cannot start (most often: a port
        # is in use) rather than just dying.
        line = json.dumps({"type": "failed", "shard": config["shard"], "error": str(exc)}) + "\n"
        os.write(config["event_fd"], line.encode())
        sys.exit(2)
    shard.run()


if __name__ == "__main__":
    main()
