"""Nodes: enrol, find, list, change and delete.

A node is named by its UUID or its (unique, non-UUID-looking) name.
Secrets in ``driver_info`` are write-only: they are stored sealed
(:mod:`conductor.secretbox`), the API shows them masked, and a patch that
sends back the mask keeps the stored value.
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
from collections.abc import Collection, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conductor import database, drivers, macs, secretbox
from conductor.callbacks import events
from conductor.core import history
from conductor.exceptions import (
    Conflict,
    InstanceAssociated,
    InvalidInput,
    NodeNameInUse,
    NodeNotDeletable,
    NodeNotFound,
    PreconditionFailed,
    TransitionInProgress,
)
from conductor.fsm import table
from conductor.fsm.states import ProvisionState
from conductor.models import Node, Port, Request, utcnow
from conductor.secretbox import is_secret

MASK = "******"
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9._~-]{1,255}$")

#: Fields a merge patch may change.
PATCHABLE = frozenset(
    {"name", "driver", "driver_info", "properties", "maintenance", "maintenance_reason",
     "instance_uuid", "instance_info", "extra", "resource_class", "description"}
)
#: Object fields merged key by key (``null`` removes a key).
MERGED_FIELDS = ("properties", "instance_info", "extra")
#: Fields that change how a conductor talks to the hardware: refused while
#: a transition is in progress.
DRIVER_FIELDS = frozenset({"driver", "driver_info"})


def looks_like_uuid(ident: str) -> bool:
    """Whether ``ident`` is a UUID (and so never a name)."""
    return bool(_UUID_RE.match(ident))


def ident_clause(ident: str) -> sa.ColumnElement[bool]:
    """A WHERE clause selecting the node named by UUID or name ``ident``."""
    if looks_like_uuid(ident):
        return Node.uuid == str(uuidlib.UUID(ident))
    return Node.name == ident


def find(session: Session, ident: str) -> Node:
    """The node with UUID or name ``ident``.

    :raises NodeNotFound: no such node.
    """
    node = session.scalars(sa.select(Node).where(ident_clause(ident))).one_or_none()
    if node is None:
        raise NodeNotFound(f"Node {ident} not found.", node=ident)
    return node


def etag(node: Node) -> str:
    """The node's entity tag (unquoted): its UUID and version, changed by every write of the row.

    The UUID keeps a node deleted and enrolled again under the same name
    from matching a tag of the old one.
    """
    return f"{node.uuid}-{node.version}"


#: ``If-Match: *``: any current version.
ANY_VERSION = "*"


def _check_precondition(node: Node, if_match: Collection[str] | None) -> None:
    """Refuse a write whose ``If-Match`` (entity tags, or ``*``) does not name the node's current version.

    :raises PreconditionFailed: the node changed since (its current tag is in ``etag``).
    """
    if if_match is None or ANY_VERSION in if_match:
        return
    current = etag(node)
    if current not in if_match:
        raise PreconditionFailed(
            f"Node {node.uuid} has changed (now at version {node.version}); get it again and retry.",
            etag=f'"{current}"',
        )


def _check_name(name: Any) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not _NAME_RE.match(name) or looks_like_uuid(name):
        raise InvalidInput(
            f"Invalid node name {name!r}: use 1-255 of A-Z a-z 0-9 . _ ~ - and not a UUID.",
            errors={"name": "invalid name"},
        )
    return name


def _check_dict(field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be an object.", errors={field: "must be an object"})
    return value


#: The largest ``driver_info`` or ``properties`` a node may hold (as JSON).
MAX_FIELD_BYTES = 64 * 1024


def _check_size(field: str, value: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(value, separators=(",", ":")))
    if size > MAX_FIELD_BYTES:
        raise InvalidInput(
            f"{field} is {size} bytes as JSON; at most {MAX_FIELD_BYTES} are allowed.",
            errors={field: f"at most {MAX_FIELD_BYTES} bytes"},
        )
    return value


def _check_secrets(driver_info: Mapping[str, Any]) -> None:
    """A secret is a string (or null to remove it), and never looks sealed."""
    errors: dict[str, str] = {}
    for key, value in driver_info.items():
        if not is_secret(key) or value is None:
            continue
        if not isinstance(value, str):
            errors[f"driver_info.{key}"] = "must be a string"
        elif secretbox.is_sealed(value):
            errors[f"driver_info.{key}"] = f"must not start with {secretbox.PREFIX}"
    if errors:
        raise InvalidInput("Invalid secret in driver_info: " + ", ".join(sorted(errors)) + ".", errors=errors)


#: The longest ``resource_class`` and ``description`` (as in Ironic).
MAX_RESOURCE_CLASS, MAX_DESCRIPTION = 80, 4096


def _check_text(field: str, value: Any, longest: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > longest:
        raise InvalidInput(f"{field} must be a string of at most {longest} characters.",
                           errors={field: f"a string of at most {longest} characters"})
    return value


def _check_instance_uuid(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return str(uuidlib.UUID(str(value)))
    except ValueError:
        raise InvalidInput("instance_uuid is not a UUID.", errors={"instance_uuid": "not a UUID"}) from None


def _validation_view(driver_info: Mapping[str, Any]) -> dict[str, Any]:
    # A stored secret was validated when it was written and is sealed now
    # (longer than any BMC password): validate the rest around it.
    return {k: ("" if secretbox.is_sealed(v) else v) for k, v in driver_info.items()}


def driver_errors(node: Node) -> dict[str, str]:
    """What is wrong with ``node``'s ``driver_info`` for its driver, field by field (empty: nothing).

    The check a create or patch makes; it never touches the hardware.
    """
    try:
        drivers.validate(node.driver, _validation_view(node.driver_info or {}))
    except InvalidInput as exc:
        return {str(k): str(v) for k, v in (exc.details.get("errors") or {"driver_info": exc.message}).items()}
    return {}


def create(session: Session, fields: Mapping[str, Any]) -> Node:
    """Enrol a node (provision state ``enroll``, power unknown) with its ``ports`` (MACs), and commit.

    :raises InvalidInput: a bad field (``UnknownDriver`` for a bad driver, a malformed MAC).
    :raises NodeNameInUse: the name is taken.
    :raises PortAddressInUse: a MAC is another node's port.
    """
    driver_name = fields["driver"]
    driver_info = _check_size("driver_info", _check_dict("driver_info", fields.get("driver_info") or {}))
    _check_secrets(driver_info)
    drivers.validate(driver_name, driver_info)
    node_uuid = fields.get("uuid")
    if node_uuid is not None:
        try:
            node_uuid = str(uuidlib.UUID(str(node_uuid)))
        except ValueError:
            raise InvalidInput("uuid is not a UUID.", errors={"uuid": "not a UUID"}) from None
    node = Node(
        uuid=node_uuid or str(uuidlib.uuid4()),
        name=_check_name(fields.get("name")),
        driver=driver_name,
        driver_info=secretbox.of(session).seal_info(driver_info),
        driver_internal_info={},
        properties=dict(_check_size("properties", _check_dict("properties", fields.get("properties") or {}))),
        provision_state=ProvisionState.ENROLL,
        maintenance=bool(fields.get("maintenance", False)),
        maintenance_reason=fields.get("maintenance_reason"),
        instance_uuid=_check_instance_uuid(fields.get("instance_uuid")),
        instance_info=dict(_check_size("instance_info", _check_dict("instance_info",
                                                                    fields.get("instance_info") or {}))),
        extra=dict(_check_size("extra", _check_dict("extra", fields.get("extra") or {}))),
        resource_class=_check_text("resource_class", fields.get("resource_class"), MAX_RESOURCE_CLASS),
        description=_check_text("description", fields.get("description"), MAX_DESCRIPTION),
    )
    addresses = macs.normalise_many(fields["ports"]) if fields.get("ports") is not None else []
    session.add(node)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise _conflict_for(session, node.name, node.uuid, node.instance_uuid) from None
    # The node's NICs, in the same transaction: all of them or no node.
    session.add_all(Port(uuid=str(uuidlib.uuid4()), node_id=node.id, address=mac) for mac in addresses)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise macs.in_use(session, addresses) from None
    ports = f" and {len(addresses)} port(s)" if addresses else ""
    history.record(session, node, "node.created", f"Node enrolled with driver {driver_name}{ports}.")
    events.emit(session, events.EventType.NODE_CREATED, node)
    session.commit()
    return node


def _conflict_for(session: Session, name: str | None, node_uuid: str, instance_uuid: str | None = None) -> Exception:
    if session.scalar(sa.select(Node.id).where(Node.uuid == node_uuid)) is not None:
        return NodeNameInUse(f"A node with UUID {node_uuid} already exists.", uuid=node_uuid)
    if name is not None and session.scalar(sa.select(Node.id).where(Node.name == name)) is not None:
        return NodeNameInUse(f"A node named {name} already exists.", name=name)
    return _patch_conflict(session, node_uuid, {"instance_uuid": instance_uuid, "name": name})


#: What nodes may be sorted by (and paginated in that order, the id breaking ties).
SORT_KEYS: Mapping[str, Any] = {
    "id": Node.id, "uuid": Node.uuid, "name": Node.name, "driver": Node.driver,
    "provision_state": Node.provision_state, "power_state": Node.power_state,
    "target_provision_state": Node.target_provision_state, "target_power_state": Node.target_power_state,
    "maintenance": Node.maintenance, "fault": Node.fault, "reservation": Node.reservation,
    "instance_uuid": Node.instance_uuid, "resource_class": Node.resource_class,
    "created_at": Node.created_at, "updated_at": Node.updated_at,
}
#: Sort keys that may be null: sorted as the empty string (first when ascending).
_NULLABLE_SORT_KEYS = frozenset({"name", "power_state", "target_provision_state", "target_power_state", "fault",
                                 "reservation", "instance_uuid", "resource_class"})


def list_nodes(
    session: Session,
    *,
    limit: int,
    marker: str | None = None,
    filters: Mapping[str, Any] | None = None,
    associated: bool | None = None,
    description_contains: str | None = None,
    sort_key: str = "id",
    sort_dir: str = "asc",
) -> list[Node]:
    """Up to ``limit`` nodes sorted by ``sort_key`` (then id), after the node ``marker``.

    ``filters`` are column values to match (None: no filter); ``associated``
    keeps the nodes with (True) or without (False) an instance;
    ``description_contains`` those whose description contains that text.

    :raises NodeNotFound: the marker names no node.
    :raises InvalidInput: an unknown sort key or direction.
    """
    if sort_key not in SORT_KEYS:
        raise InvalidInput(f"Cannot sort by {sort_key}; sort keys: {', '.join(sorted(SORT_KEYS))}.",
                           errors={"sort_key": "not a sort key"})
    if sort_dir not in ("asc", "desc"):
        raise InvalidInput(f"Invalid sort direction {sort_dir!r}: asc or desc.", errors={"sort_dir": "asc or desc"})
    query = sa.select(Node)
    for field, value in (filters or {}).items():
        if value is not None:
            query = query.where(getattr(Node, field) == value)
    if associated is not None:
        query = query.where(Node.instance_uuid.is_not(None) if associated else Node.instance_uuid.is_(None))
    if description_contains is not None:
        query = query.where(Node.description.contains(description_contains, autoescape=True))
    column = SORT_KEYS[sort_key]
    key = sa.func.coalesce(column, "") if sort_key in _NULLABLE_SORT_KEYS else column
    if marker:
        after = session.execute(sa.select(key, Node.id).where(ident_clause(marker))).one_or_none()
        if after is None:
            raise NodeNotFound(f"Marker node {marker} not found.", node=marker)
        if sort_key == "id":
            query = query.where(Node.id > after[1] if sort_dir == "asc" else Node.id < after[1])
        elif sort_dir == "asc":
            query = query.where(sa.or_(key > after[0], sa.and_(key == after[0], Node.id > after[1])))
        else:
            query = query.where(sa.or_(key < after[0], sa.and_(key == after[0], Node.id < after[1])))
    order = [key, Node.id] if sort_key != "id" else [Node.id]
    query = query.order_by(*(o.desc() if sort_dir == "desc" else o for o in order))
    return list(session.scalars(query.limit(limit)))


def _merge(current: Mapping[str, Any], patch: Mapping[str, Any], keep_masked: bool) -> dict[str, Any]:
    """RFC 7396 merge of a flat object; a masked secret keeps its stored value."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif keep_masked and is_secret(key) and value == MASK:
            continue
        else:
            merged[key] = value
    return merged


