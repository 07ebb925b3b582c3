"""The state machine table itself: complete, reachable, escapable."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from conductor.exceptions import InvalidTransition
from conductor.fsm import diagram, machine, table
from conductor.fsm.states import Event, PowerState, ProvisionState, ProvisionTarget
from conductor.models import Node

EDGES = {(s, e): t for s, e, t in table.TRANSITIONS}


def test_no_duplicate_edges() -> None:
    assert len(EDGES) == len(table.TRANSITIONS)


def test_every_state_is_reachable_from_enroll() -> None:
    seen = {table.INITIAL_STATE}
    todo = deque([table.INITIAL_STATE])
    while todo:
        state = todo.popleft()
        for (source, _event), target in EDGES.items():
            if source == state and target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(ProvisionState)


def test_every_state_has_a_way_out() -> None:
    sources = {s for s, _ in EDGES}
    assert sources == set(ProvisionState)


def test_state_groups_partition_the_states() -> None:
    groups = [table.STABLE_STATES, table.BUSY_STATES, table.WAIT_STATES]
    assert set().union(*groups) == set(ProvisionState)
    assert sum(len(g) for g in groups) == len(ProvisionState)
    assert table.FAILED_STATES <= table.STABLE_STATES


@pytest.mark.parametrize("state", sorted(table.BUSY_STATES))
def test_every_busy_state_has_a_failure_edge(state: ProvisionState) -> None:
    assert (state, Event.FAIL) in EDGES


@pytest.mark.parametrize("state", sorted(table.WAIT_STATES))
def test_every_wait_state_can_be_aborted_failed_and_resumed(state: ProvisionState) -> None:
    assert EDGES[(state, Event.ABORT)] in table.FAILED_STATES
    assert EDGES[(state, Event.FAIL)] in table.FAILED_STATES
    assert EDGES[(state, Event.RESUME)] in table.BUSY_STATES


@pytest.mark.parametrize("state", sorted(table.BUSY_STATES))
def test_every_busy_state_can_complete(state: ProvisionState) -> None:
    assert any((state, e) in EDGES for e in table.COMPLETION_EVENTS)


def test_every_api_target_is_used_and_leads_somewhere() -> None:
    assert set(table.TARGET_EVENTS) == set(ProvisionTarget)
    used_events = {e for _, e in EDGES}
    for event in table.TARGET_EVENTS.values():
        assert event in used_events
    # Every target except abort names the stable state it ends in.
    assert set(table.TARGET_STABLE_STATES) == set(ProvisionTarget) - {ProvisionTarget.ABORT}
    assert set(table.TARGET_STABLE_STATES.values()) <= table.STABLE_STATES


def test_every_value_fits_its_column() -> None:
    width = {
        "provision_state": Node.__table__.c.provision_state.type.length,
        "power_state": Node.__table__.c.power_state.type.length,
    }
    assert max(len(s) for s in ProvisionState) <= width["provision_state"]
    assert max(len(s) for s in PowerState) <= width["power_state"]


def test_power_is_owned_exactly_by_the_workflow_states() -> None:
    assert table.POWER_OWNED_STATES == (table.BUSY_STATES - {ProvisionState.VERIFYING}) | table.WAIT_STATES


def test_machine_follows_the_table_and_refuses_the_rest() -> None:
    for (source, event), target in EDGES.items():
        assert machine.next_state(source, event) == target
    with pytest.raises(InvalidTransition) as info:
        machine.next_state(ProvisionState.ENROLL, Event.DEPLOY)
    assert info.value.details["allowed_targets"] == ["manage"]


def test_target_event_lists_allowed_targets() -> None:
    assert machine.target_event(ProvisionState.AVAILABLE, "active") == Event.DEPLOY
    with pytest.raises(InvalidTransition) as info:
        machine.target_event(ProvisionState.AVAILABLE, "deleted")
    assert info.value.code == "invalid_transition"
    assert info.value.details["allowed_targets"] == ["manage", "active"]
    assert "allowed: manage, active" in info.value.message


def test_completion_event_follows_the_goal() -> None:
    assert machine.completion_event(ProvisionState.CLEANING, ProvisionState.AVAILABLE) == Event.DONE
    assert machine.completion_event(ProvisionState.CLEANING, ProvisionState.MANAGEABLE) == Event.MANAGE
    assert machine.completion_event(ProvisionState.DELETING, ProvisionState.AVAILABLE) == Event.CLEAN


def test_readme_diagram_is_rendered_from_the_table() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    start = readme.index(diagram.BEGIN)
    end = readme.index(diagram.END) + len(diagram.END)
    assert readme[start:end] == diagram.readme_block(), "run: python -m conductor.fsm.diagram"
