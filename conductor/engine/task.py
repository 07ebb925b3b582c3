"""The node lock and the task a workflow step works on.

Two locks with two lifetimes (see ``docs/design.md``):

* the node's ``active_request_id`` is the long lock, taken by the API when
  it accepts a request and held until the request finishes;
* the node's ``reservation`` is the short lock a conductor holds while it
  runs one step (talks to the BMC): an atomic ``UPDATE ... WHERE
  reservation IS NULL`` checked by its row count, plus an
  ``oslo.concurrency`` file lock that serialises this host's processes.

:func:`node_task` takes both and always gives them back.  The step's
results and the release of the reservation are committed together.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor import drivers, metrics
from conductor.context import Context
from conductor.drivers.base import Driver
from conductor.exceptions import NodeLocked, RequestNotFound
from conductor.models import Node, Request, utcnow
from conductor.settings import Settings

LOG = logging.getLogger(__name__)


class Task:
    """A node, its request and its driver, for one step under the node's lock."""

    def __init__(self, ctx: Context, session: Session, node: Node, request: Request) -> None:
        self.ctx = ctx
        self.session = session
        self.node = node
        self.request = request
        # BMC calls are timed into the session; counted once the step commits.
        self.driver: Driver = metrics.timed_driver(drivers.get(node.driver), session)
        #: The whole request's continuation state (saved with the step).
        self.request_progress: dict[str, Any] = copy.deepcopy(request.progress or {})
        #: The current step's share of it; workflows point it at a sub-dict.
        self.progress: dict[str, Any] = self.request_progress

    @property
    def settings(self) -> Settings:
        """The process settings."""
        return self.ctx.settings

    @property
    def conductor(self) -> str | None:
        """This conductor's name."""
        return self.ctx.name

    def update_internal_info(self, **changes: Any) -> None:
        """Merge ``changes`` into ``driver_internal_info`` (None removes a key)."""
        self.node.driver_internal_info = _merged(self.node.driver_internal_info, changes)

    def update_properties(self, **changes: Any) -> None:
        """Merge ``changes`` into the node's ``properties`` (None removes a key)."""
        self.node.properties = _merged(self.node.properties, changes)

    def save_progress(self) -> None:
        """Copy the progress back into the request row (done before commit)."""
        self.request.progress = copy.deepcopy(self.request_progress)


def _merged(current: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(current or {})
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _host_lock(ctx: Context, node_uuid: str) -> contextlib.AbstractContextManager[Any]:
    # Imported here: oslo.concurrency costs ~250 ms to import and only
    # conductors need it.
    from oslo_concurrency import lockutils

    return lockutils.lock(
        f"node-{node_uuid}",
        lock_file_prefix="conductor-",
        external=True,
        lock_path=str(ctx.settings.data_dir / "locks"),
    )


def release(ctx: Context, node_id: int) -> None:
    """Give back this conductor's reservation of node ``node_id`` (if it has it)."""
    with ctx.db.begin() as session:
        session.execute(
            sa.update(Node)
            .where(Node.id == node_id, Node.reservation == ctx.name)
            .values(reservation=None)
        )


@contextlib.contextmanager
def node_task(ctx: Context, request_id: str) -> Iterator[Task]:
    """Reserve the node of ``request_id`` and yield a :class:`Task` for it.

    On a normal exit the caller's changes are committed together with the
    release of the reservation; on an exception they are rolled back and
    the reservation is released on its own.

    :raises RequestNotFound: the request vanished (its node was deleted).
    :raises NodeLocked: another conductor holds the node.
    """
    assert ctx.name, "only a registered conductor can reserve nodes"
    with ctx.db.session() as session:
        request = session.get(Request, request_id)
        if request is None:
            raise RequestNotFound(f"Request {request_id} not found.")
        node_id = request.node_id
        reserved = session.execute(
            sa.update(Node)
            .where(Node.id == node_id, Node.reservation.is_(None))
            .values(reservation=ctx.name)
        ).rowcount
        if reserved != 1:
            session.rollback()
            holder = session.scalar(sa.select(Node.reservation).where(Node.id == node_id))
            raise NodeLocked(f"Node {request.node_uuid} is reserved by conductor {holder}.", holder=holder)
        session.commit()
        try:
            node = session.get(Node, node_id, populate_existing=True)
            assert node is not None
            session.refresh(request)
            # End the read transaction: nothing is held while the BMC talks.
            session.commit()
            with _host_lock(ctx, node.uuid):
                task = Task(ctx, session, node, request)
                yield task
                task.save_progress()
                node.reservation = None
                node.updated_at = utcnow()
                session.commit()
        except BaseException:
            session.rollback()
            release(ctx, node_id)
            raise
