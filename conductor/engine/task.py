"""The node lock and the task a workflow step works on.

Two locks with two lifetimes (see ``docs/design.md``):

* the node's ``active_request_id`` is the long lock, taken by the API when
  it accepts a request and held until the request finishes;
* the node's ``reservation`` is the short lock a conductor holds while it
  runs one step (talks to the BMC): an atomic ``UPDATE ... WHERE
  reservation IS NULL`` checked by its row count, plus an
  ``oslo.concurrency`` file lock that serialises this host's processes.

:func:`node_task` takes both and always gives them back.  The claim, the
reservation and the load of the request and node are one transaction; the
step's results and the release of the reservation are committed together,
in SQLAlchemy Core (:mod:`conductor.core.steps`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor import database, drivers
from conductor.callbacks import events
from conductor.context import Context
from conductor.core import history, reservations, steps
from conductor.drivers.base import DeployInterface, Driver, InspectInterface, Poll
from conductor.engine import power, timing
from conductor.exceptions import NodeLocked, RequestNotFound
from conductor.fsm.states import PowerState, RequestState
from conductor.models import Node, Request, UTCDateTime, utcnow
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
        self.driver: Driver = timing.timed_driver(drivers.get(node.driver), session)
        #: The whole request's continuation state (saved with the step).
        self.request_progress: dict[str, Any] = copy.deepcopy(request.progress or {})
        #: The current step's share of it; workflows point it at a sub-dict.
        self.progress: dict[str, Any] = self.request_progress
        #: What drivers hold for the rest of this step (e.g. a BMC's in-flight
        #: lock), by their own keys; ``cleanups`` give it back when the step ends.
        self.held: dict[Any, Any] = {}
        self.cleanups: list[Callable[[], None]] = []

    @property
    def deploy(self) -> DeployInterface:
        """The node's deploy interface (``driver_info.deploy_interface`` or the driver's default)."""
        return self.driver.deploy_for(self.node.driver_info or {})

    @property
    def inspector(self) -> InspectInterface | DeployInterface:
        """What inspects the node (``driver_info.inspect_interface``, else its deploy interface)."""
        return self.driver.inspect_for(self.node.driver_info or {})

    @property
    def settings(self) -> Settings:
        """The process settings."""
        return self.ctx.settings

    @property
    def conductor(self) -> str | None:
        """This conductor's name."""
        return self.ctx.name

    def record(self, event: str, message: str, severity: str = "info") -> None:
        """Add a history entry for the node, naming this step's request and conductor."""
        history.record(self.session, self.node, event, message, request_id=self.request.id,
                       conductor=self.conductor, severity=severity)

    def reach_power(self, want: PowerState, progress: dict[str, Any]) -> Poll | None:
        """Bring the node to ``want`` as a phase of a deploy interface's flow (see :func:`power.reach`)."""
        return power.reach(self, want, progress)

    def update_internal_info(self, **changes: Any) -> None:
        """Merge ``changes`` into ``driver_internal_info`` (None removes a key)."""
        self.node.driver_internal_info = _merged(self.node.driver_internal_info, changes)

    def update_properties(self, **changes: Any) -> None:
        """Merge ``changes`` into the node's ``properties`` (None removes a key)."""
        self.node.properties = _merged(self.node.properties, changes)

    def run_cleanups(self) -> None:
        """Give back what drivers held for the step (never raises)."""
        cleanups, self.cleanups = self.cleanups, []
        self.held.clear()
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception:
                LOG.exception("Cleanup after a step of node %s failed", self.node.uuid)

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


_requests = Request.__table__
# Built once (the step path is hot; building a statement costs more than
# running it): claim the request's next step, then reserve its node.  A claim
# or reservation this conductor already holds is taken again: one conductor
# runs one step at a time, so it is what a step of ours that failed on a
# database error left behind (its retry starts from the beginning).  A
# queued request is started (``_START``: ``request.running`` goes to the
# event stream), a running one between two steps is claimed (``_CLAIM``).


def _claim(state: RequestState) -> sa.Update:
    return (
        sa.update(_requests)
        .where(
            _requests.c.id == sa.bindparam("rid"),
            sa.or_(_requests.c.conductor.is_(None), _requests.c.conductor == sa.bindparam("me")),
            _requests.c.state == state,
        )
        .values(
            state=RequestState.RUNNING,
            conductor=sa.bindparam("me"),
            started_at=sa.func.coalesce(_requests.c.started_at, sa.bindparam("now", type_=UTCDateTime())),
            wake_at=None,
            updated_at=sa.bindparam("now", type_=UTCDateTime()),
        )
    )


