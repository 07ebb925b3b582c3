"""Sealing every stored secret: migration 0006, ``conductor secrets seal`` and ``rotate-key``.

The tables are named here by their columns (not through the models), so
that migrations may use this code whatever the models become later.

A key rotation (:func:`rotate_key_file`) is crash-safe: the new key is
added to the key file in front of the old ones (every value opens), rows
are re-encrypted batch by batch (each batch one transaction), and only
when no row is left under an old key are the old keys dropped.  A crash
anywhere leaves a key file that opens every row; running the rotation
again finishes it.  Every process re-reads a changed key file before it
seals, and again when a value does not open.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from conductor import secretbox
from conductor.exceptions import InvalidInput
from conductor.secretbox import SEALED_INTERNAL_KEYS, SecretBox, is_secret
from conductor.settings import load as load_settings

LOG = logging.getLogger(__name__)

BATCH = 200
#: Passes over the tables before a rotation gives up on rows that keep
#: being rewritten under an old key (a process that never saw the new file).
MAX_PASSES = 5

_nodes = sa.table("nodes", sa.column("id", sa.Integer), sa.column("driver_info", sa.JSON),
                  sa.column("driver_internal_info", sa.JSON), sa.column("updated_at"))
_secrets = sa.table("callback_secrets", sa.column("client", sa.String), sa.column("secret", sa.String),
                    sa.column("previous_secret", sa.String))

#: Opens a connection in a transaction (one batch), committed on exit.
Connect = Callable[[], AbstractContextManager[sa.Connection]]


#: What to do to one stored value: whether it needs it, and the new value.
Rewrite = tuple[Callable[[Any], bool], Callable[[str], str]]


def _outdated(box: SecretBox, value: Any, plain_only: bool) -> bool:
    if not isinstance(value, str):
        return False
    if not secretbox.is_sealed(value):
        return True
    return not plain_only and not box.current_key_seals(value)


def _node_batch(conn: sa.Connection, rewrite: Rewrite, after: int) -> tuple[int | None, int, int]:
    needs, redo = rewrite
    rows = conn.execute(
        sa.select(_nodes.c.id, _nodes.c.driver_info, _nodes.c.driver_internal_info, _nodes.c.updated_at)
        .where(_nodes.c.id > after).order_by(_nodes.c.id).limit(BATCH)
    ).all()
    changed = needed = 0
    for node_id, info, internal, updated_at in rows:
        info, internal = info or {}, internal or {}
        if not (any(is_secret(k) and needs(v) for k, v in info.items())
                or any(k in SEALED_INTERNAL_KEYS and needs(v) for k, v in internal.items())):
            continue
        needed += 1
        new = {k: (redo(v) if is_secret(k) and needs(v) else v) for k, v in info.items()}
        new_internal = {k: (redo(v) if k in SEALED_INTERNAL_KEYS and needs(v) else v) for k, v in internal.items()}
        # Conditional on the version a patch checks too (and left as it is):
        # a concurrent patch wins, and the next pass looks at its result.
        changed += conn.execute(
            sa.update(_nodes).where(_nodes.c.id == node_id, _nodes.c.updated_at == updated_at)
            .values(driver_info=new, driver_internal_info=new_internal)
        ).rowcount
    return (rows[-1][0] if rows else None), changed, needed


def _secret_batch(conn: sa.Connection, rewrite: Rewrite, after: str | None) -> tuple[str | None, int, int]:
    needs, redo = rewrite
    query = sa.select(_secrets.c.client, _secrets.c.secret, _secrets.c.previous_secret)
    if after is not None:  # (the deployment's own secret is client "")
        query = query.where(_secrets.c.client > after)
    rows = conn.execute(query.order_by(_secrets.c.client).limit(BATCH)).all()
    changed = needed = 0
    for client, secret, previous in rows:
        if not (needs(secret) or needs(previous)):
            continue
        needed += 1
        same_previous = _secrets.c.previous_secret.is_(None) if previous is None else (
            _secrets.c.previous_secret == previous)
        changed += conn.execute(
            sa.update(_secrets).where(_secrets.c.client == client, _secrets.c.secret == secret, same_previous)
            .values(secret=redo(secret) if needs(secret) else secret,
                    previous_secret=redo(previous) if needs(previous) else previous)
        ).rowcount
    return (rows[-1][0] if len(rows) == BATCH else None), changed, needed


def _rewrite_pass(connect: Connect, rewrite: Rewrite) -> tuple[int, int]:
    """Apply ``rewrite`` to every stored secret, a batch per transaction.

    Returns the rows changed and the rows found needing it (more than
    changed when a concurrent write won the race for a row).
    """
    total = found = 0
    node_after: int | None = 0
    while node_after is not None:
        with connect() as conn:
            node_after, changed, needed = _node_batch(conn, rewrite, node_after)
        total, found = total + changed, found + needed
    secret_after: str | None = None
    while True:
        with connect() as conn:
            secret_after, changed, needed = _secret_batch(conn, rewrite, secret_after)
        total, found = total + changed, found + needed
        if secret_after is None:
            break
    return total, found


def rewrite_rows(connect: Connect, rewrite: Rewrite) -> int:
    """Apply ``rewrite`` to every stored secret, a batch per transaction; the rows changed."""
    return _rewrite_pass(connect, rewrite)[0]


def seal_rows(connect: Connect, box: SecretBox, plain_only: bool = False) -> int:
    """Seal every stored secret with ``box``'s current key; the number of rows changed.

    ``plain_only``: seal only the values stored in plain text (leave sealed
    ones as they are).  Otherwise values sealed with an older key of the
    ring are re-encrypted too.
    """
    return rewrite_rows(connect, (lambda v: _outdated(box, v, plain_only), box.reseal))


def open_rows(connect: Connect, box: SecretBox) -> int:
    """Store every sealed secret in plain text again (a downgrade); the rows changed."""
    return rewrite_rows(connect, (secretbox.is_sealed, box.open))


def in_transaction(conn: sa.Connection) -> Connect:
    """A ``connect`` for :func:`seal_rows` that uses ``conn`` as it is (a migration's transaction)."""
    return lambda: contextlib.nullcontext(conn)


def engine_batches(engine: sa.Engine) -> Connect:
    """A ``connect`` for :func:`seal_rows`: one transaction per batch on ``engine``."""

    @contextlib.contextmanager
    def connect() -> Iterator[sa.Connection]:
        with engine.begin() as conn:
            yield conn

    return connect


def reseal_until_current(connect: Connect, box: SecretBox) -> int:
    """Re-encrypt until a whole pass finds nothing under an old key; the rows changed.

    A pass ends the loop only when it found no such row: a row it could not
    rewrite (a concurrent write changed it first) still needs the old key.

    :raises RuntimeError: rows are still under an old key after ``MAX_PASSES``.
    """
    total = 0
    for _pass in range(MAX_PASSES):
        changed, found = _rewrite_pass(connect, (lambda v: _outdated(box, v, False), box.reseal))
        total += changed
        if found == 0:
            return total
    raise RuntimeError(
        f"Rows are still under an old key after {MAX_PASSES} passes (written meanwhile); "
        "the old keys are kept (run the rotation again)."
    )


def rotate_key_file(connect: Connect, box: SecretBox) -> tuple[int, int]:
    """Rotate the key of ``box``'s key file; the rows re-encrypted and the old keys dropped.

    :raises RuntimeError: ``box`` has no key file (keys from the settings).
    """
    key_file = box.key_file
    if key_file is None:
        raise RuntimeError("The keys come from the setting secret_key, not a key file.")
    old = box.keys(reload=True)
    key_file.write([secretbox.new_key(), *old])
    changed = reseal_until_current(connect, box)
    new = box.keys(reload=True)[0]
    # Rows a process sealed under an old key after its last look at the
    # file are re-encrypted by a last pass that still holds every key.
    everything = SecretBox(keys=[new, *old])
    key_file.write([new])
    try:
        changed += reseal_until_current(connect, everything)
    except RuntimeError:
        key_file.write([new, *old])  # a row may still need an old key: keep them
        raise
    finally:
        box.keys(reload=True)
    return changed, len(old)


def box_for_migration(url: sa.URL, env: Mapping[str, str] | None = None) -> SecretBox | None:
    """The key ring a migration seals with when no caller passed one (None: none found).

    Never creates a key (a migration guessing the wrong data directory
    would seal with a key the service does not have).  In order: the
    setting ``secret_key`` (environment or config file, as every conductor
    process reads it); the key file beside a SQLite database file (the data
    directory of the embedded default); the key file of the data directory
    the environment names.
    """
    try:
        settings = load_settings(env=env)
    except InvalidInput as exc:
        LOG.warning("Migration: cannot read the settings for the secret key: %s", exc.message)
        return None
    if settings.secret_key:
        return SecretBox(keys=secretbox.parse_keys(settings.secret_key))
    candidates = []
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        candidates.append(Path(url.database).parent / settings.secret_key_file.name)
    candidates.append(settings.secret_key_file)
    for path in candidates:
        if path.is_file():
            return SecretBox(key_file=secretbox.KeyFile(path), create=False)
    return None



def _plain(value: Any) -> bool:
    return isinstance(value, str) and not secretbox.is_sealed(value)


def count_plain(conn: sa.Connection) -> int:
    """How many rows hold a secret in plain text."""
    nodes = sum(
        1 for (info,) in conn.execute(sa.select(_nodes.c.driver_info))
        if any(is_secret(k) and _plain(v) for k, v in (info or {}).items())
    )
    secrets = sum(
        1 for secret, previous in conn.execute(sa.select(_secrets.c.secret, _secrets.c.previous_secret))
        if _plain(secret) or _plain(previous)
    )
    return nodes + secrets


def scrub(engine: sa.Engine) -> None:
    """Leave no old copy of a rewritten secret in a SQLite file (no-op elsewhere).

    SQLite keeps deleted content in free pages and old page versions in the
    WAL file; VACUUM rebuilds the file and a truncating checkpoint empties
    the WAL.  (PostgreSQL's dead row versions go with its own VACUUM.)
    """
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
