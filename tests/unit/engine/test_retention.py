"""Old records are purged: finished requests, ended callback deliveries, node history."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from conductor.bootstrap import build_context
from conductor.context import Context
from conductor.engine import retention, sweeper
from conductor.models import CallbackDelivery, NodeHistory, Request, utcnow
from conductor.settings import Settings
from tests.conftest import drain

DAY = 86400.0


@pytest.fixture
def purger(settings: Settings) -> Iterator[Context]:
    """A context whose settings keep requests 2 days, keys 1 day, history 5 days."""
    context = build_context(dataclasses.replace(
        settings, request_retention=2 * DAY, idempotency_retention=DAY, history_retention=5 * DAY))
    yield context
    context.close()


def _finished_request(client, ctx: Context, node: str, days_ago: float, **headers: str) -> str:  # type: ignore[no-untyped-def]
    if client.get(f"/v1/nodes/{node}").status_code == 404:
        assert client.post("/v1/nodes", json={"name": node, "driver": "fake"}).status_code == 201
    target = "power off" if client.get(f"/v1/nodes/{node}").json["power_state"] == "power on" else "power on"
    response = client.put(f"/v1/nodes/{node}/states/power", json={"target": target}, headers=headers)
    assert response.status_code == 202, response.json
    drain(ctx)
    request_id = response.json["id"]
    when = utcnow() - dt.timedelta(days=days_ago)
    with ctx.db.begin() as session:
        session.execute(sa.update(Request).where(Request.id == request_id).values(finished_at=when))
    return request_id


def _delivery(ctx: Context, state: str, days_ago: float | None, request_id: str | None = None) -> int:
    with ctx.db.begin() as session:
        row = CallbackDelivery(
            webhook_id=f"msg_{uuid.uuid4().hex}", event_type="request.finished", url="http://127.0.0.1:9/",
            request_id=request_id, subscription_id=None if request_id else "sub-1", body="{}", state=state,
            finished_at=None if days_ago is None else utcnow() - dt.timedelta(days=days_ago),
        )
        session.add(row)
        session.flush()
        return row.id


def _deliveries(ctx: Context) -> set[int]:
    with ctx.db.session() as session:
        return set(session.scalars(sa.select(CallbackDelivery.id)))


def test_old_finished_requests_and_ended_deliveries_are_purged(client, ctx, conductor_ctx, purger) -> None:
    old = _finished_request(client, conductor_ctx, "n1", days_ago=3)
    recent = _finished_request(client, conductor_ctx, "n1", days_ago=1)
    old_delivered = _delivery(ctx, "delivered", 3, request_id=old)
    old_pending = _delivery(ctx, "pending", None, request_id=old)  # still being retried
    counts = retention.purge(purger)
    assert counts["requests_purged"] == 1
    assert client.get(f"/v1/requests/{old}").status_code == 404
    assert client.get(f"/v1/requests/{recent}").json["state"] == "succeeded"
    remaining = _deliveries(ctx)
    assert old_delivered not in remaining and old_pending in remaining
    # the node and its newer work are untouched
    assert client.get("/v1/nodes/n1").status_code == 200


def test_active_requests_are_never_purged(client, ctx, purger) -> None:
    assert client.post("/v1/nodes", json={"name": "n1", "driver": "fake"}).status_code == 201
    queued = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json["id"]
    with ctx.db.begin() as session:  # even with an old (bogus) finished_at
        session.execute(sa.update(Request).values(created_at=utcnow() - dt.timedelta(days=30),
                                                  finished_at=utcnow() - dt.timedelta(days=30)))
    assert retention.purge(purger)["requests_purged"] == 0
    assert client.get(f"/v1/requests/{queued}").json["state"] == "queued"


def test_a_remembered_idempotency_key_keeps_its_request(client, ctx, conductor_ctx, settings) -> None:
    # Requests kept 1 day, keys 3 days: a request finished 2 days ago that a
    # key still points to stays, and the key still replays it.
    keeper = build_context(dataclasses.replace(settings, request_retention=DAY, idempotency_retention=3 * DAY))
    try:
        request_id = _finished_request(client, conductor_ctx, "n1", days_ago=2, **{"Idempotency-Key": "k-1"})
        assert retention.purge(keeper)["requests_purged"] == 0
        again = client.put("/v1/nodes/n1/states/power", json={"target": "power on"},
                           headers={"Idempotency-Key": "k-1"})
        assert again.json["id"] == request_id
    finally:
        keeper.close()


def test_ended_subscription_deliveries_are_purged_pending_ones_kept(ctx, purger) -> None:
    old = _delivery(ctx, "delivered", 3)
    old_failed = _delivery(ctx, "failed", 3)
    recent = _delivery(ctx, "delivered", 1)
    pending = _delivery(ctx, "pending", None)
    assert retention.purge(purger)["deliveries_purged"] == 2
    remaining = _deliveries(ctx)
    assert remaining == {recent, pending} and old_failed not in remaining and old not in remaining


def test_old_history_entries_are_purged(client, ctx, conductor_ctx, purger) -> None:
    _finished_request(client, conductor_ctx, "n1", days_ago=0)
    entries = client.get("/v1/nodes/n1/history").json["history"]
    assert len(entries) >= 2
    oldest = entries[-1]
    with ctx.db.begin() as session:
        session.execute(sa.update(NodeHistory).where(NodeHistory.id != sa.select(sa.func.max(NodeHistory.id))
                                                     .scalar_subquery())
                        .values(created_at=utcnow() - dt.timedelta(days=6)))
    counts = retention.purge(purger)
    assert counts["history_purged"] == len(entries) - 1
    left = client.get("/v1/nodes/n1/history").json["history"]
    assert [e["created_at"] for e in left] == [entries[0]["created_at"]]
    assert oldest not in left


def test_a_backlog_is_purged_in_batches(client, ctx, conductor_ctx, purger, monkeypatch) -> None:
    monkeypatch.setattr(retention, "PURGE_BATCH", 3)
    ids = [_finished_request(client, conductor_ctx, "n1", days_ago=10) for _ in range(7)]
    assert retention.purge(purger)["requests_purged"] == 7
    assert all(client.get(f"/v1/requests/{i}").status_code == 404 for i in ids)
    monkeypatch.setattr(retention, "PURGE_MAX_BATCHES", 1)  # a round's bound: the next round goes on
    more = [_finished_request(client, conductor_ctx, "n1", days_ago=10) for _ in range(5)]
    assert retention.purge(purger)["requests_purged"] == 3
    assert retention.purge(purger)["requests_purged"] == 2
    assert all(client.get(f"/v1/requests/{i}").status_code == 404 for i in more)


def test_zero_retention_keeps_everything(client, ctx, conductor_ctx, settings) -> None:
    forever = build_context(dataclasses.replace(settings, request_retention=0, history_retention=0))
    try:
        request_id = _finished_request(client, conductor_ctx, "n1", days_ago=3650)
        with ctx.db.begin() as session:
            session.execute(sa.update(NodeHistory).values(created_at=utcnow() - dt.timedelta(days=3650)))
        assert retention.maybe_purge(forever) == {"requests_purged": 0, "deliveries_purged": 0, "history_purged": 0}
        assert retention.purge(forever) == {"requests_purged": 0, "deliveries_purged": 0, "history_purged": 0}
        assert client.get(f"/v1/requests/{request_id}").status_code == 200
        assert client.get("/v1/nodes/n1/history").json["history"]
    finally:
        forever.close()


def test_the_sweep_purges_once_per_interval(client, ctx, conductor_ctx, purger) -> None:
    first = _finished_request(client, conductor_ctx, "n1", days_ago=3)
    assert sweeper.sweep(purger)["requests_purged"] == 1
    second = _finished_request(client, conductor_ctx, "n1", days_ago=3)
    # another conductor's sweep within purge_interval leaves it for the next round
    assert sweeper.sweep(purger)["requests_purged"] == 0
    assert client.get(f"/v1/requests/{second}").status_code == 200
    purger.redis.delete(f"{purger.settings.redis_namespace}:purge")  # the interval is over
    assert sweeper.sweep(purger)["requests_purged"] == 1
    assert client.get(f"/v1/requests/{first}").status_code == 404
    assert client.get(f"/v1/requests/{second}").status_code == 404


def test_each_purge_batch_reads_only_through_indexes(client, ctx, conductor_ctx, purger) -> None:
    """No purge statement scans or sorts a table: a batch costs ~500 index entries at any table size.

    bench/scale.py found, at a million requests, a batch reading every
    finished request (and sorting them) to delete 500, and the cascade to
    ``idempotency_keys`` scanning that table once per deleted request.
    """
    if purger.db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's plans for tables this small are sequential scans, rightly")
    _finished_request(client, conductor_ctx, "n1", days_ago=10, **{"Idempotency-Key": "k1"})
    _delivery(purger, "delivered", days_ago=10)
    statements: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("DELETE"):
            statements.append((statement, parameters))

    sa.event.listen(purger.db.engine, "before_cursor_execute", capture)
    try:
        counts = retention.purge(purger)
    finally:
        sa.event.remove(purger.db.engine, "before_cursor_execute", capture)
    assert counts["requests_purged"] == 1 and counts["deliveries_purged"] == 1
    assert len(statements) == 3
    with purger.db.engine.connect() as conn:
        for statement, parameters in statements:
            plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]  # type: ignore[arg-type]
            assert not [step for step in plan if step.startswith("SCAN") or "TEMP B-TREE" in step], (statement, plan)
