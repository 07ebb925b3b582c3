"""The ``conductor`` command: client commands over HTTP, and the servers.

Client commands (``node``, ``request``, ``conductors``, ``token``,
``throttle``, ``subscription``, ``callbacks``) talk to the API at ``--url``
/ ``$CONDUCTOR_URL`` and work against a remote deployment.  They
authenticate with ``--token`` / ``$CONDUCTOR_TOKEN``, else, when the URL is
the one a local ``conductor up`` serves, with the admin token it wrote into
the data directory.  Server commands (``up``, ``api``, ``worker``,
``callback-worker``, ``db``) import the server side lazily so that the
client starts fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from conductor.cli.client import Client, default_url, progress_line, resolve_token

# Imports inside functions: most commands are thin API clients, so each command
# imports the server side it needs (settings, database, Flask, RQ, workers) when
# it runs; `conductor --help` and the client commands stay quick to start.


class Output:
    """Where results go: JSON (``--json``) or a short human form."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def item(self, data: Any, keys: list[str] | None = None) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2))
            return
        width = max((len(k) for k in (keys or data)), default=0)
        for key in keys or list(data):
            value = data.get(key)
            if isinstance(value, dict | list):
                value = json.dumps(value)
            click.echo(f"{key:<{width}}  {'' if value is None else value}")

    def table(self, rows: list[dict[str, Any]], columns: list[str], raw: Any = None) -> None:
        if self.as_json:
            click.echo(json.dumps(raw if raw is not None else rows, indent=2))
            return
        cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
        click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in cells:
            click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


class Obj:
    """What client commands share: the API client and the output."""

    def __init__(self, url: str, as_json: bool, token: str | None = None) -> None:
        self.url = url
        self.token = token
        self.out = Output(as_json)
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, token=resolve_token(self.url, self.token))
        return self._client


pass_obj = click.make_pass_decorator(Obj)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", default=default_url, show_default="$CONDUCTOR_URL or http://127.0.0.1:6385",
              help="URL of the conductor API.")
@click.option("--token", envvar="CONDUCTOR_TOKEN", default=None, show_envvar=True,
              help="API token. Default: the local admin token of `conductor up` when --url is its URL.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.version_option(package_name="baremetal-conductor")
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None, as_json: bool) -> None:
    """Power and provision bare-metal nodes through their BMCs, asynchronously."""
    ctx.obj = Obj(url, as_json, token)


def finish_request(obj: Obj, request: dict[str, Any], wait: bool, timeout: float | None) -> None:
    """Print an accepted request, or wait for it and exit non-zero if it fails."""
    if not wait:
        obj.out.item(request, ["id", "node_uuid", "kind", "target", "state"])
        return
    final = obj.client.wait(request["id"], None if obj.out.as_json else progress_line, timeout)
    if obj.out.as_json:
        obj.out.item(final)
    elif final["state"] != "succeeded":
        click.echo(f"error: {final.get('error') or final['state']}", err=True)
    if final["state"] != "succeeded":
        sys.exit(1)


def _register() -> None:
    from conductor.cli import admin, callbacks_cmd, images, nodes, ports, requests_cmd, server
    from conductor.ramdisk import cli as ramdisk_cmd

    main.add_command(nodes.node)
    main.add_command(ports.port)
    main.add_command(images.image)
    main.add_command(requests_cmd.request)
    main.add_command(requests_cmd.conductors)
    main.add_command(admin.token)
    main.add_command(admin.throttle)
    main.add_command(admin.secrets)
    main.add_command(callbacks_cmd.callbacks)
    main.add_command(callbacks_cmd.subscription)
    main.add_command(ramdisk_cmd.ramdisk)
    for command in server.COMMANDS:
        main.add_command(command)


_register()
