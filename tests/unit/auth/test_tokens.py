"""Tokens in the database: hashed, checked through a short per-process cache, revoked."""

from __future__ import annotations

import time

import pytest

from conductor.auth import tokens
from conductor.auth.roles import Role, allows
from conductor.bootstrap import build_context
from conductor.exceptions import InvalidInput, TokenNotFound
from tests.conftest import make_token


def test_roles_nest() -> None:
    assert allows("admin", Role.OPERATOR) and allows("operator", Role.READER)
    assert not allows("reader", Role.OPERATOR) and not allows("operator", Role.ADMIN)
    assert not allows("root", Role.READER)


def test_a_secret_stands_for_its_token(ctx) -> None:
    secret = make_token(ctx, "operator", "bot")
    principal = tokens.authenticate(ctx, secret)
    assert principal is not None and principal.role == Role.OPERATOR and principal.name == "bot"
    assert principal.client == principal.token_id and principal.client.startswith("tok-")
    assert tokens.authenticate(ctx, secret + "x") is None


def test_revocation_reaches_other_processes_within_the_cache_ttl(settings, ctx) -> None:
    secret = make_token(ctx, "reader")
    other = build_context(settings)
    try:
        principal = tokens.authenticate(other, secret)
        assert principal is not None
        tokens.revoke(ctx, principal.token_id)
        assert tokens.authenticate(ctx, secret) is None  # at once where it was revoked
        time.sleep(tokens.CACHE_TTL)
        assert tokens.authenticate(other, secret) is None
    finally:
        other.close()


def test_revoking_twice_is_harmless_and_unknown_ids_are_404(ctx) -> None:
    secret = make_token(ctx, "reader")
    token_id = tokens.authenticate(ctx, secret).token_id  # type: ignore[union-attr]
    first = tokens.revoke(ctx, token_id)
    assert tokens.revoke(ctx, token_id).revoked_at == first.revoked_at
    with pytest.raises(TokenNotFound):
        tokens.revoke(ctx, "tok-nope")


def test_unknown_roles_are_refused(ctx) -> None:
    with ctx.db.session() as session, pytest.raises(InvalidInput):
        tokens.create(session, "root")


def test_the_admin_token_file_is_made_once_and_remade_when_invalid(settings, ctx) -> None:
    assert tokens.ensure_admin_token(ctx.db, settings)
    first = settings.admin_token_file.read_text()
    assert not tokens.ensure_admin_token(ctx.db, settings)
    assert settings.admin_token_file.read_text() == first
    principal = tokens.authenticate(ctx, first.strip())
    assert principal is not None and principal.role == Role.ADMIN
    tokens.revoke(ctx, principal.token_id)  # type: ignore[arg-type]
    assert tokens.ensure_admin_token(ctx.db, settings)
    assert settings.admin_token_file.read_text() != first
