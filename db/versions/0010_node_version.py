"""node version: a counter every write of a node increments (its ETag)

Revision ID: 0010
Revises: 0009
Create Date: 2027-01-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # GET /v1/nodes/<n> answers with an ETag made of the node's UUID and this
    # counter, and PATCH/DELETE honour If-Match against it (412 when stale).
    # The models increment it in SQL on every UPDATE (models.Node.version).
    op.add_column("nodes", sa.Column("version", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("version")
