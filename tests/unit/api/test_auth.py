"""Who may call what: every endpoint x every role x no token; tokens over the API."""

from __future__ import annotations

import re

import pytest

from conductor.api import check_auth_settings, create_app
from conductor.exceptions import InvalidInput
from tests.conftest import bearer, make_token

PUBLIC, READER, OPERATOR, ADMIN = None, "reader", "operator", "admin"
#: What the API promises, written out by hand: (method, path) -> least role.
EXPECTED = {
    ("GET", "/"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/static/<path:name>"): PUBLIC,
    ("GET", "/metrics"): READER,
    ("GET", "/metrics/fleet"): READER,
    ("GET", "/static/<path:filename>"): READER,
    ("GET", "/v1/nodes"): READER,
    ("POST", "/v1/nodes"): OPERATOR,
    ("GET", "/v1/nodes/<ident>"): READER,
    ("PATCH", "/v1/nodes/<ident>"): OPERATOR,
    ("DELETE", "/v1/nodes/<ident>"): OPERATOR,
    ("GET", "/v1/nodes/<ident>/states"): READER,
    ("PUT", "/v1/nodes/<ident>/states/power"): OPERATOR,
    ("PUT", "/v1/nodes/<ident>/states/provision"): OPERATOR,
    ("GET", "/v1/nodes/<ident>/management/boot_device"): READER,
    ("PUT", "/v1/nodes/<ident>/management/boot_device"): OPERATOR,
    ("GET", "/v1/ports"): READER,
    ("POST", "/v1/ports"): OPERATOR,
    ("GET", "/v1/ports/<port_uuid>"): READER,
    ("DELETE", "/v1/ports/<port_uuid>"): OPERATOR,
    ("GET", "/v1/nodes/<ident>/history"): READER,
    ("GET", "/v1/images"): READER,
    ("GET", "/v1/images/<name>"): READER,
    ("DELETE", "/v1/images/<name>"): OPERATOR,
    ("GET", "/v1/images/<name>/content"): READER,
    # An agent's image download: the signed URL is the proof (tests/unit/api/test_images.py).
    ("GET", "/v1/images/content/<ticket>"): PUBLIC,
    # The agent's own token, checked by the view (tests/unit/engine/test_pxe.py).
    ("POST", "/v1/nodes/<ident>/heartbeat"): PUBLIC,
    # Network boot: firmware sends no credentials (tests/unit/api/test_boot.py).
    ("GET", "/v1/boot"): PUBLIC,
    ("GET", "/v1/boot/<mac>"): PUBLIC,
    ("GET", "/v1/boot/files/<name>"): PUBLIC,
    ("GET", "/v1/boot/media/<ticket>"): PUBLIC,
    ("GET", "/v1/requests"): READER,
    ("GET", "/v1/requests/<request_id>"): READER,
    ("DELETE", "/v1/requests/<request_id>"): OPERATOR,
    ("GET", "/v1/conductors"): READER,
    ("GET", "/v1/throttle"): ADMIN,
    ("PATCH", "/v1/throttle"): ADMIN,
    ("GET", "/v1/tokens"): ADMIN,
    ("POST", "/v1/tokens"): ADMIN,
    ("DELETE", "/v1/tokens/<token_id>"): ADMIN,
    ("GET", "/v1/subscriptions"): READER,
    ("POST", "/v1/subscriptions"): OPERATOR,
    ("GET", "/v1/subscriptions/<subscription_id>"): READER,
    ("DELETE", "/v1/subscriptions/<subscription_id>"): OPERATOR,
    ("GET", "/v1/subscriptions/<subscription_id>/deliveries"): READER,
    ("GET", "/v1/callbacks/secret"): READER,
    ("POST", "/v1/callbacks/secret/rotate"): OPERATOR,
    ("GET", "/v1/events"): READER,
    # Who the caller is, and the queue's figures: what the dashboard needs first.
    ("GET", "/v1/tokens/self"): READER,
    ("GET", "/v1/stats"): READER,
    # The dashboard's files hold no data; the page calls the API with a token (tests/unit/api/test_ui.py).
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/<path:name>"): PUBLIC,
}
RANK = {READER: 0, OPERATOR: 1, ADMIN: 2}


def test_the_table_covers_every_endpoint(app) -> None:
    # (The Ironic-compatible API's table: tests/unit/api/ironic/test_auth.py.)
    routes = {(m, r.rule) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}
              if not r.rule.startswith("/baremetal")}
    assert routes == set(EXPECTED)


@pytest.mark.parametrize("method, rule", sorted(EXPECTED))
def test_every_endpoint_by_every_role(app, ctx, method, rule) -> None:
    needed = EXPECTED[(method, rule)]
    path = re.sub(r"<[^>]+>", "nothing-here", rule)
    body = {} if method in ("POST", "PUT", "PATCH") else None
    client = app.test_client()
    anonymous = client.open(path, method=method, json=body)
    if needed is PUBLIC:
        # No bearer token asked for (the heartbeat may still refuse a missing agent token).
        assert anonymous.status_code != 403 and "WWW-Authenticate" not in anonymous.headers
        assert (anonymous.get_json(silent=True) or {}).get("code") != "unauthorized"
        return
    assert anonymous.status_code == 401, anonymous.json
    assert anonymous.json["code"] == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    for role in (READER, OPERATOR, ADMIN):
        response = client.open(path, method=method, json=body, headers=bearer(make_token(ctx, role)))
        if RANK[role] < RANK[needed]:
            assert response.status_code == 403, (role, response.json)
            assert response.json["code"] == "forbidden" and response.json["required_role"] == needed
        else:
            assert response.status_code not in (401, 403), (role, response.json)


