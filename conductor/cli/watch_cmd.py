"""``conductor watch``: print the event stream (``GET /v1/events``) as it happens.

It reconnects by itself and resumes after the last event it printed
(``Last-Event-ID``), so a dropped connection, a restarted API or a stream
the server closed loses nothing within the retention window; when events
were lost anyway (``stream.reset``) it says so on stderr.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import click
import requests

from conductor.cli.base import Obj, pass_obj
from conductor.cli.client import ApiError, Untrusted, tls_failure

#: Longest silence before the connection is deemed dead (the server's heartbeat is 15 s by default).
READ_TIMEOUT = 60.0
#: Pause before reconnecting (the server's ``retry:`` wins).
RECONNECT = 2.0


def read_events(response: requests.Response) -> Iterator[tuple[str, str | None, str]]:
    """The (event, id, data) of each event of a ``text/event-stream`` response; ``retry`` as ``("retry", None, ms)``."""
    event: str = "message"
    event_id: str | None = None
    data: list[str] = []
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event, event_id, "\n".join(data)
            event, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "id":
            event_id = value
        elif name == "data":
            data.append(value)
        elif name == "retry" and value.isdigit():
            yield "retry", None, value


def describe(event: dict[str, Any]) -> str:
    """One line for a person: time, type, node, what changed."""
    kind, data = event.get("type", ""), event.get("data") or {}
    node = data.get("node") or {}
    request = data.get("request") or {}
    previous = data.get("previous") or {}
    who = node.get("name") or node.get("uuid") or "-"
    if kind == "node.power_state.changed":
        what = f"{previous.get('power_state') or 'unknown'} -> {node.get('power_state')}"
    elif kind == "node.provision_state.changed":
        what = f"{previous.get('provision_state')} -> {node.get('provision_state')} ({data.get('event')})"
    elif kind.startswith("request."):
        what = f"{request.get('id')} {request.get('kind')} {request.get('target')}: {request.get('state')}"
        if request.get("error"):
            what += f" ({request['error']})"
    elif kind == "node.maintenance":
        what = "maintenance " + ("on" + (f": {node['maintenance_reason']}" if node.get("maintenance_reason") else "")
                                 if node.get("maintenance") else "off")
    elif kind in ("node.created", "node.deleted"):
        what = f"{node.get('uuid')} ({node.get('provision_state')})"
    elif kind.startswith("conductor."):
        conductor = data.get("conductor") or {}
        who = conductor.get("name", "-")
        what = f"{conductor.get('hostname')} pid {conductor.get('pid')}" + (
            f" ({data['reason']})" if data.get("reason") else "")
    elif kind == "throttle.changed":
        who, what = "-", " ".join(f"{k}={v}" for k, v in sorted((data.get("changed") or {}).items()))
    else:
        what = json.dumps(data)[:200]
    when = str(event.get("committed_at") or event.get("timestamp") or "")[11:23]
    return f"{when}  {kind:<28}  {who:<20}  {what}"


@click.command("watch")
@click.option("--node", "-n", "nodes", multiple=True, metavar="NODE",
              help="Only events of this node (name or UUID); repeatable.")
@click.option("--type", "-t", "types", multiple=True, metavar="PATTERN",
              help="Only events of matching types (node.*, request.finished...); repeatable.")
@click.option("--since", "last_event_id", default=None, metavar="EVENT_ID",
              help="Start after this event id (as Last-Event-ID) instead of now.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Exit after this many events.")
@pass_obj
def watch(obj: Obj, nodes: tuple[str, ...], types: tuple[str, ...], last_event_id: str | None,
          count: int | None) -> None:
    """Print events as they happen (GET /v1/events): one line each, or JSON with --json."""
    client = obj.client
    client.check_transport()
    params = {"node": list(nodes), "type": list(types)}
    printed = 0
    pause = RECONNECT
    announced = False
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            response = client.session.get(f"{client.url}/v1/events", params=params, headers=headers, stream=True,
                                          timeout=(client.timeout, READ_TIMEOUT))
        except requests.exceptions.SSLError as exc:  # retrying would not make the certificate trusted
            raise Untrusted(tls_failure(client.url, client.ca_cert, exc)) from None
        except requests.RequestException as exc:
            click.echo(f"watch: cannot reach {client.url} ({type(exc).__name__}); retrying", err=True)
            time.sleep(pause)
            continue
        with response:
            if response.status_code != 200:
                _refused(response)
                time.sleep(pause)
                continue
            if not announced:
                click.echo(f"watch: following {client.url}/v1/events (Ctrl-C to stop)", err=True)
                announced = True
            try:
                for kind, event_id, data in read_events(response):
                    if kind == "retry":
                        pause = int(data) / 1000
                        continue
                    if kind.startswith("stream."):
                        _note(kind, data)
                        continue
                    last_event_id = event_id or last_event_id
                    event = json.loads(data)
                    click.echo(json.dumps(event) if obj.out.format == "json" else describe(event))
                    printed += 1
                    if count is not None and printed >= count:
                        return
            except (requests.RequestException, OSError) as exc:
                click.echo(f"watch: connection lost ({type(exc).__name__}); resuming", err=True)
        time.sleep(pause)


def _refused(response: requests.Response) -> None:
    """A refusal: 503 (busy) is retried, anything else ends the command.

    :raises ApiError: the API refused the stream for good (bad filter, token).
    """
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:200] or response.reason}
    if response.status_code == 503:
        click.echo(f"watch: {body.get('message', 'busy')}", err=True)
        return
    raise ApiError(response.status_code, body)


def _note(kind: str, data: str) -> None:
    try:
        detail = json.loads(data).get("data") or {}
    except ValueError:
        detail = {}
    if kind == "stream.reset":
        click.echo(f"watch: events were missed ({detail.get('reason')}: the stream resumes from now)", err=True)
    elif kind == "stream.closed":
        click.echo(f"watch: the server closed the stream ({detail.get('reason')}); resuming", err=True)
