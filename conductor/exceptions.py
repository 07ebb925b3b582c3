"""The conductor's errors, each with an HTTP status and a machine-readable code.

The whole tree::

    ConductorError (500 internal_error)
    +-- Unauthorized (401 unauthorized)
    |   +-- InvalidAgentToken (401 invalid_agent_token)
    |   +-- InvalidImageTicket (401 invalid_image_ticket)
    +-- Forbidden (403 forbidden)
    +-- NotFound (404 not_found)
    |   +-- NodeNotFound (404 node_not_found)
    |   +-- RequestNotFound (404 request_not_found)
    |   +-- TokenNotFound (404 token_not_found)
    |   +-- SubscriptionNotFound (404 subscription_not_found)
    |   +-- PortNotFound (404 port_not_found)
    |   +-- ImageNotFound (404 image_not_found)
    +-- InvalidInput (400 validation_error)
    |   +-- InvalidTransition (400 invalid_transition)
    |   +-- NodeInMaintenance (400 node_in_maintenance)
    |   +-- UnknownDriver (400 unknown_driver)
    |   +-- CallbackUrlDenied (400 callback_url_denied)
    |   +-- InvalidEventFilter (400 invalid_event_filter)
    +-- Conflict (409 conflict)
    |   +-- TransitionInProgress (409 transition_in_progress)
    |   +-- RequestNotCancellable (409 request_not_cancellable)
    |   +-- NodeNameInUse (409 node_name_in_use)
    |   +-- NodeNotDeletable (409 node_not_deletable)
    |   +-- NodeLocked (409 node_locked)
    |   +-- NodeNotWaiting (409 node_not_waiting)
    |   +-- PortAddressInUse (409 port_address_in_use)
    |   +-- ImageNameInUse (409 image_name_in_use)
    |   +-- ImageInUse (409 image_in_use)
    |   +-- InstanceAssociated (409 instance_associated)
    +-- NotAcceptable (406 not_acceptable)
    +-- PreconditionFailed (412 precondition_failed)
    +-- IdempotencyKeyReused (422 idempotency_key_reused)
    +-- ServiceUnavailable (503 service_unavailable)
    |   +-- QueueUnavailable (503 queue_unavailable)
    |   +-- RateLimited (503 rate_limited)
    |   +-- QueueFull (503 queue_full)
    |   +-- DatabaseUnavailable (503 database_unavailable)
    |   +-- StreamsBusy (503 streams_busy)
    +-- NoSecretKey (500 no_secret_key)
    +-- DriverError (500 driver_error)
        +-- BMCError (502 bmc_error)
        +-- SecretUnreadable (500 secret_unreadable)

``DriverError`` and its children are raised by drivers inside conductor
workers; they end up in a node's ``last_error`` and a request's ``error``
rather than in an HTTP response.  The API has one handler that turns any
``ConductorError`` into ``{"code", "status", "message", ...details}``
(:meth:`ConductorError.to_dict`), served as RFC 9457 problem details
(``conductor/api/errors.py`` adds ``type``, ``title`` and ``detail``); for a
5xx only the class's generic message is shown, never the exception text.
A ``ServiceUnavailable`` is the exception: its message is written for the
client, and its ``retry_after`` (seconds) becomes the ``Retry-After``
header and a ``retry_after`` field of the body.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ConductorError(Exception):
    """Base of every error the conductor raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    #: What a client is told for a 5xx instead of the (internal) message.
    public_message: ClassVar[str] = "Internal error; see the conductor logs."

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.__doc__ or self.code)
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of an error response (5xx details are withheld)."""
        if self.status >= 500:
            body: dict[str, Any] = {
                "code": self.code,
                "status": self.status,
                "message": self.public_message,
            }
            if isinstance(self, ServiceUnavailable):
                body["message"] = self.message
                if self.details.get("retry_after") is not None:
                    body["retry_after"] = int(self.details["retry_after"])
            return body
        return {"code": self.code, "status": self.status, "message": self.message, **self.details}


class Unauthorized(ConductorError):
    """No valid bearer token was presented (missing, unknown or revoked)."""

    status = 401
    code = "unauthorized"


class InvalidAgentToken(Unauthorized):
    """The heartbeat did not carry the agent token issued for the node's current workflow."""

    code = "invalid_agent_token"


class InvalidImageTicket(Unauthorized):
    """The image URL given to an agent is forged, expired, or its deploy no longer waits for the agent."""

    code = "invalid_image_ticket"


class Forbidden(ConductorError):
    """The token's role does not allow this operation; ``required_role`` names the one that does."""

    status = 403
    code = "forbidden"


class NotFound(ConductorError):
    """The resource does not exist."""

    status = 404
    code = "not_found"


class NodeNotFound(NotFound):
    """No node with that UUID or name."""

    code = "node_not_found"


