"""Small facts about processes of this host, and tying a child's life to its parent's.

``conductor up`` must take its whole tree down with it, whatever kills it
(a SIGKILL included).  Two mechanisms, both Linux:

* :func:`die_with_parent` is a ``preexec_fn`` that asks the kernel to send
  SIGTERM to the child when its parent dies (``PR_SET_PDEATHSIG``), then
  checks that the parent is still the one expected (it may have died
  between ``fork`` and ``prctl``);
* :func:`exit_with_parent` does the same from inside a process, plus a
  thread that notices the parent is gone (for grandchildren that no
  ``preexec_fn`` reached, and as a fallback) and makes sure the process
  exits within a grace period.

:func:`start_time` and :class:`ProcessRecord` identify a process beyond
its pid (pids are reused), so that a newcomer can kill the orphans of a
predecessor and nothing else.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

LOG = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
#: How often :func:`exit_with_parent`'s thread looks at its parent.
PARENT_CHECK_INTERVAL = 0.5
#: How long a process whose parent died may take to stop cleanly before it is ended.
ORPHAN_GRACE = 15.0


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: the parent-watch thread still works
        return None


# Loaded in the parent: a preexec_fn should not have to load a library.
_LIBC = _libc()


def set_parent_death_signal(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel for ``signum`` when this process's parent dies; False if unsupported."""
    return _LIBC is not None and _LIBC.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def _parent_death_signal() -> int:
    if _LIBC is None:
        return 0
    value = ctypes.c_int(0)
    if _LIBC.prctl(_PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0) != 0:
        return 0
    return value.value


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent_pid`` dies (or exits at once if it already has)."""

    def preexec() -> None:  # pragma: no cover - runs in the child, between fork and exec
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def exit_with_parent(parent_pid: int, grace: float = ORPHAN_GRACE) -> None:
    """Stop this process when ``parent_pid`` (its parent) dies.

    Sets the parent-death signal (SIGTERM: the process's own handler stops
    it cleanly), exits at once if the parent is already gone, and starts a
    daemon thread that notices a new parent pid; it sends SIGTERM itself if
    the kernel did not, and ends the process ``grace`` seconds later if the
    clean stop has not.
    """
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:
        LOG.error("Parent process %d is gone; exiting", parent_pid)
        raise SystemExit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_INTERVAL)
        LOG.error("Parent process %d is gone; stopping", parent_pid)
        if _parent_death_signal() != signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        LOG.error("Still running %.0f s after parent %d died; exiting now", grace, parent_pid)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from /proc); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped: nothing left to stop
        return None
    return int(fields[19])  # field 22, starttime


def boot_id() -> str:
    """This boot of this host (start times count from it)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclasses.dataclass(frozen=True)
class ProcessRecord:
    """A process identified beyond its pid: pid, start time and boot."""

    name: str
    pid: int
    started: int
    boot: str

    @classmethod
    def of(cls, name: str, pid: int) -> ProcessRecord | None:
        """The record of live process ``pid``; None if it is gone."""
        started = start_time(pid)
        return None if started is None else cls(name, pid, started, boot_id())

    def is_running(self) -> bool:
        """Whether this very process (not another with its pid) still runs."""
        return self.boot == boot_id() and start_time(self.pid) == self.started


def kill_tree(records: list[ProcessRecord], grace: float) -> list[ProcessRecord]:
    """SIGTERM the process groups of ``records`` that still run, SIGKILL them after ``grace`` s.

    Each record names a process-group leader (children started with a new
    session), so its own children (gunicorn's workers) go with it.
    Returns the records that were running.
    """
    running = [r for r in records if r.is_running()]
    for record in running:
        _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(r.is_running() for r in running):
        time.sleep(0.05)
    for record in running:
        if record.is_running():
            _signal_group(record.pid, signal.SIGKILL)
    return running


def _signal_group(pid: int, signum: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass
