"""Token buckets and the queue-depth check, in the real Redis (one Lua script)."""

from __future__ import annotations

import time

from conductor.throttle import buckets, drain
from conductor.throttle.buckets import Limiter


def limiter(ctx) -> Limiter:  # type: ignore[no-untyped-def]
    return Limiter(ctx.redis, ctx.settings.redis_namespace, ctx.queue.queue.key)


def test_a_full_bucket_admits_its_burst_then_refuses_with_an_honest_retry_after(ctx) -> None:
    lim = limiter(ctx)
    bucket = lim.bucket("client-write", "alice", rate=0.5, burst=3)
    outcomes = [lim.admit([bucket]).outcome for _ in range(4)]
    assert outcomes == ["ok", "ok", "ok", "rate_limited"]
    refused = lim.admit([bucket])
    # One token comes back every 2 s.
    assert refused.retry_after == 2
    time.sleep(refused.retry_after)
    assert lim.admit([bucket]).admitted


def test_a_refusal_takes_nothing_from_any_bucket(ctx) -> None:
    lim = limiter(ctx)
    roomy = lim.bucket("write", "*", rate=0.001, burst=10)
    tight = lim.bucket("client-write", "bob", rate=0.001, burst=1)
    assert lim.admit([roomy, tight]).admitted
    for _ in range(5):
        assert lim.admit([roomy, tight]).outcome == "rate_limited"
    # The global bucket lost only the one admitted call.
    decision = lim.admit([roomy])
    assert decision.admitted and decision.levels[0].remaining == 8


def test_clients_have_separate_buckets_and_share_the_global_one(ctx) -> None:
    lim = limiter(ctx)
    shared = lim.bucket("write", "*", rate=0.001, burst=3)
    for client in ("a", "b", "c"):
        assert lim.admit([shared, lim.bucket("client-write", client, 0.001, 2)]).admitted
    assert lim.admit([shared, lim.bucket("client-write", "d", 0.001, 2)]).outcome == "rate_limited"
    assert lim.admit([lim.bucket("client-write", "a", 0.001, 2)]).admitted


def test_a_zero_rate_is_no_limit(ctx) -> None:
    lim = limiter(ctx)
    unlimited = lim.bucket("write", "*", rate=0, burst=1)
    assert all(lim.admit([unlimited]).admitted for _ in range(20))


def test_queue_depth_refuses_before_taking_tokens(ctx) -> None:
    lim = limiter(ctx)
    bucket = lim.bucket("client-write", "carol", rate=0.001, burst=5)
    for i in range(3):
        ctx.queue.enqueue_request(f"req-depth-{i}")
    decision = lim.admit([bucket], max_depth=3)
    assert decision.outcome == "queue_full" and decision.depth == 3
    # Nothing drains: the longest sane wait.
    assert decision.retry_after == drain.RETRY_MAX
    assert lim.admit([bucket], max_depth=4).admitted
    assert lim.admit([bucket]).levels[0].remaining == 3


def test_queue_full_retry_after_follows_the_measured_drain_rate(ctx) -> None:
    meter = drain.DrainMeter(ctx.redis, ctx.settings.redis_namespace)
    for _ in range(100):  # about 10 jobs/s in the moving average
        meter.record(1)
    for i in range(25):
        ctx.queue.enqueue_request(f"req-drain-{i}")
    decision = limiter(ctx).admit([], max_depth=5)
    assert decision.outcome == "queue_full"
    # 21 jobs over the limit at ~10 jobs/s.
    assert 2 <= decision.retry_after <= 4
    assert decision.drain_rate is not None and 8 < decision.drain_rate <= 10


def test_headers_follow_the_ietf_draft(ctx) -> None:
    lim = limiter(ctx)
    decision = lim.admit([lim.bucket("write", "*", 10, 20), lim.bucket("client-write", "x", 5, 10)])
    headers = buckets.headers(decision)
    assert headers["RateLimit-Policy"] == '"write";q=20;w=2, "client-write";q=10;w=2'
    assert headers["RateLimit"] == '"write";r=19;t=1, "client-write";r=9;t=1'
