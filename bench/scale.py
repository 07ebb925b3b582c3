#!/usr/bin/env python3
"""Fleet scale: the API, sweeper and purge at 100 nodes and at 10,000 nodes.

One command builds each size, starts the real service on it, measures, and
prints every figure at both sizes with their ratio:

    .venv/bin/python bench/scale.py --database sqlite
    .venv/bin/python bench/scale.py --database postgres   # databases scale_bench, scale_bench_small

Sizes.  The large size is ``--nodes`` (10,000), ``--requests`` (1,000,000
finished requests) and ``--history`` (5,000,000 history entries); the small
size has ``--small-nodes`` (100) nodes with the same requests and history
per node (100 and 500), so that a ratio says what the fleet's size costs.

Building the data (bulk insert).  The schema is made by the migrations, then
the rows go in without the ORM: SQLite takes SQLAlchemy Core ``insert()``
with a list of ``BATCH`` (50,000) rows per ``execute`` (one ``executemany``
each, one transaction per table); PostgreSQL takes ``COPY ... FROM STDIN``
through psycopg's ``cursor.copy()`` (``write_row``), followed by ``ANALYZE``
(autovacuum would do it later; the plans should not depend on when).
SQLite is not analysed: the conductor never runs ``ANALYZE`` itself.  The
shapes follow a real fleet's: nodes manageable, available or active (with an
instance), powered on or off; requests over the last 30 days in time order,
each to a random node, 94 % succeeded, 5 % failed, 1 % cancelled, power
most, provision and management some; history entries in time order over the
same 30 days, a third of them a request's acceptance and end, the rest power
changes and errors; an ``Idempotency-Key`` for half of the last day's
requests (the keys live one day).  PostgreSQL uses databases of its own,
``scale_bench`` (the large size) and ``scale_bench_small``, dropped and
created at the start and dropped at the end (``--keep`` leaves them, and the
data directories;
``--pg-url`` names the server).

What is measured.  Both sizes are served at once, each by its own ``conductor
up`` (2 API processes, 1 conductor worker, embedded Redis; the purge is off
in the services, so that it does not run under the measurements; the budgets
are lifted; the power state observer runs at its default, every 60 s over
every idle node, unless ``--power-sync-interval`` says otherwise), and
measured in ``ROUNDS`` (5) alternate rounds, the order swapped every round,
so that the load of the machine's other tenants falls on both alike (two
services of the same size measured this way differ by up to 25 %):

* ``GET /v1/nodes/<uuid>/states`` of random nodes (one client, keep-alive);
* ``GET /v1/nodes?limit=100`` paged through every node with ``marker``:
  the latency of one page (and the whole walk's time);
* ``GET /v1/requests?node=<uuid>&state=failed`` of random nodes;
* ``GET /v1/nodes/<uuid>/history`` (the newest 50 entries) of random nodes;
* 500 power PUTs (``rebooting``, fake driver), 100 distinct nodes a round,
  each round's requests left to finish before the next: the latency of a
  PUT (202), and how long the worker took to finish each round's 100;
* the CPU the API and worker processes used over those rounds (from
  ``/proc/<pid>/stat``), in cores;
* the sweeper: ``sweeper.sweep()`` called in this process on the same
  database and Redis, 3 times a round (the purge excluded: next figure);
* the retention purge: one round of ``retention.purge()`` with a retention
  of 27 days (a tenth of the rows are older): its time and the time per row;
* the RSS of each API and worker process, from ``/proc/<pid>/status``,
  after all the above.

Then the SQL those endpoints, the sweep and the purge issue at the large size
is captured in this process (an SQLAlchemy ``before_cursor_execute``
listener around the same calls through Flask's test client) and each
statement's plan printed
(SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN``), with any full scan
of a large table marked.

Latencies are the median (p50) and p99 of one sequential client's calls.
Figures only, never asserts: see docs/benchmarks.md (section Scale).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conductor import database, embedded_redis  # noqa: E402
from conductor.models import IdempotencyRecord, Node, NodeHistory, Request  # noqa: E402

BATCH = 50_000
SPAN = dt.timedelta(days=30)
PURGE_RETENTION = 27 * 86400.0
BIG_TABLES = ("nodes", "requests", "node_history", "idempotency_keys", "callback_deliveries")
PAGE = 100
#: Rounds of measurements, alternating the two sizes.
ROUNDS = 5


# --- building ---------------------------------------------------------------------------------

@dataclass
class Size:
    nodes: int
    requests: int
    history: int


def _hex32(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def node_rows(size: Size, rng: random.Random, now: dt.datetime) -> Iterator[dict[str, Any]]:
    for i in range(size.nodes):
        state = rng.choices(("manageable", "available", "active"), (2, 5, 3))[0]
        created = now - SPAN - dt.timedelta(days=rng.random() * 60)
        yield {
            "id": i + 1, "uuid": _uuid(rng), "name": f"scale-{i:05d}", "driver": "fake",
            "driver_info": {}, "driver_internal_info": {},
            "properties": {"cpus": 64, "memory_mb": 262144, "local_gb": 960, "cpu_arch": "x86_64"},
            "power_state": "power on" if state == "active" or rng.random() < 0.3 else "power off",
            "target_power_state": None, "provision_state": state, "target_provision_state": None,
            "last_error": None, "maintenance": False, "maintenance_reason": None, "fault": None,
            "power_sync_failures": 0, "reservation": None, "active_request_id": None,
            "instance_uuid": _uuid(rng) if state == "active" else None,
            "instance_info": {"image_source": "ubuntu-24.04"} if state == "active" else {},
            "extra": {"rack": f"r{i // 40:03d}"}, "resource_class": "baremetal", "description": None,
            "created_at": created, "updated_at": created, "version": 1,
        }


_KINDS = (("power", ("power on", "power off", "rebooting"), 70), ("provision", ("provide", "deploy", "undeploy"), 20),
          ("management", ("pxe", "disk"), 10))


def request_rows(size: Size, uuids: list[str], rng: random.Random, now: dt.datetime,
                 keys: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    start = now - SPAN
    step = SPAN / max(1, size.requests)
    last_day = now - dt.timedelta(days=1)
    for k in range(size.requests):
        node = rng.randrange(size.nodes)
        kind, targets, _ = rng.choices(_KINDS, [w for *_, w in _KINDS])[0]
        created = start + step * k
        finished = created + dt.timedelta(seconds=1 + rng.random() * (600 if kind == "provision" else 5))
        state = rng.choices(("succeeded", "failed", "cancelled"), (94, 5, 1))[0]
        rid = f"req-{_hex32(rng)}"
        if created > last_day and rng.random() < 0.5:
            keys.append({"client": "tok-bench", "key": _hex32(rng), "fingerprint": _hex32(rng) * 2,
                         "request_id": rid, "created_at": created,
                         "expires_at": created + dt.timedelta(days=1)})
        yield {
            "id": rid, "node_id": node + 1, "node_uuid": uuids[node], "kind": kind,
            "target": rng.choice(targets), "params": {}, "state": state,
            "error": "BMC did not answer (timed out after 10 s)" if state == "failed" else None,
            "callback_url": None, "client": "tok-bench", "step": None, "progress": {}, "conductor": None,
            "wake_at": None, "created_at": created, "started_at": created + dt.timedelta(milliseconds=20),
            "finished_at": None if state == "cancelled" and rng.random() < 0.5 else finished,
            "updated_at": finished,
        }


def history_rows(size: Size, rng: random.Random, now: dt.datetime) -> Iterator[dict[str, Any]]:
    start = now - SPAN
    step = SPAN / max(1, size.history)
    for k in range(size.history):
        roll = rng.random()
        if roll < 0.33:
            event, severity, message = "request.accepted", "info", "Accepted power request reboot."
        elif roll < 0.66:
            event, severity, message = "request.succeeded", "info", "Power request reboot succeeded."
        elif roll < 0.97:
            event, severity, message = "power.changed", "info", "Power state changed from power off to power on."
        else:
            event, severity, message = "request.failed", "error", "BMC did not answer (timed out after 10 s)"
        yield {
            "id": k + 1, "node_id": rng.randrange(size.nodes) + 1, "created_at": start + step * k,
            "event": event, "severity": severity, "message": message,
            "request_id": f"req-{_hex32(rng)}" if event.startswith("request") else None,
            "conductor": "bench-host-1", "provision_state": "active", "power_state": "power on",
        }


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _insert_core(engine: sa.Engine, table: sa.Table, rows: Iterator[dict[str, Any]]) -> int:
    count = 0
    with engine.begin() as conn:
        # Random keys (request ids, UUIDs) land all over their indexes: with
        # SQLite's default 2 MB page cache each insert then reads pages back
        # from the file (the requests took 30x longer at 100,000 rows).
        conn.exec_driver_sql("PRAGMA cache_size = -400000")
        for batch in _batches(rows):
            conn.execute(sa.insert(table), batch)
            count += len(batch)
    return count


def _copy_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict) else value


def _insert_copy(engine: sa.Engine, table: sa.Table, rows: Iterator[dict[str, Any]]) -> int:
    first = next(rows, None)
    if first is None:
        return 0
    columns = list(first)  # the generated columns; the others take their defaults
    rows = itertools.chain([first], rows)
    count = 0
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        with conn.cursor() as cur, cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([_copy_value(row[c]) for c in columns])
                count += 1
        raw.commit()
    finally:
        raw.close()
    return count


def build(url: str, size: Size, seed: int = 16) -> dict[str, float]:
    """Create the schema at ``url`` and fill it; returns seconds per table (and rows/s)."""
    database.upgrade(url)
    engine = database.make_engine(url)
    insert = _insert_copy if engine.dialect.name == "postgresql" else _insert_core
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    timings: dict[str, float] = {}
    uuids: list[str] = []

    def nodes() -> Iterator[dict[str, Any]]:
        for row in node_rows(size, rng, now):
            uuids.append(row["uuid"])
            yield row

    keys: list[dict[str, Any]] = []
    for name, table, rows in (
        ("nodes", Node.__table__, lambda: nodes()),
        ("requests", Request.__table__, lambda: request_rows(size, uuids, rng, now, keys)),
        ("idempotency_keys", IdempotencyRecord.__table__, lambda: iter(keys)),
        ("node_history", NodeHistory.__table__, lambda: history_rows(size, rng, now)),
    ):
        started = time.perf_counter()
        count = insert(engine, table, rows())
        timings[name] = time.perf_counter() - started
        timings[f"{name}_rows"] = count
    if engine.dialect.name == "postgresql":
        started = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("SELECT setval('node_history_id_seq', (SELECT max(id) FROM node_history))")
            conn.exec_driver_sql("SELECT setval('nodes_id_seq', (SELECT max(id) FROM nodes))")
            conn.exec_driver_sql("ANALYZE")
        timings["analyze"] = time.perf_counter() - started
    engine.dispose()
    return timings


def reset_postgres(server_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``server_url``; its URL."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres(server_url: str, name: str) -> None:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


# --- the service ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    session: requests.Session = field(default_factory=requests.Session)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_service(data_dir: Path, database_url: str, power_sync_interval: float | None = None) -> Service:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(CONDUCTOR_DATA_DIR=str(data_dir), CONDUCTOR_LOG_LEVEL="WARNING", CONDUCTOR_PURGE_INTERVAL="0",
               CONDUCTOR_DATABASE_URL=database_url, PYTHONPATH=str(ROOT))
    if power_sync_interval is not None:
        env["CONDUCTOR_POWER_SYNC_INTERVAL"] = str(power_sync_interval)
    proc = subprocess.Popen(
        [sys.executable, "-m", "conductor", "up", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    service = Service(proc, f"http://127.0.0.1:{port}", data_dir)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited ({proc.returncode}); see {data_dir / 'logs'}")
        try:
            if requests.get(service.url + "/", timeout=1).ok:
                token = (data_dir / "admin.token").read_text().strip()
                service.session.headers["Authorization"] = f"Bearer {token}"
                service.session.patch(f"{service.url}/v1/throttle", timeout=10, json={
                    "write_rate": 0, "client_write_rate": 0, "read_rate": 0, "max_queue_depth": 0,
                }).raise_for_status()
                time.sleep(1.1)  # every API process sees the knobs within a second
                return service
        except requests.RequestException:
            time.sleep(0.3)
    service.stop()
    raise SystemExit("the service did not start")


# --- measuring --------------------------------------------------------------------------------

def timed(calls: int, one: Callable[[int], None]) -> list[float]:
    """Milliseconds of each of ``calls`` calls of ``one(i)``."""
    out = []
    for i in range(calls):
        started = time.perf_counter()
        one(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def _ok(response: requests.Response, status: int = 200) -> requests.Response:
    if response.status_code != status:
        raise SystemExit(f"{response.request.method} {response.url}: {response.status_code} {response.text[:300]}")
    return response


def wait_idle(service: Service, timeout: float = 300) -> float:
    """Seconds until no request is queued, running or waiting (nan: still busy after ``timeout``)."""
    started = time.monotonic()
    counts: dict[str, int] = {}
    while time.monotonic() - started < timeout:
        counts = {
            s: len(_ok(service.session.get(f"{service.url}/v1/requests", params={"state": s, "limit": 1000},
                                           timeout=30)).json()["requests"])
            for s in ("queued", "running", "waiting")
        }
        if not any(counts.values()):
            return time.monotonic() - started
        time.sleep(0.2)
    print(f"   {service.url}: requests still busy after {timeout:.0f} s: {counts}", flush=True)
    return float("nan")


def measure_round(service: Service, uuids: list[str], calls: int, rng: random.Random,
                  figures: dict[str, Any]) -> None:
    """One round of every API figure, appended to ``figures``' lists."""
    s, base = service.session, service.url

    def add(name: str, values: list[float]) -> None:
        figures.setdefault(name, []).extend(values)

    pick = [rng.choice(uuids) for _ in range(calls)]
    for _ in range(20):  # warm the connections and both API processes
        _ok(s.get(f"{base}/v1/nodes/{pick[0]}/states", timeout=30))
    add("states poll", timed(calls, lambda i: _ok(s.get(f"{base}/v1/nodes/{pick[i]}/states", timeout=30))))

    pages: list[float] = []
    marker: str | None = None
    seen = 0
    walk_started = time.perf_counter()
    while True:
        params: dict[str, Any] = {"limit": PAGE}
        if marker:
            params["marker"] = marker
        started = time.perf_counter()
        page = _ok(s.get(f"{base}/v1/nodes", params=params, timeout=60)).json()["nodes"]
        pages.append((time.perf_counter() - started) * 1000)
        seen += len(page)
        if len(page) < PAGE:
            break
        marker = page[-1]["uuid"]
    add("walk_s", [time.perf_counter() - walk_started])
    figures["walk_nodes"] = seen
    add("node list page (100)", pages)

    add("requests ?node&state=failed", timed(calls, lambda i: _ok(s.get(
        f"{base}/v1/requests", params={"node": pick[i], "state": "failed"}, timeout=30))))
    add("node history (50)", timed(calls, lambda i: _ok(s.get(f"{base}/v1/nodes/{pick[i]}/history", timeout=30))))

    group = rng.sample(uuids, min(len(uuids), 100))
    statuses: list[int] = []

    def put(i: int) -> None:
        response = s.put(f"{base}/v1/nodes/{group[i]}/states/power", json={"target": "rebooting"}, timeout=30)
        if response.status_code not in (202, 409):  # 409: a node still busy with an earlier round's request
            _ok(response, 202)
        statuses.append(response.status_code)

    add("power PUT (202)", timed(len(group), put))
    figures["put_409"] = figures.get("put_409", 0) + statuses.count(409)
    add("drain_s", [wait_idle(service)])


