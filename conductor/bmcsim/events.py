"""Power events: what the fleet tells its hooks when a machine changes state.

A simulated deploy agent (or a test) registers a hook with
:meth:`conductor.bmcsim.fleet.Fleet.on_power_change` and reacts, e.g. to a
machine that boots from the network::

    def agent(event: PowerEvent) -> None:
        if event.booted and event.boot_device == "pxe":
            ...  # pretend the ramdisk came up and call the conductor back
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class PowerEvent:
    """One power change of one BMC.

    :ivar seq: position in the fleet's event stream (starts at 1).
    :ivar bmc: the BMC's name.
    :ivar old: power state before (``on``/``off``).
    :ivar new: power state after; equal to ``old`` for a reset.
    :ivar cause: ``on``, ``off``, ``soft``, ``cycle``, ``reset`` (IPMI
        commands), ``drift`` (set behind the conductor's back), ``flap``.
    :ivar boot_device: the device the machine boots from if it booted
        (the override, or ``default``); a one-time override is used up.
    :ivar persistent: whether that override was persistent.
    :ivar uefi: whether the override asked for UEFI boot.
    :ivar time: wall-clock time of the change.
    """

    seq: int
    bmc: str
    old: str
    new: str
    cause: str
    boot_device: str
    persistent: bool
    uefi: bool
    time: float

    @property
    def booted(self) -> bool:
        """True when the machine started booting (off -> on, or a reset)."""
        return self.new == "on" and (self.old == "off" or self.cause == "reset")

    @classmethod
    def from_message(cls, message: dict[str, Any], name: str, seq: int) -> PowerEvent:
        """Build from a shard's event line."""
        return cls(seq=seq, bmc=name, old=message["old"], new=message["new"], cause=message["cause"],
                   boot_device=message["boot_device"], persistent=message["persistent"],
                   uefi=message["uefi"], time=message["time"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (with ``booted``)."""
        return {**asdict(self), "booted": self.booted}


#: A power hook: called with each event, in order, in the fleet's dispatcher thread.
PowerHook = Callable[[PowerEvent], None]
