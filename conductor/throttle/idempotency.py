"""``Idempotency-Key`` (IETF draft-ietf-httpapi-idempotency-key-header).

A client that sends a state change with a key it made up may send it
again (a lost response, a timeout) and get the request the first one
produced, however long ago it finished, for ``idempotency_retention``
seconds.  Keys are per client; the same key with a different method, path
or body is refused (422 ``idempotency_key_reused``).

The key is stored in the database in the *same transaction* as the request
it produced (see :mod:`conductor.service.requests`), with a unique
constraint on (client, key): of two concurrent uses of one key exactly one
commits, and the other finds it and replays it.  Nothing can be run twice,
even across API processes or a Redis restart.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from conductor import database
from conductor.database import Database
from conductor.exceptions import IdempotencyKeyReused, InvalidInput
from conductor.models import IdempotencyRecord, utcnow

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
_keys = IdempotencyRecord.__table__
# Core statements: they run on an ORM session or a plain connection alike.
_FIND = sa.select(_keys.c.request_id, _keys.c.fingerprint).where(
    _keys.c.client == sa.bindparam("client"),
    _keys.c.key == sa.bindparam("key"),
    _keys.c.expires_at > sa.bindparam("now", type_=_keys.c.expires_at.type),
)


@dataclasses.dataclass(frozen=True)
class IdempotencyKey:
    """A key as one client used it, with the fingerprint of what it sent."""

    client: str
    key: str
    fingerprint: str


def parse(header: str | None) -> str | None:
    """The key of an ``Idempotency-Key`` header (a structured-field string, quotes optional).

    :raises InvalidInput: empty, too long, or not printable ASCII.
    """
    if header is None:
        return None
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_KEY_LENGTH or not all(32 <= ord(c) < 127 for c in key):
        raise InvalidInput(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            errors={HEADER: "invalid key"},
        )
    return key


def fingerprint(method: str, path: str, body: Any) -> str:
    """A digest of what a call asked for (JSON bodies compared by content, not layout)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method.upper()} {path}\n{canonical}".encode()).hexdigest()


def find(db: Session | Connection, key: IdempotencyKey) -> str | None:
    """The id of the request ``key`` produced, if it is remembered.

    :raises IdempotencyKeyReused: the key was used for something else.
    """
    record = db.execute(_FIND, {"client": key.client, "key": key.key, "now": utcnow()}).one_or_none()
    if record is None:
        return None
    if record.fingerprint != key.fingerprint:
        raise IdempotencyKeyReused(
            f"{HEADER} {key.key!r} was already used for a different request "
            f"({record.request_id}); use a new key for a new request.",
            request_id=record.request_id,
        )
    return str(record.request_id)


def remember(db: Session | Connection, key: IdempotencyKey, request_id: str, retention: float) -> None:
    """Record that ``key`` produced ``request_id``, in the caller's transaction.

    A concurrent use of the same key raises ``IntegrityError`` (here or at
    commit); the caller rolls back, retries, and then finds the winner.
    """
    now = utcnow()
    # An expired record of the same key would block the unique constraint.
    db.execute(
        sa.delete(_keys).where(
            _keys.c.client == key.client, _keys.c.key == key.key, _keys.c.expires_at <= now
        )
    )
    db.execute(
        sa.insert(_keys).values(
            client=key.client,
            key=key.key,
            fingerprint=key.fingerprint,
            request_id=request_id,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=retention),
        )
    )


def purge_expired(db: Database) -> int:
    """Forget expired keys; returns how many."""
    with db.begin() as session:
        return int(
            database.rowcount(session.execute(
                sa.delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow())
            ))
        )
