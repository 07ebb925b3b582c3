"""Standard Webhooks signatures (https://www.standardwebhooks.com).

A secret is ``whsec_`` followed by the base64 of 32 random bytes; the HMAC
key is those bytes.  The signed content is ``<webhook-id>.<webhook-timestamp>.<body>``
and the ``webhook-signature`` header carries ``v1,<base64 HMAC-SHA256>``,
several of them separated by spaces while an old secret still signs
after a rotation.  Any Standard Webhooks library verifies these headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from conductor import __version__

SECRET_PREFIX = "whsec_"
_SECRET_BYTES = 32
USER_AGENT = f"conductor-webhooks/{__version__}"


def new_secret() -> str:
    """A fresh random signing secret (``whsec_...``)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message with one secret."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(webhook_id: str, timestamp: int, body: bytes, secrets_: Sequence[str]) -> dict[str, str]:
    """The headers of one delivery attempt, signed with every secret in ``secrets_``."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, webhook_id, timestamp, body) for s in secrets_),
    }


def fingerprint(secret: str) -> str:
    """A short, non-reversible name for a secret, to tell secrets apart."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]
