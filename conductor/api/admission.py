"""Admission of every API call, before its view runs.

In this order, cheapest first, so that a refusal costs as little as
possible (no database access for a throttled call with a known token):

1. who: the bearer token (401 ``unauthorized``), whose role must allow the
   endpoint (403 ``forbidden``);
2. how fast and how deep: one Lua call in Redis takes a token from the
   caller's buckets and, for calls that create work, checks the work
   queue's depth (503 ``rate_limited`` / ``queue_full`` with an honest
   ``Retry-After``); every throttled response carries ``RateLimit-Policy``
   and ``RateLimit`` headers.

The rules (:data:`ADMIN_ENDPOINTS`, :data:`WORK_ENDPOINTS`) are data; views
only ask :func:`client` and :func:`idempotency_key`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from typing import cast

import redis
from flask import Flask, Response, g, request

from conductor import logs, metrics
from conductor.api.common import context, session
from conductor.auth import tokens
from conductor.auth.roles import Role, allows
from conductor.callbacks.secrets import ADDRESS_PREFIX
from conductor.context import Context
from conductor.exceptions import Forbidden, InvalidAgentToken, QueueFull, RateLimited, Unauthorized
from conductor.throttle import agents, buckets, idempotency
from conductor.throttle import settings as throttle_settings
from conductor.throttle.idempotency import IdempotencyKey

LOG = logging.getLogger(__name__)

#: Where the Ironic-compatible API is served (conductor/api/ironic/).  Under
#: it a token may also come as ``X-Auth-Token`` or as the password of HTTP
#: basic authentication: what OpenStack clients send without Keystone
#: (keystoneauth's ``admin_token`` and ``http_basic`` plugins).
OPENSTACK_PREFIX = "/baremetal"

#: Endpoints anyone may call: the service's name, the API description, the
#: agents' heartbeat (authenticated by its own per-node agent token),
#: network boot (firmware sends no credentials: see conductor/service/boot.py),
#: the agents' image downloads (by their signed URL: see conductor/images/tickets.py),
#: and the dashboard's and Swagger UI's static files (no data: the pages call the API with a token).
BOOT_ENDPOINTS = frozenset({"boot.ChainScript", "boot.MacScript", "boot.BootFile", "boot.MediaFile"})
PUBLIC_ENDPOINTS = frozenset(
    {"root", "api-docs.openapi_json", "api-docs.openapi_swagger_ui", "nodes.Heartbeat", "images.AgentImageContent",
     # Ironic's version discovery needs no token either.
     "ironic.root", "ironic.v1",
     "ui.bare", "ui.index", "ui.asset", "docs.asset"}
    | BOOT_ENDPOINTS
)
#: Endpoints only admins may call, whatever the method.
ADMIN_ENDPOINTS = frozenset({"throttle.Throttle", "tokens.Tokens", "tokens.TokenItem"})
#: Endpoints (-> request kind) whose writes create work for the conductors:
#: the queue depth applies, and they take an ``Idempotency-Key``.
WORK_ENDPOINTS = {
    "nodes.PowerState": "power", "nodes.ProvisionState": "provision", "nodes.BootDevice": "management",
    "ironic.set_power_state": "power", "ironic.set_provision_state": "provision",
    "ironic.set_boot_device": "management",
}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LIMITER = "throttle.limiter"
_LEASES = "throttle.read-leases"


def required_role(endpoint: str | None, method: str) -> Role | None:
    """The least role that may call ``method`` on ``endpoint`` (None: anyone)."""
    if endpoint in PUBLIC_ENDPOINTS:
        return None
    if endpoint in ADMIN_ENDPOINTS:
        return Role.ADMIN
    return Role.READER if method in READ_METHODS else Role.OPERATOR


def client() -> str:
    """The identity of the caller (token id, or address when auth is off)."""
    return cast(str, g.principal.client)


def principal() -> tokens.Principal:
    """Who the caller is (its token, or its address with the admin role when auth is off)."""
    return cast(tokens.Principal, g.principal)


def idempotency_key() -> IdempotencyKey | None:
    """The call's ``Idempotency-Key`` with its fingerprint, if it sent one.

    :raises InvalidInput: a malformed key.
    """
    key = idempotency.parse(request.headers.get(idempotency.HEADER))
    if key is None:
        return None
    body = request.get_json(silent=True)
    return IdempotencyKey(client(), key, idempotency.fingerprint(request.method, request.path, body))


def _authenticate(ctx: Context) -> tokens.Principal:
    if not ctx.settings.auth_enabled:
        address = f"{ADDRESS_PREFIX}{request.remote_addr or 'unknown'}"
        return tokens.Principal(client=address[:64], role=Role.ADMIN)
    secret = presented_token()
    if not secret:
        if _openstack_call():
            raise Unauthorized("This API needs a token: send 'X-Auth-Token: <token>' (or 'Authorization: Bearer "
                               "<token>', or the token as the password of HTTP basic authentication).")
        raise Unauthorized("This API needs a token: send 'Authorization: Bearer <token>'.")
    if not tokens.cached(ctx, secret)[0] and not g.get("lookup_admitted"):
        # One look-up at a time in this process: the calls that arrive together with a token this
        # process has not seen yet wait for the first one's answer (then cached) and are not charged.
        with _LOOKUP:
            if not tokens.cached(ctx, secret)[0]:
                _throttle_lookups(ctx)
                g.lookup_admitted = True  # (a run again after a database blip is not charged again)
                tokens.authenticate(ctx, secret)
    principal = tokens.authenticate(ctx, secret)
    if principal is None:
        raise Unauthorized("The token is unknown or revoked.")
    return principal


def presented_token() -> str:
    """The token the call presents (empty: none): a bearer token, or under
    :data:`OPENSTACK_PREFIX` also ``X-Auth-Token`` or HTTP basic's password."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if not _openstack_call():
        return ""
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2].strip()
    return request.headers.get("X-Auth-Token", "").strip()


