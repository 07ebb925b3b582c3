"""``/baremetal/v1/nodes``: enrol, list, show, JSON Patch, delete; a node's ports, traits and VIFs.

Each view parses Ironic's arguments, calls the service the ``/v1`` views
call (conductor/service/nodes.py) and shows the result as Ironic does
(:mod:`.representation`).
"""

from __future__ import annotations

from typing import Any

from flask import Response, request
from sqlalchemy.orm import Session

from conductor.api.common import session
from conductor.api.ironic import mapping, patch, representation, versions
from conductor.api.ironic.common import (
    arg_bool,
    arg_fields,
    blp,
    body_object,
    boolean,
    empty,
    json_body,
    list_args,
    page,
    public_url,
    url,
)
from conductor.api.ironic.ports import port_list
from conductor.exceptions import InvalidInput, NodeNotFound, NotAcceptable
from conductor.fsm.states import ProvisionState
from conductor.models import Node
from conductor.service import nodes

#: What a node is created with (Ironic's node schema, less the fields we keep no data for).
CREATE_FIELDS = frozenset({"uuid", "name", "driver", "driver_info", "properties", "instance_info", "instance_uuid",
                           "extra", "resource_class", "description", "maintenance", *mapping.CHOSEN_INTERFACES})
#: Ironic's node fields a node may be created with if they have the one value we keep.
CREATE_CONSTANTS = frozenset({*patch.CONSTANT_FIELDS, "console_enabled", "boot_mode", "secure_boot",
                              *patch.FIXED_INTERFACES})


def find(db: Session, ident: str) -> Node:
    """The node named by UUID or name ``ident`` (before 1.91 a ``.json`` suffix may follow it).

    :raises InvalidInput: a name before version 1.5.
    :raises NodeNotFound: no such node.
    """
    if not nodes.looks_like_uuid(ident) and not versions.at_least(versions.NODE_NAME):
        raise InvalidInput(f"Expected a UUID but received {ident}.", errors={"node": "a UUID"})
    try:
        return nodes.find(db, ident)
    except NodeNotFound:
        if ident.endswith(".json") and len(ident) > 5:
            return nodes.find(db, ident[:-5])
        raise


# -- list ---------------------------------------------------------------------------------------------------------

#: Filters on Ironic fields that are constants here: they keep every node or none.
_CONSTANT_FILTERS = {"conductor_group": "", "owner": None, "lessee": None, "project": None, "chassis_uuid": None,
                     "retired": False, "sharded": False, "shard": None, "parent_node": None}
#: Query arguments a ``next`` link carries over.
_LIST_ARGS = ("fields", "detail", "sort_key", "sort_dir", "provision_state", "maintenance", "driver", "associated",
              "resource_class", "instance_uuid", "fault", "description_contains", *_CONSTANT_FILTERS)


def _filters() -> tuple[dict[str, Any], bool]:
    """The list's column filters and whether some filter excludes every node."""
    args = request.args
    columns: dict[str, Any] = {}
    state = args.get("provision_state")
    if state is not None:
        versions.require(versions.PROVISION_STATE_FILTER, "filtering by provision_state")
        if state not in {str(s) for s in ProvisionState}:
            raise InvalidInput(f'Provision state "{state}" is not valid', errors={"provision_state": "not a state"})
        columns["provision_state"] = state
    none = False
    driver = args.get("driver")
    if driver is not None:
        versions.require(versions.DRIVER_FILTER, "filtering by driver")
        served = mapping.hardware_types()
        none = driver not in served
        columns["driver"] = served.get(driver)
    if args.get("resource_class") is not None:
        versions.require(versions.RESOURCE_CLASS, "filtering by resource_class")
        columns["resource_class"] = args["resource_class"]
    if args.get("fault") is not None:
        versions.require(versions.FAULT, "filtering by fault")
        columns["fault"] = args["fault"]
    if args.get("instance_uuid") is not None:
        columns["instance_uuid"] = args["instance_uuid"]
    maintenance = arg_bool("maintenance")
    if maintenance is not None:
        columns["maintenance"] = maintenance
    for name, constant in _CONSTANT_FILTERS.items():
        if name in args:
            value = arg_bool(name) if isinstance(constant, bool) else args[name]
            none = none or value != constant
    return columns, none


def _list(resource: str, detail: bool | None) -> Response:
    args = list_args(resource, detail, representation.NODE_LIST_FIELDS)
    if not representation.node_allowed(args.sort_key):
        raise NotAcceptable(f"Field {args.sort_key} is not acceptable in version 1.{versions.minor()}.")
    columns, none = _filters()
    found = [] if none else nodes.list_nodes(
        session(), limit=args.limit, marker=request.args.get("marker"), filters=columns,
        associated=arg_bool("associated"), description_contains=request.args.get("description_contains"),
        sort_key=args.sort_key, sort_dir=args.sort_dir,
    )
    minor, base = versions.minor(), public_url()
    shown = [representation.node(n, args.fields, minor=minor, base=base) for n in found]
    return page(resource, "nodes", found, shown, args.limit, _LIST_ARGS)


