"""Metrics shared by every process: recorded here, served at ``GET /metrics/fleet`` by :mod:`conductor.api.metrics`.

The API runs as several gunicorn processes and the conductors as several
more, on several hosts, and the conductors serve no HTTP: what they count
is the deployment's.  Counters and histograms therefore live in one Redis
hash (``<ns>:metrics``), the same figures whichever API host is scraped;
gauges are read at scrape time; ``prometheus-client`` renders the
exposition.  (An API host's own HTTP latency is per host:
:mod:`conductor.api.http_metrics`.)

What finishes inside a database transaction (a request reaching a final
state, a BMC command of a step) is stashed on the session and written to
Redis only after that transaction commits (:func:`attach` installs the
hook), so a rolled-back step counts nothing.  A conductor's job holds what
its steps' commits recorded until the job ends (:func:`held`): one round
trip a job instead of one a step.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import redis
from sqlalchemy.orm import Session

from conductor import keys

if TYPE_CHECKING:
    from conductor.context import Context
    from conductor.models import Request

LOG = logging.getLogger(__name__)

REQUEST_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BMC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

ACCEPTED = "conductor_requests_accepted"
REJECTED = "conductor_requests_rejected"
REQUEST_DURATION = "conductor_request_duration_seconds"
BMC_DURATION = "conductor_bmc_command_duration_seconds"
BMC_ERRORS = "conductor_bmc_command_errors"
EVENT_STREAMS_OPENED = "conductor_event_streams_opened"
EVENT_STREAMS_CLOSED = "conductor_event_streams_closed"
EVENT_STREAMS_DROPPED = "conductor_event_streams_dropped"

HISTOGRAMS = {REQUEST_DURATION: REQUEST_BUCKETS, BMC_DURATION: BMC_BUCKETS}
HELP = {
    ACCEPTED: "State changes accepted (202), by kind.",
    REJECTED: "State changes refused, by reason (the error code).",
    REQUEST_DURATION: "Time from acceptance to a final state, by kind and outcome.",
    BMC_DURATION: "Time of one call to a BMC through a driver, by driver and command.",
    BMC_ERRORS: "BMC calls that failed, by driver and command.",
    EVENT_STREAMS_OPENED: "Event streams opened (GET /v1/events).",
    EVENT_STREAMS_CLOSED: "Event streams ended, by reason (client_gone, slow_consumer, token_revoked, "
                          "server_stopping).",
    EVENT_STREAMS_DROPPED: "Event streams whose client fell too far behind: their buffer was freed at once.",
}
_STASH = "conductor.metrics"


def _labels(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


class Recorder:
    """Writes counters and histogram observations into Redis."""

    def __init__(self, connection: redis.Redis, namespace: str) -> None:
        self.connection = connection
        self.key = keys.metrics(namespace)

    def write(self, counters: Iterable[tuple[str, dict[str, str], int]] = (),
              observations: Iterable[tuple[str, dict[str, str], float]] = ()) -> None:
        """Add to counters and observe values, in one round trip (best effort: logged on failure)."""
        pipe = self.connection.pipeline(transaction=False)
        for name, labels, amount in counters:
            pipe.hincrby(self.key, f"c|{name}|{_labels(labels)}", amount)
        for name, labels, value in observations:
            bounds = HISTOGRAMS[name]
            index = bisect.bisect_left(bounds, value)
            le = "+Inf" if index == len(bounds) else repr(float(bounds[index]))
            tag = _labels(labels)
            pipe.hincrby(self.key, f"h|{name}|{le}|{tag}", 1)
            pipe.hincrbyfloat(self.key, f"h|{name}|sum|{tag}", value)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            LOG.warning("Could not record metrics: %s", exc)

    def inc(self, name: str, labels: dict[str, str], amount: int = 1) -> None:
        """Add ``amount`` to a counter."""
        self.write(counters=[(name, labels, amount)])


def recorder(ctx: Context) -> Recorder:
    """The recorder of ``ctx``'s deployment."""
    return Recorder(ctx.redis, ctx.settings.redis_namespace)


# -- what happens inside transactions ---------------------------------------------------

def _stash(session: Session) -> list[tuple[str, dict[str, str], float]]:
    return session.info.setdefault(_STASH, [])  # type: ignore[no-any-return]


def request_finished(session: Session, request: Request) -> None:
    """Observe the duration of ``request``, which reaches its final state in this transaction."""
    if request.created_at is None or request.finished_at is None:
        return
    seconds = max(0.0, (request.finished_at - request.created_at).total_seconds())
    _stash(session).append((REQUEST_DURATION, {"kind": request.kind, "outcome": request.state}, seconds))


#: Per thread: the Redis key whose committed records :func:`held` holds, and the records.
_held = threading.local()


def _write(sink: Recorder, stashed: list[tuple[str, dict[str, str], float]]) -> None:
    counters = [(BMC_ERRORS, labels, 1) for name, labels, _value in stashed if name == BMC_ERRORS]
    sink.write(counters, [item for item in stashed if item[0] != BMC_ERRORS])


@contextlib.contextmanager
def held(ctx: Context) -> Iterator[None]:
    """Within: what this thread's committed transactions of ``ctx`` recorded is written once, at the end.

    For a conductor's job (several steps, each its own commit).  Best
    effort, as every write here: a process killed meanwhile loses them.
    """
    sink = recorder(ctx)
    records: list[tuple[str, dict[str, str], float]] = []
    _held.key, _held.records = sink.key, records
    try:
        yield
    finally:
        _held.key, _held.records = None, None
        if records:
            _write(sink, records)


def attach(ctx: Context) -> None:
    """Write what sessions of ``ctx`` stashed once their transaction commits."""
    sink = recorder(ctx)

    def after_commit(session: Session) -> None:
        stashed = session.info.pop(_STASH, None)
        if not stashed:
            return
        if getattr(_held, "key", None) == sink.key:
            _held.records.extend(stashed)
            return
        _write(sink, stashed)

    def after_rollback(session: Session) -> None:
        session.info.pop(_STASH, None)

    ctx.db.listen("after_commit", after_commit)
    ctx.db.listen("after_rollback", after_rollback)
    ctx.db.listen("after_soft_rollback", lambda session, _previous: after_rollback(session))


def stash(session: Session, name: str, labels: dict[str, str], value: float) -> None:
    """Record an observation (or, for :data:`BMC_ERRORS`, a count of 1) once ``session`` commits."""
    _stash(session).append((name, labels, value))
