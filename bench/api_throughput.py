#!/usr/bin/env python3
"""API throughput on the embedded default: polling and admission.

Starts ``conductor up`` (SQLite + embedded Redis, gunicorn with 2 API
processes, 1 conductor worker) in a temporary data directory, enrols 100
fake nodes, and prints:

1. polling: ``GET /v1/nodes/<id>/states`` over the 100 nodes with 8
   concurrent clients: requests/s, p50, p99 (targets: >= 1,800 req/s,
   p99 <= 25 ms);
2. admission (burst): power PUTs, each to a node with no transition in
   flight, with 8 concurrent clients, while the conductor is suspended
   (RQ suspension) so that the figure is the API's: 202s/s, p50, p99
   (target >= 500 req/s);
3. sustained: 8 clients PUT power targets round-robin over the 100 nodes
   while the conductor drains them: 202s/s and 409s/s (bounded by the
   conductor's throughput on the same two cores);
4. drain: how fast the conductor completes the burst's requests.

The load generator is ``wrk`` (Debian package ``wrk``) when present,
otherwise Python processes (which cost the server CPU; the figures are
then lower bounds). Figures only, never asserts: see docs/benchmarks.md.

Usage: python bench/api_throughput.py [--duration 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
CLIENTS = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


AUTH: dict[str, str] = {}


def start_service(data_dir: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["CONDUCTOR_DATA_DIR"] = str(data_dir)
    env["CONDUCTOR_LOG_LEVEL"] = "WARNING"
    proc = subprocess.Popen(
        [sys.executable, "-m", "conductor", "up", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/", timeout=1).ok:
                # Auth is on by default: every client (wrk, the Python
                # clients, this script) sends the admin token `up` wrote.
                token = (data_dir / "admin.token").read_text().strip()
                os.environ["BENCH_TOKEN"] = token
                AUTH["Authorization"] = f"Bearer {token}"
                # This benchmark measures raw capacity: no budgets, no depth limit.
                requests.patch(f"{url}/v1/throttle", headers=AUTH, timeout=10, json={
                    "write_rate": 0, "client_write_rate": 0, "read_rate": 0, "max_queue_depth": 0,
                }).raise_for_status()
                time.sleep(1.1)  # every API process sees the knobs within a second
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the service did not start")


def enrol(url: str, names: list[str]) -> None:
    session = requests.Session()
    session.headers.update(AUTH)
    for name in names:
        response = session.post(f"{url}/v1/nodes", json={"name": name, "driver": "fake"}, timeout=10)
        response.raise_for_status()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def run_wrk(url: str, script: Path, duration: float, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CLIENTS}", f"-d{max(1, int(duration))}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, env={**os.environ, **env}, check=True,
    ).stdout
    figures: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("STATUS "):
            _, code, count = line.split()
            figures[f"status_{code}"] = float(count)
        elif line.startswith(("DURATION_US", "LAT_P50_US", "LAT_P99_US", "REQUESTS")):
            key, value = line.split()
            figures[key.lower()] = float(value)
    if "duration_us" not in figures:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    return figures


def _python_client(args: tuple[str, str, list[str], float, str]) -> tuple[dict[int, int], list[float]]:
    import http.client

    base, method, paths, duration, body_kind = args
    host, port = base.removeprefix("http://").split(":")
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    deadline = time.monotonic() + duration
    i = 0
    flip: dict[str, bool] = {}
    while time.monotonic() < deadline and (body_kind != "once" or i < len(paths)):
        path = paths[i % len(paths)]
        i += 1
        body = None
        if method == "PUT":
            flip[path] = not flip.get(path, False)
            target = "power on" if body_kind == "once" or flip[path] else "power off"
            body = json.dumps({"target": target})
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        started = time.perf_counter()
        conn.request(method, path, body=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {os.environ.get('BENCH_TOKEN', '')}"})
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[response.status] = statuses.get(response.status, 0) + 1
        conn.close()
    return statuses, latencies


def run_python(url: str, method: str, paths: list[str], duration: float, body_kind: str = "") -> dict[str, float]:
    shares = [paths[i::CLIENTS] for i in range(CLIENTS)]
    started = time.perf_counter()
    with multiprocessing.Pool(CLIENTS) as pool:
        results = pool.map(_python_client, [(url, method, share, duration, body_kind) for share in shares])
    elapsed = time.perf_counter() - started
    figures: dict[str, float] = {"duration_us": elapsed * 1e6}
    latencies: list[float] = []
    for statuses, lats in results:
        latencies += lats
        for code, count in statuses.items():
            figures[f"status_{code}"] = figures.get(f"status_{code}", 0) + count
    figures["lat_p50_us"] = percentile(latencies, 50) * 1000
    figures["lat_p99_us"] = percentile(latencies, 99) * 1000
    return figures


def suspend(data_dir: Path, on: bool) -> None:
    import redis
    from rq.suspension import resume
    from rq.suspension import suspend as rq_suspend

    from conductor import embedded_redis

    connection = redis.Redis.from_url(embedded_redis.url_for(data_dir))
    rq_suspend(connection) if on else resume(connection)


def wait_drained(url: str, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        active = 0
        for state in ("queued", "running"):
            page = requests.get(f"{url}/v1/requests", params={"state": state, "limit": 1}, headers=AUTH,
                                timeout=10).json()
            active += len(page["requests"])
        if not active:
            return time.perf_counter() - started
        time.sleep(0.2)
    return float("nan")


def line(name: str, figures: dict[str, float], count_key: str, target: str) -> None:
    seconds = figures["duration_us"] / 1e6
    rate = figures.get(count_key, 0) / seconds
    print(f"{name:<28} {rate:8.0f} req/s   p50 {figures['lat_p50_us'] / 1000:6.2f} ms   "
          f"p99 {figures['lat_p99_us'] / 1000:6.2f} ms   {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--burst-nodes", type=int, default=6000, help="extra nodes for the admission burst")
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None
    data_dir = Path(tempfile.mkdtemp(prefix="conductor-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_service(data_dir, port, args.workers)
    try:
        names = [f"b{i}" for i in range(1, 101)]
        enrol(url, names)
        print(f"conductor up: 2 API processes, {args.workers} conductor worker(s), 100 fake nodes; "
              f"load: {'wrk' if use_wrk else 'python (lower bound)'}, {CLIENTS} clients, {os.cpu_count()} CPUs")

        if use_wrk:
            poll = run_wrk(url, HERE / "wrk_states.lua", args.duration, {"BENCH_NODES": "100"})
        else:
            poll = run_python(url, "GET", [f"/v1/nodes/{n}/states" for n in names], args.duration)
        line("polling GET states", poll, "status_200", "(target >= 1800 req/s, p99 <= 25 ms)")

        burst = [f"x{i}" for i in range(1, args.burst_nodes + 1)]
        enrol(url, burst)
        suspend(data_dir, True)
        if use_wrk:
            # Stop before the nodes run out: each burst node takes one PUT.
            adm = run_wrk(url, HERE / "wrk_admit.lua", min(args.duration, args.burst_nodes / 1500),
                          {"BENCH_NODES": str(args.burst_nodes)})
        else:
            adm = run_python(url, "PUT", [f"/v1/nodes/{n}/states/power" for n in burst], args.duration, "once")
        line("admission (burst) 202s", adm, "status_202", "(target >= 500 req/s)")
        accepted = int(adm.get("status_202", 0))
        other = {k: int(v) for k, v in adm.items() if k.startswith("status_") and k != "status_202"}
        print(f"{'':<28} {accepted} accepted, other statuses: {other or 'none'}")
        suspend(data_dir, False)
        drained = wait_drained(url, 600)
        print(f"{'drain of the burst':<28} {accepted / drained:8.0f} req/s   ({accepted} requests in {drained:.1f} s "
              f"by {args.workers} conductor worker(s))")

        if use_wrk:
            sus = run_wrk(url, HERE / "wrk_put.lua", args.duration, {"BENCH_NODES": "100"})
        else:
            sus = run_python(url, "PUT", [f"/v1/nodes/{n}/states/power" for n in names], args.duration, "flip")
        line("sustained 202s (draining)", sus, "status_202", "(bounded by the conductor on the same cores)")
        seconds = sus["duration_us"] / 1e6
        print(f"{'':<28} {sus.get('status_409', 0) / seconds:8.0f} 409/s while the node was still busy")
        wait_drained(url, 120)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
