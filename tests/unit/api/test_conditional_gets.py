"""ETag and If-None-Match on what clients poll: a node's states, a request (long poll too), a node.

A poller sends back the ETag it last saw; while nothing changed it gets
304 with no body (and the same ETag), and 200 with the new body and tag as
soon as something did.
"""

from __future__ import annotations

from typing import Any

from conductor.context import Context
from tests.conftest import drain


def enrol(client: Any, name: str) -> None:
    response = client.post("/v1/nodes", json={"driver": "fake", "name": name})
    assert response.status_code == 201, response.json


def test_states_answer_304_until_the_node_changes(client: Any, conductor_ctx: Context) -> None:
    enrol(client, "p1")
    first = client.get("/v1/nodes/p1/states")
    tag = first.headers["ETag"]
    assert first.status_code == 200 and tag.startswith('"') and tag.endswith('"')
    same = client.get("/v1/nodes/p1/states", headers={"If-None-Match": tag})
    assert same.status_code == 304
    assert same.data == b""
    assert same.headers["ETag"] == tag
    # Weak comparison (RFC 9110): the weak form of the tag, one of a list, and * all match.
    for header in (f"W/{tag}", f'"other", {tag}', "*"):
        assert client.get("/v1/nodes/p1/states", headers={"If-None-Match": header}).status_code == 304, header
    assert client.get("/v1/nodes/p1/states", headers={"If-None-Match": '"other"'}).status_code == 200

    accepted = client.put("/v1/nodes/p1/states/power", json={"target": "power on"})
    assert accepted.status_code == 202
    busy = client.get("/v1/nodes/p1/states", headers={"If-None-Match": tag})
    assert busy.status_code == 200
    assert busy.json["target_power_state"] == "power on" and busy.json["request_id"] == accepted.json["id"]
    assert busy.headers["ETag"] != tag
    drain(conductor_ctx)
    done = client.get("/v1/nodes/p1/states", headers={"If-None-Match": busy.headers["ETag"]})
    assert done.status_code == 200 and done.json["power_state"] == "power on"
    assert client.get("/v1/nodes/p1/states", headers={"If-None-Match": done.headers["ETag"]}).status_code == 304


def test_any_write_of_the_node_changes_the_states_tag(client: Any) -> None:
    enrol(client, "p2")
    tag = client.get("/v1/nodes/p2/states").headers["ETag"]
    node_tag = client.get("/v1/nodes/p2").headers["ETag"]
    # A PATCH of a field the states do not show still moves their updated_at (a write of the row).
    assert client.patch("/v1/nodes/p2", json={"properties": {"rack": "r1"}}).status_code == 200
    after = client.get("/v1/nodes/p2/states", headers={"If-None-Match": tag})
    assert after.status_code == 200 and after.headers["ETag"] != tag
    assert client.get("/v1/nodes/p2", headers={"If-None-Match": node_tag}).status_code == 200


def test_the_states_tag_is_the_same_by_name_and_by_uuid(client: Any) -> None:
    enrol(client, "p3")
    uuid = client.get("/v1/nodes/p3").json["uuid"]
    tag = client.get("/v1/nodes/p3/states").headers["ETag"]
    assert client.get(f"/v1/nodes/{uuid}/states", headers={"If-None-Match": tag}).status_code == 304


def test_a_node_answers_304_to_its_current_version(client: Any) -> None:
    enrol(client, "p4")
    first = client.get("/v1/nodes/p4")
    tag = first.headers["ETag"]
    same = client.get("/v1/nodes/p4", headers={"If-None-Match": tag})
    assert (same.status_code, same.data, same.headers["ETag"]) == (304, b"", tag)
    patched = client.patch("/v1/nodes/p4", json={"properties": {"cpus": 2}})
    changed = client.get("/v1/nodes/p4", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.json["properties"] == {"cpus": 2}
    assert changed.headers["ETag"] == patched.headers["ETag"] != tag


def test_unknown_things_are_404_whatever_the_tag(client: Any) -> None:
    for path in ("/v1/nodes/none/states", "/v1/nodes/none", "/v1/requests/req-none"):
        assert client.get(path, headers={"If-None-Match": "*"}).status_code == 404, path


def test_a_request_answers_304_until_it_changes(client: Any, conductor_ctx: Context) -> None:
    enrol(client, "p5")
    request_id = client.put("/v1/nodes/p5/states/power", json={"target": "power on"}).json["id"]
    queued = client.get(f"/v1/requests/{request_id}")
    assert queued.status_code == 200 and queued.json["state"] == "queued"
    tag = queued.headers["ETag"]
    assert client.get(f"/v1/requests/{request_id}", headers={"If-None-Match": tag}).status_code == 304
    drain(conductor_ctx)
    done = client.get(f"/v1/requests/{request_id}", headers={"If-None-Match": tag})
    assert done.status_code == 200 and done.json["state"] == "succeeded"
    assert done.headers["ETag"] != tag
    # The body is the one the schema documents (the view builds it itself to tag it).
    assert set(done.json) == {"id", "node_uuid", "kind", "target", "params", "state", "step", "error", "conductor",
                              "callback_url", "callback", "created_at", "started_at", "finished_at", "updated_at"}


def test_a_long_poll_answers_304_only_if_nothing_changed_at_its_end(client: Any, conductor_ctx: Context) -> None:
    enrol(client, "p6")
    request_id = client.put("/v1/nodes/p6/states/power", json={"target": "power on"}).json["id"]
    queued = client.get(f"/v1/requests/{request_id}")
    # No conductor runs it: the wait ends at its deadline, the request as it was.
    unchanged = client.get(f"/v1/requests/{request_id}?wait=0.3", headers={"If-None-Match": queued.headers["ETag"]})
    assert (unchanged.status_code, unchanged.data) == (304, b"")
    assert unchanged.headers["ETag"] == queued.headers["ETag"]
    drain(conductor_ctx)
    # Finished: the long poll answers at once, 200 to the old tag, 304 to the finished one.
    finished = client.get(f"/v1/requests/{request_id}?wait=60", headers={"If-None-Match": queued.headers["ETag"]})
    assert finished.status_code == 200 and finished.json["state"] == "succeeded"
    again = client.get(f"/v1/requests/{request_id}?wait=60", headers={"If-None-Match": finished.headers["ETag"]})
    assert again.status_code == 304
