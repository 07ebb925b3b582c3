"""What inspection found: the node's properties and ports, from the agent's inventory.

The agent reports its hardware (see ``conductor/ramdisk/files/init``,
``cmd_inspect``); the node keeps, in ``properties``:

* ``cpus``, ``cpu_arch``, ``memory_mb``, ``local_gb`` (the root disk's size),
  ``disks`` (name, size, model, serial, ...), ``nics`` (name, MAC, link),
  ``boot_mode`` and ``system_vendor`` (manufacturer, product, serial), as
  reported;
* ``macs``: the MAC addresses of its NICs, normalised.

Every MAC that is not a port yet becomes one of the node's ports (network
boot then finds the node by any of its NICs).  A MAC that is another
node's port is left alone and named in the history as a warning: two nodes
cannot share a NIC, so one of the records is wrong and an operator must
say which.  Everything runs in the caller's transaction.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor import macs
from conductor.core import history
from conductor.exceptions import InvalidInput
from conductor.models import Node, Port, Request

#: Inventory keys copied into the node's ``properties`` as reported.
PROPERTY_KEYS = ("cpus", "cpu_arch", "memory_mb", "local_gb", "disks", "nics", "boot_mode", "system_vendor")


def discovered_macs(inventory: Mapping[str, Any]) -> list[str]:
    """The normalised unicast MACs of the inventory's NICs, in order, without repeats (bad ones skipped)."""
    found: dict[str, None] = {}
    for nic in inventory.get("nics") or []:
        if not isinstance(nic, Mapping):
            continue
        try:
            found.setdefault(macs.normalise(nic.get("mac")))
        except InvalidInput:
            continue  # a NIC without a usable address (a bridge, a bond's zero MAC)
    return list(found)


def record(session: Session, node: Node, inventory: Mapping[str, Any], request: Request | None,
           conductor: str | None) -> list[str]:
    """Store ``inventory`` in ``node``'s properties and add ports for its new MACs; returns the MACs added."""
    found = discovered_macs(inventory)
    properties = dict(node.properties or {})
    properties.update({key: inventory[key] for key in PROPERTY_KEYS if key in inventory})
    properties["macs"] = found
    node.properties = properties
    owners: dict[str, str] = {}
    if found:
        rows = session.execute(
            sa.select(Port.address, Node.uuid).join(Node, Node.id == Port.node_id).where(Port.address.in_(found))
        )
        owners = {str(address): str(owner) for address, owner in rows}
    added = [mac for mac in found if mac not in owners]
    session.add_all(Port(uuid=str(uuidlib.uuid4()), node_id=node.id, address=mac) for mac in added)
    request_id = request.id if request is not None else None
    if added:
        history.record(session, node, "inspect.ports", f"Ports added for the NICs found: {', '.join(added)}.",
                       request_id=request_id, conductor=conductor)
    taken = {mac: owner for mac, owner in owners.items() if owner != node.uuid}
    if taken:
        history.record(session, node, "inspect.ports",
                       "NICs found that are other nodes' ports (left alone): "
                       + ", ".join(f"{mac} (node {owner})" for mac, owner in taken.items()) + ".",
                       request_id=request_id, conductor=conductor, severity="warning")
    return added
