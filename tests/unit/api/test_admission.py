"""Throttling over the API: 503 rate_limited / queue_full, Idempotency-Key, the throttle knobs."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import sqlalchemy as sa

from conductor.api import admission
from conductor.models import NodeHistory, Request
from conductor.throttle import settings as throttle_settings
from tests.conftest import bearer, drain, make_token
from tests.unit.throttle.test_buckets import count_round_trips


@pytest.fixture
def nodes(client):  # type: ignore[no-untyped-def]
    for i in range(4):
        assert client.post("/v1/nodes", json={"name": f"n{i}", "driver": "fake"}).status_code == 201
    return [f"n{i}" for i in range(4)]


def power_on(client, node, **kwargs):  # type: ignore[no-untyped-def]
    return client.put(f"/v1/nodes/{node}/states/power", json={"target": "power on"}, **kwargs)


def test_over_the_client_budget_is_503_rate_limited_with_retry_after(client, ctx, nodes) -> None:
    throttle_settings.update(ctx, {"client_write_rate": 0.5, "client_write_burst": 2})
    assert [power_on(client, n).status_code for n in nodes[:2]] == [202, 202]
    refused = power_on(client, nodes[2])
    assert refused.status_code == 503
    assert refused.json["code"] == "rate_limited" and "client-write" in refused.json["message"]
    assert refused.headers["Retry-After"] == "2" and refused.json["retry_after"] == 2
    assert refused.headers["RateLimit"].endswith('"client-write";r=0;t=4')
    assert '"client-write";q=2;w=4' in refused.headers["RateLimit-Policy"]
    # Another client has its own budget.
    assert power_on(client, nodes[2], headers=bearer(make_token(ctx, "operator"))).status_code == 202
    # Honest: waiting Retry-After seconds is enough.
    time.sleep(int(refused.headers["Retry-After"]))
    assert power_on(client, nodes[3]).status_code == 202


def test_reads_have_their_own_budget(client, ctx, nodes) -> None:
    throttle_settings.update(ctx, {"client_write_rate": 0.01, "client_write_burst": 1,
                                   "read_rate": 0.01, "read_burst": 3})
    assert power_on(client, nodes[0]).status_code == 202
    assert power_on(client, nodes[1]).json["code"] == "rate_limited"
    statuses = [client.get("/v1/nodes").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 503]


def test_every_throttled_response_carries_ratelimit_headers(client, nodes) -> None:
    for response in (client.get("/v1/nodes"), power_on(client, nodes[0]), client.get("/v1/requests/nope")):
        assert "RateLimit" in response.headers and "RateLimit-Policy" in response.headers
    assert "RateLimit" not in client.get("/").headers


def test_queue_full_is_503_and_records_nothing(client, ctx, nodes) -> None:
    throttle_settings.update(ctx, {"max_queue_depth": 2})
    accepted = [power_on(client, n) for n in nodes[:2]]
    assert [r.status_code for r in accepted] == [202, 202]
    with ctx.db.session() as session:
        history_before = session.scalar(sa.select(sa.func.count()).select_from(NodeHistory))
    refused = power_on(client, nodes[2])
    assert refused.status_code == 503 and refused.json["code"] == "queue_full"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "nothing was recorded" in refused.json["message"]
    with ctx.db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Request)) == 2
        assert session.scalar(sa.select(sa.func.count()).select_from(NodeHistory)) == history_before
    assert ctx.queue.depth() == 2
    assert client.get(f"/v1/nodes/{nodes[2]}/states").json["request_id"] is None
    # Other writes (no new work) are not refused for depth.
    assert client.patch(f"/v1/nodes/{nodes[2]}", json={"properties": {"rack": 1}}).status_code == 200


def test_queue_drains_then_accepts_again(client, ctx, conductor_ctx, nodes) -> None:
    throttle_settings.update(ctx, {"max_queue_depth": 1})
    assert power_on(client, nodes[0]).status_code == 202
    assert power_on(client, nodes[1]).json["code"] == "queue_full"
    drain(conductor_ctx)
    ctx.queue.queue.empty()  # drain() runs steps without RQ; drop the jobs it ran
    assert power_on(client, nodes[1]).status_code == 202


def test_an_abort_is_never_refused_for_depth(client, ctx, nodes) -> None:
    throttle_settings.update(ctx, {"max_queue_depth": 1})
    assert power_on(client, nodes[0]).status_code == 202
    with ctx.db.begin() as session:
        session.execute(sa.text("UPDATE nodes SET provision_state = 'clean wait' WHERE name = 'n1'"))
    response = client.put("/v1/nodes/n1/states/provision", json={"target": "abort"})
    assert response.status_code == 202, response.json


def test_idempotency_key_replays_and_refuses_another_body(client, ctx, conductor_ctx, nodes) -> None:
    headers = {"Idempotency-Key": '"op-42"'}
    first = power_on(client, nodes[0], headers=headers)
    assert first.status_code == 202
    drain(conductor_ctx)
    again = power_on(client, nodes[0], headers=headers)
    assert again.status_code == 202
    assert again.json["id"] == first.json["id"] and again.json["state"] == "succeeded"
    assert again.headers["Location"] == first.headers["Location"]
    other = client.put(f"/v1/nodes/{nodes[0]}/states/power", json={"target": "power off"}, headers=headers)
    assert other.status_code == 422
    assert other.json["code"] == "idempotency_key_reused" and other.json["request_id"] == first.json["id"]
    # Same key from another client is another key.
    theirs = power_on(client, nodes[0], headers={**headers, **bearer(make_token(ctx, "operator"))})
    assert theirs.status_code == 202 and theirs.json["id"] != first.json["id"]
    assert client.put(f"/v1/nodes/{nodes[1]}/states/power", json={"target": "power on"},
                      headers={"Idempotency-Key": ""}).json["code"] == "validation_error"


def test_a_replay_is_answered_even_when_the_queue_is_full(client, ctx, nodes) -> None:
    throttle_settings.update(ctx, {"max_queue_depth": 1})
    first = power_on(client, nodes[0], headers={"Idempotency-Key": "k"})
    assert power_on(client, nodes[1]).json["code"] == "queue_full"
    again = power_on(client, nodes[0], headers={"Idempotency-Key": "k"})
    assert again.status_code == 202 and again.json["id"] == first.json["id"]


def test_throttle_is_shown_and_changed_by_admins(client, ctx) -> None:
    shown = client.get("/v1/throttle").json
    assert shown == throttle_settings.Throttle().to_dict()
    changed = client.patch("/v1/throttle", json={"write_rate": 25, "bmc_min_interval": 0.2})
    assert changed.status_code == 200
    assert changed.json["write_rate"] == 25 and changed.json["bmc_min_interval"] == 0.2
    assert client.get("/v1/throttle").json == changed.json
    assert throttle_settings.current(ctx).bmc_min_interval == 0.2


@pytest.mark.parametrize("body", [{"write_rate": -1}, {"speed": 1}, {"write_burst": 1.5}, {"write_burst": 0}])
def test_bad_throttle_changes_are_400(client, body) -> None:
    response = client.patch("/v1/throttle", json=body)
    assert response.status_code == 400 and response.json["code"] == "validation_error"
    assert client.get("/v1/throttle").json == client.get("/v1/throttle").json


def test_metrics_are_prometheus_text(client, ctx, conductor_ctx, nodes) -> None:
    throttle_settings.update(ctx, {"max_queue_depth": 3})
    power_on(client, nodes[0])
    power_on(client, nodes[1])
    client.put(f"/v1/nodes/{nodes[0]}/states/power", json={"target": "power off"})
    throttle_settings.update(ctx, {"max_queue_depth": 2})
    power_on(client, nodes[2])
    power_on(client, nodes[3])
    response = client.get("/metrics/fleet")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert 'conductor_requests_accepted_total{kind="power"} 2.0' in text
    assert 'conductor_requests_rejected_total{reason="queue_full"} 2.0' in text
    assert 'conductor_requests_rejected_total{reason="transition_in_progress"} 1.0' in text
    assert "conductor_queue_depth 2.0" in text
    assert 'conductor_requests_active{state="queued"} 2.0' in text
    assert "conductor_conductors_alive 1.0" in text
    drain(conductor_ctx)
    text = client.get("/metrics/fleet").get_data(as_text=True)
    assert 'conductor_request_duration_seconds_count{kind="power",outcome="succeeded"} 2.0' in text
    assert 'conductor_bmc_command_duration_seconds_count{command="set_power_state",driver="fake"} 2.0' in text


def test_a_fast_poller_is_admitted_from_leases_and_still_held_to_its_budget(client, ctx, nodes) -> None:
    trips = count_round_trips(admission._limiter(ctx))
    throttle_settings.update(ctx, {"read_rate": 0.01, "read_burst": 400})
    began = time.monotonic()
    answers = [client.get(f"/v1/nodes/{nodes[0]}/states") for _ in range(450)]
    seconds = time.monotonic() - began
    statuses = [a.status_code for a in answers]
    # The budget holds: never more than 400 reads.  Fewer by what leases dropped: a lease (at most
    # 20 = 400 / 20) ends after 1 s with what it did not spend, and the last one is still held.
    assert 400 - 20 * (math.ceil(seconds) + 1) <= statuses.count(200) <= 400
    assert statuses == sorted(statuses)  # admitted, then refused, never admitted again
    refused = answers[-1]
    assert refused.json["code"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
    # Far fewer admission round trips than reads.
    assert trips[0] < 100, trips
    remaining = [int(a.headers["RateLimit"].split("r=")[1].split(";")[0]) for a in answers if a.status_code == 200]
    assert remaining == sorted(remaining, reverse=True)


def test_read_budget_lease_1_checks_every_read(client, ctx, nodes) -> None:
    ctx.settings = dataclasses.replace(ctx.settings, read_budget_lease=1)
    throttle_settings.update(ctx, {"read_rate": 0.01, "read_burst": 400})
    trips = count_round_trips(admission._limiter(ctx))
    statuses = [client.get(f"/v1/nodes/{nodes[0]}/states").status_code for _ in range(402)]
    assert statuses.count(200) == 400
    assert trips == [402]  # one admission round trip per read
