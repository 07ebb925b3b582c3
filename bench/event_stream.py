"""Event stream benchmark: 200 open streams while 1,000 power requests run.

Usage (from the repository root)::

    .venv/bin/python bench/event_stream.py
    .venv/bin/python bench/event_stream.py --streams 200 --count 1000 --delay 1 --all 50

1. Starts ``conductor up`` (temporary data directory, embedded Redis and
   SQLite, ``--workers`` conductor workers, 2 API processes, default
   event settings: 128 stream slots per API process), switches the
   admission budgets off and enrols ``--count`` ``fake`` nodes whose
   power changes take ``--delay`` seconds.
2. **Without streams**: 8 polling clients (processes, keep-alive
   connections) ``GET /v1/nodes/<id>/states`` round-robin over the nodes
   while every node is rebooted (``rebooting``: off, then on) through the
   API; the polls answered per second over the run is the baseline.
3. **With streams**: the same, after ``--streams`` event streams were opened
   (two client processes, one thread each, ``selectors``): a quarter with
   no filter (``--all`` overrides), then in turn ``type=request.finished``,
   ``type=node.*`` and ``node=<one node>``.  A stream refused with 503
   ``streams_busy`` is opened again after its ``Retry-After``.
4. **Streams, no polling**: every node rebooted once more, the streams
   still open, nobody polling (the pollers saturate the CPU by design: this
   phase's latency is the stream's own).
5. Checks every stream against the log itself (read from Redis): the ids a
   stream got over phases 3 and 4 must be exactly the ids of the events its
   filter wants, in the same order (none lost, none repeated, none out of
   order).

Prints: events received per stream vs expected, the commit-to-client
latency of every event received in phases 3 and 4 (p50, p99, max:
``committed_at`` of the event against the client's clock when the bytes
arrived; same host), the polling throughput without and with the streams
and their ratio, CPU by role, and the Redis memory the log takes per event.  Figures only, never
asserts (targets: none lost, p99 < 250 ms, ratio >= 0.8).  On a shared
2-core box the polling figures vary by 10-20 % from run to run by
themselves: compare several runs.
"""

from __future__ import annotations

import argparse
import array
import concurrent.futures
import datetime as dt
import fnmatch
import hashlib
import http.client
import multiprocessing as mp
import os
import selectors
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fleet_reboot import Service, cpu_by_role, submit_all  # noqa: E402

POLLERS = 8


# --- polling clients -------------------------------------------------------------------------

