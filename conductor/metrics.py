"""Metrics shared by every process, served at ``GET /metrics`` (Prometheus text format).

The API runs as several gunicorn processes and the conductors as several
more, so per-process counters would be wrong whichever process a scrape
reaches.  Counters and histograms therefore live in one Redis hash
(``<ns>:metrics``); gauges are read at scrape time; ``prometheus-client``
renders the exposition.

What finishes inside a database transaction (a request reaching a final
state, a BMC command of a step) is stashed on the session and written to
Redis only after that transaction commits (:func:`attach` installs the
hook), so a rolled-back step counts nothing.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy.orm import Session

from conductor.drivers.base import TryLater

if TYPE_CHECKING:
    from conductor.context import Context
    from conductor.drivers.base import Driver
    from conductor.models import Request

LOG = logging.getLogger(__name__)

REQUEST_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BMC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

ACCEPTED = "conductor_requests_accepted"
REJECTED = "conductor_requests_rejected"
REQUEST_DURATION = "conductor_request_duration_seconds"
BMC_DURATION = "conductor_bmc_command_duration_seconds"
BMC_ERRORS = "conductor_bmc_command_errors"

_HISTOGRAMS = {REQUEST_DURATION: REQUEST_BUCKETS, BMC_DURATION: BMC_BUCKETS}
_HELP = {
    ACCEPTED: "State changes accepted (202), by kind.",
    REJECTED: "State changes refused, by reason (the error code).",
    REQUEST_DURATION: "Time from acceptance to a final state, by kind and outcome.",
    BMC_DURATION: "Time of one call to a BMC through a driver, by driver and command.",
    BMC_ERRORS: "BMC calls that failed, by driver and command.",
}
_STASH = "conductor.metrics"


def _labels(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


class Recorder:
    """Writes counters and histogram observations into Redis."""

    def __init__(self, connection: redis.Redis, namespace: str) -> None:
        self.connection = connection
        self.key = f"{namespace}:metrics"

    def write(self, counters: Iterable[tuple[str, dict[str, str], int]] = (),
              observations: Iterable[tuple[str, dict[str, str], float]] = ()) -> None:
        """Add to counters and observe values, in one round trip (best effort: logged on failure)."""
        pipe = self.connection.pipeline(transaction=False)
        for name, labels, amount in counters:
            pipe.hincrby(self.key, f"c|{name}|{_labels(labels)}", amount)
        for name, labels, value in observations:
            bounds = _HISTOGRAMS[name]
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


def attach(ctx: Context) -> None:
    """Write what sessions of ``ctx`` stashed once their transaction commits."""
    sink = recorder(ctx)

    def after_commit(session: Session) -> None:
        stashed = session.info.pop(_STASH, None)
        if not stashed:
            return
        counters = [(BMC_ERRORS, labels, 1) for name, labels, value in stashed if name == BMC_ERRORS]
        sink.write(counters, [item for item in stashed if item[0] != BMC_ERRORS])

    def after_rollback(session: Session) -> None:
        session.info.pop(_STASH, None)

    ctx.db.listen("after_commit", after_commit)
    ctx.db.listen("after_rollback", after_rollback)
    ctx.db.listen("after_soft_rollback", lambda session, _previous: after_rollback(session))


class _TimedInterface:
    """Times every call of a BMC-facing driver interface (``validate`` excepted)."""

    def __init__(self, interface: Any, driver: str, session: Session) -> None:
        self._interface = interface
        self._driver = driver
        self._session = session

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._interface, name)
        if name.startswith("_") or name == "validate" or not callable(attribute):
            return attribute
        return self._timed(name, attribute)

    def _timed(self, command: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            labels = {"driver": self._driver, "command": command}
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            except TryLater:
                raise  # busy or paced: not an error of the BMC
            except Exception:
                _stash(self._session).append((BMC_ERRORS, labels, 1))
                raise
            finally:
                _stash(self._session).append((BMC_DURATION, labels, time.perf_counter() - started))

        return timed


def timed_driver(driver: Driver, session: Session) -> Driver:
    """``driver`` with its power and management calls (the BMC's) timed into ``session``."""
    management = driver.management
    return dataclasses.replace(
        driver,
        power=_TimedInterface(driver.power, driver.name, session),  # type: ignore[arg-type]
        management=(
            _TimedInterface(management, driver.name, session)  # type: ignore[arg-type]
            if management is not None
            else None
        ),
    )


# -- the scrape ------------------------------------------------------------------------

def _families(ctx: Context) -> list[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    from conductor.engine.conductors import list_conductors
    from conductor.service.requests import active_counts
    from conductor.throttle.drain import DrainMeter

    raw = {k.decode(): v.decode() for k, v in ctx.redis.hgetall(recorder(ctx).key).items()}
    counters: dict[str, Any] = {}
    histograms: dict[tuple[str, str], dict[str, float]] = {}
    for field, value in raw.items():
        kind, name, rest = field.split("|", 2)
        if kind == "c":
            labels = json.loads(rest)
            family = counters.setdefault(name, CounterMetricFamily(name, _HELP[name], labels=sorted(labels)))
            family.add_metric([labels[k] for k in sorted(labels)], float(value))
        elif kind == "h" and name in _HISTOGRAMS:
            le, tag = rest.split("|", 1)
            histograms.setdefault((name, tag), {})[le] = float(value)
    families: list[Any] = list(counters.values())
    by_name: dict[str, Any] = {}
    for (name, tag), cells in sorted(histograms.items()):
        labels = json.loads(tag)
        family = by_name.setdefault(name, HistogramMetricFamily(name, _HELP[name], labels=sorted(labels)))
        running = 0.0
        buckets = []
        for bound in [repr(float(b)) for b in _HISTOGRAMS[name]] + ["+Inf"]:
            running += cells.get(bound, 0.0)
            buckets.append((bound, running))
        family.add_metric([labels[k] for k in sorted(labels)], buckets, sum_value=cells.get("sum", 0.0))
    families += by_name.values()

    depth = GaugeMetricFamily("conductor_queue_depth", "Jobs waiting in the work queue.")
    depth.add_metric([], ctx.queue.depth())
    drain_rate = GaugeMetricFamily(
        "conductor_queue_drain_rate", "Jobs completed per second (moving average, all conductors)."
    )
    drain_rate.add_metric([], DrainMeter(ctx.redis, ctx.settings.redis_namespace).rate())
    active = GaugeMetricFamily("conductor_requests_active", "Requests not finished, by state.", labels=["state"])
    for state, count in active_counts(ctx).items():
        active.add_metric([state], count)
    alive = GaugeMetricFamily("conductor_conductors_alive", "Conductors whose heartbeat is recent.")
    alive.add_metric([], sum(1 for c in list_conductors(ctx.db, ctx.settings.heartbeat_timeout) if c["alive"]))
    return families + [depth, drain_rate, active, alive]


def render(ctx: Context) -> tuple[bytes, str]:
    """The exposition of every metric and its content type.

    :raises redis.RedisError: Redis cannot be reached.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    families = _families(ctx)

    class _Snapshot:
        def collect(self) -> Iterable[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
