"""Who may call what under /baremetal: every endpoint x every role x no token (as on /v1)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import make_token

PUBLIC, READER, OPERATOR, ADMIN = None, "reader", "operator", "admin"
V1 = "/baremetal/v1"
#: The Ironic-compatible API's promise, by hand: (method, path) -> least role.
EXPECTED = {
    ("GET", "/baremetal"): PUBLIC,
    ("GET", V1): PUBLIC,
    ("GET", f"{V1}/nodes"): READER,
    ("POST", f"{V1}/nodes"): OPERATOR,
    ("GET", f"{V1}/nodes/detail"): READER,
    ("GET", f"{V1}/nodes/<ident>"): READER,
    ("PATCH", f"{V1}/nodes/<ident>"): OPERATOR,
    ("DELETE", f"{V1}/nodes/<ident>"): OPERATOR,
    ("GET", f"{V1}/nodes/<ident>/ports"): READER,
    ("GET", f"{V1}/nodes/<ident>/ports/detail"): READER,
    ("GET", f"{V1}/nodes/<ident>/traits"): READER,
    ("GET", f"{V1}/nodes/<ident>/vifs"): READER,
    ("GET", f"{V1}/nodes/<ident>/states"): READER,
    ("PUT", f"{V1}/nodes/<ident>/states/power"): OPERATOR,
    ("PUT", f"{V1}/nodes/<ident>/states/provision"): OPERATOR,
    ("PUT", f"{V1}/nodes/<ident>/maintenance"): OPERATOR,
    ("DELETE", f"{V1}/nodes/<ident>/maintenance"): OPERATOR,
    ("GET", f"{V1}/nodes/<ident>/management/boot_device"): READER,
    ("PUT", f"{V1}/nodes/<ident>/management/boot_device"): OPERATOR,
    ("GET", f"{V1}/nodes/<ident>/management/boot_device/supported"): READER,
    ("GET", f"{V1}/nodes/<ident>/validate"): READER,
    ("GET", f"{V1}/nodes/<ident>/history"): READER,
    ("GET", f"{V1}/nodes/<ident>/history/<event>"): READER,
    ("GET", f"{V1}/ports"): READER,
    ("POST", f"{V1}/ports"): OPERATOR,
    ("GET", f"{V1}/ports/detail"): READER,
    ("GET", f"{V1}/ports/<port_uuid>"): READER,
    ("PATCH", f"{V1}/ports/<port_uuid>"): OPERATOR,
    ("DELETE", f"{V1}/ports/<port_uuid>"): OPERATOR,
    ("GET", f"{V1}/drivers"): READER,
    ("GET", f"{V1}/drivers/<name>"): READER,
    ("GET", f"{V1}/drivers/<name>/properties"): READER,
    ("GET", f"{V1}/conductors"): READER,
    ("GET", f"{V1}/conductors/<hostname>"): READER,
}
RANK = {READER: 0, OPERATOR: 1, ADMIN: 2}
LATEST = {"X-OpenStack-Ironic-API-Version": "latest"}


def test_the_table_covers_every_endpoint(app) -> None:
    routes = {(m, r.rule) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}
              if r.rule.startswith("/baremetal")}
    assert routes == set(EXPECTED)


@pytest.mark.parametrize("method, rule", sorted(EXPECTED))
def test_every_endpoint_by_every_role(app, ctx, method, rule) -> None:
    needed = EXPECTED[(method, rule)]
    path = re.sub(r"<[^>]+>", "nothing-here", rule)
    body = {} if method in ("POST", "PUT", "PATCH") else None
    client = app.test_client()
    anonymous = client.open(path, method=method, json=body, headers=LATEST)
    if needed is PUBLIC:
        assert anonymous.status_code == 200
        return
    assert anonymous.status_code == 401
    assert anonymous.headers["X-Conductor-Error-Code"] == "unauthorized"
    assert "error_message" in anonymous.get_json()
    for role in (READER, OPERATOR, ADMIN):
        response = client.open(path, method=method, json=body,
                               headers={**LATEST, "X-Auth-Token": make_token(ctx, role)})
        if RANK[role] < RANK[needed]:
            assert response.status_code == 403, (role, response.get_json())
            assert response.headers["X-Conductor-Error-Code"] == "forbidden"
        else:
            assert response.status_code not in (401, 403), (role, response.get_json())