@pytest.mark.parametrize("header", ["Bearer", "Bearer nope", "Basic dXNlcjpwYXNz", "cdt_x"])
def test_bad_credentials_are_401(anonymous, header) -> None:
    response = anonymous.get("/v1/nodes", headers={"Authorization": header})
    assert response.status_code == 401 and response.json["code"] == "unauthorized"


def test_tokens_are_created_listed_and_revoked_and_never_shown_again(client, anonymous) -> None:
    created = client.post("/v1/tokens", json={"role": "operator", "name": "ci"})
    assert created.status_code == 201
    secret = created.json["token"]
    assert secret.startswith("cdt_") and created.json["role"] == "operator"
    assert anonymous.get("/v1/nodes", headers=bearer(secret)).status_code == 200
    listed = client.get("/v1/tokens").json["tokens"]
    assert [t["name"] for t in listed] == ["tests", "ci"]
    assert secret not in str(listed) and all("token" not in t for t in listed)
    revoked = client.delete(f"/v1/tokens/{created.json['id']}")
    assert revoked.status_code == 200 and revoked.json["revoked_at"]
    assert anonymous.get("/v1/nodes", headers=bearer(secret)).status_code == 401
    assert [t["name"] for t in client.get("/v1/tokens").json["tokens"]] == ["tests"]
    assert len(client.get("/v1/tokens?all=true").json["tokens"]) == 2
    assert client.delete("/v1/tokens/tok-nope").json["code"] == "token_not_found"


def test_only_hashes_are_stored(client, ctx) -> None:
    secret = client.post("/v1/tokens", json={"role": "reader"}).json["token"]
    with ctx.db.engine.connect() as conn:
        dump = "\n".join(str(row) for row in conn.exec_driver_sql("SELECT * FROM api_tokens"))
    assert secret not in dump and secret[4:] not in dump


@pytest.mark.parametrize("body", [{"role": "root"}, {}, {"role": "admin", "name": "x" * 65}])
def test_bad_token_bodies_are_400(client, body) -> None:
    assert client.post("/v1/tokens", json=body).json["code"] == "validation_error"


def test_requests_record_the_token_that_asked(client, ctx) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    operator = make_token(ctx, "operator", "bot")
    accepted = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}, headers=bearer(operator))
    token_id = next(t["id"] for t in client.get("/v1/tokens").json["tokens"] if t["name"] == "bot")
    from conductor.models import Request

    with ctx.db.session() as session:
        assert session.get(Request, accepted.json["id"]).client == token_id


def test_auth_can_be_off_only_on_loopback(settings, ctx) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        check_auth_settings(settings.replace(auth_enabled=False, api_host=host))
    for host in ("0.0.0.0", "10.1.2.3", "example.com"):
        with pytest.raises(InvalidInput):
            check_auth_settings(settings.replace(auth_enabled=False, api_host=host))
    check_auth_settings(settings.replace(api_host="0.0.0.0"))


def test_without_auth_clients_are_told_apart_by_address(settings, ctx) -> None:
    from conductor.bootstrap import build_context
    from conductor.models import Request

    open_ctx = build_context(settings.replace(auth_enabled=False))
    try:
        open_client = create_app(ctx=open_ctx).test_client()
        assert open_client.post("/v1/nodes", json={"name": "n1", "driver": "fake"}).status_code == 201
        accepted = open_client.put("/v1/nodes/n1/states/power", json={"target": "power on"},
                                   environ_base={"REMOTE_ADDR": "127.0.0.9"})
        assert accepted.status_code == 202
        with ctx.db.session() as session:
            assert session.get(Request, accepted.json["id"]).client == "addr:127.0.0.9"
    finally:
        open_ctx.close()


def test_the_api_description_declares_bearer_tokens(anonymous) -> None:
    spec = anonymous.get("/openapi.json").json
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert spec["security"] == [{"bearerAuth": []}]
    assert {"/v1/throttle", "/v1/tokens", "/v1/tokens/{token_id}"} <= set(spec["paths"])


def test_a_new_token_comes_with_its_callback_signing_secret(client) -> None:
    created = client.post("/v1/tokens", json={"role": "operator", "name": "ci"})
    assert created.status_code == 201
    assert created.headers["Cache-Control"] == "no-store"
    signing = created.json["signing_secret"]
    assert signing.startswith("whsec_")
    operator = bearer(created.json["token"])
    shown = client.get("/v1/callbacks/secret", headers=operator).json
    assert shown["exists"] is True
    assert signing not in client.get("/v1/tokens").get_data(as_text=True)


def test_without_auth_the_deployment_secret_signs(settings) -> None:
    from conductor.callbacks import secrets

    assert secrets.signer_for("addr:127.0.0.9") == secrets.signer_for(None) == ""
    assert secrets.signer_for("tok-0123") == "tok-0123"


def test_a_flood_of_unknown_tokens_is_throttled_per_address(anonymous) -> None:
    from conductor.api.admission import LOOKUP_BURST

    statuses = [anonymous.get("/v1/nodes", headers=bearer(f"cdt_bogus{i}")).status_code
                for i in range(LOOKUP_BURST + 5)]
    assert statuses[:LOOKUP_BURST] == [401] * LOOKUP_BURST
    assert 503 in statuses[LOOKUP_BURST:]
