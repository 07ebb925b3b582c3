"""``conductor port ...``: a node's NICs, by MAC address."""

from __future__ import annotations

from typing import Any

import click

from conductor.cli.base import Obj, pass_obj

PORT_KEYS = ["uuid", "node_uuid", "address", "created_at"]


@click.group()
def port() -> None:
    """Ports: the MAC addresses a node network-boots from."""


@port.command("create")
@click.argument("node_id", metavar="NODE")
@click.argument("address", metavar="MAC")
@pass_obj
def create(obj: Obj, node_id: str, address: str) -> None:
    """Add a port with MAC address MAC to NODE (UUID or name)."""
    obj.out.item(obj.client.call("POST", "/v1/ports", json={"node": node_id, "address": address}), PORT_KEYS)


@port.command("list")
@click.option("--node", help="Only this node's ports (UUID or name).")
@click.option("--address", help="Only the port with this MAC.")
@pass_obj
def list_ports(obj: Obj, node: str | None, address: str | None) -> None:
    """List ports (following pages)."""
    params: dict[str, Any] = {k: v for k, v in {"node": node, "address": address}.items() if v is not None}
    obj.out.table(obj.client.every("/v1/ports", "ports", params), PORT_KEYS)


@port.command("show")
@click.argument("port_id", metavar="PORT")
@pass_obj
def show(obj: Obj, port_id: str) -> None:
    """Show a port (UUID)."""
    obj.out.item(obj.client.call("GET", f"/v1/ports/{port_id}"), PORT_KEYS)


@port.command("delete")
@click.argument("port_id", metavar="PORT")
@pass_obj
def delete(obj: Obj, port_id: str) -> None:
    """Delete a port (UUID)."""
    obj.client.call("DELETE", f"/v1/ports/{port_id}")
    click.echo(f"Deleted port {port_id}.", err=obj.out.machine)
