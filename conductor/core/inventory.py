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
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from conductor import macs
from conductor.core import history
from conductor.exceptions import InvalidInput
from conductor.models import Node, Port, Request, utcnow

#: Inventory keys copied into the node's ``properties`` as reported.
PROPERTY_KEYS = ("cpus", "cpu_arch", "memory_mb", "local_gb", "disks", "nics", "boot_mode", "system_vendor")


def _owners(session: Session, addresses: list[str]) -> dict[str, str]:
    """MAC -> the UUID of the node whose port it is, for those of ``addresses`` that are ports."""
    if not addresses:
        return {}
    rows = session.execute(
        sa.select(Port.address, Node.uuid).join(Node, Node.id == Port.node_id).where(Port.address.in_(addresses))
    )
    return {str(address): str(owner) for address, owner in rows}


def discovered_macs(inventory: Mapping[str, Any]) -> list[str]:
    """The normalised unicast MACs of the inventory's NICs, in order, without repeats (bad ones skipped)."""
    found: dict[str, None] = {}
    nics = inventory.get("nics")
    for nic in nics if isinstance(nics, list) else []:
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
    before = _owners(session, found)
    new = [mac for mac in found if mac not in before]
    if new:
        # Another node's inspection (or a POST /v1/ports) may take one of
        # these MACs at the same moment: an insert that finds the address
        # taken does nothing, and the owners read again say who won.
        insert = (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)
        for mac in new:
            session.execute(
                insert(Port.__table__)
                .values(uuid=str(uuidlib.uuid4()), node_id=node.id, address=mac, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["address"])
            )
    owners = _owners(session, found) if new else before
    added = [mac for mac in new if owners.get(mac) == node.uuid]
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
