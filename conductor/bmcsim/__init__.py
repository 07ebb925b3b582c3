"""A fleet of simulated BMCs speaking real IPMI 2.0 (RMCP+, lanplus) on UDP, and Redfish on request.

With ``Fleet(redfish_port=0)`` every BMC also serves Redfish over HTTPS
(:mod:`.redfish_service`, docs/redfish.md), on the same machine state.

Public API:

* :class:`Fleet` - run a fleet from this process (shards are child processes).
* :class:`RemoteFleet` - drive a fleet running elsewhere over its HTTP
  control API (``RemoteFleet.spawn(...)`` starts one as a subprocess).
* :class:`PowerEvent` - what power hooks receive.
* :class:`VmSpec`, :class:`UserNetwork` - declare BMCs that drive QEMU
  virtual machines (``Fleet(..., vms=VmSpec(...))``; see docs/vm.md).
* :class:`Faults`, :class:`BMCSpec`.
"""

from __future__ import annotations

from conductor.bmcsim.control import RemoteFleet
from conductor.bmcsim.events import PowerEvent, PowerHook
from conductor.bmcsim.fleet import Fleet, FleetError
from conductor.bmcsim.inventory import BMCSpec
from conductor.bmcsim.state import Faults
from conductor.bmcsim.vm import UserNetwork, VmSpec

__all__ = ["BMCSpec", "Faults", "Fleet", "FleetError", "PowerEvent", "PowerHook", "RemoteFleet", "UserNetwork",
           "VmSpec"]
