"""Version discovery: ``GET /baremetal/`` and ``GET /baremetal/v1`` (no token needed, as in Ironic)."""

from __future__ import annotations

from typing import Any

from flask import Response

from conductor.api.ironic import versions
from conductor.api.ironic.common import blp, json_body, links, public_url


def version_document() -> dict[str, Any]:
    """The one major version served, with its range of microversions."""
    return {
        "id": "v1",
        "links": [{"href": f"{public_url()}/v1/", "rel": "self"}],
        "status": "CURRENT",
        "min_version": versions.MIN_VERSION,
        "version": versions.MAX_VERSION,
    }


@blp.get("")
def root() -> Response:
    """Ironic's root document: the versions served (what keystoneauth discovers)."""
    return json_body(200, {
        "name": "OpenStack Ironic API",
        "description": "Ironic-compatible API of the bare-metal conductor (docs/ironic-api.md); "
                       "its own API is at /v1.",
        "default_version": version_document(),
        "versions": [version_document()],
    })


@blp.get("/v1")
def v1() -> Response:
    """The v1 document: its media type, its resources, its version."""
    body: dict[str, Any] = {
        "id": "v1",
        "links": [
            {"href": f"{public_url()}/v1/", "rel": "self"},
            {"href": "https://docs.openstack.org/ironic/latest/contributor/webapi.html", "rel": "describedby",
             "type": "text/html"},
        ],
        "media_types": {"base": "application/json", "type": "application/vnd.openstack.ironic.v1+json"},
        "nodes": links("nodes", ""),
        "ports": links("ports", ""),
        "drivers": links("drivers", ""),
        "version": version_document(),
    }
    if versions.at_least(versions.CONDUCTORS):
        body["conductors"] = links("conductors", "")
    return json_body(200, body)
