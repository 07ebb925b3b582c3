"""Work done once per key, in the background, across threads and processes; polled by deploy steps.

A deploy step must not hold a worker for a multi-GB download (steps are
short, see STYLE.md "jobs never sleep"), so it *polls*: :func:`poll`
returns the result when it is there, else starts the work in a daemon
thread of this process (unless someone already does it) and says it is
running; the step answers ``Poll`` and asks again a little later.

One run per key, however many deploys and processes want it: the run holds
an exclusive ``flock`` on ``<dir>/<key>.lock`` for as long as it works;
a poll that finds the lock held knows the work is under way elsewhere.  A
run that got the lock first checks whether the result appeared meanwhile
(a concurrent run finished it) and then does nothing.  A process that dies
mid-run drops its lock with it; the next poll starts again.

A failed run leaves ``<dir>/<failure key>.failed`` (the error and when;
the failure key defaults to the key).  Every
poll that began waiting before that failure reports it (all the deploys
that waited for the download fail with the same clear error); a poll that
began after it starts a new run, so a fixed source is tried again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

LOG = logging.getLogger(__name__)
T = TypeVar("T")


class WorkFailed(Exception):
    """The work failed for a reason to tell the user (the message ends up in ``last_error``)."""


@dataclasses.dataclass(frozen=True)
class Running:
    """The work is under way (here or in another process); ``detail`` says how far."""

    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Failed:
    """The run waited for failed with ``error``."""

    error: str


@dataclasses.dataclass
class Flight(Generic[T]):
    """One piece of work: ``done()`` gives its result when there is one, ``work()`` produces it."""

    directory: Path
    key: str
    done: Callable[[], T | None]
    work: Callable[[], None]
    progress: Callable[[], str] = lambda: ""
    #: Whose failures a poll reports (default: the key's): one result may be
    #: produced from several sources (an image from two URLs), each failing its own way.
    failure_key: str = ""

    @property
    def lock_path(self) -> Path:
        return self.directory / f"{self.key}.lock"

    @property
    def failure_path(self) -> Path:
        return self.directory / f"{self.failure_key or self.key}.failed"


_running: set[str] = set()
_running_lock = threading.Lock()


def poll(flight: Flight[T], since: float) -> T | Running | Failed:
    """The result, or the run's failure (one that ended after ``since``), or :class:`Running` (started if need be)."""
    result = flight.done()
    if result is not None:
        return result
    failure = _failure(flight)
    if failure is not None and failure[0] >= since:
        return Failed(failure[1])
    if _held(flight):
        return Running(flight.progress())
    key = str(flight.lock_path)
    with _running_lock:
        if key in _running:
            return Running(flight.progress())
        _running.add(key)
    started = time.time()
    threading.Thread(target=_background, args=(flight, started, key), name=f"image-{flight.key[:16]}",
                     daemon=True).start()
    return Running("starting")


def run(flight: Flight[T]) -> T:
    """Do the work now in this thread (or wait for the run under way); returns the result.

    :raises WorkFailed: this run failed, or one that ended while this one waited for the lock.
    """
    started = time.time()
    _run(flight, started)
    result = flight.done()
    if result is not None:
        return result
    failure = _failure(flight)
    raise WorkFailed(failure[1] if failure else f"{flight.key}: no result and no error recorded")


def _background(flight: Flight[T], started: float, key: str) -> None:
    try:
        _run(flight, started)
    finally:
        with _running_lock:
            _running.discard(key)


def _run(flight: Flight[T], started: float) -> None:
    flight.directory.mkdir(parents=True, exist_ok=True)
    with _locked(flight.lock_path):
        if flight.done() is not None:
            return
        failure = _failure(flight)
        if failure is not None and failure[0] >= started:
            return  # a run this one queued behind failed: its error stands for the waiters
        with contextlib.suppress(FileNotFoundError):
            flight.failure_path.unlink()
        try:
            flight.work()
        except WorkFailed as exc:
            _record_failure(flight, str(exc))
        except Exception as exc:  # a bug must still end the waits, with a failure rather than silence
            LOG.exception("%s failed", flight.key)
            _record_failure(flight, f"internal error ({type(exc).__name__}: {exc}); see the conductor log")


def _record_failure(flight: Flight[T], error: str) -> None:
    LOG.warning("%s: %s", flight.key, error)
    tmp = flight.failure_path.with_name(f".{flight.failure_path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps({"at": time.time(), "error": error}), encoding="utf-8")
    os.replace(tmp, flight.failure_path)


def _failure(flight: Flight[T]) -> tuple[float, str] | None:
    try:
        record = json.loads(flight.failure_path.read_text(encoding="utf-8"))
        return float(record["at"]), str(record["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _held(flight: Flight[T]) -> bool:
    """Whether a run holds the lock right now (in any process)."""
    try:
        fd = os.open(flight.lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