class RequestNotFound(NotFound):
    """No request with that id."""

    code = "request_not_found"


class TokenNotFound(NotFound):
    """No API token with that id."""

    code = "token_not_found"
class SubscriptionNotFound(NotFound):
    """No callback subscription with that id."""

    code = "subscription_not_found"


class PortNotFound(NotFound):
    """No port with that UUID."""

    code = "port_not_found"


class ImageNotFound(NotFound):
    """No image registered with that name."""

    code = "image_not_found"


class InvalidInput(ConductorError):
    """The request body or parameters are invalid; ``errors`` maps fields to messages."""

    status = 400
    code = "validation_error"


class InvalidTransition(InvalidInput):
    """The state machine does not allow that target from the node's state."""

    code = "invalid_transition"


class NodeInMaintenance(InvalidInput):
    """The node is in maintenance; provisioning actions are refused."""

    code = "node_in_maintenance"


class UnknownDriver(InvalidInput):
    """No driver by that name is loaded."""

    code = "unknown_driver"


class CallbackUrlDenied(InvalidInput):
    """The callback destination is not allowed (deny list, allow list, or unresolvable)."""

    code = "callback_url_denied"


class InvalidEventFilter(InvalidInput):
    """An event stream's filter names no event type or no node, or its ``Last-Event-ID`` is no event id."""

    code = "invalid_event_filter"


class Conflict(ConductorError):
    """The resource is not in a state that allows the operation."""

    status = 409
    code = "conflict"


class TransitionInProgress(Conflict):
    """Another transition of the node is in progress; ``request_id`` names it."""

    code = "transition_in_progress"


class RequestNotCancellable(Conflict):
    """The request has started (or finished) and can no longer be cancelled."""

    code = "request_not_cancellable"


class NodeNameInUse(Conflict):
    """Another node already has that name."""

    code = "node_name_in_use"


class PortAddressInUse(Conflict):
    """Another port (of this node or another) already has that MAC address."""

    code = "port_address_in_use"


class ImageNameInUse(Conflict):
    """Another image is already registered with that name."""

    code = "image_name_in_use"


class ImageInUse(Conflict):
    """A request in progress deploys the image; ``request_ids`` names them."""

    code = "image_in_use"


class InstanceAssociated(Conflict):
    """Another node is already associated with that instance (``instance_uuid``); ``node`` names it."""

    code = "instance_associated"


class NodeNotDeletable(Conflict):
    """The node's provision state does not allow deleting it."""

    code = "node_not_deletable"


class NodeLocked(Conflict):
    """A conductor holds the node's reservation."""

    code = "node_locked"


class NodeNotWaiting(Conflict):
    """The node is not waiting for its agent (no wait state, or its call-back was already taken)."""

    code = "node_not_waiting"


class NotAcceptable(ConductorError):
    """The API version asked for is not served, or the call needs another version of the API."""

    status = 406
    code = "not_acceptable"


class PreconditionFailed(ConductorError):
    """The resource changed since the version the client names (``If-Match``)."""

    status = 412
    code = "precondition_failed"


class IdempotencyKeyReused(ConductorError):
    """The ``Idempotency-Key`` was already used by this client for a different request."""

    status = 422
    code = "idempotency_key_reused"


class ServiceUnavailable(ConductorError):
    """A backing service is unavailable; retry later."""

    status = 503
    code = "service_unavailable"


class QueueUnavailable(ServiceUnavailable):
    """The work queue (Redis) cannot be reached; the request was not accepted."""

    code = "queue_unavailable"


class RateLimited(ServiceUnavailable):
    """Over a request budget (global or per client); retry after ``retry_after`` seconds."""

    code = "rate_limited"


class QueueFull(ServiceUnavailable):
    """Too many requests wait for a conductor; nothing was recorded; retry after ``retry_after`` seconds."""

    code = "queue_full"


class DatabaseUnavailable(ServiceUnavailable):
    """The database failed transiently (connection lost, deadlock, busy) on every try; retry later."""

    code = "database_unavailable"


class StreamsBusy(ServiceUnavailable):
    """Every event stream slot of this API process is taken; ``retry_after`` says when to try again."""

    code = "streams_busy"


class DriverError(ConductorError):
    """A driver failed to perform an action; the message is for the operator."""

    code = "driver_error"


class BMCError(DriverError):
    """A BMC failed, refused or did not answer a command."""

    status = 502
    code = "bmc_error"


class NoSecretKey(ConductorError):
    """No key to seal or open secrets at rest with (none configured, or an invalid one)."""

    code = "no_secret_key"


class SecretUnreadable(DriverError):
    """A stored secret that no key of the key ring opens (the key was lost, or differs on this host)."""

    code = "secret_unreadable"
