"""Ports: a node's network interfaces, by MAC address.

A MAC is checked and written one way by :mod:`conductor.macs`; it belongs
to one port of the whole deployment (409 ``port_address_in_use``).

Ports are what network boot finds a node by (``GET /v1/boot/<mac>``, the
DHCP host entries), so they are not changed under a workflow: creating or
deleting a port of a node with a transition in progress is refused (409
``transition_in_progress``).  A node's ports go with it when it is deleted.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conductor import database, macs
from conductor.exceptions import Conflict, InvalidInput, PortNotFound, TransitionInProgress
from conductor.models import Node, Port, utcnow
from conductor.service import nodes


def add(session: Session, node: Node, addresses: Iterable[str]) -> list[Port]:
    """Add ports with these (normalised) addresses to ``node`` in the caller's transaction.

    The caller commits; an address in use raises ``IntegrityError`` then
    (see :func:`conductor.macs.in_use`).
    """
    ports = [Port(uuid=str(uuidlib.uuid4()), node_id=node.id, address=address) for address in addresses]
    session.add_all(ports)
    return ports


def _refuse_if_busy(node: Node, what: str) -> None:
    if node.active_request_id is not None:
        raise TransitionInProgress(
            f"Node {node.uuid} has a transition in progress; its ports cannot be {what} until it ends.",
            request_id=node.active_request_id,
        )


def create(session: Session, node_ident: str, address: Any, port_uuid: str | None = None) -> Port:
    """Add a port to node ``node_ident`` (with UUID ``port_uuid``, else a new one) and commit.

    :raises NodeNotFound: no such node.
    :raises InvalidInput: not a MAC, or not a UUID.
    :raises PortAddressInUse: the MAC is another port's.
    :raises Conflict: a port already has that UUID.
    :raises TransitionInProgress: the node has a transition in progress.
    """
    mac = macs.normalise(address)
    if port_uuid is not None:
        try:
            port_uuid = str(uuidlib.UUID(str(port_uuid)))
        except ValueError:
            raise InvalidInput("uuid is not a UUID.", errors={"uuid": "not a UUID"}) from None
        if session.scalar(sa.select(Port.id).where(Port.uuid == port_uuid)) is not None:
            raise Conflict(f"A port with UUID {port_uuid} already exists.")
    node = nodes.find(session, node_ident)
    _refuse_if_busy(node, "added")
    (port,) = add(session, node, [mac])
    if port_uuid is not None:
        port.uuid = port_uuid
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        # The MAC is taken, or the node was deleted meanwhile (its foreign key).
        nodes.find(session, node_ident)
        raise macs.in_use(session, [mac]) from None
    # Only while no request holds the node: a conditional touch of its row in
    # the same transaction (a submission racing with us waits, or we see it).
    held = database.rowcount(session.execute(
        sa.update(Node).where(Node.id == node.id, Node.active_request_id.is_(None)).values(updated_at=utcnow())
    ))
    if held != 1:
        session.rollback()
        node = nodes.find(session, node_ident)
        _refuse_if_busy(node, "added")
        raise TransitionInProgress(f"Node {node.uuid} changed while its port was added; retry.", request_id=None)
    session.commit()
    return port


def get(session: Session, port_uuid: str) -> Port:
    """The port ``port_uuid``.

    :raises PortNotFound: no such port.
    """
    port = session.scalars(sa.select(Port).where(Port.uuid == port_uuid)).one_or_none()
    if port is None:
        raise PortNotFound(f"Port {port_uuid} not found.", port=port_uuid)
    return port


#: What ports may be sorted by (the id breaking ties).
SORT_KEYS = {"id": Port.id, "uuid": Port.uuid, "address": Port.address, "created_at": Port.created_at}


def list_ports(session: Session, *, limit: int, marker: str | None = None, node: str | None = None,
               address: str | None = None, sort_key: str = "id", sort_dir: str = "asc") -> list[Port]:
    """Up to ``limit`` ports sorted by ``sort_key`` (then id) after port ``marker``, of node ``node`` /
    with MAC ``address``.

    :raises NodeNotFound: ``node`` names no node.
    :raises PortNotFound: the marker names no port.
    :raises InvalidInput: ``address`` is not a MAC; an unknown sort key or direction.
    """
    if sort_key not in SORT_KEYS:
        raise InvalidInput(f"Cannot sort by {sort_key}; sort keys: {', '.join(sorted(SORT_KEYS))}.",
                           errors={"sort_key": "not a sort key"})
    if sort_dir not in ("asc", "desc"):
        raise InvalidInput(f"Invalid sort direction {sort_dir!r}: asc or desc.", errors={"sort_dir": "asc or desc"})
    query = sa.select(Port)
    if node:
        query = query.where(Port.node_id == nodes.find(session, node).id)
    if address:
        query = query.where(Port.address == macs.normalise(address))
    key = SORT_KEYS[sort_key]
    descending = sort_dir == "desc"
    if marker:
        after = get(session, marker)
        value = getattr(after, sort_key)
        if sort_key == "id":
            query = query.where(Port.id < value if descending else Port.id > value)
        elif descending:
            query = query.where(sa.or_(key < value, sa.and_(key == value, Port.id < after.id)))
        else:
            query = query.where(sa.or_(key > value, sa.and_(key == value, Port.id > after.id)))
    order = [key, Port.id] if sort_key != "id" else [Port.id]
    query = query.order_by(*(o.desc() if descending else o for o in order))
    return list(session.scalars(query.limit(limit)))


def delete(session: Session, port_uuid: str) -> None:
    """Delete a port and commit.

    :raises PortNotFound: no such port.
    :raises TransitionInProgress: its node has a transition in progress.
    """
    port = get(session, port_uuid)
    node = port.node
    _refuse_if_busy(node, "deleted")
    deleted = database.rowcount(session.execute(
        sa.delete(Port).where(
            Port.id == port.id,
            # Only while no request holds the node: one statement, no race.
            sa.exists().where(Node.id == Port.node_id, Node.active_request_id.is_(None)),
        )
    ))
    if deleted != 1:
        session.rollback()
        session.refresh(node)
        _refuse_if_busy(node, "deleted")
        raise PortNotFound(f"Port {port_uuid} not found.", port=port_uuid)
    session.commit()


def of_node(session: Session, node: Node) -> list[str]:
    """The MACs of ``node``'s ports, in creation order."""
    return list(session.scalars(sa.select(Port.address).where(Port.node_id == node.id).order_by(Port.id)))
