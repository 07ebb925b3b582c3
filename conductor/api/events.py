"""``GET /v1/events``: the event stream (Server-Sent Events), and the waiting of long polls.

The contract (URL, filters, types, payloads, ids, retention, limits) is
docs/events.md.  How it keeps the API serving: each open stream or long
poll holds one gunicorn thread for as long as it is open, so each API
process has ``event_stream_slots`` of them *on top of* ``api_threads``
(:func:`conductor.api.limits.gunicorn_options`) and never lets more be
held: a stream beyond is refused (503 ``streams_busy`` + ``Retry-After``),
a long poll beyond answers at once.  The threads wait on the process's
:class:`~conductor.eventlog.hub.Hub` (one Redis reader per process), not on
Redis or the database, and hold no database connection while they wait.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import redis
from flask import Flask, Response, current_app, g, request
from flask.views import MethodView
from sqlalchemy.orm import Session

from conductor import metrics
from conductor.api import admission, schemas
from conductor.api.common import Blueprint, close_session, context, session
from conductor.auth import tokens
from conductor.callbacks import events
from conductor.context import Context
from conductor.eventlog import sse
from conductor.eventlog.hub import Filter, Hub, Item, Subscription
from conductor.eventlog.log import EventLog, parse_id
from conductor.exceptions import (
    InvalidEventFilter,
    InvalidInput,
    NodeNotFound,
    QueueUnavailable,
    StreamsBusy,
)
from conductor.fsm.states import FINAL_REQUEST_STATES
from conductor.models import Request
from conductor.service import nodes as node_service
from conductor.service import requests as request_service

LOG = logging.getLogger(__name__)

blp = Blueprint("events", __name__, url_prefix="/v1/events",
                description="The event stream: Server-Sent Events (see docs/events.md)")

#: What a refused stream is told to wait (s).
BUSY_RETRY_AFTER = 5
#: The kernel's send buffer of a stream's socket (Linux doubles it): what a
#: client that stops reading holds in the kernel, instead of up to 4 MiB.
SEND_BUFFER = 64 * 1024
#: A long poll reads the request again this often even without an event (a lost event costs at most this).
RECHECK = 5.0
_HUB = "conductor.event_hub"
_SLOTS = "conductor.event_slots"

#: Under gunicorn, whether the serving worker is stopping (set after fork by
#: :mod:`conductor.gunicorn_app`): its streams are then closed at once rather
#: than when gunicorn's graceful timeout cuts them.
def _never() -> bool:
    return False


_stopping: Callable[[], bool] = _never


def stop_streams_when(predicate: Callable[[], bool]) -> None:
    """Close this process's streams (and end its long polls) once ``predicate()`` is true."""
    global _stopping  # one per process, set once after fork
    _stopping = predicate


def install(app: Flask, ctx: Context) -> None:
    """The process's hub and stream slots (nothing starts until the first stream or long poll)."""
    recorder = metrics.recorder(ctx)
    hub = Hub(ctx.events, ctx.settings.event_stream_buffer,
              on_drop=lambda reason: recorder.inc(metrics.EVENT_STREAMS_DROPPED, {"reason": reason}))
    hub.stop_when(lambda: _stopping())
    app.extensions[_HUB] = hub
    # The sync worker (api_threads = 1) serves one call at a time: nothing may be held open.
    slots = ctx.settings.event_stream_slots if ctx.settings.api_threads > 1 else 0
    app.extensions[_SLOTS] = threading.BoundedSemaphore(slots) if slots > 0 else None


def hub() -> Hub:
    """This process's event hub."""
    return cast(Hub, current_app.extensions[_HUB])


def _take_slot() -> threading.BoundedSemaphore | None:
    slots = cast("threading.BoundedSemaphore | None", current_app.extensions.get(_SLOTS))
    return slots if slots is not None and slots.acquire(blocking=False) else None


def _count_closed(ctx: Context, reason: str) -> None:
    metrics.recorder(ctx).inc(metrics.EVENT_STREAMS_CLOSED, {"reason": reason})