@blp.get("/v1/nodes")
def list_nodes() -> Response:
    """Nodes, filtered, sorted and paginated as in Ironic."""
    return _list("nodes", arg_bool("detail"))


@blp.get("/v1/nodes/detail")
def list_nodes_detail() -> Response:
    """Nodes with every field."""
    return _list("nodes/detail", True)


# -- create, show, patch, delete --------------------------------------------------------------------------------


def _creation(body: dict[str, Any]) -> dict[str, Any]:
    """What :func:`conductor.service.nodes.create` is given for Ironic's node ``body``."""
    unknown = sorted(set(body) - CREATE_FIELDS - CREATE_CONSTANTS)
    if unknown:
        raise InvalidInput(f"Additional properties are not allowed ({', '.join(map(repr, unknown))} "
                           "unexpected)", errors=dict.fromkeys(unknown, "unknown field"))
    for field, value in body.items():
        if value is not None and not representation.node_allowed(field):
            raise NotAcceptable(f"Field {field} is not acceptable in version 1.{versions.minor()}.")
    if "driver" not in body:
        raise InvalidInput("'driver' is a required property", errors={"driver": "required"})
    ours = mapping.driver_to_ours(body["driver"])
    if not isinstance(body.get("driver_info") or {}, dict):
        raise InvalidInput("driver_info must be an object.", errors={"driver_info": "must be an object"})
    driver_info = dict(body.get("driver_info") or {})
    for field, key in mapping.CHOSEN_INTERFACES.items():
        # (The interface it would have anyway is not written down: a driver without a choice takes that.)
        if body.get(field) is not None and body[field] != mapping.interfaces(ours, driver_info)[field]:
            driver_info[key] = body[field]
    shown = {**representation.NODE_CONSTANTS, **mapping.interfaces(ours, driver_info)}
    for field in sorted(CREATE_CONSTANTS & set(body)):
        if body[field] is not None and body[field] != shown[field]:
            raise InvalidInput(f"Cannot set {field} to {body[field]!r}: this conductor keeps it {shown[field]!r}.",
                               errors={field: "not supported"})
    fields = {k: body.get(k) for k in ("uuid", "name", "properties", "instance_info", "instance_uuid", "extra",
                                       "resource_class", "description")}
    fields.update(driver=ours, driver_info=driver_info)
    if body.get("maintenance") is not None:
        fields["maintenance"] = boolean("maintenance", body["maintenance"])
    return fields


@blp.post("/v1/nodes")
def create_node() -> Response:
    """Enrol a node (``enroll``: Ironic's default since 1.11, the only start here)."""
    # Before 1.11 Ironic put new nodes straight into available, skipping verification.
    versions.require(versions.ENROLL_STATE, "creating a node (nodes start in enroll here)")
    node = nodes.create(session(), _creation(body_object()))
    return json_body(201, representation.node(node), {"Location": url("nodes", node.uuid)})


@blp.get("/v1/nodes/<ident>")
def show_node(ident: str) -> Response:
    """A node by UUID or name, with ``fields`` if given."""
    return json_body(200, representation.node(find(session(), ident), arg_fields()))


@blp.patch("/v1/nodes/<ident>")
def patch_node(ident: str) -> Response:
    """Change a node with a JSON Patch (RFC 6902)."""
    db = session()
    node = find(db, ident)
    changes = patch.node_changes(node, request.get_json(force=True))
    if changes:
        node = nodes.patch(db, node.uuid, changes)
    return json_body(200, representation.node(node))


@blp.delete("/v1/nodes/<ident>")
def delete_node(ident: str) -> Response:
    """Delete a node with no transition in progress (409 otherwise)."""
    db = session()
    nodes.delete(db, find(db, ident).uuid)
    return empty(204)


# -- what hangs off a node --------------------------------------------------------------------------------------


@blp.get("/v1/nodes/<ident>/ports")
def node_ports(ident: str) -> Response:
    """The node's ports."""
    return port_list(f"nodes/{ident}/ports", arg_bool("detail"), node=find(session(), ident).uuid)


@blp.get("/v1/nodes/<ident>/ports/detail")
def node_ports_detail(ident: str) -> Response:
    """The node's ports, every field."""
    return port_list(f"nodes/{ident}/ports/detail", True, node=find(session(), ident).uuid)


@blp.get("/v1/nodes/<ident>/traits")
def node_traits(ident: str) -> Response:
    """A node's traits: none here (1.37)."""
    versions.require_endpoint(versions.TRAITS)
    find(session(), ident)
    return json_body(200, {"traits": []})


@blp.get("/v1/nodes/<ident>/vifs")
def node_vifs(ident: str) -> Response:
    """The VIFs attached to a node: none here (1.28)."""
    versions.require_endpoint(versions.VIFS)
    find(session(), ident)
    return json_body(200, {"vifs": []})
