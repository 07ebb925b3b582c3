"""Non-finite numbers (NaN, Infinity, 1e400) are not JSON: 400 in every body, never written out.

(On PostgreSQL, ``TEST_DATABASE_URL``, they were a 500; on SQLite they were
stored and served back as a bare ``NaN``.)
"""

from __future__ import annotations

import json

import pytest

NOT_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


def strict(text: str) -> object:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a response")
    return json.loads(text, parse_constant=refuse)


def post(client, path, body, method="post"):  # type: ignore[no-untyped-def]
    return getattr(client, method)(path, data=body, content_type="application/json")


def assert_refused(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["code"] == "validation_error"
    assert response.json["errors"] == {"json": response.json["errors"]["json"]}


@pytest.mark.parametrize("number", NOT_FINITE)
def test_a_non_finite_number_in_a_new_node_is_400(client, number) -> None:
    assert_refused(post(client, "/v1/nodes", f'{{"name": "n1", "driver": "fake", "properties": {{"x": {number}}}}}'))
    assert client.get("/v1/nodes/n1").status_code == 404
    strict(client.get("/v1/nodes").get_data(as_text=True))


@pytest.mark.parametrize("number", NOT_FINITE)
def test_a_non_finite_number_anywhere_in_any_body_is_400(client, number) -> None:
    assert client.post("/v1/nodes", json={"name": "n1", "driver": "fake"}).status_code == 201
    bodies = [
        ("patch", "/v1/nodes/n1", f'{{"properties": {{"deep": [1, {{"x": {number}}}]}}}}'),
        ("patch", "/v1/nodes/n1", f'{{"driver_info": {{"fake_delay": {number}}}}}'),
        ("put", "/v1/nodes/n1/states/provision", f'{{"target": "manage", "x": {number}}}'),
        ("put", "/v1/nodes/n1/states/power", f'{{"target": "power on", "timeout": {number}}}'),
        ("patch", "/v1/throttle", f'{{"write_rate": {number}}}'),
        ("post", "/v1/subscriptions", f'{{"url": "http://example.com/", "events": ["*"], "x": {number}}}'),
    ]
    for method, path, body in bodies:
        assert_refused(post(client, path, body, method))
    # Also before any other check: the Idempotency-Key fingerprint reads the body first.
    response = client.put("/v1/nodes/n1/states/provision", data=f'{{"target": "manage", "x": {number}}}',
                          content_type="application/json", headers={"Idempotency-Key": "k1"})
    assert_refused(response)
    node = strict(client.get("/v1/nodes/n1").get_data(as_text=True))
    assert node["properties"] == {} and node["provision_state"] == "enroll"  # type: ignore[index]


def test_large_finite_numbers_are_kept(client) -> None:
    body = '{"name": "n1", "driver": "fake", "properties": {"x": 1.5e300, "y": -2.5e-300, "z": 12345678901234567890}}'
    assert post(client, "/v1/nodes", body).status_code == 201
    node = strict(client.get("/v1/nodes/n1").get_data(as_text=True))
    assert node["properties"] == {"x": 1.5e300, "y": -2.5e-300, "z": 12345678901234567890}  # type: ignore[index]


def test_responses_never_carry_nan(app) -> None:
    with app.app_context(), pytest.raises(ValueError):
        app.json.dumps({"x": float("nan")})


def test_an_integer_too_long_to_convert_is_400_not_500(client) -> None:
    body = '{"name": "n1", "driver": "fake", "properties": {"x": 1' + "0" * 5000 + "}}"
    assert_refused(post(client, "/v1/nodes", body))
