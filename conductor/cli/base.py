"""What the client commands share: the API client, the output, the global options, waiting for a request.

Kept apart from the ``conductor`` group itself (:mod:`conductor.cli`), which
imports every command module to register it.

The global options (``--url``, ``--token``, ``--json``, ``-f``, ``-c``,
``--max-retry-wait``, ``--ca-cert``, ``--allow-plain-http``, ``--client-cert``,
``--client-key``) are options of the group and, through
:func:`add_global_options`, of every client command too, so that they may
come before or after the subcommand: ``conductor --json node show n1`` and
``conductor node show n1 --json`` are the same.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import click

from conductor.cli import exits
from conductor.cli.client import (
    DEFAULT_MAX_RETRY_WAIT,
    ApiError,
    Client,
    WaitTimeout,
    default_url,
    find_token,
)
from conductor.cli.output import FORMATS, Output
from conductor.cli.progress import Progress

#: Every field of a request.
REQUEST_KEYS = [
    "id", "node_uuid", "kind", "target", "params", "state", "step", "error", "conductor",
    "callback_url", "callback", "created_at", "started_at", "finished_at",
]
#: What an accepted request shows, and a finished one (``--wait``).
ACCEPTED_KEYS = ["id", "node_uuid", "kind", "target", "state"]
FINISHED_KEYS = ["id", "node_uuid", "kind", "target", "state", "error", "created_at", "started_at", "finished_at"]


class Obj:
    """What client commands share: the API client and the output."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        fmt: str | None = None,
        as_json: bool = False,
        columns: tuple[str, ...] | list[str] = (),
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        ca_cert: str | None = None,
        allow_plain_http: bool = False,
        client_cert: str | None = None,
        client_key: str | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.fmt = fmt
        self.as_json = as_json
        self.columns = list(columns)
        self.max_retry_wait = max_retry_wait
        self.ca_cert = ca_cert
        self.allow_plain_http = allow_plain_http
        self.client_cert = client_cert
        self.client_key = client_key
        self._client: Client | None = None
        self._out: Output | None = None

    @property
    def out(self) -> Output:
        if self._out is None:
            fmt = self.fmt
            if self.as_json:
                if fmt not in (None, "json"):
                    raise click.UsageError(f"--json and -f {fmt} ask for two formats")
                fmt = "json"
            self._out = Output(fmt or "table", self.columns)
        return self._out

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, credentials=find_token(self.url, self.token),
                                  max_retry_wait=self.max_retry_wait, ca_cert=self.ca_cert,
                                  allow_plain_http=self.allow_plain_http,
                                  client_cert=(self.client_cert, self.client_key)
                                  if self.client_cert and self.client_key else self.client_cert)
        return self._client


pass_obj = click.make_pass_decorator(Obj)

_URL_HELP = "URL of the conductor API."
_TOKEN_HELP = "API token. Default: the admin token of the local `conductor up` serving --url, if any."
_JSON_HELP = "Print JSON (same as -f json)."
_FORMAT_HELP = "Output format: table (default), json, yaml or value (bare values, for scripts)."
_COLUMN_HELP = "Print only this field (repeat for more, in that order)."
_RETRY_HELP = "At most this many seconds in all of sleeping on 503 + Retry-After before giving up."
_CA_HELP = "CA certificates (PEM) an https API's certificate must be signed by. Default: the system's."
_PLAIN_HELP = "Send the token over plain http:// to a host other than this one (a network you trust)."
_CLIENT_CERT_HELP = "Client certificate (PEM; with its key unless --client-key) for an API that asks for one."
_CLIENT_KEY_HELP = "The private key (PEM) of --client-cert."


def root_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The global options of the ``conductor`` group (passed to its function)."""
    for option in reversed([
        click.option("--url", default=default_url, show_default="$CONDUCTOR_URL or http://127.0.0.1:6385",
                     help=_URL_HELP),
        click.option("--token", envvar="CONDUCTOR_TOKEN", default=None, show_envvar=True, help=_TOKEN_HELP),
        click.option("--json", "as_json", is_flag=True, help=_JSON_HELP),
        click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default=None, help=_FORMAT_HELP),
        click.option("-c", "--column", "columns", multiple=True, metavar="FIELD", help=_COLUMN_HELP),
        click.option("--max-retry-wait", type=click.FloatRange(0), default=DEFAULT_MAX_RETRY_WAIT,
                     show_default=True, envvar="CONDUCTOR_MAX_RETRY_WAIT", metavar="SECONDS", help=_RETRY_HELP),
        click.option("--ca-cert", envvar="CONDUCTOR_CA_CERT", show_envvar=True, default=None, metavar="FILE",
                     help=_CA_HELP),
        click.option("--allow-plain-http", is_flag=True, envvar="CONDUCTOR_ALLOW_PLAIN_HTTP", show_envvar=True,
                     help=_PLAIN_HELP),
        click.option("--client-cert", envvar="CONDUCTOR_CLIENT_CERT", show_envvar=True, default=None,
                     metavar="FILE", help=_CLIENT_CERT_HELP),
        click.option("--client-key", envvar="CONDUCTOR_CLIENT_KEY", show_envvar=True, default=None,
                     metavar="FILE", help=_CLIENT_KEY_HELP),
    ]):
        command = option(command)
    return command


def _set(attribute: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A callback that puts an option given after the subcommand into the shared :class:`Obj`."""

    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        obj = ctx.find_object(Obj)
        if obj is None or value is None or value is False or value == ():
            return  # not given here (or shell completion, which runs no group)
        if attribute == "columns":
            obj.columns.extend(value)
        else:
            setattr(obj, attribute, value)

    return callback


