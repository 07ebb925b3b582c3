"""What the client commands share: the API client, the output, waiting for a request.

Kept apart from the ``conductor`` group itself (:mod:`conductor.cli`), which
imports every command module to register it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from conductor.cli.client import Client, progress_line, resolve_token


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
