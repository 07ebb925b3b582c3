"""Every Redis key and RQ queue name of a deployment, in one place.

A deployment owns the keys that start with its ``redis_namespace`` (``<ns>``
below), so several deployments can share one Redis.  Everything here is
transport or cache: the database is the truth, and a Redis that lost it all
is rebuilt by the sweeper (queues, timers) or refilled on the next use
(caches, turns, rates).  The strings are part of the deployment's state (a
running conductor and a newly started one must agree on them), so a change
to one is a migration: ``tests/unit/test_keys.py`` pins every one of them.

Each function takes the namespace (``settings.redis_namespace``) and says
what lives under the key, its Redis type, who writes and who reads it, and
when it expires.  This module imports nothing from ``conductor``: anything
that talks to Redis may use it.
"""

from __future__ import annotations

import enum


class Chore(enum.StrEnum):
    """The deployment-wide chores of :func:`turn`: one process does each per interval.

    A closed list, because a turn's key is ``<ns>:<chore>``: a chore named
    like another key of this module would share that key.
    """

    #: The watchdog failing agent waits that ran out (``conductor.engine.watchdog``).
    WAIT_WATCHDOG = "wait-watchdog"
    #: The sweep re-enqueueing queued requests whose job was lost (``conductor.engine.sweeper``).
    REQUEUE_SWEEP = "requeue-sweep"
    #: Deleting finished requests and old history (``conductor.engine.retention``).
    PURGE = "purge"


# --- the work queue ------------------------------------------------------------------------


def work_queue(namespace: str) -> str:
    """``<ns>-work``: the RQ queue name of the conductors' jobs (not itself a key).

    RQ keeps the queue in ``rq:queue:<ns>-work`` (a list of job ids) and each
    job in ``rq:job:<id>`` (a hash; a request's first job has the request id
    as job id).  Written by the API (a new request) and by the conductors
    (pumped timers, the sweeper's re-enqueues); read by the conductor
    workers.  A job's hash is deleted when it succeeds and kept for a while
    when it fails (a day; an hour for power sync batches, which have a queue
    of their own: :func:`sync_queue`); the admission script reads the list's
    length.
    """
    return f"{namespace}-work"


def sync_queue(namespace: str) -> str:
    """``<ns>-sync``: the RQ queue of the power state observer's batches (not itself a key: RQ's, as above).

    Workers serve it only when ``<ns>-work`` is empty: at 10,000 nodes a
    round of the observer is 200 batch jobs, which in the work queue made
    the requests behind them wait up to a minute (``bench/scale.py``).
    """
    return f"{namespace}-sync"


def timers(namespace: str) -> str:
    """``<ns>:timers``: sorted set of request ids scored by when their next step is due (epoch seconds).

    Written by the conductors (a step that polls or retries later) and the
    sweeper (re-arming a lost request); every conductor pops the due ones
    into the work queue.  No expiry: an entry leaves when it is popped or
    its request is cancelled.
    """
    return f"{namespace}:timers"


def pumped(namespace: str) -> str:
    """``<ns>:pumped``: sorted set of request ids recently popped from the timers, scored by when.

    Written by the same atomic pop as :func:`timers` (conductors); read by
    the sweeper, which so tells a request waiting in a busy queue from a
    lost one.  No expiry: each pop trims entries older than
    ``workqueue.PUMPED_MEMORY`` (300 s).
    """
    return f"{namespace}:pumped"


def drain(namespace: str) -> str:
    """``<ns>:drain``: hash ``rate`` (jobs/s, moving average) and ``at`` (when, Redis clock).

    Written by every conductor job that ends (``throttle.drain.DrainMeter``);
    read by the API's admission script (the ``Retry-After`` of
    ``queue_full``) and the metrics.  Expires a day after the last job.
    """
    return f"{namespace}:drain"


# --- callbacks (webhooks) ------------------------------------------------------------------


