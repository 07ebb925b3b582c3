"""A view run again after a database blip never does a write twice (review of issue 13, finding 3).

A view is run again from the start on a transient database error
(``api/errors.py``) only when that cannot repeat a write: not a POST or
DELETE that committed already, nor a DELETE whose COMMIT failed with its
outcome unknown.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg

from conductor.api import admission
from conductor.callbacks import secrets as signing_secrets
from tests.conftest import bearer, make_token
from tests.unit.engine.test_db_blip import Blip


def test_a_post_that_committed_is_not_run_again(client, ctx) -> None:
    known = client.post("/v1/callbacks/secret/rotate").json["secret"]
    # The rotation commits; the read for the answer breaks: running the view
    # again would rotate twice and drop the secret the receivers know.
    with Blip(ctx.db.engine, r"(?s)^SELECT .*\sFROM callback_secrets\b") as blip:
        response = client.post("/v1/callbacks/secret/rotate")
    assert blip.fired == 1
    assert response.status_code == 503 and response.json["code"] == "database_unavailable"
    admin = next(t["id"] for t in client.get("/v1/tokens").json["tokens"] if t["name"] == "tests")
    with ctx.db.session() as session:
        assert signing_secrets.signing_secrets(session, admin)[1:] == [known]  # rotated once


def test_a_delete_whose_commit_outcome_is_unknown_is_not_run_again(client, ctx, monkeypatch) -> None:
    assert client.post("/v1/nodes", json={"name": "n1", "driver": "fake"}).status_code == 201
    dialect = ctx.db.engine.dialect
    real_commit = dialect.do_commit
    fired: list[bool] = []

    def commit_then_fail(dbapi_connection: Any) -> None:
        # The COMMIT is applied, and its answer is lost (a connection dropped then).
        real_commit(dbapi_connection)
        if not fired:
            fired.append(True)
            if dialect.name == "sqlite":
                raise sqlite3.OperationalError("database is locked")
            raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")

    monkeypatch.setattr(dialect, "do_commit", commit_then_fail)
    response = client.delete("/v1/nodes/n1")
    monkeypatch.undo()
    assert fired
    # Not a 404 as if the node had never been there: the outcome is unknown.
    assert response.status_code == 503 and response.json["code"] == "database_unavailable", response.json
    assert client.get("/v1/nodes/n1").status_code == 404


def test_a_token_look_up_run_again_is_not_charged_again(anonymous, ctx, monkeypatch) -> None:
    # (Finding 7) One look-up of an unknown token left to this address, none refilled meanwhile.
    monkeypatch.setattr(admission, "LOOKUP_BURST", 1)
    monkeypatch.setattr(admission, "LOOKUP_RATE", 1e-6)
    secret = make_token(ctx, "reader")  # not cached yet: looked up in the database
    with Blip(ctx.db.engine, r"FROM api_tokens\b") as blip:
        response = anonymous.get("/v1/nodes", headers=bearer(secret))
    assert blip.fired == 1
    assert response.status_code == 200, response.json
