"""The node endpoints: contract, validation, secrets, pagination, deletion."""

from __future__ import annotations

import uuid

import pytest


def create(client, **fields):  # type: ignore[no-untyped-def]
    body = {"driver": "fake", **fields}
    response = client.post("/v1/nodes", json=body)
    assert response.status_code == 201, response.json
    return response.json


def test_create_returns_the_node_with_every_field(client) -> None:
    response = client.post("/v1/nodes", json={"name": "n1", "driver": "fake", "properties": {"rack": 4}})
    assert response.status_code == 201
    node = response.json
    for field in ("uuid", "name", "driver", "driver_info", "properties", "power_state",
                  "target_power_state", "provision_state", "target_provision_state", "last_error",
                  "maintenance", "reservation", "created_at", "updated_at"):
        assert field in node
    assert node["provision_state"] == "enroll"
    assert node["power_state"] is None
    assert node["properties"] == {"rack": 4}
    assert response.headers["Location"] == f"/v1/nodes/{node['uuid']}"
    assert client.get(f"/v1/nodes/{node['uuid']}").json == node
    assert client.get("/v1/nodes/n1").json == node


def test_client_chosen_uuid_is_kept_and_unique(client) -> None:
    chosen = str(uuid.uuid4())
    assert create(client, uuid=chosen)["uuid"] == chosen
    response = client.post("/v1/nodes", json={"driver": "fake", "uuid": chosen})
    assert response.status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "driver"),
        ({"driver": "fake", "driver_info": {"fake_delay": -1}}, "driver_info.fake_delay"),
        ({"driver": "fake", "driver_info": {"fake_delay": "soon"}}, "driver_info.fake_delay"),
        ({"driver": "fake", "driver_info": {"bmc_typo": 1}}, "driver_info.bmc_typo"),
        ({"driver": "fake", "name": "has space"}, "name"),
        ({"driver": "fake", "name": str(uuid.uuid4())}, "name"),
        ({"driver": "fake", "colour": "red"}, "colour"),
        ({"driver": "fake", "uuid": "not-a-uuid"}, "uuid"),
    ],
)
def test_invalid_bodies_get_400_with_field_errors(client, body, field) -> None:
    response = client.post("/v1/nodes", json=body)
    assert response.status_code == 400
    assert response.json["code"] == "validation_error"
    assert field in response.json["errors"]
    assert response.json["message"]
    assert client.get("/v1/nodes").json["nodes"] == []


def test_unknown_driver_is_400_unknown_driver(client) -> None:
    response = client.post("/v1/nodes", json={"driver": "nope"})
    assert response.status_code == 400
    assert response.json["code"] == "unknown_driver"
    assert "fake" in response.json["message"]


def test_duplicate_name_is_409(client) -> None:
    create(client, name="dup")
    response = client.post("/v1/nodes", json={"driver": "fake", "name": "dup"})
    assert response.status_code == 409
    assert response.json["code"] == "node_name_in_use"


