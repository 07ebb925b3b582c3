"""Database tables (SQLAlchemy 2.0 typed declarative mapping).

The schema itself is created and upgraded by the Alembic migrations in
``db/versions``; these classes must match them (a test compares the two).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    literal_column,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def new_request_id() -> str:
    """A new request id, ``req-`` followed by 32 hex digits."""
    return f"req-{uuid.uuid4().hex}"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    SQLite has no time zones and hands back naive values; PostgreSQL keeps
    them.  Either way callers only ever see aware UTC datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Base of every table."""

    # Every mapped class here is one Table (SQLAlchemy types ``__table__`` as
    # the wider FromClause, which Core's insert() and update() refuse).
    __table__: ClassVar[Table]

    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class Node(Base):
    """A physical server and its BMC."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str | None] = mapped_column(String(255), unique=True)
    driver: Mapped[str] = mapped_column(String(64))
    #: Secrets (keys ending in ``password``) are stored sealed (``fernet:...``).
    driver_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Private to drivers and workflows; never shown by the API.
    driver_internal_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    power_state: Mapped[str | None] = mapped_column(String(16))
    target_power_state: Mapped[str | None] = mapped_column(String(16))
    provision_state: Mapped[str] = mapped_column(String(16))
    target_provision_state: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    maintenance: Mapped[bool] = mapped_column(default=False)
    maintenance_reason: Mapped[str | None] = mapped_column(Text)
    #: Why the conductor itself put the node into maintenance (e.g. ``power failure``).
    fault: Mapped[str | None] = mapped_column(String(64))
    #: Power state reads in a row that failed (the power state observer's count).
    power_sync_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The short lock: the conductor talking to the BMC right now.
    reservation: Mapped[str | None] = mapped_column(String(255))
    #: The long lock: the request (queued, running or waiting) that owns the node.
    active_request_id: Mapped[str | None] = mapped_column(String(40))
    #: The instance deployed on the node (one node per instance); an undeploy clears it.
    instance_uuid: Mapped[str | None] = mapped_column(String(36))
    #: What the instance's deploy uses (``image_source``, ``image_checksum``...); an undeploy clears it.
    instance_info: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    #: The operator's own data about the node.
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    #: The node's scheduling class (Ironic's ``resource_class``).
    resource_class: Mapped[str | None] = mapped_column(String(80))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: Incremented in SQL by every UPDATE made through these models (ORM flush
    #: or Core ``update(Node)``): the node's ETag, exact even for two writes in
    #: the same microsecond or from hosts whose clocks disagree.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1",
                                         onupdate=literal_column("version") + 1)

    __table_args__ = (
        Index("ix_nodes_provision_state", "provision_state"),
        Index("ix_nodes_reservation", "reservation"),
        Index("ix_nodes_instance_uuid", "instance_uuid", unique=True),
    )


class Port(Base):
    """A network interface of a node, known by its MAC address.

    A node network-boots from its ports: the boot script of a MAC
    (``GET /v1/boot/<mac>``) and the DHCP host entries are found through
    them.  A MAC belongs to one port of the whole deployment.
    """

    __tablename__ = "ports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    #: Lower case, colon separated (``52:54:00:12:34:56``).
    address: Mapped[str] = mapped_column(String(17), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    node: Mapped[Node] = relationship(lazy="joined", innerjoin=True)

    __table_args__ = (Index("ix_ports_node_id", "node_id"),)


class Image(Base):
    """An image registered by name (``conductor image add NAME FILE``).

    The file is the conductor's own copy (or a hard link) under the image
    directory, so changing or removing the file it was added from changes
    nothing; its SHA-256, size and compression were computed when it was
    added.
    """

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    #: Of the file as stored and served (compressed, if it is).
    sha256: Mapped[str] = mapped_column(String(64))
    #: Bytes of the file as stored.
    size: Mapped[int] = mapped_column(BigInteger)
    #: ``none``, ``gzip``, ``xz`` or ``zstd``, from the file's first bytes.
    compression: Mapped[str] = mapped_column(String(8))
    #: Bytes once decompressed (what the agent writes); None when not known.
    image_size: Mapped[int | None] = mapped_column(BigInteger)
    #: The file's name in the image directory.
    file_name: Mapped[str] = mapped_column(String(255))
    #: Where it was added from (for people; never read again).
    source: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Request(Base):
    """An asynchronous state change of one node."""

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_request_id)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    node_uuid: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(32))
    #: Extra arguments of the request (part of its identity for de-duplication).
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    callback_url: Mapped[str | None] = mapped_column(Text)
    #: Who asked: the API client's identity (token id, or address without auth).
    client: Mapped[str | None] = mapped_column(String(64))
    #: The step the conductor is on, for people watching.
    step: Mapped[str | None] = mapped_column(String(64))
    #: Private continuation state of the workflow running this request.
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: The conductor executing a step of this request right now, if any.
    conductor: Mapped[str | None] = mapped_column(String(255))
    #: When the next step is due (the request sleeps in Redis until then).
    wake_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    #: The delivery of this request's own callback (None until it finishes).
    callback_delivery: Mapped[CallbackDelivery | None] = relationship(
        primaryjoin="and_(Request.id == foreign(CallbackDelivery.request_id), "
        "CallbackDelivery.subscription_id.is_(None))",
        viewonly=True,
        uselist=False,
    )

    __table_args__ = (
        Index("ix_requests_node_created", "node_id", "created_at"),
        # Any state look-up (the sweep's, the counts), and the retention
        # purge's: finished requests past their retention, read a batch at a
        # time off this index however many finished rows there are.
        Index("ix_requests_state_finished", "state", "finished_at"),
    )


class NodeHistory(Base):
    """One entry of a node's history: a transition, request or error."""

    __tablename__ = "node_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    event: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(40))
    conductor: Mapped[str | None] = mapped_column(String(255))
    provision_state: Mapped[str | None] = mapped_column(String(16))
    power_state: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_node_history_node_id", "node_id", "id"),
        Index("ix_node_history_created_at", "created_at"),  # the retention purge
    )


