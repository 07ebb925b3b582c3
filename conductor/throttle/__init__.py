"""Admission rules: how fast, how deep, exactly once, and the operator's knobs.

* :mod:`~conductor.throttle.settings`: the knobs (rates, bursts, queue depth,
  per-BMC interval, worker concurrency), stored in the database and seen by
  every process within a second;
* :mod:`~conductor.throttle.buckets`: token buckets and the queue-depth
  check, decided in Redis by one Lua script;
* :mod:`~conductor.throttle.drain`: the work queue's drain rate (a moving
  average), for an honest ``Retry-After`` on ``queue_full``;
* :mod:`~conductor.throttle.idempotency`: ``Idempotency-Key`` records;
* :mod:`~conductor.throttle.bmc`: pacing of commands to one BMC.
"""
