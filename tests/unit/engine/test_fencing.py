"""A conductor that lost its claim or reservation mid-step changes nothing."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from conductor import database
from conductor.engine import power, runner, sweeper
from conductor.models import Node, NodeHistory
from tests.conftest import drain


def _put(client, target):  # type: ignore[no-untyped-def]
    response = client.put("/v1/nodes/n1/states/power", json={"target": target})
    assert response.status_code == 202, response.json
    return response.json["id"]


def test_a_step_finishing_after_its_conductor_was_declared_dead_is_discarded(
    client, ctx, conductor_ctx, monkeypatch
) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    first = _put(client, "power on")
    second: list[str] = []

    def slow_step(task):  # type: ignore[no-untyped-def]
        # While this conductor talks to the BMC, the others declare it dead
        # and a new request is accepted for the node.
        assert sweeper.recover_conductor(ctx, conductor_ctx.name) == 1
        second.append(_put(client, "power off"))
        return power.step(task)

    monkeypatch.setattr(runner, "_WORKFLOWS", {**runner._WORKFLOWS, "power": (slow_step, power.fail)})
    runner.run_step(conductor_ctx, first)
    monkeypatch.undo()
    assert client.get(f"/v1/requests/{first}").json["state"] == "failed"  # the sweeper's verdict stands
    node = client.get("/v1/nodes/n1").json
    assert node["request_id"] == second[0]  # the new request still owns the node
    assert node["power_state"] is None  # the discarded step recorded nothing
    drain(conductor_ctx)
    assert client.get(f"/v1/requests/{second[0]}").json["state"] == "succeeded"


def test_concurrent_sweeps_fail_a_request_once(client, ctx, conductor_ctx) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    request_id = _put(client, "power on")
    with ctx.db.begin() as session:
        session.execute(sa.text("UPDATE requests SET state='running', conductor='gone-w0'"))
        session.execute(sa.update(Node).values(reservation="gone-w0"))
    assert runner.fail_request(ctx, request_id, "gone", owner="gone-w0") is True
    newer = _put(client, "power off")
    assert runner.fail_request(ctx, request_id, "gone", owner="gone-w0") is False
    with ctx.db.session() as session:
        failures = session.scalar(sa.select(sa.func.count()).select_from(NodeHistory)
                                  .where(NodeHistory.event == "request.failed"))
    assert failures == 1
    assert client.get("/v1/nodes/n1/states").json["request_id"] == newer


def test_database_errors_never_carry_statement_parameters(database_url, caplog) -> None:
    engine = database.make_engine(database_url)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(sa.exc.DBAPIError) as info, engine.connect() as conn:
        conn.execute(sa.text("INSERT INTO no_such_table VALUES (:secret)"), {"secret": "hunter2-bmc-password"})
    engine.dispose()
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in caplog.text