class ConductorRecord(Base):
    """A conductor (worker process) and its heartbeat."""

    __tablename__ = "conductors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: False once the conductor stopped cleanly or was declared dead.
    online: Mapped[bool] = mapped_column(default=True)


class ApiToken(Base):
    """A bearer token of the API; only a hash of its secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(64))
    #: ``reader``, ``operator`` or ``admin``.
    role: Mapped[str] = mapped_column(String(16))
    #: SHA-256 (hex) of the secret; the secret is shown once, at creation.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]


class IdempotencyRecord(Base):
    """An ``Idempotency-Key`` a client used, and the request it produced."""

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The client's identity (token id, or address without auth): keys are per client.
    client: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    #: SHA-256 of method, path and body: the same key with another body is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]

    __table_args__ = (
        UniqueConstraint("client", "key", name="uq_idempotency_keys_client_key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
        # ON DELETE CASCADE: each request the purge deletes looks up its keys.
        Index("ix_idempotency_keys_request_id", "request_id"),
    )


class ThrottleRecord(Base):
    """The operator's throttle settings (one row): only the values changed from the defaults."""

    __tablename__ = "throttle_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    values: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(default=1)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
class CallbackSecret(Base):
    """The webhook signing secret of one client (``""``: the deployment's own).

    HMAC needs the secret itself, so it is stored sealed (``fernet:...``,
    see conductor/secretbox.py), not hashed; the API shows it once, when
    it is created, and never again.  After a rotation the previous secret
    keeps signing (both signatures are sent) until ``previous_expires_at``.
    """

    __tablename__ = "callback_secrets"

    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Sealed (a plain value is one written before migration 0006).
    secret: Mapped[str] = mapped_column(String(255))
    previous_secret: Mapped[str | None] = mapped_column(String(255))
    previous_expires_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    rotated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CallbackSubscription(Base):
    """A standing order to POST matching events to ``url``."""

    __tablename__ = "callback_subscriptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    #: Event type patterns (``*`` is a wildcard).
    events: Mapped[list[str]] = mapped_column(default=list)
    #: Node UUIDs whose events are wanted; empty means every node.
    nodes: Mapped[list[str]] = mapped_column(default=list)
    #: Who created it: its deliveries are signed with this client's secret.
    client: Mapped[str | None] = mapped_column(String(64))
    #: False once the receiver answered 410 Gone.
    active: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CallbackDelivery(Base):
    """One event to POST to one URL: the outbox row and its delivery status.

    Written in the same transaction as the state change it reports, so it
    is never lost; delivered (and retried) by the callback workers.  There
    is deliberately no foreign key: a delivery outlives a deleted node,
    request or subscription.
    """

    __tablename__ = "callback_deliveries"

    #: Also the delivery order: for one ``order_key``, lower ids go first.
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The ``webhook-id`` header: the same on every attempt.
    webhook_id: Mapped[str] = mapped_column(String(40), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    #: Whose secret signs it (``""``: the deployment's).
    signer: Mapped[str] = mapped_column(String(64), default="")
    subscription_id: Mapped[str | None] = mapped_column(String(40))
    request_id: Mapped[str | None] = mapped_column(String(40))
    node_uuid: Mapped[str | None] = mapped_column(String(36))
    #: Deliveries sharing a key (one subscription, one node) go out in order.
    order_key: Mapped[str | None] = mapped_column(String(80))
    #: The exact JSON body, fixed when the event happened.
    body: Mapped[str] = mapped_column(Text)
    #: ``pending``, ``delivered`` or ``failed``.
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    #: When the next attempt is due (while pending).
    next_at: Mapped[dt.datetime | None]
    #: When a pump last put it on the callbacks queue.
    enqueued_at: Mapped[dt.datetime | None]
    #: A worker is attempting it until then (``claimed_by`` says which).
    lease_until: Mapped[dt.datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_callback_deliveries_due", "state", "next_at"),
        Index("ix_callback_deliveries_order", "order_key", "id"),
        Index("ix_callback_deliveries_request", "request_id"),
        Index("ix_callback_deliveries_subscription", "subscription_id", "id"),
        Index("ix_callback_deliveries_ended", "state", "finished_at"),  # the retention purge
    )