def callback_queue(namespace: str) -> str:
    """``<ns>-callbacks``: the RQ queue name of webhook deliveries (not itself a key).

    RQ keeps it in ``rq:queue:<ns>-callbacks`` (job ids; a job carries one
    delivery id).  Written by the callback pumps, read by the callback
    workers; job hashes expire as in :func:`work_queue`.
    """
    return f"{namespace}-callbacks"


def callback_wake(namespace: str) -> str:
    """``<ns>:callbacks:wake``: list of at most one element, the pumps' wake-up.

    Pushed (then trimmed to one) after a transaction that emitted deliveries
    commits, in the API or a conductor; popped with a blocking pop by the
    callback pumps.  No expiry: it never holds more than one element.
    """
    return f"{namespace}:callbacks:wake"


# --- the event stream ----------------------------------------------------------------------


def events(namespace: str) -> str:
    """``<ns>:events``: stream of the committed events (``GET /v1/events``), oldest first.

    Each entry has fields ``t`` (type), ``n`` (node UUID or empty), ``r``
    (request id or empty), ``c`` (commit time) and ``b`` (the JSON body).
    Appended by the publish script (``eventlog.log``) after a transaction
    commits, in the API and the conductors; read by every API process.  No
    expiry: the publish script trims entries older than ``event_retention``
    (and beyond ``event_max_length``), at most once a second.
    """
    return f"{namespace}:events"


def events_order(namespace: str) -> str:
    """``<ns>:events:order``: hash, per node ``a|<uuid>`` (sequence numbers handed out) and ``d|<uuid>`` (published).

    Written by the transactions that emit node events (a number per event,
    taken while the node's row is locked) and by the publish script, which
    appends a node's events in that order.  Read by the publish script
    only.  No expiry: two small fields per node.
    """
    return f"{namespace}:events:order"


def events_parked(namespace: str) -> str:
    """``<ns>:events:parked``: hash ``<uuid>|<seq>`` -> an event waiting for an earlier one of its node.

    The value is the event (JSON) or empty for a number whose transaction
    rolled back.  Written and emptied by the publish script; an entry
    leaves when the events before it arrive, or after
    ``eventlog.log.STALL`` seconds (their process died between its commit
    and its publish).  No expiry.
    """
    return f"{namespace}:events:parked"


def events_parked_at(namespace: str) -> str:
    """``<ns>:events:parked-at``: sorted set of the fields of :func:`events_parked`, scored by when (ms, Redis clock).

    Written and read by the publish script, alongside :func:`events_parked`
    (which see).  No expiry.
    """
    return f"{namespace}:events:parked-at"


def events_meta(namespace: str) -> str:
    """``<ns>:events:meta``: hash ``floor`` (the newest event id that may be lost) and ``trimmed`` (ms).

    A ``Last-Event-ID`` below ``floor`` is too old to resume from.  Written
    by the publish script when it creates or trims the stream; read by the
    API when a stream resumes.  No expiry.
    """
    return f"{namespace}:events:meta"


# --- throttles -----------------------------------------------------------------------------


def rate_bucket(namespace: str, policy: str, scope: str) -> str:
    """``<ns>:rl:<policy>:<scope>``: hash ``tokens`` and ``at`` (Redis clock) of one token bucket.

    ``scope`` is a client, ``*`` for everyone, or a node and token prefix
    (agent heartbeats).  Written and read only by the API's admission script.
    Expires once the bucket would be full again, plus a second.
    """
    return f"{namespace}:rl:{policy}:{scope}"


def throttle(namespace: str) -> str:
    """``<ns>:throttle``: string, the operator's throttle knobs (merged with the defaults) as JSON.

    The database row is the truth; this is the deployment's shared copy.
    Written by any process that changed the knobs or found the key missing;
    read by every API and conductor process (each caches it half a second).
    Expires after ``throttle.settings.SHARED_TTL`` (60 s).
    """
    return f"{namespace}:throttle"