def test_unknown_node_is_404_node_not_found(client) -> None:
    for path in ("/v1/nodes/ghost", f"/v1/nodes/{uuid.uuid4()}", "/v1/nodes/ghost/states",
                 "/v1/nodes/ghost/history"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json["code"] == "node_not_found"
    response = client.put("/v1/nodes/ghost/states/power", json={"target": "power on"})
    assert response.json["code"] == "node_not_found"


def test_passwords_are_write_only(client, ctx, monkeypatch) -> None:
    from conductor.drivers import base, fake

    # A driver field that is a secret: the fake driver accepts one for this test.
    monkeypatch.setitem(fake._FIELDS, "fake_password", base.Field("secret"))
    node = create(client, driver_info={"fake_password": "hunter2", "fake_delay": 1})
    assert node["driver_info"] == {"fake_password": "******", "fake_delay": 1}
    assert "hunter2" not in client.get("/v1/nodes").get_data(as_text=True)
    # Sending the mask back keeps the stored secret; a new value replaces it.
    patched = client.patch(f"/v1/nodes/{node['uuid']}",
                           json={"driver_info": {"fake_password": "******", "fake_delay": 2}})
    assert patched.status_code == 200
    from conductor import secretbox
    from conductor.service import nodes as node_service

    with ctx.db.session() as session:
        stored = node_service.find(session, node["uuid"]).driver_info
        assert secretbox.is_sealed(stored["fake_password"])
        assert secretbox.of(session).open_info(stored) == {"fake_password": "hunter2", "fake_delay": 2}
    client.patch(f"/v1/nodes/{node['uuid']}", json={"driver_info": {"fake_password": "new"}})
    with ctx.db.session() as session:
        stored = node_service.find(session, node["uuid"]).driver_info
        assert secretbox.of(session).open(stored["fake_password"]) == "new"


def test_merge_patch(client) -> None:
    node = create(client, name="p1", properties={"a": 1, "b": 2})
    response = client.patch("/v1/nodes/p1", json={"properties": {"a": None, "c": 3}, "name": "p2",
                                                  "maintenance": True, "maintenance_reason": "fan"})
    assert response.status_code == 200
    assert response.json["properties"] == {"b": 2, "c": 3}
    assert response.json["name"] == "p2"
    assert response.json["maintenance"] is True
    assert response.json["maintenance_reason"] == "fan"
    assert client.get("/v1/nodes/p1").status_code == 404
    assert client.patch(f"/v1/nodes/{node['uuid']}", json={"provision_state": "active"}).status_code == 400
    off = client.patch("/v1/nodes/p2", json={"maintenance": False})
    assert off.json["maintenance_reason"] is None


def test_list_filters_and_pages(client) -> None:
    created = [create(client, name=f"n{i}") for i in range(5)]
    client.patch("/v1/nodes/n3", json={"maintenance": True})
    page = client.get("/v1/nodes?limit=2").json
    assert [n["name"] for n in page["nodes"]] == ["n0", "n1"]
    page2 = client.get(page["next"]).json
    assert [n["name"] for n in page2["nodes"]] == ["n2", "n3"]
    page3 = client.get(page2["next"]).json
    assert [n["name"] for n in page3["nodes"]] == ["n4"] and page3["next"] is None
    assert [n["name"] for n in client.get("/v1/nodes?maintenance=true").json["nodes"]] == ["n3"]
    assert len(client.get("/v1/nodes?provision_state=enroll&driver=fake").json["nodes"]) == 5
    assert client.get("/v1/nodes?provision_state=available").json["nodes"] == []
    assert client.get("/v1/nodes?provision_state=bogus").status_code == 400
    assert client.get("/v1/nodes?limit=0").status_code == 400
    assert client.get(f"/v1/nodes?marker={uuid.uuid4()}").json["code"] == "node_not_found"
    assert len(created) == 5


def test_delete(client) -> None:
    create(client, name="gone")
    assert client.delete("/v1/nodes/gone").status_code == 204
    assert client.get("/v1/nodes/gone").status_code == 404
    assert client.delete("/v1/nodes/gone").status_code == 404


def test_delete_refused_while_a_transition_is_in_progress(client) -> None:
    create(client, name="busy")
    accepted = client.put("/v1/nodes/busy/states/power", json={"target": "power on"})
    response = client.delete("/v1/nodes/busy")
    assert response.status_code == 409
    assert response.json["code"] == "transition_in_progress"
    assert response.json["request_id"] == accepted.json["id"]


def test_openapi_and_docs_are_served(client) -> None:
    spec = client.get("/openapi.json").json
    assert spec["info"]["title"]
    for path in ("/v1/nodes", "/v1/nodes/{ident}/states", "/v1/nodes/{ident}/states/power",
                 "/v1/nodes/{ident}/states/provision", "/v1/requests/{request_id}", "/v1/conductors"):
        assert path in spec["paths"], path
    put = spec["paths"]["/v1/nodes/{ident}/states/power"]["put"]
    assert "202" in put["responses"] and "400" in put["responses"]
    # (Not webargs' 422 for an invalid body, which is 400 here: only a reused Idempotency-Key.)
    assert put["responses"]["422"]["description"].endswith("`idempotency_key_reused`")
    assert client.get("/docs").status_code == 200


def test_unknown_route_and_method_are_json(client) -> None:
    response = client.get("/v1/nope")
    assert response.status_code == 404 and response.json["code"] == "not_found"
    response = client.post("/v1/nodes/x/states")
    assert response.status_code == 405 and response.json["code"] == "method_not_allowed"


def test_non_json_body_is_400(client) -> None:
    response = client.post("/v1/nodes", data="driver=fake", content_type="text/plain")
    assert response.status_code == 400
    assert response.json["code"] == "validation_error"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/nodes/a%00b", None),
        ("GET", "/v1/nodes?marker=a%00b", None),
        ("GET", "/v1/requests?node=a%00b", None),
        ("POST", "/v1/nodes", {"driver": "fake", "maintenance_reason": "a\u0000b"}),
    ],
)
def test_nul_characters_are_400_not_500(client, method, path, body) -> None:
    response = client.open(path, method=method, json=body)
    assert response.status_code == 400
    assert response.json["code"] == "validation_error"


def test_deeply_nested_json_is_400(client) -> None:
    body = '{"driver": "fake", "properties": {"a": ' + "[" * 100000 + "]" * 100000 + "}}"
    response = client.post("/v1/nodes", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json["code"] == "validation_error"


def test_oversized_fields_and_markers_are_400(client) -> None:
    big = {"driver": "fake", "properties": {"blob": "x" * (70 * 1024)}}
    response = client.post("/v1/nodes", json=big)
    assert response.status_code == 400 and "properties" in response.json["errors"]
    create(client, name="h1")
    assert client.get("/v1/nodes/h1/history?marker=" + "9" * 30).status_code == 400


def test_concurrent_patches_of_driver_info_are_both_kept(client, ctx, monkeypatch) -> None:
    from conductor.service import nodes as node_service

    create(client, name="p1", driver_info={"fake_delay": 1})
    real_apply = node_service._apply_patch
    real_patch = node_service.patch
    raced = []

    def apply_after_a_rival(session, node, values, changes):  # type: ignore[no-untyped-def]
        if not raced:
            raced.append(True)  # another API process's PATCH lands between our read and our write
            with ctx.db.session() as other:
                real_patch(other, "p1", {"driver_info": {"fake_fail": "boom"}})
        return real_apply(session, node, values, changes)

    monkeypatch.setattr(node_service, "_apply_patch", apply_after_a_rival)
    response = client.patch("/v1/nodes/p1", json={"driver_info": {"fake_hang": 1}})
    assert response.status_code == 200
    assert response.json["driver_info"] == {"fake_delay": 1, "fake_fail": "boom", "fake_hang": 1}
