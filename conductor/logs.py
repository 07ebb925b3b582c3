"""Logging set-up shared by the server processes, and the request id on log lines.

The request a line is about is kept in a context variable: the API binds
it when a request is accepted (or found again), a conductor when it runs a
step (``engine.runner.run_step``).  A filter on the handler appends
``request_id=<id>`` to every line written while one is bound, so one
``grep`` follows a request from the API through the workers.  The node
a line is about is bound the same way (the API, for calls under
``/nodes/<ident>``: the name or UUID as the URL gave it).

Two formats (setting ``log_format``): ``text``, one line as above, or
``json``, one JSON object per line (``time`` in UTC, ``level``, ``logger``,
``message``, ``process``, ``pid``, and ``request_id``, ``node`` and
``exception`` when there are some), for a log shipper.  Either way,
secrets are masked in what is written (:func:`redact`): API tokens,
``Authorization`` and ``X-Agent-Token`` values, passwords in URLs and in
``password``/``secret``/``token`` fields.

Where lines go (setting ``log_file``): stderr (the journal under systemd,
``<data dir>/logs/<process>.log`` under ``conductor up``), or a file that
is re-opened when it is moved or removed (``WatchedFileHandler``), so
logrotate may rotate it without ``copytruncate`` and every process of a
host may share it (docs/production.md#logs).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import logging.handlers
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conductor.settings import Settings

FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s%(request_tag)s"

FORMATS = ("text", "json")

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_NODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("node", default=None)

#: What :func:`redact` masks, and how: a secret's value becomes ``******``.
_SECRETS = (
    # API tokens (conductor.auth.tokens.PREFIX), wherever they appear.
    (re.compile(r"\bcdt_[A-Za-z0-9_\-]+"), "cdt_******"),
    # Authorization and agent token headers, as text or as a dict's repr.
    (re.compile(r"(?i)(\b(?:authorization|x-agent-token)['\"]?\s*[:=]\s*['\"]?(?:bearer\s+|basic\s+)?)[^\s'\",}]+"),
     r"\1******"),
    # user:password@ in URLs (database, Redis, image sources, BMCs).
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^/\s@]+@"), r"\1******@"),
    # password=..., "secret": "...", secret_key: ... (JSON, reprs, key=value): quoted values, then bare ones.
    (re.compile(r"(?i)(\b[a-z_]*(?:password|passwd|secret|token)[a-z_]*['\"]?\s*[:=]\s*)(['\"])(?:\\.|(?!\2).)*\2"),
     r"\1\2******\2"),
    (re.compile(r"(?i)(\b[a-z_]*(?:password|passwd|secret|token)[a-z_]*\s*[:=]\s*)(?!\*{6})[^\s&'\"]+"),
     r"\1******"),
)


def bind_request_id(request_id: str | None) -> None:
    """Make ``request_id`` the request the following log lines are about (None: none)."""
    _REQUEST_ID.set(request_id)


def current_request_id() -> str | None:
    """The request bound by :func:`bind_request_id`, if any."""
    return _REQUEST_ID.get()


def bind_node(node: str | None) -> None:
    """Make ``node`` (a name or UUID) the node the following log lines are about (None: none)."""
    _NODE.set(node)


def redact(text: str) -> str:
    """``text`` with the secrets it carries replaced by ``******`` (see the module docstring)."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Bind ``request_id`` for the duration of the block."""
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (and ``request_tag``, `` request_id=<id>`` or empty) and ``node`` to records.

    ``node``: the bound node, unless the call gave one (``extra={"node": ...}``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = _REQUEST_ID.get()
        record.request_id = request_id
        record.request_tag = f" request_id={request_id}" if request_id else ""
        if getattr(record, "node", None) is None:
            record.node = _NODE.get()
        return True


class TextFormatter(logging.Formatter):
    """:data:`FORMAT`, secrets masked in the message and the traceback (not in the line's prefix, whose
    logger name, ``conductor.auth.tokens:``, would read as a secret's key)."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = redact(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 (logging's name)
        return redact(super().formatStack(stack_info))


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring), secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "process": record.processName,
            "pid": record.process,
        }
        for key in ("request_id", "node"):
            value = getattr(record, key, None)
            if value:
                line[key] = str(value)
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            line["exception"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(settings: Settings) -> None:
    """:func:`setup` with the settings' level, format and file."""
    setup(settings.log_level, Path(settings.log_file).expanduser() if settings.log_file else None,
          settings.log_format)


def setup(level: str = "INFO", file: Path | None = None, fmt: str = "text") -> None:
    """Log at ``level`` to ``file`` (or stderr) in format ``fmt`` (text, json); quiet the chatty libraries.

    :raises ValueError: ``fmt`` is not one of :data:`FORMATS`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        # Re-opened when logrotate moves it away; O_APPEND, so processes sharing it do not overwrite.
        handler = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # RQ logs every job at INFO; alembic every plugin it loads.
    for name in ("rq.worker", "rq.queue", "alembic"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