# --- the stream ------------------------------------------------------------------------------


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parse_filter(db_session: Session, types: list[str], node_idents: list[str]) -> Filter:
    """The filter of ``type=`` patterns and ``node=`` names or UUIDs (each may be repeated or comma-separated).

    :raises InvalidEventFilter: a pattern matches no event type, or a node does not exist.
    """
    patterns = _split(types)
    if patterns:
        try:
            events.check_patterns(patterns, known=list(events.EventType), field="type")
        except InvalidInput as exc:
            raise InvalidEventFilter(exc.message, errors=exc.details.get("errors", {})) from None
    uuids = set()
    for ident in _split(node_idents):
        try:
            uuids.add(node_service.find(db_session, ident).uuid)
        except NodeNotFound:
            raise InvalidEventFilter(f"Unknown node {ident} in the node filter.",
                                     errors={"node": f"unknown: {ident}"}) from None
    return Filter(tuple(patterns), frozenset(uuids))


def parse_last_event_id(value: str | None) -> str | None:
    """The ``Last-Event-ID`` to resume after (None: from now on).

    :raises InvalidEventFilter: not an event id (``<ms>-<n>``).
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if parse_id(value) is None:
        raise InvalidEventFilter(f"Last-Event-ID {value[:40]!r} is not an event id (<ms>-<n>).",
                                 errors={"Last-Event-ID": "not an event id"})
    return value


@blp.route("")
class Events(MethodView):
    @blp.arguments(schemas.EventQuery, location="query")
    @blp.doc(responses={200: {
        "description": "A text/event-stream of events (see docs/events.md); `Last-Event-ID` resumes",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }})
    def get(self, args: dict[str, Any]) -> Response:
        """Stream events as Server-Sent Events, filtered by ``type`` (wildcards) and ``node``."""
        wanted = parse_filter(session(), args["type"], args["node"])
        after = parse_last_event_id(request.headers.get("Last-Event-ID") or args.get("last_event_id"))
        ctx = context()
        checker = _token_checker(ctx)
        _bound_send_buffer(request.environ.get("gunicorn.socket"))
        # Streams outlive the call: hold no database connection.
        close_session()
        slots = _take_slot()
        if slots is None:
            raise StreamsBusy(f"Every event stream slot of this API process is taken; retry in "
                              f"{BUSY_RETRY_AFTER} s.", retry_after=BUSY_RETRY_AFTER)
        try:
            subscription = hub().subscribe(wanted)
        except redis.RedisError:
            slots.release()
            raise QueueUnavailable("The event stream is unavailable: Redis cannot be reached; retry later.",
                                   retry_after=BUSY_RETRY_AFTER) from None
        held = _Held(ctx, hub(), subscription, slots)
        return Response(_Body(_stream(ctx, held, after, checker), held), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


class _Held:
    """What an open stream holds (its slot, its subscription): given back once, however the stream ends."""

    def __init__(self, ctx: Context, event_hub: Hub, subscription: Subscription,
                 slots: threading.BoundedSemaphore) -> None:
        self.ctx = ctx
        self.hub = event_hub
        self.subscription = subscription
        self._slots: threading.BoundedSemaphore | None = slots
        self._lock = threading.Lock()

    def release(self, reason: str) -> None:
        with self._lock:
            slots, self._slots = self._slots, None
        if slots is None:
            return
        self.hub.unsubscribe(self.subscription)
        slots.release()
        try:
            _count_closed(self.ctx, reason)
        except Exception as exc:
            LOG.debug("Could not count a closed stream (%s)", exc)


class _Body:
    """The response body: the stream's frames; closing it (even unread, as for a HEAD) releases the stream."""

    def __init__(self, frames: Iterator[bytes], held: _Held) -> None:
        self._frames = frames
        self._held = held

    def __iter__(self) -> Iterator[bytes]:
        return self._frames

    def close(self) -> None:
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()
        self._held.release("client_gone")


def _bound_send_buffer(sock: Any) -> None:
    if sock is None:  # not under gunicorn (the test client)
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    except OSError as exc:
        LOG.debug("Could not bound a stream's send buffer (%s)", exc)


def _token_checker(ctx: Context) -> Callable[[], bool]:
    """Whether the caller's token is still good (always, without authentication)."""
    secret = admission.presented_token()
    if not ctx.settings.auth_enabled or not secret:
        return lambda: True
    return lambda: tokens.authenticate(ctx, secret) is not None