def engine_contexts(data_dir: Path, database_url: str) -> tuple[Any, Any]:
    """Contexts on the service's database and Redis: one to sweep (no purge), one to purge."""
    from conductor.bootstrap import build_context
    from conductor.settings import load

    base = {"data_dir": str(data_dir), "database_url": database_url,
            "redis_url": embedded_redis.url_for(data_dir), "log_level": "WARNING"}
    return (build_context(load({**base, "purge_interval": 0}), name="scale-bench"),
            build_context(load({**base, "request_retention": PURGE_RETENTION,
                                "history_retention": PURGE_RETENTION}), name="scale-bench"))


def measure_sweeps(ctx: Any, figures: dict[str, Any]) -> None:
    from conductor.engine import sweeper

    sweeper.sweep(ctx)  # connections opened
    figures.setdefault("sweep", []).extend(timed(3, lambda _i: sweeper.sweep(ctx)))


def measure_purge(ctx: Any, figures: dict[str, Any]) -> None:
    """One round of the retention purge (a tenth of the rows are past the retention)."""
    from conductor.engine import retention

    started = time.perf_counter()
    counts = retention.purge(ctx)
    elapsed = time.perf_counter() - started
    rows = counts["requests_purged"] + counts["history_purged"]
    figures.update(purge_s=elapsed, purge_rows=rows, purge_counts=counts,
                   purge_us_per_row=elapsed * 1e6 / max(1, rows))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(service: Service) -> dict[str, float]:
    """CPU seconds (user + system) used so far per process kind, from /proc/<pid>/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"api": 0.0, "worker": 0.0}
    for pid, kind in _processes(service):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[kind] += (int(fields[11]) + int(fields[12])) / tick
    return out


def _processes(service: Service) -> list[tuple[int, str]]:
    """(pid, "api" or "worker") of the service's API and conductor worker processes."""
    found = []
    for child in psutil.Process(service.proc.pid).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "gunicorn" in cmd or " api" in cmd:
            found.append((child.pid, "api"))
        elif "callback" not in cmd and "worker" in cmd:
            found.append((child.pid, "worker"))
    return found


