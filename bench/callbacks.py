#!/usr/bin/env python3
"""Callbacks: what they cost the conductor, and how fast they go out.

Starts ``conductor up`` (SQLite + embedded Redis, 1 conductor worker,
``--callback-workers`` callback workers) in a temporary data directory with
a receiver on loopback in this process, enrols ``--nodes`` fake nodes, and
prints:

1. baseline: power on every node, no callbacks: requests/s until all finished;
2. with callbacks: power off every node, each request with a
   ``callback_url`` and a subscription to every event (3 deliveries per
   request): requests/s (ratio to 1: the cost of writing the outbox rows
   in the conductor's transactions) and deliveries/s until all delivered;
3. slow receiver: the receiver holds every POST ``--slow`` seconds; power
   on every node again: requests/s (ratio to 1: should stay near 1, since
   deliveries run in their own processes), and how many deliveries were
   still pending when the last request finished.

Figures only, never asserts; the machine is shared and has 2 cores: expect
noise of +/- 20 %.

Usage: python bench/callbacks.py [--nodes 200] [--callback-workers 1] [--slow 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    """Answers every POST 204 after ``delay`` seconds."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.count = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.count += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def start_service(data_dir: Path, port: int, callback_workers: int) -> tuple[subprocess.Popen[bytes], requests.Session]:
    """``conductor up``, and an HTTP session holding the admin token it wrote on first start."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(CONDUCTOR_DATA_DIR=str(data_dir), CONDUCTOR_LOG_LEVEL="WARNING",
               CONDUCTOR_CALLBACK_POLL_INTERVAL="0.2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "conductor", "up", "--port", str(port), "--workers", "1",
         "--callback-workers", str(callback_workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/", timeout=1).ok and (data_dir / "admin.token").exists():
                session = requests.Session()
                session.headers["Authorization"] = f"Bearer {(data_dir / 'admin.token').read_text().strip()}"
                return proc, session
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the service did not start")


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute(sql).fetchone()[0])


def power_all(session: requests.Session, url: str, names: list[str], target: str, callback_url: str | None) -> float:
    """PUT ``target`` to every node; seconds until every request finished."""
    started = time.perf_counter()
    for name in names:
        body = {"target": target, **({"callback_url": callback_url} if callback_url else {})}
        session.put(f"{url}/v1/nodes/{name}/states/power", json=body, timeout=30).raise_for_status()
    while True:
        active = 0
        for state in ("queued", "running"):
            page = session.get(f"{url}/v1/requests", params={"state": state, "limit": 1}, timeout=10).json()
            active += len(page["requests"])
        if not active:
            return time.perf_counter() - started
        time.sleep(0.05)


def wait_delivered(db: Path, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if not count(db, "select count(*) from callback_deliveries where state = 'pending'"):
            return time.perf_counter() - started
        time.sleep(0.05)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--callback-workers", type=int, default=1)
    parser.add_argument("--slow", type=float, default=1.0, help="seconds the slow receiver holds each POST")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="conductor-bench-cb-"))
    db = data_dir / "conductor.sqlite"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    receiver = Receiver()
    proc, session = start_service(data_dir, port, args.callback_workers)
    try:
        # The admission budgets would pace this one client: off (what is measured is the conductor).
        session.patch(f"{url}/v1/throttle", json={"write_rate": 0, "client_write_rate": 0, "read_rate": 0,
                                                  "max_queue_depth": 0}, timeout=10).raise_for_status()
        names = [f"c{i}" for i in range(args.nodes)]
        for name in names:
            session.post(f"{url}/v1/nodes", json={"name": name, "driver": "fake"}, timeout=10).raise_for_status()
        print(f"conductor up: 1 conductor worker, {args.callback_workers} callback worker(s), "
              f"{args.nodes} fake nodes, {os.cpu_count()} CPUs (shared: figures are noisy)")

        base = power_all(session, url, names, "power on", None)
        print(f"{'1. no callbacks':<34} {args.nodes / base:7.0f} requests/s")

        session.post(f"{url}/v1/subscriptions", json={"url": receiver.url, "events": ["*"]},
                     timeout=10).raise_for_status()
        with_cb = power_all(session, url, names, "power off", receiver.url)
        total = count(db, "select count(*) from callback_deliveries")
        delivered_after = wait_delivered(db, 600)
        print(f"{'2. callbacks (3 per request)':<34} {args.nodes / with_cb:7.0f} requests/s   "
              f"ratio to 1: {base / with_cb:.2f}")
        print(f"{'   deliveries':<34} {total / (with_cb + delivered_after):7.0f} deliveries/s   "
              f"({total} in {with_cb + delivered_after:.1f} s from the first PUT)")

        receiver.delay = args.slow
        before = count(db, "select count(*) from callback_deliveries")
        slow = power_all(session, url, names, "power on", receiver.url)
        pending = count(db, "select count(*) from callback_deliveries where state = 'pending'")
        made = count(db, "select count(*) from callback_deliveries") - before
        print(f"{'3. receiver holding each POST':<34} {args.nodes / slow:7.0f} requests/s   "
              f"ratio to 1: {base / slow:.2f}   ({pending} of {made} deliveries still pending "
              f"when the last request finished; receiver {args.slow:g} s per POST)")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        receiver.server.shutdown()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
