"""Per-BMC pacing: one command per ``bmc_min_interval``, shared by every conductor."""

from __future__ import annotations

import time

from conductor.bootstrap import build_context
from conductor.throttle import bmc
from conductor.throttle import settings as throttle_settings


def test_a_second_command_too_soon_is_told_how_long_to_wait(settings, ctx) -> None:
    throttle_settings.update(ctx, {"bmc_min_interval": 0.4})
    other = build_context(settings)  # another conductor
    try:
        assert bmc.claim(ctx, "10.0.0.1:623") == 0.0
        wait = bmc.claim(other, "10.0.0.1:623")
        assert 0.3 < wait <= 0.4
        assert bmc.claim(ctx, "10.0.0.2:623") == 0.0  # another BMC is not held up
        time.sleep(wait)
        assert bmc.claim(other, "10.0.0.1:623") == 0.0
    finally:
        other.close()


def test_zero_interval_never_waits(ctx) -> None:
    assert all(bmc.claim(ctx, "b", interval=0) == 0.0 for _ in range(5))
