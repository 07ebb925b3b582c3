"""Transactions publish their events after commit, in the order of their commits per node."""

from __future__ import annotations

import json

from conductor.callbacks import events, subscriptions
from conductor.context import Context
from conductor.eventlog import publisher
from conductor.models import Node
from conductor.service import nodes


def enrol(ctx: Context, name: str = "n1") -> Node:
    with ctx.db.session() as session:
        return nodes.create(session, {"name": name, "driver": "fake"})


def logged(ctx: Context) -> list[tuple[str, str | None, dict]]:
    return [(e.type, e.node, json.loads(e.body)) for e in ctx.events.read("0-0", count=1000)]


def test_an_event_is_published_once_its_transaction_committed(ctx: Context) -> None:
    node = enrol(ctx)
    with ctx.db.session() as session:
        loaded = session.get(Node, node.id)
        assert loaded is not None
        events.emit(session, events.EventType.MAINTENANCE, loaded)
        assert [t for t, _n, _b in logged(ctx)] == ["node.created"]  # not before the commit
        session.commit()
    (_created, maintenance) = ctx.events.read("0-0")
    assert (maintenance.type, maintenance.node) == ("node.maintenance", node.uuid)
    body = json.loads(maintenance.body)
    assert body["type"] == "node.maintenance" and body["data"]["node"]["name"] == "n1"
    assert maintenance.committed_at.endswith("Z") and maintenance.committed_at >= body["timestamp"]


def test_a_rolled_back_transaction_publishes_nothing(ctx: Context) -> None:
    node = enrol(ctx)
    with ctx.db.session() as session:
        events.emit(session, events.EventType.MAINTENANCE, session.get(Node, node.id))  # type: ignore[arg-type]
        session.rollback()
        session.commit()  # a new, empty transaction
    assert [t for t, _n, _b in logged(ctx)] == ["node.created"]


def test_a_number_taken_by_a_transaction_that_then_rolls_back_is_given_back(ctx: Context) -> None:
    node = enrol(ctx)
    with ctx.db.session() as failing, ctx.db.session() as later:
        events.emit(failing, events.EventType.MAINTENANCE, failing.get(Node, node.id), label="lost")  # type: ignore[arg-type]
        publisher.number(ctx.events, failing)  # its commit began (the number is taken), then failed
        failing.rollback()
        events.emit(later, events.EventType.MAINTENANCE, later.get(Node, node.id), label="next")  # type: ignore[arg-type]
        later.commit()
    # Published at once: it did not wait for the rolled-back number.
    assert [b["data"].get("label") for _t, _n, b in logged(ctx)] == [None, "next"]


def test_events_of_one_node_go_out_in_commit_order_whatever_order_they_are_published_in(ctx: Context) -> None:
    node = enrol(ctx)
    with ctx.db.session() as first, ctx.db.session() as second:
        events.emit(first, events.EventType.MAINTENANCE, first.get(Node, node.id), label="first")  # type: ignore[arg-type]
        publisher.number(ctx.events, first)  # first holds the node's lock and takes its number...
        events.emit(second, events.EventType.MAINTENANCE, second.get(Node, node.id), label="second")  # type: ignore[arg-type]
        second.commit()  # ...second commits after it, but publishes before it does
        assert [b["data"].get("label") for _t, _n, b in logged(ctx)] == [None]
        first.commit()
    assert [b["data"].get("label") for _t, _n, b in logged(ctx)] == [None, "first", "second"]


def test_only_webhook_types_make_deliveries(ctx: Context) -> None:
    node = enrol(ctx)
    with ctx.db.session() as session:
        subscriptions.create(session, ctx.settings, "http://127.0.0.1:9/hook", ["*"])
        loaded = session.get(Node, node.id)
        assert loaded is not None
        assert events.emit(session, events.EventType.NODE_CREATED, loaded) == 0
        assert events.emit(session, events.EventType.MAINTENANCE, loaded) == 1
        session.commit()
