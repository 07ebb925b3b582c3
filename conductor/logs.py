"""Logging set-up shared by the server processes, and the request id on log lines.

The request a line is about is kept in a context variable: the API binds
it when a request is accepted (or found again), a conductor when it runs a
step (``engine.runner.run_step``).  A filter on the handler appends
``request_id=<id>`` to every line written while one is bound, so one
``grep`` follows a request from the API through the workers.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s%(request_tag)s"

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def bind_request_id(request_id: str | None) -> None:
    """Make ``request_id`` the request the following log lines are about (None: none)."""
    _REQUEST_ID.set(request_id)


def current_request_id() -> str | None:
    """The request bound by :func:`bind_request_id`, if any."""
    return _REQUEST_ID.get()


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Bind ``request_id`` for the duration of the block."""
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (and ``request_tag``, `` request_id=<id>`` or empty) to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = _REQUEST_ID.get()
        record.request_id = request_id
        record.request_tag = f" request_id={request_id}" if request_id else ""
        return True


def setup(level: str = "INFO", file: Path | None = None) -> None:
    """Log at ``level`` to ``file`` (or stderr); quiet the chatty libraries."""
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # RQ logs every job at INFO; alembic every plugin it loads.
    for name in ("rq.worker", "rq.queue", "alembic"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
