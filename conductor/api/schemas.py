"""Marshmallow schemas of the API's bodies, arguments and responses.

An output schema is the one definition of its representation: the views
return model objects (or the rows the services read) and flask-smorest
dumps them through the schema, which also documents them in the OpenAPI
spec.  A field whose name differs from the model's says so with
``attribute``; what is hidden or reshaped (masked secrets, the config drive
by size, a request's callback delivery) is a field class here.

One hot path builds its JSON by hand for speed, right after its schema:
:func:`node_states_json` (``GET /v1/nodes/<id>/states``, polled by every
client).  ``tests/unit/api/test_representations.py`` holds it equal to the
schema's dump, and fails when a field is added to one and not the other.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
import sqlalchemy as sa
from marshmallow import validate

from conductor.callbacks import status
from conductor.drivers import mask_secrets
from conductor.fsm.states import PowerState, ProvisionState, ProvisionTarget, RequestKind, RequestState
from conductor.service.params import BOOT_DEVICES, POWER_TARGETS, public_params

MAX_PAGE = 1000


class Strict(ma.Schema):
    """Unknown fields are errors, not silently ignored."""

    class Meta:
        unknown = ma.RAISE


class NodeCreate(Strict):
    uuid = ma.fields.UUID(load_default=None)
    name = ma.fields.String(load_default=None, allow_none=True)
    driver = ma.fields.String(required=True)
    driver_info = ma.fields.Dict(keys=ma.fields.String(), load_default=dict)
    properties = ma.fields.Dict(keys=ma.fields.String(), load_default=dict)
    maintenance = ma.fields.Boolean(load_default=False)
    maintenance_reason = ma.fields.String(load_default=None, allow_none=True)
    ports = ma.fields.List(
        ma.fields.Raw(), load_default=None,
        metadata={"description": "MAC addresses of the node's NICs: a port is created for each"},
    )


class NodePatch(Strict):
    """A JSON merge patch (RFC 7396): ``null`` inside a dict removes a key."""

    name = ma.fields.String(allow_none=True)
    driver = ma.fields.String()
    driver_info = ma.fields.Dict(keys=ma.fields.String(), allow_none=True)
    properties = ma.fields.Dict(keys=ma.fields.String(), allow_none=True)
    maintenance = ma.fields.Boolean()
    maintenance_reason = ma.fields.String(allow_none=True)


class MaskedDriverInfo(ma.fields.Dict):
    """A node's ``driver_info`` with every secret shown as ``******`` (secrets are write-only)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> dict[str, Any] | None:
        return None if value is None else mask_secrets(value)


class Node(ma.Schema):
    """Dumps a :class:`conductor.models.Node`."""

    uuid = ma.fields.String()
    name = ma.fields.String(allow_none=True)
    driver = ma.fields.String()
    driver_info = MaskedDriverInfo(metadata={"description": "Secrets (keys ending in 'password') show as ******"})
    properties = ma.fields.Dict()
    power_state = ma.fields.String(allow_none=True)
    target_power_state = ma.fields.String(allow_none=True)
    provision_state = ma.fields.String()
    target_provision_state = ma.fields.String(allow_none=True)
    last_error = ma.fields.String(allow_none=True)
    maintenance = ma.fields.Boolean()
    maintenance_reason = ma.fields.String(allow_none=True)
    fault = ma.fields.String(allow_none=True)
    reservation = ma.fields.String(allow_none=True)
    request_id = ma.fields.String(
        attribute="active_request_id", allow_none=True, metadata={"description": "The node's active request"}
    )
    created_at = ma.fields.DateTime()
    updated_at = ma.fields.DateTime()


class Page(Strict):
    limit = ma.fields.Integer(load_default=100, validate=validate.Range(1, MAX_PAGE))
    marker = ma.fields.String(load_default=None)


class NodeQuery(Page):
    provision_state = ma.fields.String(validate=validate.OneOf([str(s) for s in ProvisionState]))
    power_state = ma.fields.String(validate=validate.OneOf([str(s) for s in PowerState]))
    driver = ma.fields.String()
    maintenance = ma.fields.Boolean()


class NodeList(ma.Schema):
    nodes = ma.fields.List(ma.fields.Nested(Node))
    next = ma.fields.String(allow_none=True, metadata={"description": "URL of the next page"})


