"""What ``--wait`` shows while a request runs: each change of its state once.

:class:`Progress` is handed the successive states of a request (and of its
node) by whatever fetches them (:meth:`conductor.cli.client.Client.wait`),
and decides only what to print: on a terminal one live line rewritten in
place, elsewhere (a log, a pipe) one line per change, never the same line
twice however often the request is fetched.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from conductor.cli.client import FINAL_STATES


def describe(request: dict[str, Any], states: dict[str, Any] | None) -> str:
    """One line: the request's state and step, the node's provision and power states."""
    parts = [f"{request['id']}: {request['state']}"]
    if request.get("step"):
        parts.append(f"step {request['step']}")
    if states:
        parts.append(f"provision {states['provision_state']}")
        parts.append(f"power {states['power_state'] or 'unknown'}")
    return " | ".join(parts)


class Progress:
    """Prints a request's progress to ``stream`` (stderr), each change once."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        #: Rewrite one line in place (a terminal) rather than print a line per change.
        self.live = self.stream.isatty() if live is None else live
        self.last: str | None = None
        #: The request as last fetched.
        self.request: dict[str, Any] | None = None

    def __call__(self, request: dict[str, Any], states: dict[str, Any] | None) -> None:
        self.request = request
        line = describe(request, states)
        if line == self.last:
            return
        self.last = line
        if self.live:
            self.stream.write("\r\x1b[2K" + line)
            if request["state"] in FINAL_STATES:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def interrupted(self) -> None:
        """End a live line left open (the wait stopped before the request finished)."""
        if self.live and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()
