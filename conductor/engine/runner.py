"""Run one step of a request: claim it and lock its node, step, record.

Every way out of a step is logged and leaves the database consistent:

* the request was cancelled, finished or is being run elsewhere: skipped
  (the claim of the step and the node's reservation are taken together by
  :func:`~conductor.engine.task.node_task`);
* the node is reserved by someone else: retried a little later, failed
  after ``node_locked_timeout``;
* the workflow is done: the request succeeds and the node is freed;
* the workflow must poll: the request sleeps in a Redis timer (also when
  the driver says the BMC cannot take a call yet: ``TryLater``);
* the workflow waits for the agent: the request is ``waiting``;
* a driver error: the node's ``last_error`` is set, a busy provision state
  fails, the request fails;
* a transient database error (connection lost, deadlock, SQLite busy):
  the whole step runs again from the claim, a few times (the claim and
  reservation this conductor holds are taken again, the BMC may hear the
  step's command twice); if the database stays away, the request is put
  back to sleep in a Redis timer, never failed and never left without one;
* anything else: the same, with an "internal error" message (traceback in
  the log only).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

import redis
import sqlalchemy as sa
from rq.timeouts import BaseTimeoutException

from conductor import database, logs
from conductor.callbacks import events
from conductor.context import Context
from conductor.core import requests as core_requests
from conductor.core import reservations, states
from conductor.drivers.base import Done, Poll, StepResult, TryLater, Wait
from conductor.engine import management, power, provision
from conductor.engine.task import StepFenced, StepNotRunnable, Task, hold_claim, node_task
from conductor.exceptions import ConductorError, NodeLocked, RequestNotFound
from conductor.fsm.states import RequestKind, RequestState
from conductor.models import Node, Request, utcnow

LOG = logging.getLogger(__name__)

_WORKFLOWS: dict[str, tuple[Callable[[Task], StepResult], Callable[[Task, str], None]]] = {
    RequestKind.POWER: (power.step, power.fail),
    RequestKind.PROVISION: (provision.step, provision.fail),
    RequestKind.MANAGEMENT: (management.step, management.fail),
}
_LOCK_RETRY_INITIAL = 0.2
_LOCK_RETRY_MAX = 2.0


#: A step the database kept failing is tried again this much later (s).
DATABASE_RETRY_DELAY = 2.0
UNCLAIM_ATTEMPTS = 15


def run_step(ctx: Context, request_id: str) -> None:
    """Run the next step of request ``request_id`` (see the module docstring)."""
    with logs.request_context(request_id):
        try:
            database.retrying(lambda: _run_step(ctx, request_id), f"Request {request_id}")
        except sa.exc.DBAPIError as exc:
            if not database.is_transient(exc):
                raise
            retry_later(ctx, request_id, exc)
        finally:
            logs.bind_node(None)  # bound by _run_step once the node is known


def retry_later(ctx: Context, request_id: str, exc: Exception) -> None:
    """Put a request whose step the database kept failing back to sleep.

    The timer is set first (Redis): whatever the database does next, the
    request is looked at again.  Then, if the database answers, this
    conductor's claim and reservation are given back, so that any conductor
    can run it, and the timer is set again (it may have fired, and been
    skipped, while the claim was still ours).
    """
    LOG.warning("Request %s: the database keeps failing (%s); trying again in %.0f s",
                request_id, exc, DATABASE_RETRY_DELAY)
    try:
        ctx.queue.schedule(request_id, DATABASE_RETRY_DELAY)
    except redis.RedisError as error:
        LOG.error("Request %s: could not set its timer (%s); the sweeper will re-arm it", request_id, error)
    try:
        # Longer than a step's retries: nothing else can run on this worker
        # while the database is away anyway.
        database.retrying(lambda: _unclaim(ctx, request_id), f"Request {request_id}: giving back its claim",
                          attempts=UNCLAIM_ATTEMPTS)
    except sa.exc.DBAPIError as error:
        LOG.error("Request %s: could not give back its claim (%s); the sweep releases it later",
                  request_id, error)
        return
    # The timer set above may have fired while the claim was still ours
    # (another conductor then skipped the step): set it again, now that any
    # conductor can run the step.
    try:
        ctx.queue.schedule(request_id, DATABASE_RETRY_DELAY)
    except redis.RedisError as error:
        LOG.error("Request %s: could not set its timer (%s); the sweeper will re-arm it", request_id, error)


def _unclaim(ctx: Context, request_id: str) -> None:
    wake_at = utcnow() + dt.timedelta(seconds=DATABASE_RETRY_DELAY)
    requests_t = Request.__table__
    with ctx.db.engine.begin() as conn:
        conn.execute(
            sa.update(requests_t)
            .where(requests_t.c.id == request_id, requests_t.c.conductor == ctx.name,
                   requests_t.c.state == RequestState.RUNNING)
            .values(conductor=None, wake_at=wake_at, updated_at=utcnow())
        )
        reservations.release_for_request(conn, request_id, ctx.name)


def _run_step(ctx: Context, request_id: str) -> None:
    try:
        with node_task(ctx, request_id) as task:
            logs.bind_node(task.node.name or task.node.uuid)  # the step's log lines name its node
            if not task.request_progress.get("begun"):
                # A new request starts with a clean slate, as in Ironic.
                task.node.last_error = None
                task.request_progress["begun"] = True
            step, fail = _WORKFLOWS[task.request.kind]
            result: StepResult | None
            try:
                result = step(task)
            except TryLater as exc:
                # The BMC is busy or paced: end the step as a poll, keeping
                # the progress made so far (nothing failed).
                result = Poll(exc.after, exc.reason or "BMC busy")
                _record(task, result)
            except ConductorError as exc:
                LOG.info("Request %s failed: %s", request_id, exc.message)
                fail(task, exc.message)
                core_requests.finish(
                    task.session, task.node, task.request, RequestState.FAILED, exc.message, ctx.name
                )
                result = None
            else:
                _record(task, result)
    except StepNotRunnable:
        LOG.debug("Request %s: not runnable (cancelled, finished or taken); skipped", request_id)
        return
    except StepFenced as exc:
        LOG.warning("Request %s: %s", request_id, exc)
        return
    except NodeLocked as exc:
        _retry_locked(ctx, request_id, exc)
        return
    except RequestNotFound:
        LOG.info("Request %s vanished (node deleted?); skipped", request_id)
        return
    except BaseTimeoutException:
        # RQ's job timeout: this step hung (a BMC call that never returned).
        LOG.error("Request %s: step exceeded the job timeout in conductor %s", request_id, ctx.name)
        message = f"A step exceeded the job timeout ({ctx.settings.job_timeout:g} s)."
        try:
            database.retrying(lambda: fail_request(ctx, request_id, message, owner=ctx.name),
                              f"Request {request_id}: failing it")
        except Exception:
            # The timeout still ends the job (never "run the hung step again"
            # without RQ's alarm); the sweep releases the claim left behind.
            LOG.exception("Request %s: could not fail it after the job timeout", request_id)
        raise
    except Exception as exc:
        if database.is_transient(exc):
            raise  # run_step runs the whole step again
        LOG.exception("Request %s: internal error in conductor %s", request_id, ctx.name)
        fail_request(ctx, request_id, f"Internal error in conductor {ctx.name}; see its log.", owner=ctx.name)
        return
    if isinstance(result, Poll):
        try:
            ctx.queue.schedule(request_id, result.after)
        except redis.RedisError as exc:
            # The database says when it is due; the sweeper re-arms it.
            LOG.error("Request %s: could not set its timer (%s); the sweeper will re-arm it", request_id, exc)
            return
        LOG.debug("Request %s: next step in %.2f s (%s)", request_id, result.after, result.reason)
    elif isinstance(result, Done):
        LOG.info("Request %s succeeded", request_id)


def _record(task: Task, result: StepResult) -> None:
    request = task.request
    if isinstance(result, Done):
        core_requests.finish(task.session, task.node, request, RequestState.SUCCEEDED, None, task.conductor)
    elif isinstance(result, Poll):
        request.conductor = None
        request.wake_at = utcnow() + dt.timedelta(seconds=result.after)
    elif isinstance(result, Wait):
        request.state = RequestState.WAITING
        request.conductor = None
        request.wake_at = (
            utcnow() + dt.timedelta(seconds=result.timeout) if result.timeout is not None else None
        )
        events.emit(task.session, events.EventType.REQUEST_WAITING, task.node, request,
                    previous={"state": RequestState.RUNNING})


def _retry_locked(ctx: Context, request_id: str, exc: NodeLocked) -> None:
    """Put the request back to sleep, or fail it once it waited too long."""
    with ctx.db.begin() as session:
        if not hold_claim(session, ctx, request_id):
            return
        request = session.get(Request, request_id)
        assert request is not None
        progress = dict(request.progress or {})
        since = progress.setdefault("locked_since", time.time())
        waited = time.time() - since
        if waited > ctx.settings.node_locked_timeout:
            node = session.get(Node, request.node_id)
            assert node is not None
            message = f"{exc.message} Gave up after {waited:.0f} s."
            node.last_error = message
            core_requests.finish(session, node, request, RequestState.FAILED, message, ctx.name)
            LOG.warning("Request %s failed: %s", request_id, message)
            return
        delay = min(_LOCK_RETRY_INITIAL * 2 ** int(progress.get("lock_retries", 0)), _LOCK_RETRY_MAX)
        progress["lock_retries"] = int(progress.get("lock_retries", 0)) + 1
        request.progress = progress
        request.conductor = None
        request.wake_at = utcnow() + dt.timedelta(seconds=delay)
    try:
        ctx.queue.schedule(request_id, delay)
    except redis.RedisError as error:
        LOG.error("Request %s: could not set its timer (%s); the sweeper will re-arm it", request_id, error)
        return
    LOG.info("Request %s: %s; retrying in %.1f s", request_id, exc.message, delay)


_ACTIVE = [RequestState.QUEUED, RequestState.RUNNING, RequestState.WAITING]
_FENCE_FAIL = {
    owned: sa.update(Request.__table__)
    .where(
        Request.__table__.c.id == sa.bindparam("rid"),
        Request.__table__.c.state.in_(_ACTIVE),
        Request.__table__.c.conductor == sa.bindparam("owner") if owned else Request.__table__.c.conductor.is_(None),
    )
    .values(updated_at=sa.bindparam("now"))
    for owned in (True, False)
}


def fail_request(ctx: Context, request_id: str, message: str, owner: str | None) -> bool:
    """Fail a request outside of a step (crash, dead conductor, timeout), freeing its node.

    Conditional: only if the request is still active and its claim is held
    by ``owner`` (the conductor that was running it; None: nobody), so that
    concurrent sweeps fail it once.  A busy or waiting provision state fails
    through the state machine.  Returns whether it failed the request.
    """
    with ctx.db.begin() as session:
        with session.no_autoflush:
            params = {"rid": request_id, "owner": owner, "now": utcnow()}
            if database.rowcount(session.execute(_FENCE_FAIL[owner is not None], params)) != 1:
                return False
        request = session.get(Request, request_id)
        assert request is not None
        node = session.get(Node, request.node_id)
        assert node is not None
        recorder = owner or ctx.name
        if request.kind == RequestKind.PROVISION:
            states.fail(session, node, message, request, recorder, ctx.settings)
        else:
            node.last_error = message
        reservations.drop(node, owner)
        core_requests.finish(session, node, request, RequestState.FAILED, message, recorder)
    return True
