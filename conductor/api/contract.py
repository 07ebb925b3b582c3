"""The API's contract in /openapi.json: what every operation may answer, added in one place.

The views document their arguments and their success; this apispec plugin
(:class:`ContractPlugin`, run on every operation as it is registered) adds
what follows from rules kept elsewhere, so that the document says what
the service does:

* an ``operationId`` (:data:`OPERATION_IDS`: stable names for generated
  clients, checked complete by the tests);
* every error response the operation can give, each as
  ``application/problem+json`` with the ``Error`` schema and an example
  per error code:

  - 400 ``validation_error`` everywhere (a NUL character in the URL is
    refused on any call), plus the operation's own 400 codes
    (:data:`BAD_REQUESTS`);
  - 401 and 403 from admission's own rule (:func:`admission.required_role`):
    401 on every endpoint that needs a token, 403 where that token needs
    more than the reader role; the agents' endpoints have their own 401;
  - 404 for an operation whose path names something (:data:`NOT_FOUND`),
    or whose query or body does (:data:`NAMED_NOT_FOUND`);
  - 409 from :data:`CONFLICTS`, 412 on the writes that take ``If-Match``;
  - 413 on the calls with a body; 422 ``idempotency_key_reused`` on the
    calls that take an ``Idempotency-Key`` (:data:`admission.WORK_ENDPOINTS`);
  - 503 everywhere (the database may be away; the token budgets), with
    ``Retry-After``, plus the queue's and the event streams' own codes;
* headers: ``RateLimit-Policy`` and ``RateLimit`` on every answer of an
  endpoint that needs a token, ``Retry-After`` on 503, ``Location`` on the
  answers that create something, the ``Idempotency-Key`` request header;
  ``If-None-Match`` and its 304 on the polled reads (:data:`CONDITIONAL_GETS`).

docs/api.md explains the contract for people.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec, BasePlugin

from conductor.api import admission, errors
from conductor.auth.roles import Role
from conductor.exceptions import ConductorError

#: (endpoint, method) -> operationId.
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("nodes.Nodes", "get"): "listNodes",
    ("nodes.Nodes", "post"): "createNode",
    ("nodes.NodeItem", "get"): "showNode",
    ("nodes.NodeItem", "patch"): "updateNode",
    ("nodes.NodeItem", "delete"): "deleteNode",
    ("nodes.NodeStates", "get"): "showNodeStates",
    ("nodes.PowerState", "put"): "setNodePowerState",
    ("nodes.ProvisionState", "put"): "setNodeProvisionState",
    ("nodes.BootDevice", "get"): "showNodeBootDevice",
    ("nodes.BootDevice", "put"): "setNodeBootDevice",
    ("nodes.NodeHistory", "get"): "listNodeHistory",
    ("nodes.Heartbeat", "post"): "heartbeat",
    ("ports.Ports", "get"): "listPorts",
    ("ports.Ports", "post"): "createPort",
    ("ports.PortItem", "get"): "showPort",
    ("ports.PortItem", "delete"): "deletePort",
    ("boot.ChainScript", "get"): "bootChainScript",
    ("boot.MacScript", "get"): "bootScriptForMac",
    ("boot.BootFile", "get"): "downloadBootFile",
    ("boot.MediaFile", "get"): "downloadBootMedia",
    ("requests.Requests", "get"): "listRequests",
    ("requests.RequestItem", "get"): "showRequest",
    ("requests.RequestItem", "delete"): "cancelRequest",
    ("conductors.Conductors", "get"): "listConductors",
    ("throttle.Throttle", "get"): "showThrottle",
    ("throttle.Throttle", "patch"): "updateThrottle",
    ("tokens.Tokens", "get"): "listTokens",
    ("tokens.Tokens", "post"): "createToken",
    ("tokens.TokenSelf", "get"): "showOwnToken",
    ("tokens.TokenItem", "delete"): "revokeToken",
    ("subscriptions.Subscriptions", "get"): "listSubscriptions",
    ("subscriptions.Subscriptions", "post"): "createSubscription",
    ("subscriptions.SubscriptionItem", "get"): "showSubscription",
    ("subscriptions.SubscriptionItem", "delete"): "deleteSubscription",
    ("subscriptions.SubscriptionDeliveries", "get"): "listSubscriptionDeliveries",
    ("callbacks.Secret", "get"): "showCallbackSecret",
    ("callbacks.Rotate", "post"): "rotateCallbackSecret",
    ("images.Images", "get"): "listImages",
    ("images.ImageItem", "get"): "showImage",
    ("images.ImageItem", "delete"): "deleteImage",
    ("images.ImageContent", "get"): "downloadImage",
    ("images.AgentImageContent", "get"): "downloadImageForAgent",
    ("events.Events", "get"): "streamEvents",
    ("stats.Stats", "get"): "showStats",
}

#: Path parameter -> the 404 code of the thing it names.
NOT_FOUND = {
    "ident": "node_not_found", "port_uuid": "port_not_found", "request_id": "request_not_found",
    "token_id": "token_not_found", "subscription_id": "subscription_not_found", "name": "image_not_found",
}
#: (endpoint, method) -> the 404 codes of names in its query or body (a node filter, a marker).
NAMED_NOT_FOUND: dict[tuple[str, str], tuple[str, ...]] = {
    ("nodes.Nodes", "get"): ("node_not_found",),
    ("ports.Ports", "get"): ("node_not_found", "port_not_found"),
    ("ports.Ports", "post"): ("node_not_found",),
    ("requests.Requests", "get"): ("node_not_found", "request_not_found"),
    ("subscriptions.Subscriptions", "post"): ("node_not_found",),
}
#: Endpoints whose 404 is another code (boot files: the name is no file of the ramdisk).
NOT_FOUND_BY_ENDPOINT = {"boot.BootFile": "not_found", "images.AgentImageContent": "not_found"}
#: Endpoints with no 404 (the script is for any MAC; a bad ticket is 401).
NO_NOT_FOUND = frozenset({"boot.MacScript", "boot.MediaFile"})
#: Endpoints serving byte ranges: 416 for a range outside the file.
RANGES = frozenset({"boot.BootFile", "boot.MediaFile", "images.ImageContent", "images.AgentImageContent"})

#: (endpoint, method) -> its 400 codes besides validation_error.
BAD_REQUESTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("nodes.Nodes", "post"): ("unknown_driver",),
    ("nodes.NodeItem", "patch"): ("unknown_driver",),
    ("nodes.PowerState", "put"): ("invalid_transition", "node_in_maintenance", "callback_url_denied"),
    ("nodes.ProvisionState", "put"): ("invalid_transition", "node_in_maintenance", "callback_url_denied"),
    ("nodes.BootDevice", "put"): ("invalid_transition", "node_in_maintenance", "callback_url_denied"),
    ("subscriptions.Subscriptions", "post"): ("callback_url_denied",),
    ("events.Events", "get"): ("invalid_event_filter",),
}

#: (endpoint, method) -> its 409 codes.
CONFLICTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("nodes.Nodes", "post"): ("node_name_in_use",),
    ("nodes.NodeItem", "patch"): ("node_name_in_use", "instance_associated", "transition_in_progress"),
    ("nodes.NodeItem", "delete"): ("node_not_deletable", "transition_in_progress"),
    ("nodes.PowerState", "put"): ("transition_in_progress",),
    ("nodes.ProvisionState", "put"): ("transition_in_progress", "request_not_cancellable"),
    ("nodes.BootDevice", "put"): ("transition_in_progress",),
    ("nodes.Heartbeat", "post"): ("node_not_waiting",),
    ("ports.Ports", "post"): ("port_address_in_use", "transition_in_progress"),
    ("ports.PortItem", "delete"): ("transition_in_progress",),
    ("requests.RequestItem", "delete"): ("request_not_cancellable",),
    ("images.ImageItem", "delete"): ("image_in_use",),
}

#: Endpoints answering 201 without a Location (the rotated secret is no resource of its own).
UNLOCATED = frozenset({"callbacks.Rotate"})

#: (endpoint, method) answering 412 to a stale If-Match.
CONDITIONAL = frozenset({("nodes.NodeItem", "patch"), ("nodes.NodeItem", "delete")})

#: (endpoint, method) answering 304 to an If-None-Match that names the current ETag (conductor.api.common).
CONDITIONAL_GETS = frozenset({("nodes.NodeItem", "get"), ("nodes.NodeStates", "get"),
                              ("requests.RequestItem", "get")})

#: Endpoints whose 401 is about their own credential, not a bearer token.
OWN_CREDENTIAL = {"nodes.Heartbeat": "invalid_agent_token", "boot.MediaFile": "invalid_image_ticket",
                  "images.AgentImageContent": "invalid_image_ticket"}

#: (endpoint, method) -> its 503 codes besides rate_limited and database_unavailable.
UNAVAILABLE: dict[tuple[str, str], tuple[str, ...]] = {
    ("nodes.PowerState", "put"): ("queue_full", "queue_unavailable"),
    ("nodes.ProvisionState", "put"): ("queue_full", "queue_unavailable"),
    ("nodes.BootDevice", "put"): ("queue_full", "queue_unavailable"),
    ("events.Events", "get"): ("streams_busy", "queue_unavailable"),
    ("stats.Stats", "get"): ("queue_unavailable",),
}

#: Error code -> (example message, example details).
EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "validation_error": ("Invalid request: name: Not a valid string.", {"errors": {"name": "Not a valid string."}}),
    "unknown_driver": ("Unknown driver 'nope'; known: fake, ipmi, redfish.", {}),
    "invalid_transition": ("Cannot go from enroll to active.",
                           {"provision_state": "enroll", "allowed_targets": ["manage"]}),
    "node_in_maintenance": ("Node n1 is in maintenance.", {"node": "n1", "maintenance_reason": "disk swap"}),
    "callback_url_denied": ("The callback URL is refused: loopback address.",
                            {"reason": "loopback", "errors": {"callback_url": "loopback address"}}),
    "invalid_event_filter": ("Unknown event type pattern 'nodes.*'.", {"errors": {"type": "unknown pattern"}}),
    "unauthorized": ("This API needs a token: send 'Authorization: Bearer <token>'.", {}),
    "invalid_agent_token": ("The agent token is missing or is not the one issued for node n1's current workflow.",
                            {}),
    "invalid_image_ticket": ("The image URL is forged or expired.", {}),
    "forbidden": ("This needs a token with the operator role; yours has reader.", {"required_role": "operator"}),
    "not_found": ("No such file.", {}),
    "node_not_found": ("Node n1 not found.", {"node": "n1"}),
    "port_not_found": ("Port 52d3b0b4-6a43-4d0e-9f7c-3c4c2a1f0b11 not found.",
                       {"port": "52d3b0b4-6a43-4d0e-9f7c-3c4c2a1f0b11"}),
    "request_not_found": ("Request req-0e1d not found.", {"request_id": "req-0e1d"}),
    "token_not_found": ("Token tok-7f3a not found.", {"token_id": "tok-7f3a"}),
    "subscription_not_found": ("Subscription sub-19c2 not found.", {"subscription_id": "sub-19c2"}),
    "image_not_found": ("Image centos-9 not found.", {"image": "centos-9"}),
    "node_name_in_use": ("Node name n1 is already in use.", {"name": "n1"}),
    "instance_associated": ("Instance 0d8e... is already associated with node n2.",
                            {"instance_uuid": "0d8e6e0b-3a37-4d47-b4f0-0f6f5f3f9d11", "node": "n2"}),
    "transition_in_progress": ("Node n1 has a transition in progress (request req-0e1d).",
                               {"request_id": "req-0e1d"}),
    "node_not_deletable": ("Node n1 cannot be deleted in state active.", {"provision_state": "active"}),
    "request_not_cancellable": ("Request req-0e1d has finished.", {"request_id": "req-0e1d", "state": "succeeded"}),
    "node_not_waiting": ("Node n1 is not waiting for its agent.", {"provision_state": "active"}),
    "port_address_in_use": ("MAC 52:54:00:00:00:01 is already a port of node n2.",
                            {"address": "52:54:00:00:00:01", "node": "n2",
                             "port": "52d3b0b4-6a43-4d0e-9f7c-3c4c2a1f0b11"}),
    "image_in_use": ("Image centos-9 is being deployed.", {"image": "centos-9", "request_ids": ["req-0e1d"]}),
    "precondition_failed": ("Node n1 changed since that ETag.",
                            {"etag": '"4f0c2d7e-8a0b-4c1e-9d6a-2b1f3c4d5e6f-7"'}),
    "range_not_satisfiable": ("The range asked for is not within the file's 1024 bytes.", {}),
    "internal_error": ("Internal error; see the conductor logs.", {}),
    "payload_too_large": ("The body is larger than 1048576 bytes.", {}),
    "idempotency_key_reused": ("This Idempotency-Key was used for another call.", {"request_id": "req-0e1d"}),
    "rate_limited": ("Too many requests (budget client-write); retry in 2 s.", {"retry_after": 2}),
    "database_unavailable": ("The database is unavailable; retry later.", {"retry_after": 2}),
    "queue_full": ("The work queue is full; retry in 5 s.", {"retry_after": 5}),
    "queue_unavailable": ("The work queue is unavailable; retry later.", {"retry_after": 5}),
    "streams_busy": ("Every event stream slot is taken; retry later.", {"retry_after": 5}),
}

STATUS_TEXT = {400: "Invalid request", 401: "No valid credential", 403: "The token's role does not allow this",
               404: "Not found", 409: "Conflict with the current state", 412: "The If-Match entity tag is stale",
               413: "The body is too large", 416: "The range is not within the file",
               422: "The Idempotency-Key was used for another call",
               503: "Busy or unavailable: retry after Retry-After seconds"}

_STRING = {"schema": {"type": "string"}}
RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": {**_STRING, "description": "The budgets this call draws on: "
                                                   '"name";q=<burst>;w=<window seconds> (IETF draft)'},
    "RateLimit": {**_STRING, "description": 'What is left of each: "name";r=<remaining>;t=<seconds to refill>'},
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer", "minimum": 1},
                               "description": "Seconds to wait before trying again"}}
LOCATION = {"Location": {**_STRING, "description": "Where the created resource (or the accepted request) is"}}
ETAG = {"ETag": {**_STRING, "description": "The representation's entity tag: send it back as If-None-Match"}}
NOT_MODIFIED = {"description": "Not modified: If-None-Match names the current ETag (no body)", "headers": ETAG}
IF_NONE_MATCH = {
    "required": False, "schema": {"type": "string"},
    "description": "The ETag of the last answer seen (or *): 304 with no body while it is still current "
                   "(weak comparison, RFC 9110); a poll that costs no body.",
}
IDEMPOTENCY_KEY = {
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Makes a retry of this call safe: the same key and body within 24 h answer the first "
                   "call's request (202, same id) instead of submitting again; the same key with another "
                   "body is 422 idempotency_key_reused.",
}


def _codes(endpoint: str, method: str, path_args: set[str]) -> dict[int, tuple[str, ...]]:
    """Status -> the error codes the operation may answer with."""
    key = (endpoint, method)
    codes: dict[int, tuple[str, ...]] = {400: ("validation_error", *BAD_REQUESTS.get(key, ()))}
    needed = admission.required_role(endpoint, method.upper())
    if needed is not None:
        codes[401] = ("unauthorized",)
        if needed != Role.READER:
            codes[403] = ("forbidden",)
    elif endpoint in OWN_CREDENTIAL:
        codes[401] = (OWN_CREDENTIAL[endpoint],)
    if endpoint in NOT_FOUND_BY_ENDPOINT:
        codes[404] = (NOT_FOUND_BY_ENDPOINT[endpoint],)
    elif endpoint not in NO_NOT_FOUND:
        found = tuple(NOT_FOUND[arg] for arg in sorted(path_args) if arg in NOT_FOUND)
        found += tuple(code for code in NAMED_NOT_FOUND.get(key, ()) if code not in found)
        if found:
            codes[404] = found
    if endpoint in RANGES:
        codes[416] = ("range_not_satisfiable",)
    if key in CONFLICTS:
        codes[409] = CONFLICTS[key]
    if key in CONDITIONAL:
        codes[412] = ("precondition_failed",)
    if method in ("post", "put", "patch"):
        codes[413] = ("payload_too_large",)
    if endpoint in admission.WORK_ENDPOINTS and method not in ("get", "head"):
        codes[422] = ("idempotency_key_reused",)
    codes[503] = ("rate_limited", "database_unavailable", *UNAVAILABLE.get(key, ()))
    return codes


def _subclasses(cls: type[ConductorError]) -> list[type[ConductorError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _subclasses(child))]


def status_of(code: str) -> int:
    """The HTTP status of error ``code`` (its exception class's, or the HTTP error's)."""
    for cls in _subclasses(ConductorError):
        if cls.code == code:
            return cls.status
    return next(status for status, name in errors.HTTP_CODES.items() if name == code)


def example(code: str) -> dict[str, Any]:
    """The example of an error ``code``: problem details as served."""
    message, details = EXAMPLES[code]
    return {"summary": errors.problem_title(code), "value": errors.problem(status_of(code), code, message, **details)}


def _problem_content(spec: APISpec, codes: tuple[str, ...]) -> dict[str, Any]:
    return {"schema": {"$ref": "#/components/schemas/Error"},
            "examples": {code: spec.components.get_ref("example", code) for code in codes}}


def error_response(spec: APISpec, status: int, codes: tuple[str, ...]) -> dict[str, Any]:
    """The description of error ``status`` with ``codes``: problem details, an example of each code."""
    response: dict[str, Any] = {
        "description": f"{STATUS_TEXT.get(status, 'Error')}: " + ", ".join(f"`{c}`" for c in codes),
        "content": {errors.PROBLEM_JSON: _problem_content(spec, codes)},
    }
    if status == 503:
        response["headers"] = dict(RETRY_AFTER)
    return response


def complete(spec: APISpec, endpoint: str, method: str, path_args: set[str], operation: dict[str, Any]) -> None:
    """Add the operationId, the error responses and the headers to ``operation``."""
    operation["operationId"] = OPERATION_IDS[(endpoint, method)]
    for key in ("summary", "description"):  # (the docstrings' reST literals as Markdown's)
        if key in operation:
            operation[key] = operation[key].replace("``", "`")
    # (Status keys as strings: flask-smorest's are integers until apispec cleans them.)
    responses = operation["responses"] = {str(k): v for k, v in operation.get("responses", {}).items()}
    throttled = admission.required_role(endpoint, method.upper()) is not None
    for status, codes in _codes(endpoint, method, path_args).items():
        response = error_response(spec, status, codes)
        written = responses.get(str(status))  # (a view's own words about it come first)
        if isinstance(written, dict) and written.get("description"):
            response["description"] = f"{written['description']}: " + response["description"].partition(": ")[2]
        responses[str(status)] = response
    # 500, not "default": a default would allow any status, and the tests check that none other comes.
    responses.pop("default", None)
    responses["500"] = {
        "description": "Unexpected error: `internal_error` (the details are in the conductor's log)",
        "content": {errors.PROBLEM_JSON: _problem_content(spec, ("internal_error",))},
    }
    for status, response in responses.items():
        if not isinstance(response, dict) or "$ref" in response:
            continue
        headers = response.setdefault("headers", {})
        if throttled:
            headers.update(RATE_LIMIT_HEADERS)
        if status in ("201", "202") and endpoint not in UNLOCATED:
            headers.update(LOCATION)
        if not headers:
            del response["headers"]
    if (endpoint, method) in CONDITIONAL_GETS:
        responses["304"] = {**NOT_MODIFIED, "headers": {**ETAG, **(RATE_LIMIT_HEADERS if throttled else {})}}
        responses["200"].setdefault("headers", {}).setdefault("ETag", ETAG["ETag"])
        operation.setdefault("parameters", []).append("If-None-Match")  # (a reference: apispec resolves names)
    if endpoint in admission.WORK_ENDPOINTS and method not in ("get", "head"):
        operation.setdefault("parameters", []).append("Idempotency-Key")


class ContractPlugin(BasePlugin):
    """Completes each operation as flask-smorest registers it (see the module docstring).

    The examples and the ``Idempotency-Key`` and ``If-None-Match`` parameters are components,
    each written once and referred to by the operations.  (Not the
    headers: schemathesis leaves a referred header unchecked.)
    """

    spec: APISpec

    def init_spec(self, spec: APISpec) -> None:
        self.spec = spec
        for code in EXAMPLES:
            spec.components.example(code, example(code), lazy=True)
        spec.components.parameter("Idempotency-Key", "header", IDEMPOTENCY_KEY, lazy=True)
        spec.components.parameter("If-None-Match", "header", IF_NONE_MATCH, lazy=True)

    def operation_helper(self, path: str | None = None, operations: dict[str, Any] | None = None,
                         **kwargs: Any) -> None:
        rule = kwargs.get("rule")
        if rule is None or not operations:
            return
        for method, operation in operations.items():
            if method in ("get", "put", "post", "patch", "delete"):
                complete(self.spec, rule.endpoint, method, set(rule.arguments), operation)


TABLE_BEGIN = "<!-- error-table:begin (generated: python tools/error_table.py < openapi.json) -->"
TABLE_END = "<!-- error-table:end -->"


def error_table(spec: dict[str, Any]) -> str:
    """docs/api.md's table of error codes, from the document ``spec``: status, code, title, the operations."""
    found: dict[tuple[int, str], list[str]] = {}
    for item in spec["paths"].values():
        for method, operation in item.items():
            if method not in ("get", "put", "post", "patch", "delete"):
                continue
            for status, response in operation["responses"].items():
                content = response.get("content", {}).get(errors.PROBLEM_JSON, {})
                for code in content.get("examples", {}):
                    found.setdefault((int(status), code), []).append(operation["operationId"])
    every = {op["operationId"] for item in spec["paths"].values() for m, op in item.items()
             if m in ("get", "put", "post", "patch", "delete")}
    lines = [TABLE_BEGIN, "| status | code (`type` ends with it) | title | operations |", "|---|---|---|---|"]
    for (status, code), names in sorted(found.items()):
        if set(names) == every:
            where = "every operation"
        elif len(names) > len(every) / 2:
            where = "every operation but " + ", ".join(f"`{n}`" for n in sorted(every - set(names)))
        else:
            where = ", ".join(f"`{n}`" for n in sorted(names))
        lines.append(f"| {status} | `{code}` | {errors.problem_title(code)} | {where} |")
    lines.append(TABLE_END)
    return "\n".join(lines)

