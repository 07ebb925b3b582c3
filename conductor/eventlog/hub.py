"""One reader of the event log per API process, and the streams and long polls it feeds.

The hub's thread reads the log with a blocking ``XREAD`` (one Redis
connection per process, however many clients), builds each event's SSE
frame once, and hands it to every :class:`Subscription` whose filter wants
it and to the long polls waiting for its request.  A subscription buffers
at most ``limit`` events for its client: one that falls further behind is
closed (``slow_consumer``) and its buffer freed at once, so a client that
never reads costs a bounded amount of memory (the buffer, then the
kernel's socket buffers) whatever happens meanwhile, and never slows the
hub or the other clients.

Every ``IDLE_CHECK`` seconds without events the hub also asks the log's
``floor``: a floor above what the hub has read means Redis lost events
(restarted empty): every stream is told (``stream.reset``).  The reader
runs while the process has streams or long polls (and ``IDLE_EXIT``
seconds more), so a process nobody watches holds no Redis connection.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import redis

from conductor.callbacks import events
from conductor.callbacks.events import EventType
from conductor.eventlog import sse
from conductor.eventlog.log import PAGE, Entry, EventLog, parse_id

LOG = logging.getLogger(__name__)

#: How long one ``XREAD`` blocks (ms): also how soon the hub notices it must stop.
BLOCK_MS = 1000
#: Seconds between two floor checks of an idle hub.
IDLE_CHECK = 5.0
#: Pause after Redis failed (s).
REDIS_RETRY = 1.0
#: Seconds without a client after which the reader stops (the next client starts it again).
IDLE_EXIT = 60.0
#: Least time between two hand-outs (s): what a burst may add to an event's latency.
COALESCE = 0.02


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """An event as the hub hands it out: what filters look at, and its frame."""

    key: tuple[int, int]
    type: str
    node: str | None
    request: str | None
    frame: bytes

    @classmethod
    def of(cls, entry: Entry) -> Item:
        """The item of a logged event."""
        return cls(entry.key, entry.type, entry.node, entry.request, sse.event_frame(entry))


@dataclasses.dataclass(frozen=True)
class Filter:
    """Which events a client wants: types matching one of ``patterns`` (all if empty), of ``nodes`` (all if empty).

    An event about no node (throttle, conductor) passes only without a node filter.
    """

    patterns: tuple[str, ...] = ()
    nodes: frozenset[str] = frozenset()
    _seen: dict[str, bool] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def wants(self, item: Item) -> bool:
        """Whether ``item`` passes."""
        if self.nodes and item.node not in self.nodes:
            return False
        if not self.patterns:
            return True
        hit = self._seen.get(item.type)
        if hit is None:
            hit = self._seen[item.type] = events.matches(self.patterns, item.type)
        return hit


class Subscription:
    """One client's bounded buffer of wanted events."""

    def __init__(self, wanted: Filter, limit: int, position: tuple[int, int]) -> None:
        self.filter = wanted
        self.limit = limit
        #: Where the hub was when this subscription began: it gets every event after.
        self.position = position
        #: Why the hub closed it (None: open).
        self.closed: str | None = None
        self._items: collections.deque[Item] = collections.deque()
        self._ready = threading.Condition()

    def offer(self, items: Sequence[Item]) -> bool:
        """Buffer ``items``; False when that would pass the limit (it is closed, its buffer freed)."""
        with self._ready:
            if self.closed is not None:
                return True
            if len(self._items) + len(items) > self.limit:
                self._items.clear()
                self.closed = "slow_consumer"
                self._ready.notify()
                return False
            self._items.extend(items)
            self._ready.notify()
            return True

    def close(self, reason: str) -> None:
        """Close it (the client gets what it has buffered, then ``stream.closed``)."""
        with self._ready:
            if self.closed is None:
                self.closed = reason
            self._ready.notify()

    def take(self, timeout: float) -> tuple[list[Item], str | None]:
        """What is buffered (waiting up to ``timeout`` for something), and the reason it is closed, if it is."""
        with self._ready:
            if not self._items and self.closed is None:
                self._ready.wait(timeout)
            items = list(self._items)
            self._items.clear()
            return items, self.closed

    @property
    def buffered(self) -> int:
        """Events waiting for the client."""
        return len(self._items)


