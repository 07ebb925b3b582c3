"""power sync: consecutive BMC failures of the power state observer, per node

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # How many power state reads in a row failed; the observer puts the node
    # into maintenance (fault "power failure") at power_sync_max_failures.
    op.add_column(
        "nodes",
        sa.Column("power_sync_failures", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("power_sync_failures")
