"""The provision workflow: walk the state machine through busy states.

The first step fires the event of the request's target (re-validated:
the node may have changed since the API accepted it).  Each busy state
then runs its handler until it is done, at which point the completion
event that leads towards the request's goal is fired.  A handler may ask
to be polled again (``Poll``) or to wait for the node's agent (``Wait``).
"""

from __future__ import annotations

from collections.abc import Callable

from conductor.core import states
from conductor.drivers.base import DONE, Done, StepResult, Wait
from conductor.engine import power
from conductor.engine.task import Task
from conductor.exceptions import DriverError
from conductor.fsm import machine, table
from conductor.fsm.states import Event, ProvisionTarget
from conductor.fsm.states import ProvisionState as S

#: Requests whose cleaning is automated (may be switched off in the settings).
AUTOMATED_CLEAN_TARGETS = frozenset({ProvisionTarget.PROVIDE, ProvisionTarget.DELETED})


def transition(task: Task, event: Event) -> None:
    """Fire ``event`` on the task's node (through the core, which records it)."""
    states.fire(task.session, task.node, event, task.request, task.conductor)


def _verify(task: Task) -> StepResult:
    power.observe(task, task.driver.power.verify(task))
    return DONE


def _clean(task: Task) -> StepResult:
    if task.request.target in AUTOMATED_CLEAN_TARGETS and not task.settings.automated_clean:
        return DONE
    return task.deploy.clean(task)


def _tear_down(task: Task) -> StepResult:
    result = task.deploy.tear_down(task)
    if isinstance(result, Done):
        # The instance goes with its deployment (as in Ironic): a node being
        # cleaned for its next use belongs to no instance.
        task.node.instance_uuid = None
        task.node.instance_info = {}
    return result


HANDLERS: dict[str, Callable[[Task], StepResult]] = {
    S.VERIFYING: _verify,
    S.INSPECTING: lambda task: task.inspector.inspect(task),
    S.CLEANING: _clean,
    S.DEPLOYING: lambda task: task.deploy.deploy(task),
    S.DELETING: _tear_down,
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


def fail(task: Task, message: str) -> None:
    """Fail the task's node out of its busy or wait state (see :func:`conductor.core.states.fail`)."""
    states.fail(task.session, task.node, message, task.request, task.conductor, task.settings)
