"""Engines, sessions and schema migrations.

SQLite (the default) is opened in WAL mode with a generous busy timeout so
that several API and conductor processes can share the file: readers never
block, writers queue.  Python's sqlite3 starts a transaction lazily, just
before the first write, so every state-changing function here starts with
its conditional write and never upgrades a read snapshot (which SQLite
refuses with ``SQLITE_BUSY`` instead of waiting).

Transient errors (a connection lost or its backend terminated, a
serialization failure or deadlock, SQLite busy or locked) are told apart by
:func:`is_transient`; :func:`retrying` re-runs a whole unit of work (one
transaction, from its start, never the rest of a broken one) a few times
with a short jittered backoff.  Every unit retried this way is idempotent
(conditional writes), so running it twice does no harm.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from conductor import secretbox
from conductor.datadir import ensure_private_sqlite
from conductor.settings import Settings

LOG = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: How many times :func:`retrying` runs a unit of work, and its backoff (s).
RETRY_ATTEMPTS = 5
RETRY_BASE_DELAY = 0.05
RETRY_MAX_DELAY = 1.0
#: What a client is told to wait when the database stays away (Retry-After).
UNAVAILABLE_RETRY_AFTER = 2
# SQLSTATEs worth another try: serialization failure, deadlock, the
# backend terminated (admin shutdown, crash, cannot connect now), and the
# whole "connection exception" class 08.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})
_SQLITE_TRANSIENT = ("database is locked", "database is busy", "database table is locked")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error that running the unit of work again may cure.

    Connection losses (SQLAlchemy's ``connection_invalidated``, a psycopg
    ``OperationalError`` without a server SQLSTATE, class ``08``), a
    terminated backend (``57P01``...), serialization failures (``40001``),
    deadlocks (``40P01``) and SQLite's busy/locked.  Not constraint
    violations, syntax errors or data errors: those would fail again.
    """
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate:
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    if isinstance(orig, sqlite3.Error):
        return isinstance(orig, sqlite3.OperationalError) and any(t in str(orig) for t in _SQLITE_TRANSIENT)
    # psycopg: an OperationalError the server sent no SQLSTATE for is the
    # connection itself failing (closed, reset, consuming input failed).
    return isinstance(exc, sa.exc.OperationalError) and type(orig).__module__.startswith("psycopg")


def backoff(attempt: int) -> float:
    """The pause before try ``attempt + 1`` (full jitter, capped)."""
    return random.uniform(0, min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2**attempt))


def retrying(unit: Callable[[], T], what: str, attempts: int = RETRY_ATTEMPTS, *,
             may_repeat: Callable[[sa.exc.DBAPIError], bool] | None = None,
             before_retry: Callable[[], None] | None = None) -> T:
    """Run ``unit`` (one whole transaction); run it again on a transient error.

    ``unit`` must open its own transaction and be idempotent.  After
    ``attempts`` tries the last transient error is raised.  ``may_repeat``
    may veto a repeat (say, the unit committed before it failed), and
    ``before_retry`` runs before each repeat (say, to drop a session).

    :raises sqlalchemy.exc.DBAPIError: a permanent error, or retries exhausted.
    """
    for attempt in range(1, attempts + 1):
        try:
            return unit()
        except sa.exc.DBAPIError as exc:
            if attempt >= attempts or not is_transient(exc) or (may_repeat is not None and not may_repeat(exc)):
                raise
            pause = backoff(attempt)
            LOG.warning("%s: transient database error (%s); try %d of %d in %.2f s",
                        what, _brief(exc), attempt + 1, attempts, pause)
            if before_retry is not None:
                before_retry()
            time.sleep(pause)
    raise AssertionError("unreachable")


def _brief(exc: sa.exc.DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__


def rowcount(result: sa.Result[Any]) -> int:
    """The rows an UPDATE or DELETE run by ``Session.execute`` matched.

    The session hands back a ``CursorResult`` for these statements, but is
    typed as returning a plain ``Result``, which has no ``rowcount``.
    """
    return cast("sa.CursorResult[Any]", result).rowcount


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the conductor's connection settings.

    Statement parameters are hidden from error messages: they may hold
    secrets (BMC passwords in ``driver_info``) and errors get logged.
    """
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            ensure_private_sqlite(Path(path))  # 0600 (and its WAL/SHM), not the umask's 0644
        engine = sa.create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            hide_parameters=True,
            **kwargs,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if url.startswith("postgresql"):
        # Like SQLite's busy timeout: a statement waits at most this long for
        # a lock, then fails (and its request with it) instead of hanging a
        # worker for ever behind a stuck transaction.
        kwargs.setdefault("connect_args", {"options": f"-c lock_timeout={SQLITE_BUSY_TIMEOUT_MS}"})
    # Never put statement parameters (a driver_info password...) in error texts.
    return sa.create_engine(url, hide_parameters=True, **kwargs)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL with synchronous=NORMAL is durable across process crashes (not
    # power loss of the last transactions) and much faster.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database the settings name; its sessions seal secrets with the settings' key."""
        db = cls(settings.sqlalchemy_url)
        db._sessions.configure(info={secretbox.SESSION_INFO_KEY: secretbox.for_settings(settings)})
        return db

    def session(self) -> Session:
        """A new session; the caller closes it (or uses it as a context manager)."""
        return self._sessions()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction, committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def set_session_info(self, key: str, value: Any) -> None:
        """Put ``key`` in the ``info`` of every session made from now on (beside what is there)."""
        info = dict(self._sessions.kw.get("info") or {})
        info[key] = value
        self._sessions.configure(info=info)

    def listen(self, event_name: str, fn: Any) -> None:
        """Call ``fn`` on session event ``event_name`` of every session of this database."""
        event.listen(self._sessions, event_name, fn)

    def dispose(self) -> None:
        """Close every pooled connection (call after fork, and at exit)."""
        self.engine.dispose()


def _script_location() -> str:
    # In a source checkout the migrations sit in ``db/`` beside the package.
    # Prefer them: with an editable install of *another* checkout on the path
    # (a git worktree run with PYTHONPATH), ``conductor.migrations`` would
    # resolve to that checkout's migrations, not the ones matching our models.
    source = Path(__file__).resolve().parent.parent / "db"
    if (source / "env.py").is_file():
        return str(source)
    return str(resources.files("conductor.migrations"))


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", _script_location())
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Create or upgrade the schema at ``url`` to ``revision``."""
    from alembic import command

    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            ensure_private_sqlite(Path(path))
    config = _alembic_config(url)
    command.upgrade(config, revision)
    if config.attributes.get("sealed_rows"):
        # Migration 0006 sealed plain secrets: leave no plain copy in the file
        # (whether SQLite overwrites deleted content depends on its build).
        from conductor import sealing

        engine = make_engine(url)
        try:
            sealing.scrub(engine)
        finally:
            engine.dispose()


def head_revision() -> str:
    """The newest migration's revision (what :func:`upgrade` reaches by default)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return str(head)


def current_revision(url: str) -> str | None:
    """The schema revision the database at ``url`` is at (None if empty)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
