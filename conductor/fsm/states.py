"""The vocabulary of node states, events and API targets.

Values follow OpenStack Ironic so that Ironic users feel at home.  Every
value is a ``StrEnum`` member: it compares equal to, and formats as, its
plain string.
"""

from __future__ import annotations

import enum


class ProvisionState(enum.StrEnum):
    """Where a node is in its provisioning life cycle."""

    ENROLL = "enroll"
    VERIFYING = "verifying"
    MANAGEABLE = "manageable"
    INSPECTING = "inspecting"
    INSPECT_WAIT = "inspect wait"
    INSPECT_FAILED = "inspect failed"
    CLEANING = "cleaning"
    CLEAN_WAIT = "clean wait"
    CLEAN_FAILED = "clean failed"
    AVAILABLE = "available"
    DEPLOYING = "deploying"
    DEPLOY_WAIT = "wait call-back"
    DEPLOY_FAILED = "deploy failed"
    ACTIVE = "active"
    DELETING = "deleting"
    ERROR = "error"


class PowerState(enum.StrEnum):
    """A node's power state as its BMC reports it (``None`` when unknown)."""

    POWER_ON = "power on"
    POWER_OFF = "power off"
    REBOOTING = "rebooting"
    SOFT_POWER_OFF = "soft power off"


class Event(enum.StrEnum):
    """Events that move the provision state machine."""

    MANAGE = "manage"
    PROVIDE = "provide"
    INSPECT = "inspect"
    CLEAN = "clean"
    DEPLOY = "deploy"
    REBUILD = "rebuild"
    DELETE = "delete"
    ABORT = "abort"
    # Internal events: fired by the conductor, never accepted from the API.
    DONE = "done"
    FAIL = "fail"
    WAIT = "wait"
    RESUME = "resume"


class ProvisionTarget(enum.StrEnum):
    """Targets accepted by ``PUT /v1/nodes/<node>/states/provision``."""

    MANAGE = "manage"
    PROVIDE = "provide"
    INSPECT = "inspect"
    CLEAN = "clean"
    ACTIVE = "active"
    REBUILD = "rebuild"
    DELETED = "deleted"
    ABORT = "abort"


class RequestKind(enum.StrEnum):
    """What a request changes."""

    POWER = "power"
    PROVISION = "provision"
    #: Set the boot device (target: the device; params: ``persistent``).
    MANAGEMENT = "management"


class RequestState(enum.StrEnum):
    """Life cycle of an asynchronous request."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: A request in one of these states holds its node ("transition in progress").
ACTIVE_REQUEST_STATES = frozenset(
    {RequestState.QUEUED, RequestState.RUNNING, RequestState.WAITING}
)
#: A request in one of these states is over and never changes again.
FINAL_REQUEST_STATES = frozenset(
    {RequestState.SUCCEEDED, RequestState.FAILED, RequestState.CANCELLED}
)
