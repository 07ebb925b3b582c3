"""The provision state machine built from :mod:`conductor.fsm.table`.

The FSM decides, it never acts: callers ask where an event leads and act
on the answer themselves.  The automaton machine is built and frozen once;
each question is answered on a cheap shallow copy, and automaton's
exceptions are translated into :class:`~conductor.exceptions.InvalidTransition`
here and nowhere else.
"""

from __future__ import annotations

import functools

from automaton import exceptions as automaton_exc
from automaton import machines

from conductor.exceptions import InvalidTransition
from conductor.fsm import table
from conductor.fsm.states import Event, ProvisionState, ProvisionTarget


@functools.cache
def _frozen_machine() -> machines.FiniteMachine:
    machine = machines.FiniteMachine()
    for state in ProvisionState:
        machine.add_state(state)
    for source, event, target in table.TRANSITIONS:
        machine.add_transition(source, target, event)
    machine.default_start_state = table.INITIAL_STATE
    machine.freeze()
    return machine


def next_state(current: ProvisionState | str, event: Event | str) -> ProvisionState:
    """Where ``event`` takes a node in state ``current``.

    :raises InvalidTransition: the machine has no such edge.
    """
    machine = _frozen_machine().copy(shallow=True)
    try:
        machine.initialize(str(current))
        machine.process_event(str(event))
    except (automaton_exc.NotFound, automaton_exc.InvalidState) as exc:
        raise InvalidTransition(
            f"Event {event!s} is not allowed in provision state {current!s}.",
            provision_state=str(current),
            allowed_targets=allowed_targets(current),
        ) from exc
    assert machine.current_state is not None  # initialize() set it
    return ProvisionState(machine.current_state)


@functools.cache
def _edges() -> dict[tuple[str, str], ProvisionState]:
    return {(str(s), str(e)): t for s, e, t in table.TRANSITIONS}


def allowed_targets(current: ProvisionState | str) -> list[str]:
    """API targets the machine allows from ``current``, in a stable order."""
    edges = _edges()
    return [str(t) for t, e in table.TARGET_EVENTS.items() if (str(current), str(e)) in edges]


def target_event(current: ProvisionState | str, target: ProvisionTarget | str) -> Event:
    """The event an API ``target`` fires from ``current``, after checking it.

    :raises InvalidTransition: unknown target, or not allowed from ``current``.
    """
    try:
        event = table.TARGET_EVENTS[ProvisionTarget(target)]
    except ValueError:
        raise InvalidTransition(
            f"Unknown provision target {target!r}.",
            provision_state=str(current),
            allowed_targets=allowed_targets(current),
        ) from None
    try:
        next_state(current, event)
    except InvalidTransition as exc:
        exc.message = (
            f"Target {target!s} is not allowed in provision state {current!s}; "
            f"allowed: {', '.join(allowed_targets(current)) or 'none'}."
        )
        raise
    return event


def completion_event(current: ProvisionState | str, goal: ProvisionState | str | None) -> Event:
    """The event that ends the work of busy state ``current`` on the way to ``goal``.

    Cleaning, for instance, ends with ``done`` (-> available) after a
    ``provide`` but with ``manage`` (-> manageable) after a manual ``clean``.

    :raises InvalidTransition: ``current`` has no completion edge.
    """
    edges = _edges()
    candidates = [e for e in table.COMPLETION_EVENTS if (str(current), str(e)) in edges]
    if not candidates:
        raise InvalidTransition(f"Provision state {current!s} has no completion edge.")
    for event in candidates:
        if goal is not None and edges[(str(current), str(event))] == goal:
            return event
    return candidates[0]
