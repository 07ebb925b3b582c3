"""retention: indexes for the purge of old requests, deliveries and history

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_requests_finished_at", "requests", "finished_at"),
    ("ix_node_history_created_at", "node_history", "created_at"),
    ("ix_callback_deliveries_finished_at", "callback_deliveries", "finished_at"),
)


def upgrade() -> None:
    # The sweep deletes the oldest rows past their retention in batches
    # (conductor/engine/retention.py); without these it would scan each table.
    for name, table, column in _INDEXES:
        op.create_index(name, table, [column])


def downgrade() -> None:
    for name, table, _column in _INDEXES:
        op.drop_index(name, table_name=table)