def _openstack_call() -> bool:
    return request.path == OPENSTACK_PREFIX or request.path.startswith(OPENSTACK_PREFIX + "/")


_LOOKUP = threading.Lock()

#: Token look-ups in the database per client address (a process remembers a
#: looked-up token for a second, so real clients need about one a second).
LOOKUP_RATE, LOOKUP_BURST = 5.0, 20


def _throttle_lookups(ctx: Context) -> None:
    """Bound the database look-ups of unknown tokens per address (a flood of bad tokens).

    :raises RateLimited: the address looks up too many tokens.
    """
    limiter = _limiter(ctx)
    bucket = limiter.bucket("token-lookup", request.remote_addr or "unknown", LOOKUP_RATE, LOOKUP_BURST)
    _admit_or_refuse(limiter, [bucket], "Too many unknown tokens from this address")


def _admit_or_refuse(limiter: buckets.Limiter, wanted: list[buckets.Bucket], refusal: str) -> None:
    """Take a token from every bucket of ``wanted`` (fail open without Redis).

    :raises RateLimited: a bucket is empty; ``refusal`` starts the message.
    """
    try:
        decision = limiter.admit(wanted)
    except redis.RedisError:
        return
    if decision.outcome == buckets.RATE_LIMITED:
        raise RateLimited(f"{refusal}; retry in {decision.retry_after} s.", retry_after=decision.retry_after)


