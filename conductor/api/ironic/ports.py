"""``/baremetal/v1/ports``: our ports (a node's NICs, by MAC) as Ironic's.

A port here is its MAC and its node; Ironic's other port fields show the
value of a port that never used them (:data:`.representation.PORT_CONSTANTS`),
and may be given at creation only with that value.
"""

from __future__ import annotations

from flask import Response, request

from conductor.api.common import session
from conductor.api.ironic import patch, representation, versions
from conductor.api.ironic.common import (
    arg_bool,
    arg_fields,
    blp,
    body_object,
    empty,
    json_body,
    list_args,
    page,
    url,
)
from conductor.exceptions import InvalidInput, NodeNotFound, NotAcceptable
from conductor.service import ports

_LIST_ARGS = ("fields", "detail", "sort_key", "sort_dir", "node", "node_uuid", "address", "portgroup")
#: Port fields a newer version added that a creation may not name before it.
_CREATE_VERSIONS = {**representation.PORT_FIELD_VERSIONS, "node_ident": 94, "name": 88}


def port_list(resource: str, detail: bool | None, node: str | None = None) -> Response:
    """A page of ports (of ``node``, if given), as Ironic lists them at ``resource``."""
    args = list_args(resource, detail, representation.PORT_LIST_FIELDS)
    node = node or request.args.get("node_uuid") or request.args.get("node")
    if request.args.get("portgroup"):
        found = []  # (no port groups here)
    else:
        found = ports.list_ports(session(), limit=args.limit, marker=request.args.get("marker"), node=node,
                                 address=request.args.get("address"), sort_key=args.sort_key, sort_dir=args.sort_dir)
    shown = [representation.port(p, args.fields) for p in found]
    return page(resource, "ports", found, shown, args.limit, _LIST_ARGS)


@blp.get("/v1/ports")
def list_ports() -> Response:
    """Ports, of one node (``node``, ``node_uuid``) or with one MAC (``address``)."""
    return port_list("ports", arg_bool("detail"))


@blp.get("/v1/ports/detail")
def list_ports_detail() -> Response:
    """Ports with every field."""
    return port_list("ports/detail", True)


@blp.post("/v1/ports")
def create_port() -> Response:
    """Add a port (a MAC) to a node."""
    body = body_object()
    allowed = {"address", "node_uuid", "node_ident", "uuid", "name", *representation.PORT_CONSTANTS}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"Additional properties are not allowed ({', '.join(map(repr, unknown))} unexpected)",
                           errors=dict.fromkeys(unknown, "unknown field"))
    for field, value in body.items():
        if value is not None and not versions.at_least(_CREATE_VERSIONS.get(field, versions.MIN_MINOR)):
            raise NotAcceptable(f"Field {field} is not acceptable in version 1.{versions.minor()}.")
    for field, constant in representation.PORT_CONSTANTS.items():
        if body.get(field) is not None and body[field] != constant:
            raise InvalidInput(f"Cannot set {field} to {body[field]!r}: this conductor keeps it {constant!r}.",
                               errors={field: "not supported"})
    if body.get("name") is not None:
        raise InvalidInput("Port names are not supported by this conductor.", errors={"name": "not supported"})
    node = body.get("node_uuid") or body.get("node_ident")
    if not node or "address" not in body:
        raise InvalidInput("'address' and 'node_uuid' are required properties",
                           errors={"node_uuid": "required", "address": "required"})
    try:
        port = ports.create(session(), str(node), body["address"], body.get("uuid"))
    except NodeNotFound as exc:
        # (Ironic: 400, the node being an argument of the creation, not the resource.)
        raise InvalidInput(exc.message, errors={"node_uuid": "no such node"}) from None
    return json_body(201, representation.port(port), {"Location": url("ports", port.uuid)})


@blp.get("/v1/ports/<port_uuid>")
def show_port(port_uuid: str) -> Response:
    """A port, with ``fields`` if given."""
    return json_body(200, representation.port(ports.get(session(), port_uuid), arg_fields()))


@blp.patch("/v1/ports/<port_uuid>")
def patch_port(port_uuid: str) -> Response:
    """A JSON Patch of a port that changes nothing; a port's MAC or node cannot change (400)."""
    port = ports.get(session(), port_uuid)
    document = {"address": port.address, "node_uuid": port.node.uuid, **representation.PORT_CONSTANTS}
    if patch.apply(document, request.get_json(force=True)) != document:
        raise InvalidInput("Changing a port is not supported by this conductor: delete it and create another.",
                           errors={"json": "ports cannot change"})
    return json_body(200, representation.port(port))


@blp.delete("/v1/ports/<port_uuid>")
def delete_port(port_uuid: str) -> Response:
    """Delete a port (not while its node has a transition in progress)."""
    ports.delete(session(), port_uuid)
    return empty(204)
