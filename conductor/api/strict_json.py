"""JSON in and out of the API: finite numbers only.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity`` and turns
``1e400`` into ``inf``; none of them is JSON (RFC 8259). PostgreSQL's
``json`` type refuses them (a 500), SQLite stores them and we would serve
a bare ``NaN`` later. So every request body is parsed by :func:`loads`,
which refuses them (400 ``validation_error``), and every response is
written with ``allow_nan=False``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask.json.provider import DefaultJSONProvider

from conductor.exceptions import InvalidInput

_NOT_FINITE = "non-finite numbers (NaN, Infinity, or beyond 1.8e308) are not JSON"


def _refuse(text: str) -> Any:
    raise InvalidInput(f"The JSON body has {text}: {_NOT_FINITE}.", errors={"json": _NOT_FINITE})


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _refuse(text if len(text) <= 40 else text[:40] + "...")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # over Python's 4,300 digits for int(): not a JSON error, but still the client's
        raise InvalidInput(f"The JSON body has an integer of {len(text)} digits.",
                           errors={"json": "integer too long"}) from None


def loads(data: str | bytes, **kwargs: Any) -> Any:
    """Parse JSON.

    :raises InvalidInput: a non-finite number, or an integer too long to convert.
    :raises json.JSONDecodeError: not JSON.
    """
    kwargs.setdefault("parse_constant", _refuse)
    kwargs.setdefault("parse_float", _finite)
    kwargs.setdefault("parse_int", _integer)
    return json.loads(data, **kwargs)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider that reads with :func:`loads` and never writes ``NaN``."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s, **kwargs)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)
