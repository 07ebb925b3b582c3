"""Test helpers for callbacks: a real HTTP receiver on loopback, an
independent signature check, and an in-process delivery loop.

The signature check is written here from the Standard Webhooks spec with
hmac/hashlib/base64; it deliberately does not import the conductor's signer.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa

from conductor.callbacks import delivery, outbox
from conductor.context import Context
from conductor.models import CallbackDelivery, utcnow


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, independent of the code under test."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


@dataclasses.dataclass
class Received:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass
class Reply:
    """How the receiver answers one POST."""

    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Hold the answer until the receiver is released (or this many seconds).
    hold: float = 0.0


class Receiver:
    """A real HTTP server on 127.0.0.1 that records POSTs and answers as scripted.

    ``replies`` are used one per POST, in order; after them every POST gets
    ``default``.  Held POSTs wait for :meth:`release`.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: list[Reply] = []
        self.default = Reply()
        self.arrived = 0
        self.released = threading.Event()
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._cond:
                    receiver.arrived += 1
                    reply = receiver.replies.pop(0) if receiver.replies else receiver.default
                    receiver._cond.notify_all()
                if reply.hold:
                    receiver.released.wait(reply.hold)
                with receiver._cond:
                    receiver.received.append(Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body, reply.status))
                    receiver._cond.notify_all()
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up (timeout) or died

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def script(self, *replies: Reply | int) -> None:
        """Answer the next POSTs so (a number is a status)."""
        with self._cond:
            self.replies.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def release(self) -> None:
        self.released.set()

    def wait_arrived(self, count: int, timeout: float = 20.0) -> None:
        """Wait until ``count`` POSTs arrived (answered or held)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.arrived >= count, timeout):
                raise AssertionError(f"{self.arrived} POST(s) arrived, expected {count}")

    def wait_received(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until ``count`` POSTs were answered; return them all."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{len(self.received)} POST(s) answered, expected {count}")
            return list(self.received)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def receiver_fixture() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def deliver_due(ctx: Context) -> int:
    """Attempt, in this process, every delivery that is due now; how many were tried."""
    with ctx.db.session() as session:
        ids = outbox.due(session, utcnow(), 500)
    return sum(delivery.attempt(ctx, delivery_id) is not None for delivery_id in ids)


def drain_callbacks(ctx: Context, timeout: float = 10.0) -> None:
    """Deliver (and retry) in this process until no delivery is pending."""
    deadline = time.monotonic() + timeout
    while True:
        deliver_due(ctx)
        with ctx.db.session() as session:
            pending = session.scalar(
                sa.select(sa.func.count()).select_from(CallbackDelivery).where(CallbackDelivery.state == "pending")
            )
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{pending} delivery(ies) still pending after {timeout} s")
        time.sleep(0.02)


def deliveries(ctx: Context, **filters: Any) -> list[CallbackDelivery]:
    """Delivery rows, oldest first, filtered by column values."""
    with ctx.db.session() as session:
        query = sa.select(CallbackDelivery).filter_by(**filters).order_by(CallbackDelivery.id)
        return list(session.scalars(query))
