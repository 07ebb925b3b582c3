"""Scale-out benchmark: several conductor hosts and API hosts on one PostgreSQL and one Redis.

Usage (from the repository root; needs PostgreSQL, by default
``postgresql+psycopg://postgres@127.0.0.1:5432``)::

    .venv/bin/python bench/scale_out.py
    .venv/bin/python bench/scale_out.py --nodes 2000 --rounds 5 --hosts 3 --api-hosts 2 --kill-at 0.3

A "host" is a set of processes with its own data directory and its own
conductor name (``CONDUCTOR_CONDUCTOR_NAME=host-a``...), started in its own
process group, as ``conductor worker`` and ``conductor api`` run on separate
machines (see the README, "Running it on many hosts"): nothing is shared but
the database (a fresh database ``--db``, dropped at the end), the Redis
(``--redis``, else a private ``redis-server`` on a Unix socket, the one
``conductor up`` embeds) and the secret key.

1. ``conductor db upgrade`` and ``conductor token create --direct``, once;
   ``--api-hosts`` API hosts (``conductor api``, 2 processes each); the
   admission budgets switched off; ``--nodes`` ``fake`` nodes enrolled, whose
   power changes take ``--fake-delay`` s.
2. **One conductor host** (``--workers`` worker processes): ``--rounds``
   rounds of one power request per node (on, off, on...), each round sent
   by 16 client threads spread over the API hosts, the next round once the
   last one ended.  Requests per second = requests / time.
3. **``--hosts`` conductor hosts**: the same.  Ratio to one host.
4. **Kill**: the same again; once ``--kill-at`` of the requests have ended,
   one host (``host-b``) gets SIGKILL, whole process group.  Measured: from
   the kill to the dead host's conductors declared dead and the last node it
   held free again (``nodes.reservation``), with ``heartbeat_timeout``
   ``--heartbeat-timeout`` s (default setting: 30 s) and ``sweep_interval``
   ``--sweep-interval`` s; then that every accepted request ended (none lost,
   none stuck), by state, with the reasons of those that failed, and which
   hosts ran the requests after the kill.

Prints figures, never asserts.  On one 2-core box the hosts share the same
CPUs, so throughput cannot grow with hosts as it does on separate machines:
read phase 3's ratio as "what the coordination costs", not as the gain.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import itertools
import os
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

ENDED = ("succeeded", "failed", "cancelled")
CLIENT_THREADS = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


class Host:
    """One simulated host: its processes in one process group, its own data directory."""

    def __init__(self, name: str, root: Path, env: dict[str, str], argv: list[str]) -> None:
        self.name = name
        self.data_dir = root / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "CONDUCTOR_DATA_DIR": str(self.data_dir), "CONDUCTOR_CONDUCTOR_NAME": name}
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Host:
        with open(self.data_dir / "host.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL to the whole process group: the host is gone, as a power cut leaves it."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        # Anything of the group still there (a worker process of the host): gone too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class Deployment:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.engine = sa.create_engine(f"{args.pg}/{args.db}", pool_size=2)
        self.api_urls: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.http = requests.Session()
        self.http.mount("http://", requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64))
        self.accepted: list[str] = []
        self._url = itertools.cycle([""])

    # --- set-up ---------------------------------------------------------------------------------
    def env(self, redis_url: str) -> dict[str, str]:
        from cryptography.fernet import Fernet

        args = self.args
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUCTOR_")}
        env.update(DATABASE_URL=f"{args.pg}/{args.db}", REDIS_URL=redis_url,
                   CONDUCTOR_SECRET_KEY=Fernet.generate_key().decode(), CONDUCTOR_LOG_LEVEL="WARNING",
                   CONDUCTOR_HEARTBEAT_INTERVAL=str(min(5.0, args.heartbeat_timeout / 5)),
                   CONDUCTOR_HEARTBEAT_TIMEOUT=str(args.heartbeat_timeout),
                   CONDUCTOR_SWEEP_INTERVAL=str(args.sweep_interval),
                   CONDUCTOR_POWER_SYNC_INTERVAL="0")
        return env

    def start(self, redis_url: str) -> None:
        env = self.env(redis_url)
        conductor = [sys.executable, "-m", "conductor"]
        setup = {**env, "CONDUCTOR_DATA_DIR": str(self.root / "setup")}
        subprocess.run([*conductor, "db", "upgrade"], env=setup, check=True, capture_output=True)
        token = subprocess.run([*conductor, "token", "create", "--role", "admin", "--direct", "--name", "bench",
                                "-f", "value", "-c", "token"], env=setup, check=True, capture_output=True,
                               text=True).stdout.strip()
        self.http.headers["Authorization"] = f"Bearer {token}"
        for i in range(self.args.api_hosts):
            port = free_port()
            host = Host(f"api-{chr(ord('a') + i)}", self.root, env,
                        [*conductor, "api", "--port", str(port), "--api-workers", "2"]).start()
            self.hosts[host.name] = host
            self.api_urls.append(f"http://127.0.0.1:{port}")
        self._url = itertools.cycle(self.api_urls)
        for i in range(self.args.hosts):
            name = f"host-{chr(ord('a') + i)}"
            self.hosts[name] = Host(name, self.root, env, [*conductor, "worker", "--workers", str(self.args.workers)])
        for url in self.api_urls:
            self.wait_answers(url)

    def wait_answers(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if self.http.get(url + "/v1/nodes?limit=1", timeout=2).ok:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the API at {url} did not answer: see {self.root}/api-*/host.log")

    def stop(self) -> None:
        for host in self.hosts.values():
            host.stop()
        self.engine.dispose()

    # --- calls ------------------------------------------------------------------------------------
    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        for _attempt in range(20):
            url = next(self._url)
            try:
                response = self.http.request(method, url + path, timeout=30, **kwargs)
            except requests.ConnectionError:
                time.sleep(0.5)
                continue
            if response.status_code == 503:
                time.sleep(float(response.headers.get("Retry-After", 1)))
                continue
            if response.status_code != expect:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
            return response.json() if response.content else None
        raise RuntimeError(f"{method} {path}: no answer after 20 attempts")

    def enrol(self) -> list[str]:
        self.call("PATCH", "/v1/throttle", 200, json={
            "write_rate": 0, "client_write_rate": 0, "read_rate": 0, "max_queue_depth": 0})
        names = [f"s{i:05d}" for i in range(self.args.nodes)]
        with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(lambda name: self.call("POST", "/v1/nodes", 201, json={
                "name": name, "driver": "fake", "driver_info": {"fake_delay": self.args.fake_delay}}), names))
        time.sleep(1.1)  # every API process sees the throttle off
        return names

    # --- the database's view ----------------------------------------------------------------------
    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def ended_count(self, since: float) -> int:
        return int(self.scalar("SELECT count(*) FROM requests WHERE state IN ('succeeded', 'failed', 'cancelled') "
                               "AND created_at >= to_timestamp(:since) AT TIME ZONE 'UTC'", since=since))

    def active_count(self) -> int:
        return int(self.scalar("SELECT count(*) FROM requests WHERE state NOT IN ('succeeded', 'failed', 'cancelled')"))

    # --- a phase ----------------------------------------------------------------------------------
    def run(self, names: list[str], label: str, on_progress: Any = None) -> dict[str, Any]:
        """``--rounds`` rounds of one power request per node; requests/s."""
        started = time.time()
        ids: list[str] = []
        for r in range(self.args.rounds):
            target = "power on" if r % 2 == 0 else "power off"
            with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
                ids += pool.map(lambda name, t=target: self.call(  # type: ignore[misc]
                    "PUT", f"/v1/nodes/{name}/states/power", 202, json={"target": t})["id"], names)
            deadline = time.monotonic() + self.args.timeout
            while self.active_count():
                if on_progress is not None:
                    on_progress(self.ended_count(started))
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: round {r} did not end in {self.args.timeout} s")
                time.sleep(0.2)
        took = time.time() - started
        self.accepted += ids
        print(f"{label}: {len(ids)} requests in {took:.1f} s = {len(ids) / took:.0f} requests/s ({load()})",
              flush=True)
        return {"ids": ids, "took": took, "rate": len(ids) / took, "started": started}


def kill_phase(dep: Deployment, names: list[str]) -> None:
    args = dep.args
    total = args.nodes * args.rounds
    victim = dep.hosts["host-b"]
    killed: dict[str, float] = {}

    def progress(ended: int) -> None:
        if not killed and ended >= args.kill_at * total:
            held = dep.scalar("SELECT count(*) FROM nodes WHERE reservation LIKE 'host-b-%'")
            running = dep.scalar("SELECT count(*) FROM requests WHERE state = 'running' AND conductor LIKE 'host-b-%'")
            victim.kill()
            killed["at"] = time.time()
            killed["ended"] = ended
            print(f"  SIGKILL host-b after {ended} of {total} requests ended: it held {held} node(s), "
                  f"ran {running} request(s)", flush=True)
            threading.Thread(target=watch_takeover, args=(dep, killed), daemon=True).start()

    result = dep.run(names, f"{args.hosts} conductor hosts, host-b killed", on_progress=progress)
    if not killed:
        print("  (the run ended before the kill point)")
        return
    deadline = time.monotonic() + 120
    while "freed" not in killed and time.monotonic() < deadline:
        time.sleep(0.2)
    for what in ("declared dead", "freed"):
        if what in killed:
            print(f"  takeover: host-b's conductors {what} {killed[what] - killed['at']:.1f} s after the kill"
                  if what == "declared dead" else
                  f"  takeover: the last node host-b held free {killed[what] - killed['at']:.1f} s after the kill")
    # Nothing lost: every accepted request is in the database, and ended.
    ids = result["ids"]
    with dep.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, state, error, conductor FROM requests WHERE id = ANY(:ids)"),
                            {"ids": ids}).all()
        after = conn.execute(sa.text(
            "SELECT split_part(h.conductor, '-w', 1) AS host, count(DISTINCT h.request_id) FROM node_history h "
            "WHERE h.conductor IS NOT NULL AND h.created_at > to_timestamp(:at) AT TIME ZONE 'UTC' "
            "GROUP BY 1 ORDER BY 1"), {"at": killed["at"]}).all()
    states = collections.Counter(row.state for row in rows)
    print(f"  accepted {len(ids)}, in the database {len(rows)}, by state: {dict(states)}; "
          f"not ended: {sum(n for s, n in states.items() if s not in ENDED)}")
    reasons = collections.Counter((row.error or "")[:120] for row in rows if row.state == "failed")
    for reason, count in reasons.most_common(5):
        print(f"    failed x{count}: {reason}")
    if after:
        print("  requests with a step run after the kill, by host: " + ", ".join(f"{h} {n}" for h, n in after))


def watch_takeover(dep: Deployment, killed: dict[str, float]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "freed" not in killed:
        alive = dep.http.get(dep.api_urls[0] + "/v1/conductors", timeout=10).json()["conductors"]
        if "declared dead" not in killed and not any(c["alive"] for c in alive if c["name"].startswith("host-b-")):
            killed["declared dead"] = time.time()
        held = dep.scalar("SELECT count(*) FROM nodes WHERE reservation LIKE 'host-b-%'")
        running = dep.scalar("SELECT count(*) FROM requests WHERE state = 'running' AND conductor LIKE 'host-b-%'")
        if held == 0 and running == 0 and "declared dead" in killed:
            killed["freed"] = time.time()
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--db", default="conductor_scale_out", help="database (re)created and dropped [%(default)s]")
    parser.add_argument("--redis", default="", help="Redis URL [a private redis-server]")
    parser.add_argument("--nodes", type=int, default=2000, help="fake nodes [2000]")
    parser.add_argument("--rounds", type=int, default=5, help="power requests per node per phase [5]")
    parser.add_argument("--hosts", type=int, default=3, help="conductor hosts [3]")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per conductor host [2]")
    parser.add_argument("--api-hosts", type=int, default=2, help="API hosts, 2 processes each [2]")
    parser.add_argument("--fake-delay", type=float, default=1.0, help="seconds a fake power change takes [1]")
    parser.add_argument("--kill-at", type=float, default=0.3, help="kill host-b after this share ended [0.3]")
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0, help="seconds [10]")
    parser.add_argument("--sweep-interval", type=float, default=2.0, help="seconds [2]")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound of one round, seconds [900]")
    parser.add_argument("--skip-single", action="store_true", help="skip the one-host phase")
    args = parser.parse_args()
    if args.hosts < 2:
        parser.error("--hosts must be at least 2 (one is killed)")
    print(f"scale_out: {args.nodes} fake nodes (delay {args.fake_delay:g} s) x {args.rounds} rounds; "
          f"{args.hosts} conductor hosts x {args.workers} workers, {args.api_hosts} API hosts x 2 processes; "
          f"{load()}", flush=True)

    admin = sa.create_engine(f"{args.pg}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{args.db}"'))
    redis_server = None
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        root = Path(tmp)
        dep = Deployment(args, root)
        try:
            redis_url = args.redis
            if not redis_url:
                from conductor.embedded_redis import EmbeddedRedis

                redis_server = EmbeddedRedis(root / "redis", persist=False).start()
                redis_url = redis_server.url
            dep.start(redis_url)
            names = dep.enrol()
            print(f"enrolled {len(names)} nodes through {len(dep.api_urls)} API hosts", flush=True)
            single = None
            dep.hosts["host-a"].start()
            if not args.skip_single:
                single = dep.run(names, "1 conductor host")
            for i in range(1, args.hosts):
                dep.hosts[f"host-{chr(ord('a') + i)}"].start()
            time.sleep(2)  # the new workers registered
            many = dep.run(names, f"{args.hosts} conductor hosts")
            if single is not None:
                print(f"  ratio {args.hosts} hosts / 1 host: {many['rate'] / single['rate']:.2f}")
            kill_phase(dep, names)
        finally:
            dep.stop()
            if redis_server is not None:
                redis_server.stop()
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)'))
            admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