def _catch_up(log: EventLog, subscription: Subscription, after: str) -> Iterator[bytes | tuple[int, int]]:
    """The frames of the wanted events after ``after``, up to where the live events begin, a page at a time.

    Yields frames (bytes) and, after each page, the key of the last event
    covered.  When ``after`` is too old (or unknown) it yields a
    ``stream.reset`` frame and stops: the client goes on from now.
    """
    cursor = after
    while True:
        page = log.page(cursor)
        if page.status != "ok":
            reason = "too_old" if page.status == "too_old" else "unknown"
            LOG.info("Event stream: Last-Event-ID %s cannot be resumed (%s); starting from now", after, reason)
            yield sse.control_frame(sse.RESET, reason=reason, last_event_id=after, oldest=page.floor)
            return
        frames: list[bytes] = []
        reached = not page.entries
        for entry in page.entries:
            if entry.key > subscription.position:
                reached = True
                break
            item = Item.of(entry)
            if subscription.filter.wants(item):
                frames.append(item.frame)
            cursor = entry.id
        if frames:
            yield b"".join(frames)
        yield parse_id(cursor) or (0, 0)
        if reached:
            return


def _is_control(item: Item) -> bool:
    return item.type.startswith("stream.")


def _stream(ctx: Context, held: _Held, after: str | None, token_ok: Callable[[], bool]) -> Iterator[bytes]:
    subscription = held.subscription
    heartbeat = ctx.settings.event_heartbeat
    reason = "client_gone"
    try:
        metrics.recorder(ctx).inc(metrics.EVENT_STREAMS_OPENED, {})
        yield sse.PREAMBLE
        # Live events at or before what was sent already are skipped (the
        # client's own id may be ahead of this process's hub).
        last_sent = subscription.position
        if after is not None:
            for piece in _catch_up(ctx.events, subscription, after):
                if isinstance(piece, bytes):
                    yield piece
                else:
                    last_sent = max(last_sent, piece)
        next_check = time.monotonic() + heartbeat
        while True:
            items, closed = subscription.take(heartbeat)
            frames = [i.frame for i in items if _is_control(i) or i.key > last_sent]
            real = [i for i in items if not _is_control(i)]
            if real:
                last_sent = max(last_sent, real[-1].key)
            if closed is not None:
                reason = closed
                yield b"".join(frames) + sse.control_frame(sse.CLOSED, reason=closed, **_close_note(closed))
                return
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + heartbeat
                if not token_ok():
                    reason = "token_revoked"
                    yield b"".join(frames) + sse.control_frame(
                        sse.CLOSED, reason=reason, message="The token of this stream was revoked.")
                    return
                frames.append(sse.HEARTBEAT)
            if frames:
                yield b"".join(frames)
    finally:
        held.release(reason)


def _close_note(reason: str) -> dict[str, str]:
    if reason == "slow_consumer":
        return {"message": "The client fell too far behind; reconnect with Last-Event-ID to resume."}
    return {"message": "The server is stopping; reconnect with Last-Event-ID to resume."}


# --- long polls ------------------------------------------------------------------------------


def wait_for_end(request_id: str, wait: float) -> Request:
    """The request, once it finished or ``wait`` seconds passed, whichever comes first.

    Waits on the hub (``request.finished``), reading the request again at
    least every :data:`RECHECK` seconds, holding no database connection in
    between.  Without a free slot (or Redis), it answers at once.

    :raises RequestNotFound: no such request.
    :raises InvalidInput: ``wait`` above ``request_wait_max``.
    """
    most = context().settings.request_wait_max
    if wait > most:
        raise InvalidInput(f"wait is at most {most:g} seconds.", errors={"wait": f"at most {most:g}"})
    # Kept across a run again of the view after a database blip: the wait does not start over.
    deadline = g.setdefault("wait_deadline", time.monotonic() + wait)
    found = request_service.get(session(), request_id)
    if found.state in FINAL_REQUEST_STATES or time.monotonic() >= deadline:
        return found
    slots = _take_slot()
    if slots is None:
        return found
    try:
        with hub().watching(request_id) as finished:
            while True:
                close_session()  # no connection held, and a fresh snapshot next time
                found = request_service.get(session(), request_id)
                remaining = deadline - time.monotonic()
                if found.state in FINAL_REQUEST_STATES or remaining <= 0 or hub().stopped:
                    return found
                finished.wait(min(remaining, RECHECK))
                finished.clear()
    except redis.RedisError:
        return request_service.get(session(), request_id)
    finally:
        slots.release()
