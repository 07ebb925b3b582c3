"""The operator's throttle knobs: stored in the database, cached in Redis and per process.

The database row is the truth (it survives restarts) and holds only the
values an operator changed.  Its merged form is published under
``<ns>:throttle`` in Redis, and each process keeps its own copy for at most
``LOCAL_TTL`` seconds, so a change made through any API process reaches
every API and conductor process within a second while the hot path (every
API call reads the rates) costs no I/O at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from conductor import database, keys
from conductor.callbacks import events
from conductor.context import Context
from conductor.exceptions import InvalidInput
from conductor.models import ThrottleRecord, utcnow

LOG = logging.getLogger(__name__)

#: How long a process trusts its copy.
LOCAL_TTL = 0.5
#: How long the Redis copy lives (it is rewritten on every change anyway).
SHARED_TTL = 60
_ROW_ID = 1
_CACHE_KEY = "throttle.settings"


@dataclasses.dataclass(frozen=True)
class Throttle:
    """Rates are per second; a rate or depth of 0 means "no limit"."""

    #: Budget of state-changing calls of all clients together.
    write_rate: float = 100.0
    write_burst: int = 200
    #: Budget of state-changing calls of one client (token, or address without auth).
    client_write_rate: float = 50.0
    client_write_burst: int = 100
    #: Budget of reads (GET) of one client.
    read_rate: float = 500.0
    read_burst: int = 1000
    #: Most jobs waiting in the work queue before new requests are refused.
    max_queue_depth: int = 5000
    #: Least time between two commands to one BMC (read by the drivers).
    bmc_min_interval: float = 0.5
    #: Worker processes per conductor host that take jobs (0: all of them).
    worker_concurrency: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The API form."""
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(Throttle)}
_LIMITS: dict[str, tuple[float, float]] = {
    "write_rate": (0, 1e6),
    "write_burst": (1, 1e7),
    "client_write_rate": (0, 1e6),
    "client_write_burst": (1, 1e7),
    "read_rate": (0, 1e6),
    "read_burst": (1, 1e7),
    "max_queue_depth": (0, 1e8),
    "bmc_min_interval": (0, 60),
    "worker_concurrency": (0, 1024),
}


def validate(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` coerced to their field types.

    :raises InvalidInput: an unknown knob, a value of the wrong type or out of range.
    """
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in _FIELDS:
            errors[name] = "unknown throttle setting"
            continue
        kind = int if _FIELDS[name].type in ("int", int) else float
        low, high = _LIMITS[name]
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if kind is int and number != int(number):
                raise ValueError(value)
        except (TypeError, ValueError):
            errors[name] = f"must be a{'n integer' if kind is int else ' number'}"
            continue
        if not low <= number <= high:
            errors[name] = f"must be between {low:g} and {high:g}"
            continue
        clean[name] = kind(number)
    if errors:
        raise InvalidInput(
            "Invalid throttle settings: " + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())),
            errors=errors,
        )
    return clean


def _key(ctx: Context) -> str:
    return keys.throttle(ctx.settings.redis_namespace)


def _from_values(values: Mapping[str, Any]) -> Throttle:
    # Knobs removed in a later version are ignored rather than fatal.
    return Throttle(**{k: v for k, v in values.items() if k in _FIELDS})


def _load_db(ctx: Context) -> Throttle:
    with ctx.db.session() as session:
        record = session.get(ThrottleRecord, _ROW_ID)
        return _from_values(record.values if record is not None else {})


def current(ctx: Context) -> Throttle:
    """The throttle settings in force (at most ``LOCAL_TTL`` s old)."""
    cached = ctx.cache.get(_CACHE_KEY)
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]  # type: ignore[no-any-return]
    try:
        raw = ctx.redis.get(_key(ctx))
        if raw is not None:
            value = _from_values(json.loads(raw))
        else:
            value = _load_db(ctx)
            ctx.redis.set(_key(ctx), json.dumps(value.to_dict()), ex=SHARED_TTL)
    except redis.RedisError as exc:
        LOG.warning("Throttle settings: Redis unavailable (%s); reading the database", exc)
        value = _load_db(ctx)
    ctx.cache[_CACHE_KEY] = (now + LOCAL_TTL, value)
    return value


def update(ctx: Context, changes: Mapping[str, Any]) -> Throttle:
    """Apply ``changes``, persist them and publish them to every process.

    :raises InvalidInput: see :func:`validate`.
    """
    clean = validate(changes)
    for _attempt in range(3):
        with ctx.db.session() as session:
            # The conditional write comes first (SQLite: take the write lock
            # before reading; PostgreSQL: lock the row).
            bumped = database.rowcount(session.execute(
                sa.update(ThrottleRecord)
                .where(ThrottleRecord.id == _ROW_ID)
                .values(version=ThrottleRecord.version + 1, updated_at=utcnow())
            ))
            if bumped:
                record = session.get(ThrottleRecord, _ROW_ID, populate_existing=True)
                assert record is not None  # the UPDATE just matched it
                record.values = {**(record.values or {}), **clean}
                value = _from_values(record.values)
            else:
                session.add(ThrottleRecord(id=_ROW_ID, values=clean, version=1))
                value = _from_values(clean)
            events.announce(session, events.EventType.THROTTLE_CHANGED, throttle=value.to_dict(), changed=clean)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                continue
            break
    else:
        raise InvalidInput("The throttle settings are changing too fast; retry.")
    publish(ctx, value)
    LOG.info("Throttle settings changed: %s", clean)
    return value


def publish(ctx: Context, value: Throttle) -> None:
    """Put ``value`` in Redis and in this process's cache."""
    ctx.cache[_CACHE_KEY] = (time.monotonic() + LOCAL_TTL, value)
    try:
        ctx.redis.set(_key(ctx), json.dumps(value.to_dict()), ex=SHARED_TTL)
    except redis.RedisError as exc:
        # Redis is away for every process then: they read the database until
        # it returns; a copy it kept from before expires within SHARED_TTL.
        LOG.warning("Could not publish throttle settings to Redis: %s", exc)
