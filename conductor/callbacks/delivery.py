"""One delivery attempt: claim, sign, POST, record.

Every way out is logged and recorded on the delivery row:

* not claimable (done, leased by a live attempt, not due, or an earlier
  delivery of the same subscription and node is pending): skipped;
* 2xx: ``delivered``;
* 410 Gone: ``failed`` at once; a subscription is disabled, with its
  other pending deliveries;
* 429, 5xx, a timeout, a refused or broken connection, a host that does
  not resolve: tried again later (see :mod:`conductor.callbacks.retry`),
  ``failed`` once the retry window is over;
* anything else (3xx: redirects are never followed; other 4xx), or a
  destination the allow/deny lists now refuse: ``failed`` at once.

The attempt holds a lease (``lease_until``, ``claimed_by``) rather than a
transaction: a worker that dies mid-delivery leaves the lease, which runs
out (or is freed when a worker of the same host starts), and the delivery
is tried again with the same ``webhook-id``.  A delivery never touches
nodes or requests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time

import sqlalchemy as sa
import urllib3
from sqlalchemy.orm import Session

from conductor import database
from conductor.callbacks import destinations, outbox, retry, secrets, signing
from conductor.context import Context
from conductor.exceptions import CallbackUrlDenied, InvalidInput
from conductor.models import CallbackDelivery, CallbackSubscription, utcnow
from conductor.settings import Settings

LOG = logging.getLogger(__name__)

DELIVERED, FAILED, PENDING = "delivered", "failed", "pending"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one attempt got: an HTTP status, or an error without one."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    #: The error will not go away by trying again.
    final: bool = False

    @property
    def verdict(self) -> str:
        """``delivered``, ``gone``, ``retry`` or ``failed``."""
        if self.status is not None and 200 <= self.status < 300:
            return "delivered"
        if self.status == 410:
            return "gone"
        if self.status is None:
            return "failed" if self.final else "retry"
        if self.status == 429 or self.status >= 500:
            return "retry"
        return "failed"


def lease_seconds(settings: Settings) -> float:
    """How long an attempt may hold a delivery.

    Longer than the attempt's job may live (RQ kills it at its timeout), so
    a lease never runs out while its attempt could still be sending: no
    receiver gets two concurrent attempts of one delivery.
    """
    return outbox.job_timeout(settings) + 5


def claim(ctx: Context, delivery_id: int, holder: str) -> CallbackDelivery | None:
    """Lease delivery ``delivery_id`` for one attempt (counted now), or None."""
    now = utcnow()
    with ctx.db.begin() as session:
        taken = database.rowcount(session.execute(
            sa.update(CallbackDelivery)
            .where(CallbackDelivery.id == delivery_id, CallbackDelivery.next_at <= now, *outbox.eligible(now))
            .values(
                lease_until=now + dt.timedelta(seconds=lease_seconds(ctx.settings)),
                claimed_by=holder,
                attempts=CallbackDelivery.attempts + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        ))
        if taken != 1:
            return None
        return session.get(CallbackDelivery, delivery_id)


def post(target: destinations.Target, headers: dict[str, str], body: bytes, timeout: float) -> Outcome:
    """POST ``body`` to ``target``, connecting only to its checked addresses.

    Redirects are not followed; the answer's body is not read.
    """
    headers = {**headers, "Host": target.host_header}
    failures: list[str] = []
    for address in target.addresses:
        pool = _pool(target, str(address), timeout)
        try:
            response = pool.urlopen(
                "POST", target.path, body=body, headers=headers, redirect=False, retries=False,
                preload_content=False, assert_same_host=False,
            )
        except urllib3.exceptions.ConnectTimeoutError as exc:
            # Refused or unreachable (NewConnectionError is a subclass): next address.
            failures.append(f"{address}: {_reason(exc)}")
            continue
        except urllib3.exceptions.ReadTimeoutError:
            return Outcome(None, f"no answer within {timeout:g} s")
        except urllib3.exceptions.HTTPError as exc:
            return Outcome(None, f"connection to {address} failed: {_reason(exc)}")
        finally:
            pool.close()
        try:
            status, reason = response.status, response.reason or ""
            retry_after = retry.parse_retry_after(response.headers.get("Retry-After"), utcnow())
        finally:
            response.release_conn()
            response.close()
        if 200 <= status < 300:
            return Outcome(status)
        note = " (redirects are not followed)" if 300 <= status < 400 else ""
        return Outcome(status, f"HTTP {status} {reason}".rstrip() + note, retry_after)
    return Outcome(None, "cannot connect: " + "; ".join(failures or ["no address"]))


def _pool(target: destinations.Target, address: str, timeout: float) -> urllib3.HTTPConnectionPool:
    # ``total`` bounds connect + reads together (a receiver dripping bytes).
    limits = urllib3.Timeout(connect=timeout, read=timeout, total=2 * timeout)
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address, target.port, timeout=limits, maxsize=1, retries=False,
            server_hostname=target.host, assert_hostname=target.host, cert_reqs="CERT_REQUIRED",
        )
    return urllib3.HTTPConnectionPool(address, target.port, timeout=limits, maxsize=1, retries=False)


def _reason(exc: Exception) -> str:
    # urllib3 wraps the OSError; its text names the connection object.
    cause = exc.__context__ or exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return type(exc).__name__


def attempt(ctx: Context, delivery_id: int) -> str | None:
    """Try delivery ``delivery_id`` once if it may be tried now.

    Returns its state afterwards, or None when it was not claimable.
    """
    holder = ctx.name or outbox.holder_name()
    # Claim and record are conditional writes: safe to run again on a
    # transient database error (a lost claim's lease runs out).
    delivery = database.retrying(lambda: claim(ctx, delivery_id, holder), f"Delivery {delivery_id}: claim")
    if delivery is None:
        LOG.debug("Delivery %s: not claimable now; skipped", delivery_id)
        return None
    settings = ctx.settings
    try:
        keys = database.retrying(lambda: _signing_secrets(ctx, delivery.signer), f"Delivery {delivery_id}: secrets")
        target = destinations.check(settings, delivery.url)
        body = delivery.body.encode()
        headers = signing.headers(delivery.webhook_id, int(time.time()), body, keys)
        outcome = post(target, headers, body, settings.callback_timeout)
    except CallbackUrlDenied as exc:
        outcome = Outcome(None, exc.message, final=exc.details.get("reason") != destinations.UNRESOLVABLE)
    except InvalidInput as exc:
        outcome = Outcome(None, exc.message, final=True)
    except Exception:
        # A bug must not leave the delivery leased until the lease runs out.
        LOG.exception("Delivery %s: internal error", delivery_id)
        outcome = Outcome(None, "internal error in the callback worker; see its log")
    return database.retrying(lambda: record(ctx, delivery, holder, outcome), f"Delivery {delivery_id}: record")


def _signing_secrets(ctx: Context, signer: str | None) -> list[str]:
    with ctx.db.session() as session:
        return secrets.signing_secrets(session, signer)


def record(ctx: Context, delivery: CallbackDelivery, holder: str, outcome: Outcome) -> str | None:
    """Record the outcome of an attempt of ``delivery`` leased by ``holder``."""
    now = utcnow()
    verdict = outcome.verdict
    values: dict[str, object] = {
        "last_status": outcome.status,
        "last_error": outcome.error,
        "lease_until": None,
        "claimed_by": None,
        "enqueued_at": None,
        "updated_at": now,
    }
    if verdict == "delivered":
        values.update(state=DELIVERED, next_at=None, finished_at=now)
    elif verdict == "retry":
        when = retry.next_attempt(ctx.settings, delivery.attempts, delivery.created_at, now, outcome.retry_after)
        if when is None:
            values.update(state=FAILED, next_at=None, finished_at=now,
                          last_error=f"{outcome.error}; gave up after {delivery.attempts} attempt(s)")
        else:
            values.update(next_at=when)
    else:
        values.update(state=FAILED, next_at=None, finished_at=now)
    with ctx.db.begin() as session:
        updated = database.rowcount(session.execute(
            sa.update(CallbackDelivery)
            .where(
                CallbackDelivery.id == delivery.id,
                CallbackDelivery.claimed_by == holder,
                CallbackDelivery.state == PENDING,
            )
            .values(**values)
        ))
        if updated and verdict == "gone" and delivery.subscription_id:
            disable_subscription(session, delivery.subscription_id,
                                 f"The receiver answered 410 Gone to delivery {delivery.webhook_id}.")
    state = str(values.get("state", PENDING))
    if not updated:
        LOG.warning("Delivery %s: its lease was lost during the attempt; outcome %s not recorded",
                    delivery.webhook_id, verdict)
        return None
    LOG.info("Delivery %s (%s, attempt %d): %s%s", delivery.webhook_id, delivery.event_type,
             delivery.attempts, state, f" ({values['last_error']})" if values.get("last_error") else "")
    return state


def disable_subscription(session: Session, subscription_id: str, reason: str) -> None:
    """Deactivate a subscription and fail its pending deliveries (caller's transaction)."""
    now = utcnow()
    session.execute(
        sa.update(CallbackSubscription)
        .where(CallbackSubscription.id == subscription_id)
        .values(active=False, disabled_reason=reason, updated_at=now)
    )
    session.execute(
        sa.update(CallbackDelivery)
        .where(CallbackDelivery.subscription_id == subscription_id, CallbackDelivery.state == PENDING)
        .values(state=FAILED, last_error=reason, next_at=None, finished_at=now, updated_at=now)
    )