class Hub:
    """The event log's reader of this process (started on first use)."""

    def __init__(self, log: EventLog, limit: int, on_drop: Callable[[str], None] | None = None) -> None:
        self.log = log
        self.limit = limit
        # A batch never fills a buffer by itself: a client that keeps up is never dropped for a burst.
        self._batch = max(1, min(PAGE, limit // 4))
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._position: tuple[int, int] = (0, 0)
        self._position_id = "0-0"
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._should_stop: Callable[[], bool] = lambda: False

    # --- lifecycle ---------------------------------------------------------------------------

    def stop_when(self, predicate: Callable[[], bool]) -> None:
        """Close every stream (``server_stopping``) once ``predicate()`` is true (checked every second)."""
        self._should_stop = predicate

    def start(self) -> None:
        """Start reading (at the newest event), if not reading yet.

        :raises redis.RedisError: Redis cannot be reached (nothing started).
        """
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is not None:
            return
        if self._stopped.is_set():
            raise redis.ConnectionError("the event hub of this process has stopped")
        self._position_id = self.log.tail()
        self._position = parse_id(self._position_id) or (0, 0)
        self._thread = threading.Thread(target=self._run, name="event-hub", daemon=True)
        self._thread.start()

    def _quit_if_unused(self) -> bool:
        """End the reader (it starts again with the next client) when nobody uses it; whether it did."""
        with self._lock:
            if self._subscriptions or self._waiters:
                return False
            self._thread = None
            return True

    def stop(self, reason: str = "server_stopping") -> None:
        """Close every stream and wake every long poll; the thread ends within a second."""
        self._stopped.set()
        with self._lock:
            subscriptions = list(self._subscriptions)
            waiters = [event for waiting in self._waiters.values() for event in waiting]
        for subscription in subscriptions:
            subscription.close(reason)
        for event in waiters:
            event.set()

    @property
    def stopped(self) -> bool:
        """Whether it stopped (or was told to)."""
        return self._stopped.is_set()

    # --- clients -----------------------------------------------------------------------------

    def subscribe(self, wanted: Filter) -> Subscription:
        """A subscription to every event ``wanted`` after the hub's position now.

        :raises redis.RedisError: the hub could not start.
        """
        with self._lock:
            self._start_locked()
            subscription = Subscription(wanted, self.limit, self._position)
            self._subscriptions.add(subscription)
        if self._stopped.is_set():
            subscription.close("server_stopping")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget ``subscription`` (its buffer goes with it)."""
        with self._lock:
            self._subscriptions.discard(subscription)

    @contextlib.contextmanager
    def watching(self, request_id: str) -> Iterator[threading.Event]:
        """An event set when request ``request_id`` finishes (or the hub stops), while in the block.

        :raises redis.RedisError: the hub could not start.
        """
        event = threading.Event()
        with self._lock:
            self._start_locked()
            self._waiters.setdefault(request_id, set()).add(event)
        if self._stopped.is_set():
            event.set()
        try:
            yield event
        finally:
            with self._lock:
                waiting = self._waiters.get(request_id)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiters[request_id]

    def counts(self) -> tuple[int, int]:
        """Open subscriptions and long polls of this process."""
        with self._lock:
            return len(self._subscriptions), sum(len(w) for w in self._waiters.values())

    # --- the reader --------------------------------------------------------------------------

    def _run(self) -> None:
        last_check = last_used = time.monotonic()
        while not self._stopped.is_set():
            if self._should_stop():
                LOG.info("Event hub: the process is stopping; closing its streams")
                self.stop()
                return
            try:
                entries = self.log.read(self._position_id, count=self._batch, block_ms=BLOCK_MS)
                if not entries and time.monotonic() - last_check >= IDLE_CHECK:
                    last_check = time.monotonic()
                    self._check_floor()
            except redis.RedisError as exc:
                if self._quit_if_unused():
                    return
                LOG.warning("Event hub: Redis unavailable (%s); reading again in %.0f s", exc, REDIS_RETRY)
                self._stopped.wait(REDIS_RETRY)
                continue
            except Exception:
                LOG.exception("Event hub: unexpected error; reading again in %.0f s", REDIS_RETRY)
                self._stopped.wait(REDIS_RETRY)
                continue
            if entries:
                self.dispatch(entries)
                # At most one hand-out per COALESCE: a burst reaches each client in a few writes,
                # not one thread wake-up per event (the first event of a burst goes out at once).
                self._stopped.wait(COALESCE)
            if self._subscriptions or self._waiters:
                last_used = time.monotonic()
            elif time.monotonic() - last_used > IDLE_EXIT and self._quit_if_unused():
                return

    def dispatch(self, entries: Sequence[Entry]) -> None:
        """Hand ``entries`` (the next ones of the log) to the subscriptions and long polls."""
        items = [Item.of(entry) for entry in entries]
        finished = {i.request for i in items if i.request and i.type == EventType.REQUEST_FINISHED}
        with self._lock:
            self._position, self._position_id = items[-1].key, entries[-1].id
            subscriptions = list(self._subscriptions)
            woken = [event for request in finished for event in self._waiters.get(request, ())]
        for event in woken:
            event.set()
        # Many clients share a filter (all events, a type): each filter is applied once.
        chosen: dict[Filter, list[Item]] = {}
        for subscription in subscriptions:
            wanted = chosen.get(subscription.filter)
            if wanted is None:
                wanted = chosen[subscription.filter] = [item for item in items if subscription.filter.wants(item)]
            if wanted and not subscription.offer(wanted):
                LOG.warning("Event stream dropped: its client fell more than %d events behind", self.limit)
                if self._on_drop is not None:
                    self._on_drop("slow_consumer")

    def _check_floor(self) -> None:
        floor = self.log.floor()
        found = parse_id(floor) if floor else None
        if found is None or found <= self._position:
            return
        LOG.warning("Event hub: events after %s were lost (the log starts after %s); telling every stream",
                    self._position_id, floor)
        reset = Item(found, sse.RESET, None, None,
                     sse.control_frame(sse.RESET, reason="lost", last_event_id=self._position_id, oldest=floor))
        with self._lock:
            # Everything after the floor is still there: read on from it.
            self._position_id, self._position = str(floor), found
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.offer([reset])
