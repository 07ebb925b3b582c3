"""The drain rate's moving average and the Retry-After it gives."""

from __future__ import annotations

from conductor.throttle import drain


def test_a_steady_stream_converges_to_its_rate() -> None:
    rate, at = 0.0, 0.0
    for step in range(1, 601):  # 5 completions a second for 120 s
        now = step * 0.2
        rate = drain.decayed(rate, at, now) + 1 / drain.TAU
        at = now
    assert abs(rate - 5.0) < 0.1
    # With no completions the average falls away.
    assert drain.decayed(rate, at, at + 5 * drain.TAU) < 0.05


def test_retry_after_is_whole_seconds_clamped_to_the_sane_range() -> None:
    assert drain.retry_after(10, 4.0) == 3
    assert drain.retry_after(1, 1000.0) == drain.RETRY_MIN
    assert drain.retry_after(5, 0.0) == drain.RETRY_MAX
    assert drain.retry_after(10_000, 1.0) == drain.RETRY_MAX


def test_the_meter_is_shared_through_redis(ctx) -> None:
    writer = drain.DrainMeter(ctx.redis, ctx.settings.redis_namespace)
    reader = drain.DrainMeter(ctx.redis, ctx.settings.redis_namespace)
    assert reader.rate() == 0.0
    for _ in range(10):
        writer.record(1)
    assert 0.9 < reader.rate() <= 1.0
