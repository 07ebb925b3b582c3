"""``conductor request ...`` and ``conductor conductors``."""

from __future__ import annotations

from typing import Any

import click

from conductor.cli.base import REQUEST_KEYS, Obj, finish_request, pass_obj


@click.group()
def request() -> None:
    """Asynchronous requests: show, list, wait for and cancel them."""


@request.command("show")
@click.argument("request_id")
@click.option("--wait", is_flag=True, help="Wait for it to finish, showing each change; exit 1 if it fails.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds (exit 2).")
@pass_obj
def show(obj: Obj, request_id: str, wait: bool, timeout: float | None) -> None:
    """Show a request."""
    found = obj.client.call("GET", f"/v1/requests/{request_id}")
    if wait:
        finish_request(obj, found, True, timeout)
    else:
        obj.out.item(found, REQUEST_KEYS)


@request.command("list")
@click.option("--node")
@click.option("--state")
@click.option("--kind", type=click.Choice(["power", "provision"]))
@click.option("--limit", type=int, default=50, show_default=True)
@pass_obj
def list_requests(obj: Obj, node: str | None, state: str | None, kind: str | None, limit: int) -> None:
    """List requests, newest first."""
    params: dict[str, Any] = {"node": node, "state": state, "kind": kind, "limit": limit}
    page = obj.client.call("GET", "/v1/requests", params={k: v for k, v in params.items() if v is not None})
    obj.out.table(page["requests"], ["id", "node_uuid", "kind", "target", "state", "created_at"],
                  raw=page["requests"])


@request.command("cancel")
@click.argument("request_id")
@pass_obj
def cancel(obj: Obj, request_id: str) -> None:
    """Cancel a queued request (or abort a waiting one)."""
    obj.out.item(obj.client.call("DELETE", f"/v1/requests/{request_id}"), REQUEST_KEYS)


@click.command("conductors")
@pass_obj
def conductors(obj: Obj) -> None:
    """List the conductors and whether they are alive."""
    page = obj.client.call("GET", "/v1/conductors")
    obj.out.table(page["conductors"], ["name", "hostname", "pid", "alive", "heartbeat_at"],
                  raw=page["conductors"])
