"""The roles of API tokens; each allows what the one below it does, and more."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """What a token may do."""

    #: Read anything (GET).
    READER = "reader"
    #: Also change nodes and their states, cancel requests.
    OPERATOR = "operator"
    #: Also change the throttle settings and manage tokens.
    ADMIN = "admin"


_RANK = {Role.READER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def allows(role: str, needed: Role) -> bool:
    """Whether a token of ``role`` may do what ``needed`` may."""
    try:
        return _RANK[Role(role)] >= _RANK[needed]
    except ValueError:
        return False
