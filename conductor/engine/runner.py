"""Run one step of a request: claim it and lock its node, step, record.

Every way out of a step is logged and leaves the database consistent:

* the request was cancelled, finished or is being run elsewhere: skipped
  (the claim of the step and the node's reservation are taken together by
  :func:`~conductor.engine.task.node_task`);
* the node is reserved by someone else: retried a little later, failed
  after ``node_locked_timeout``;
* the workflow is done: the request succeeds and the node is freed;
* the workflow must poll: the request sleeps in a Redis timer;
* the workflow waits for the agent: the request is ``waiting``;
* a driver error: the node's ``last_error`` is set, a busy provision state
  fails, the request fails;
* anything else: the same, with an "internal error" message (traceback in
  the log only).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable


from conductor.context import Context
from conductor.drivers.base import Done, Poll, StepResult, Wait
from conductor.engine import power, provision
from conductor.engine.task import StepNotRunnable, Task, node_task
from conductor.exceptions import ConductorError, NodeLocked, RequestNotFound
from conductor.fsm.states import RequestKind, RequestState
from conductor.models import Node, Request, utcnow
from conductor.service import requests as request_service

LOG = logging.getLogger(__name__)

_WORKFLOWS: dict[str, tuple[Callable[[Task], StepResult], Callable[[Task, str], None]]] = {
    RequestKind.POWER: (power.step, power.fail),
    RequestKind.PROVISION: (provision.step, provision.fail),
}
_LOCK_RETRY_INITIAL = 0.2
_LOCK_RETRY_MAX = 2.0


def run_step(ctx: Context, request_id: str) -> None:
    """Run the next step of request ``request_id`` (see the module docstring)."""
    try:
        with node_task(ctx, request_id) as task:
            if not task.request_progress.get("begun"):
                # A new request starts with a clean slate, as in Ironic.
                task.node.last_error = None
                task.request_progress["begun"] = True
            step, fail = _WORKFLOWS[task.request.kind]
            try:
                result = step(task)
            except ConductorError as exc:
                LOG.info("Request %s failed: %s", request_id, exc.message)
                fail(task, exc.message)
                request_service.finish(
                    task.session, task.node, task.request, RequestState.FAILED, exc.message, ctx.name
                )
                result = None
            else:
                _record(task, result)
    except StepNotRunnable:
        LOG.debug("Request %s: not runnable (cancelled, finished or taken); skipped", request_id)
        return
    except NodeLocked as exc:
        _retry_locked(ctx, request_id, exc)
        return
    except RequestNotFound:
        LOG.info("Request %s vanished (node deleted?); skipped", request_id)
        return
    except Exception:
        LOG.exception("Request %s: internal error in conductor %s", request_id, ctx.name)
        fail_request(ctx, request_id, f"Internal error in conductor {ctx.name}; see its log.")
        return
    if isinstance(result, Poll):
        ctx.queue.schedule(request_id, result.after)
        LOG.debug("Request %s: next step in %.2f s (%s)", request_id, result.after, result.reason)
    elif isinstance(result, Done):
        LOG.info("Request %s succeeded", request_id)


def _record(task: Task, result: StepResult) -> None:
    request = task.request
    if isinstance(result, Done):
        request_service.finish(task.session, task.node, request, RequestState.SUCCEEDED, None, task.conductor)
    elif isinstance(result, Poll):
        request.conductor = None
        request.wake_at = utcnow() + dt.timedelta(seconds=result.after)
    elif isinstance(result, Wait):
        request.state = RequestState.WAITING
        request.conductor = None
        request.wake_at = (
            utcnow() + dt.timedelta(seconds=result.timeout) if result.timeout is not None else None
        )


def _retry_locked(ctx: Context, request_id: str, exc: NodeLocked) -> None:
    """Put the request back to sleep, or fail it once it waited too long."""
    with ctx.db.begin() as session:
        request = session.get(Request, request_id)
        if request is None or request.conductor != ctx.name:
            return
        progress = dict(request.progress or {})
        since = progress.setdefault("locked_since", time.time())
        waited = time.time() - since
        if waited > ctx.settings.node_locked_timeout:
            node = session.get(Node, request.node_id)
            assert node is not None
            message = f"{exc.message} Gave up after {waited:.0f} s."
            node.last_error = message
            request_service.finish(session, node, request, RequestState.FAILED, message, ctx.name)
            LOG.warning("Request %s failed: %s", request_id, message)
            return
        delay = min(_LOCK_RETRY_INITIAL * 2 ** int(progress.get("lock_retries", 0)), _LOCK_RETRY_MAX)
        progress["lock_retries"] = int(progress.get("lock_retries", 0)) + 1
        request.progress = progress
        request.conductor = None
        request.wake_at = utcnow() + dt.timedelta(seconds=delay)
    ctx.queue.schedule(request_id, delay)
    LOG.info("Request %s: %s; retrying in %.1f s", request_id, exc.message, delay)


def fail_request(ctx: Context, request_id: str, message: str, conductor: str | None = None) -> None:
    """Fail a request outside of a step (crash, dead conductor), freeing its node.

    A busy or waiting provision state fails through the state machine.
    """
    with ctx.db.begin() as session:
        request = session.get(Request, request_id)
        if request is None or request.state not in (
            RequestState.QUEUED,
            RequestState.RUNNING,
            RequestState.WAITING,
        ):
            return
        node = session.get(Node, request.node_id)
        assert node is not None
        if request.kind == RequestKind.PROVISION:
            provision.fail_node(session, node, message, request.id, conductor or ctx.name)
        else:
            node.last_error = message
        if node.reservation == (conductor or ctx.name):
            node.reservation = None
        request_service.finish(session, node, request, RequestState.FAILED, message, conductor or ctx.name)

