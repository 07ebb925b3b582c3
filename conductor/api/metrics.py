"""``GET /metrics/fleet``: the deployment's metrics, the same whichever API host is asked.

Counters and histograms recorded by every process of every host (state
changes accepted and refused, request durations, BMC calls, event streams)
are read from the shared Redis hash of :mod:`conductor.metrics`; gauges
(queue depth, drain rate, active requests, live conductors, nodes by
state, the callback backlog) are read at scrape time from Redis and the
database.  Scrape one target for them (the API's load-balanced URL), or
every API host and aggregate with ``max`` (never ``sum``: each host gives
the deployment's whole figure): docs/production.md#metrics.

The host's own figures (HTTP latency) are at ``GET /metrics``
(:mod:`conductor.api.http_metrics`).  :func:`summary` is a few of the same
readings as JSON (``GET /v1/stats``, for the dashboard).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from conductor.context import Context
from conductor.engine.conductors import list_conductors
from conductor.metrics import ACCEPTED, HELP, HISTOGRAMS, REJECTED, recorder
from conductor.models import utcnow
from conductor.service.fleet import callback_backlog, node_counts
from conductor.service.requests import active_counts
from conductor.throttle.drain import DrainMeter


def _stored(ctx: Context) -> dict[str, str]:
    # The client does not decode responses: keys and values are bytes.
    stored = cast("dict[bytes, bytes]", ctx.redis.hgetall(recorder(ctx).key))
    return {k.decode(): v.decode() for k, v in stored.items()}


def _alive(ctx: Context) -> int:
    return sum(1 for c in list_conductors(ctx.db, ctx.settings.heartbeat_timeout) if c["alive"])


def _families(ctx: Context) -> list[Any]:
    raw = _stored(ctx)
    counters: dict[str, Any] = {}
    histograms: dict[tuple[str, str], dict[str, float]] = {}
    for field, value in raw.items():
        kind, name, rest = field.split("|", 2)
        if kind == "c":
            labels = json.loads(rest)
            family = counters.setdefault(name, CounterMetricFamily(name, HELP[name], labels=sorted(labels)))
            family.add_metric([labels[k] for k in sorted(labels)], float(value))
        elif kind == "h" and name in HISTOGRAMS:
            le, tag = rest.split("|", 1)
            histograms.setdefault((name, tag), {})[le] = float(value)
    families: list[Any] = list(counters.values())
    by_name: dict[str, Any] = {}
    for (name, tag), cells in sorted(histograms.items()):
        labels = json.loads(tag)
        family = by_name.setdefault(name, HistogramMetricFamily(name, HELP[name], labels=sorted(labels)))
        running = 0.0
        buckets = []
        for bound in [repr(float(b)) for b in HISTOGRAMS[name]] + ["+Inf"]:
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
    alive.add_metric([], _alive(ctx))
    nodes = GaugeMetricFamily("conductor_nodes", "Nodes, by provision state, power state and maintenance.",
                              labels=["provision_state", "power_state", "maintenance"])
    for (provision, power, maintenance), count in sorted(node_counts(ctx).items()):
        nodes.add_metric([provision, power, str(maintenance).lower()], count)
    backlog = callback_backlog(ctx)
    pending = GaugeMetricFamily("conductor_callback_deliveries_pending",
                                "Callback deliveries not yet delivered nor given up (waiting for a retry, or due).")
    pending.add_metric([], backlog.pending)
    due = GaugeMetricFamily("conductor_callback_deliveries_due",
                            "Pending callback deliveries whose attempt is due now or overdue.")
    due.add_metric([], backlog.due)
    oldest = GaugeMetricFamily("conductor_callback_oldest_pending_seconds",
                               "Age of the oldest pending callback delivery (0: none).")
    oldest.add_metric([], backlog.oldest_seconds)
    return [*families, depth, drain_rate, active, alive, nodes, pending, due, oldest]


def _counter_by(raw: dict[str, str], name: str, label: str) -> dict[str, int]:
    """The counter ``name`` summed by its label ``label``."""
    totals: dict[str, int] = {}
    prefix = f"c|{name}|"
    for field, value in raw.items():
        if field.startswith(prefix):
            key = str(json.loads(field[len(prefix):]).get(label, ""))
            totals[key] = totals.get(key, 0) + int(float(value))
    return totals


def summary(ctx: Context) -> dict[str, Any]:
    """The dashboard's figures (``schemas.Stats``): gauges now, and the two admission counters.

    The counters are totals since the metrics began; a client derives
    per-second rates from two readings and their ``at``.

    :raises redis.RedisError: Redis cannot be reached.
    """
    raw = _stored(ctx)
    return {
        "at": utcnow(),
        "queue_depth": ctx.queue.depth(),
        "drain_rate": DrainMeter(ctx.redis, ctx.settings.redis_namespace).rate(),
        "requests_active": active_counts(ctx),
        "accepted": _counter_by(raw, ACCEPTED, "kind"),
        "rejected": _counter_by(raw, REJECTED, "reason"),
        "conductors_alive": _alive(ctx),
    }


def render(ctx: Context) -> tuple[bytes, str]:
    """The exposition of every metric and its content type.

    :raises redis.RedisError: Redis cannot be reached.
    """
    families = _families(ctx)

    class _Snapshot:
        def collect(self) -> Iterable[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return generate_latest(registry), CONTENT_TYPE_LATEST
