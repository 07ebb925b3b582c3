#!/usr/bin/env python3
"""The pollers' path: ``GET /v1/nodes/<id>/states`` against a bare Flask endpoint on the same server.

Starts ``conductor up`` (SQLite + embedded Redis, gunicorn as configured:
``api_workers`` processes of the threaded worker with ``api_threads``
threads and keep-alive) in a temporary data directory, enrols 100 fake
nodes, and starts beside it a bare Flask application under the same
gunicorn configuration (same worker class, processes, threads, keep-alive,
limits). Then ``wrk -t2 -c8 -d8s`` (kept-alive connections) on:

1. ``states``: ``GET /v1/nodes/b<n>/states`` over the 100 nodes, with the
   admin token (authenticated, admitted, one database read each);
2. ``states 304``: the same with ``If-None-Match`` naming each node's
   current ETag (every answer a 304 with no body);
3. ``states, read budget on``: as 1 with the read budget checked, as
   every client pays by default, at a rate no run reaches (tokens taken
   from the client's bucket in Redis by leases of up to
   ``read_budget_lease``, docs/admission.md; with that setting at 1, one
   round trip a call);
4. ``bare``: a Flask view answering a constant body of the same shape (no
   token, no database): the ceiling of Flask on this server;
5. ``bare + row``: a Flask view reading the same row from the same SQLite
   file with the same Core query on a pooled connection: what the
   database read itself costs.

Each run prints req/s, p50, p99, the machine's load average just before
it (the machine has 2 cores shared with other work: wrk and the servers
compete for them) and the ratios: states / bare, and states / Ironic 39's
140 req/s measured the same way on this machine (../shared/FINDINGS.md).
Targets (issue 16): states >= 3,000 req/s with p99 <= 10 ms, and >= 20x
Ironic. The read budget is lifted (``read_rate`` 0): one wrk token is one
client, which the default budget would hold to its rate.

Needs ``wrk`` (Debian: ``apt-get install wrk``). Figures only, never
asserts: docs/benchmarks.md.

Usage: python bench/pollers.py [--duration 8] [--rounds 3] [--nodes 100]
       python bench/pollers.py --profile 20   (also: py-spy on one API process while it is polled)
       python bench/pollers.py --cpu 2000     (instead: CPU per call of each case, in one process)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
#: Ironic 39's polling rate on this machine, wrk -t2 -c8 (../shared/FINDINGS.md, November 2026).
IRONIC_RATE = 140.0
THREADS, CONNECTIONS = 2, 8
#: The case with the read budget on: each call takes a token from its client's bucket in Redis
#: (leased, see above), at a rate no run reaches (the default, 500/s per client, would refuse most of wrk's).
BUDGETED = "states, read budget on"
READ_RATE_NEVER_REACHED = 1e6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not start")


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: stopped with its whole process group.
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- the bare server -------------------------------------------------------------------------


def bare_app(database_url: str) -> Any:
    """Flask with two views: a constant states-shaped body, and the same row read with the same query."""
    import datetime as dt

    from flask import Flask, jsonify

    from conductor import database
    from conductor.api import schemas
    from conductor.service import nodes

    app = Flask("bare")
    db = database.Database(database_url)
    body = {"power_state": None, "target_power_state": None, "provision_state": "enroll",
            "target_provision_state": None, "last_error": None, "request_id": None, "step": None,
            "updated_at": dt.datetime(2026, 12, 6, tzinfo=dt.UTC).isoformat()}

    @app.get("/bare/<ident>/states")
    def constant(ident: str) -> Any:
        return jsonify(body)

    @app.get("/bare-row/<ident>/states")
    def row(ident: str) -> Any:
        with db.engine.connect() as conn:
            return jsonify(schemas.node_states_json(nodes.states(conn, ident)))

    return app


def serve_bare(port: int, database_url: str) -> None:
    """Serve :func:`bare_app` with the API's own gunicorn options (as conductor.gunicorn_app sets them)."""
    from gunicorn.app.base import BaseApplication

    from conductor.api import limits
    from conductor.settings import load

    settings = load()

    class Bare(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "bind": f"127.0.0.1:{port}", "workers": settings.api_workers, "loglevel": "warning",
                "control_socket_disable": True,
                **limits.gunicorn_options(settings.api_threads, settings.api_client_timeout,
                                          held=settings.event_stream_slots),
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return bare_app(database_url)

    Bare().run()


# --- the runs --------------------------------------------------------------------------------


def run_wrk(url: str, lines: list[str], duration: int, token: str) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".paths", delete=False) as paths:
        paths.write("\n".join(lines) + "\n")
    try:
        out = subprocess.run(
            ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", "-s",
             str(HERE / "wrk_poll.lua"), url],
            capture_output=True, text=True, check=True,
            env={**os.environ, "BENCH_PATHS": paths.name, "BENCH_TOKEN": token},
        ).stdout
    finally:
        os.unlink(paths.name)
    figures: dict[str, float] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "STATUS":
            code, count = value.split()
            figures[f"status_{code}"] = float(count)
        elif key in ("ERRORS", "DURATION_US", "LAT_P50_US", "LAT_P99_US"):
            figures[key.lower()] = float(value)
    if "duration_us" not in figures:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    return figures


