"""The wire format of ``GET /v1/events``: Server-Sent Events (the HTML standard's ``text/event-stream``).

An event is three lines and a blank one::

    id: 1767225600123-0
    event: node.power_state.changed
    data: {"id": "1767225600123-0", "committed_at": "2026-...Z", "type": "node.power_state.changed",
           "timestamp": "2026-...Z", "data": {...}}

(``data`` is one line.)  The stream's own events (:data:`RESET`,
:data:`CLOSED`) carry no ``id:``, so a client's ``Last-Event-ID`` stays the
last real event it got.  A line starting with ``:`` is a comment: the
heartbeat.
"""

from __future__ import annotations

import json
from typing import Any

from conductor.eventlog.log import Entry, iso_now

#: The client lost events (its ``Last-Event-ID`` is older than the retention,
#: or Redis lost the log); the stream goes on from now.
RESET = "stream.reset"
#: The server ends the stream (``reason``); the client reconnects with ``Last-Event-ID``.
CLOSED = "stream.closed"
#: What an EventSource waits before it reconnects (ms).
RETRY_MS = 2000

PREAMBLE = f"retry: {RETRY_MS}\n: connected\n\n".encode()
HEARTBEAT = b": heartbeat\n\n"


def event_frame(entry: Entry) -> bytes:
    """The frame of a logged event: its body with ``id`` and ``committed_at`` added in front."""
    # The body is a JSON object (one line): splice the two fields in
    # rather than parse and dump it again (once per event and API process).
    assert entry.body.startswith("{")
    data = f'{{"id": "{entry.id}", "committed_at": "{entry.committed_at}", {entry.body[1:]}'
    return f"id: {entry.id}\nevent: {entry.type}\ndata: {data}\n\n".encode()


def control_frame(event_type: str, **data: Any) -> bytes:
    """A frame of the stream's own (:data:`RESET`, :data:`CLOSED`): no ``id``."""
    body = json.dumps({"type": event_type, "timestamp": iso_now(), "data": data})
    return f"event: {event_type}\ndata: {body}\n\n".encode()
