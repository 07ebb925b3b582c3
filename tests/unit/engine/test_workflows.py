"""Power and provision workflows through the runner, with the fake driver."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from conductor.engine import runner
from conductor.fsm.states import PowerState
from conductor.models import Node
from tests.conftest import drain


def make_node(client, name="n1", **driver_info):  # type: ignore[no-untyped-def]
    response = client.post("/v1/nodes", json={"name": name, "driver": "fake", "driver_info": driver_info})
    assert response.status_code == 201
    return response.json


def put(client, kind, target, node="n1"):  # type: ignore[no-untyped-def]
    body = {"target": target}
    if target in ("active", "rebuild"):
        body["image_source"] = "http://images.example/ubuntu.qcow2"
        body["image_checksum"] = "0" * 64  # the fake deploy interface downloads nothing
    response = client.put(f"/v1/nodes/{node}/states/{kind}", json=body)
    assert response.status_code == 202, response.json
    return response.json["id"]


def request_of(client, request_id):  # type: ignore[no-untyped-def]
    return client.get(f"/v1/requests/{request_id}").json


def test_full_lifecycle_manage_provide_deploy_undeploy(client, conductor_ctx) -> None:
    make_node(client)
    expected = [("manage", "manageable"), ("provide", "available"), ("active", "active"),
                ("deleted", "available"), ("manage", "manageable")]
    for target, state in expected:
        request_id = put(client, "provision", target)
        drain(conductor_ctx)
        finished = request_of(client, request_id)
        assert finished["state"] == "succeeded", finished
        assert finished["started_at"] and finished["finished_at"]
        states = client.get("/v1/nodes/n1/states").json
        assert states["provision_state"] == state
        assert states["target_provision_state"] is None and states["request_id"] is None
    transitions = [h["message"] for h in client.get("/v1/nodes/n1/history?limit=100").json["history"]
                   if h["event"] == "provision.transition"][::-1]
    assert transitions == [
        "enroll -> verifying (manage).", "verifying -> manageable (done).",
        "manageable -> cleaning (provide).", "cleaning -> available (done).",
        "available -> deploying (deploy).", "deploying -> active (done).",
        "active -> deleting (delete).", "deleting -> cleaning (clean).", "cleaning -> available (done).",
        "available -> manageable (manage).",
    ]


def test_manual_clean_returns_to_manageable(client, conductor_ctx) -> None:
    make_node(client)
    put(client, "provision", "manage")
    drain(conductor_ctx)
    put(client, "provision", "clean")
    drain(conductor_ctx)
    assert client.get("/v1/nodes/n1/states").json["provision_state"] == "manageable"


@pytest.mark.parametrize(
    ("target", "sequence"),
    [
        ("power on", ["power on"]),
        ("power off", []),  # a fresh fake node is off: nothing to do
        ("rebooting", ["power on"]),  # off phase skipped, on phase runs
        ("soft power off", []),
    ],
)
def test_power_targets(client, conductor_ctx, target, sequence) -> None:
    make_node(client)
    request_id = put(client, "power", target)
    drain(conductor_ctx)
    assert request_of(client, request_id)["state"] == "succeeded"
    changes = [h["message"] for h in client.get("/v1/nodes/n1/history").json["history"]
               if h["event"] == "power.command"]
    assert [c.removeprefix("Sent ").rstrip(".") for c in changes[::-1]] == sequence
    expected = PowerState.POWER_ON if target in ("power on", "rebooting") else PowerState.POWER_OFF
    assert client.get("/v1/nodes/n1/states").json["power_state"] == expected


def test_reboot_of_a_powered_node_goes_down_and_up(client, conductor_ctx) -> None:
    make_node(client)
    put(client, "power", "power on")
    drain(conductor_ctx)
    put(client, "power", "rebooting")
    drain(conductor_ctx)
    changes = [h["message"] for h in client.get("/v1/nodes/n1/history").json["history"]
               if h["event"] == "power.changed"][::-1]
    assert changes[-2:] == ["Power state power on -> power off.", "Power state power off -> power on."]


def test_fake_delay_makes_the_request_sleep_between_steps(client, conductor_ctx) -> None:
    make_node(client, fake_delay=0.3)
    request_id = put(client, "power", "power on")
    started = time.monotonic()
    runner.run_step(conductor_ctx, request_id)
    # Not done yet: the request sleeps in a Redis timer, no conductor holds it.
    request = request_of(client, request_id)
    assert request["state"] == "running" and request["conductor"] is None
    assert request["step"] == "power on"
    assert conductor_ctx.redis.zscore(conductor_ctx.queue.timers_key, request_id) is not None
    node = client.get("/v1/nodes/n1").json
    assert node["reservation"] is None and node["target_power_state"] == "power on"
    drain(conductor_ctx)
    assert time.monotonic() - started >= 0.3
    assert request_of(client, request_id)["state"] == "succeeded"
    assert client.get("/v1/nodes/n1/states").json["power_state"] == "power on"


def test_power_timeout_fails_with_a_clear_error(client, conductor_ctx, monkeypatch) -> None:
    make_node(client, fake_delay=30)
    conductor_ctx.settings = conductor_ctx.settings.replace(power_timeout=0.2)
    request_id = put(client, "power", "power on")
    drain(conductor_ctx)
    request = request_of(client, request_id)
    assert request["state"] == "failed"
    assert "after power on was sent" in request["error"]
    node = client.get("/v1/nodes/n1").json
    assert node["last_error"] == request["error"]
    assert node["request_id"] is None and node["target_power_state"] is None


def test_driver_failure_fails_the_request_and_the_busy_state(client, conductor_ctx) -> None:
    make_node(client)
    put(client, "provision", "manage")
    drain(conductor_ctx)
    put(client, "provision", "provide")
    drain(conductor_ctx)
    client.patch("/v1/nodes/n1", json={"driver_info": {"fake_fail": "disk on fire"}})
    request_id = put(client, "provision", "active")
    drain(conductor_ctx)
    request = request_of(client, request_id)
    assert request["state"] == "failed"
    assert "disk on fire" in request["error"]
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "deploy failed"
    assert "disk on fire" in node["last_error"]
    # From deploy failed a new deployment (or an undeploy) is allowed.
    client.patch("/v1/nodes/n1", json={"driver_info": {"fake_fail": None}})
    retry = put(client, "provision", "active")
    drain(conductor_ctx)
    assert request_of(client, retry)["state"] == "succeeded"
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "active" and node["last_error"] is None


def test_failed_verification_returns_to_enroll(client, conductor_ctx) -> None:
    make_node(client, fake_fail="bad password")
    request_id = put(client, "provision", "manage")
    drain(conductor_ctx)
    assert request_of(client, request_id)["state"] == "failed"
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "enroll" and "bad password" in node["last_error"]


def test_target_revalidated_when_the_step_runs(client, ctx, conductor_ctx) -> None:
    make_node(client)
    request_id = put(client, "provision", "manage")
    with ctx.db.begin() as session:  # the node moved on behind the API's back
        session.execute(sa.update(Node).values(provision_state="active"))
    drain(conductor_ctx)
    request = request_of(client, request_id)
    assert request["state"] == "failed" and "not allowed" in request["error"]


def test_reserved_node_is_retried_then_failed(client, ctx, conductor_ctx) -> None:
    make_node(client)
    conductor_ctx.settings = conductor_ctx.settings.replace(node_locked_timeout=0.3)
    with ctx.db.begin() as session:
        session.execute(sa.update(Node).values(reservation="someone-else"))
    request_id = put(client, "power", "power on")
    runner.run_step(conductor_ctx, request_id)
    request = request_of(client, request_id)
    assert request["state"] == "running" and request["conductor"] is None  # retrying
    drain(conductor_ctx)
    request = request_of(client, request_id)
    assert request["state"] == "failed"
    assert "reserved by conductor someone-else" in request["error"]


def test_reservation_is_released_after_each_step_and_on_crash(client, ctx, conductor_ctx, monkeypatch) -> None:
    make_node(client)
    from conductor.engine import power

    def explode(task):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")

    monkeypatch.setattr(runner, "_WORKFLOWS", {**runner._WORKFLOWS, "power": (explode, power.fail)})
    request_id = put(client, "power", "power on")
    runner.run_step(conductor_ctx, request_id)
    request = request_of(client, request_id)
    assert request["state"] == "failed"
    assert request["error"].startswith("Internal error in conductor")
    assert "bug" not in request["error"]
    with ctx.db.session() as session:
        node = session.scalars(sa.select(Node)).one()
        assert node.reservation is None and node.active_request_id is None


def test_a_step_is_claimed_and_its_node_reserved_by_one_conductor(client, ctx, conductor_ctx, settings) -> None:
    from conductor.bootstrap import build_context
    from conductor.engine import conductors
    from conductor.engine.task import StepNotRunnable, node_task

    make_node(client)
    request_id = put(client, "power", "power on")
    other = build_context(settings)
    other.name = conductors.register(other).name
    with node_task(conductor_ctx, request_id) as task:
        assert task.node.reservation == conductor_ctx.name
        assert task.request.conductor == conductor_ctx.name
        with pytest.raises(StepNotRunnable), node_task(other, request_id):
            pass
    with ctx.db.session() as session:
        assert session.get(Node, task.node.id).reservation is None
