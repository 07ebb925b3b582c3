"""The processes a test run started, found in /proc (Linux).

Every process the tests start carries ``CONDUCTOR_TEST_RUN=<this run's id>``
in its environment (conftest sets it in ``os.environ`` before any test, and
children inherit it), so a process is found even after its parent died and
it was re-parented to PID 1.  Descendants of the pytest process count too
(in case a test gave a child an environment of its own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

from conductor.procs import ProcessRecord

MARKER = "CONDUCTOR_TEST_RUN"
RUN_ID = os.environ.get(MARKER) or uuid.uuid4().hex
# Under pytest-xdist each worker is a run of its own: a worker must not count
# the processes of a test running beside it in another worker as its own.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER and not RUN_ID.endswith(f"-{_WORKER}"):
    RUN_ID = f"{RUN_ID}-{_WORKER}"


def mark_this_run() -> None:
    """Make every process started from now on carry this run's marker."""
    os.environ[MARKER] = RUN_ID


def _ppids() -> dict[int, int]:
    ppids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppids[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return ppids


def _marked(pid: int) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER}={RUN_ID}".encode() in environ.split(b"\0")


def descendants(root: int, ppids: dict[int, int] | None = None) -> list[ProcessRecord]:
    """The running descendants of ``root`` (children, their children, ...)."""
    ppids = _ppids() if ppids is None else ppids
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        record = ProcessRecord.of(_name(pid), pid)
        if record is not None:
            found.append(record)
        todo += children.get(pid, [])
    return found


def ours() -> dict[tuple[int, int], ProcessRecord]:
    """Every running process this test run started (marked, or below pytest), but pytest itself.

    Keyed by (pid, start time): a process's name changes when it execs.
    """
    ppids = _ppids()
    me = os.getpid()
    found = {(r.pid, r.started): r for r in descendants(me, ppids)}
    for pid in ppids:
        if pid != me and _marked(pid):
            record = ProcessRecord.of(_name(pid), pid)
            if record is not None:
                found[(record.pid, record.started)] = record
    return found


def wait_gone(records: list[ProcessRecord], timeout: float) -> list[ProcessRecord]:
    """Poll until none of ``records`` runs or ``timeout`` s passed; returns those still running."""
    deadline = time.monotonic() + timeout
    while True:
        running = [r for r in records if r.is_running()]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.05)


def kill(records: list[ProcessRecord]) -> None:
    """SIGKILL ``records`` that still run (checked by start time: pids are reused)."""
    for record in records:
        if record.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)


def describe(records: list[ProcessRecord]) -> str:
    return ", ".join(f"{r.pid} ({r.name})" for r in sorted(records, key=lambda r: r.pid))


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return "?"
