"""Engines, sessions and schema migrations.

SQLite (the default) is opened in WAL mode with a generous busy timeout so
that several API and conductor processes can share the file: readers never
block, writers queue.  Python's sqlite3 starts a transaction lazily, just
before the first write, so every state-changing function here starts with
its conditional write and never upgrades a read snapshot (which SQLite
refuses with ``SQLITE_BUSY`` instead of waiting).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from conductor.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the conductor's connection settings.

    Statement parameters are hidden from error messages: they may hold
    secrets (BMC passwords in ``driver_info``) and errors get logged.
    """
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
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
        """The database the settings name."""
        return cls(settings.sqlalchemy_url)

    def session(self) -> Session:
        """A new session; the caller closes it (or uses it as a context manager)."""
        return self._sessions()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction, committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

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
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(_alembic_config(url), revision)


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
