"""The function the callbacks queue runs (in a callback worker's context)."""

from __future__ import annotations

from conductor.callbacks import delivery
from conductor.engine import jobs


def deliver(delivery_id: int) -> str | None:
    """Attempt delivery ``delivery_id`` once if it may be attempted now."""
    return delivery.attempt(jobs.current(), delivery_id)
