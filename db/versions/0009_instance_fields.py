"""instance fields: what an Ironic-compatible client stores on a node

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The node's instance (who deployed it, with what), the operator's free
    # form data, its scheduling class and description: written by the
    # Ironic-compatible API (docs/ironic-api.md); the deploy reads its image
    # from instance_info there, and an undeploy clears the instance.
    op.add_column("nodes", sa.Column("instance_uuid", sa.String(36), nullable=True))
    op.add_column("nodes", sa.Column("instance_info", sa.JSON(), nullable=False, server_default="{}"))
    op.add_column("nodes", sa.Column("extra", sa.JSON(), nullable=False, server_default="{}"))
    op.add_column("nodes", sa.Column("resource_class", sa.String(80), nullable=True))
    op.add_column("nodes", sa.Column("description", sa.Text(), nullable=True))
    # One node per instance (as in Ironic).
    op.create_index("ix_nodes_instance_uuid", "nodes", ["instance_uuid"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_nodes_instance_uuid", table_name="nodes")
    with op.batch_alter_table("nodes") as batch:
        for column in ("description", "resource_class", "extra", "instance_info", "instance_uuid"):
            batch.drop_column(column)
