"""The hub: one reader, bounded buffers, long-poll wake-ups (a real Redis log underneath)."""

from __future__ import annotations

import json
import threading
import time

from conductor.callbacks.events import StreamEvent
from conductor.context import Context
from conductor.eventlog.hub import Filter, Hub
from conductor.eventlog.log import Publishable


def publish(ctx: Context, count: int, kind: str = "node.maintenance", node: str | None = "n1",
            request: str | None = None) -> None:
    body = json.dumps({"type": kind, "timestamp": "t", "data": {}})
    ctx.events.publish([Publishable(node, 0, StreamEvent(kind, node, request, body), "c") for _ in range(count)])


def drained(subscription, want: int, timeout: float = 5.0) -> list:  # type: ignore[no-untyped-def]
    got: list = []
    while len(got) < want:
        items, closed = subscription.take(timeout)
        assert items or closed is None, f"closed ({closed}) after {len(got)}"
        assert items, f"only {len(got)} of {want} arrived"
        got += items
    return got


def test_a_client_that_falls_behind_is_dropped_and_its_buffer_freed(ctx: Context) -> None:
    drops: list[str] = []
    hub = Hub(ctx.events, limit=40, on_drop=drops.append)
    try:
        idle = hub.subscribe(Filter())
        busy = hub.subscribe(Filter())
        for _ in range(5):
            publish(ctx, 10)
            assert len(drained(busy, 10)) == 10  # keeps up: never dropped
        assert idle.take(2)[1] == "slow_consumer"  # (the hub may hand busy its events first)
        assert idle.buffered == 0
        deadline = time.monotonic() + 2
        while not drops and time.monotonic() < deadline:
            time.sleep(0.01)
        assert drops == ["slow_consumer"]
        assert busy.closed is None
    finally:
        hub.stop()


def test_filters_by_type_and_node(ctx: Context) -> None:
    hub = Hub(ctx.events, limit=100)
    try:
        power = hub.subscribe(Filter(("node.power_*",)))
        n2 = hub.subscribe(Filter((), frozenset({"n2"})))
        publish(ctx, 1, "node.power_state.changed", "n1")
        publish(ctx, 1, "throttle.changed", None)
        publish(ctx, 1, "node.maintenance", "n2")
        (only,) = drained(power, 1)
        assert only.type == "node.power_state.changed"
        (mine,) = drained(n2, 1)
        assert (mine.type, mine.node) == ("node.maintenance", "n2")  # not the throttle: it is about no node
    finally:
        hub.stop()


def test_a_long_poll_is_woken_by_its_request_finishing_only(ctx: Context) -> None:
    hub = Hub(ctx.events, limit=100)
    try:
        with hub.watching("req-1") as finished:
            publish(ctx, 1, "request.running", request="req-1")
            publish(ctx, 1, "request.finished", request="req-2")
            assert not finished.wait(1.5)
            publish(ctx, 1, "request.finished", request="req-1")
            assert finished.wait(5)
        assert hub.counts() == (0, 0)
    finally:
        hub.stop()


def test_stopping_closes_the_streams_and_wakes_the_long_polls(ctx: Context) -> None:
    hub = Hub(ctx.events, limit=100)
    subscription = hub.subscribe(Filter())
    with hub.watching("req-1") as finished:
        waiter = threading.Thread(target=finished.wait, args=(10,))
        waiter.start()
        hub.stop()
        waiter.join(5)
        assert not waiter.is_alive()
    assert subscription.take(1) == ([], "server_stopping")