#: Agent heartbeats skip bearer auth (their token is checked against the
#: node in the database), so they get budgets of their own. A heartbeat
#: without a token is refused at once (401), counted nowhere. A token this
#: process has accepted before (:mod:`conductor.throttle.agents`) is counted
#: only per node and token (an agent calls about once per command and retries
#: every 0.2 s at most), so other callers' wrong tokens never hold it back.
#: Any other token is a guess until the database says otherwise: it is
#: counted per node and token, per caller address (one host may run many
#: agents, e.g. the simulator) and for the deployment, all before any
#: database look-up. A refusal is 503 + Retry-After.
HEARTBEAT_NODE_RATE, HEARTBEAT_NODE_BURST = 5.0, 20
HEARTBEAT_ADDRESS_RATE, HEARTBEAT_ADDRESS_BURST = 200.0, 400
HEARTBEAT_ALL_RATE, HEARTBEAT_ALL_BURST = 1000.0, 2000


def _throttle_heartbeats(ctx: Context) -> None:
    """Refuse a heartbeat without a token; bound the others (see above).

    :raises InvalidAgentToken: no ``X-Agent-Token``.
    :raises RateLimited: one of its budgets is empty.
    """
    token = request.headers.get("X-Agent-Token", "")
    ident = str((request.view_args or {}).get("ident", ""))
    node = ident[:64]
    if not token:
        raise InvalidAgentToken(
            f"The agent token is missing or is not the one issued for node {node}'s current workflow."
        )
    limiter = _limiter(ctx)
    presented = agents.digest(token)
    wanted = [limiter.bucket("heartbeat-node", f"{node}:{presented[:16]}", HEARTBEAT_NODE_RATE,
                             HEARTBEAT_NODE_BURST)]
    if not agents.accepted(ctx).known(ident, presented):
        wanted += [
            limiter.bucket("heartbeat", "*", HEARTBEAT_ALL_RATE, HEARTBEAT_ALL_BURST),
            limiter.bucket("heartbeat-address", request.remote_addr or "unknown", HEARTBEAT_ADDRESS_RATE,
                           HEARTBEAT_ADDRESS_BURST),
        ]
    _admit_or_refuse(limiter, wanted, f"Too many heartbeats for node {node}")


#: Network boot takes no token at all, so it is bounded by the caller's
#: address: a machine asks for two scripts and two files per boot (a few
#: more if it retries), and a boot-script look-up reads the database, so
#: those also share one budget for the whole deployment.
BOOT_ADDRESS_RATE, BOOT_ADDRESS_BURST = 5.0, 40
BOOT_LOOKUP_RATE, BOOT_LOOKUP_BURST = 500.0, 1000


def _throttle_boot(ctx: Context, endpoint: str | None) -> None:
    """Bound the network-boot calls of one address (and the MAC look-ups of everyone).

    :raises RateLimited: one of its budgets is empty.
    """
    limiter = _limiter(ctx)
    wanted = [limiter.bucket("boot-address", request.remote_addr or "unknown", BOOT_ADDRESS_RATE,
                             BOOT_ADDRESS_BURST)]
    if endpoint == "boot.MacScript":
        wanted.append(limiter.bucket("boot-lookup", "*", BOOT_LOOKUP_RATE, BOOT_LOOKUP_BURST))
    _admit_or_refuse(limiter, wanted, "Too many network-boot requests from this address")


def _limiter(ctx: Context) -> buckets.Limiter:
    limiter = ctx.cache.get(_LIMITER)
    if limiter is None:
        limiter = buckets.Limiter(ctx.redis, ctx.settings.redis_namespace, ctx.queue.queue.key)
        ctx.cache[_LIMITER] = limiter
    return limiter


def _leases(ctx: Context, limiter: buckets.Limiter) -> buckets.Leases:
    leases = ctx.cache.get(_LEASES)
    if leases is None:
        leases = buckets.Leases(limiter, ctx.settings.read_budget_lease)
        ctx.cache[_LEASES] = leases
    return leases


def _creates_work(endpoint: str | None) -> bool:
    if endpoint not in WORK_ENDPOINTS:
        return False
    # An abort empties a wait instead of queueing work: never refuse it for depth.
    body = request.get_json(silent=True)
    return not (isinstance(body, dict) and body.get("target") == "abort")


