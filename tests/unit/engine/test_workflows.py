"""Power and provision workflows through the runner, with the fake driver."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from conductor.engine import runner
from conductor.fsm.states import PowerState
from conductor.models import Node, Request
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


# --- the first poll at the transition time learned from the last one --------------------------

def learned(ctx, node="n1"):  # type: ignore[no-untyped-def]
    """The node's learned transition times (driver_internal_info is not shown by the API)."""
    with ctx.db.session() as session:
        info = session.scalars(sa.select(Node.driver_internal_info).where(Node.name == node)).one()
    return (info or {}).get("power_transition") or {}


def first_poll_after(client, conductor_ctx, target, node="n1") -> float:  # type: ignore[no-untyped-def]
    """Seconds from the command to the first poll the step scheduled (its Redis timer)."""
    request_id = put(client, "power", target, node)
    runner.run_step(conductor_ctx, request_id)
    due = conductor_ctx.redis.zscore(conductor_ctx.queue.timers_key, request_id)
    assert due is not None, "the node got there at once: no poll"
    with conductor_ctx.db.session() as session:
        sent = session.get(Request, request_id).progress["sent_at"]  # when the command went out
    drain(conductor_ctx)
    return float(due) - float(sent)


def test_the_first_poll_comes_when_the_last_transition_ended(client, conductor_ctx) -> None:
    conductor_ctx.settings = conductor_ctx.settings.replace(power_poll_max=1.0)
    make_node(client, fake_delay=0.6)
    # Nothing learned yet: the first poll is power_poll_initial (0.05 s in tests), then doubling.
    assert first_poll_after(client, conductor_ctx, "power on") < 0.3
    took = learned(conductor_ctx)["power on"]
    assert 0.6 <= took < 0.6 + 1.0  # found by the poll after the transition (a slow machine runs it late)
    # The deployment-wide figure of the driver too.
    namespace = conductor_ctx.settings.redis_namespace
    assert float(conductor_ctx.redis.hget(f"{namespace}:power-transitions", "fake|power on")) == took
    put(client, "power", "power off")
    drain(conductor_ctx)
    # Now the first poll waits for the transition, and finds the node there: one poll.
    assert first_poll_after(client, conductor_ctx, "power on") == pytest.approx(took, abs=0.05)
    history = [h["event"] for h in client.get("/v1/nodes/n1/history").json["history"]]
    assert "power.changed" in history
    # Found at the guess: the next guess is a quarter shorter (it follows a BMC that gets faster).
    assert learned(conductor_ctx)["power on"] == pytest.approx(took * 0.75, abs=0.002)


def test_a_guess_too_short_falls_back_to_short_polls_and_learns_the_new_time(client, conductor_ctx) -> None:
    conductor_ctx.settings = conductor_ctx.settings.replace(power_poll_max=1.0)
    make_node(client, fake_delay=0.2)
    put(client, "power", "power on")
    drain(conductor_ctx)
    put(client, "power", "power off")
    drain(conductor_ctx)
    before = learned(conductor_ctx)["power on"]
    # The BMC became slower: the guess misses, polls from power_poll_initial find it, the time is learned.
    response = client.patch("/v1/nodes/n1", json={"driver_info": {"fake_delay": 0.7}})
    assert response.status_code == 200, response.json
    request_id = put(client, "power", "power on")
    drain(conductor_ctx)
    assert request_of(client, request_id)["state"] == "succeeded"
    assert before < 0.5 and 0.7 <= learned(conductor_ctx)["power on"] < 0.7 + 1.0


def test_a_bmc_done_at_once_has_no_figure_and_a_new_node_uses_its_drivers(client, conductor_ctx) -> None:
    conductor_ctx.settings = conductor_ctx.settings.replace(power_poll_max=1.0)
    make_node(client, "quick")
    put(client, "power", "power on", "quick")
    drain(conductor_ctx)
    assert learned(conductor_ctx, "quick") == {"power on": 0.0}  # done at the check right after the command
    make_node(client, "slow", fake_delay=0.15)
    put(client, "power", "power on", "slow")
    drain(conductor_ctx)
    make_node(client, "new", fake_delay=0.15)
    # "new" has no figure of its own: the first poll is at the fake driver's, learned from "slow".
    assert first_poll_after(client, conductor_ctx, "power on", "new") == pytest.approx(
        learned(conductor_ctx, "slow")["power on"], abs=0.05)


def test_a_first_poll_is_never_later_than_power_poll_max(client, conductor_ctx) -> None:
    make_node(client, fake_delay=0.6)
    put(client, "power", "power on")
    drain(conductor_ctx)  # learned: ~0.6 s (more than power_poll_max, 0.2 s in tests)
    put(client, "power", "power off")
    drain(conductor_ctx)
    assert learned(conductor_ctx)["power on"] >= 0.6
    assert first_poll_after(client, conductor_ctx, "power on") == pytest.approx(0.2, abs=0.05)


def test_a_guess_too_long_comes_down_a_quarter_each_time(client, conductor_ctx) -> None:
    conductor_ctx.settings = conductor_ctx.settings.replace(power_poll_max=1.0)
    make_node(client, fake_delay=0.6)
    put(client, "power", "power on")
    drain(conductor_ctx)
    # The BMC becomes fast: the first polls come at the old guess, shrinking by a quarter each time.
    assert client.patch("/v1/nodes/n1", json={"driver_info": {"fake_delay": 0.15}}).status_code == 200
    figures = [learned(conductor_ctx)["power on"]]
    for _ in range(4):
        put(client, "power", "power off")
        drain(conductor_ctx)
        assert first_poll_after(client, conductor_ctx, "power on") == pytest.approx(figures[-1], abs=0.05)
        figures.append(learned(conductor_ctx)["power on"])
    assert figures[1:] == [pytest.approx(f * 0.75, abs=0.002) for f in figures[:-1]]


def test_a_node_done_at_once_does_not_wait_for_its_drivers_figure(client, conductor_ctx) -> None:
    conductor_ctx.settings = conductor_ctx.settings.replace(power_poll_max=1.0)
    make_node(client, "slow", fake_delay=0.6)
    put(client, "power", "power on", "slow")
    drain(conductor_ctx)  # the fake driver's figure: ~0.6 s
    make_node(client, "quick")
    put(client, "power", "power on", "quick")
    drain(conductor_ctx)
    put(client, "power", "power off", "quick")
    drain(conductor_ctx)
    assert learned(conductor_ctx, "quick") == {"power on": 0.0, "power off": 0.0}
    # Once slower, its first poll is the shortest (power_poll_initial), not the driver's 0.6 s.
    assert client.patch("/v1/nodes/quick", json={"driver_info": {"fake_delay": 0.3}}).status_code == 200
    assert first_poll_after(client, conductor_ctx, "power on", "quick") < 0.2