class NodeStates(ma.Schema):
    """Dumps a :func:`conductor.service.nodes.states` row; :func:`node_states_json` is its hot path."""

    power_state = ma.fields.String(allow_none=True)
    target_power_state = ma.fields.String(allow_none=True)
    provision_state = ma.fields.String()
    target_provision_state = ma.fields.String(allow_none=True)
    last_error = ma.fields.String(allow_none=True)
    request_id = ma.fields.String(attribute="active_request_id", allow_none=True)
    step = ma.fields.String(allow_none=True, metadata={"description": "The active request's current step"})
    updated_at = ma.fields.DateTime()


def node_states_json(row: sa.Row[*tuple[Any, ...]]) -> dict[str, Any]:
    """``NodeStates().dump(row)``, built by hand: every client polls this.

    About 4 us a row against 15 us for the dump (December 2026);
    ``tests/unit/api/test_representations.py`` holds the two equal.
    """
    return {
        "power_state": row.power_state,
        "target_power_state": row.target_power_state,
        "provision_state": row.provision_state,
        "target_provision_state": row.target_provision_state,
        "last_error": row.last_error,
        "request_id": row.active_request_id,
        "step": row.step,
        "updated_at": row.updated_at.isoformat(),
    }


_CALLBACK = ma.fields.Url(
    schemes={"http", "https"},
    require_tld=False,
    validate=validate.Length(max=2048),
    load_default=None,
    allow_none=True,
    metadata={"description": "POSTed to when the request finishes"},
)


class PowerChange(Strict):
    target = ma.fields.String(required=True, validate=validate.OneOf([str(t) for t in POWER_TARGETS]))
    callback_url = _CALLBACK


class BootDeviceChange(Strict):
    boot_device = ma.fields.String(required=True, validate=validate.OneOf(list(BOOT_DEVICES)))
    persistent = ma.fields.Boolean(load_default=False, metadata={"description": "Every boot, not only the next"})
    callback_url = _CALLBACK


class BootDevice(ma.Schema):
    boot_device = ma.fields.String(allow_none=True, metadata={"description": "null: never set or read yet"})
    persistent = ma.fields.Boolean(allow_none=True)
    observed_at = ma.fields.String(
        allow_none=True, metadata={"description": "When the conductor last set or read it (ISO 8601, UTC)"}
    )
    source = ma.fields.String(
        allow_none=True, metadata={"description": "bmc: read back from the BMC; set: what was sent (read-back failed)"}
    )


class ProvisionChange(Strict):
    target = ma.fields.String(required=True, validate=validate.OneOf([str(t) for t in ProvisionTarget]))
    callback_url = _CALLBACK
    image_source = ma.fields.String(
        metadata={"description": "Image to deploy (active, rebuild; required there): "
                                 "an http(s)/file URL or an image name"}
    )
    image_checksum = ma.fields.String(
        metadata={"description": "SHA-256 of the image file (active, rebuild): required for http(s) URLs, "
                                 "checked for files and registered images"}
    )
    configdrive = ma.fields.Raw(
        metadata={"description": "Config drive (active, rebuild): a string or a JSON object, at most 64 KiB"}
    )
    erase = ma.fields.String(
        metadata={"description": "What cleaning erases (clean, provide, deleted): metadata or full; "
                                 "default: the setting clean_erase"}
    )


class CommandResult(Strict):
    id = ma.fields.String(required=True, validate=validate.Length(max=64))
    status = ma.fields.String(required=True, validate=validate.OneOf(["succeeded", "failed"]))
    error = ma.fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))
    inventory = ma.fields.Dict(load_default=None, allow_none=True,
                               metadata={"description": "inspect: cpus, cpu_arch, memory_mb, local_gb, disks, nics"})


class Heartbeat(Strict):
    agent_version = ma.fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    command_result = ma.fields.Nested(
        CommandResult, load_default=None, allow_none=True,
        metadata={"description": "The outcome of the command this agent was given"},
    )


class HeartbeatAnswer(ma.Schema):
    node = ma.fields.String()
    provision_state = ma.fields.String()
    command = ma.fields.Dict(allow_none=True, metadata={"description": "What the agent must do: id, name, params"})
    accepted = ma.fields.Boolean(metadata={"description": "The command_result was taken"})


class CallbackStatus(ma.Schema):
    """Dumps the :class:`conductor.models.CallbackDelivery` of a request's ``callback_url``."""

    id = ma.fields.String(
        attribute="webhook_id", allow_none=True, metadata={"description": "The webhook-id of the delivery"}
    )
    state = ma.fields.String(metadata={"description": "pending, delivered or failed"})
    attempts = ma.fields.Integer()
    last_status = ma.fields.Integer(allow_none=True, metadata={"description": "HTTP status of the last attempt"})
    last_error = ma.fields.String(allow_none=True)
    next_at = ma.fields.DateTime(allow_none=True, metadata={"description": "When the next attempt is due"})


