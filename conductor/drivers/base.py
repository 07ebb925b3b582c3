"""Driver interfaces: small ABCs a driver composes.

A driver is a name plus a power interface, an optional management (boot
device) interface, a deploy interface and, optionally, inspect interfaces
that discover the hardware without the deploy interface's agent.  ``validate()`` checks a node's
``driver_info`` without touching the hardware; it runs when a node is
created or patched.  Everything else runs inside a conductor worker on a
:class:`~conductor.engine.task.Task` that holds the node's reservation.

Actions never wait for the hardware.  A power command is sent and the
conductor polls; a deploy step returns a :data:`StepResult` telling the
conductor whether it is done, should be polled again later, or waits for
the node's agent to call back.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from conductor.fsm.states import PowerState

if TYPE_CHECKING:
    from conductor.engine.task import Task


@dataclasses.dataclass(frozen=True)
class Done:
    """The step is complete."""


@dataclasses.dataclass(frozen=True)
class Poll:
    """Not done yet: call the step again after ``after`` seconds."""

    after: float
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Wait:
    """Waiting for the node's agent to call back (no worker is held)."""

    reason: str = ""
    timeout: float | None = None


StepResult = Done | Poll | Wait
DONE = Done()


@dataclasses.dataclass(frozen=True)
class BootSetting:
    """The boot device override a BMC reports (IPMI boot flags, a Redfish system's ``Boot``)."""

    device: str
    persistent: bool
    uefi: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The shape ``ManagementInterface.get_boot_device`` returns."""
        return {"boot_device": self.device, "persistent": self.persistent, "uefi": self.uefi}


class TryLater(Exception):
    """The hardware cannot take a call right now; run the step again after ``after`` seconds.

    Raised by driver methods that cannot return a :data:`StepResult` (a
    power or boot device call) when the BMC is busy with another command or
    must not be sent one yet (pacing).  It is not an error: the conductor
    ends the step as if it had returned ``Poll(after)`` (nothing is failed,
    the step's progress so far is kept).
    """

    def __init__(self, after: float, reason: str = "") -> None:
        super().__init__(reason or f"try again in {after:.2f} s")
        self.after = after
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Field:
    """One ``driver_info`` field a driver understands."""

    description: str
    required: bool = False


class Interface(abc.ABC):  # noqa: B024 - the interfaces below declare the abstract methods
    """Base of every driver interface."""

    #: The ``driver_info`` fields this interface reads.
    fields: Mapping[str, Field] = {}

    def validate(self, driver_info: Mapping[str, Any]) -> dict[str, str]:
        """Field errors in ``driver_info`` (empty when valid); never touches hardware."""
        return {
            name: "required" for name, f in self.fields.items() if f.required and name not in driver_info
        }


class PowerInterface(Interface):
    """Reads and changes a node's power state."""

    @abc.abstractmethod
    def get_power_state(self, task: Task) -> PowerState | None:
        """The power state the hardware reports (None if it cannot tell).

        :raises DriverError: the hardware could not be asked.
        """

    @abc.abstractmethod
    def set_power_state(self, task: Task, state: PowerState) -> None:
        """Send a power command (on, off or soft off) without waiting for it.

        :raises DriverError: the hardware refused or did not answer.
        """

    def verify(self, task: Task) -> PowerState | None:
        """Prove the credentials work; return the power state read on the way.

        :raises DriverError: the hardware refused the credentials or did not answer.
        """
        return self.get_power_state(task)


class ManagementInterface(Interface):
    """Reads and sets a node's boot device."""

    BOOT_DEVICES = ("pxe", "disk", "cdrom", "bios")

    @abc.abstractmethod
    def get_boot_device(self, task: Task) -> dict[str, Any]:
        """``{"boot_device": ..., "persistent": bool}``.

        :raises DriverError: the hardware could not be asked.
        """

    @abc.abstractmethod
    def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None:
        """Set the next (or every, if ``persistent``) boot device.

        :raises DriverError: the hardware refused or did not answer.
        """


class DeployInterface(Interface):
    """The provisioning steps a busy provision state runs."""

    @abc.abstractmethod
    def deploy(self, task: Task) -> StepResult:
        """Write the image and boot the node into it (state ``deploying``)."""

    @abc.abstractmethod
    def tear_down(self, task: Task) -> StepResult:
        """Undo a deployment (state ``deleting``)."""

    @abc.abstractmethod
    def clean(self, task: Task) -> StepResult:
        """Erase the node (state ``cleaning``)."""

    @abc.abstractmethod
    def inspect(self, task: Task) -> StepResult:
        """Discover the hardware into ``properties`` (state ``inspecting``)."""


class InspectInterface(Interface):
    """Discovers a node's hardware by other means than the deploy interface (e.g. out of band)."""

    @abc.abstractmethod
    def inspect(self, task: Task) -> StepResult:
        """Discover the hardware into ``properties`` and ports (state ``inspecting``)."""


#: The ``driver_info`` key choosing a node's deploy interface.
DEPLOY_INTERFACE_KEY = "deploy_interface"
#: The ``driver_info`` key choosing a node's inspect interface.
INSPECT_INTERFACE_KEY = "inspect_interface"
#: The ``driver_info`` key choosing how the deploy interface's agent boots (``pxe`` or
#: ``redfish-virtual-media``).
BOOT_INTERFACE_KEY = "boot_interface"
#: The inspect interface name meaning "the deploy interface's own inspection" (its agent).
AGENT_INSPECTION = "agent"


@dataclasses.dataclass(frozen=True)
class Driver:
    """A named composition of interfaces.

    ``deploy`` is the default deploy interface; ``deploy_interfaces`` lists
    every deploy interface a node of this driver may choose by name with
    ``driver_info.deploy_interface`` (the default is among them).

    ``inspect_interfaces`` are inspect interfaces a node may choose with
    ``driver_info.inspect_interface``; the first is the default, and the
    name ``agent`` means the deploy interface's own inspection.  A driver
    without any inspects through its deploy interface only.
    """

    name: str
    power: PowerInterface
    deploy: DeployInterface
    management: ManagementInterface | None = None
    deploy_interfaces: Mapping[str, DeployInterface] = dataclasses.field(default_factory=dict)
    inspect_interfaces: Mapping[str, InspectInterface | None] = dataclasses.field(default_factory=dict)
    #: Boot interfaces a node may choose with ``driver_info.boot_interface``: name -> the
    #: deploy interface that boots its agent that way (None: the chosen deploy interface as
    #: it is, i.e. from the network).  Empty: the agent boots from the network only.
    boot_interfaces: Mapping[str, DeployInterface | None] = dataclasses.field(default_factory=dict)

    def interfaces(self) -> list[Interface]:
        """Every interface of the driver."""
        deploys = [self.deploy, *(d for d in self.deploy_interfaces.values() if d is not self.deploy)]
        inspects = [i for i in self.inspect_interfaces.values() if i is not None]
        boots = [b for b in self.boot_interfaces.values() if b is not None]
        return [i for i in (self.power, self.management, *deploys, *inspects, *boots) if i is not None]

    def deploy_for(self, driver_info: Mapping[str, Any]) -> DeployInterface:
        """The deploy interface a node with ``driver_info`` uses (validated at create/patch)."""
        name = driver_info.get(DEPLOY_INTERFACE_KEY)
        deploy = self.deploy if name is None else self.deploy_interfaces[name]
        boot = self.boot_interfaces.get(driver_info.get(BOOT_INTERFACE_KEY) or "")
        if boot is not None and getattr(deploy, "network_boot", False):
            return boot  # the pxe deploy interface's agent, booted another way
        return deploy

    def inspect_for(self, driver_info: Mapping[str, Any]) -> InspectInterface | DeployInterface:
        """What inspects a node with ``driver_info``: its inspect interface, else its deploy interface."""
        if not self.inspect_interfaces:
            return self.deploy_for(driver_info)
        name = driver_info.get(INSPECT_INTERFACE_KEY) or next(iter(self.inspect_interfaces))
        return self.inspect_interfaces[name] or self.deploy_for(driver_info)

    def default_deploy_name(self) -> str:
        """The name of the default deploy interface."""
        for name, interface in self.deploy_interfaces.items():
            if interface is self.deploy:
                return name
        return "default"

    def validate(self, driver_info: Mapping[str, Any]) -> dict[str, str]:
        """Field errors of ``driver_info`` for this driver (empty when valid)."""
        errors: dict[str, str] = {}
        chosen = driver_info.get(DEPLOY_INTERFACE_KEY)
        if chosen is not None and chosen not in self.deploy_interfaces:
            errors[DEPLOY_INTERFACE_KEY] = (
                f"must be one of {sorted(self.deploy_interfaces)} for driver {self.name} "
                f"(default {self.default_deploy_name()})"
            )
        inspector = driver_info.get(INSPECT_INTERFACE_KEY)
        if inspector is not None and inspector not in self.inspect_interfaces:
            choices = sorted(self.inspect_interfaces) or [AGENT_INSPECTION]
            errors[INSPECT_INTERFACE_KEY] = f"must be one of {choices} for driver {self.name}"
        boot = driver_info.get(BOOT_INTERFACE_KEY)
        if boot is not None and not self.boot_interfaces:
            errors[BOOT_INTERFACE_KEY] = (f"driver {self.name} boots its agent from the network only; "
                                          f"{boot!s:.40} needs another driver (redfish-virtual-media: redfish)")
        elif boot is not None and boot not in self.boot_interfaces:
            errors[BOOT_INTERFACE_KEY] = f"must be one of {sorted(self.boot_interfaces)} for driver {self.name}"
        for interface in self.interfaces():
            errors.update(interface.validate(driver_info))
        return errors

    def fields(self) -> dict[str, Field]:
        """Every ``driver_info`` field the driver reads."""
        merged: dict[str, Field] = {}
        if self.deploy_interfaces:
            merged[DEPLOY_INTERFACE_KEY] = Field(
                f"Deploy interface: {', '.join(sorted(self.deploy_interfaces))} "
                f"(default {self.default_deploy_name()})."
            )
        if self.inspect_interfaces:
            names = list(self.inspect_interfaces)
            merged[INSPECT_INTERFACE_KEY] = Field(
                f"Inspect interface: {', '.join(sorted(names))} (default {names[0]}; "
                f"{AGENT_INSPECTION}: the deploy interface's agent).")
        if self.boot_interfaces:
            merged[BOOT_INTERFACE_KEY] = Field(
                f"How the agent boots: {', '.join(sorted(self.boot_interfaces))} (default pxe: the network).")
        for interface in self.interfaces():
            merged.update(interface.fields)
        return merged
