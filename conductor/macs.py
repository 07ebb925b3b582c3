"""MAC addresses: checked and written one way.

A MAC is accepted in any of the usual spellings (``52:54:00:AB:CD:EF``,
``52-54-00-ab-cd-ef``, ``525400abcdef``, one-digit octets ``52:54:0:...``)
and stored, compared and shown in one: lower case, colon separated.  It
must be a unicast address (a NIC's own): multicast, broadcast and all-zero
addresses are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor.exceptions import InvalidInput, PortAddressInUse
from conductor.models import Port

_HEX12 = re.compile(r"^[0-9a-f]{12}$")
_SEPARATED = re.compile(r"^[0-9a-f]{1,2}([:-])[0-9a-f]{1,2}(\1[0-9a-f]{1,2}){4}$")
#: At most this many ports on one node (a sanity bound for a create body).
MAX_PORTS_PER_REQUEST = 64


def normalise(value: Any, field: str = "address") -> str:
    """``value`` as a lower-case, colon-separated unicast MAC.

    :raises InvalidInput: not a MAC, or a multicast/broadcast/all-zero one.
    """
    text = value.strip().lower() if isinstance(value, str) else ""
    if _HEX12.match(text):
        octets = [text[i : i + 2] for i in range(0, 12, 2)]
    elif _SEPARATED.match(text):
        octets = [part.zfill(2) for part in re.split(r"[:-]", text)]
    else:
        raise InvalidInput(
            f"{value!r} is not a MAC address (six hex octets, e.g. 52:54:00:12:34:56).",
            errors={field: "not a MAC address"},
        )
    if int(octets[0], 16) & 1:
        raise InvalidInput(f"{value!r} is a multicast or broadcast address, not a NIC's.",
                           errors={field: "multicast address"})
    if octets == ["00"] * 6:
        raise InvalidInput(f"{value!r} is the all-zero address.", errors={field: "all-zero address"})
    return ":".join(octets)


def normalise_many(values: Any, field: str = "ports") -> list[str]:
    """A list of MACs (the ``ports`` of a node's creation), normalised, without repeats.

    :raises InvalidInput: not a list, too many, or one is not a MAC.
    """
    if not isinstance(values, list):
        raise InvalidInput(f"{field} must be a list of MAC addresses.", errors={field: "must be a list"})
    if len(values) > MAX_PORTS_PER_REQUEST:
        raise InvalidInput(f"At most {MAX_PORTS_PER_REQUEST} ports per node at once.",
                           errors={field: "too many"})
    seen: dict[str, None] = {}
    for index, value in enumerate(values):
        seen.setdefault(normalise(value, f"{field}[{index}]"))
    return list(seen)


def in_use(session: Session, addresses: Iterable[str]) -> PortAddressInUse:
    """The error for an insert of ``addresses`` that failed on the unique address."""
    taken = session.scalars(sa.select(Port).where(Port.address.in_(list(addresses)))).all()
    if taken:
        port = taken[0]
        return PortAddressInUse(f"MAC {port.address} is already port {port.uuid} of node {port.node.uuid}.",
                                address=port.address, port=port.uuid, node=port.node.uuid)
    return PortAddressInUse("A MAC address is already in use by another port.")
