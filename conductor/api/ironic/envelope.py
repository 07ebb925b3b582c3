"""Every answer under ``/baremetal`` as Ironic gives it: version headers, request id, error envelope.

Errors are raised and handled as everywhere else in the API (one mapping,
:mod:`conductor.api.errors`, with the same status codes, which are
Ironic's: 400 invalid input or state request, 404, 406, 409 for a node
busy with another transition, 503 with ``Retry-After``); this hook then
rewrites the body into Ironic's envelope, as Ironic's own
``ParsableErrorMiddleware`` does::

    {"error_message": "{\\"faultcode\\": \\"Client\\", \\"faultstring\\": \\"...\\", \\"debuginfo\\": null}"}

(the inner document is a JSON string, which is what python-ironicclient
and openstacksdk parse).  Our machine-readable ``code`` goes along as
``X-Conductor-Error-Code``.
"""

from __future__ import annotations

import json
import uuid

from flask import Response, request

from conductor.api.admission import OPENSTACK_PREFIX
from conductor.api.ironic import versions
from conductor.api.ironic.common import OPENSTACK_REQUEST_ID_HEADER

ERROR_CODE_HEADER = "X-Conductor-Error-Code"


def _ironic_call() -> bool:
    return request.path == OPENSTACK_PREFIX or request.path.startswith(OPENSTACK_PREFIX + "/")


def negotiate_version() -> None:
    """Before any call under ``/baremetal``: the call's microversion (406 when not served)."""
    if _ironic_call():
        versions.negotiate(request.headers)


def fault(status: int, message: str) -> str:
    """Ironic's ``error_message``: a JSON document in a string."""
    return json.dumps({"faultcode": "Client" if status < 500 else "Server", "faultstring": message,
                       "debuginfo": None})


def finish(response: Response) -> Response:
    """After any call under ``/baremetal``: Ironic's headers, and its error envelope."""
    if not _ironic_call():
        return response
    # (An unmatched route never negotiated: it still says what is served, as Ironic does.)
    response.headers.update(versions.response_headers())
    if OPENSTACK_REQUEST_ID_HEADER not in response.headers:
        response.headers[OPENSTACK_REQUEST_ID_HEADER] = f"req-{uuid.uuid4()}"
    if response.status_code >= 400 and not response.direct_passthrough:
        body = response.get_json(silent=True)
        message = response.get_data(as_text=True)
        if isinstance(body, dict) and "error_message" in body:
            return response
        if isinstance(body, dict):
            message = str(body.get("message") or message)
            if body.get("code"):
                response.headers[ERROR_CODE_HEADER] = str(body["code"])
        response.set_data(json.dumps({"error_message": fault(response.status_code, message)}))
        response.content_type = "application/json"
    return response
