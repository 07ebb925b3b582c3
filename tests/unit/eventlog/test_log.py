"""The event log in a real Redis: order per node, voids, stalls, retention and the resume check."""

from __future__ import annotations

import json
import time

import pytest

from conductor.callbacks.events import StreamEvent
from conductor.context import Context
from conductor.eventlog import log as eventlog
from conductor.eventlog.log import EventLog, Publishable, parse_id


def event(node: str | None, label: str, kind: str = "node.maintenance") -> StreamEvent:
    return StreamEvent(kind, node, None, json.dumps({"type": kind, "timestamp": "t", "data": {"label": label}}))


def labels(log: EventLog) -> list[str]:
    return [json.loads(e.body)["data"]["label"] for e in log.read("0-0", count=1000)]


def published(node: str, seq: int, label: str) -> Publishable:
    return Publishable(node, seq, event(node, label), "2026-01-01T00:00:00Z")


def test_a_node_s_events_are_appended_in_the_order_of_their_numbers(ctx: Context) -> None:
    log = ctx.events
    assert log.allocate({"n1": 3, "n2": 1}) == {"n1": 3, "n2": 1}
    log.publish([published("n1", 3, "third")])  # its transaction committed last but published first
    log.publish([published("n2", 1, "other node")])  # another node does not wait
    assert labels(log) == ["other node"]
    log.publish([published("n1", 2, "second")])
    assert labels(log) == ["other node"]
    log.publish([published("n1", 1, "first")])
    assert labels(log) == ["other node", "first", "second", "third"]


def test_a_rolled_back_number_holds_nothing_back(ctx: Context) -> None:
    log = ctx.events
    log.allocate({"n1": 2})
    log.publish([published("n1", 2, "committed")])
    assert labels(log) == []
    log.publish([Publishable("n1", 1, None, "")])  # the void of a rollback
    assert labels(log) == ["committed"]


def test_a_number_never_published_stalls_its_node_only_for_a_while(
        ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "STALL", 0.2)
    log = ctx.events
    log.allocate({"n1": 2})
    log.publish([published("n1", 2, "after a lost one")])  # number 1's process died after its commit
    assert labels(log) == []
    time.sleep(0.3)
    assert log.publish([]) == (1, 0, 1)  # any later publish lets it out: 1 appended, 1 number skipped
    assert labels(log) == ["after a lost one"]
    # The lost one arriving after all goes out late rather than never.
    assert log.publish([published("n1", 1, "late")]) == (1, 1, 0)
    assert labels(log) == ["after a lost one", "late"]


def test_events_of_no_node_and_numbers_taken_at_publish_time(ctx: Context) -> None:
    log = ctx.events
    log.allocate({"n1": 1})
    log.publish_committed([event(None, "throttle", "throttle.changed"), event("n1", "auto")])
    # The throttle event is out at once; the node's auto-numbered one waits for number 1.
    assert labels(log) == ["throttle"]
    log.publish([published("n1", 1, "numbered before its commit")])
    assert labels(log) == ["throttle", "numbered before its commit", "auto"]


def test_resuming_checks_the_floor_atomically(ctx: Context) -> None:
    log = ctx.events
    assert log.page("1-0").status == "unknown"  # no stream at all: an id from elsewhere
    log.publish([Publishable(None, 0, event(None, str(i)), "c") for i in range(3)])
    ids = [e.id for e in log.read("0-0")]
    page = log.page(ids[0])
    assert page.status == "ok" and [e.id for e in page.entries] == ids[1:]
    assert log.page(ids[-1]).entries == []
    # Before the stream's first event, or after its newest: not an id of this log.
    first = parse_id(ids[0])
    assert first is not None
    assert log.page(f"{first[0] - 1}-0") == ("too_old", [], ids[0])
    assert log.page(f"{first[0] + 10**9}-0").status == "too_old"


def test_trimming_by_length_moves_the_floor(ctx: Context) -> None:
    log = EventLog(ctx.redis, ctx.settings.replace(event_max_length=3))
    log.publish([Publishable(None, 0, event(None, "0"), "c")])
    ctx.redis.hset(log.meta_key, "trimmed", 2**50)  # (trimmed at most once a second: not during the next)
    log.publish([Publishable(None, 0, event(None, str(i)), "c") for i in range(1, 5)])
    ids = [e.id for e in log.read("0-0")]
    assert len(ids) == 5
    ctx.redis.hdel(log.meta_key, "trimmed")
    log.publish([Publishable(None, 0, event(None, "5"), "c")])
    assert labels(log) == ["3", "4", "5"]
    assert log.floor() == ids[2]  # the newest id deleted
    assert log.page(ids[1]).status == "too_old"
    assert [e.id for e in log.page(ids[2]).entries] == [*ids[3:], log.tail()]


def test_trimming_by_age(ctx: Context) -> None:
    log = EventLog(ctx.redis, ctx.settings.replace(event_retention=0.3))
    log.publish([Publishable(None, 0, event(None, "old"), "c")])
    old = log.tail()
    time.sleep(0.4)
    ctx.redis.hdel(log.meta_key, "trimmed")
    log.publish([Publishable(None, 0, event(None, "new"), "c")])
    assert labels(log) == ["new"]
    assert log.floor() == old
    assert log.page(old).status == "ok"  # whoever saw the last deleted one missed nothing
    assert log.page(f"{parse_id(old)[0] - 1}-0").status == "too_old"  # type: ignore[index]
