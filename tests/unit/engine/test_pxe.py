"""The pxe deploy interface and the agent protocol, with the fake driver's power and boot device.

The test plays the agent: it reads the node's boot config (what a machine
booting from the network would get) and heartbeats with its token.
"""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from conductor import bootfiles
from conductor.api import schemas
from conductor.bootstrap import build_context
from conductor.engine import conductors, watchdog
from conductor.images import registry
from conductor.models import Node, Port, utcnow
from tests.conftest import drain

IMAGE = "ubuntu"
IMAGE_BYTES = b"\x00" * 4096 + b"an image"


def register_image(client) -> dict:  # type: ignore[no-untyped-def]
    """Image ``IMAGE``, registered in ``client``'s deployment (once), as ``conductor image add`` does."""
    ctx = client.application.extensions["conductor"]
    with ctx.db.session() as session:
        if registry.exists(session, IMAGE):
            return schemas.Image().dump(registry.get(session, IMAGE))
        source = ctx.settings.data_dir / "ubuntu.raw"
        source.write_bytes(IMAGE_BYTES)
        return schemas.Image().dump(registry.add(session, ctx.settings.images_path, IMAGE, source))


def make_node(client, name="n1", **driver_info):  # type: ignore[no-untyped-def]
    body = {"name": name, "driver": "fake", "driver_info": {"deploy_interface": "pxe", **driver_info}}
    response = client.post("/v1/nodes", json=body)
    assert response.status_code == 201, response.json
    return response.json


def put(client, target, node="n1", **params):  # type: ignore[no-untyped-def]
    if target in ("active", "rebuild") and "image_source" not in params:
        register_image(client)
        params["image_source"] = IMAGE
    response = client.put(f"/v1/nodes/{node}/states/provision", json={"target": target, **params})
    assert response.status_code == 202, response.json
    return response.json["id"]


def boot_config(settings, client, node="n1"):  # type: ignore[no-untyped-def]
    uuid = client.get(f"/v1/nodes/{node}").json["uuid"]
    return bootfiles.read(settings.pxe_dir, bootfiles.key_for({}, uuid))


def heartbeat(anonymous, node, token, **body):  # type: ignore[no-untyped-def]
    return anonymous.post(f"/v1/nodes/{node}/heartbeat", json=body, headers={"X-Agent-Token": token})


def agent(anonymous, settings, client, node="n1", status="succeeded", **result):  # type: ignore[no-untyped-def]
    """Boot, fetch the command, report ``status``; returns the command."""
    config = boot_config(settings, client, node)
    assert config is not None, "no boot config: the node was not booted for an agent"
    first = heartbeat(anonymous, node, config["token"], agent_version="test")
    assert first.status_code == 200, first.json
    command = first.json["command"]
    report = heartbeat(anonymous, node, config["token"],
                       command_result={"id": command["id"], "status": status, **result})
    assert report.status_code == 200, report.json
    assert report.json["accepted"] is True
    return command


def states(client, node="n1"):  # type: ignore[no-untyped-def]
    return client.get(f"/v1/nodes/{node}/states").json


def waiting_in(client, ctx, target, node="n1"):  # type: ignore[no-untyped-def]
    """manage, then ``target`` (clean or inspect): the node waits for its agent."""
    put(client, "manage", node)
    drain(ctx)
    request_id = put(client, target, node)
    drain(ctx)
    return request_id


def to_available(client, anonymous, settings, ctx, node="n1"):  # type: ignore[no-untyped-def]
    put(client, "manage", node)
    drain(ctx)
    request_id = put(client, "provide", node)
    drain(ctx)
    assert states(client, node)["provision_state"] == "clean wait"
    assert agent(anonymous, settings, client, node)["name"] == "erase_disks"
    drain(ctx)
    assert client.get(f"/v1/requests/{request_id}").json["state"] == "succeeded"
    assert states(client, node)["provision_state"] == "available"


