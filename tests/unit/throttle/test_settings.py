"""Throttle settings: persisted in the database, seen by every process within a second."""

from __future__ import annotations

import time

import pytest

from conductor.bootstrap import build_context
from conductor.exceptions import InvalidInput
from conductor.throttle import settings as throttle_settings


def test_defaults_until_changed_then_the_change_survives_a_restart(settings, ctx) -> None:
    assert throttle_settings.current(ctx) == throttle_settings.Throttle()
    changed = throttle_settings.update(ctx, {"write_rate": 7, "max_queue_depth": 12})
    assert changed.write_rate == 7.0 and changed.max_queue_depth == 12
    # A restart of Redis too: only the database remembers.
    ctx.redis.delete(f"{settings.redis_namespace}:throttle")
    restarted = build_context(settings)
    try:
        assert throttle_settings.current(restarted).max_queue_depth == 12
        assert throttle_settings.current(restarted).client_write_rate == throttle_settings.Throttle().client_write_rate
    finally:
        restarted.close()


def test_another_process_sees_a_change_within_a_second(settings, ctx) -> None:
    other = build_context(settings)
    try:
        assert throttle_settings.current(other).worker_concurrency == 0
        throttle_settings.update(ctx, {"worker_concurrency": 2})
        deadline = time.monotonic() + 1.0
        while throttle_settings.current(other).worker_concurrency != 2:
            assert time.monotonic() < deadline, "change not seen within a second"
            time.sleep(0.05)
    finally:
        other.close()


@pytest.mark.parametrize(
    "changes",
    [{"write_rate": -1}, {"write_burst": 0}, {"write_burst": 2.5}, {"nope": 1},
     {"bmc_min_interval": "soon"}, {"max_queue_depth": True}],
)
def test_bad_values_are_refused_and_change_nothing(ctx, changes) -> None:
    with pytest.raises(InvalidInput) as caught:
        throttle_settings.update(ctx, changes)
    assert set(caught.value.details["errors"]) == set(changes)
    assert throttle_settings.current(ctx) == throttle_settings.Throttle()