def patch(session: Session, ident: str, changes: Mapping[str, Any], if_match: Collection[str] | None = None) -> Node:
    """Apply a JSON merge patch (RFC 7396) to a node and commit.

    ``driver_info`` and ``properties`` are merged key by key (``null``
    removes a key); other fields are replaced.  Turning maintenance on or
    off is a ``node.maintenance`` callback event.  With ``if_match`` (the
    entity tags of ``If-Match``, or ``*``), only the version it names is
    changed, atomically.

    :raises NodeNotFound: no such node.
    :raises PreconditionFailed: ``if_match`` names another version.
    :raises InvalidInput: unknown or invalid fields.
    :raises TransitionInProgress: driver fields changed while a transition runs.
    :raises NodeNameInUse: the new name is taken.
    """
    unknown = sorted(set(changes) - PATCHABLE)
    if unknown:
        raise InvalidInput(
            f"Cannot patch {', '.join(unknown)}; patchable: {', '.join(sorted(PATCHABLE))}.",
            errors=dict.fromkeys(unknown, "not patchable"),
        )
    for _attempt in range(_PATCH_ATTEMPTS):
        node = session.scalars(
            sa.select(Node).where(ident_clause(ident)).execution_options(populate_existing=True)
        ).one_or_none()
        if node is None:
            raise NodeNotFound(f"Node {ident} not found.", node=ident)
        _check_precondition(node, if_match)
        values = _patched_values(node, changes, secretbox.of(session))
        if not values:
            return node
        if _apply_patch(session, node, values, changes):
            session.refresh(node)
            return node
    raise Conflict(f"Node {ident} is changing too fast to be patched; retry.")


