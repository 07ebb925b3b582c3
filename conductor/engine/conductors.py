"""Conductor registration and heartbeats (the ``conductors`` table).

Each worker process is a conductor named ``<base>-w<slot>``; ``<base>``
is the host name (or ``conductor_name``).  A starting conductor takes the
lowest slot that is free, stopped, stale, or was held by a process of this
host that no longer exists, so a restarted conductor gets its old name
back and clears what its previous life left behind at once.

"A process of this host that no longer exists" needs care: a host name may
be shared by containers, each with its own PID namespace, where a pid that
is dead here may be alive there.  So each conductor leaves in Redis the
PID namespace it runs in (``<ns>:conductor-pidns:<name>``: boot id and
namespace inode); a dead pid frees its slot at once only when it was of
our namespace, otherwise only after it has missed a couple of heartbeats.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from conductor import database, keys
from conductor.callbacks import events
from conductor.context import Context
from conductor.database import Database
from conductor.models import ConductorRecord, utcnow
from conductor.procs import boot_id, pid_alive

LOG = logging.getLogger(__name__)
MAX_SLOTS = 1024


@dataclasses.dataclass(frozen=True)
class Registration:
    """The name a conductor got, and whether a previous life used it."""

    name: str
    reclaimed: bool


def register(ctx: Context) -> Registration:
    """Take a conductor name for this process and record it online.

    :raises RuntimeError: every slot is taken by a live conductor.
    :raises redis.RedisError: Redis is unavailable.
    """
    base = ctx.settings.base_name
    here = _pid_namespace()
    stale_before = utcnow() - dt.timedelta(seconds=ctx.settings.heartbeat_timeout)
    quiet_before = utcnow() - dt.timedelta(seconds=2 * ctx.settings.heartbeat_interval)
    for slot in range(MAX_SLOTS):
        name = f"{base}-w{slot}"
        now = utcnow()
        with ctx.db.session() as session:
            row = session.scalars(sa.select(ConductorRecord).where(ConductorRecord.name == name)).one_or_none()
            if row is None:
                _forget_pid_namespace(ctx, name)
                session.add(
                    ConductorRecord(
                        name=name, hostname=ctx.hostname, pid=os.getpid(), started_at=now, heartbeat_at=now
                    )
                )
                _announce_up(session, ctx, name, now, reclaimed=False)
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()
                    continue
                _record_pid_namespace(ctx, name, here)
                return Registration(name, reclaimed=False)
            # A slot is free when its conductor stopped, went silent, or was
            # a process of this host that is gone: at once if it ran in our
            # PID namespace, else once it has missed a couple of heartbeats
            # (a same-named host in another PID namespace, a container,
            # would otherwise look dead while it is working).
            free = (
                not row.online
                or row.heartbeat_at < stale_before
                or (
                    row.hostname == ctx.hostname
                    and not pid_alive(row.pid)
                    and (row.heartbeat_at < quiet_before or _pid_namespace_of(ctx, name) == here)
                )
            )
            if not free:
                continue
            _forget_pid_namespace(ctx, name)
            taken = database.rowcount(session.execute(
                sa.update(ConductorRecord)
                .where(
                    ConductorRecord.id == row.id,
                    ConductorRecord.pid == row.pid,
                    ConductorRecord.heartbeat_at == row.heartbeat_at,
                )
                .values(hostname=ctx.hostname, pid=os.getpid(), started_at=now, heartbeat_at=now, online=True)
            ))
            if taken == 1:
                _announce_up(session, ctx, name, now, reclaimed=True)
            session.commit()
            if taken == 1:
                _record_pid_namespace(ctx, name, here)
                return Registration(name, reclaimed=True)
    raise RuntimeError(f"No free conductor slot for {base}: {MAX_SLOTS} live conductors?")


def described(name: str, hostname: str, pid: int, started_at: dt.datetime | None = None) -> dict[str, Any]:
    """A conductor as the event stream shows it."""
    return {"name": name, "hostname": hostname, "pid": pid,
            "started_at": started_at.isoformat().replace("+00:00", "Z") if started_at else None}


def _announce_up(session: Any, ctx: Context, name: str, now: dt.datetime, reclaimed: bool) -> None:
    events.announce(session, events.EventType.CONDUCTOR_UP,
                    conductor=described(name, ctx.hostname, os.getpid(), now), reclaimed=reclaimed)


def _pid_namespace() -> str:
    """This process's PID namespace: the boot of this host and the namespace's inode."""
    try:
        inode = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot_id()}:{inode}"


def _pid_namespace_key(ctx: Context, name: str) -> str:
    return keys.conductor_pidns(ctx.settings.redis_namespace, name)


def _pid_namespace_of(ctx: Context, name: str) -> str | None:
    """The PID namespace the holder of ``name`` recorded; None if unknown."""
    try:
        value = ctx.redis.get(_pid_namespace_key(ctx, name))
    except redis.RedisError as exc:
        LOG.warning("Cannot read the PID namespace of %s (%s)", name, exc)
        return None
    return value.decode() if isinstance(value, bytes) else value


def _forget_pid_namespace(ctx: Context, name: str) -> None:
    """Drop what a previous holder of ``name`` recorded, before taking it.

    Should recording ours then fail, the name's namespace is unknown (others
    wait for its heartbeats to lapse) rather than the previous holder's,
    which could make a live holder look like a dead process of theirs.
    """
    ctx.redis.delete(_pid_namespace_key(ctx, name))


def _record_pid_namespace(ctx: Context, name: str, namespace: str) -> None:
    if not namespace:
        return
    try:
        ctx.redis.set(_pid_namespace_key(ctx, name), namespace)
    except redis.RedisError as exc:
        # Without it, the next life of this name waits for the heartbeats to lapse.
        LOG.warning("Cannot record the PID namespace of %s (%s)", name, exc)


def heartbeat(ctx: Context) -> bool:
    """Record that this conductor is alive.

    Returns False when its slot no longer names this process (it was
    declared dead and taken over): the conductor must stop taking work.
    """
    with ctx.db.begin() as session:
        return (
            database.rowcount(session.execute(
                sa.update(ConductorRecord)
                .where(ConductorRecord.name == ctx.name, ConductorRecord.pid == os.getpid())
                .values(heartbeat_at=utcnow(), online=True)
            ))
            == 1
        )


def unregister(ctx: Context) -> None:
    """Record that this conductor stopped cleanly."""
    with ctx.db.begin() as session:
        stopped = database.rowcount(session.execute(
            sa.update(ConductorRecord)
            .where(ConductorRecord.name == ctx.name, ConductorRecord.pid == os.getpid(),
                   ConductorRecord.online.is_(True))
            .values(online=False)
        ))
        if stopped == 1 and ctx.name:
            events.announce(session, events.EventType.CONDUCTOR_DOWN,
                            conductor=described(ctx.name, ctx.hostname, os.getpid()), reason="stopped")


def list_conductors(db: Database, heartbeat_timeout: float) -> list[dict[str, Any]]:
    """Every known conductor, with ``alive`` computed from its heartbeat."""
    cutoff = utcnow() - dt.timedelta(seconds=heartbeat_timeout)
    with db.session() as session:
        rows = session.scalars(sa.select(ConductorRecord).order_by(ConductorRecord.name))
        return [
            {
                "name": r.name,
                "hostname": r.hostname,
                "pid": r.pid,
                "started_at": r.started_at,
                "heartbeat_at": r.heartbeat_at,
                "alive": bool(r.online and r.heartbeat_at >= cutoff),
            }
            for r in rows
        ]


def my_turn(ctx: Context, chore: str, every: float) -> bool:
    """Whether this process does ``chore`` now: one process of the deployment per ``every`` seconds.

    The turn is a Redis key (:func:`conductor.keys.turn`) that expires after
    ``every``; taking it is one atomic ``SET NX``.  Without Redis nobody's
    turn comes (logged).

    :raises ValueError: ``chore`` is not a :class:`conductor.keys.Chore`.
    """
    try:
        return bool(ctx.redis.set(keys.turn(ctx.settings.redis_namespace, chore), ctx.name or "api", nx=True,
                                  px=max(50, int(every * 1000))))
    except redis.RedisError as exc:
        LOG.warning("%s skipped: Redis unavailable (%s)", chore, exc)
        return False
