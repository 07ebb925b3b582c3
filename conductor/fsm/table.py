"""The provision state machine, as data.

``TRANSITIONS`` is the whole machine: one ``(source, event, target)`` row
per edge.  The automaton in :mod:`conductor.fsm.machine`, the API's
validation, the conductor's workflows, the tests and the state diagram in
the README are all derived from it; change the machine here and nowhere else.

Conventions (checked by ``tests/unit/fsm``):

* every *busy* state (a conductor is working) has a ``fail`` edge, so a
  failure or a conductor crash can always leave it;
* every *wait* state (waiting for the node's agent to call back) can be
  aborted and can fail (a watchdog timeout);
* every state is reachable from ``enroll``.
"""

from __future__ import annotations

from types import MappingProxyType

from conductor.fsm.states import Event as E  # noqa: N817 - one letter keeps each row of the table on one line
from conductor.fsm.states import ProvisionState as S
from conductor.fsm.states import ProvisionTarget as T

INITIAL_STATE = S.ENROLL

TRANSITIONS: tuple[tuple[S, E, S], ...] = (
    # Enrolment: prove the credentials and read the power state.
    (S.ENROLL, E.MANAGE, S.VERIFYING),
    (S.VERIFYING, E.DONE, S.MANAGEABLE),
    (S.VERIFYING, E.FAIL, S.ENROLL),
    # Back to manageable from the other stable states.
    (S.AVAILABLE, E.MANAGE, S.MANAGEABLE),
    (S.INSPECT_FAILED, E.MANAGE, S.MANAGEABLE),
    (S.CLEAN_FAILED, E.MANAGE, S.MANAGEABLE),
    # Inspection: the agent reports the hardware inventory.
    (S.MANAGEABLE, E.INSPECT, S.INSPECTING),
    (S.INSPECT_FAILED, E.INSPECT, S.INSPECTING),
    (S.INSPECTING, E.DONE, S.MANAGEABLE),
    (S.INSPECTING, E.WAIT, S.INSPECT_WAIT),
    (S.INSPECTING, E.FAIL, S.INSPECT_FAILED),
    (S.INSPECT_WAIT, E.RESUME, S.INSPECTING),
    (S.INSPECT_WAIT, E.FAIL, S.INSPECT_FAILED),
    (S.INSPECT_WAIT, E.ABORT, S.INSPECT_FAILED),
    # Cleaning: automated (provide, undeploy) ends in available, manual
    # (clean) ends in manageable, as in Ironic.
    (S.MANAGEABLE, E.PROVIDE, S.CLEANING),
    (S.MANAGEABLE, E.CLEAN, S.CLEANING),
    (S.CLEANING, E.DONE, S.AVAILABLE),
    (S.CLEANING, E.MANAGE, S.MANAGEABLE),
    (S.CLEANING, E.WAIT, S.CLEAN_WAIT),
    (S.CLEANING, E.FAIL, S.CLEAN_FAILED),
    (S.CLEAN_WAIT, E.RESUME, S.CLEANING),
    (S.CLEAN_WAIT, E.FAIL, S.CLEAN_FAILED),
    (S.CLEAN_WAIT, E.ABORT, S.CLEAN_FAILED),
    # Deployment, rebuild and retrying a failed deployment.
    (S.AVAILABLE, E.DEPLOY, S.DEPLOYING),
    (S.ACTIVE, E.REBUILD, S.DEPLOYING),
    (S.DEPLOY_FAILED, E.DEPLOY, S.DEPLOYING),
    (S.DEPLOY_FAILED, E.REBUILD, S.DEPLOYING),
    (S.ERROR, E.REBUILD, S.DEPLOYING),
    (S.DEPLOYING, E.DONE, S.ACTIVE),
    (S.DEPLOYING, E.WAIT, S.DEPLOY_WAIT),
    (S.DEPLOYING, E.FAIL, S.DEPLOY_FAILED),
    (S.DEPLOY_WAIT, E.RESUME, S.DEPLOYING),
    (S.DEPLOY_WAIT, E.FAIL, S.DEPLOY_FAILED),
    (S.DEPLOY_WAIT, E.ABORT, S.DEPLOY_FAILED),
    # Undeployment: tear down, then automated cleaning.
    (S.ACTIVE, E.DELETE, S.DELETING),
    (S.DEPLOY_FAILED, E.DELETE, S.DELETING),
    (S.ERROR, E.DELETE, S.DELETING),
    (S.DELETING, E.CLEAN, S.CLEANING),
    (S.DELETING, E.FAIL, S.ERROR),
)

#: Where nodes rest; nothing happens to them until someone asks.
STABLE_STATES = frozenset(
    {
        S.ENROLL,
        S.MANAGEABLE,
        S.AVAILABLE,
        S.ACTIVE,
        S.DEPLOY_FAILED,
        S.INSPECT_FAILED,
        S.CLEAN_FAILED,
        S.ERROR,
    }
)
#: A conductor is working on the node; a crash here fails the node.
BUSY_STATES = frozenset({S.VERIFYING, S.INSPECTING, S.CLEANING, S.DEPLOYING, S.DELETING})
#: Waiting for the node's agent to call back; these resume after a restart.
WAIT_STATES = frozenset({S.INSPECT_WAIT, S.CLEAN_WAIT, S.DEPLOY_WAIT})
#: Stable states that record a failure.
FAILED_STATES = frozenset({S.DEPLOY_FAILED, S.INSPECT_FAILED, S.CLEAN_FAILED, S.ERROR})
#: A provisioning workflow owns the power here; power requests are refused.
POWER_OWNED_STATES = frozenset(
    {S.DEPLOYING, S.DEPLOY_WAIT, S.CLEANING, S.CLEAN_WAIT, S.DELETING, S.INSPECTING, S.INSPECT_WAIT}
)
#: ``DELETE /v1/nodes/<node>`` is allowed from these states (any stable
#: state while the node is in maintenance).
DELETE_ALLOWED_STATES = frozenset(
    {S.ENROLL, S.MANAGEABLE, S.AVAILABLE, S.INSPECT_FAILED, S.CLEAN_FAILED}
)

#: The event each API target fires.
TARGET_EVENTS = MappingProxyType(
    {
        T.MANAGE: E.MANAGE,
        T.PROVIDE: E.PROVIDE,
        T.INSPECT: E.INSPECT,
        T.CLEAN: E.CLEAN,
        T.ACTIVE: E.DEPLOY,
        T.REBUILD: E.REBUILD,
        T.DELETED: E.DELETE,
        T.ABORT: E.ABORT,
    }
)
#: The stable state a successful request for each target ends in; shown as
#: ``target_provision_state`` while it runs.  ``abort`` ends in whichever
#: failed state the aborted wait leads to.
TARGET_STABLE_STATES = MappingProxyType(
    {
        T.MANAGE: S.MANAGEABLE,
        T.PROVIDE: S.AVAILABLE,
        T.INSPECT: S.MANAGEABLE,
        T.CLEAN: S.MANAGEABLE,
        T.ACTIVE: S.ACTIVE,
        T.REBUILD: S.ACTIVE,
        T.DELETED: S.AVAILABLE,
    }
)
#: Events a conductor fires when a busy state's work is done, in order of
#: preference; the one whose edge leads towards the request's target wins.
COMPLETION_EVENTS = (E.DONE, E.MANAGE, E.CLEAN)