def test_deploy_waits_for_the_agent_then_boots_from_disk(client, anonymous, conductor_ctx, settings) -> None:
    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)
    request_id = put(client, "active", configdrive="#cloud-config\n")
    drain(conductor_ctx)
    request = client.get(f"/v1/requests/{request_id}").json
    assert request["state"] == "waiting" and request["step"] == "deploy 3/6: agent write_image"
    assert request["params"] == {"image_source": IMAGE, "configdrive": "<14 bytes>"}
    assert states(client)["provision_state"] == "wait call-back"
    assert states(client)["request_id"] == request_id
    assert states(client)["step"] == "deploy 3/6: agent write_image"
    config = boot_config(settings, client)
    assert config["api_url"] == settings.agent_url and len(config["token"]) > 30
    command = agent(anonymous, settings, client)
    assert command["name"] == "write_image"
    params = command["params"]
    # The agent downloads the registered image from the conductor, at a signed URL.
    assert params.pop("image_source").startswith(settings.agent_url + "/v1/images/content/")
    assert params == {"image_checksum": hashlib.sha256(IMAGE_BYTES).hexdigest(), "image_compression": "none",
                      "image_size": len(IMAGE_BYTES), "configdrive": "#cloud-config\n"}
    drain(conductor_ctx)
    assert client.get(f"/v1/requests/{request_id}").json["state"] == "succeeded"
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "active" and node["power_state"] == "power on"
    assert boot_config(settings, client) is None  # the token is gone with the boot config
    with conductor_ctx.db.session() as session:
        info = session.scalars(sa.select(Node)).one().driver_internal_info
    assert info["fake_boot_device"] == "disk" and info["fake_boot_persistent"] is True
    assert "agent_token_sha256" not in info
    entries = client.get("/v1/nodes/n1/history?limit=200").json["history"]
    steps = [e for e in entries if e["event"] == "deploy.step" and e["request_id"] == request_id][::-1]
    assert [s["message"] for s in steps] == [
        "Step deploy 1/6: prepare image.", "Step deploy 2/6: power off.", "Step deploy 3/6: agent write_image.",
        "Step deploy 4/6: boot device disk (persistent).", "Step deploy 5/6: power off.",
        "Step deploy 6/6: power on.",
    ]
    assert all(s["conductor"] == conductor_ctx.name and s["created_at"] for s in steps)
    assert not any(config["token"] in e["message"] for e in entries)
    # rebuild from active goes through the agent again; undeploy cleans through it.
    put(client, "rebuild")
    drain(conductor_ctx)
    agent(anonymous, settings, client)
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "active"
    put(client, "deleted")
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "clean wait"
    assert agent(anonymous, settings, client)["name"] == "erase_disks"
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "available"
    assert client.get("/v1/nodes/n1").json["power_state"] == "power off"


def test_agent_failure_is_deploy_failed_and_recoverable(client, anonymous, conductor_ctx, settings) -> None:
    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)
    request_id = put(client, "active")
    drain(conductor_ctx)
    agent(anonymous, settings, client, status="failed", error="disk /dev/sda is read-only")
    drain(conductor_ctx)
    request = client.get(f"/v1/requests/{request_id}").json
    assert request["state"] == "failed" and "disk /dev/sda is read-only" in request["error"]
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "deploy failed"
    assert node["last_error"] == "The agent failed to write image: disk /dev/sda is read-only"
    # deploy failed -> active again works
    put(client, "active")
    drain(conductor_ctx)
    agent(anonymous, settings, client)
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "active" and states(client)["last_error"] is None


def test_a_failed_agent_phase_revokes_the_token_and_removes_the_boot_config(client, anonymous, conductor_ctx,
                                                                               settings, monkeypatch) -> None:
    from conductor.drivers import fake
    from conductor.exceptions import DriverError

    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)

    def refuse(self, task, device, persistent=False):  # type: ignore[no-untyped-def]
        raise DriverError("BMC refused the boot device")

    monkeypatch.setattr(fake.FakeManagement, "set_boot_device", refuse)
    put(client, "active")
    drain(conductor_ctx)
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "deploy failed" and "refused the boot device" in node["last_error"]
    assert boot_config(settings, client) is None
    with conductor_ctx.db.session() as session:
        info = session.scalars(sa.select(Node.driver_internal_info).where(Node.name == "n1")).one()
    assert "agent_token_sha256" not in info and "agent_command" not in info