_PATCH_ATTEMPTS = 5


def _patched_values(node: Node, changes: Mapping[str, Any], box: secretbox.SecretBox) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "name" in changes:
        values["name"] = _check_name(changes["name"])
    for field in MERGED_FIELDS:
        if field in changes:
            values[field] = _check_size(
                field, _merge(getattr(node, field) or {}, _check_dict(field, changes[field] or {}), False)
            )
    if "instance_uuid" in changes:
        values["instance_uuid"] = _check_instance_uuid(changes["instance_uuid"])
    if "resource_class" in changes:
        values["resource_class"] = _check_text("resource_class", changes["resource_class"], MAX_RESOURCE_CLASS)
    if "description" in changes:
        values["description"] = _check_text("description", changes["description"], MAX_DESCRIPTION)
    if "maintenance" in changes:
        if not isinstance(changes["maintenance"], bool):
            raise InvalidInput("maintenance must be true or false.", errors={"maintenance": "boolean"})
        values["maintenance"] = changes["maintenance"]
        # The operator takes over: a fault the conductor recorded (which the
        # power state observer would clear by itself) is forgotten.
        values["fault"] = None
        if not changes["maintenance"]:
            values["maintenance_reason"] = None
            values["fault"] = None
    if "maintenance_reason" in changes:
        values["maintenance_reason"] = changes["maintenance_reason"]
    if DRIVER_FIELDS & set(changes):
        driver_name = changes.get("driver") or node.driver
        patch_info = _check_dict("driver_info", changes.get("driver_info") or {})
        _check_secrets({k: v for k, v in patch_info.items() if v != MASK})
        driver_info = _merge(node.driver_info, patch_info, True)
        drivers.validate(driver_name, _check_size("driver_info", _validation_view(driver_info)))
        # Sealed here, so a plain secret left from before sealing is sealed too.
        values.update(driver=driver_name, driver_info=box.seal_info(driver_info))
    return values


