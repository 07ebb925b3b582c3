"""Idempotency keys in the service layer: replay, reuse, scope, expiry, races."""

from __future__ import annotations

import concurrent.futures
import datetime as dt

import pytest
import sqlalchemy as sa

from conductor.exceptions import IdempotencyKeyReused, InvalidInput
from conductor.models import IdempotencyRecord, Request
from conductor.service import nodes, submit
from conductor.throttle import idempotency
from conductor.throttle.idempotency import IdempotencyKey
from tests.conftest import drain


@pytest.fixture
def node(ctx):  # type: ignore[no-untyped-def]
    with ctx.db.session() as session:
        created = nodes.create(session, {"name": "n1", "driver": "fake"})
        session.commit()
        return created


def key(client: str = "tok-a", name: str = "k1", body: object = None) -> IdempotencyKey:
    return IdempotencyKey(client, name, idempotency.fingerprint("PUT", "/v1/nodes/n1/states/power",
                                                                body or {"target": "power on"}))


def count_requests(ctx) -> int:  # type: ignore[no-untyped-def]
    with ctx.db.session() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(Request)))


def test_the_same_key_returns_the_original_request_even_after_it_finished(ctx, conductor_ctx, node) -> None:
    first = submit.submit_power(ctx, "n1", "power on", client="tok-a", idempotency_key=key())
    assert first.created
    drain(conductor_ctx)
    again = submit.submit_power(ctx, "n1", "power on", client="tok-a", idempotency_key=key())
    assert not again.created
    assert again.request.id == first.request.id and again.request.state == "succeeded"
    assert count_requests(ctx) == 1


def test_the_same_key_with_another_body_is_refused(ctx, node) -> None:
    first = submit.submit_power(ctx, "n1", "power on", client="tok-a", idempotency_key=key())
    with pytest.raises(IdempotencyKeyReused) as caught:
        submit.submit_power(ctx, "n1", "power off", client="tok-a",
                                     idempotency_key=key(body={"target": "power off"}))
    assert caught.value.status == 422 and caught.value.details["request_id"] == first.request.id
    assert count_requests(ctx) == 1


def test_keys_are_scoped_per_client(ctx, conductor_ctx, node) -> None:
    mine = submit.submit_power(ctx, "n1", "power on", client="tok-a", idempotency_key=key("tok-a"))
    drain(conductor_ctx)
    theirs = submit.submit_power(ctx, "n1", "power on", client="tok-b", idempotency_key=key("tok-b"))
    assert theirs.created and theirs.request.id != mine.request.id


def test_an_identical_in_flight_request_is_remembered_under_the_key(ctx, conductor_ctx, node) -> None:
    plain = submit.submit_power(ctx, "n1", "power on", client="tok-a")
    keyed = submit.submit_power(ctx, "n1", "power on", client="tok-a", idempotency_key=key())
    assert keyed.request.id == plain.request.id
    drain(conductor_ctx)
    # Finished, and the key still answers with that request.
    assert submit.submit_power(ctx, "n1", "power on", client="tok-a",
                                        idempotency_key=key()).request.id == plain.request.id


def test_an_expired_key_is_forgotten(ctx, conductor_ctx, node) -> None:
    first = submit.submit_power(ctx, "n1", "power on", client="tok-a", idempotency_key=key())
    drain(conductor_ctx)
    with ctx.db.begin() as session:
        session.execute(sa.update(IdempotencyRecord).values(
            expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    again = submit.submit_power(ctx, "n1", "power on", client="tok-a", idempotency_key=key())
    assert again.created and again.request.id != first.request.id
    assert idempotency.purge_expired(ctx.db) == 0  # the new use replaced the expired record


def test_concurrent_uses_of_one_key_create_one_request(ctx, node) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda _i: submit.submit_power(ctx, "n1", "power on", client="tok-a",
                                                    idempotency_key=key()).request.id,
            range(16)))
    assert len(set(results)) == 1
    assert count_requests(ctx) == 1


def test_an_abort_is_idempotent_too(ctx, conductor_ctx, node) -> None:
    with ctx.db.begin() as session:
        session.execute(sa.text("UPDATE nodes SET provision_state = 'clean wait'"))
    abort_key = IdempotencyKey("tok-a", "abort-1", idempotency.fingerprint("PUT", "/x", {"target": "abort"}))
    first = submit.submit_provision(ctx, "n1", "abort", client="tok-a", idempotency_key=abort_key)
    again = submit.submit_provision(ctx, "n1", "abort", client="tok-a", idempotency_key=abort_key)
    assert again.request.id == first.request.id and not again.created


@pytest.mark.parametrize("header, expected", [('"abc-1"', "abc-1"), ("plain", "plain"), (None, None)])
def test_parse_accepts_structured_and_bare_keys(header, expected) -> None:
    assert idempotency.parse(header) == expected


@pytest.mark.parametrize("header", ["", '""', "x" * 256, "caf\u00e9"])
def test_parse_refuses_bad_keys(header) -> None:
    with pytest.raises(InvalidInput):
        idempotency.parse(header)


def test_fingerprint_ignores_json_layout_but_not_content() -> None:
    same = idempotency.fingerprint("put", "/p", {"b": 2, "a": 1})
    assert idempotency.fingerprint("PUT", "/p", {"a": 1, "b": 2}) == same
    assert idempotency.fingerprint("PUT", "/p", {"a": 1}) != idempotency.fingerprint("PUT", "/p", {"a": 2})
    assert idempotency.fingerprint("PUT", "/p", {"a": 1}) != idempotency.fingerprint("PUT", "/q", {"a": 1})