def bmc_pace(namespace: str, bmc: str) -> str:
    """``<ns>:bmc:<bmc>``: string, when the last command went to BMC ``<address>:<port>`` (Redis clock).

    Written and read by the conductors' pacing scripts (``throttle.bmc``:
    ``bmc_min_interval`` between two commands).  Expires a second after the
    interval is over.
    """
    return f"{namespace}:bmc:{bmc}"


def bmc_busy(namespace: str, bmc: str) -> str:
    """``<ns>:bmc-busy:<bmc>``: string, who holds BMC ``<address>:<port>``'s one-call-in-flight lock.

    Written (taken, released if still ours) and read by the conductors
    (``throttle.bmc``, ``ipmi_one_in_flight``).  Expires after the holder's
    ttl, so a dead holder frees it.
    """
    return f"{namespace}:bmc-busy:{bmc}"


def power_transitions(namespace: str) -> str:
    """``<ns>:power-transitions``: hash ``<driver>|<power state>`` -> seconds a BMC last took to get there.

    Written by the conductors when a hard power command's state is reached
    (``engine.power``: the deployment-wide estimate, used for the first
    poll of a node that has no estimate of its own); read by the same.  No
    expiry: a handful of fields, replaced as nodes are powered.
    """
    return f"{namespace}:power-transitions"


def redfish_session(namespace: str, digest: str) -> str:
    """``<ns>:redfish-session:<digest>``: string, the Redfish session shared by every worker for one BMC and login.

    ``<digest>`` is an HMAC (under a key derived from the deployment's
    secret key) of the service's address, the user name and the password,
    so a different password never finds another one's session and the
    password cannot be read back from the key.  The value is the session's
    token and URI, sealed with the secret box.  Set only if absent by the
    conductors after a login (``drivers.redfish_sessions``), read by every
    conductor before one, and deleted by the one that got 401 with the
    token it still holds.  Expires ``redfish_session_ttl`` after the login.
    """
    return f"{namespace}:redfish-session:{digest}"


# --- conductors ----------------------------------------------------------------------------


def conductor_pidns(namespace: str, name: str) -> str:
    """``<ns>:conductor-pidns:<name>``: string, the PID namespace (boot id, inode) of the holder of conductor ``name``.

    Written by the conductor that takes the name (deleted first); read by a
    conductor of the same host deciding whether a dead pid frees the name
    at once.  No expiry: the next holder replaces it.
    """
    return f"{namespace}:conductor-pidns:{name}"


def turn(namespace: str, chore: str) -> str:
    """``<ns>:<chore>``: string, the name of the process whose turn it is to do ``chore``.

    Set only if absent, by whichever process of the deployment gets there
    first; nobody reads it (taking it is the answer).  Expires after the
    chore's interval, when the next turn is up.

    :raises ValueError: ``chore`` is not a :class:`Chore`.
    """
    return f"{namespace}:{Chore(chore)}"


def power_sync_round(namespace: str) -> str:
    """``<ns>:power-sync:round``: string, the conductor that started the current power sync round.

    Set only if absent by the conductors (``engine.power_sync``); expires
    after ``power_sync_interval``, when the next round is due.
    """
    return f"{namespace}:power-sync:round"


def power_sync_pending(namespace: str) -> str:
    """``<ns>:power-sync:pending``: integer, batch jobs of the current power sync round not yet ended.

    Incremented by the conductor starting a round, decremented (and deleted
    at zero) by each batch job; a round does not start while it is above
    zero.  Expires after every batch's job timeout, one after the other, so a
    batch whose worker died is forgotten.
    """
    return f"{namespace}:power-sync:pending"


# --- metrics -------------------------------------------------------------------------------


def metrics(namespace: str) -> str:
    """``<ns>:metrics``: hash of the deployment's counters and histogram buckets.

    Fields are ``c|<name>|<labels>`` (counters) and ``h|<name>|<le>|<labels>``
    or ``h|<name>|sum|<labels>`` (histograms).  Incremented by the API and
    the conductors; read when ``/metrics/fleet`` is rendered.  No expiry.
    """
    return f"{namespace}:metrics"
