"""scale: indexes the retention purge needs at a million requests

Revision ID: 0011
Revises: 0010
Create Date: 2027-01-12
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # bench/scale.py (docs/benchmarks.md, section Scale) showed, at 1,000,000
    # requests, the purge reading every finished request to delete 500: it
    # filtered on state through ix_requests_state and sorted by finished_at.
    # One index on (state, finished_at) serves that filter and every other
    # look-up by state, so it replaces both single-column indexes.
    op.create_index("ix_requests_state_finished", "requests", ["state", "finished_at"])
    op.drop_index("ix_requests_state", table_name="requests")
    op.drop_index("ix_requests_finished_at", table_name="requests")
    # The same for ended deliveries (ix_callback_deliveries_due leads with
    # state too, but then next_at, which an ended delivery no longer has).
    op.create_index("ix_callback_deliveries_ended", "callback_deliveries", ["state", "finished_at"])
    op.drop_index("ix_callback_deliveries_finished_at", table_name="callback_deliveries")
    # Deleting a request deletes its Idempotency-Key records (ON DELETE
    # CASCADE): without this index, each deleted request scanned them all.
    op.create_index("ix_idempotency_keys_request_id", "idempotency_keys", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_request_id", table_name="idempotency_keys")
    op.create_index("ix_callback_deliveries_finished_at", "callback_deliveries", ["finished_at"])
    op.drop_index("ix_callback_deliveries_ended", table_name="callback_deliveries")
    op.create_index("ix_requests_finished_at", "requests", ["finished_at"])
    op.create_index("ix_requests_state", "requests", ["state"])
    op.drop_index("ix_requests_state_finished", table_name="requests")
