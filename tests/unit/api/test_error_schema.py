"""Every error body is RFC 9457 problem details matching the ``Error`` schema published in /openapi.json.

Two ways round: every detail any error is raised with (found in the source)
is a documented property, and real error responses of the API validate
against the published schema.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import conductor
from conductor import exceptions
from conductor.api import admission, errors
from tests.conftest import bearer, drain, make_token

SOURCE = Path(conductor.__file__).parent
ERROR_CLASSES = {
    name: cls for name, cls in vars(exceptions).items()
    if inspect.isclass(cls) and issubclass(cls, exceptions.ConductorError)
}
#: A value of the right type for each detail, to validate each class's body.
SAMPLES: dict[str, Any] = {
    "errors": {"field": "message"}, "request_id": "req-1", "allowed_targets": ["manage"],
    "provision_state": "enroll", "state": "running", "node": "n1", "name": "n1",
    "uuid": "8a2c4b2e-0000-4000-8000-000000000000", "holder": "c1", "maintenance_reason": None,
    "token_id": "tok-1", "subscription_id": "sub-1", "reason": "not_allowed", "required_role": "admin",
    "retry_after": 3, "bmc": "10.0.0.1", "port": "8a2c4b2e-0000-4000-8000-000000000001",
    "address": "52:54:00:00:00:01", "image": "img", "request_ids": ["req-1"],
    "instance_uuid": "8a2c4b2e-0000-4000-8000-000000000002", "etag": "\"8a2c4b2e-0000-4000-8000-000000000002-3\"",
}


def openapi_3_0_to_json_schema(schema: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` as JSON Schema's ``"type": [..., "null"]``."""
    if isinstance(schema, dict):
        out = {k: openapi_3_0_to_json_schema(v) for k, v in schema.items() if k != "nullable"}
        if schema.get("nullable") and "type" in schema:
            out["type"] = [schema["type"], "null"]
        return out
    if isinstance(schema, list):
        return [openapi_3_0_to_json_schema(v) for v in schema]
    return schema


@pytest.fixture
def error_schema(anonymous) -> dict[str, Any]:
    """The ``Error`` schema as /openapi.json publishes it."""
    spec = anonymous.get("/openapi.json").json
    return openapi_3_0_to_json_schema(spec["components"]["schemas"]["Error"])


def details_raised_in_source() -> dict[str, set[str]]:
    """detail name -> the places that raise an error with it (``Cls(..., detail=...)``)."""
    found: dict[str, set[str]] = {}
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in ERROR_CLASSES or name == "error_response":
                for keyword in node.keywords:
                    assert keyword.arg is not None, f"{path}:{node.lineno}: **details hides what is sent"
                    found.setdefault(keyword.arg, set()).add(f"{path.relative_to(SOURCE)}:{node.lineno}")
    return found


def test_every_detail_an_error_carries_is_documented(error_schema) -> None:
    found = details_raised_in_source()
    assert {"node", "subscription_id", "request_id"} <= set(found)  # the scan sees them
    documented = set(error_schema["properties"])
    # bmc only rides on BMCError, a 5xx whose details are never shown.
    missing = {k: sorted(v) for k, v in found.items() if k not in documented and k != "bmc"}
    assert not missing, f"undocumented error details: {missing}"
    assert set(error_schema["required"]) == {"type", "title", "status", "detail", "code", "message"}
    for name, prop in error_schema["properties"].items():
        assert prop.get("description"), f"Error.{name} has no description"


@pytest.mark.parametrize("name", sorted(ERROR_CLASSES))
def test_every_error_class_body_validates(error_schema, name) -> None:
    found = details_raised_in_source()
    cls = ERROR_CLASSES[name]
    details = {k: SAMPLES[k] for k in found}
    for error in (cls("message", **details), cls()):
        body = error.to_dict()
        served = errors.problem(body.pop("status"), body.pop("code"), body.pop("message"), **body)
        jsonschema.validate(served, error_schema)
        assert served["type"] == f"tag:baremetal-conductor,2026:error:{cls.code}"
        assert served["detail"] == served["message"]


def test_real_error_responses_validate(app, ctx, conductor_ctx, client, anonymous, error_schema,
                                      monkeypatch) -> None:
    reader = app.test_client()
    reader.environ_base["HTTP_AUTHORIZATION"] = bearer(make_token(ctx, "reader"))["Authorization"]
    for name in ("n1", "n2"):
        assert client.post("/v1/nodes", json={"name": name, "driver": "fake"}).status_code == 201
    assert client.put("/v1/nodes/n1/states/provision", json={"target": "manage"}).status_code == 202
    drain(conductor_ctx)
    assert client.patch("/v1/nodes/n1", json={"maintenance": True}).status_code == 200
    assert client.put("/v1/nodes/n2/states/provision", json={"target": "manage"}).status_code == 202
    monkeypatch.setattr(admission, "HEARTBEAT_NODE_BURST", 1)
    monkeypatch.setattr(admission, "HEARTBEAT_NODE_RATE", 0.001)
    anonymous.post("/v1/nodes/n1/heartbeat", json={}, headers={"X-Agent-Token": "guess"})
    answers = {
        "node_not_found": client.get("/v1/nodes/nothing"),
        "node_name_in_use": client.post("/v1/nodes", json={"name": "n2", "driver": "fake"}),
        "node_in_maintenance": client.put("/v1/nodes/n1/states/provision", json={"target": "provide"}),
        "invalid_transition": client.put("/v1/nodes/n1/states/provision", json={"target": "active",
                                                                                "image_source": "http://i.example/x",
                                                                                "image_checksum": "0" * 64}),
        "transition_in_progress": client.put("/v1/nodes/n2/states/provision", json={"target": "inspect"}),
        "unknown_driver": client.post("/v1/nodes", json={"name": "n3", "driver": "nope"}),
        "validation_error": client.post("/v1/nodes", json={"driver": 3}),
        "bad JSON": client.post("/v1/nodes", data="{", content_type="application/json"),
        "request_not_found": client.get("/v1/requests/req-nothing"),
        "token_not_found": client.delete("/v1/tokens/tok-nothing"),
        "subscription_not_found": client.get("/v1/subscriptions/sub-nothing"),
        "unauthorized": anonymous.get("/v1/nodes"),
        "forbidden": reader.post("/v1/nodes", json={"name": "n4", "driver": "fake"}),
        "not_found": client.get("/v1/nothing"),
        "method_not_allowed": client.put("/v1/nodes"),
        "payload_too_large": client.post("/v1/nodes", data=b"x" * (2 << 20), content_type="application/json"),
        "invalid_agent_token": anonymous.post("/v1/nodes/n2/heartbeat", json={}),
        "rate_limited": anonymous.post("/v1/nodes/n1/heartbeat", json={}, headers={"X-Agent-Token": "guess"}),
    }
    for what, response in answers.items():
        assert response.status_code >= 400, (what, response.json)
        assert response.mimetype == "application/problem+json", what
        body = response.json
        assert body["type"] == "tag:baremetal-conductor,2026:error:" + body["code"], what
        assert body["status"] == response.status_code, what
        assert body["detail"] == body["message"] and body["title"], what
        try:
            jsonschema.validate(response.json, error_schema)
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{what}: {response.json}: {exc.message}") from None
    assert answers["node_not_found"].json["node"] == "nothing"
    assert answers["transition_in_progress"].json["request_id"]
    assert answers["node_in_maintenance"].json["maintenance_reason"] is None
    assert answers["rate_limited"].json["retry_after"] >= 1
    assert answers["node_not_found"].json["title"] == "Node not found"
