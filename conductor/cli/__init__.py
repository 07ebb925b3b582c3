"""The ``conductor`` command: client commands over HTTP, and the servers.

Client commands (``node``, ``request``, ``conductors``, ``token``,
``throttle``, ``subscription``, ``callbacks``, ``watch``) talk to the API at ``--url``
/ ``$CONDUCTOR_URL`` and work against a remote deployment.  They
authenticate with ``--token`` / ``$CONDUCTOR_TOKEN``, else, when the URL is
the one a local ``conductor up`` serves, with the admin token it wrote into
the data directory.  Server commands (``up``, ``api``, ``worker``,
``callback-worker``, ``db``) import the server side lazily so that the
client starts fast.
"""

from __future__ import annotations

import click

from conductor.cli.base import Obj
from conductor.cli.client import default_url

# Imports inside functions: most commands are thin API clients, so each command
# imports the server side it needs (settings, database, Flask, RQ, workers) when
# it runs; `conductor --help` and the client commands stay quick to start.


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


def _register() -> None:
    from conductor.cli import admin, callbacks_cmd, images, nodes, ports, requests_cmd, server, watch_cmd
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
    main.add_command(watch_cmd.watch)
    main.add_command(ramdisk_cmd.ramdisk)
    for command in server.COMMANDS:
        main.add_command(command)


_register()
