"""Overload run: offer several times the configured write budget and watch admission hold.

Starts a real ``conductor up`` (gunicorn sync workers, conductor workers,
embedded Redis, SQLite) in a temporary data directory, enrols fake nodes,
sets the throttle to ``--rate`` state changes per second, then offers
``--factor`` times that many power changes per second for ``--duration``
seconds from ``--threads`` client threads (persistent HTTP connections),
round-robin over the nodes.  It prints:

* the admitted rate (anything but 503) against the configured rate (and
  the burst's share), and the 202 / 409 / 503 counts;
* the client-side p50 / p99 / max latency of the 503s (target p99 <= 20 ms)
  and of the admitted calls;
* whether every 202 reached a final state (zero accepted requests lost).

Timings include the load generator, which shares the machine's cores with
the service: on a small, busy machine they are noisy.  With ``--wrk`` (and
``wrk`` installed) a second phase floods the same service with ``wrk``
(a C client, closed loop) against an almost empty budget, so nearly every
answer is a 503: the cost of a refusal without Python on the client side
and without admitted calls to queue behind.  Figures only, no assertions.

    python bench/overload.py [--rate 50] [--factor 5] [--duration 30] [--wrk]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FINAL = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Api:
    """A tiny keep-alive JSON client (one per thread)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        data = None if body is None else json.dumps(body)
        started = time.perf_counter()
        try:
            self.conn.request(method, path, body=data, headers=self.headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            raise
        elapsed = time.perf_counter() - started
        return response.status, (json.loads(raw) if raw else None), elapsed


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_service(data_dir: Path, port: int, workers: int, api_workers: int,
                  database_url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(CONDUCTOR_DATA_DIR=str(data_dir), CONDUCTOR_LOG_LEVEL="WARNING")
    if database_url:
        env["DATABASE_URL"] = database_url
    with open(data_dir / "up.log", "ab") as log:  # the child writes to its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "conductor", "up", "--port", str(port), "--workers", str(workers),
             "--api-workers", str(api_workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"conductor up exited; see {data_dir / 'up.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if (data_dir / "admin.token").exists():
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("conductor up did not start within 60 s")


def offer(api_port: int, token: str, args: argparse.Namespace, names: list[str]) -> list[tuple[int, float, str | None]]:
    offered_rate = args.rate * args.factor
    total = int(offered_rate * args.duration)
    results: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()
    counter = iter(range(total))
    started = time.perf_counter() + 0.2

    def run() -> None:
        api = Api(api_port, token)
        mine = []
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            delay = started + index / offered_rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            node = names[index % len(names)]
            target = "power on" if (index // len(names)) % 2 == 0 else "power off"
            try:
                status, body, elapsed = api.call("PUT", f"/v1/nodes/{node}/states/power", {"target": target})
            except (http.client.HTTPException, OSError):
                mine.append((0, 0.0, None))
                continue
            mine.append((status, elapsed, body.get("id") if status == 202 else None))
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def final_states(api: Api, wanted: set[str], timeout: float) -> dict[str, str]:
    """The state of every wanted request once all are final (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while True:
        states: dict[str, str] = {}
        path: str | None = "/v1/requests?limit=1000"
        while path:
            status, body, _ = api.call("GET", path)
            if status != 200:
                time.sleep(0.5)
                continue
            states.update({r["id"]: r["state"] for r in body["requests"]})
            path = body.get("next")
        pending = [i for i in wanted if states.get(i) not in FINAL]
        if not pending or time.monotonic() > deadline:
            return states
        time.sleep(1.0)


WRK_SCRIPT = """
wrk.method = "PUT"
wrk.body = '{"target": "power on"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def wrk_flood(api: Api, port: int, token: str, node: str, seconds: int, data_dir: Path) -> None:
    """Refusals only: an almost empty write budget, ``wrk`` as fast as it can."""
    api.call("PATCH", "/v1/throttle", {"write_rate": 0.001, "write_burst": 1})
    time.sleep(1.1)
    script = data_dir / "put.lua"
    script.write_text(WRK_SCRIPT % token)
    result = subprocess.run(
        ["wrk", "-t2", "-c8", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/v1/nodes/{node}/states/power"],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    out = result.stdout
    figures = {p: m.group(1) for p in ("50%", "90%", "99%")
               if (m := re.search(rf"^\s*{re.escape(p)}\s+(\S+)", out, re.M))}
    rate = re.search(r"Requests/sec:\s+(\S+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    print(f"\nwrk refusal flood ({seconds} s, 2 threads x 8 connections, closed loop): "
          f"{rate.group(1) if rate else '?'} req/s, {non2xx.group(1) if non2xx else 0} of "
          f"{total.group(1) if total else '?'} answers were errors (503 rate_limited)")
    print(f"wrk latency: p50 {figures.get('50%', '?')}, p90 {figures.get('90%', '?')}, "
          f"p99 {figures.get('99%', '?')} (target p99 <= 20 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0, help="configured write_rate (per second)")
    parser.add_argument("--burst", type=int, default=None, help="configured write_burst [= rate]")
    parser.add_argument("--factor", type=float, default=5.0, help="offered load / configured rate")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of overload")
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--threads", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2, help="conductor workers")
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--wrk", type=int, default=0, metavar="SECONDS",
                        help="then flood with wrk for this long against an empty budget")
    parser.add_argument("--database-url", default="",
                        help="an EMPTY database to use instead of SQLite (e.g. PostgreSQL)")
    args = parser.parse_args()
    burst = args.burst or int(args.rate)

    with tempfile.TemporaryDirectory(prefix="conductor-bench-") as tmp:
        data_dir = Path(tmp)
        port = free_port()
        proc = start_service(data_dir, port, args.workers, args.api_workers, args.database_url)
        try:
            token = (data_dir / "admin.token").read_text().strip()
            api = Api(port, token)
            api.call("PATCH", "/v1/throttle", {"write_rate": 0, "client_write_rate": 0, "read_rate": 0})
            time.sleep(1.1)
            names = [f"bench-{i}" for i in range(args.nodes)]
            for name in names:
                status, body, _ = api.call("POST", "/v1/nodes", {"name": name, "driver": "fake"})
                if status != 201:
                    raise SystemExit(f"node create: {status} {body}")
            status, knobs, _ = api.call("PATCH", "/v1/throttle", {
                "write_rate": args.rate, "write_burst": burst, "client_write_rate": 0,
            })
            print(f"throttle: {knobs}")
            time.sleep(1.1)  # every process applies the knobs within a second

            wall = time.perf_counter()
            results = offer(port, token, args, names)
            wall = time.perf_counter() - wall

            by_status: dict[int, list[float]] = {}
            for status, elapsed, _id in results:
                by_status.setdefault(status, []).append(elapsed)
            admitted = [e for s, e, _ in results if s not in (503, 0)]
            refused = by_status.get(503, [])
            accepted_ids = {rid for s, _e, rid in results if s == 202 and rid}
            print(f"database: {args.database_url.split('@')[-1] if args.database_url else 'SQLite'}")
            print(f"\noffered {len(results)} PUTs in {wall:.1f} s = {len(results) / wall:.0f}/s "
                  f"({args.factor:g}x the configured {args.rate:g}/s; {args.threads} client threads, "
                  f"{args.api_workers} gunicorn sync workers, {args.workers} conductor workers, "
                  f"{os.cpu_count()} cores)")
            print("status counts: " + ", ".join(f"{s}: {len(v)}" for s, v in sorted(by_status.items())))
            expected = args.rate + burst / wall
            print(f"admitted (not 503): {len(admitted) / wall:.1f}/s vs configured {args.rate:g}/s "
                  f"(+ burst {burst} spread over the run = {expected:.1f}/s): "
                  f"ratio {len(admitted) / wall / expected:.3f}")
            print(f"503 latency: p50 {percentile(refused, 0.5) * 1000:.1f} ms, "
                  f"p99 {percentile(refused, 0.99) * 1000:.1f} ms, "
                  f"max {max(refused, default=float('nan')) * 1000:.1f} ms (target p99 <= 20 ms)")
            print(f"admitted latency: p50 {percentile(admitted, 0.5) * 1000:.1f} ms, "
                  f"p99 {percentile(admitted, 0.99) * 1000:.1f} ms")
            if refused:
                print(f"503 mean {statistics.mean(refused) * 1000:.1f} ms over {len(refused)} refusals")

            states = final_states(api, accepted_ids, timeout=120)
            missing = [i for i in accepted_ids if i not in states]
            unfinished = [i for i in accepted_ids if states.get(i) not in FINAL and i in states]
            finals: dict[str, int] = {}
            for i in accepted_ids:
                if states.get(i) in FINAL:
                    finals[states[i]] = finals.get(states[i], 0) + 1
            print(f"\n202s: {len(accepted_ids)} distinct requests; final states {finals}; "
                  f"not final {len(unfinished)}; missing from the database {len(missing)}")
            print("zero accepted requests lost: " + ("YES" if not missing and not unfinished else "NO"))
            if args.wrk and shutil.which("wrk"):
                wrk_flood(api, port, token, names[0], args.wrk, data_dir)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
