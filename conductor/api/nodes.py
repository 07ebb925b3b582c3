"""``/v1/nodes``: enrol, list, show, patch, delete; states, state changes, history."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask.views import MethodView

from conductor.api import admission, schemas
from conductor.api.common import (
    Blueprint,
    context,
    etag_header,
    if_match,
    next_link,
    not_modified,
    session,
    tagged_json,
)
from conductor.models import Node, Request
from conductor.service import agent, history, nodes, submit

blp = Blueprint("nodes", __name__, url_prefix="/v1/nodes", description="Nodes and their state changes")


def _accepted(submitted: submit.Submitted) -> tuple[Request, dict[str, str]]:
    """The 202 of a state change: the request (dumped by ``RequestOut``) and where to poll it."""
    return submitted.request, {"Location": f"/v1/requests/{submitted.request.id}"}


@blp.route("")
class Nodes(MethodView):
    @blp.arguments(schemas.NodeQuery, location="query")
    @blp.response(200, schemas.NodeList)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List nodes, filtered, in pages of ``limit`` after ``marker``."""
        limit, marker = args.pop("limit"), args.pop("marker")
        items = nodes.list_nodes(session(), limit=limit, marker=marker, filters=args)
        return {"nodes": items, "next": next_link(items, limit, items[-1].uuid if items else None)}

    @blp.arguments(schemas.NodeCreate, example={
        "name": "rack1-u07", "driver": "ipmi",
        "driver_info": {"ipmi_address": "10.0.0.7", "ipmi_username": "admin", "ipmi_password": "secret"},
        "properties": {"cpus": 16, "memory_mb": 65536}, "ports": ["52:54:00:12:34:07"]})
    @blp.response(201, schemas.Node)
    def post(self, body: dict[str, Any]) -> tuple[Node, dict[str, str]]:
        """Enrol a node (provision state ``enroll``)."""
        node = nodes.create(session(), body)
        return node, {"Location": f"/v1/nodes/{node.uuid}"}


_ETAG_HEADER = {"ETag": {"description": "The node's version (an entity tag): send it back as If-Match",
                          "schema": {"type": "string"}}}
_IF_MATCH = {"in": "header", "name": "If-Match", "required": False, "schema": {"type": "string"},
             "description": "Only if the node is still at this version (an ETag of a GET or PATCH, or *); "
                            "else 412 precondition_failed and nothing changes. Without it the write is "
                            "unconditional."}


@blp.route("/<ident>")
class NodeItem(MethodView):
    @blp.response(200, schemas.Node, headers=_ETAG_HEADER)
    def get(self, ident: str) -> tuple[Node, dict[str, str]] | Response:
        """Show a node by UUID or name (with its ETag)."""
        node = nodes.find(session(), ident)
        tag = nodes.etag(node)
        return not_modified(tag) or (node, etag_header(tag))

    @blp.arguments(schemas.NodePatch, example={"maintenance": True, "maintenance_reason": "disk swap"})
    @blp.response(200, schemas.Node, headers=_ETAG_HEADER)
    @blp.doc(parameters=[_IF_MATCH])
    def patch(self, changes: dict[str, Any], ident: str) -> tuple[Node, dict[str, str]]:
        """Change a node with a JSON merge patch (RFC 7396); with If-Match, only the version it names."""
        node = nodes.patch(session(), ident, changes, if_match())
        return node, etag_header(nodes.etag(node))

    @blp.response(204)
    @blp.doc(parameters=[_IF_MATCH])
    def delete(self, ident: str) -> None:
        """Delete a node with no transition in progress; with If-Match, only the version it names."""
        nodes.delete(session(), ident, if_match())


@blp.route("/<ident>/states")
class NodeStates(MethodView):
    @blp.response(200, schemas.NodeStates)
    def get(self, ident: str) -> Response:
        """The node's current and target states and its active request."""
        # The polling hot path: a plain connection, and the JSON built by
        # hand (schemas.node_states_json, held equal to the schema's dump);
        # its ETag is a digest of that body, 304 to an If-None-Match naming it.
        with context().db.engine.connect() as conn:
            row = nodes.states(conn, ident)
        return tagged_json(schemas.node_states_json(row))


@blp.route("/<ident>/states/power")
class PowerState(MethodView):
    @blp.arguments(schemas.PowerChange, example={"target": "power on"})
    @blp.response(202, schemas.RequestOut)
    def put(self, body: dict[str, Any], ident: str) -> tuple[Request, dict[str, str]]:
        """Ask for a power change; answers at once with the request to poll."""
        return _accepted(
            submit.submit_power(
                context(),
                ident,
                body["target"],
                body.get("callback_url"),
                client=admission.client(),
                idempotency_key=admission.idempotency_key(),
            )
        )


@blp.route("/<ident>/states/provision")
class ProvisionState(MethodView):
    @blp.arguments(schemas.ProvisionChange, example={
        "target": "active", "image_source": "centos-9", "configdrive": {"meta_data": {"hostname": "rack1-u07"}}})
    @blp.response(202, schemas.RequestOut)
    def put(self, body: dict[str, Any], ident: str) -> tuple[Request, dict[str, str]]:
        """Ask for a provision state change; ``abort`` acts at once."""
        target = body.pop("target")
        callback_url = body.pop("callback_url", None)
        return _accepted(
            submit.submit_provision(
                context(),
                ident,
                target,
                body,
                callback_url,
                client=admission.client(),
                idempotency_key=admission.idempotency_key(),
            )
        )


@blp.route("/<ident>/management/boot_device")
class BootDevice(MethodView):
    @blp.response(200, schemas.BootDevice)
    def get(self, ident: str) -> dict[str, Any]:
        """The boot device the conductor last set or read, and when (not a live read of the BMC)."""
        return nodes.boot_device(session(), ident)

    @blp.arguments(schemas.BootDeviceChange, example={"boot_device": "pxe", "persistent": False})
    @blp.response(202, schemas.RequestOut)
    def put(self, body: dict[str, Any], ident: str) -> tuple[Request, dict[str, str]]:
        """Ask to set the boot device (a ``management`` request); answers at once with the request to poll."""
        return _accepted(
            submit.submit_boot_device(
                context(),
                ident,
                body["boot_device"],
                body["persistent"],
                body.get("callback_url"),
                client=admission.client(),
                idempotency_key=admission.idempotency_key(),
            )
        )


@blp.route("/<ident>/history")
class NodeHistory(MethodView):
    @blp.arguments(schemas.HistoryQuery, location="query")
    @blp.response(200, schemas.HistoryList)
    def get(self, args: dict[str, Any], ident: str) -> dict[str, Any]:
        """The node's history, newest first, in pages of ``limit`` before ``marker``."""
        node = nodes.find(session(), ident)
        entries = history.list_entries(session(), node, args["limit"], args["marker"])
        return {"history": entries, "next": next_link(entries, args["limit"], entries[-1].id if entries else None)}


@blp.route("/<ident>/heartbeat")
class Heartbeat(MethodView):
    @blp.arguments(schemas.Heartbeat, example={"agent_version": "1.0"})
    @blp.response(200, schemas.HeartbeatAnswer)
    @blp.doc(security=[{"agentToken": []}])
    def post(self, body: dict[str, Any], ident: str) -> dict[str, Any]:
        """The node's agent calls back (header ``X-Agent-Token``, not a bearer token).

        Answered with the command to run; a ``command_result`` ends the
        node's wait (once: 409 ``node_not_waiting`` afterwards).
        """
        return agent.heartbeat(context(), ident, request.headers.get("X-Agent-Token"), body)
