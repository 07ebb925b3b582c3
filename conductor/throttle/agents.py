"""The agent tokens this process has seen accepted, so their heartbeats skip the guessers' budgets.

Heartbeats carry no bearer token, so the API bounds the look-ups of agent
tokens it does not know (per address and for the deployment) before the
database is asked. Once a node's token has been accepted, its heartbeats are
counted only on their own node-and-token budget: a flood of wrong tokens
from the same address, or from anywhere, never holds back an agent this
process has already heard.

Being remembered here grants nothing: every heartbeat still has its token
checked against the node in the database. Each API process keeps its own
memory (bounded, least recently seen forgotten first).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

from conductor.context import Context

#: How long an accepted token is remembered after its last acceptance, and how many.
REMEMBER_SECONDS = 600.0
REMEMBER_MAX = 10_000
_KEY = "throttle.agents"


def digest(token: str) -> str:
    """The SHA-256 of ``token`` (what is remembered and what budgets are keyed by)."""
    return hashlib.sha256(token.encode()).hexdigest()


class AcceptedAgents:
    """A bounded, expiring set of (node as named in the URL, token digest) pairs."""

    def __init__(self, seconds: float = REMEMBER_SECONDS, size: int = REMEMBER_MAX) -> None:
        self.seconds, self.size = seconds, size
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, node: str, token_digest: str) -> None:
        with self._lock:
            self._seen[(node, token_digest)] = time.monotonic() + self.seconds
            self._seen.move_to_end((node, token_digest))
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)

    def known(self, node: str, token_digest: str) -> bool:
        with self._lock:
            until = self._seen.get((node, token_digest))
            if until is None:
                return False
            if until < time.monotonic():
                del self._seen[(node, token_digest)]
                return False
            return True


def accepted(ctx: Context) -> AcceptedAgents:
    """This process's memory of accepted agent tokens."""
    memory = ctx.cache.get(_KEY)
    if memory is None:
        memory = ctx.cache.setdefault(_KEY, AcceptedAgents())
    return memory  # type: ignore[no-any-return]
