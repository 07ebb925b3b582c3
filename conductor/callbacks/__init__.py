"""Callbacks: signed, retried, never lost, never in the way (see docs/callbacks.md).

* :mod:`events` - event types and :func:`events.emit`, which records the
  deliveries of an event in the caller's transaction (the outbox);
* :mod:`subscriptions` - standing subscriptions (the service the API calls);
* :mod:`destinations` - allow/deny lists, checked when a URL is given and
  before each attempt;
* :mod:`secrets` and :mod:`signing` - per-client signing secrets, rotation,
  Standard Webhooks signatures;
* :mod:`outbox` - the callbacks queue, the wake-up, the pump, dead leases;
* :mod:`delivery` and :mod:`retry` - one attempt and when to try again;
* :mod:`worker` and :mod:`jobs` - the callback worker process;
* :mod:`status` - how deliveries look in the API.
"""