#: A request's ``callback`` before its delivery exists (it is made when the
#: request finishes), in :class:`CallbackStatus`'s attribute names.
PENDING_CALLBACK: dict[str, Any] = {
    "webhook_id": None, "state": "pending", "attempts": 0, "last_status": None, "last_error": None, "next_at": None,
}


class RequestCallback(ma.fields.Nested):
    """A request's ``callback``: null without ``callback_url``, ``pending`` until its delivery exists."""

    def get_value(self, obj: Any, attr: str, accessor: Any = None, default: Any = ma.missing) -> Any:
        if not obj.callback_url:
            return None
        return status.request_delivery(obj) or PENDING_CALLBACK


class PublicParams(ma.fields.Dict):
    """A request's parameters as shown (:func:`conductor.service.params.public_params`)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> dict[str, Any]:
        return public_params(value)


class RequestOut(ma.Schema):
    """Dumps a :class:`conductor.models.Request`."""

    id = ma.fields.String()
    node_uuid = ma.fields.String()
    kind = ma.fields.String()
    target = ma.fields.String()
    params = PublicParams(
        metadata={"description": "image_source (a URL's password and query string as ******), "
                              "configdrive (its size only)"}
    )
    state = ma.fields.String()
    step = ma.fields.String(allow_none=True, metadata={"description": "What the conductor is doing now"})
    error = ma.fields.String(allow_none=True)
    conductor = ma.fields.String(allow_none=True)
    callback_url = ma.fields.String(allow_none=True)
    callback = RequestCallback(
        CallbackStatus, allow_none=True, metadata={"description": "Delivery of callback_url (null without one)"}
    )
    created_at = ma.fields.DateTime()
    started_at = ma.fields.DateTime(allow_none=True)
    finished_at = ma.fields.DateTime(allow_none=True)
    updated_at = ma.fields.DateTime()


class RequestQuery(Page):
    node = ma.fields.String()
    state = ma.fields.String(validate=validate.OneOf([str(s) for s in RequestState]))
    kind = ma.fields.String(validate=validate.OneOf([str(k) for k in RequestKind]))


class RequestWait(ma.Schema):
    """``GET /v1/requests/<id>?wait=N``: a long poll."""

    class Meta:
        unknown = ma.EXCLUDE

    wait = ma.fields.Float(load_default=0.0, validate=validate.Range(min=0), metadata={
        "description": "Answer as soon as the request finishes, or after this many seconds with its "
                       "current state (at most the setting request_wait_max, 60 s by default)"})


class EventQuery(Strict):
    """``GET /v1/events`` filters (each may be repeated, or hold comma-separated values)."""

    type = ma.fields.List(ma.fields.String(), load_default=list, metadata={
        "description": "Event type patterns, * matching anything (node.*, request.finished); default: all"})
    node = ma.fields.List(ma.fields.String(), load_default=list, metadata={
        "description": "Node names or UUIDs; default: every node, and the events about no node"})
    last_event_id = ma.fields.String(load_default=None, metadata={
        "description": "Resume after this event id, as the Last-Event-ID header does (which wins)"})


class RequestList(ma.Schema):
    requests = ma.fields.List(ma.fields.Nested(RequestOut))
    next = ma.fields.String(allow_none=True)


class HistoryEntry(ma.Schema):
    """Dumps a :class:`conductor.models.NodeHistory`."""

    id = ma.fields.Integer()
    created_at = ma.fields.DateTime()
    event = ma.fields.String()
    severity = ma.fields.String()
    message = ma.fields.String()
    request_id = ma.fields.String(allow_none=True)
    conductor = ma.fields.String(allow_none=True)
    provision_state = ma.fields.String(allow_none=True)
    power_state = ma.fields.String(allow_none=True)


class HistoryQuery(Strict):
    limit = ma.fields.Integer(load_default=50, validate=validate.Range(1, MAX_PAGE))
    marker = ma.fields.Integer(
        load_default=None, validate=validate.Range(0, 2**63 - 1), metadata={"description": "id of the last entry seen"}
    )


class HistoryList(ma.Schema):
    history = ma.fields.List(ma.fields.Nested(HistoryEntry))
    next = ma.fields.String(allow_none=True)


class Conductor(ma.Schema):
    name = ma.fields.String()
    hostname = ma.fields.String()
    pid = ma.fields.Integer()
    started_at = ma.fields.DateTime()
    heartbeat_at = ma.fields.DateTime()
    alive = ma.fields.Boolean()


class ConductorList(ma.Schema):
    conductors = ma.fields.List(ma.fields.Nested(Conductor))


class ThrottleSettings(ma.Schema):
    write_rate = ma.fields.Float(metadata={"description": "State changes per second, all clients (0: no limit)"})
    write_burst = ma.fields.Integer()
    client_write_rate = ma.fields.Float(metadata={"description": "State changes per second, one client (0: no limit)"})
    client_write_burst = ma.fields.Integer()
    read_rate = ma.fields.Float(metadata={"description": "Reads per second, one client (0: no limit)"})
    read_burst = ma.fields.Integer()
    max_queue_depth = ma.fields.Integer(
        metadata={"description": "Jobs waiting before new work is refused (0: no limit)"})
    bmc_min_interval = ma.fields.Float(metadata={"description": "Least seconds between two commands to one BMC"})
    worker_concurrency = ma.fields.Integer(
        metadata={"description": "Worker processes per conductor host taking jobs (0: all)"})


class ThrottlePatch(Strict):
    """Any subset of the knobs; checked against their ranges."""

    write_rate = ma.fields.Float()
    write_burst = ma.fields.Integer(strict=True)
    client_write_rate = ma.fields.Float()
    client_write_burst = ma.fields.Integer(strict=True)
    read_rate = ma.fields.Float()
    read_burst = ma.fields.Integer(strict=True)
    max_queue_depth = ma.fields.Integer(strict=True)
    bmc_min_interval = ma.fields.Float()
    worker_concurrency = ma.fields.Integer(strict=True)


class TokenCreate(Strict):
    role = ma.fields.String(required=True, validate=validate.OneOf(["reader", "operator", "admin"]))
    name = ma.fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))


class Token(ma.Schema):
    """Dumps a :class:`conductor.models.ApiToken` (never its secret or hash)."""

    id = ma.fields.String()
    name = ma.fields.String(allow_none=True)
    role = ma.fields.String()
    created_at = ma.fields.DateTime()
    revoked_at = ma.fields.DateTime(allow_none=True)


class TokenCreated(Token):
    """Dumps a :class:`conductor.auth.tokens.Issued`: the token, with its two secrets."""

    token = ma.fields.String(attribute="secret", metadata={"description": "The secret; shown only in this response"})
    signing_secret = ma.fields.String(
        metadata={"description": "Signs this client's callbacks (Standard Webhooks); shown only in this response"}
    )

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        # The secrets are the Issued's own; every other field is its token's.
        return super().get_attribute(obj if attr in ("secret", "signing_secret") else obj.token, attr, default)


class Caller(ma.Schema):
    """Dumps a :class:`conductor.auth.tokens.Principal`: who the call's token is (never its secret)."""

    client = ma.fields.String(metadata={"description": "The token's id, or the caller's address without auth"})
    role = ma.fields.String(metadata={"description": "reader, operator or admin"})
    token_id = ma.fields.String(allow_none=True, metadata={"description": "null without auth"})
    name = ma.fields.String(allow_none=True)


