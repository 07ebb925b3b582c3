"""What the Ironic-compatible views share: the blueprint, links, query arguments, answers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, request

from conductor.api.admission import OPENSTACK_PREFIX
from conductor.api.ironic import versions
from conductor.exceptions import InvalidInput


class _Blueprint(Blueprint):
    """A blueprint whose routes take a trailing slash or not, as Ironic's do (clients send both)."""

    def add_url_rule(self, rule: str, endpoint: str | None = None, view_func: Any = None,
                     provide_automatic_options: bool | None = None, **options: Any) -> None:
        options.setdefault("strict_slashes", False)
        super().add_url_rule(rule, endpoint, view_func, provide_automatic_options, **options)


#: Every route of the Ironic-compatible API (endpoints ``ironic.<view>``).
blp = _Blueprint("ironic", __name__, url_prefix=OPENSTACK_PREFIX)

#: The response header naming the request a state change was accepted as (ours, to poll at /v1/requests/<id>).
REQUEST_ID_HEADER = "X-Conductor-Request-Id"
#: The header OpenStack clients log as the call's request id.
OPENSTACK_REQUEST_ID_HEADER = "X-OpenStack-Request-Id"
#: Ironic's ``[api] max_limit``: the longest page.
MAX_LIMIT = 1000


def public_url() -> str:
    """The API's base URL as the client reached it (``http://host:6385/baremetal``)."""
    return request.host_url.rstrip("/") + OPENSTACK_PREFIX


def url(resource: str, args: str = "", bookmark: bool = False, base: str | None = None) -> str:
    """Ironic's link URL: ``<public>/v1/<resource>/<args>`` (a bookmark has no version).

    ``base``: :func:`public_url`, when the caller has it already.
    """
    base = base or public_url()
    start = f"{base}/{resource}" if bookmark else f"{base}/v1/{resource}"
    if args.startswith("?"):
        return start + args
    return f"{start}/{args}"


def links(resource: str, args: str, base: str | None = None) -> list[dict[str, str]]:
    """The ``self`` and ``bookmark`` links of a resource."""
    base = base or public_url()
    return [{"href": url(resource, args, base=base), "rel": "self"},
            {"href": url(resource, args, bookmark=True, base=base), "rel": "bookmark"}]