def _apply_patch(session: Session, node: Node, values: dict[str, Any], changes: Mapping[str, Any]) -> bool:
    """Write ``values`` if the node is unchanged since it was read; commit.

    The merged JSON fields were computed from what was read, so a concurrent
    change (another patch, a conductor's step) must not be overwritten:
    ``version`` says whether the row is still the one read.  Returns False to retry.
    """
    read_version = node.version
    maintenance_before = node.maintenance
    query = sa.update(Node).where(Node.id == node.id, Node.version == read_version)
    if DRIVER_FIELDS & set(changes):
        query = query.where(Node.active_request_id.is_(None))
    try:
        if database.rowcount(session.execute(query.values(**values, updated_at=utcnow()))) != 1:
            session.rollback()
            session.refresh(node)
            if DRIVER_FIELDS & set(changes) and node.active_request_id is not None:
                raise TransitionInProgress(
                    "Cannot change the driver or driver_info while a transition is in progress.",
                    request_id=node.active_request_id,
                )
            return False
        if "maintenance" in values:
            history.record(
                session,
                node,
                "node.maintenance",
                f"Maintenance {'on' if values['maintenance'] else 'off'}"
                + (f": {values.get('maintenance_reason')}" if values.get("maintenance_reason") else "."),
            )
            if values["maintenance"] != maintenance_before:
                session.refresh(node)
                events.emit(session, events.EventType.MAINTENANCE, node)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise _patch_conflict(session, node.uuid, values) from None
    return True


