"""sealed secrets: BMC passwords and webhook signing secrets encrypted at rest

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import context, op

from conductor import sealing
from conductor.secretbox import SecretBox

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LOG = logging.getLogger("alembic.runtime.migration")


def _box() -> SecretBox | None:
    # A caller may hand the key ring over (config.attributes["secretbox"]);
    # conductor.database.upgrade() gets only a URL, so otherwise it is found
    # the way the service finds it (sealing.box_for_migration).
    given = context.config.attributes.get("secretbox")
    return given if given is not None else sealing.box_for_migration(op.get_bind().engine.url)


def upgrade() -> None:
    # A sealed signing secret ("fernet:" + a Fernet token) is ~170 characters.
    with op.batch_alter_table("callback_secrets") as batch:
        batch.alter_column("secret", existing_type=sa.String(64), type_=sa.String(255), existing_nullable=False)
        batch.alter_column("previous_secret", existing_type=sa.String(64), type_=sa.String(255),
                           existing_nullable=True)
    # Seal what was stored in plain text.  Without a key the values stay
    # plain (still read as they are) and are sealed when next written, or
    # by `conductor secrets seal`.
    connect = sealing.in_transaction(op.get_bind())
    box = _box()
    if box is None:
        if sealing.count_plain(op.get_bind()):
            LOG.warning("No secret key found: plain secrets are left as they are; "
                        "run `conductor secrets seal` to seal them.")
        return
    sealed = sealing.seal_rows(connect, box, plain_only=True)
    if sealed:
        LOG.info("Sealed the secrets of %d rows.", sealed)
        # conductor.database.upgrade() then scrubs the old plain copies.
        context.config.attributes["sealed_rows"] = sealed


def downgrade() -> None:
    box = _box()
    connect = sealing.in_transaction(op.get_bind())
    if box is None:
        raise RuntimeError("Downgrading below 0006 needs the secret key to store the secrets in plain text again.")
    sealing.open_rows(connect, box)
    with op.batch_alter_table("callback_secrets") as batch:
        batch.alter_column("secret", existing_type=sa.String(255), type_=sa.String(64), existing_nullable=False)
        batch.alter_column("previous_secret", existing_type=sa.String(255), type_=sa.String(64),
                           existing_nullable=True)