def _poller(url: str, token: str, names: list[str], stop: Any, results: Any) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    done = 0
    errors: dict[str, int] = {}
    i = 0
    began = time.monotonic()
    while not stop.is_set():
        try:
            conn.request("GET", f"/v1/nodes/{names[i % len(names)]}/states", headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                done += 1
            else:
                errors[str(response.status)] = errors.get(str(response.status), 0) + 1
        except (OSError, http.client.HTTPException) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
        i += 1
    results.put((done, errors, time.monotonic() - began))


class Pollers:
    """``POLLERS`` processes polling node states until stopped."""

    def __init__(self, url: str, token: str, names: list[str]) -> None:
        context = mp.get_context("fork")
        self.stop = context.Event()
        self.results: Any = context.Queue()
        self.procs = [context.Process(target=_poller, args=(url, token, names[i::POLLERS], self.stop, self.results))
                      for i in range(POLLERS)]
        for proc in self.procs:
            proc.start()

    def finish(self) -> tuple[float, dict[str, int]]:
        """Polls answered (200) per second, all clients together; the failed ones by status or exception."""
        self.stop.set()
        results = [self.results.get(timeout=60) for _ in self.procs]
        for proc in self.procs:
            proc.join(10)
        done = sum(r[0] for r in results)
        seconds = statistics.mean(r[2] for r in results)
        errors: dict[str, int] = {}
        for _done, failed, _seconds in results:
            for what, count in failed.items():
                errors[what] = errors.get(what, 0) + count
        return done / seconds, errors


# --- stream clients --------------------------------------------------------------------------

def _iso(text: bytes) -> float:
    return dt.datetime.fromisoformat(text.decode()).timestamp()


class _Raw:
    """One HTTP/1.0 event stream on a non-blocking socket."""

    def __init__(self, index: int, path: str) -> None:
        self.index = index
        self.path = path
        self.buffer = b""
        self.head_done = False
        self.ids: list[bytes] = []
        self.closed_reason: bytes | None = None
        self.refused = 0
        self.sock: socket.socket | None = None


def _stream_client(url: str, token: str, paths: list[tuple[int, str]], ready: Any, stop: Any, results: Any) -> None:
    host, port = url.removeprefix("http://").split(":")
    selector = selectors.DefaultSelector()
    streams = [_Raw(index, path) for index, path in paths]
    committed_cache: dict[bytes, float] = {}
    arrived = array.array("d")
    latencies = array.array("d")

    def connect(stream: _Raw) -> None:
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(f"GET {stream.path} HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        sock.setblocking(False)
        stream.sock, stream.buffer, stream.head_done = sock, b"", False
        selector.register(sock, selectors.EVENT_READ, stream)

    for stream in streams:
        connect(stream)
    connected = 0
    retry_at: dict[int, float] = {}
    while not stop.is_set():
        for stream in streams:
            if stream.index in retry_at and retry_at[stream.index] <= time.monotonic():
                del retry_at[stream.index]
                connect(stream)
        for key, _mask in selector.select(0.2):
            stream = key.data
            assert stream.sock is not None
            try:
                chunk = stream.sock.recv(262144)
            except BlockingIOError:
                continue
            now = time.time()
            if not chunk:  # the server ended it (its reason, if any, is in closed_reason)
                selector.unregister(stream.sock)
                stream.sock.close()
                stream.sock = None
                continue
            stream.buffer += chunk
            if not stream.head_done:
                if b"\r\n\r\n" not in stream.buffer:
                    continue
                head, stream.buffer = stream.buffer.split(b"\r\n\r\n", 1)
                status = head.split(b" ", 2)[1]
                if status == b"503":  # streams_busy: again after Retry-After
                    stream.refused += 1
                    selector.unregister(stream.sock)
                    stream.sock.close()
                    retry_at[stream.index] = time.monotonic() + 5
                    continue
                assert status == b"200", head
                stream.head_done = True
                connected += 1
                if connected == len(streams):
                    ready.put(len(streams))
            *frames, stream.buffer = stream.buffer.split(b"\n\n")
            for frame in frames:
                if frame.startswith(b"id: "):
                    event_id = frame[4:frame.index(b"\n")]
                    stream.ids.append(event_id)
                    at = frame.index(b'"committed_at": "') + 17
                    committed = frame[at:frame.index(b'"', at)]
                    when = committed_cache.get(committed)
                    if when is None:
                        when = committed_cache[committed] = _iso(committed)
                    arrived.append(now)
                    latencies.append(now - when)
                elif frame.startswith(b"event: stream.closed"):
                    stream.closed_reason = frame
    for stream in streams:
        if stream.sock is not None:
            stream.sock.close()
    results.put({
        "streams": {s.index: (len(s.ids), hashlib.sha256(b",".join(s.ids)).hexdigest(), s.refused,
                              s.closed_reason.decode() if s.closed_reason else None) for s in streams},
        "arrived": arrived,
        "latencies": latencies,
    })


class StreamClients:
    """Event streams spread over two client processes."""

    def __init__(self, url: str, token: str, paths: list[str], processes: int = 2) -> None:
        context = mp.get_context("fork")
        self.ready: Any = context.Queue()
        self.stop = context.Event()
        self.results: Any = context.Queue()
        indexed = list(enumerate(paths))
        self.procs = [context.Process(target=_stream_client,
                                      args=(url, token, indexed[i::processes], self.ready, self.stop, self.results))
                      for i in range(processes)]
        for proc in self.procs:
            proc.start()

    def wait_connected(self, timeout: float = 120) -> None:
        for _ in self.procs:
            self.ready.get(timeout=timeout)

    def finish(self) -> tuple[dict[int, Any], list[tuple[float, float]]]:
        """Per stream (events, sha256 of their ids, 503s, closing frame); (arrival, latency) of every event."""
        self.stop.set()
        streams: dict[int, Any] = {}
        latencies: list[tuple[float, float]] = []
        for _ in self.procs:
            result = self.results.get(timeout=120)
            streams.update(result["streams"])
            latencies += zip(result["arrived"], result["latencies"], strict=True)
        for proc in self.procs:
            proc.join(10)
        return streams, latencies


# --- the run ---------------------------------------------------------------------------------

def wait_idle(service: Service, timeout: float) -> float:
    began = time.monotonic()
    while service.any_active():
        if time.monotonic() - began > timeout:
            raise SystemExit(f"requests still active after {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - began


def phase(service: Service, token: str, names: list[str], submitters: int, timeout: float,
          poll: bool = True) -> dict[str, Any]:
    """Reboot every node (while the pollers poll); polls/s, errors, time, CPU by role."""
    pollers = Pollers(service.url, token, names) if poll else None
    time.sleep(1.0)
    began, wall = time.monotonic(), time.time()
    cpu_before = cpu_by_role()
    submit_all(service, names, "power", {"target": "rebooting"}, submitters)
    wait_idle(service, timeout)
    took = time.monotonic() - began
    cpu_after = cpu_by_role()
    rate, errors = pollers.finish() if pollers is not None else (float("nan"), {})
    return {"rate": rate, "errors": errors, "took": took, "began": wall, "ended": time.time(),
            "cpu": {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}}


def stream_paths(count: int, unfiltered: int, names: list[str]) -> list[tuple[str, dict[str, str]]]:
    """(path, filter) of each stream."""
    paths = []
    for i in range(count):
        if i < unfiltered:
            paths.append(("/v1/events", {}))
            continue
        kind = (i - unfiltered) % 3
        if kind == 0:
            paths.append(("/v1/events?type=request.finished", {"type": "request.finished"}))
        elif kind == 1:
            paths.append(("/v1/events?type=node.*", {"type": "node.*"}))
        else:
            name = names[i % len(names)]
            paths.append((f"/v1/events?node={name}", {"node": name}))
    return paths


def expected_of(entries: list[Any], wanted: dict[str, str], uuids: dict[str, str]) -> list[bytes]:
    ids = []
    for entry in entries:
        if "type" in wanted and not fnmatch.fnmatchcase(entry.type, wanted["type"]):
            continue
        if "node" in wanted and entry.node != uuids[wanted["node"]]:
            continue
        ids.append(entry.id.encode())
    return ids


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="fake nodes, each rebooted once per phase [1000]")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds a fake power change takes [1]")
    parser.add_argument("--streams", type=int, default=200, help="event streams open in the second phase [200]")
    parser.add_argument("--all", type=int, default=None, help="streams without a filter [a quarter]")
    parser.add_argument("--workers", type=int, default=3, help="conductor worker processes [3]")
    parser.add_argument("--submitters", type=int, default=16, help="client threads submitting [16]")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound of each phase, seconds [600]")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of `conductor up`")
    args = parser.parse_args()
    unfiltered = args.streams // 4 if args.all is None else args.all
    env = {"CONDUCTOR_LOG_LEVEL": "WARNING", **dict(item.split("=", 1) for item in args.env)}
    print(f"event_stream: {args.count} fake nodes (delay {args.delay:g} s), {args.streams} streams "
          f"({unfiltered} unfiltered), {args.workers} worker(s), 2 API processes; "
          "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)

    from conductor import embedded_redis
    from conductor.eventlog.log import EventLog, parse_id
    from conductor.settings import Settings

    with tempfile.TemporaryDirectory(prefix="event-stream-") as tmp:
        service = Service(Path(tmp), args.workers, 2, env, driver="fake").start()
        try:
            token = service.http.headers["Authorization"].removeprefix("Bearer ")
            service.call("PATCH", "/v1/throttle", 200, json={
                "write_rate": 0, "client_write_rate": 0, "read_rate": 0, "max_queue_depth": 0})
            names = [f"e{i:04d}" for i in range(args.count)]
            with concurrent.futures.ThreadPoolExecutor(args.submitters) as pool:
                created = list(pool.map(lambda name: service.call("POST", "/v1/nodes", 201, json={
                    "name": name, "driver": "fake", "driver_info": {"fake_delay": args.delay}}), names))
            uuids = {c["name"]: c["uuid"] for c in created}
            time.sleep(1.1)  # every API process sees the throttle off
            import redis

            log = EventLog(redis.Redis.from_url(embedded_redis.url_for(Path(tmp))), Settings())

            without = phase(service, token, names, args.submitters, args.timeout)
            print(f"without streams: {args.count} reboots in {without['took']:.1f} s; polling "
                  f"{without['rate']:.0f} req/s (failed: {without['errors'] or 'none'})", flush=True)

            paths = stream_paths(args.streams, unfiltered, names)
            start_id = log.tail()
            clients = StreamClients(service.url, token, [p for p, _f in paths])
            clients.wait_connected()
            with_streams = phase(service, token, names, args.submitters, args.timeout)
            print(f"with {args.streams} streams: {args.count} reboots in {with_streams['took']:.1f} s; polling "
                  f"{with_streams['rate']:.0f} req/s (failed: {with_streams['errors'] or 'none'})", flush=True)
            quiet = phase(service, token, names, args.submitters, args.timeout, poll=False)
            print(f"with {args.streams} streams, no polling: {args.count} reboots in {quiet['took']:.1f} s",
                  flush=True)
            time.sleep(2.0)  # the last events reach every client
            end_id = log.tail()
            received, arrivals = clients.finish()
            end_key = parse_id(end_id)
            entries = []
            cursor = start_id
            while True:
                page = log.page(cursor, 5000)
                assert page.status == "ok", page
                entries += [e for e in page.entries if e.key <= end_key]
                if not page.entries or page.entries[-1].key >= end_key:
                    break
                cursor = page.entries[-1].id
            complete = 0
            total_expected = total_received = 0
            refused = 0
            problems = []
            for index, (_path, wanted) in enumerate(paths):
                ids = expected_of(entries, wanted, uuids)
                count, digest, refusals, closed = received[index]
                refused += refusals
                total_expected += len(ids)
                total_received += count
                if count == len(ids) and digest == hashlib.sha256(b",".join(ids)).hexdigest() and not closed:
                    complete += 1
                elif len(problems) < 5:
                    problems.append(f"stream {index} {wanted or 'all'}: {count} received, {len(ids)} expected"
                                    + (f", closed: {closed[:80]}" if closed else ""))
            print(f"events: {len(entries)} in the log during the run; per stream {total_received} received / "
                  f"{total_expected} expected; {complete}/{args.streams} streams got exactly their events in "
                  f"order ({refused} connection(s) first refused with 503, opened again)", flush=True)
            for problem in problems:
                print(f"  {problem}")
            by_filter: dict[str, list[int]] = {}
            for index, (_path, wanted) in enumerate(paths):
                label = "all" if not wanted else next(iter(wanted))
                by_filter.setdefault(label if label != "type" else f"type={wanted['type']}", []).append(
                    received[index][0])
            print("  per stream: " + "; ".join(f"{label}: {statistics.mean(counts):.0f} events"
                                                for label, counts in by_filter.items()))
            for label, figures in (("while polling", with_streams), ("without polling", quiet)):
                latencies = [lat for at, lat in arrivals if figures["began"] <= at <= figures["ended"] + 2]
                p50, p99, worst = (1000 * percentile(latencies, 50), 1000 * percentile(latencies, 99),
                                   1000 * max(latencies, default=float("nan")))
                print(f"commit -> client latency {label}, {len(latencies)} deliveries: p50 {p50:.0f} ms, "
                      f"p99 {p99:.0f} ms, max {worst:.0f} ms (target p99 < 250 ms)", flush=True)
            print(f"polling throughput with / without streams: {with_streams['rate'] / without['rate']:.2f} "
                  "(target >= 0.80)")
            for label, figures in (("without streams", without), ("with streams", with_streams),
                                   ("with streams, no polling", quiet)):
                cpu = figures["cpu"]
                print(f"  CPU {label}: " + ", ".join(
                    f"{role} {secs:.1f} s" for role, secs in sorted(cpu.items(), key=lambda i: -i[1])))
            length, size = log.usage()
            print(f"Redis: the log holds {length} events in {size / 1e6:.1f} MB ({size / max(1, length):.0f} bytes "
                  "per event)")
        finally:
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