def test_deleted_from_deploy_failed(client, anonymous, conductor_ctx, settings) -> None:
    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)
    put(client, "active")
    drain(conductor_ctx)
    agent(anonymous, settings, client, status="failed", error="boom")
    drain(conductor_ctx)
    put(client, "deleted")
    drain(conductor_ctx)
    agent(anonymous, settings, client)
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "available"


def test_inspect_stores_the_inventory(client, anonymous, conductor_ctx, settings) -> None:
    make_node(client)
    waiting_in(client, conductor_ctx, "inspect")
    assert states(client)["provision_state"] == "inspect wait"
    inventory = {"cpus": 8, "cpu_arch": "x86_64", "memory_mb": 32768, "local_gb": 480,
                 "disks": [{"name": "/dev/sda", "size_gb": 480}],
                 "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56"}]}
    assert agent(anonymous, settings, client, inventory=inventory)["name"] == "inspect"
    drain(conductor_ctx)
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "manageable"
    assert node["properties"] == {**inventory, "macs": ["52:54:00:12:34:56"]}


def test_inspect_makes_ports_of_the_nics_it_finds(client, anonymous, conductor_ctx, settings) -> None:
    make_node(client)
    assert client.post("/v1/ports", json={"node": "n1", "address": "52:54:00:00:00:01"}).status_code == 201
    make_node(client, "n2")
    assert client.post("/v1/ports", json={"node": "n2", "address": "52:54:00:00:00:03"}).status_code == 201
    waiting_in(client, conductor_ctx, "inspect")
    nics = [{"name": "eth0", "mac": "52:54:00:00:00:01"},  # already n1's port
            {"name": "eth1", "mac": "52-54-00-00-00-02"},  # new: becomes a port
            {"name": "eth2", "mac": "52:54:00:00:00:03"},  # n2's port: left alone, a warning
            {"name": "bond0", "mac": "00:00:00:00:00:00"},  # no usable address: skipped
            {"name": "eth3", "mac": "52:54:00:00:00:02"}]  # the same NIC seen twice
    agent(anonymous, settings, client, inventory={"cpus": 2, "nics": nics})
    drain(conductor_ctx)
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "manageable"
    assert node["properties"]["macs"] == ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"]
    ports = client.get("/v1/ports", query_string={"node": "n1"}).json["ports"]
    assert [p["address"] for p in ports] == ["52:54:00:00:00:01", "52:54:00:00:00:02"]
    assert [p["address"] for p in client.get("/v1/ports", query_string={"node": "n2"}).json["ports"]] \
        == ["52:54:00:00:00:03"]
    history = {h["message"]: h["severity"] for h in client.get("/v1/nodes/n1/history").json["history"]
               if h["event"] == "inspect.ports"}
    assert history == {
        "Ports added for the NICs found: 52:54:00:00:00:02.": "info",
        f"NICs found that are other nodes' ports (left alone): 52:54:00:00:00:03 (node "
        f"{client.get('/v1/nodes/n2').json['uuid']}).": "warning",
    }


def test_manual_clean_through_the_agent(client, anonymous, conductor_ctx, settings) -> None:
    make_node(client)
    waiting_in(client, conductor_ctx, "clean")
    assert states(client)["provision_state"] == "clean wait"
    agent(anonymous, settings, client)
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "manageable"


def test_heartbeat_token_checks(client, anonymous, conductor_ctx, settings) -> None:
    make_node(client)
    make_node(client, "n2")
    put(client, "manage")
    put(client, "manage", "n2")
    drain(conductor_ctx)
    put(client, "clean")
    put(client, "clean", "n2")
    drain(conductor_ctx)
    token = boot_config(settings, client)["token"]
    other = boot_config(settings, client, "n2")["token"]
    for bad in (None, "", "nope", other):
        headers = {"X-Agent-Token": bad} if bad is not None else {}
        response = anonymous.post("/v1/nodes/n1/heartbeat", json={}, headers=headers)
        assert response.status_code == 401, response.json
        assert response.json["code"] == "invalid_agent_token"
        assert token not in response.get_data(as_text=True)
    # A bearer API token is not an agent token.
    response = client.post("/v1/nodes/n1/heartbeat", json={})
    assert response.status_code == 401
    assert heartbeat(anonymous, "n1", token).status_code == 200
    # An unknown node gets the same answer as a wrong token (no listing of node names).
    unknown = heartbeat(anonymous, "nothing", token)
    assert unknown.status_code == 401 and unknown.json["code"] == "invalid_agent_token"


