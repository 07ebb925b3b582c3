"""Ports: a node's MAC addresses, through the API (validation, uniqueness, busy nodes, deletion)."""

from __future__ import annotations

import pytest

from tests.conftest import drain, make_token


def node(client, name: str = "n1", **fields):  # type: ignore[no-untyped-def]
    response = client.post("/v1/nodes", json={"driver": "fake", "name": name, **fields})
    assert response.status_code == 201, response.json
    return response.json


def add_port(client, node_ident: str, address: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/ports", json={"node": node_ident, "address": address})


def test_create_show_list_delete(client) -> None:
    n1 = node(client)
    created = add_port(client, "n1", "52:54:00:AB:CD:EF")
    assert created.status_code == 201
    port = created.json
    assert port["address"] == "52:54:00:ab:cd:ef"
    assert port["node_uuid"] == n1["uuid"]
    assert created.headers["Location"] == f"/v1/ports/{port['uuid']}"
    assert client.get(f"/v1/ports/{port['uuid']}").json == port
    assert client.get("/v1/ports", query_string={"node": "n1"}).json["ports"] == [port]
    assert client.get("/v1/ports", query_string={"address": "52-54-00-ab-cd-ef"}).json["ports"] == [port]
    assert client.delete(f"/v1/ports/{port['uuid']}").status_code == 204
    missing = client.get(f"/v1/ports/{port['uuid']}")
    assert missing.status_code == 404 and missing.json["code"] == "port_not_found"
    assert client.delete(f"/v1/ports/{port['uuid']}").json["code"] == "port_not_found"


@pytest.mark.parametrize(
    ("spelling", "stored"),
    [
        ("52:54:00:AB:CD:EF", "52:54:00:ab:cd:ef"),
        ("52-54-00-ab-cd-ef", "52:54:00:ab:cd:ef"),
        ("525400ABCDEF", "52:54:00:ab:cd:ef"),
        ("52:54:0:1:2:3", "52:54:00:01:02:03"),
        (" 52:54:00:ab:cd:ef ", "52:54:00:ab:cd:ef"),
    ],
)
def test_macs_are_normalised(client, spelling, stored) -> None:
    node(client)
    assert add_port(client, "n1", spelling).json["address"] == stored


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("52:54:00:ab:cd", "not a MAC address"),
        ("52:54:00:ab:cd:ef:01", "not a MAC address"),
        ("52:54:00:ab-cd:ef", "not a MAC address"),
        ("g2:54:00:ab:cd:ef", "not a MAC address"),
        ("", "not a MAC address"),
        ("01:00:5e:00:00:01", "multicast address"),
        ("ff:ff:ff:ff:ff:ff", "multicast address"),
        ("00:00:00:00:00:00", "all-zero address"),
    ],
)
def test_malformed_macs_are_400_and_nothing_is_created(client, address, why) -> None:
    node(client)
    response = add_port(client, "n1", address)
    assert response.status_code == 400
    assert response.json["code"] == "validation_error"
    assert response.json["errors"] == {"address": why}
    assert client.get("/v1/ports").json["ports"] == []


def test_a_mac_belongs_to_one_port_of_the_deployment(client) -> None:
    node(client, "n1")
    node(client, "n2")
    first = add_port(client, "n1", "52:54:00:00:00:01").json
    for owner in ("n1", "n2"):
        again = add_port(client, owner, "52-54-00-00-00-01")
        assert again.status_code == 409
        assert again.json["code"] == "port_address_in_use"
        assert again.json["port"] == first["uuid"]
        assert first["uuid"] in again.json["message"]
    assert len(client.get("/v1/ports").json["ports"]) == 1


def test_unknown_node_is_404(client) -> None:
    response = add_port(client, "nope", "52:54:00:00:00:01")
    assert response.status_code == 404 and response.json["code"] == "node_not_found"


def test_ports_given_at_enrolment_all_or_nothing(client) -> None:
    n1 = node(client, "n1", ports=["52:54:00:00:00:01", "52-54-00-00-00-02", "525400000001"])
    ports = client.get("/v1/ports", query_string={"node": "n1"}).json["ports"]
    assert [p["address"] for p in ports] == ["52:54:00:00:00:01", "52:54:00:00:00:02"]  # repeats once
    assert {p["node_uuid"] for p in ports} == {n1["uuid"]}
    # One MAC taken: no node, no port.
    taken = client.post("/v1/nodes", json={"driver": "fake", "name": "n2",
                                           "ports": ["52:54:00:00:00:03", "52:54:00:00:00:02"]})
    assert taken.status_code == 409 and taken.json["code"] == "port_address_in_use"
    assert client.get("/v1/nodes/n2").status_code == 404
    assert client.get("/v1/ports", query_string={"address": "52:54:00:00:00:03"}).json["ports"] == []
    # One MAC malformed: 400 naming it.
    bad = client.post("/v1/nodes", json={"driver": "fake", "name": "n3", "ports": ["52:54:00:00:00:04", "nope"]})
    assert bad.status_code == 400 and bad.json["errors"] == {"ports[1]": "not a MAC address"}
    assert client.get("/v1/nodes/n3").status_code == 404


def test_a_nodes_ports_go_with_it(client) -> None:
    node(client, "n1", ports=["52:54:00:00:00:01"])
    node(client, "n2", ports=["52:54:00:00:00:02"])
    assert client.delete("/v1/nodes/n1").status_code == 204
    remaining = client.get("/v1/ports").json["ports"]
    assert [p["address"] for p in remaining] == ["52:54:00:00:00:02"]
    # The MAC is free again.
    assert add_port(client, "n2", "52:54:00:00:00:01").status_code == 201


def test_ports_of_a_node_in_transition_are_not_changed(client, conductor_ctx) -> None:
    node(client, "n1", ports=["52:54:00:00:00:01"])
    port = client.get("/v1/ports").json["ports"][0]
    accepted = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    assert accepted.status_code == 202
    added = add_port(client, "n1", "52:54:00:00:00:02")
    assert added.status_code == 409 and added.json["code"] == "transition_in_progress"
    assert added.json["request_id"] == accepted.json["id"]
    deleted = client.delete(f"/v1/ports/{port['uuid']}")
    assert deleted.status_code == 409 and deleted.json["code"] == "transition_in_progress"
    drain(conductor_ctx)
    assert add_port(client, "n1", "52:54:00:00:00:02").status_code == 201
    assert client.delete(f"/v1/ports/{port['uuid']}").status_code == 204


def test_pagination(client) -> None:
    node(client, "n1", ports=[f"52:54:00:00:00:{i:02x}" for i in range(1, 6)])
    first = client.get("/v1/ports", query_string={"limit": 2}).json
    assert len(first["ports"]) == 2 and first["next"]
    second = client.get(first["next"]).json
    third = client.get(second["next"]).json
    addresses = [p["address"] for p in first["ports"] + second["ports"] + third["ports"]]
    assert addresses == [f"52:54:00:00:00:{i:02x}" for i in range(1, 6)]
    assert third["next"] is None


def test_readers_list_operators_change(app, ctx) -> None:
    reader = app.test_client()
    reader.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {make_token(ctx, 'reader')}"
    operator = app.test_client()
    operator.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {make_token(ctx, 'operator')}"
    node(operator)
    denied = add_port(reader, "n1", "52:54:00:00:00:01")
    assert denied.status_code == 403
    assert add_port(operator, "n1", "52:54:00:00:00:01").status_code == 201
    assert len(reader.get("/v1/ports").json["ports"]) == 1
