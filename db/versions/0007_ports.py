"""ports: a node's network interfaces, by MAC address

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A node's NICs: network boot (boot scripts, DHCP host entries) finds a
    # node by the MAC it boots from.  A MAC is unique in the deployment.
    op.create_table(
        "ports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("node_id", sa.Integer(), sa.ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("address", sa.String(17), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ports_node_id", "ports", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_ports_node_id", table_name="ports")
    op.drop_table("ports")
