"""Boot device requests: PUT /v1/nodes/<node>/management/boot_device (202, 409, 400, idempotency), GET."""

from __future__ import annotations

import pytest

from tests.conftest import drain

PATH = "/v1/nodes/n1/management/boot_device"


@pytest.fixture
def node(client):  # type: ignore[no-untyped-def]
    return client.post("/v1/nodes", json={"name": "n1", "driver": "fake"}).json


def test_nothing_recorded_yet(client, node) -> None:
    assert client.get(PATH).json == {"boot_device": None, "persistent": None, "observed_at": None, "source": None}


def test_put_is_a_management_request_that_sets_and_records_the_device(client, conductor_ctx, node) -> None:
    response = client.put(PATH, json={"boot_device": "pxe", "persistent": True})
    assert response.status_code == 202, response.json
    body = response.json
    assert (body["kind"], body["target"], body["params"]) == ("management", "pxe", {"persistent": True})
    assert response.headers["Location"] == f"/v1/requests/{body['id']}"
    states = client.get("/v1/nodes/n1/states").json
    assert states["request_id"] == body["id"]
    assert states["target_power_state"] is None and states["target_provision_state"] is None
    drain(conductor_ctx)
    assert client.get(f"/v1/requests/{body['id']}").json["state"] == "succeeded"
    shown = client.get(PATH).json
    assert (shown["boot_device"], shown["persistent"], shown["source"]) == ("pxe", True, "bmc")
    assert shown["observed_at"]
    events = [e["event"] for e in client.get("/v1/nodes/n1/history").json["history"]]
    assert "management.boot_device" in events
    assert client.get("/v1/nodes/n1/states").json["request_id"] is None


def test_identical_is_the_same_request_other_is_409(client, node) -> None:
    first = client.put(PATH, json={"boot_device": "disk"})
    again = client.put(PATH, json={"boot_device": "disk", "persistent": False})
    assert again.status_code == 202 and again.json["id"] == first.json["id"]
    other = client.put(PATH, json={"boot_device": "disk", "persistent": True})
    assert other.status_code == 409 and other.json["request_id"] == first.json["id"]
    power = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    assert power.status_code == 409 and power.json["code"] == "transition_in_progress"


def test_idempotency_key_replays(client, node) -> None:
    headers = {"Idempotency-Key": "boot-1"}
    first = client.put(PATH, json={"boot_device": "cdrom"}, headers=headers)
    replay = client.put(PATH, json={"boot_device": "cdrom"}, headers=headers)
    assert first.status_code == replay.status_code == 202
    assert replay.json["id"] == first.json["id"]


@pytest.mark.parametrize("body", [{"boot_device": "floppy"}, {}, {"boot_device": "pxe", "extra": 1}])
def test_bad_bodies_are_400(client, node, body) -> None:
    response = client.put(PATH, json=body)
    assert response.status_code == 400 and response.json["code"] == "validation_error"


def test_unknown_node_is_404(client) -> None:
    assert client.put("/v1/nodes/nope/management/boot_device", json={"boot_device": "pxe"}).status_code == 404
    assert client.get("/v1/nodes/nope/management/boot_device").status_code == 404


def test_a_driver_failure_fails_the_request(client, conductor_ctx) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake", "driver_info": {"fake_fail": "no BMC"}})
    request_id = client.put(PATH, json={"boot_device": "pxe"}).json["id"]
    drain(conductor_ctx)
    finished = client.get(f"/v1/requests/{request_id}").json
    assert finished["state"] == "failed" and "no BMC" in finished["error"]
    assert client.get("/v1/nodes/n1").json["last_error"] == finished["error"]
