"""What a Prometheus scrape costs: ``GET /metrics/fleet`` with N nodes and M callback deliveries, and
``GET /metrics`` with the series of a busy API.

In this process (Flask's test client: the cost of rendering, not of
HTTP), on a fresh SQLite database and an embedded Redis:

* N nodes spread over provision and power states, M callback deliveries
  of which a tenth are pending (half of those due);
* the counters and histograms of the deployment as a day of work leaves
  them (every driver command and request kind observed);
* for ``/metrics``, calls to every route of the API (each a series of
  the latency histogram).

Prints the median and the 95th percentile of R scrapes of each, and their
size.

    python bench/metrics_scrape.py --nodes 1000 --deliveries 100000
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from conductor import database, metrics
from conductor.api import create_app
from conductor.bootstrap import build_context
from conductor.embedded_redis import EmbeddedRedis
from conductor.models import CallbackDelivery, Node, utcnow
from conductor.settings import load

PROVISION = ("available", "active", "deploying", "wait call-back", "manageable", "enroll", "deploy failed")
POWER = ("power on", "power off", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        redis = EmbeddedRedis(data_dir, persist=False).start()
        try:
            settings = load({"data_dir": data_dir, "redis_url": redis.url, "auth_enabled": False}, env={})
            database.upgrade(settings.sqlalchemy_url)
            ctx = build_context(settings)
            _fill(ctx, args.nodes, args.deliveries)
            client = create_app(ctx=ctx).test_client()
            for path in ("/", "/v1/nodes?limit=1", "/v1/requests?limit=1", "/v1/conductors", "/v1/stats",
                         "/v1/nodes/x", "/v1/images", "/v1/subscriptions", "/nothing"):
                client.get(path)
            for path in ("/metrics/fleet", "/metrics"):
                times = []
                for _ in range(args.scrapes):
                    began = time.perf_counter()
                    body = client.get(path).get_data()
                    times.append(time.perf_counter() - began)
                times.sort()
                p95 = times[int(len(times) * 0.95) - 1]
                print(f"{path:15} {args.nodes} nodes, {args.deliveries} deliveries: median "
                      f"{statistics.median(times) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, {len(body)} bytes")
            ctx.close()
        finally:
            redis.stop()


def _fill(ctx, nodes: int, deliveries: int) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    with ctx.db.session() as session:
        session.add_all(Node(uuid=str(uuid.uuid4()), name=f"n{i}", driver="fake",
                             provision_state=PROVISION[i % len(PROVISION)], power_state=POWER[i % len(POWER)],
                             maintenance=i % 50 == 0) for i in range(nodes))
        for start in range(0, deliveries, 5000):
            session.add_all(CallbackDelivery(
                webhook_id=f"msg_{i}", event_type="node.provision", url="http://receiver/", body="{}",
                state="pending" if i % 10 == 0 else "delivered",
                next_at=now + dt.timedelta(seconds=(-5 if i % 20 == 0 else 60)) if i % 10 == 0 else None,
                created_at=now - dt.timedelta(seconds=i % 3600)) for i in range(start, min(start + 5000, deliveries)))
            session.flush()
        session.commit()
    sink = metrics.recorder(ctx)
    sink.write(
        counters=[(metrics.ACCEPTED, {"kind": kind}, 100) for kind in ("power", "provision", "boot_device")],
        observations=[(metrics.BMC_DURATION, {"driver": driver, "command": command}, 0.05)
                      for driver in ("ipmi", "redfish", "fake")
                      for command in ("set_power_state", "get_power_state", "set_boot_device")]
        + [(metrics.REQUEST_DURATION, {"kind": kind, "outcome": outcome}, 30.0)
           for kind in ("power", "provision") for outcome in ("succeeded", "failed", "cancelled")],
    )


if __name__ == "__main__":
    main()
