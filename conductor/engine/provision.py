"""The provision workflow: walk the state machine through busy states.

The first step fires the event of the request's target (re-validated:
the node may have changed since the API accepted it).  Each busy state
then runs its handler until it is done, at which point the completion
event that leads towards the request's goal is fired.  A handler may ask
to be polled again (``Poll``) or to wait for the node's agent (``Wait``).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from conductor.callbacks import events
from conductor.drivers import pxe
from conductor.drivers.base import DONE, Done, StepResult, Wait
from conductor.engine import power
from conductor.engine.task import Task
from conductor.exceptions import DriverError
from conductor.fsm import machine, table
from conductor.fsm.states import Event, ProvisionTarget
from conductor.fsm.states import ProvisionState as S
from conductor.models import Node, Request
from conductor.service import history
from conductor.settings import Settings

#: Requests whose cleaning is automated (may be switched off in the settings).
AUTOMATED_CLEAN_TARGETS = frozenset({ProvisionTarget.PROVIDE, ProvisionTarget.DELETED})


def fire(
    session: Session, node: Node, event: Event, request_id: str | None, conductor: str | None
) -> None:
    """Fire ``event`` on ``node``; record it in its history and for callbacks."""
    before = node.provision_state
    node.provision_state = str(machine.next_state(before, event))
    history.record(
        session,
        node,
        "provision.transition",
        f"{before} -> {node.provision_state} ({event}).",
        request_id=request_id,
        conductor=conductor,
    )
    with session.no_autoflush:
        # Normally in the identity map already: no query.
        request = session.get(Request, request_id) if request_id else None
    events.emit(
        session,
        events.EventType.PROVISION_STATE_CHANGED,
        node,
        request,
        previous={"provision_state": before},
        event=str(event),
    )


def transition(task: Task, event: Event) -> None:
    """Fire ``event`` on the task's node."""
    fire(task.session, task.node, event, task.request.id, task.conductor)


def _verify(task: Task) -> StepResult:
    power.observe(task, task.driver.power.verify(task))
    return DONE


def _clean(task: Task) -> StepResult:
    if task.request.target in AUTOMATED_CLEAN_TARGETS and not task.settings.automated_clean:
        return DONE
    return task.deploy.clean(task)


HANDLERS: dict[str, Callable[[Task], StepResult]] = {
    S.VERIFYING: _verify,
    S.INSPECTING: lambda task: task.deploy.inspect(task),
    S.CLEANING: _clean,
    S.DEPLOYING: lambda task: task.deploy.deploy(task),
    S.DELETING: lambda task: task.deploy.tear_down(task),
}


def step(task: Task) -> StepResult:
    """Run the provision request of ``task`` as far as it can go now.

    :raises DriverError: a handler failed.
    :raises InvalidTransition: the target is no longer allowed.
    """
    request, node = task.request, task.node
    goal = table.TARGET_STABLE_STATES[ProvisionTarget(request.target)]
    if not task.request_progress.get("started"):
        transition(task, machine.target_event(node.provision_state, request.target))
        task.request_progress["started"] = True
    while True:
        state = node.provision_state
        if state in table.BUSY_STATES:
            task.progress = task.request_progress.setdefault(state, {})
            request.step = state
            result = HANDLERS[state](task)
            if isinstance(result, Done):
                transition(task, machine.completion_event(state, goal))
                continue
            if isinstance(result, Wait):
                transition(task, Event.WAIT)
            return result
        if state in table.WAIT_STATES:
            transition(task, Event.RESUME)
            continue
        if state == goal:
            request.step = None
            return DONE
        raise DriverError(f"Provisioning ended in {state} instead of {goal}.")


def fail_node(
    session: Session,
    node: Node,
    message: str,
    request_id: str | None,
    conductor: str | None,
    settings: Settings,
) -> None:
    """Fail ``node`` out of a busy or wait state, recording ``message``.

    An agent phase's token and boot config go with it.
    """
    pxe.forget_agent(settings, node)
    node.last_error = message
    if node.provision_state in table.BUSY_STATES or node.provision_state in table.WAIT_STATES:
        fire(session, node, Event.FAIL, request_id, conductor)


def fail(task: Task, message: str) -> None:
    """Fail the task's node (see :func:`fail_node`)."""
    fail_node(task.session, task.node, message, task.request.id, task.conductor, task.settings)
