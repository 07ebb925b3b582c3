"""Shard processes as the control process sees them: spawn, probe, restart.

A shard is judged by what a client would see: every ``probe_interval`` the
watchdog sends a real IPMI request (Get Channel Authentication
Capabilities, sessionless, cheap) to one of the shard's BMCs that has no
network fault, and also checks the heartbeat the shard writes into the
state table on every turn of its loop.  A shard that exited, or that missed
``probe_failures`` probes in a row, or whose heartbeat is older than
``probe_failures * probe_interval`` seconds, is killed and started again;
its BMCs keep their state because that lives in the state table.  Every
restart is logged and recorded with its reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from conductor.bmcsim.state import FaultBit, StateTable

LOG = logging.getLogger(__name__)

# IPMI 1.5 "Get Channel Authentication Capabilities" (channel 0xE = this
# channel, IPMI 2.0 extended data, admin level): RMCP header, session
# header with no auth, then the message with its two checksums.
PROBE_REQUEST = bytes.fromhex("0600ff07" "00" "00000000" "00000000" "09"
                              "20" "18" "c8" "81" "04" "38" "8e" "04" "b5")


@dataclass
class Restart:
    """One restart of a shard, kept for reports."""

    shard: int
    reason: str
    at: float  # time.time()
    took: float  # seconds until the new process was ready

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"shard": self.shard, "reason": self.reason, "at": self.at, "took": round(self.took, 3)}


@dataclass
class ShardProcess:
    """One shard: its BMCs, its current child process and its history.

    :ivar bmcs: ``[{"index", "name", "port", "username", "password", "uuid"}]``.
    """

    shard: int
    bmcs: list[dict[str, Any]]
    host: str
    table: StateTable
    stderr: IO[bytes] | int | None = None
    process: subprocess.Popen[bytes] | None = None
    event_fd: int | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None
    probe_misses: int = 0
    restarts: int = 0
    last_restart: Restart | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _probe_cursor: int = 0

    # --- lifecycle ----------------------------------------------------------------
    def __str__(self) -> str:
        return f"shard {self.shard}"

    def spawn(self) -> int:
        """Start a child process; returns the read end of its event pipe.

        :raises OSError: when the process cannot be started.
        """
        read_fd, write_fd = os.pipe()
        config = {"shard": self.shard, "host": self.host, "state_fd": self.table.fd,
                  "event_fd": write_fd, "count": self.table.count, "shards": self.table.shards,
                  "bmcs": self.bmcs}
        env = dict(os.environ)
        # The child must import this very package, wherever it came from
        # (a worktree on PYTHONPATH, a test's rootdir, an installed copy).
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.ready.clear()
        self.failure = None
        self.probe_misses = 0
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "conductor.bmcsim.shard"], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=self.stderr, pass_fds=(self.table.fd, write_fd),
                env=env, start_new_session=True)
        finally:
            os.close(write_fd)
        assert self.process.stdin is not None
        # The passwords travel on stdin, not argv, so ps does not show them.
        self.process.stdin.write(json.dumps(config).encode())
        self.process.stdin.close()
        self.event_fd = read_fd
        return read_fd

    def kill(self) -> None:
        """Kill the child (SIGKILL works on a stopped process too) and reap it."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        process.wait()

    def terminate(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            process.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            process.terminate()
            process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    @property
    def pid(self) -> int | None:
        """The current child's pid."""
        return self.process.pid if self.process else None

    # --- health -----------------------------------------------------------------------
    def exit_code(self) -> int | None:
        """The child's exit status, or None while it runs."""
        return self.process.poll() if self.process else None

    def heartbeat_age(self) -> float:
        """Seconds since the shard's loop last turned."""
        health = self.table.read_shard(self.shard)
        if not health.last_loop:
            return 0.0
        return time.monotonic() - health.last_loop

    def probe_target(self) -> dict[str, Any] | None:
        """A BMC of this shard with no network fault (round robin), or None."""
        for _ in range(len(self.bmcs)):
            bmc = self.bmcs[self._probe_cursor % len(self.bmcs)]
            self._probe_cursor += 1
            bits, drop, latency = self.table.read_net_faults(bmc["index"])
            if not bits & FaultBit.UNREACHABLE and not drop and not latency:
                return bmc
        return None

    def probe(self, timeout: float) -> bool | None:
        """Ask one BMC for its auth capabilities; None when no BMC can be probed."""
        target = self.probe_target()
        if target is None:
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.sendto(PROBE_REQUEST, (self.host, target["port"]))
                data, _ = sock.recvfrom(512)
            except OSError:  # timeout, or ICMP port unreachable
                return False
        return len(data) > 20 and data[0] == 6

    def status(self) -> dict[str, Any]:
        """JSON-friendly health report."""
        health = self.table.read_shard(self.shard)
        return {
            "shard": self.shard,
            "pid": self.pid,
            "alive": self.exit_code() is None,
            "ready": self.ready.is_set(),
            "bmcs": len(self.bmcs),
            "ports": [self.bmcs[0]["port"], self.bmcs[-1]["port"]] if self.bmcs else [],
            "heartbeat_age": round(self.heartbeat_age(), 3),
            "errors": health.errors,
            "probe_misses": self.probe_misses,
            "restarts": self.restarts,
            "last_restart": self.last_restart.as_dict() if self.last_restart else None,
        }


def wedge_reason(shard: ShardProcess, probe_timeout: float, max_misses: int,
                 heartbeat_limit: float) -> str | None:
    """Why ``shard`` must be restarted, or None if it is healthy."""
    code = shard.exit_code()
    if code is not None:
        return f"process exited with status {code}"
    if not shard.ready.is_set():
        return None  # still starting; the start timeout covers it
    age = shard.heartbeat_age()
    if age > heartbeat_limit:
        return f"wedged: event loop stalled for {age:.1f} s"
    answered = shard.probe(probe_timeout)
    if answered is False:
        shard.probe_misses += 1
        if shard.probe_misses >= max_misses:
            return f"wedged: no answer to {shard.probe_misses} probes in a row"
    elif answered:
        shard.probe_misses = 0
    return None
