"""Power and boot device over a BMC client: the interfaces the ``ipmi`` and ``redfish`` drivers share.

Both drivers reach their BMC the same way: ``call(ctx, driver_info,
action, command=..., holder=task)`` runs ``action`` on the node's cached
client behind the guard of :mod:`.bmc_access`, and every client offers
``get_power``, ``set_power(action)``, ``check_credentials``,
``get_boot_device`` and ``set_boot_device``.  What differs is a
:class:`Protocol`: the driver's name, fields, validation, ``call`` and
table of power actions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conductor.drivers import base
from conductor.exceptions import DriverError
from conductor.fsm.states import PowerState

if TYPE_CHECKING:
    from conductor.drivers.base import Task

#: What every client's ``get_power`` and ``check_credentials`` answer, as a power state.
FROM_BMC = {"on": PowerState.POWER_ON, "off": PowerState.POWER_OFF}
#: The clients' ``set_power`` argument for each power state the conductor sends.
POWER_ACTIONS = {PowerState.POWER_ON: "on", PowerState.POWER_OFF: "off", PowerState.SOFT_POWER_OFF: "soft"}


@dataclass(frozen=True)
class Protocol:
    """What the shared interfaces need of a BMC driver."""

    #: The driver's name, for messages.
    name: str
    #: The ``driver_info`` fields, and their validation (never touches the BMC).
    fields: Mapping[str, base.Field]
    validate_info: Callable[[Mapping[str, Any]], dict[str, str]]
    #: ``call(ctx, driver_info, action, *, command, holder)``: ``action(client)`` behind the guard.
    call: Callable[..., Any]
    #: The client's ``set_power`` argument for each power state it can send.
    power_actions: Mapping[PowerState, Any] = field(default_factory=lambda: dict(POWER_ACTIONS))


class _OverProtocol(base.Interface):
    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.fields = protocol.fields

    def validate(self, driver_info: Mapping[str, Any]) -> dict[str, str]:
        return self.protocol.validate_info(driver_info)

    def _call(self, task: Task, action: Callable[[Any], Any], *, command: bool) -> Any:
        return self.protocol.call(task.ctx, task.node.driver_info, action, command=command, holder=task)


class BMCPower(_OverProtocol, base.PowerInterface):
    """Power: read the state, send an action from the protocol's table, verify the credentials."""

    def get_power_state(self, task: Task) -> PowerState | None:
        return FROM_BMC[self._call(task, lambda client: client.get_power(), command=False)]

    def set_power_state(self, task: Task, state: PowerState) -> None:
        try:
            action = self.protocol.power_actions[PowerState(state)]
        except (KeyError, ValueError):
            raise DriverError(f"The {self.protocol.name} driver cannot send power state {state!r}.") from None
        self._call(task, lambda client: client.set_power(action), command=True)

    def verify(self, task: Task) -> PowerState | None:
        # One call proves the credentials (a login if the client has no session for them) and reads the power.
        return FROM_BMC[self._call(task, lambda client: client.check_credentials(), command=False)]


class BMCManagement(_OverProtocol, base.ManagementInterface):
    """Boot device: read it, or set it once or persistently."""

    def get_boot_device(self, task: Task) -> dict[str, Any]:
        return dict(self._call(task, lambda client: client.get_boot_device(), command=False).as_dict())

    def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None:
        if device not in self.BOOT_DEVICES:
            raise DriverError(f"Unknown boot device {device!r}; expected one of {', '.join(self.BOOT_DEVICES)}.")
        self._call(task, lambda client: client.set_boot_device(device, persistent=persistent), command=True)
