"""Version discovery, microversion negotiation, the error envelope and authentication under /baremetal."""

from __future__ import annotations

import base64

import pytest

from conductor.api.ironic import versions
from tests.conftest import make_token
from tests.unit.api.ironic.conftest import fault

RANGE = {"X-OpenStack-Ironic-API-Minimum-Version": "1.1", "X-OpenStack-Ironic-API-Maximum-Version": "1.80"}


def _range_headers(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {k: response.headers.get(k) for k in RANGE}


@pytest.mark.parametrize("path", ["/baremetal", "/baremetal/"])
def test_root_lists_the_version_without_a_token(anonymous, path) -> None:
    response = anonymous.get(path)
    assert response.status_code == 200
    body = response.get_json()
    assert body["name"] == "OpenStack Ironic API"
    assert body["default_version"] == body["versions"][0]
    version = body["versions"][0]
    assert version["id"] == "v1" and version["status"] == "CURRENT"
    assert (version["min_version"], version["version"]) == ("1.1", "1.80")
    assert version["links"] == [{"href": "http://localhost/baremetal/v1/", "rel": "self"}]
    assert _range_headers(response) == RANGE
    # No version asked for: answered in the lowest, as Ironic does.
    assert response.headers["X-OpenStack-Ironic-API-Version"] == "1.1"
    assert response.headers["X-OpenStack-Request-Id"].startswith("req-")


@pytest.mark.parametrize("path", ["/baremetal/v1", "/baremetal/v1/"])
def test_v1_document_without_a_token(anonymous, path) -> None:
    response = anonymous.get(path, headers={"X-OpenStack-Ironic-API-Version": "latest"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == "v1"
    assert body["media_types"] == {"base": "application/json", "type": "application/vnd.openstack.ironic.v1+json"}
    assert body["version"]["version"] == "1.80"
    assert body["nodes"][0] == {"href": "http://localhost/baremetal/v1/nodes/", "rel": "self"}
    assert "conductors" in body
    assert response.headers["X-OpenStack-Ironic-API-Version"] == "1.80"
    # Conductors appeared in 1.49.
    assert "conductors" not in anonymous.get(path, headers={"X-OpenStack-Ironic-API-Version": "1.48"}).get_json()


@pytest.mark.parametrize("header, value, negotiated", [
    ("X-OpenStack-Ironic-API-Version", "1.31", "1.31"),
    ("X-OpenStack-Ironic-API-Version", "latest", "1.80"),
    ("X-OpenStack-Ironic-API-Version", "LATEST", "1.80"),
    ("OpenStack-API-Version", "baremetal 1.42", "1.42"),
    ("OpenStack-API-Version", "compute 2.1, baremetal latest", "1.80"),
])
def test_the_version_asked_for_is_the_version_answered(ironic, header, value, negotiated) -> None:
    response = ironic.client.get("/baremetal/v1/nodes", headers={header: value})
    assert response.status_code == 200
    assert response.headers["X-OpenStack-Ironic-API-Version"] == negotiated


@pytest.mark.parametrize("value, says", [
    ("1.81", "The supported version range is: [1.1, 1.80]"),
    ("1.0", "The supported version range is: [1.1, 1.80]"),
    ("2.1", "Mutually exclusive versions requested"),
    ("one", "Invalid value for X-OpenStack-Ironic-API-Version header"),
])
def test_an_unserved_version_is_406_with_the_range(ironic, value, says) -> None:
    response = ironic.client.get("/baremetal/v1/nodes", headers={"X-OpenStack-Ironic-API-Version": value})
    assert response.status_code == 406
    assert _range_headers(response) == RANGE
    assert says in fault(response)["faultstring"]
    assert fault(response)["faultcode"] == "Client"
    assert response.headers["X-Conductor-Error-Code"] == "not_acceptable"


def test_errors_wear_ironics_envelope(ironic, anonymous) -> None:
    missing = ironic.get("/nodes/no-such-node")
    assert missing.status_code == 404
    assert fault(missing) == {"faultcode": "Client", "faultstring": "Node no-such-node not found.", "debuginfo": None}
    assert missing.headers["Content-Type"] == "application/json"
    route = ironic.get("/chassis")
    assert route.status_code == 404 and _range_headers(route) == RANGE
    assert fault(route)["faultstring"]
    assert fault(anonymous.get("/baremetal/v1/nodes")).get("faultstring", "").startswith("This API needs a token")


def test_our_own_api_keeps_its_error_shape(client) -> None:
    body = client.get("/v1/nodes/no-such-node").get_json()
    assert body["code"] == "node_not_found" and "error_message" not in body
    assert "X-OpenStack-Ironic-API-Maximum-Version" not in client.get("/v1/nodes").headers


def test_tokens_as_x_auth_token_and_as_basic_password(app, ctx) -> None:
    secret = make_token(ctx, "reader")
    plain = app.test_client()
    assert plain.get("/baremetal/v1/nodes", headers={"X-Auth-Token": secret}).status_code == 200
    basic = base64.b64encode(f"anyone:{secret}".encode()).decode()
    assert plain.get("/baremetal/v1/nodes", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert plain.get("/baremetal/v1/nodes", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    wrong = plain.get("/baremetal/v1/nodes", headers={"X-Auth-Token": "nope"})
    assert wrong.status_code == 401 and "unknown or revoked" in fault(wrong)["faultstring"]
    # Our own API takes bearer tokens only, as before.
    assert plain.get("/v1/nodes", headers={"X-Auth-Token": secret}).status_code == 401
    # Roles apply as on /v1: a reader may not create.
    refused = plain.post("/baremetal/v1/nodes", json={"driver": "fake-hardware"},
                         headers={"X-Auth-Token": secret, "X-OpenStack-Ironic-API-Version": "1.80"})
    assert refused.status_code == 403


def test_parse_is_the_one_rule() -> None:
    assert versions.parse({}) == 1
    assert versions.parse({"X-OpenStack-Ironic-API-Version": " 1.9 "}) == 9
    assert versions.parse({"OpenStack-API-Version": "baremetal 1.2"}) == 2


def test_negotiation_costs_no_rate_budget(ironic, ctx) -> None:
    # python-ironicclient asks for its own latest (1.115) first, then the range it is told.
    from conductor.throttle import settings as throttle_settings

    throttle_settings.update(ctx, {"read_rate": 0.01, "read_burst": 2})
    for _ in range(5):
        assert ironic.get("/nodes", version="1.115").status_code == 406
    assert [ironic.get("/nodes").status_code for _ in range(3)] == [200, 200, 503]
