"""The power state observer with the fake driver: rounds, candidates, drift, failures and recovery."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa

from conductor.bootstrap import build_context
from conductor.drivers import fake
from conductor.engine import jobs, power_sync
from conductor.exceptions import BMCError
from conductor.models import Node
from tests.conftest import drain


def make(client, name, manage=True, **fields):  # type: ignore[no-untyped-def]
    response = client.post("/v1/nodes", json={"name": name, "driver": "fake", **fields})
    assert response.status_code == 201, response.json
    if manage:
        assert client.put(f"/v1/nodes/{name}/states/provision", json={"target": "manage"}).status_code == 202
    return response.json


def node_id(ctx, name):  # type: ignore[no-untyped-def]
    with ctx.db.session() as session:
        return session.scalars(sa.select(Node.id).where(Node.name == name)).one()


def set_fake_power(ctx, name, state):  # type: ignore[no-untyped-def]
    """Change the fake BMC's power behind the conductor's back."""
    with ctx.db.begin() as session:
        node = session.scalars(sa.select(Node).where(Node.name == name)).one()
        node.driver_internal_info = {**node.driver_internal_info, "fake_power": state}


def test_one_conductor_per_round_and_only_idle_managed_nodes(client, conductor_ctx, settings) -> None:
    make(client, "idle")
    make(client, "operator-maintenance", maintenance=True, maintenance_reason="fan")
    make(client, "enrolled", manage=False)
    drain(conductor_ctx)
    make(client, "busy", manage=True)  # its manage request is still queued
    other = build_context(settings)
    other.name = "other-conductor"
    try:
        queued_before = conductor_ctx.queue.queue.count
        assert power_sync.start_round(conductor_ctx) == 1
        assert power_sync.start_round(other) is None  # the round is taken
        jobs_now = conductor_ctx.queue.sync_queue.jobs
        assert [list(job.args) for job in jobs_now] == [[[node_id(conductor_ctx, "idle")]]]
        # On the observer's own queue: the requests' queue has nothing more, and admission's depth counts none.
        assert conductor_ctx.queue.queue.count == queued_before and conductor_ctx.queue.depth() == queued_before
    finally:
        other.close()


def test_drift_is_corrected_with_history_and_event(client, conductor_ctx) -> None:
    make(client, "n1")
    drain(conductor_ctx)
    assert client.get("/v1/nodes/n1").json["power_state"] == "power off"
    set_fake_power(conductor_ctx, "n1", "power on")
    assert power_sync.sync_node(conductor_ctx, node_id(conductor_ctx, "n1")) == "drift"
    node = client.get("/v1/nodes/n1").json
    assert node["power_state"] == "power on" and node["reservation"] is None
    entry = client.get("/v1/nodes/n1/history").json["history"][0]
    assert entry["event"] == "power.drift" and "power off -> power on" in entry["message"]
    assert power_sync.sync_node(conductor_ctx, node_id(conductor_ctx, "n1")) == "same"


def test_repeated_failures_mean_maintenance_and_an_answer_ends_it(client, conductor_ctx, monkeypatch) -> None:
    make(client, "n1")
    drain(conductor_ctx)
    nid = node_id(conductor_ctx, "n1")
    real = fake.FakePower.get_power_state

    def dead(self, task):  # type: ignore[no-untyped-def]
        raise BMCError("BMC 10.0.0.7:623 did not answer within 17 s (3 attempts)")

    monkeypatch.setattr(fake.FakePower, "get_power_state", dead)
    limit = conductor_ctx.settings.power_sync_max_failures
    outcomes = [power_sync.sync_node(conductor_ctx, nid) for _ in range(limit + 1)]
    assert outcomes == ["failed"] * (limit - 1) + ["maintenance", "failed"]
    node = client.get("/v1/nodes/n1").json
    assert node["maintenance"] is True and node["fault"] == "power failure"
    assert f"failed {limit} times in a row" in node["maintenance_reason"]
    assert "did not answer" in node["maintenance_reason"]
    assert client.get("/v1/nodes/n1/history").json["history"][0]["event"] == "maintenance.fault"
    # still observed while in maintenance for a power failure
    assert power_sync.start_round(conductor_ctx) == 1

    monkeypatch.setattr(fake.FakePower, "get_power_state", real)
    assert power_sync.sync_node(conductor_ctx, nid) == "recovered"
    node = client.get("/v1/nodes/n1").json
    assert (node["maintenance"], node["fault"], node["maintenance_reason"]) == (False, None, None)


def into_observer_maintenance(client, ctx, monkeypatch) -> int:  # type: ignore[no-untyped-def]
    """Node n1, whose BMC stopped answering, put into maintenance by the observer; its id."""
    make(client, "n1")
    drain(ctx)
    nid = node_id(ctx, "n1")
    monkeypatch.setattr(fake.FakePower, "get_power_state",
                        lambda self, task: (_ for _ in ()).throw(BMCError("no answer")))
    for _ in range(ctx.settings.power_sync_max_failures):
        power_sync.sync_node(ctx, nid)
    return nid


def test_an_operators_maintenance_is_left_alone(client, conductor_ctx, monkeypatch) -> None:
    into_observer_maintenance(client, conductor_ctx, monkeypatch)
    # the operator takes over: the fault is forgotten, the observer no longer clears it
    assert client.patch("/v1/nodes/n1", json={"maintenance": True, "maintenance_reason": "RMA"}).status_code == 200
    assert client.get("/v1/nodes/n1").json["fault"] is None
    monkeypatch.undo()
    assert power_sync.start_round(conductor_ctx) == 0


def test_a_node_with_a_request_is_not_touched(client, conductor_ctx) -> None:
    make(client, "n1")
    drain(conductor_ctx)
    assert client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).status_code == 202
    assert power_sync.sync_node(conductor_ctx, node_id(conductor_ctx, "n1")) == "skipped"


def test_the_batch_job_runs_in_a_worker_context(client, conductor_ctx) -> None:
    make(client, "n1")
    drain(conductor_ctx)
    set_fake_power(conductor_ctx, "n1", "power on")
    jobs.install(conductor_ctx)
    try:
        jobs.sync_power([node_id(conductor_ctx, "n1"), 999999])
    finally:
        jobs.install(None)  # type: ignore[arg-type]
    assert client.get("/v1/nodes/n1").json["power_state"] == "power on"


def test_observer_disabled_by_zero_interval(conductor_ctx) -> None:
    disabled = dataclasses.replace(conductor_ctx, settings=conductor_ctx.settings.replace(power_sync_interval=0))
    power_sync.Observer(disabled).tick(float("inf"))  # never starts a round
    assert conductor_ctx.redis.get(power_sync._round_key(conductor_ctx)) is None


def test_rounds_do_not_pile_up_while_batches_are_pending(client, conductor_ctx) -> None:
    make(client, "n1")
    drain(conductor_ctx)
    assert power_sync.start_round(conductor_ctx) == 1
    conductor_ctx.redis.delete(power_sync._round_key(conductor_ctx))  # the next interval is due
    assert power_sync.start_round(conductor_ctx) is None  # its batch has not run yet
    jobs.install(conductor_ctx)
    try:
        jobs.sync_power([node_id(conductor_ctx, "n1")])
    finally:
        jobs.install(None)  # type: ignore[arg-type]
    conductor_ctx.redis.delete(power_sync._round_key(conductor_ctx))
    assert power_sync.start_round(conductor_ctx) == 1


def test_an_operator_change_during_the_read_wins(client, conductor_ctx, monkeypatch) -> None:
    nid = into_observer_maintenance(client, conductor_ctx, monkeypatch)
    assert client.get("/v1/nodes/n1").json["fault"] == "power failure"

    def answer_while_the_operator_patches(self, task):  # type: ignore[no-untyped-def]
        patched = client.patch("/v1/nodes/n1", json={"maintenance": True, "maintenance_reason": "RMA"})
        assert patched.status_code == 200, patched.json
        return "power off"

    monkeypatch.setattr(fake.FakePower, "get_power_state", answer_while_the_operator_patches)
    assert power_sync.sync_node(conductor_ctx, nid) == "skipped"
    node = client.get("/v1/nodes/n1").json
    assert node["maintenance"] is True and node["maintenance_reason"] == "RMA" and node["fault"] is None
    assert node["reservation"] is None