def _patch_conflict(session: Session, node_uuid: str, values: Mapping[str, Any]) -> Exception:
    instance_uuid = values.get("instance_uuid")
    if instance_uuid is not None:
        holder = session.scalar(sa.select(Node.uuid).where(Node.instance_uuid == instance_uuid))
        if holder is not None and holder != node_uuid:
            return InstanceAssociated(
                f"Instance {instance_uuid} is already associated with node {holder}.",
                instance_uuid=instance_uuid, node=holder,
            )
    return NodeNameInUse(f"A node named {values.get('name')} already exists.")


def delete(session: Session, ident: str, if_match: Collection[str] | None = None) -> None:
    """Delete a node with its requests and history, and commit.

    Allowed with no transition in progress and no reservation, in the
    states of ``DELETE_ALLOWED_STATES``, or in any stable state while the
    node is in maintenance; with ``if_match``, only at the version it names.

    :raises NodeNotFound: no such node.
    :raises PreconditionFailed: ``if_match`` names another version.
    :raises TransitionInProgress: a request owns the node.
    :raises NodeNotDeletable: the provision state does not allow it.
    """
    node = find(session, ident)
    _check_precondition(node, if_match)
    query = sa.delete(Node).where(
        Node.id == node.id,
        Node.active_request_id.is_(None),
        Node.reservation.is_(None),
        sa.or_(
            Node.provision_state.in_([str(s) for s in table.DELETE_ALLOWED_STATES]),
            sa.and_(
                Node.maintenance.is_(True),
                Node.provision_state.in_([str(s) for s in table.STABLE_STATES]),
            ),
        ),
    )
    if if_match is not None:
        query = query.where(Node.version == node.version)
    if database.rowcount(session.execute(query)) == 1:
        events.emit(session, events.EventType.NODE_DELETED, node)
        session.commit()
        return
    session.rollback()
    session.refresh(node)
    _check_precondition(node, if_match)
    if node.active_request_id or node.reservation:
        raise TransitionInProgress(
            f"Node {ident} has a transition in progress.", request_id=node.active_request_id
        )
    raise NodeNotDeletable(
        f"Node {ident} cannot be deleted in provision state {node.provision_state}; "
        f"allowed: {', '.join(sorted(table.DELETE_ALLOWED_STATES))} (any stable state in maintenance).",
        provision_state=node.provision_state,
    )


_STATE_COLUMNS = (
    Node.power_state,
    Node.target_power_state,
    Node.provision_state,
    Node.target_provision_state,
    Node.last_error,
    Node.active_request_id,
    Node.updated_at,
)
# Built once: clients poll this, and building a statement costs more than
# running it on SQLite.
# The active request's step comes along (what the workflow is doing now).
_STATES = sa.select(*_STATE_COLUMNS, Request.step).outerjoin(Request, Request.id == Node.active_request_id)
_STATES_BY_UUID = _STATES.where(Node.uuid == sa.bindparam("ident"))
_STATES_BY_NAME = _STATES.where(Node.name == sa.bindparam("ident"))


def states(conn: sa.Connection, ident: str) -> sa.Row[*tuple[Any, ...]]:
    """The node's current and target states, its active request id and that request's step.

    One narrow Core query on a plain connection: clients poll this.  The
    row has the columns of ``_STATE_COLUMNS`` and ``step`` (None without an
    active request).

    :raises NodeNotFound: no such node.
    """
    if looks_like_uuid(ident):
        row = conn.execute(_STATES_BY_UUID, {"ident": str(uuidlib.UUID(ident))}).one_or_none()
    else:
        row = conn.execute(_STATES_BY_NAME, {"ident": ident}).one_or_none()
    if row is None:
        raise NodeNotFound(f"Node {ident} not found.", node=ident)
    return row


def boot_device(session: Session, ident: str) -> dict[str, Any]:
    """The boot device the conductor last set or read on node ``ident``, and when.

    This is the conductor's record, not a live read of the BMC: a change
    made behind its back shows only after the next boot device request.

    :raises NodeNotFound: no such node.
    """
    record = (find(session, ident).driver_internal_info or {}).get("boot_device") or {}
    return {key: record.get(key) for key in ("boot_device", "persistent", "observed_at", "source")}
