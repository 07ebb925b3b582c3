"""The only writers of a node's ``provision_state`` and ``power_state``.

A provision state changes only by an event fired through the state
machine (:func:`fire`; :func:`fail` and :func:`abort` are two such
events with their side effects); a power state changes only when the
hardware is observed in another state (:func:`observe_power`).  Each
change is recorded in the node's history and emitted for webhooks, in
the caller's transaction, so that a rolled-back step leaves no trace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from conductor.callbacks import events
from conductor.core import agent, history
from conductor.fsm import machine, table
from conductor.fsm.states import Event, PowerState
from conductor.models import Node, Request

if TYPE_CHECKING:
    from conductor.settings import Settings


def fire(
    session: Session,
    node: Node,
    event: Event,
    request: Request | None,
    conductor: str | None,
    *,
    history_event: str = "provision.transition",
    note: str | None = None,
) -> str:
    """Fire ``event`` on ``node``; returns the provision state it left.

    ``request`` (the one running the workflow, if any) is named in the
    history entry and the webhook event.

    :raises InvalidTransition: the state machine has no such edge.
    """
    before = node.provision_state
    node.provision_state = str(machine.next_state(before, event))
    history.record(
        session,
        node,
        history_event,
        f"{before} -> {node.provision_state} ({note or event}).",
        request_id=request.id if request is not None else None,
        conductor=conductor,
    )
    events.emit(
        session,
        events.EventType.PROVISION_STATE_CHANGED,
        node,
        request,
        previous={"provision_state": before},
        event=str(event),
    )
    return before


def fail(
    session: Session,
    node: Node,
    message: str,
    request: Request | None,
    conductor: str | None,
    settings: Settings,
) -> None:
    """Fail ``node`` out of a busy or wait state, recording ``message`` as its last error.

    An agent phase's token and boot config go with it.  A node in a stable
    state keeps its state (only ``last_error`` is set).
    """
    agent.revoke(settings, node)
    node.last_error = message
    if node.provision_state in table.BUSY_STATES or node.provision_state in table.WAIT_STATES:
        fire(session, node, Event.FAIL, request, conductor)


def abort(session: Session, node: Node, request: Request, settings: Settings, reason: str | None) -> str:
    """Abort the wait (or stable-state-with-abort edge) ``node`` is in; returns the state it left.

    The agent's token dies with the wait (a late heartbeat gets 401); the
    node's ``target_provision_state`` is cleared.  ``reason`` (if any)
    becomes the node's last error.

    :raises InvalidTransition: the node is not in a state that can be aborted.
    """
    agent.revoke(settings, node)
    before = fire(session, node, Event.ABORT, request, None, history_event="provision.abort", note="aborted")
    node.target_provision_state = None
    if reason is not None:
        node.last_error = f"Aborted in {before}: {reason}"
    return before


def observe_power(
    session: Session,
    node: Node,
    state: PowerState | None,
    request: Request | None,
    conductor: str | None,
    *,
    drift: bool = False,
) -> bool:
    """Record the power state the hardware reports; returns whether it changed.

    ``drift``: found by the power state sync, not by a request (a
    ``power.drift`` warning, and the webhook event says ``source: power sync``).
    """
    if state is None or node.power_state == state:
        return False
    before = node.power_state
    node.power_state = str(state)
    if drift:
        history.record(session, node, "power.drift",
                       f"Power state {before or 'unknown'} -> {state}, found by the power state sync.",
                       conductor=conductor, severity="warning")
        events.emit(session, events.EventType.POWER_STATE_CHANGED, node, None,
                    previous={"power_state": before}, source="power sync")
    else:
        history.record(session, node, "power.changed", f"Power state {before or 'unknown'} -> {state}.",
                       request_id=request.id if request is not None else None, conductor=conductor)
        events.emit(session, events.EventType.POWER_STATE_CHANGED, node, request,
                    previous={"power_state": before})
    return True