def read_budget(http: requests.Session, url: str, rate: float) -> None:
    """Set the read budget (0: none) and wait until every API process has it."""
    http.patch(f"{url}/v1/throttle", json={"read_rate": rate}, timeout=10).raise_for_status()
    time.sleep(1.1)  # every API process sees the knobs within a second


def py_spy(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                             "--format", "speedscope", "--output", str(out), "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def api_worker_pids(root: int) -> list[int]:
    """The gunicorn workers of the API under ``conductor up`` ``root``: children of the ``conductor api`` process."""
    parents: dict[int, int] = {}
    commands: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except (OSError, IndexError, ValueError):
                continue
    masters = [pid for pid, parent in parents.items() if parent == root and "api" in commands.get(pid, [])]
    return [pid for pid, parent in parents.items() if parent in masters]


def cpu_per_call(calls: int) -> None:
    """CPU per call in this one process (WSGI calls with a built environ, no server, no client):
    less moved by the machine's other load than a rate. Best of 5 rounds of ``calls`` calls."""
    from werkzeug.test import EnvironBuilder

    from conductor import database
    from conductor.api import create_app
    from conductor.auth import tokens
    from conductor.bootstrap import build_context
    from conductor.embedded_redis import EmbeddedRedis
    from conductor.settings import load

    data_dir = Path(tempfile.mkdtemp(prefix="conductor-pollers-"))
    server = EmbeddedRedis(data_dir / "redis", persist=False).start()
    try:
        url = f"sqlite:///{data_dir / 'conductor.sqlite'}"
        database.upgrade(url)
        ctx = build_context(load({"data_dir": data_dir, "database_url": url, "redis_url": server.url}, env={}))
        app = create_app(ctx=ctx)
        with ctx.db.session() as db_session:
            _token, secret = tokens.create(db_session, "admin", "bench")
            db_session.commit()
        client, auth = app.test_client(), {"Authorization": f"Bearer {secret}"}
        for i in range(1, 11):
            assert client.post("/v1/nodes", headers=auth, json={"name": f"b{i}", "driver": "fake"}).status_code == 201
        tag = client.get("/v1/nodes/b3/states", headers=auth).headers.get("ETag")
        bare = bare_app(url)

        def measure(name: str, wsgi: Any, path: str, headers: dict[str, str], status: str = "200") -> None:
            environ = EnvironBuilder(path=path, headers=headers).get_environ()
            seen: list[str] = []

            def call() -> None:
                body = wsgi(dict(environ), lambda status, _headers, _exc=None: seen.append(status))
                b"".join(body)
                body.close()

            call()
            if not seen[0].startswith(status):
                raise SystemExit(f"{name}: {seen[0]}")
            best = float("inf")
            for _round in range(5):
                started = time.process_time()
                for _ in range(calls):
                    call()
                best = min(best, (time.process_time() - started) / calls)
            print(f"{name:<30} {best * 1e6:6.0f} us CPU a call")

        print(f"CPU per call in one process, best of 5 x {calls} (load {os.getloadavg()[0]:.2f}):")
        assert client.patch("/v1/throttle", headers=auth, json={"read_rate": 0}).status_code == 200
        time.sleep(1.1)
        measure("states", app, "/v1/nodes/b3/states", auth)
        if tag:
            measure("states 304 (If-None-Match)", app, "/v1/nodes/b3/states", {**auth, "If-None-Match": tag}, "304")
        budget = {"read_rate": READ_RATE_NEVER_REACHED}
        assert client.patch("/v1/throttle", headers=auth, json=budget).status_code == 200
        time.sleep(1.1)
        measure(BUDGETED, app, "/v1/nodes/b3/states", auth)
        measure("bare Flask", bare, "/bare/b3/states", {})
        measure("bare Flask + the row", bare, "/bare-row/b3/states", {})
        ctx.close()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each case, alternated")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                        help="then poll states this long under py-spy (speedscope files in the current directory)")
    parser.add_argument("--cpu", type=int, default=0, metavar="CALLS",
                        help="instead: CPU per call of each case in one process (no server, no wrk)")
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        serve_bare(args.bare_server, args.database_url)
        return
    if args.cpu:
        cpu_per_call(args.cpu)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk)")

    data_dir = Path(tempfile.mkdtemp(prefix="conductor-pollers-"))
    port, bare_port = free_port(), free_port()
    url, bare_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(CONDUCTOR_DATA_DIR=str(data_dir), CONDUCTOR_LOG_LEVEL="WARNING")
    service = start([sys.executable, "-m", "conductor", "up", "--port", str(port), "--workers", "1"], env)
    bare = None
    try:
        wait_for(url + "/", service, "conductor up")
        token = (data_dir / "admin.token").read_text().strip()
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        read_budget(http, url, 0)
        names = [f"b{i}" for i in range(1, args.nodes + 1)]
        for name in names:
            http.post(f"{url}/v1/nodes", json={"name": name, "driver": "fake"}, timeout=10).raise_for_status()
        # (No ETag: a version before them, run for comparison with PYTHONPATH; its 304 case is skipped.)
        tags = {name: http.get(f"{url}/v1/nodes/{name}/states", timeout=10).headers.get("ETag") for name in names}
        database_url = f"sqlite:///{data_dir / 'conductor.sqlite'}"  # (the default of Settings.sqlalchemy_url)
        bare = start([sys.executable, __file__, "--bare-server", str(bare_port), "--database-url", database_url],
                     env)
        wait_for(bare_url + "/bare/b1/states", bare, "the bare server")

        states = [f"/v1/nodes/{n}/states" for n in names]
        cases: list[tuple[str, str, list[str], str, str]] = [
            ("states", url, states, token, "status_200"),
            ("states 304 (If-None-Match)", url, [f"/v1/nodes/{n}/states\t{tags[n]}" for n in names], token,
             "status_304"),
            (BUDGETED, url, states, token, "status_200"),
            ("bare Flask", bare_url, [f"/bare/{n}/states" for n in names], "", "status_200"),
            ("bare Flask + the row", bare_url, [f"/bare-row/{n}/states" for n in names], "", "status_200"),
        ]
        if None in tags.values():
            cases.pop(1)
        from conductor.settings import load

        settings = load()
        server = (f"gthread, {settings.api_threads} threads, keep-alive" if settings.api_threads > 1
                  else "sync, Connection: close")
        print(f"conductor up (gunicorn {settings.api_workers} API processes, {server}), {args.nodes} fake "
              f"nodes; the bare server on the same gunicorn options; wrk -t{THREADS} -c{CONNECTIONS} "
              f"-d{args.duration}s; {os.cpu_count()} CPUs")
        results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, *_ in cases}
        for round_ in range(args.rounds):
            for name, base, lines, bearer, expected in (cases if round_ % 2 == 0 else cases[::-1]):
                if name == BUDGETED:
                    read_budget(http, url, READ_RATE_NEVER_REACHED)
                load = os.getloadavg()[0]
                try:
                    figures = run_wrk(base, lines, args.duration, bearer)
                finally:
                    if name == BUDGETED:
                        read_budget(http, url, 0)
                seconds = figures["duration_us"] / 1e6
                others = {k: int(v) for k, v in figures.items() if k.startswith("status_") and k != expected}
                if others or figures.get("errors"):
                    print(f"  {name}: unexpected answers {others}, socket errors {int(figures.get('errors', 0))}")
                rate = figures.get(expected, 0) / seconds
                results[name].append((rate, figures["lat_p50_us"] / 1000, figures["lat_p99_us"] / 1000, load))
                print(f"  round {round_ + 1} {name:<28} {rate:7.0f} req/s  p50 {figures['lat_p50_us'] / 1000:5.2f} "
                      f"ms  p99 {figures['lat_p99_us'] / 1000:5.2f} ms  (load {load:.2f})")
        print("\nmedian of the rounds:")
        medians = {name: sorted(runs)[len(runs) // 2] for name, runs in results.items()}
        bare_rate = medians["bare Flask"][0]
        for name, (rate, p50, p99, load) in medians.items():
            print(f"{name:<30} {rate:7.0f} req/s  p50 {p50:5.2f} ms  p99 {p99:5.2f} ms  (load {load:.2f})  "
                  f"{rate / bare_rate:5.2f} x bare   {rate / IRONIC_RATE:5.1f} x Ironic")
        rate, _p50, p99, _load = medians["states"]
        print(f"\ntargets: states >= 3000 req/s: {'met' if rate >= 3000 else 'MISSED'} ({rate:.0f}); "
              f"p99 <= 10 ms: {'met' if p99 <= 10 else 'MISSED'} ({p99:.2f}); "
              f">= 20x Ironic's {IRONIC_RATE:.0f} req/s: {'met' if rate >= 20 * IRONIC_RATE else 'MISSED'} "
              f"({rate / IRONIC_RATE:.1f}x)")

        if args.profile:
            workers = api_worker_pids(service.pid)
            spies = [py_spy(pid, args.profile, Path(f"pollers-profile-{pid}.json")) for pid in workers[:1]]
            run_wrk(url, [f"/v1/nodes/{n}/states" for n in names], args.profile, token)
            for spy in spies:
                spy.wait(60)
            print(f"py-spy profiles (speedscope): {[f'pollers-profile-{pid}.json' for pid in workers[:1]]}")
    finally:
        if bare is not None:
            stop(bare)
        stop(service)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