def _throttle(ctx: Context, principal: tokens.Principal, endpoint: str | None) -> None:
    knobs = throttle_settings.current(ctx)
    limiter = _limiter(ctx)
    reading = request.method in READ_METHODS
    if reading:
        wanted = [limiter.bucket("client-read", principal.client, knobs.read_rate, knobs.read_burst)]
        max_depth = 0
    else:
        wanted = [
            limiter.bucket("write", "*", knobs.write_rate, knobs.write_burst),
            limiter.bucket("client-write", principal.client, knobs.client_write_rate, knobs.client_write_burst),
        ]
        max_depth = knobs.max_queue_depth if _creates_work(endpoint) else 0
    # Charged once: the hooks run again after a database blip (in _replays).
    decision = g.get("admission")
    if decision is None:
        try:
            decision = _leases(ctx, limiter).admit(wanted[0]) if reading else limiter.admit(wanted, max_depth)
        except redis.RedisError as exc:
            # Fail open: a call that needs the queue fails at enqueue anyway (503
            # queue_unavailable); reads and other writes still work without Redis.
            LOG.warning("Admission skipped, Redis unavailable: %s", exc)
            return
        g.admission = decision
    if decision.outcome == buckets.RATE_LIMITED:
        empty = [lv.bucket.policy for lv in decision.levels if lv.tokens < 1]
        raise RateLimited(
            f"Too many requests (budget {', '.join(empty)}); retry in {decision.retry_after} s.",
            retry_after=decision.retry_after,
        )
    if decision.outcome == buckets.QUEUE_FULL and not _replays():
        raise QueueFull(
            f"The work queue is full ({decision.depth} jobs waiting, draining at "
            f"{decision.drain_rate or 0:.1f}/s); nothing was recorded; retry in {decision.retry_after} s.",
            retry_after=decision.retry_after,
        )


def _replays() -> bool:
    """Whether the call repeats a remembered ``Idempotency-Key`` (answered even when the queue is full)."""
    key = idempotency_key()
    return key is not None and idempotency.find(session(), key) is not None


def before_request() -> None:
    """Authenticate, authorise and throttle the call (raises the refusal)."""
    logs.bind_request_id(None)
    endpoint = request.endpoint
    needed = required_role(endpoint, request.method)
    if needed is None:
        if endpoint == "nodes.Heartbeat":
            _throttle_heartbeats(context())
        elif endpoint in BOOT_ENDPOINTS:
            _throttle_boot(context(), endpoint)
        return
    ctx = context()
    principal = _authenticate(ctx)
    g.principal = principal
    if not allows(principal.role, needed):
        raise Forbidden(
            f"This needs a token with the {needed} role; yours has {principal.role}.",
            required_role=str(needed),
        )
    _throttle(ctx, principal, endpoint)


def after_request(response: Response) -> Response:
    """Rate-limit headers, the 401 challenge, and the accepted/refused counters."""
    decision = g.get("admission")
    if decision is not None:
        response.headers.update(buckets.headers(decision))
    if response.status_code == 401 and request.endpoint not in PUBLIC_ENDPOINTS:
        # (The heartbeat's 401 is about its agent token, not a bearer token.)
        response.headers["WWW-Authenticate"] = 'Bearer realm="conductor"'
    if request.endpoint in WORK_ENDPOINTS and request.method not in READ_METHODS:
        recorder = metrics.recorder(context())
        if response.status_code == 202:
            recorder.inc(metrics.ACCEPTED, {"kind": WORK_ENDPOINTS[request.endpoint]})
        elif response.status_code >= 400:
            body = response.get_json(silent=True) or {}
            recorder.inc(metrics.REJECTED, {"reason": str(body.get("code", response.status_code))})
    return response


def install(app: Flask) -> None:
    """Run admission before every call of ``app``."""
    app.before_request(before_request)
    app.after_request(after_request)