def json_body(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer."""
    response = Response(json.dumps(body), status=status, content_type="application/json")
    response.headers.update(headers or {})
    return response


def empty(status: int, headers: Mapping[str, str] | None = None) -> Response:
    """An answer without a body (Ironic's 202s and 204s have none)."""
    response = Response(status=status)
    response.headers.update(headers or {})
    # (Flask would say text/html; Ironic says nothing.)
    del response.headers["Content-Type"]
    return response


def accepted(ident: str, request_id: str) -> Response:
    """Ironic's 202 for a state change: no body, ``Location`` of the node's states, our request id."""
    return empty(202, {
        "Location": url("nodes", f"{ident}/states"),
        REQUEST_ID_HEADER: request_id,
        OPENSTACK_REQUEST_ID_HEADER: request_id,
    })


def body_object() -> dict[str, Any]:
    """The call's JSON body, an object (an empty body is an empty object).

    :raises InvalidInput: not a JSON object.
    """
    if not request.get_data(cache=True):
        return {}
    data = request.get_json(force=True)
    if not isinstance(data, dict):
        raise InvalidInput("The request body must be a JSON object.", errors={"json": "not an object"})
    return data


def boolean(name: str, value: Any) -> bool:
    """An Ironic boolean argument (``true``, ``False``, ``1``, ``no``...).

    :raises InvalidInput: not a boolean.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on", "t"):
        return True
    if text in ("false", "0", "no", "n", "off", "f"):
        return False
    raise InvalidInput(f"Invalid boolean value for {name}: {value!r}.", errors={name: "not a boolean"})


def arg_bool(name: str) -> bool | None:
    """A boolean query argument, or None when absent."""
    value = request.args.get(name)
    return None if value is None else boolean(name, value)


def arg_fields() -> list[str] | None:
    """The ``fields`` query argument as a list (comma-separated, may repeat), or None."""
    values = request.args.getlist("fields")
    if not values:
        return None
    fields = [f.strip() for v in values for f in v.split(",") if f.strip()]
    versions.require(versions.FIELDS_SELECTOR, "the fields argument")
    return fields


def arg_limit() -> int:
    """The page size: ``limit`` (at most :data:`MAX_LIMIT`, the default).

    :raises InvalidInput: not a positive integer.
    """
    value = request.args.get("limit")
    if value is None:
        return MAX_LIMIT
    try:
        limit = int(value)
    except ValueError:
        raise InvalidInput(f"Invalid limit {value!r}.", errors={"limit": "not an integer"}) from None
    if limit <= 0:
        raise InvalidInput("Limit must be positive", errors={"limit": "must be positive"})
    return min(limit, MAX_LIMIT)


def arg_sort() -> tuple[str, str]:
    """``sort_key`` (default id) and ``sort_dir`` (default asc).

    :raises InvalidInput: a direction other than asc or desc.
    """
    sort_dir = request.args.get("sort_dir", "asc")
    if sort_dir not in ("asc", "desc"):
        raise InvalidInput(f"Invalid sort direction: {sort_dir}. Acceptable values are 'asc' or 'desc'",
                           errors={"sort_dir": "asc or desc"})
    return request.args.get("sort_key", "id"), sort_dir


def return_fields(fields: list[str] | None, detail: bool | None, default: Iterable[str]) -> list[str] | None:
    """The fields a list shows: ``fields``, all (``detail``), or ``default`` (None: all).

    :raises InvalidInput: both ``fields`` and ``detail``, or ``detail`` before version 1.43.
    """
    if detail is not None and not versions.at_least(versions.DETAIL_QUERY):
        raise InvalidInput(f"Invalid query parameter ?detail={detail} received.", errors={"detail": "1.43+"})
    if fields is not None and detail:
        raise InvalidInput("Can not specify ?detail=True and fields in the same request.",
                           errors={"detail": "not with fields"})
    if fields is None and not detail:
        return list(default)
    return fields


@dataclass(frozen=True)
class ListArgs:
    """What a list's query asks for: the fields shown (None: all), the page size and the order."""

    fields: list[str] | None
    limit: int
    sort_key: str
    sort_dir: str


def list_args(resource: str, detail: bool | None, default_fields: Iterable[str]) -> ListArgs:
    """The query arguments every list takes (``fields``, ``detail``, ``limit``, ``sort_*``) of ``resource``.

    :raises InvalidInput: ``fields`` on a detailed list (``.../detail``), or any argument
        :func:`return_fields`, :func:`arg_limit` or :func:`arg_sort` refuses.
    """
    fields = arg_fields()
    if resource.endswith("detail") and fields is not None:
        raise InvalidInput(f"The fields argument is not taken by /{resource}.", errors={"fields": "not here"})
    fields = return_fields(fields, detail, default_fields)
    limit = arg_limit()
    sort_key, sort_dir = arg_sort()
    return ListArgs(fields, limit, sort_key, sort_dir)


def page(resource: str, key: str, items: Sequence[Any], shown: list[dict[str, Any]], limit: int,
         keep: Iterable[str]) -> Response:
    """The 200 answer of a list: ``{key: shown}``, with a ``next`` link after a full page of ``items``.

    ``items`` are the model objects (their ``uuid`` is the next page's marker), ``shown``
    their representations; ``keep`` names the query arguments the next link carries over.
    """
    body: dict[str, Any] = {key: shown}
    following = next_url(resource, len(items), limit, items[-1].uuid if items else None, keep)
    if following:
        body["next"] = following
    return json_body(200, body)


def next_url(resource: str, count: int, limit: int, marker: str | None, keep: Iterable[str] = ()) -> str | None:
    """The ``next`` link of a full page (Ironic: a page as long as its limit), else None.

    ``marker`` is the last item's key; the query arguments named in ``keep`` are carried over.
    """
    if not count or count != limit or marker is None:
        return None
    args = [(k, v) for k in keep for v in request.args.getlist(k) if k not in ("limit", "marker")]
    args += [("limit", str(limit)), ("marker", marker)]
    return url(resource, "?" + urlencode(args))