def _leaf_options() -> list[click.Option]:
    common = {"expose_value": False, "is_eager": False}
    return [
        click.Option(["--url", "global_url"], default=None, callback=_set("url"), help=_URL_HELP, **common),
        click.Option(["--token", "global_token"], default=None, callback=_set("token"), help=_TOKEN_HELP, **common),
        click.Option(["--json", "global_json"], is_flag=True, default=False, callback=_set("as_json"),
                     help=_JSON_HELP, **common),
        click.Option(["-f", "--format", "global_format"], type=click.Choice(FORMATS), default=None,
                     callback=_set("fmt"), help=_FORMAT_HELP, **common),
        click.Option(["-c", "--column", "global_columns"], multiple=True, metavar="FIELD",
                     callback=_set("columns"), help=_COLUMN_HELP, **common),
        click.Option(["--max-retry-wait", "global_max_retry_wait"], type=click.FloatRange(0), default=None,
                     metavar="SECONDS", callback=_set("max_retry_wait"), help=_RETRY_HELP, **common),
        click.Option(["--ca-cert", "global_ca_cert"], default=None, metavar="FILE", callback=_set("ca_cert"),
                     help=_CA_HELP, **common),
        click.Option(["--allow-plain-http", "global_allow_plain_http"], is_flag=True, default=False,
                     callback=_set("allow_plain_http"), help=_PLAIN_HELP, **common),
        click.Option(["--client-cert", "global_client_cert"], default=None, metavar="FILE",
                     callback=_set("client_cert"), help=_CLIENT_CERT_HELP, **common),
        click.Option(["--client-key", "global_client_key"], default=None, metavar="FILE",
                     callback=_set("client_key"), help=_CLIENT_KEY_HELP, **common),
    ]


def add_global_options(top: click.Command) -> None:
    """Give ``top`` and every command under it the global options (once each, even when listed twice)."""
    seen: set[int] = set()

    def visit(command: click.Command) -> None:
        if id(command) in seen:
            return
        seen.add(id(command))
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                visit(sub)
            return
        taken = {opt for param in command.params for opt in getattr(param, "opts", [])}
        command.params.extend(o for o in _leaf_options() if not taken & set(o.opts))

    visit(top)


def submit_change(client: Client, path: str, body: dict[str, Any], *, wait_free: bool = False,
                  deadline: float | None = None, label: str = "") -> dict[str, Any]:
    """PUT a state change (with an ``Idempotency-Key``, so that a retry cannot submit it twice).

    With ``wait_free``, a 409 ``transition_in_progress`` waits for the
    node's current request to finish (until ``deadline``), then submits again.

    :raises ApiError: the API refused it.
    :raises WaitTimeout: ``deadline`` passed while waiting for the node.
    """
    while True:
        try:
            accepted: dict[str, Any] = client.call("PUT", path, json=body,
                                                   headers={"Idempotency-Key": str(uuid.uuid4())})
            return accepted
        except ApiError as exc:
            if not (wait_free and exc.status == 409 and exc.code == "transition_in_progress"):
                raise
            busy = exc.body.get("request_id")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"{label or path}: still busy with {busy or 'another request'} "
                                  "when --timeout passed; nothing was submitted") from None
            click.echo(f"{label or path}: busy with {busy or 'another request'}; waiting for it "
                       "to finish (--wait-free)", err=True)
            if busy:
                client.wait(busy, None, remaining)
            else:  # held by a conductor's reservation, no request to wait for
                time.sleep(min(1.0, remaining if remaining is not None else 1.0))


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (None: no deadline)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def finish_request(obj: Obj, request: dict[str, Any], wait: bool, timeout: float | None) -> None:
    """Print an accepted request, or wait for it (showing each change once) and print it finished.

    Exits 1 if it failed or was cancelled; 2 (:class:`WaitTimeout`) if ``timeout`` passed first.
    """
    if not wait:
        obj.out.item(request, ACCEPTED_KEYS)
        return
    progress = Progress()
    try:
        final = obj.client.wait(request["id"], progress, timeout)
    except WaitTimeout:
        progress.interrupted()
        state = progress.request["state"] if progress.request else "unfinished"
        raise WaitTimeout(f"Request {request['id']} still {state} when --timeout passed; it goes on "
                          f"(`conductor request show {request['id']} --wait` waits again)") from None
    obj.out.item(final, FINISHED_KEYS)
    if final["state"] != "succeeded":
        click.echo(f"error: request {final['id']} {final['state']}: {final.get('error') or ''}".rstrip(": "),
                   err=True)
        sys.exit(exits.FAILED)
