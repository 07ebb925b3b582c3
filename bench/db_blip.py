"""Database blip drill: end the service's PostgreSQL connections again and again under load.

Needs PostgreSQL (``--pg``, default ``postgresql+psycopg://postgres@127.0.0.1:5432``).
The drill (re)creates its own database (``--db``, default ``conductor_blip``),
starts a real ``conductor up`` on it (embedded Redis, ``--workers`` conductor
workers, ``fake``-driver nodes answering after ``--fake-delay`` s), and drives
load from ``--threads`` client threads: each toggles its nodes' power (``PUT
.../states/power``) and provision state (``PUT .../states/provision``: manage
<-> provide) and reads ``GET .../states``.  After a warm-up it terminates
every backend of the service (``pg_terminate_backend``) ``--blips`` times,
``--interval`` s apart, keeps the load on a little longer, then waits for
every request to end and prints:

* the responses by status and code (500s are the failure);
* the requests failed, and why (any is a failure: the fake driver never fails);
* the longest time an active request went without progress (its row's
  ``updated_at`` unchanged while queued/running, sampled every 0.2 s), which
  must stay under one sweep interval;
* PASS or MISS against the target: 0 responses 500, 0 requests failed,
  none stuck longer than one sweep interval, all requests ended.

    python bench/db_blip.py --runs 3
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

CONDUCTOR = str(Path(sys.executable).with_name("conductor"))
ACTIVE = ("queued", "running")
ENDED = ("succeeded", "failed", "cancelled")
MONITOR = "db_blip"  # application_name of the drill's own connections (never terminated)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Drill:
    """One run: a fresh database, a real service, load, blips, figures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = f"{args.pg.rstrip('/')}/{args.db}"
        self.admin = sa.create_engine(f"{args.pg.rstrip('/')}/postgres", isolation_level="AUTOCOMMIT",
                                      connect_args={"application_name": MONITOR})
        self.data_dir = Path(tempfile.mkdtemp(prefix="conductor-db-blip-"))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        self.lock = threading.Lock()
        self.responses: collections.Counter[str] = collections.Counter()
        self.request_ids: set[str] = set()
        self.stop_load = threading.Event()
        self.stop_monitor = threading.Event()
        self.longest_stuck = (0.0, "")
        self.proc: subprocess.Popen[bytes] | None = None

    # -- the service ------------------------------------------------------
    def create_database(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"), {"db": self.args.db})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.args.db}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{self.args.db}"'))

    def start_service(self) -> None:
        env = {**os.environ, "CONDUCTOR_DATABASE_URL": self.url, "CONDUCTOR_AUTOMATED_CLEAN": "false",
               "CONDUCTOR_POWER_POLL_INITIAL": "0.1", "CONDUCTOR_POWER_POLL_MAX": "0.5",
               "CONDUCTOR_LOG_LEVEL": "INFO"}
        env.pop("CONDUCTOR_REDIS_URL", None)
        with open(self.data_dir / "up.log", "ab") as log:  # the child writes to its own copy
            self.proc = subprocess.Popen(
                [CONDUCTOR, "up", "--data-dir", str(self.data_dir), "--port", str(self.port),
                 "--workers", str(self.args.workers), "--api-workers", "2"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        token_file = self.data_dir / "admin.token"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"conductor up exited ({self.proc.returncode}); see {self.data_dir}/up.log")
            if token_file.exists():
                self.http.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
                try:
                    live = self.http.get(f"{self.base}/v1/conductors", timeout=5)
                    if live.ok and sum(bool(c.get("alive")) for c in live.json()["conductors"]) >= self.args.workers:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.3)
        raise SystemExit(f"the service did not come up; see {self.data_dir}/up.log")

    def stop_service(self) -> None:
        if self.proc is None:
            return
        with_group = [self.proc.pid]
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        for pgid in with_group:  # anything left in its process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()

    def setup_nodes(self) -> list[str]:
        self.call("PATCH", "/v1/throttle", json={"bmc_min_interval": 0, "write_rate": 0, "client_write_rate": 0,
                                                  "read_rate": 0})
        names = [f"blip-{i:03d}" for i in range(self.args.nodes)]
        for name in names:
            self.call("POST", "/v1/nodes", json={"name": name, "driver": "fake",
                                                 "driver_info": {"fake_delay": self.args.fake_delay}})
        ids = [self.call("PUT", f"/v1/nodes/{n}/states/provision", json={"target": "manage"}).json()["id"]
               for n in names]
        self.wait_ended(set(ids), 60)
        return names

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.http.request(method, self.base + path, timeout=30, **kwargs)
        if response.status_code >= 400:
            raise SystemExit(f"setup: {method} {path}: {response.status_code} {response.text[:300]}")
        return response

    # -- load ---------------------------------------------------------------
    def load(self, nodes: list[str]) -> None:
        http = requests.Session()
        http.headers.update(self.http.headers)
        turn = 0
        while not self.stop_load.is_set():
            for name in nodes:
                if self.stop_load.is_set():
                    return
                states = self.hit(http, "GET", f"/v1/nodes/{name}/states")
                if states is None or states.get("request_id"):
                    continue
                if turn % 2:
                    target = "power off" if states.get("power_state") == "power on" else "power on"
                    self.hit(http, "PUT", f"/v1/nodes/{name}/states/power", json={"target": target})
                else:
                    target = "provide" if states.get("provision_state") == "manageable" else "manage"
                    self.hit(http, "PUT", f"/v1/nodes/{name}/states/provision", json={"target": target})
            turn += 1

    def hit(self, http: requests.Session, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        try:
            response = http.request(method, self.base + path, timeout=30, **kwargs)
        except requests.RequestException as exc:
            self.count(f"{method} no answer ({type(exc).__name__})")
            return None
        body = response.json() if "json" in response.headers.get("content-type", "") else {}
        code = body.get("code", "") if response.status_code >= 400 else ""
        if response.status_code == 503 and code != "rate_limited" and "Retry-After" not in response.headers:
            code += " (no Retry-After!)"
        self.count(f"{method} {response.status_code} {code}".rstrip())
        if method == "PUT" and response.status_code == 202:
            with self.lock:
                self.request_ids.add(body["id"])
        return body if response.ok else None

    def count(self, key: str) -> None:
        with self.lock:
            self.responses[key] += 1

    # -- blips and the monitor ---------------------------------------------
    def blip(self) -> int:
        with self.admin.connect() as conn:
            return len(conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid() AND application_name <> :me"),
                {"db": self.args.db, "me": MONITOR}).all())

    def monitor(self) -> None:
        engine = sa.create_engine(self.url, connect_args={"application_name": MONITOR}, pool_pre_ping=True)
        try:
            while not self.stop_monitor.wait(0.2):
                with engine.connect() as conn:
                    rows = conn.execute(sa.text(
                        "SELECT id, extract(epoch FROM now() - updated_at) FROM requests "
                        "WHERE state IN ('queued', 'running') ORDER BY updated_at LIMIT 1")).all()
                for request_id, age in rows:
                    if age is not None and float(age) > self.longest_stuck[0]:
                        self.longest_stuck = (float(age), request_id)
        finally:
            engine.dispose()

    def wait_ended(self, ids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        ended: dict[str, dict[str, Any]] = {}
        engine = sa.create_engine(self.url, connect_args={"application_name": MONITOR})
        deadline = time.monotonic() + timeout
        try:
            while True:
                with engine.connect() as conn:
                    rows = conn.execute(sa.text("SELECT id, state, error FROM requests WHERE id = ANY(:ids)"),
                                        {"ids": list(ids)}).all()
                ended = {r.id: {"state": r.state, "error": r.error} for r in rows if r.state in ENDED}
                if len(ended) == len(ids) or time.monotonic() > deadline:
                    return ended
                time.sleep(0.25)
        finally:
            engine.dispose()

    # -- the run ------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        args = self.args
        self.create_database()
        try:
            self.start_service()
            nodes = self.setup_nodes()
            monitor = threading.Thread(target=self.monitor, daemon=True)
            monitor.start()
            shares = [nodes[i :: args.threads] for i in range(args.threads)]
            loaders = [threading.Thread(target=self.load, args=(share,), daemon=True) for share in shares]
            for thread in loaders:
                thread.start()
            time.sleep(args.warmup)
            terminated = []
            for _ in range(args.blips):
                terminated.append(self.blip())
                time.sleep(args.interval)
            time.sleep(args.after)
            self.stop_load.set()
            for thread in loaders:
                thread.join(timeout=60)
            ended = self.wait_ended(set(self.request_ids), args.end_timeout)
            self.stop_monitor.set()
            monitor.join(timeout=10)
        finally:
            self.stop_service()
            self.admin.dispose()
        logs = "".join(path.read_text(errors="replace") for path in (self.data_dir / "logs").glob("*.log"))
        if not self.args.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        failed = collections.Counter((r["error"] or "")[:100] for r in ended.values() if r["state"] != "succeeded")
        return {
            "responses": self.responses, "accepted": len(self.request_ids), "ended": len(ended),
            "failed": failed, "stuck": self.longest_stuck, "terminated": terminated,
            # What the service's logs say it did about the blips.
            "retried": logs.count("transient database error"),
            "exhausted": logs.count("the database keeps failing") + logs.count("the database kept failing"),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432",
                        help="PostgreSQL server URL (no database); the drill creates its own.")
    parser.add_argument("--db", default="conductor_blip", help="The drill's database (dropped and created).")
    parser.add_argument("--nodes", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--fake-delay", type=float, default=0.3)
    parser.add_argument("--blips", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.3)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--after", type=float, default=3.0, help="Seconds of load after the last blip.")
    parser.add_argument("--end-timeout", type=float, default=120.0)
    parser.add_argument("--sweep-interval", type=float, default=10.0, help="The stuck limit (the service's).")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="Keep each run's data directory (logs).")
    args = parser.parse_args(argv)
    misses = 0
    for run in range(1, args.runs + 1):
        r = Drill(args).run()
        errors_500 = sum(n for key, n in r["responses"].items() if " 500" in key)
        stuck, stuck_id = r["stuck"]
        unended = r["accepted"] - r["ended"]
        ok = errors_500 == 0 and not r["failed"] and stuck < args.sweep_interval and unended == 0
        misses += not ok
        print(f"run {run}: {args.blips} blips {args.interval:g} s apart, backends terminated per blip "
              f"{min(r['terminated'])}-{max(r['terminated'])}; {r['accepted']} requests accepted, "
              f"{r['ended']} ended", flush=True)
        for key, n in sorted(r["responses"].items()):
            print(f"    {key:<40} {n:>6}")
        print(f"  responses 500: {errors_500}; requests failed: {sum(r['failed'].values())}"
              + "".join(f"\n    {n} x {why}" for why, n in r["failed"].most_common()))
        print(f"  longest without progress: {stuck:.1f} s ({stuck_id or '-'}); not ended: {unended}")
        print(f"  service logs: {r['retried']} unit(s) of work run again after a transient error, "
              f"{r['exhausted']} gave up (503 / timer re-armed)")
        print(f"  {'PASS' if ok else 'MISS'} (target: 0 x 500, 0 failed, none stuck >= "
              f"{args.sweep_interval:g} s, all ended)", flush=True)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
