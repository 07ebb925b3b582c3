"""The API's representations: the schemas are the one definition, the hot path's JSON equals them.

Each output schema dumps a model object (or a service's row).  Here, for
objects with every field set and with every nullable field null:

* the dump is pinned field by field (names, ISO 8601 timestamps, masked
  secrets): what clients see must not change by accident;
* every declared field is in the dump (a field whose ``attribute`` names
  nothing would otherwise vanish silently);
* the hand-built hot path (:func:`conductor.api.schemas.node_states_json`)
  equals the schema's dump after a JSON round trip, with the same keys, so
  a field added to one and not the other fails;
* the webhook snapshots, deliberately smaller, are projections of the
  API's representations (same names, same values).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import marshmallow as ma
import pytest
import sqlalchemy as sa

from conductor.api import schemas
from conductor.auth.tokens import Issued
from conductor.callbacks import events
from conductor.models import ApiToken, CallbackDelivery, CallbackSubscription, Node, NodeHistory, Port, Request
from conductor.service import nodes as node_service

T0 = dt.datetime(2026, 12, 6, 7, 1, 2, 345678, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=5)
T0_JSON = "2026-12-06T07:01:02.345678+00:00"
T1_JSON = "2026-12-06T07:01:07.345678+00:00"
NODE_UUID = "0b6f7a8e-4c5d-4e6f-8a9b-0c1d2e3f4a5b"


def round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def dump(schema: ma.Schema, obj: Any) -> dict[str, Any]:
    """``schema``'s dump of ``obj`` after a JSON round trip, checked to hold every declared field."""
    body = round_trip(schema.dump(obj))
    assert set(body) == set(schema.fields), "a field of the schema is missing from its dump"
    return body


def make_node(full: bool) -> Node:
    return Node(
        uuid=NODE_UUID,
        name="n1" if full else None,
        driver="ipmi",
        driver_info={"ipmi_address": "10.0.0.1", "ipmi_password": "s3cret", "old_password": None},
        properties={"rack": 4},
        power_state="power on" if full else None,
        target_power_state="power off" if full else None,
        provision_state="active",
        target_provision_state="deleted" if full else None,
        last_error="BMC timed out" if full else None,
        maintenance=full,
        maintenance_reason="disk swap" if full else None,
        fault="power failure" if full else None,
        reservation="cond-1" if full else None,
        active_request_id="req-1" if full else None,
        created_at=T0,
        updated_at=T1,
    )


def make_delivery() -> CallbackDelivery:
    return CallbackDelivery(
        webhook_id="msg_1", event_type="request.finished", node_uuid=NODE_UUID, request_id="req-1", state="failed",
        attempts=3, last_status=500, last_error="HTTP 500", next_at=T1, created_at=T0, finished_at=T1,
    )


def make_request(full: bool, callback: str | None = None) -> Request:
    """A request; ``callback``: None (no callback_url), ``pending`` (no delivery yet) or ``made``."""
    request = Request(
        id="req-1",
        node_id=1,
        node_uuid=NODE_UUID,
        kind="provision",
        target="active",
        params={"image_source": "http://user:pw@images:8080/i.img", "configdrive": {"meta": "x"}} if full else {},
        state="failed" if full else "queued",
        step="deploy 2/5: agent write_image" if full else None,
        error="agent failed" if full else None,
        conductor="cond-1" if full else None,
        callback_url="http://receiver/cb" if callback else None,
        created_at=T0,
        started_at=T0 if full else None,
        finished_at=T1 if full else None,
        updated_at=T1,
    )
    if callback == "made":
        request.callback_delivery = make_delivery()
    return request


def test_node_dump_masks_secrets_and_renames_the_active_request() -> None:
    assert dump(schemas.Node(), make_node(True)) == {
        "uuid": NODE_UUID, "name": "n1", "driver": "ipmi",
        "driver_info": {"ipmi_address": "10.0.0.1", "ipmi_password": "******", "old_password": None},
        "properties": {"rack": 4}, "power_state": "power on", "target_power_state": "power off",
        "provision_state": "active", "target_provision_state": "deleted", "last_error": "BMC timed out",
        "maintenance": True, "maintenance_reason": "disk swap", "fault": "power failure", "reservation": "cond-1",
        "request_id": "req-1", "created_at": T0_JSON, "updated_at": T1_JSON,
    }
    nulls = dump(schemas.Node(), make_node(False))
    assert [k for k, v in nulls.items() if v is None] == [
        "name", "power_state", "target_power_state", "target_provision_state", "last_error", "maintenance_reason",
        "fault", "reservation", "request_id",
    ]


