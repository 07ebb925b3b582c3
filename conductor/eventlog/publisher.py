"""Publish a transaction's events once, and only once, it committed.

:func:`install_publisher` (called by :mod:`conductor.bootstrap`) marks the
sessions of a database so that :func:`conductor.callbacks.events.emit`
buffers their events, and hooks the transaction's end, the way committing
webhook deliveries wakes the callback pumps:

* before the commit: the transaction's other changes are flushed (so the
  node rows are written and locked) and each node event takes its number
  (:meth:`EventLog.allocate`): the order of the node's commits;
* after the commit: the events go to the log, with the commit time;
* after a rollback: nothing is published; numbers already taken are given
  back (voids), so the node's later events do not wait for them.

Redis failing costs the stream those events (logged), never the commit:
the change is in the database, and the API shows it.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

from sqlalchemy.orm import Session

from conductor.callbacks.events import STREAM_ENABLED, STREAM_KEY
from conductor.database import Database
from conductor.eventlog.log import EventLog, Publishable, iso_now

LOG = logging.getLogger(__name__)

#: The events of a transaction with their numbers, between its commit's start and end.
_READY = "events.stream.ready"


def number(log: EventLog, session: Session) -> None:
    """Before ``session`` commits: flush, then give each of its buffered node events its number."""
    events = session.info.pop(STREAM_KEY, None)
    if not events:
        return
    counts = collections.Counter(e.node for e in events if e.node)
    last: dict[str, int] = {}
    if counts:
        # The node rows first: their locks (or SQLite's write lock) order the numbers.
        session.flush()
        try:
            last = log.allocate(counts)
        except Exception as exc:
            # The commit must not fail for the stream: published unordered.
            LOG.warning("Could not number %d event(s) for the stream (%s); publishing them unordered",
                        len(events), exc)
    next_of = {node: last[node] - count + 1 for node, count in counts.items() if node in last}
    ready = []
    for event in events:
        seq = 0
        if event.node in next_of:
            seq = next_of[event.node]
            next_of[event.node] += 1
        ready.append((event.node, seq, event))
    session.info[_READY] = ready


def publish(log: EventLog, session: Session) -> None:
    """After ``session`` committed: append its events to the log."""
    ready = session.info.pop(_READY, None)
    if not ready:
        return
    committed = iso_now()
    try:
        log.publish([Publishable(node, seq, event, committed) for node, seq, event in ready])
    except Exception as exc:
        # Committed: the caller must not see a failure.  The numbers taken
        # hold their nodes' later events back for eventlog.log.STALL s.
        LOG.warning("Could not publish %d committed event(s) to the stream (%s)", len(ready), exc)


def give_back(log: EventLog, session: Session) -> None:
    """After a rollback: drop the buffered events; give back numbers already taken."""
    session.info.pop(STREAM_KEY, None)
    ready = session.info.pop(_READY, None)
    voids = [Publishable(node, seq, None, "") for node, seq, _event in ready or () if seq > 0]
    if not voids:
        return
    try:
        log.publish(voids)
    except Exception as exc:
        LOG.warning("Could not give back %d event number(s) (%s); their nodes' events wait a moment",
                    len(voids), exc)


def install_publisher(db: Database, log: EventLog) -> None:
    """Publish the events of every committed transaction of ``db``'s sessions to ``log``."""
    db.set_session_info(STREAM_ENABLED, True)

    def ended(session: Session, transaction: Any) -> None:
        # A transaction closed without commit or rollback (Session.close).
        if transaction.parent is None:
            give_back(log, session)

    db.listen("before_commit", lambda session: number(log, session))
    db.listen("after_commit", lambda session: publish(log, session))
    db.listen("after_rollback", lambda session: give_back(log, session))
    db.listen("after_soft_rollback", lambda session, _previous: give_back(log, session))
    db.listen("after_transaction_end", ended)