def test_heartbeats_are_throttled_per_node_before_any_lookup(client, anonymous) -> None:
    from conductor.api import admission

    make_node(client)
    make_node(client, "n2")
    answers = []
    while len(answers) < 500 and (not answers or answers[-1].status_code != 503):
        answers.append(anonymous.post("/v1/nodes/n1/heartbeat", json={}, headers={"X-Agent-Token": "guess"}))
    codes = [a.json["code"] for a in answers]
    # The burst is spent on (refused) look-ups, then the flood stops before the database.
    assert codes[: admission.HEARTBEAT_NODE_BURST] == ["invalid_agent_token"] * admission.HEARTBEAT_NODE_BURST
    refused = answers[-1]
    assert refused.status_code == 503 and refused.json["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    # Neither another node's agent nor the node's own agent (another token) is held back.
    other = anonymous.post("/v1/nodes/n2/heartbeat", json={}, headers={"X-Agent-Token": "guess"})
    assert other.json["code"] == "invalid_agent_token"
    own = anonymous.post("/v1/nodes/n1/heartbeat", json={}, headers={"X-Agent-Token": "the-real-one"})
    assert own.json["code"] == "invalid_agent_token"


def test_a_result_is_acted_on_once(client, anonymous, conductor_ctx, settings) -> None:
    make_node(client)
    waiting_in(client, conductor_ctx, "clean")
    token = boot_config(settings, client)["token"]
    command = heartbeat(anonymous, "n1", token).json["command"]
    again = heartbeat(anonymous, "n1", token).json["command"]
    assert again == command  # a lost answer is asked again, same command
    wrong = heartbeat(anonymous, "n1", token, command_result={"id": "cmd-other", "status": "succeeded"})
    assert wrong.status_code == 400 and wrong.json["code"] == "validation_error"
    result = {"id": command["id"], "status": "succeeded"}
    assert heartbeat(anonymous, "n1", token, command_result=result).status_code == 200
    twice = heartbeat(anonymous, "n1", token, command_result=result)
    assert twice.status_code == 409 and twice.json["code"] == "node_not_waiting"
    drain(conductor_ctx)
    late = heartbeat(anonymous, "n1", token)
    # The workflow ended: its token is no longer valid at all.
    assert late.status_code in (401, 409)
    events = client.get("/v1/nodes/n1/history?limit=100").json["history"]
    assert len([e for e in events if e["event"] == "agent.result"]) == 1
    # The first heartbeat is recorded once (operators read boot time from it), not every heartbeat.
    (connected,) = [e for e in events if e["event"] == "agent.connected"]
    assert connected["provision_state"] == "clean wait" and connected["request_id"]


def test_a_request_woken_by_its_agent_cannot_be_cancelled_mid_workflow(client, anonymous, conductor_ctx,
                                                                        settings) -> None:
    make_node(client)
    request_id = waiting_in(client, conductor_ctx, "clean")
    agent(anonymous, settings, client)  # the result queues the request again
    assert client.get(f"/v1/requests/{request_id}").json["state"] == "queued"
    refused = client.delete(f"/v1/requests/{request_id}")
    assert refused.status_code == 409 and refused.json["code"] == "request_not_cancellable"
    assert states(client)["provision_state"] == "clean wait"
    drain(conductor_ctx)
    # Nothing was left behind: the workflow finished.
    assert client.get(f"/v1/requests/{request_id}").json["state"] == "succeeded"
    assert states(client)["provision_state"] == "manageable"


def test_heartbeat_when_not_waiting_is_409(client, anonymous, conductor_ctx, settings) -> None:
    make_node(client)
    waiting_in(client, conductor_ctx, "clean")
    token = boot_config(settings, client)["token"]
    # Pretend the step is running (the request was taken by a conductor).
    with conductor_ctx.db.begin() as session:
        session.execute(sa.text("UPDATE requests SET state = 'running', conductor = 'x' WHERE state = 'waiting'"))
    response = heartbeat(anonymous, "n1", token)
    assert response.status_code == 409 and response.json["code"] == "node_not_waiting"
    assert "not waiting for its agent" in response.json["message"]
    # Nor can a running step be aborted or cancelled: it cannot be interrupted.
    for response in (client.put("/v1/nodes/n1/states/provision", json={"target": "abort"}),
                     client.delete(f"/v1/requests/{states(client)['request_id']}")):
        assert response.status_code == 409 and response.json["code"] == "request_not_cancellable"
        assert "cannot be interrupted" in response.json["message"] or "running" in response.json["message"]


@pytest.mark.parametrize(("target", "wait", "failed", "how"), [
    ("active", "wait call-back", "deploy failed", "abort"),
    ("clean", "clean wait", "clean failed", "abort"),
    ("inspect", "inspect wait", "inspect failed", "abort"),
    ("active", "wait call-back", "deploy failed", "cancel"),
    ("inspect", "inspect wait", "inspect failed", "cancel"),
])
def test_abort_each_wait(client, anonymous, conductor_ctx, settings, target, wait, failed, how) -> None:
    make_node(client)
    if target == "active":
        to_available(client, anonymous, settings, conductor_ctx)
    else:
        put(client, "manage")
        drain(conductor_ctx)
    request_id = put(client, target)
    drain(conductor_ctx)
    assert states(client)["provision_state"] == wait
    token = boot_config(settings, client)["token"]
    if how == "abort":
        response = client.put("/v1/nodes/n1/states/provision", json={"target": "abort"})
        assert response.status_code == 202, response.json
    else:
        response = client.delete(f"/v1/requests/{request_id}")
        assert response.status_code == 200, response.json
    assert client.get(f"/v1/requests/{request_id}").json["state"] == "cancelled"
    node = states(client)
    assert node["provision_state"] == failed and node["last_error"].startswith(f"Aborted in {wait}")
    # The token died with the wait; the boot config is gone.
    late = heartbeat(anonymous, "n1", token)
    assert late.status_code == 401 and late.json["code"] == "invalid_agent_token"
    assert boot_config(settings, client) is None


def test_watchdog_fails_overdue_waits(client, anonymous, settings) -> None:
    quick = settings.replace(deploy_agent_timeout=0.0, clean_agent_timeout=0.0, wait_check_interval=0.01)
    ctx = build_context(quick)
    ctx.name = conductors.register(ctx).name
    try:
        make_node(client)
        request_id = waiting_in(client, ctx, "clean")
        assert states(client)["provision_state"] == "clean wait"
        ctx.redis.delete(f"{quick.redis_namespace}:wait-watchdog")
        assert watchdog.check(ctx) == 1
        # Once: a second look (its turn taken again) and a racing direct attempt find nothing.
        ctx.redis.delete(f"{quick.redis_namespace}:wait-watchdog")
        assert watchdog.check(ctx) == 0
        assert watchdog.fail_overdue(ctx, request_id) is False
        request = client.get(f"/v1/requests/{request_id}").json
        assert request["state"] == "failed"
        node = states(client)
        assert node["provision_state"] == "clean failed"
        assert "clean_agent_timeout" in node["last_error"] and "did not call back" in node["last_error"]
        assert boot_config(settings, client) is None
    finally:
        ctx.close()


def test_deploy_interface_is_validated(client) -> None:
    response = client.post("/v1/nodes", json={"driver": "fake", "driver_info": {"deploy_interface": "iscsi"}})
    assert response.status_code == 400
    assert "deploy_interface" in response.json["message"] and "pxe" in response.json["message"]
    response = client.post("/v1/nodes", json={"name": "d", "driver": "fake"})
    assert response.status_code == 201


@pytest.mark.parametrize(("body", "field"), [
    ({"target": "active"}, "image_source"),
    ({"target": "active", "image_source": ""}, "image_source"),
    ({"target": "active", "image_source": "ftp://host/img"}, "image_source"),
    ({"target": "active", "image_source": "http:///no-host"}, "image_source"),
    ({"target": "active", "image_source": "bad name!"}, "image_source"),
    ({"target": "active", "image_source": IMAGE, "configdrive": "x" * (64 * 1024 + 1)}, "configdrive"),
    ({"target": "active", "image_source": IMAGE, "configdrive": 12}, "configdrive"),
    ({"target": "manage", "image_source": "img"}, "image_source"),
    ({"target": "active", "image_source": "http://images.example/a.img"}, "image_checksum"),
    ({"target": "active", "image_source": "https://images.example/a.img", "image_checksum": "abc"}, "image_checksum"),
    ({"target": "active", "image_source": "not-registered"}, "image_source"),
    ({"target": "active", "image_source": "file://relative/path"}, "image_source"),
    ({"target": "clean", "erase": "everything"}, "erase"),
    ({"target": "active", "image_source": "img", "erase": "full"}, "erase"),
    ({"target": "clean", "image_checksum": "0" * 64}, "image_checksum"),
])
def test_provision_inputs_are_validated(client, body, field) -> None:
    make_node(client)
    response = client.put("/v1/nodes/n1/states/provision", json=body)
    assert response.status_code == 400, response.json
    assert response.json["code"] == "validation_error"
    assert field in response.json["errors"] and field in response.json["message"]
    assert "x" * 100 not in response.get_data(as_text=True)


def test_automated_clean_can_be_switched_off(client, settings) -> None:
    ctx = build_context(settings.replace(automated_clean=False))
    ctx.name = conductors.register(ctx).name
    try:
        make_node(client)
        put(client, "manage")
        drain(ctx)
        put(client, "provide")
        drain(ctx)
        assert states(client)["provision_state"] == "available"
    finally:
        ctx.close()


def test_a_mac_taken_while_inspection_records_it_is_a_warning(client, anonymous, conductor_ctx, settings,
                                                               monkeypatch) -> None:
    from conductor.core import inventory

    if conductor_ctx.db.engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises writers: the other one waits for this step's commit (PostgreSQL pass)")
    make_node(client)
    make_node(client, "n2")
    waiting_in(client, conductor_ctx, "inspect")
    looked_up = inventory._owners
    raced: list[bool] = []

    def then_taken(session, addresses):  # type: ignore[no-untyped-def]
        owners = looked_up(session, addresses)
        if not raced:
            raced.append(True)
            # Another writer (n2's inspection, a POST /v1/ports) takes the MAC right after the look-up.
            with conductor_ctx.db.engine.begin() as conn:
                n2 = conn.execute(sa.select(Node.id).where(Node.name == "n2")).scalar_one()
                conn.execute(sa.insert(Port.__table__).values(
                    uuid="00000000-0000-4000-8000-0000000000aa", node_id=n2, address="52:54:00:00:00:09",
                    created_at=utcnow()))
        return owners

    monkeypatch.setattr(inventory, "_owners", then_taken)
    agent(anonymous, settings, client, inventory={"nics": [{"name": "eth0", "mac": "52:54:00:00:00:09"},
                                                           {"name": "eth1", "mac": "52:54:00:00:00:0a"}]})
    drain(conductor_ctx)
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "manageable", node["last_error"]
    assert [p["address"] for p in client.get("/v1/ports", query_string={"node": "n1"}).json["ports"]] \
        == ["52:54:00:00:00:0a"]
    warnings = [h["message"] for h in client.get("/v1/nodes/n1/history").json["history"]
                if h["event"] == "inspect.ports" and h["severity"] == "warning"]
    assert len(warnings) == 1 and "52:54:00:00:00:09" in warnings[0]


def test_a_node_without_ports_is_warned_about_when_its_agent_boots(client, conductor_ctx) -> None:
    make_node(client)
    make_node(client, "n2")
    assert client.post("/v1/ports", json={"node": "n2", "address": "52:54:00:00:00:22"}).status_code == 201
    for node in ("n1", "n2"):
        waiting_in(client, conductor_ctx, "inspect", node)

    def warned(node: str) -> list[str]:
        return [h["message"] for h in client.get(f"/v1/nodes/{node}/history").json["history"]
                if h["event"] == "agent.no_ports"]

    assert len(warned("n1")) == 1 and "conductor port create" in warned("n1")[0]
    assert warned("n2") == []