class TokenQuery(Strict):
    all = ma.fields.Boolean(load_default=False, metadata={"description": "Include revoked tokens"})


class TokenList(ma.Schema):
    tokens = ma.fields.List(ma.fields.Nested(Token))
class SubscriptionCreate(Strict):
    url = ma.fields.Url(schemes={"http", "https"}, require_tld=False, required=True)
    events = ma.fields.List(
        ma.fields.String(), required=True, validate=validate.Length(min=1),
        metadata={"description": "Event types; * is a wildcard (node.*, *)"},
    )
    nodes = ma.fields.List(
        ma.fields.String(), load_default=list, metadata={"description": "Node UUIDs or names; empty: all"}
    )


class Subscription(ma.Schema):
    """Dumps a :class:`conductor.models.CallbackSubscription`."""

    id = ma.fields.String()
    url = ma.fields.String()
    events = ma.fields.List(ma.fields.String())
    nodes = ma.fields.List(ma.fields.String(), metadata={"description": "Node UUIDs; empty: all"})
    active = ma.fields.Boolean(metadata={"description": "False once the receiver answered 410"})
    disabled_reason = ma.fields.String(allow_none=True)
    created_at = ma.fields.DateTime()
    updated_at = ma.fields.DateTime()


class SubscriptionList(ma.Schema):
    subscriptions = ma.fields.List(ma.fields.Nested(Subscription))


