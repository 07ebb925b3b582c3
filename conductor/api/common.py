"""What every view needs: the context, a per-request session, a Blueprint."""

from __future__ import annotations

import hashlib
from typing import Any, cast
from urllib.parse import urlencode

from flask import Response, current_app, g, request
from flask_smorest import Blueprint as _Blueprint
from sqlalchemy.orm import Session
from webargs.core import missing
from webargs.flaskparser import FlaskParser, is_json_request

from conductor.api import strict_json
from conductor.context import Context
from conductor.exceptions import InvalidInput


class Parser(FlaskParser):
    """Our contract answers 400 ``validation_error``, not webargs' 422."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req: Any) -> Any:
        # webargs parses with the stdlib's json.loads, which takes NaN and 1e400.
        if not is_json_request(req):
            return missing
        try:
            return strict_json.loads(req.get_data(cache=True).decode())
        except RecursionError:
            raise InvalidInput("The JSON body is nested too deeply.", errors={"json": "nested too deeply"}) from None


class Blueprint(_Blueprint):
    """A flask-smorest Blueprint using :class:`Parser`."""

    ARGUMENTS_PARSER = Parser()


def context() -> Context:
    """The application's context."""
    return cast(Context, current_app.extensions["conductor"])


def session() -> Session:
    """The request's database session (closed at teardown)."""
    if "db_session" not in g:
        g.db_session = context().db.session()
    return cast(Session, g.db_session)


def close_session(_exc: BaseException | None = None) -> None:
    """Teardown: close the request's session if it opened one."""
    db_session = g.pop("db_session", None)
    if db_session is not None:
        db_session.close()


def if_match() -> frozenset[str] | None:
    """The call's ``If-Match`` (RFC 9110): None without one, ``{"*"}`` for any version, else its strong tags.

    A weak tag (``W/"..."``) never matches a write's strong comparison, so it
    is dropped (a header of weak tags only fails with 412).

    :raises InvalidInput: the header names no entity tag at all.
    """
    if "If-Match" not in request.headers:
        return None
    tags = request.if_match
    if tags.star_tag:
        return frozenset({"*"})
    if not tags.as_set(include_weak=True):
        raise InvalidInput("If-Match names no entity tag: send the ETag of a GET, or *.",
                           errors={"If-Match": "no entity tag"})
    return frozenset(tags.as_set())


def etag_header(tag: str) -> dict[str, str]:
    """The ``ETag`` header of a strong entity tag."""
    return {"ETag": f'"{tag}"'}


def not_modified(tag: str) -> Response | None:
    """304 (no body, the ``ETag`` header) when the call's ``If-None-Match`` names ``tag``, else None.

    ``If-None-Match`` compares weakly (RFC 9110 13.1.2): ``W/"t"`` matches
    ``"t"``, and ``*`` matches whatever exists.  Only a GET or HEAD is
    answered 304 here (no other method calls this).

    :param tag: the current representation's strong entity tag, unquoted.
    """
    if "If-None-Match" not in request.headers or not request.if_none_match.contains_weak(tag):
        return None
    return Response(status=304, headers=etag_header(tag))


def tagged_json(body: dict[str, Any]) -> Response:
    """A JSON response of ``body`` with a strong ``ETag``, a digest of its bytes; 304 if the call has that tag.

    The tag is strong: the same body always serialises to the same bytes
    (the same dict built by the same code), and any change of the
    representation changes its digest.  For a body that can change while no
    version column does: a node's states show its active request's step, a
    request has no version of its own.  The bytes are those ``jsonify``
    writes; a 304 builds no response body at all.

    For hot paths, bypassing the view's schema: the view keeps its
    ``@blp.response`` schema, which documents the body, and the function
    that builds ``body`` is that schema's dump or sits next to it in
    :mod:`conductor.api.schemas`, tested equal to its dump.
    """
    data = (current_app.json.dumps(body) + "\n").encode()
    tag = hashlib.blake2b(data, digest_size=12).hexdigest()
    return not_modified(tag) or Response(data, mimetype="application/json", headers=etag_header(tag))




def next_link(items: list[Any], limit: int, marker: Any) -> str | None:
    """The URL of the next page, or None when this page is the last."""
    if len(items) < limit:
        return None
    args = {k: v for k, v in request.args.items() if k not in ("marker", "limit")}
    args.update(limit=str(limit), marker=str(marker))
    return f"{request.path}?{urlencode(args)}"
