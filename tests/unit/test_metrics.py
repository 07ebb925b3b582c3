"""Metrics recorded after commit, shared through Redis, counted for BMC failures too."""

from __future__ import annotations

from conductor import metrics
from tests.conftest import drain


def test_bmc_errors_and_failed_requests_are_counted(client, ctx, conductor_ctx) -> None:
    client.post("/v1/nodes", json={"name": "bad", "driver": "fake", "driver_info": {"fake_fail": "no BMC"}})
    client.put("/v1/nodes/bad/states/power", json={"target": "power on"})
    drain(conductor_ctx)
    text = client.get("/metrics/fleet").get_data(as_text=True)
    assert 'conductor_bmc_command_errors_total{command="set_power_state",driver="fake"} 1.0' in text
    assert 'conductor_request_duration_seconds_count{kind="power",outcome="failed"} 1.0' in text


def test_a_rolled_back_transaction_records_nothing(ctx) -> None:
    import sqlalchemy as sa

    from conductor.models import Request, utcnow

    with ctx.db.session() as session:
        session.execute(sa.text("SELECT 1"))
        request = Request(kind="power", state="succeeded", created_at=utcnow(), finished_at=utcnow())
        metrics.request_finished(session, request)
        session.rollback()
        session.commit()
    assert ctx.redis.hgetall(metrics.recorder(ctx).key) == {}


def test_a_job_writes_the_metrics_of_its_steps_once_it_ends(client, conductor_ctx, monkeypatch) -> None:
    from conductor.engine import jobs

    request_ids = []
    for name in ("n1", "n2"):
        client.post("/v1/nodes", json={"name": name, "driver": "fake"})
        request_ids.append(client.put(f"/v1/nodes/{name}/states/power", json={"target": "power on"}).get_json()["id"])
    conductor_ctx.queue.queue.empty()
    monkeypatch.setattr(jobs, "_context", conductor_ctx)
    writes = []
    real_write = metrics.Recorder.write

    def spy(self, counters=(), observations=()):  # type: ignore[no-untyped-def]
        writes.append(sorted(name for name, _labels, _value in observations))
        real_write(self, counters, observations)

    monkeypatch.setattr(metrics.Recorder, "write", spy)
    jobs.run_steps(request_ids)
    # One write for the job's two steps, once it ended: their BMC calls and the requests' durations.
    assert len(writes) == 1
    assert writes[0].count(metrics.REQUEST_DURATION) == 2 and metrics.BMC_DURATION in writes[0]
    text = client.get("/metrics/fleet").get_data(as_text=True)
    assert 'conductor_request_duration_seconds_count{kind="power",outcome="succeeded"} 2.0' in text
    assert 'conductor_bmc_command_duration_seconds_count{command="set_power_state",driver="fake"} 2.0' in text


def test_histogram_buckets_are_cumulative(client, ctx) -> None:
    sink = metrics.recorder(ctx)
    sink.write(observations=[(metrics.BMC_DURATION, {"driver": "d", "command": "c"}, v) for v in (0.004, 0.03, 20)])
    text = client.get("/metrics/fleet").get_data(as_text=True)
    assert 'conductor_bmc_command_duration_seconds_bucket{command="c",driver="d",le="0.005"} 1.0' in text
    assert 'conductor_bmc_command_duration_seconds_bucket{command="c",driver="d",le="0.05"} 2.0' in text
    assert 'conductor_bmc_command_duration_seconds_bucket{command="c",driver="d",le="+Inf"} 3.0' in text
    assert 'conductor_bmc_command_duration_seconds_count{command="c",driver="d"} 3.0' in text


# --- GET /metrics (this host's HTTP calls) and GET /metrics/fleet (the deployment) -------------

def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def http_count(text: str, method: str, route: str, status: str) -> float:
    key = ("conductor_http_request_duration_seconds_count",
           tuple(sorted({"method": method, "route": route, "status": status}.items())))
    return samples(text).get(key, 0.0)


def test_http_latency_by_method_route_and_status_class(client, anonymous) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    for _ in range(3):
        assert client.get("/v1/nodes/n1").status_code == 200
    assert client.get("/v1/nodes/nope").status_code == 404
    assert client.get("/no/such/thing").status_code == 404
    assert anonymous.get("/v1/nodes").status_code == 401
    text = client.get("/metrics").get_data(as_text=True)
    assert http_count(text, "GET", "/v1/nodes/<ident>", "2xx") == 3
    assert http_count(text, "GET", "/v1/nodes/<ident>", "4xx") == 1
    assert http_count(text, "POST", "/v1/nodes", "2xx") == 1
    # Refused before any view (admission) still counts; random URLs add no series of their own.
    assert http_count(text, "GET", "/v1/nodes", "4xx") == 1
    assert http_count(text, "GET", "unmatched", "4xx") == 1
    parsed = samples(text)
    bucket = ("conductor_http_request_duration_seconds_bucket",
              (("le", "+Inf"), ("method", "GET"), ("route", "/v1/nodes/<ident>"), ("status", "2xx")))
    assert parsed[bucket] == 3
    # This host's figures only: nothing of the deployment's (those are at /metrics/fleet).
    assert not any(name.startswith(("conductor_queue", "conductor_nodes", "conductor_requests"))
                   for name, _labels in parsed)


def test_fleet_metrics_count_nodes_by_state(client, conductor_ctx) -> None:
    for name in ("a", "b", "c"):
        client.post("/v1/nodes", json={"name": name, "driver": "fake"})
    client.put("/v1/nodes/a/states/power", json={"target": "power on"})
    client.patch("/v1/nodes/c", json={"maintenance": True})
    drain(conductor_ctx)
    parsed = samples(client.get("/metrics/fleet").get_data(as_text=True))
    nodes = {labels: value for (name, labels), value in parsed.items() if name == "conductor_nodes"}
    assert sum(nodes.values()) == 3
    assert sum(v for labels, v in nodes.items() if dict(labels)["maintenance"] == "true") == 1
    assert sum(v for labels, v in nodes.items()
               if dict(labels)["power_state"] == "power on" and dict(labels)["maintenance"] == "false") == 1
    assert {dict(labels)["provision_state"] for labels in nodes} == {"enroll"}
    assert not any(name.startswith("conductor_http_") for name, _labels in parsed)


def test_fleet_metrics_show_the_callback_backlog(client, ctx) -> None:
    import datetime as dt

    from conductor.models import CallbackDelivery, utcnow

    now = utcnow()
    with ctx.db.session() as session:
        for i, (state, next_at, age) in enumerate([("pending", now - dt.timedelta(seconds=5), 300),
                                                   ("pending", now + dt.timedelta(hours=1), 60),
                                                   ("delivered", None, 900), ("failed", None, 1200)]):
            session.add(CallbackDelivery(webhook_id=f"msg_{i}", event_type="node.provision", url="http://x/",
                                         body="{}", state=state, next_at=next_at,
                                         created_at=now - dt.timedelta(seconds=age)))
        session.commit()
    parsed = samples(client.get("/metrics/fleet").get_data(as_text=True))
    assert parsed[("conductor_callback_deliveries_pending", ())] == 2
    assert parsed[("conductor_callback_deliveries_due", ())] == 1
    assert 300 <= parsed[("conductor_callback_oldest_pending_seconds", ())] < 400
