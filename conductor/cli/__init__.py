"""The ``conductor`` command: client commands over HTTP, and the servers.

Client commands (``node``, ``port``, ``image``, ``request``, ``conductors``,
``token``, ``throttle``, ``subscription``, ``callbacks``, ``watch``) talk to the API at
``--url`` / ``$CONDUCTOR_URL`` and work against a remote deployment.  They
authenticate with ``--token`` / ``$CONDUCTOR_TOKEN``, else, when the URL is
one a local ``conductor up`` serves, with the admin token it wrote into its
data directory (found through the per-user registry of
:mod:`conductor.auth.tokenfile`).  Their global options may also follow
the subcommand (:func:`conductor.cli.base.add_global_options`); the exit
statuses are those of :mod:`conductor.cli.exits`.  Server commands (``up``,
``api``, ``worker``, ``callback-worker``, ``db``) import the server side
lazily so that the client starts fast.

Shell completion is click's: ``eval "$(_CONDUCTOR_COMPLETE=bash_source conductor)"``
(``zsh_source``, ``fish_source`` for the other shells).
"""

from __future__ import annotations

from typing import Any

import click

from conductor.cli import exits
from conductor.cli.base import Obj, add_global_options, root_options

# Imports inside functions: most commands are thin API clients, so each command
# imports the server side it needs (settings, database, Flask, RQ, workers) when
# it runs; `conductor --help` and the client commands stay quick to start.


class WrongUsage(click.UsageError):
    """A usage error (click's, same message), exiting 64 rather than 2."""

    exit_code = exits.USAGE


class ConductorGroup(click.Group):
    """The ``conductor`` group: a wrong command line exits 64 (2 means a ``--wait`` timeout)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except WrongUsage:
            raise
        except click.UsageError as exc:
            raise WrongUsage(exc.format_message(), exc.ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WrongUsage:
            raise
        except click.UsageError as exc:
            raise WrongUsage(exc.format_message(), exc.ctx) from None


@click.group(cls=ConductorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@root_options
@click.version_option(package_name="baremetal-conductor")
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None, as_json: bool, fmt: str | None,
         columns: tuple[str, ...], max_retry_wait: float, ca_cert: str | None, allow_plain_http: bool,
         client_cert: str | None, client_key: str | None) -> None:
    """Power and provision bare-metal nodes through their BMCs, asynchronously.

    Exit statuses: 0 done; 1 a request failed; 2 --wait timed out; 3 the API
    refused the command; 4 the API cannot be reached (or its certificate is not
    trusted); 64 a wrong command line.
    """
    ctx.obj = Obj(url, token, fmt=fmt, as_json=as_json, columns=columns, max_retry_wait=max_retry_wait,
                  ca_cert=ca_cert, allow_plain_http=allow_plain_http, client_cert=client_cert,
                  client_key=client_key)


def _register() -> None:
    from conductor.cli import admin, callbacks_cmd, images, nodes, ports, requests_cmd, server, watch_cmd
    from conductor.ramdisk import cli as ramdisk_cmd

    client_commands = [
        nodes.node, ports.port, images.image, requests_cmd.request, requests_cmd.conductors, admin.token,
        admin.throttle, callbacks_cmd.callbacks, callbacks_cmd.subscription, watch_cmd.watch,
    ]
    for command in client_commands:
        add_global_options(command)
        main.add_command(command)
    main.add_command(admin.secrets)
    main.add_command(ramdisk_cmd.ramdisk)
    for command in server.COMMANDS:
        main.add_command(command)


_register()