def rss(service: Service) -> dict[str, list[int]]:
    """KiB of RSS per process kind (API, worker), from /proc."""
    kinds: dict[str, list[int]] = {"api": [], "worker": []}
    for pid, kind in _processes(service):
        try:
            kinds[kind].append(_rss_kib(pid))
        except OSError:
            continue
    return kinds


# --- plans ------------------------------------------------------------------------------------

def capture_sql(data_dir: Path, database_url: str, uuids: list[str]) -> list[tuple[str, str, Any]]:
    """(label, statement, parameters) of what the hot endpoints, the sweep and the purge run."""
    from conductor.api import create_app
    from conductor.engine import retention, sweeper
    from conductor.settings import load

    settings = load({"data_dir": str(data_dir), "database_url": database_url, "auth_enabled": False,
                     "redis_url": embedded_redis.url_for(data_dir), "log_level": "WARNING",
                     "request_retention": PURGE_RETENTION, "history_retention": PURGE_RETENTION,
                     "purge_interval": 0})  # the sweep leaves the purge to its own call below
    app = create_app(settings)
    ctx = app.extensions["conductor"]
    client = app.test_client()
    captured: list[tuple[str, str, Any]] = []
    label = [""]

    def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        if not many and statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "UPDATE", "DELETE"):
            captured.append((label[0], statement, parameters))

    sa.event.listen(ctx.db.engine, "before_cursor_execute", listen)
    node = uuids[len(uuids) // 2]
    page: list[dict[str, Any]] = []
    for name, call in (
        ("node list first page", lambda: page.extend(client.get("/v1/nodes?limit=100").json["nodes"])),
        ("states poll", lambda: client.get(f"/v1/nodes/{node}/states")),
        ("node list page", lambda: client.get(f"/v1/nodes?limit=100&marker={page[-1]['uuid']}")),
        ("requests ?node&state=failed", lambda: client.get(f"/v1/requests?node={node}&state=failed")),
        ("node history", lambda: client.get(f"/v1/nodes/{node}/history")),
        ("power PUT", lambda: client.put(f"/v1/nodes/{node}/states/power", json={"target": "rebooting"})),
        ("sweep", lambda: sweeper.sweep(ctx)),
        ("purge", lambda: retention.purge(ctx)),
    ):
        label[0] = name
        call()
    sa.event.remove(ctx.db.engine, "before_cursor_execute", listen)
    seen: set[str] = set()
    unique = []
    for item in captured:
        if item[1] not in seen:
            seen.add(item[1])
            unique.append(item)
    ctx.db.engine.dispose()
    return unique


_SCAN = re.compile(r"\b(?:SCAN|Seq Scan on) (\w+)")


def explain(database_url: str, statements: list[tuple[str, str, Any]]) -> list[str]:
    """Each statement and its plan; a full scan of a large table is marked ``<-- FULL SCAN``."""
    engine = database.make_engine(database_url)
    prefix = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    out: list[str] = []
    with engine.connect() as conn:
        for label, statement, params in statements:
            flat = " ".join(statement.split())
            out.append(f"[{label}] {flat[:400]}{' ...' if len(flat) > 400 else ''}")
            rows = conn.exec_driver_sql(prefix + statement, params).all()
            plan = [str(row[-1] if engine.dialect.name == "sqlite" else row[0]) for row in rows]
            # A scan in the ORDER BY's own order under a LIMIT stops after LIMIT rows.
            stops = " LIMIT " in flat and not any("TEMP B-TREE" in t or "Sort" in t for t in plan)
            for text in plan:
                match = _SCAN.search(text)
                mark = ""
                if match and match.group(1) in BIG_TABLES:
                    mark = "   <-- scan, in order, stops at the LIMIT" if stops else "   <-- FULL SCAN"
                out.append(f"      {text}{mark}")
        conn.rollback()
    engine.dispose()
    return out


# --- one size ---------------------------------------------------------------------------------

@dataclass
class Deployment:
    """One size: its database, its data directory, its running service."""

    size: Size
    url: str
    data_dir: Path
    service: Service | None = None
    uuids: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def prepare(args: argparse.Namespace, size: Size, pg_name: str) -> Deployment:
    data_dir = Path(tempfile.mkdtemp(prefix="scale-"))
    if args.database == "postgres":
        url = reset_postgres(args.pg_url, pg_name)
    else:
        url = f"sqlite:///{data_dir / 'conductor.sqlite'}"
    print(f"\n== building {size.nodes} nodes, {size.requests} requests, {size.history} history entries "
          f"({args.database}); load average {os.getloadavg()[0]:.2f}", flush=True)
    started = time.perf_counter()
    built = build(url, size)
    built["total"] = time.perf_counter() - started
    print("build: " + ", ".join(f"{k} {v:.1f} s" for k, v in built.items() if not k.endswith("_rows")), flush=True)
    deployment = Deployment(size, url, data_dir)
    deployment.figures["build"] = built
    engine = database.make_engine(url)
    with engine.connect() as conn:
        deployment.uuids = list(conn.scalars(sa.select(Node.uuid).order_by(Node.id)))
    engine.dispose()
    return deployment


def run(args: argparse.Namespace, small: Size, big: Size) -> tuple[Deployment, Deployment, list[str]]:
    """Build both sizes, serve both, and measure them in alternate rounds.

    Both services run side by side and each round measures one then the
    other (the order swapped every round), so that the load of the machine's
    other tenants, which drifts by tens of percent within minutes, falls on
    both sizes alike.
    """
    both = [prepare(args, small, f"{args.pg_database}_small"), prepare(args, big, args.pg_database)]
    plans: list[str] = []
    contexts = []
    try:
        for d in both:
            d.service = start_service(d.data_dir, d.url, args.power_sync_interval)
        load_before = os.getloadavg()
        rng = random.Random(7)
        cpu_before = [cpu_seconds(d.service) for d in both if d.service]
        started = time.perf_counter()
        for round_ in range(ROUNDS):
            for d in both if round_ % 2 == 0 else both[::-1]:
                assert d.service is not None
                measure_round(d.service, d.uuids, args.calls // ROUNDS, rng, d.figures)
        elapsed = time.perf_counter() - started
        for d, before in zip(both, cpu_before, strict=True):
            assert d.service is not None
            after = cpu_seconds(d.service)
            d.figures["cpu"] = {k: (after[k] - before[k]) / elapsed for k in after}
        for d in both:
            contexts.append(engine_contexts(d.data_dir, d.url))
        for round_ in range(ROUNDS):
            for i in (0, 1) if round_ % 2 == 0 else (1, 0):
                measure_sweeps(contexts[i][0], both[i].figures)
        for i in (0, 1):
            measure_purge(contexts[i][1], both[i].figures)
        for d in both:
            assert d.service is not None
            d.figures["rss"] = rss(d.service)
            d.figures["load"] = (load_before, os.getloadavg())
        plans = explain(both[1].url, capture_sql(both[1].data_dir, both[1].url, both[1].uuids))
    finally:
        for sweep_ctx, purge_ctx in contexts:
            sweep_ctx.db.engine.dispose()
            purge_ctx.db.engine.dispose()
        for d in both:
            if d.service is not None:
                d.service.stop()
        if not args.keep:
            for d in both:
                shutil.rmtree(d.data_dir, ignore_errors=True)
            if args.database == "postgres":
                for name in (f"{args.pg_database}_small", args.pg_database):
                    drop_postgres(args.pg_url, name)
    return both[0], both[1], plans


LATENCIES = ("states poll", "node list page (100)", "requests ?node&state=failed", "node history (50)",
             "power PUT (202)", "sweep")


def report(small: Size, big: Size, a: dict[str, Any], b: dict[str, Any]) -> None:
    print(f"\n== figures: {small.nodes} nodes vs {big.nodes} nodes (ratio = large / small; target <= 2x)")
    print(f"{'':32} {'p50 small':>10} {'p50 large':>10} {'ratio':>6}   "
          f"{'p99 small':>10} {'p99 large':>10} {'ratio':>6}")
    for name in LATENCIES:
        x, y = a[name], b[name]
        r50, r99 = p(y, 50) / p(x, 50), p(y, 99) / p(x, 99)
        flag = "" if r50 <= 2 else "   MISSED"
        print(f"{name + ' ms':32} {p(x, 50):10.2f} {p(y, 50):10.2f} {r50:5.2f}x   "
              f"{p(x, 99):10.2f} {p(y, 99):10.2f} {r99:5.2f}x{flag}")
    r = b["purge_us_per_row"] / a["purge_us_per_row"]
    print(f"{'purge us/row':32} {a['purge_us_per_row']:10.1f} {b['purge_us_per_row']:10.1f} {r:5.2f}x   "
          f"(one round: {a['purge_s']:.2f} s for {a['purge_rows']} rows; {b['purge_s']:.2f} s for {b['purge_rows']})")
    print(f"{'100 PUTs drained in s':32} {p(a['drain_s'], 50):10.2f} {p(b['drain_s'], 50):10.2f}   "
          f"(each round: {[round(x, 1) for x in a['drain_s']]} / {[round(x, 1) for x in b['drain_s']]}; "
          f"409s: {a.get('put_409', 0)} / {b.get('put_409', 0)})")
    print(f"{'node list walk s':32} {p(a['walk_s'], 50):10.2f} {p(b['walk_s'], 50):10.2f}   "
          f"({a['walk_nodes']} and {b['walk_nodes']} nodes)")
    for kind in ("api", "worker"):
        xs, ys = a["rss"][kind], b["rss"][kind]
        print(f"{'RSS ' + kind + ' MiB':32} {max(xs or [0]) / 1024:10.1f} {max(ys or [0]) / 1024:10.1f} "
              f"{(max(ys or [0]) / max(xs or [1])):5.2f}x   (each: {[round(k / 1024) for k in xs]} / "
              f"{[round(k / 1024) for k in ys]})")
    for kind in ("api", "worker"):
        print(f"{'CPU ' + kind + ' (cores busy)':32} {a['cpu'][kind]:10.2f} {b['cpu'][kind]:10.2f}   "
              "(over the API rounds, both services running)")
    for label, f in (("small", a), ("large", b)):
        built = f["build"]
        rows = sum(v for k, v in built.items() if k.endswith("_rows"))
        print(f"build {label}: {built['total']:.1f} s for {rows:,.0f} rows ({rows / built['total']:,.0f} rows/s); "
              f"load average before {f['load'][0][0]:.2f}, after {f['load'][1][0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--history", type=int, default=5_000_000)
    parser.add_argument("--small-nodes", type=int, default=100, help="the baseline's nodes [100]")
    parser.add_argument("--calls", type=int, default=300, help="calls per latency figure [300]")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="a database of the PostgreSQL server to connect to for CREATE/DROP DATABASE")
    parser.add_argument("--pg-database", default="scale_bench")
    parser.add_argument("--power-sync-interval", type=float, default=None,
                        help="the services' power_sync_interval (0: off) [their default, 60 s]")
    parser.add_argument("--keep", action="store_true",
                        help="leave the data directories (and PostgreSQL databases) behind")
    args = parser.parse_args()
    big = Size(args.nodes, args.requests, args.history)
    small = Size(args.small_nodes, args.requests * args.small_nodes // args.nodes,
                 args.history * args.small_nodes // args.nodes)
    a, b, plans = run(args, small, big)
    print(f"\n== plans at {big.nodes} nodes (the SQL the endpoints, the sweep and the purge ran)")
    print("\n".join(plans))
    report(small, big, a.figures, b.figures)


if __name__ == "__main__":
    main()