def test_request_dump_shows_public_params_and_its_callback() -> None:
    assert dump(schemas.RequestOut(), make_request(True, "made")) == {
        "id": "req-1", "node_uuid": NODE_UUID, "kind": "provision", "target": "active",
        "params": {"image_source": "http://user:******@images:8080/i.img", "configdrive": "<13 bytes>"},
        "state": "failed", "step": "deploy 2/5: agent write_image", "error": "agent failed", "conductor": "cond-1",
        "callback_url": "http://receiver/cb",
        "callback": {"id": "msg_1", "state": "failed", "attempts": 3, "last_status": 500, "last_error": "HTTP 500",
                     "next_at": T1_JSON},
        "created_at": T0_JSON, "started_at": T0_JSON, "finished_at": T1_JSON, "updated_at": T1_JSON,
    }
    # Until the request finishes its delivery does not exist: pending.
    assert dump(schemas.RequestOut(), make_request(True, "pending"))["callback"] == {
        "id": None, "state": "pending", "attempts": 0, "last_status": None, "last_error": None, "next_at": None,
    }
    nulls = dump(schemas.RequestOut(), make_request(False))
    assert nulls["params"] == {}
    assert [k for k, v in nulls.items() if v is None] == [
        "step", "error", "conductor", "callback_url", "callback", "started_at", "finished_at",
    ]


def test_pending_callback_has_every_field_of_a_delivery() -> None:
    assert set(schemas.PENDING_CALLBACK) == {f.attribute or name for name, f in schemas.CallbackStatus().fields.items()}


def test_history_port_token_subscription_and_delivery_dumps() -> None:
    entry = NodeHistory(id=7, node_id=1, created_at=T0, event="power.changed", severity="info", message="On.",
                        request_id="req-1", conductor="cond-1", provision_state="active", power_state="power on")
    assert dump(schemas.HistoryEntry(), entry) == {
        "id": 7, "created_at": T0_JSON, "event": "power.changed", "severity": "info", "message": "On.",
        "request_id": "req-1", "conductor": "cond-1", "provision_state": "active", "power_state": "power on",
    }
    port = Port(uuid="5d1c2b3a-0f9e-4d8c-8b7a-6f5e4d3c2b1a", node=make_node(True), address="52:54:00:12:34:56",
                created_at=T0)
    assert dump(schemas.Port(), port) == {
        "uuid": "5d1c2b3a-0f9e-4d8c-8b7a-6f5e4d3c2b1a", "node_uuid": NODE_UUID, "address": "52:54:00:12:34:56",
        "created_at": T0_JSON,
    }
    token = ApiToken(id="tok-1", name="ci", role="operator", secret_hash="h", created_at=T0, revoked_at=T1)
    shown = {"id": "tok-1", "name": "ci", "role": "operator", "created_at": T0_JSON, "revoked_at": T1_JSON}
    assert dump(schemas.Token(), token) == shown
    assert dump(schemas.TokenCreated(), Issued(token, "s3cret", "whsec_x")) == {
        **shown, "token": "s3cret", "signing_secret": "whsec_x",
    }
    subscription = CallbackSubscription(id="sub-1", url="http://receiver/", events=["node.*"], nodes=[NODE_UUID],
                                        active=False, disabled_reason="410 Gone", created_at=T0, updated_at=T1)
    assert dump(schemas.Subscription(), subscription) == {
        "id": "sub-1", "url": "http://receiver/", "events": ["node.*"], "nodes": [NODE_UUID], "active": False,
        "disabled_reason": "410 Gone", "created_at": T0_JSON, "updated_at": T1_JSON,
    }
    assert dump(schemas.Delivery(), make_delivery()) == {
        "id": "msg_1", "event_type": "request.finished", "node_uuid": NODE_UUID, "request_id": "req-1",
        "state": "failed", "attempts": 3, "last_status": 500, "last_error": "HTTP 500", "next_at": T1_JSON,
        "created_at": T0_JSON, "finished_at": T1_JSON,
    }


# The hot path: GET /v1/nodes/<id>/states, built by hand.

def assert_hand_built_matches(hand_built: dict[str, Any], schema: ma.Schema, obj: Any) -> None:
    """The hand-built JSON is the schema's dump: same keys (every declared field), same values."""
    expected = dump(schema, obj)
    body = round_trip(hand_built)
    assert set(body) == set(expected), f"fields differ: {sorted(set(body) ^ set(expected))}"
    assert body == expected


