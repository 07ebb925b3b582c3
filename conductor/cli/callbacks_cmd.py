"""``conductor callbacks ...`` (signing secret) and ``conductor subscription ...``."""

from __future__ import annotations

import click

from conductor.cli.base import Obj, pass_obj

SECRET_KEYS = ["client", "exists", "fingerprint", "created_at", "rotated_at",
               "previous_fingerprint", "previous_expires_at"]
SUBSCRIPTION_KEYS = ["id", "url", "events", "nodes", "active", "disabled_reason", "created_at"]


@click.group()
def callbacks() -> None:
    """The secret that signs your callbacks."""


@callbacks.command("secret")
@pass_obj
def secret(obj: Obj) -> None:
    """Show the signing secret's fingerprint and dates (never the secret)."""
    obj.out.item(obj.client.call("GET", "/v1/callbacks/secret"), SECRET_KEYS)


@callbacks.command("rotate-secret")
@pass_obj
def rotate_secret(obj: Obj) -> None:
    """Make a new signing secret and print it, this once.

    The previous secret keeps signing (both signatures are sent) for
    callback_secret_overlap seconds, so receivers can switch without a gap.
    """
    rotated = obj.client.call("POST", "/v1/callbacks/secret/rotate")
    if obj.out.machine:
        obj.out.item(rotated)
        return
    click.echo(rotated["secret"])
    click.echo("Store this secret now: it is not shown again.", err=True)
    if rotated.get("previous_expires_at"):
        click.echo(f"The previous secret also signs until {rotated['previous_expires_at']}.", err=True)


@click.group()
def subscription() -> None:
    """Callback subscriptions: POST events to a URL as they happen."""


@subscription.command("create")
@click.argument("url")
@click.option("--event", "-e", "event_types", multiple=True, required=True,
              help="Event type (repeat): request.finished, node.power_state.changed, "
                   "node.provision_state.changed, node.maintenance; * is a wildcard.")
@click.option("--node", "-n", "node_idents", multiple=True, help="Only events of this node (repeat).")
@pass_obj
def create(obj: Obj, url: str, event_types: tuple[str, ...], node_idents: tuple[str, ...]) -> None:
    """Subscribe URL to events."""
    body = {"url": url, "events": list(event_types), "nodes": list(node_idents)}
    obj.out.item(obj.client.call("POST", "/v1/subscriptions", json=body), SUBSCRIPTION_KEYS)


@subscription.command("list")
@pass_obj
def list_subscriptions(obj: Obj) -> None:
    """List the subscriptions."""
    page = obj.client.call("GET", "/v1/subscriptions")
    obj.out.table(page["subscriptions"], ["id", "url", "events", "nodes", "active"], raw=page["subscriptions"])


@subscription.command("show")
@click.argument("subscription_id")
@pass_obj
def show(obj: Obj, subscription_id: str) -> None:
    """Show a subscription."""
    obj.out.item(obj.client.call("GET", f"/v1/subscriptions/{subscription_id}"), SUBSCRIPTION_KEYS)


@subscription.command("delete")
@click.argument("subscription_id")
@pass_obj
def delete(obj: Obj, subscription_id: str) -> None:
    """Delete a subscription (its pending deliveries fail)."""
    obj.client.call("DELETE", f"/v1/subscriptions/{subscription_id}")
    click.echo(f"Deleted {subscription_id}.", err=obj.out.machine)


@subscription.command("deliveries")
@click.argument("subscription_id")
@click.option("--limit", type=int, default=20, show_default=True)
@pass_obj
def deliveries(obj: Obj, subscription_id: str, limit: int) -> None:
    """The subscription's latest deliveries and their state."""
    page = obj.client.call("GET", f"/v1/subscriptions/{subscription_id}/deliveries", params={"limit": limit})
    obj.out.table(page["deliveries"],
                  ["id", "event_type", "state", "attempts", "last_status", "next_at", "last_error"],
                  raw=page["deliveries"])
