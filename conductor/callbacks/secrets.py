"""Signing secrets, one per client identity (``""``: the deployment's own).

A client's secret is shown once, by the call that creates it
(:func:`create_for_client`, :func:`rotate`), and never again: the API only
shows a fingerprint.  Rotating keeps the previous secret signing for
``callback_secret_overlap`` seconds, with both signatures sent, so that
receivers can switch at their own pace.  Only one previous secret is
kept: rotating twice within the overlap ends the oldest one at once.

A delivery that needs a secret nobody created yet creates one (the
operator then rotates to obtain a secret they can see).

Secrets are stored sealed (:mod:`conductor.secretbox`) and opened only to
sign a delivery or to compute a fingerprint.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conductor import secretbox
from conductor.callbacks import signing
from conductor.database import rowcount
from conductor.exceptions import SecretUnreadable
from conductor.models import CallbackSecret, utcnow

LOG = logging.getLogger(__name__)
DEPLOYMENT = ""


#: Client identities that are addresses (authentication off) start with this.
ADDRESS_PREFIX = "addr:"


def signer_for(client: str | None) -> str:
    """Whose secret signs the callbacks of ``client`` (``""``: the deployment's).

    A client known only by its address (authentication off) has no secret
    of its own: the deployment's signs for it.
    """
    if not client or client.startswith(ADDRESS_PREFIX):
        return DEPLOYMENT
    return client


def create_for_client(session: Session, client: str | None) -> str:
    """Give ``client`` a new signing secret and return it (show it once).

    Meant for the moment a client identity is created (an API token): an
    existing secret of the same client is replaced at once, without
    overlap.  Runs in the caller's transaction.
    """
    signer = signer_for(client)
    secret = signing.new_secret()
    sealed = secretbox.of(session).seal(secret)
    now = utcnow()
    replaced = rowcount(session.execute(
        sa.update(CallbackSecret)
        .where(CallbackSecret.client == signer)
        .values(secret=sealed, previous_secret=None, previous_expires_at=None, rotated_at=now)
    ))
    if replaced != 1:
        session.add(CallbackSecret(client=signer, secret=sealed, created_at=now, rotated_at=now))
        session.flush()
    return secret


def rotate(session: Session, client: str | None, overlap: float) -> str:
    """Give ``client`` a new secret; the current one keeps signing for ``overlap`` s.

    Returns the new secret (show it once).  Commits.  Concurrent rotations
    are safe: each new secret is current or previous for at least ``overlap``.
    """
    signer = signer_for(client)
    box = secretbox.of(session)
    for _attempt in range(3):
        secret = signing.new_secret()
        sealed = box.seal(secret)
        now = utcnow()
        # One statement: the previous secret is whatever is current at the
        # moment of the write, so a concurrent rotation is never lost.
        rotated = rowcount(session.execute(
            sa.update(CallbackSecret)
            .where(CallbackSecret.client == signer)
            .values(
                previous_secret=CallbackSecret.secret,
                previous_expires_at=now + dt.timedelta(seconds=overlap),
                secret=sealed,
                rotated_at=now,
            )
        ))
        if rotated == 1:
            session.commit()
            return secret
        session.add(CallbackSecret(client=signer, secret=sealed, created_at=now, rotated_at=now))
        try:
            session.commit()
            return secret
        except IntegrityError:
            # Created concurrently: rotate that one.
            session.rollback()
    raise RuntimeError(f"Could not rotate the signing secret of client {signer!r}")


def signing_secrets(session: Session, client: str | None) -> list[str]:
    """The secrets that sign ``client``'s deliveries now (current first).

    Creates the client's secret on first need; commits then.
    """
    signer = signer_for(client)
    box = secretbox.of(session)
    row = session.get(CallbackSecret, signer)
    if row is None:
        row = CallbackSecret(client=signer, secret=box.seal(signing.new_secret()))
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            row = session.get(CallbackSecret, signer)
            assert row is not None
    found = [box.open(row.secret)]
    if row.previous_secret and row.previous_expires_at and row.previous_expires_at > utcnow():
        previous = _open_previous(box, row.previous_secret)
        if previous is not None:
            found.append(previous)
    return found


def _open_previous(box: secretbox.SecretBox, sealed: str) -> str | None:
    """A rotated-out secret, or None if the key that sealed it was lost (rotating is the cure)."""
    try:
        return box.open(sealed)
    except SecretUnreadable:
        LOG.warning("A previous signing secret cannot be decrypted (secret key lost?); it no longer signs")
        return None


def describe(session: Session, client: str | None) -> dict[str, Any]:
    """What may be shown about ``client``'s secret: never the secret itself."""
    signer = signer_for(client)
    row = session.get(CallbackSecret, signer)
    if row is None:
        return {"client": signer, "exists": False, "fingerprint": None, "created_at": None,
                "rotated_at": None, "previous_fingerprint": None, "previous_expires_at": None}
    expires = row.previous_expires_at
    live_previous = row.previous_secret if expires is not None and expires > utcnow() else None
    box = secretbox.of(session)
    previous = _open_previous(box, live_previous) if live_previous else None
    return {
        "client": signer,
        "exists": True,
        "fingerprint": signing.fingerprint(box.open(row.secret)),
        "created_at": row.created_at,
        "rotated_at": row.rotated_at,
        "previous_fingerprint": signing.fingerprint(previous) if previous is not None else None,
        "previous_expires_at": expires if live_previous else None,
    }