_START = _claim(RequestState.QUEUED)
_CLAIM = _claim(RequestState.RUNNING)
# Fences: a step's results are committed only while this conductor still
# holds both the node's reservation (``reservations.release`` finds it) and
# the request's claim (a conductor declared dead by the others' sweep has
# lost both, whatever it believes).
_FENCE_REQUEST = (
    sa.update(_requests)
    .where(_requests.c.id == sa.bindparam("rid"), _requests.c.conductor == sa.bindparam("me"))
    .values(updated_at=sa.bindparam("now", type_=UTCDateTime()))
)


class StepNotRunnable(Exception):
    """The request was cancelled, finished, or another conductor runs its step."""


class StepFenced(Exception):
    """This conductor lost the node's reservation or the request's claim mid-step.

    Another conductor's sweep declared this one dead and resolved the
    request; the step's results were discarded.
    """


def hold_claim(session: Session, ctx: Context, request_id: str) -> bool:
    """In the caller's transaction: whether this conductor still holds the request's claim.

    The check is a conditional write, so it also locks the row until commit.
    """
    with session.no_autoflush:
        params = {"rid": request_id, "me": ctx.name, "now": utcnow()}
        return database.rowcount(session.execute(_FENCE_REQUEST, params)) == 1


def release(ctx: Context, node_id: int) -> None:
    """Give back this conductor's reservation of node ``node_id`` (if it has it)."""
    with ctx.db.engine.begin() as conn:
        reservations.release(conn, node_id, ctx.name)


# The request and its node in one query (the step's load).
_LOAD = (
    sa.select(Request, Node)
    .join(Node, Node.id == Request.node_id)
    .where(Request.id == sa.bindparam("rid"))
)


def _emit_running(session: Session, node: Node, request: Request) -> None:
    events.emit(session, events.EventType.REQUEST_RUNNING, node, request, previous={"state": RequestState.QUEUED})


def _claim_reserve_load(ctx: Context, session: Session, request_id: str) -> tuple[Request, Node]:
    """Claim the step, reserve the node and load both, in one transaction of ``session`` (committed).

    Most steps are of a running request (``_CLAIM``); a queued one starts
    (``_START``), and ``request.running`` goes to the event stream with the
    commit.  When the node is reserved by someone else the claim stays ours
    (committed): the caller retries or fails it.
    """
    params = {"rid": request_id, "me": ctx.name, "now": utcnow()}
    with session.no_autoflush:
        started = False
        if database.rowcount(session.execute(_CLAIM, params)) != 1:
            if database.rowcount(session.execute(_START, params)) != 1:
                session.rollback()
                raise StepNotRunnable(request_id)
            started = True
        reserved = database.rowcount(session.execute(reservations.RESERVE, params)) == 1
        row = session.execute(_LOAD, params).one_or_none()
    if row is None:
        # Claimed, but its node is gone (deleted meanwhile).
        session.commit()
        raise RequestNotFound(f"Request {request_id} not found.")
    request, node = row
    if started:
        # Published once this transaction commits, just below.
        _emit_running(session, node, request)
    # End the transaction: nothing is held in the database while the BMC talks.
    session.commit()
    if not reserved:
        raise NodeLocked(f"Node {node.uuid} is reserved by conductor {node.reservation}.", holder=node.reservation)
    return request, node


@contextlib.contextmanager
def node_task(ctx: Context, request_id: str) -> Iterator[Task]:
    """Claim the next step of ``request_id``, reserve its node, yield a :class:`Task`.

    The claim (this conductor runs the step) and the reservation (this
    conductor holds the node) are taken in one transaction.  On a normal
    exit the caller's changes are committed together with the release of
    the reservation; on an exception they are rolled back and the
    reservation is released on its own (the claim stays, for the caller to
    resolve).

    :raises StepNotRunnable: nothing to do (cancelled, finished, taken).
    :raises StepFenced: the claim or reservation was taken away during the step.
    :raises NodeLocked: another conductor holds the node (the claim is ours).
    :raises RequestNotFound: the request vanished (its node was deleted).
    """
    assert ctx.name, "only a registered conductor can reserve nodes"
    with ctx.db.session() as session:
        node_id: int | None = None
        try:
            request, node = _claim_reserve_load(ctx, session, request_id)
            node_id = node.id
            with _host_lock(ctx, node.uuid):
                task = Task(ctx, session, node, request)
                try:
                    yield task
                finally:
                    task.run_cleanups()
                task.save_progress()
                node.updated_at = utcnow()
                if not steps.commit(session, node, request, ctx.name):
                    session.rollback()
                    raise StepFenced(
                        f"Conductor {ctx.name} lost node {node.uuid} or request {request_id} "
                        "during a step; its results were discarded."
                    )
                session.commit()
        except BaseException:
            session.rollback()
            if node_id is not None:
                release(ctx, node_id)
            raise
