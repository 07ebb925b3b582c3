"""API tokens: create, list, revoke, and check a presented secret.

A secret is ``cdt_`` followed by 43 random URL-safe characters (256 bits);
only its SHA-256 is stored, so a stolen database yields no usable token.
(A slow password hash is not needed for secrets this long, and SHA-256
keeps checking cheap on every call.)

Checking a secret costs no I/O on the hot path: each process remembers a
look-up (found or not) for ``CACHE_TTL`` seconds.  A revoked token
therefore stops working everywhere within that time (at once in the
process that revoked it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor.auth import tokenfile
from conductor.auth.roles import Role
from conductor.callbacks import secrets as signing_secrets
from conductor.callbacks import subscriptions
from conductor.context import Context
from conductor.database import Database, rowcount
from conductor.exceptions import InvalidInput, TokenNotFound
from conductor.models import ApiToken, utcnow

LOG = logging.getLogger(__name__)

PREFIX = "cdt_"
CACHE_TTL = 1.0
_CACHE_KEY = "auth.tokens"
_CACHE_MAX = 10_000
MAX_NAME = 64


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: ``client`` identifies them (token id, or address without auth)."""

    client: str
    role: Role
    token_id: str | None = None
    name: str | None = None


def digest(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create(session: Session, role: str, name: str | None = None) -> tuple[ApiToken, str]:
    """Create a token; returns it and its secret (shown once, never stored).

    The caller commits.

    :raises InvalidInput: unknown role or a name that is too long.
    """
    try:
        checked = Role(role)
    except ValueError:
        raise InvalidInput(
            f"Unknown role {role!r}; one of {', '.join(r.value for r in Role)}.",
            errors={"role": "unknown role"},
        ) from None
    if name is not None and len(name) > MAX_NAME:
        raise InvalidInput(f"A token name has at most {MAX_NAME} characters.", errors={"name": "too long"})
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=f"tok-{secrets.token_hex(8)}",
        name=name,
        role=str(checked),
        secret_hash=digest(secret),
        created_at=utcnow(),
    )
    session.add(token)
    session.flush()
    LOG.info("Created %s token %s (%s)", checked, token.id, name or "no name")
    return token, secret


@dataclasses.dataclass(frozen=True)
class Issued:
    """A new token with its secrets; both are shown once, at creation."""

    token: ApiToken
    secret: str
    #: The key that signs this client's callbacks (Standard Webhooks).
    signing_secret: str


def issue(session: Session, role: str, name: str | None = None) -> Issued:
    """Create a token and its callback signing secret; the caller commits.

    :raises InvalidInput: unknown role or a name that is too long.
    """
    token, secret = create(session, role, name)
    return Issued(token, secret, signing_secrets.create_for_client(session, token.id))


def list_tokens(session: Session, include_revoked: bool = False) -> list[ApiToken]:
    """Every token, oldest first (secrets are not known)."""
    query = sa.select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return list(session.scalars(query))


def revoke(ctx: Context, token_id: str) -> ApiToken:
    """Revoke a token (revoking it again changes nothing).

    :raises TokenNotFound: no such token.
    """
    with ctx.db.session() as session:
        revoked = rowcount(session.execute(
            sa.update(ApiToken)
            .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        ))
        if revoked:
            subscriptions.deactivate_for_client(session, token_id, "The token that created it was revoked.")
        session.commit()
        token = session.get(ApiToken, token_id)
        if token is None:
            raise TokenNotFound(f"Token {token_id} not found.", token_id=token_id)
    ctx.cache.pop(_CACHE_KEY, None)
    LOG.info("Revoked token %s", token_id)
    return token


def cached(ctx: Context, secret: str) -> tuple[bool, Principal | None]:
    """``(known, principal)``: whether this process looked the secret up lately, and what it found."""
    cache: dict[str, tuple[float, Principal | None]] = ctx.cache.setdefault(_CACHE_KEY, {})
    hit = cache.get(digest(secret))
    if hit is not None and hit[0] > time.monotonic():
        return True, hit[1]
    return False, None


def authenticate(ctx: Context, secret: str) -> Principal | None:
    """The principal a presented secret stands for (None: unknown or revoked)."""
    known, principal = cached(ctx, secret)
    if known:
        return principal
    cache: dict[str, tuple[float, Principal | None]] = ctx.cache.setdefault(_CACHE_KEY, {})
    hashed = digest(secret)
    now = time.monotonic()
    with ctx.db.session() as session:
        token = session.scalars(
            sa.select(ApiToken).where(ApiToken.secret_hash == hashed, ApiToken.revoked_at.is_(None))
        ).one_or_none()
        principal = (
            Principal(client=token.id, role=Role(token.role), token_id=token.id, name=token.name)
            if token is not None
            else None
        )
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[hashed] = (now + CACHE_TTL, principal)
    return principal


def ensure_admin_token(db: Database, settings: Any) -> bool:
    """Make ``settings.admin_token_file`` hold a valid admin token; True if a new one was made.

    Kept when the file's token is still a valid admin token; otherwise (first
    start, file deleted, database replaced) a new token is created and
    written with mode 0600.
    """
    path = settings.admin_token_file
    existing = tokenfile.read_secret(path)
    with db.session() as session:
        if existing is not None:
            valid = session.scalars(
                sa.select(ApiToken.id).where(
                    ApiToken.secret_hash == digest(existing),
                    ApiToken.revoked_at.is_(None),
                    ApiToken.role == Role.ADMIN,
                )
            ).first()
            if valid is not None:
                return False
        _token, secret = create(session, Role.ADMIN, "conductor up (local admin)")
        session.commit()
    tokenfile.write_secret(path, secret)
    return True