class Delivery(ma.Schema):
    """Dumps a :class:`conductor.models.CallbackDelivery` (its body is not shown)."""

    id = ma.fields.String(attribute="webhook_id", metadata={"description": "The webhook-id header"})
    event_type = ma.fields.String()
    node_uuid = ma.fields.String(allow_none=True)
    request_id = ma.fields.String(allow_none=True)
    state = ma.fields.String()
    attempts = ma.fields.Integer()
    last_status = ma.fields.Integer(allow_none=True)
    last_error = ma.fields.String(allow_none=True)
    next_at = ma.fields.DateTime(allow_none=True)
    created_at = ma.fields.DateTime()
    finished_at = ma.fields.DateTime(allow_none=True)


class DeliveryQuery(Strict):
    limit = ma.fields.Integer(load_default=50, validate=validate.Range(1, MAX_PAGE))
    marker = ma.fields.String(load_default=None, metadata={"description": "id of the last delivery seen"})


class DeliveryList(ma.Schema):
    deliveries = ma.fields.List(ma.fields.Nested(Delivery))
    next = ma.fields.String(allow_none=True)


class CallbackSecret(ma.Schema):
    client = ma.fields.String(metadata={"description": "Whose secret ('' is the deployment's)"})
    exists = ma.fields.Boolean()
    fingerprint = ma.fields.String(allow_none=True, metadata={"description": "sha256 prefix, to tell secrets apart"})
    created_at = ma.fields.DateTime(allow_none=True)
    rotated_at = ma.fields.DateTime(allow_none=True)
    previous_fingerprint = ma.fields.String(allow_none=True)
    previous_expires_at = ma.fields.DateTime(allow_none=True, metadata={"description": "Until then both sign"})


class CallbackSecretRotated(CallbackSecret):
    secret = ma.fields.String(metadata={"description": "The new secret: shown this once only"})


class PortCreate(Strict):
    node = ma.fields.String(required=True, metadata={"description": "The node's UUID or name"})
    address = ma.fields.String(required=True, metadata={"description": "MAC address (any usual spelling)"})


class Port(ma.Schema):
    """Dumps a :class:`conductor.models.Port`."""

    uuid = ma.fields.String()
    node_uuid = ma.fields.String(attribute="node.uuid")
    address = ma.fields.String(metadata={"description": "MAC address, lower case, colon separated"})
    created_at = ma.fields.DateTime()


class PortQuery(Page):
    node = ma.fields.String(metadata={"description": "Only this node's ports (UUID or name)"})
    address = ma.fields.String(metadata={"description": "Only the port with this MAC"})


class PortList(ma.Schema):
    ports = ma.fields.List(ma.fields.Nested(Port))
    next = ma.fields.String(allow_none=True, metadata={"description": "URL of the next page"})


class Image(ma.Schema):
    """Dumps a :class:`conductor.models.Image`."""

    name = ma.fields.String()
    sha256 = ma.fields.String(metadata={"description": "Of the file as stored and served"})
    size = ma.fields.Integer(metadata={"description": "Bytes of the file"})
    compression = ma.fields.String(metadata={"description": "none, gzip, xz or zstd (from the first bytes)"})
    image_size = ma.fields.Integer(allow_none=True,
                                   metadata={"description": "Bytes once decompressed (null: not known)"})
    source = ma.fields.String(allow_none=True, metadata={"description": "The file it was added from"})
    created_at = ma.fields.DateTime()


class ImageList(ma.Schema):
    images = ma.fields.List(ma.fields.Nested(Image))
    next = ma.fields.String(allow_none=True, metadata={"description": "URL of the next page"})


class Stats(ma.Schema):
    """Dumps :func:`conductor.api.metrics.summary`."""

    at = ma.fields.DateTime(metadata={"description": "When they were read: rates are counter changes over its change"})
    queue_depth = ma.fields.Integer(metadata={"description": "Jobs waiting in the work queue"})
    drain_rate = ma.fields.Float(metadata={"description": "Jobs completed per second (moving average, all conductors)"})
    requests_active = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(),
                                     metadata={"description": "Requests not finished, by state"})
    accepted = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(), metadata={
        "description": "State changes accepted (202) since the metrics began, by kind (a counter)"})
    rejected = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(), metadata={
        "description": "State changes refused since the metrics began, by error code (a counter)"})
    conductors_alive = ma.fields.Integer(metadata={"description": "Conductors whose heartbeat is recent"})
