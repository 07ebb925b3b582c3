"""``/v1/ports``: a node's network interfaces (MAC addresses) for network boot."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from conductor.api import schemas
from conductor.api.common import Blueprint, next_link, session
from conductor.models import Port
from conductor.service import ports

blp = Blueprint("ports", __name__, url_prefix="/v1/ports", description="Ports: nodes' NICs, by MAC address")


@blp.route("")
class Ports(MethodView):
    @blp.arguments(schemas.PortQuery, location="query")
    @blp.response(200, schemas.PortList)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List ports in creation order, of one node or with one MAC."""
        limit, marker = args.pop("limit"), args.pop("marker")
        items = ports.list_ports(session(), limit=limit, marker=marker, **args)
        return {"ports": items, "next": next_link(items, limit, items[-1].uuid if items else None)}

    @blp.arguments(schemas.PortCreate, example={"node": "rack1-u07", "address": "52:54:00:12:34:08"})
    @blp.response(201, schemas.Port)
    def post(self, body: dict[str, Any]) -> tuple[Port, dict[str, str]]:
        """Add a port (a MAC address) to a node; 409 if the MAC is another port's."""
        port = ports.create(session(), body["node"], body["address"])
        return port, {"Location": f"/v1/ports/{port.uuid}"}


@blp.route("/<port_uuid>")
class PortItem(MethodView):
    @blp.response(200, schemas.Port)
    def get(self, port_uuid: str) -> Port:
        """Show a port."""
        return ports.get(session(), port_uuid)

    @blp.response(204)
    def delete(self, port_uuid: str) -> None:
        """Delete a port (not while its node has a transition in progress)."""
        ports.delete(session(), port_uuid)
