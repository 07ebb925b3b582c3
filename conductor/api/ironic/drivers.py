"""``/baremetal/v1/drivers`` and ``/baremetal/v1/conductors``: our drivers as Ironic's hardware
types, our conductors as Ironic's (every conductor runs every driver)."""

from __future__ import annotations

from typing import Any

from flask import Response, request

from conductor.api.common import context
from conductor.api.ironic import mapping, representation, versions
from conductor.api.ironic.common import (
    arg_bool,
    arg_fields,
    arg_limit,
    blp,
    json_body,
    links,
    next_url,
    return_fields,
)
from conductor.drivers import get as get_driver
from conductor.engine.conductors import list_conductors
from conductor.exceptions import InvalidInput, NotFound


def _conductors() -> list[dict[str, Any]]:
    ctx = context()
    return list_conductors(ctx.db, ctx.settings.heartbeat_timeout)


def _driver(name: str, hosts: list[str], detail: bool, fields: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "hosts": hosts, "links": links("drivers", name)}
    if versions.at_least(versions.STATES_LINKS):
        body["properties"] = links("drivers", f"{name}/properties")
    if versions.at_least(versions.DYNAMIC_DRIVERS):
        body["type"] = "dynamic"
        if detail:
            interfaces = mapping.driver_interfaces(mapping.hardware_types()[name])
            hidden = set()
            if not versions.at_least(33):
                hidden.add("storage")
            if not versions.at_least(versions.RESCUE_INTERFACE):
                hidden.add("rescue")
            if not versions.at_least(versions.BIOS_INTERFACE):
                hidden.add("bios")
            body.update({k: v for k, v in interfaces.items() if k.split("_")[1] not in hidden})
    if fields is not None:
        unknown = sorted(set(fields) - set(body))
        if unknown:
            raise InvalidInput(f'Field(s) "{", ".join(unknown)}" are not valid',
                               errors=dict.fromkeys(unknown, "unknown"))
        body = {k: v for k, v in body.items() if k in fields or k == "links"}
    return body


def _fields_for_drivers() -> list[str] | None:
    if request.args.get("fields") is not None:
        versions.require(versions.DRIVER_FIELDS, "the fields argument of drivers")
    return arg_fields()


@blp.get("/v1/drivers")
def list_drivers() -> Response:
    """The hardware types served, with the conductors running them."""
    detail = arg_bool("detail")
    kind = request.args.get("type")
    if detail is not None or kind is not None:
        versions.require(versions.DYNAMIC_DRIVERS, "the detail and type arguments of drivers")
    if kind not in (None, "classic", "dynamic"):
        raise InvalidInput('"type" filter must be one of "classic" or "dynamic", if specified.',
                           errors={"type": "classic or dynamic"})
    fields = _fields_for_drivers()
    if fields is not None and detail:
        raise InvalidInput("Can not specify ?detail=True and fields in the same request.",
                           errors={"detail": "not with fields"})
    hosts = sorted(c["name"] for c in _conductors() if c["alive"])
    served = [] if kind == "classic" else sorted(mapping.hardware_types())
    return json_body(200, {"drivers": [_driver(name, hosts, bool(detail), fields) for name in served]})


@blp.get("/v1/drivers/<name>")
def show_driver(name: str) -> Response:
    """A hardware type, with its interfaces."""
    if name not in mapping.hardware_types():
        raise NotFound(f"Could not find the following driver(s) or hardware type(s): {name}.")
    hosts = sorted(c["name"] for c in _conductors() if c["alive"])
    return json_body(200, _driver(name, hosts, True, _fields_for_drivers()))


@blp.get("/v1/drivers/<name>/properties")
def driver_properties(name: str) -> Response:
    """The ``driver_info`` fields a hardware type reads, with their descriptions."""
    if name not in mapping.hardware_types():
        raise NotFound(f"Could not find the following driver(s) or hardware type(s): {name}.")
    fields = get_driver(mapping.hardware_types()[name]).fields()
    return json_body(200, {key: field.description + (" Required." if field.required else "")
                           for key, field in sorted(fields.items())})


@blp.get("/v1/conductors")
def list_conductors_view() -> Response:
    """The conductors (1.49), with ``alive`` from their heartbeat."""
    versions.require_endpoint(versions.CONDUCTORS)
    fields = return_fields(arg_fields(), arg_bool("detail"), representation.CONDUCTOR_LIST_FIELDS)
    limit = arg_limit()
    records = sorted(_conductors(), key=lambda c: c["name"])
    marker = request.args.get("marker")
    if marker:
        records = [c for c in records if c["name"] > marker]
    page = records[:limit]
    body: dict[str, Any] = {"conductors": [representation.conductor(c, fields) for c in page]}
    following = next_url("conductors", len(page), limit, page[-1]["name"] if page else None, ("fields", "detail"))
    if following:
        body["next"] = following
    return json_body(200, body)


@blp.get("/v1/conductors/<hostname>")
def show_conductor(hostname: str) -> Response:
    """A conductor by its name."""
    versions.require_endpoint(versions.CONDUCTORS)
    for record in _conductors():
        if record["name"] == hostname:
            return json_body(200, representation.conductor(record, arg_fields()))
    raise NotFound(f"Conductor {hostname} could not be found.")