def states_row(ctx: Any, ident: str) -> sa.Row[*tuple[Any, ...]]:
    with ctx.db.engine.connect() as conn:
        return node_service.states(conn, ident)


@pytest.fixture
def busy_node(client, ctx) -> str:  # type: ignore[no-untyped-def]
    """A node with every field of its states set."""
    client.post("/v1/nodes", json={"name": "busy", "driver": "fake"})
    request_id = client.put("/v1/nodes/busy/states/power", json={"target": "power on"}).json["id"]
    with ctx.db.session() as session:
        session.execute(sa.update(Request).where(Request.id == request_id).values(step="power on: wait"))
        session.execute(sa.update(Node).where(Node.name == "busy").values(
            power_state="power off", target_provision_state="available", last_error="BMC timed out",
        ))
        session.commit()
    return "busy"


def test_states_hot_path_equals_the_schema_with_every_field_set(ctx, busy_node) -> None:
    row = states_row(ctx, busy_node)
    body = schemas.node_states_json(row)
    assert None not in body.values()
    assert_hand_built_matches(body, schemas.NodeStates(), row)


def test_states_hot_path_equals_the_schema_with_the_nullable_fields_null(client, ctx) -> None:
    client.post("/v1/nodes", json={"name": "idle", "driver": "fake"})
    row = states_row(ctx, "idle")
    body = schemas.node_states_json(row)
    nullable = [name for name, field in schemas.NodeStates().fields.items() if field.allow_none]
    assert [k for k, v in body.items() if v is None] == nullable
    assert_hand_built_matches(body, schemas.NodeStates(), row)


def test_the_hot_path_check_fails_when_the_schema_gains_a_field(ctx, busy_node) -> None:
    class Grown(schemas.NodeStates):
        power_on = ma.fields.String(attribute="power_state", dump_only=True)

    row = states_row(ctx, busy_node)
    with pytest.raises(AssertionError, match="fields differ"):
        assert_hand_built_matches(schemas.node_states_json(row), Grown(), row)


def test_states_endpoint_answers_the_hand_built_json(client, ctx, busy_node) -> None:
    assert client.get("/v1/nodes/busy/states").json == round_trip(schemas.node_states_json(states_row(ctx, "busy")))


def test_every_output_field_is_in_the_openapi_spec(client) -> None:
    components = client.get("/openapi.json").json["components"]["schemas"]
    for schema in (schemas.Node, schemas.NodeStates, schemas.RequestOut, schemas.CallbackStatus, schemas.HistoryEntry,
                   schemas.Port, schemas.Token, schemas.TokenCreated, schemas.Subscription, schemas.Delivery,
                   schemas.Image):
        assert set(components[schema.__name__]["properties"]) == set(schema().fields), schema.__name__


def test_bodies_built_as_dicts_below_the_api_have_exactly_their_schemas_fields(client, conductor_ctx) -> None:
    # The schema dumps these dicts; a key missing from one would silently
    # drop its field from the answer.
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    client.post("/v1/callbacks/secret/rotate")
    for path, schema in (
        ("/v1/conductors", schemas.Conductor),
        ("/v1/nodes/n1/management/boot_device", schemas.BootDevice),
        ("/v1/callbacks/secret", schemas.CallbackSecret),
        ("/v1/throttle", schemas.ThrottleSettings),
        ("/v1/stats", schemas.Stats),
    ):
        body = client.get(path).json
        body = body["conductors"][0] if path == "/v1/conductors" else body
        assert set(body) == set(schema().fields), path


# The webhook snapshots (conductor.callbacks.events) are smaller on purpose
# (docs/callbacks.md says why) but never disagree with the API.

def test_webhook_node_snapshot_is_a_projection_of_the_api_node() -> None:
    for full in (True, False):
        node = make_node(full)
        shown = dump(schemas.Node(), node)
        snapshot = round_trip(events.node_snapshot(node))
        assert snapshot == {key: shown[key] for key in snapshot}


def test_webhook_request_snapshot_is_a_projection_of_the_api_request() -> None:
    for full in (True, False):
        request = make_request(full)
        shown = dump(schemas.RequestOut(), request)
        snapshot = round_trip(events.request_snapshot(request))
        assert set(snapshot) <= set(shown)
        for key, value in snapshot.items():
            if key.endswith("_at") and value is not None:
                # Standard Webhooks' style: UTC written with Z.
                assert value.endswith("Z")
                assert dt.datetime.fromisoformat(value) == dt.datetime.fromisoformat(shown[key])
            else:
                assert value == shown[key], key
