"""Token buckets and the queue-depth check, in the real Redis (one Lua script)."""

from __future__ import annotations

import concurrent.futures
import threading
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


# --- leases of a client's read budget --------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def count_round_trips(lim: Limiter) -> list[int]:
    """Count the admission script's runs (the Redis round trips) of ``lim``; the script still runs."""
    script = lim._admit
    calls = [0]

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return script(*args, **kwargs)

    lim._admit = counted  # type: ignore[assignment]
    return calls


def level_in_redis(ctx, bucket) -> float:  # type: ignore[no-untyped-def]
    return float(ctx.redis.hget(bucket.key, "tokens"))


def test_a_fast_reader_spends_leased_tokens_locally_in_few_round_trips(ctx) -> None:
    lim = limiter(ctx)
    bucket = lim.bucket("client-read", "poller", rate=0.001, burst=2000)
    clock = Clock()
    leases = buckets.Leases(lim, most=64, clock=clock)
    trips = count_round_trips(lim)
    decisions = [leases.admit(bucket) for _ in range(500)]
    assert all(d.admitted for d in decisions)
    # Leases of 1, 2, 4, ... 64 tokens, then 64 at a time: 7 + 6 round trips for 500 reads.
    assert trips[0] <= 15, trips
    # The bucket gave out every token spent, and at most one lease more.
    taken = round(2000 - level_in_redis(ctx, bucket))  # (the bucket refills 0.001 token a second)
    assert 500 <= taken < 500 + 64
    # The RateLimit levels the reads saw only go down, and count the lease's tokens as the client's.
    remaining = [d.levels[0].remaining for d in decisions]
    assert remaining == sorted(remaining, reverse=True)
    assert remaining[-1] == 2000 - 500


def test_a_client_gets_no_more_than_its_burst_across_processes_without_refill(ctx) -> None:
    lim = limiter(ctx)
    bucket = lim.bucket("client-read", "greedy", rate=0.001, burst=1000)
    clock = Clock()
    processes = [buckets.Leases(lim, most=64, clock=clock) for _ in range(3)]
    outcomes = [processes[i % 3].admit(bucket).admitted for i in range(1500)]
    admitted = sum(outcomes)
    # Never more than the burst; refused early by at most a lease per process (tokens others hold).
    assert 1000 - 3 * 50 <= admitted <= 1000
    refused = processes[0].admit(bucket)
    assert refused.outcome == buckets.RATE_LIMITED and refused.retry_after >= 1


def test_a_slow_reader_takes_one_token_at_a_time(ctx) -> None:
    lim = limiter(ctx)
    bucket = lim.bucket("client-read", "slow", rate=0.001, burst=2000)
    clock = Clock()
    leases = buckets.Leases(lim, most=64, clock=clock)
    levels = []
    for _ in range(6):
        assert leases.admit(bucket).admitted
        levels.append(round(level_in_redis(ctx, bucket)))
        clock.now += 2.0  # each lease ends before the next read
    # Exactly one token per read: nothing leased ahead, nothing dropped.
    assert levels == [1999, 1998, 1997, 1996, 1995, 1994]


def test_a_changed_budget_is_used_at_once(ctx) -> None:
    lim = limiter(ctx)
    clock = Clock()
    leases = buckets.Leases(lim, most=64, clock=clock)
    roomy = lim.bucket("client-read", "tuned", rate=0.001, burst=2000)
    for _ in range(100):
        assert leases.admit(roomy).admitted
    # The operator cuts the budget: the tokens this process still holds under the old one do not count.
    tight = lim.bucket("client-read", "tuned", rate=0.001, burst=3)
    assert [leases.admit(tight).admitted for _ in range(5)] == [True, True, True, False, False]


def test_leasing_off_checks_every_read_in_redis(ctx) -> None:
    lim = limiter(ctx)
    bucket = lim.bucket("client-read", "exact", rate=0.001, burst=2000)
    leases = buckets.Leases(lim, most=1, clock=Clock())
    trips = count_round_trips(lim)
    for _ in range(20):
        assert leases.admit(bucket).admitted
    assert trips == [20]
    assert round(level_in_redis(ctx, bucket)) == 1980


def test_a_burst_after_a_pause_exceeds_the_burst_by_at_most_one_lease_per_process(ctx) -> None:
    lim = limiter(ctx)
    bucket = lim.bucket("client-read", "saver", rate=400, burst=200)  # leases of at most 10 (a twentieth)
    processes = [buckets.Leases(lim, most=64) for _ in range(3)]
    for leases in processes:  # each process leases (1, 2, 4, 8: its current lease holds tokens)
        for _ in range(9):
            assert leases.admit(bucket).admitted
    time.sleep(0.6)  # the bucket refills to its burst, the leases are still alive
    began = time.monotonic()
    admitted = 0
    for i in range(400):
        if processes[i % 3].admit(bucket).admitted:
            admitted += 1
    refilled = 400 * (time.monotonic() - began)
    assert admitted <= 200 + 3 * 10 + refilled + 1, (admitted, refilled)


def test_one_thread_at_a_time_takes_a_clients_lease(ctx) -> None:
    lim = limiter(ctx)
    bucket = lim.bucket("client-read", "threads", rate=0.001, burst=2000)
    leases = buckets.Leases(lim, most=64, clock=Clock())  # (no lease ends: nothing dropped)
    barrier = threading.Barrier(8)

    def reader() -> int:
        barrier.wait()
        return sum(leases.admit(bucket).admitted for _ in range(100))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        spent = sum(pool.map(lambda _: reader(), range(8)))
    assert spent == 800
    # What left the bucket: what was spent plus what this process still holds (one lease, at most 64).
    taken = round(2000 - level_in_redis(ctx, bucket))  # (the bucket refills 0.001 token a second)
    assert 800 <= taken <= 800 + 64, taken
