"""One state change on many nodes: ``conductor node power on n1 n2 ...``, ``--all``, ``--filter``.

The requests are submitted by ``--concurrency`` threads (default
:data:`DEFAULT_CONCURRENCY`), each with its own connection; each call
honours 503 + ``Retry-After`` like any other (the throttle's rate budgets
and queue depth slow the loop down instead of failing it part way).  With
``--wait`` the same threads then wait for the accepted requests, in the
order they were accepted, and a line is printed as each one ends.  At the
end: one row per node on stdout, a summary on stderr, and the exit status
of :mod:`conductor.cli.exits` (the first of 1, 2, 3 that any node had).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import click

from conductor.cli import exits
from conductor.cli.base import Obj, remaining
from conductor.cli.client import ApiError, Client, WaitTimeout

#: Requests in flight at once, by default (each also honours Retry-After).
DEFAULT_CONCURRENCY = 4
COLUMNS = ["node", "request", "state", "error"]

#: Submits the change for one node with the client given; returns the accepted request.
Submit = Callable[[Client, str], dict[str, Any]]


@dataclass
class Outcome:
    """What became of one node's change."""

    node: str
    #: ``accepted`` (not waited for), ``succeeded``, ``failed``, ``cancelled``, ``timeout`` or ``refused``.
    state: str = "refused"
    request: str | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {"node": self.node, "request": self.request, "state": self.state, "error": self.error}


def select_nodes(client: Client, filters: dict[str, str]) -> list[str]:
    """The nodes (name, else UUID) matching ``filters`` (list query parameters), in the API's order."""
    return [n.get("name") or n["uuid"] for n in client.every("/v1/nodes", "nodes", filters)]


def run(obj: Obj, what: str, nodes: list[str], submit: Submit, *, wait: bool, timeout: float | None,
        concurrency: int) -> None:
    """Submit ``what`` for every node of ``nodes``, wait if asked, print the outcome and exit with its status."""
    obj.out.check_columns(COLUMNS)
    if not nodes:
        click.echo(f"{what}: no node selected; nothing done.", err=True)
        obj.out.table([], COLUMNS)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    base = obj.client  # made here, not raced for by the threads
    local = threading.local()

    def client() -> Client:
        if not hasattr(local, "client"):
            local.client = base.copy()  # a connection pool per thread
        return local.client  # type: ignore[no-any-return]

    def accept(node: str) -> Outcome:
        try:
            request = submit(client(), node)
        except ApiError as exc:
            return Outcome(node, "refused", error=exc.format_message())
        except WaitTimeout as exc:
            return Outcome(node, "timeout", error=exc.format_message())
        return Outcome(node, "accepted", request=request["id"])

    def finish(outcome: Outcome) -> Outcome:
        if outcome.state != "accepted" or outcome.request is None:
            return outcome
        try:
            final = client().wait(outcome.request, None, remaining(deadline))
        except WaitTimeout:
            outcome.state, outcome.error = "timeout", f"still running after {timeout} s"
        else:
            outcome.state, outcome.error = final["state"], final.get("error")
        with lock:
            click.echo(f"{outcome.node}: {outcome.state}" + (f": {outcome.error}" if outcome.error else ""),
                       err=True)
        return outcome

    lock = threading.Lock()
    click.echo(f"{what}: {len(nodes)} node(s), {concurrency} at a time{', waiting' if wait else ''}...", err=True)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bulk") as pool:
        outcomes = list(pool.map(accept, nodes))
        if wait:
            outcomes = list(pool.map(finish, outcomes))
    obj.out.table([o.row() for o in outcomes], COLUMNS)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.state] = counts.get(outcome.state, 0) + 1
    click.echo(f"{what}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())), err=True)
    status = exit_status(outcomes)
    if status:
        sys.exit(status)


def exit_status(outcomes: list[Outcome]) -> int:
    """1 if any failed or was cancelled, else 2 if any timed out, else 3 if any was refused, else 0."""
    states = {o.state for o in outcomes}
    if states & {"failed", "cancelled"}:
        return exits.FAILED
    if "timeout" in states:
        return exits.TIMEOUT
    if "refused" in states:
        return exits.REFUSED
    return exits.OK
