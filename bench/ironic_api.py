#!/usr/bin/env python3
"""The Ironic-compatible API against our own, on the same service and nodes.

Starts ``conductor up`` (SQLite + embedded Redis, 2 API processes) in a
temporary data directory, enrols 100 fake nodes and measures, with the
same clients in the same run, alternately (ours first, then Ironic's, and the other way round in the next round):

1. polling a node's states: ``GET /v1/nodes/<n>/states`` against
   ``GET /baremetal/v1/nodes/<n>/states`` (X-OpenStack-Ironic-API-Version 1.80);
2. listing every node with every field: ``GET /v1/nodes?limit=100`` against
   ``GET /baremetal/v1/nodes?detail=True`` (100 nodes).

Target (issue 12): the Ironic-compatible endpoints within 20 % of ours.
Ironic 39's own polling figure, for scale, is in ../shared/FINDINGS.md
(~90-140 req/s, p99 ~210-250 ms).

The clients are Python processes on persistent connections (they share
the CPUs with the server: the figures are lower bounds, the ratios are
what counts). Figures only, never asserts: see docs/benchmarks.md.

Usage: python bench/ironic_api.py [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
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

CLIENTS = 4
NODES = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(CONDUCTOR_DATA_DIR=str(data_dir), CONDUCTOR_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "conductor", "up", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/", timeout=1).ok:
                token = (data_dir / "admin.token").read_text().strip()
                # Raw capacity: no read budget.
                requests.patch(f"{url}/v1/throttle", headers={"Authorization": f"Bearer {token}"}, timeout=10,
                               json={"read_rate": 0}).raise_for_status()
                time.sleep(1.1)  # every API process sees the knobs within a second
                return proc, token
        except requests.RequestException:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit("the service did not start")


def _client(args: tuple[int, list[str], dict[str, str], float]) -> tuple[int, int, list[float]]:
    port, paths, headers, duration = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    ok = bad = 0
    latencies: list[float] = []
    deadline = time.monotonic() + duration
    i = 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        conn.request("GET", paths[i % len(paths)], headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status == 200:
            ok += 1
        else:
            bad += 1
        i += 1
    conn.close()
    return ok, bad, latencies


def measure(port: int, paths: list[str], headers: dict[str, str], duration: float) -> tuple[float, float, float]:
    """req/s, p50 ms, p99 ms of ``CLIENTS`` clients GETting ``paths`` in turn for ``duration`` s."""
    shares = [paths[i::CLIENTS] or paths for i in range(CLIENTS)]
    started = time.perf_counter()
    with multiprocessing.Pool(CLIENTS) as pool:
        results = pool.map(_client, [(port, share, headers, duration) for share in shares])
    elapsed = time.perf_counter() - started
    ok = sum(r[0] for r in results)
    bad = sum(r[1] for r in results)
    if bad:
        raise SystemExit(f"{bad} answers were not 200 for {paths[0]}")
    latencies = sorted(lat for r in results for lat in r[2])
    return ok / elapsed, latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of ours and Ironic's")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="conductor-bench-"))
    port = free_port()
    proc, token = start_service(data_dir, port)
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        uuids = [session.post(f"http://127.0.0.1:{port}/v1/nodes", json={"name": f"b{i}", "driver": "fake"},
                              timeout=10).json()["uuid"] for i in range(1, NODES + 1)]
        ours = {"Authorization": f"Bearer {token}"}
        ironic = {"X-Auth-Token": token, "X-OpenStack-Ironic-API-Version": "1.80"}
        cases = [
            ("states", "/v1 GET nodes/<uuid>/states", [f"/v1/nodes/{u}/states" for u in uuids], ours),
            ("states", "/baremetal GET nodes/<uuid>/states", [f"/baremetal/v1/nodes/{u}/states" for u in uuids],
             ironic),
            ("list", "/v1 GET nodes?limit=100", ["/v1/nodes?limit=100"], ours),
            ("list", "/baremetal GET nodes?detail=True", ["/baremetal/v1/nodes?detail=True"], ironic),
        ]
        print(f"conductor up: 2 API processes, {NODES} fake nodes; {CLIENTS} Python clients on persistent "
              f"connections, {os.cpu_count()} CPUs, {args.rounds} x {args.duration:g} s each, alternated")
        rates: dict[str, list[tuple[float, float, float]]] = {name: [] for _k, name, _p, _h in cases}
        for round_ in range(args.rounds):
            # Ours first, then Ironic's; the other way round in the next round (the load around moves).
            pairs = [cases[0:2], cases[2:4]]
            for pair in pairs:
                for _kind, name, paths, headers in (pair if round_ % 2 == 0 else pair[::-1]):
                    rates[name].append(measure(port, paths, headers, args.duration))
        best: dict[str, float] = {}
        for kind, name, _paths, _headers in cases:
            runs = rates[name]
            median = sorted(runs)[len(runs) // 2]
            best.setdefault(kind, median[0])
            ratio = median[0] / best[kind]
            print(f"{name:<40} {median[0]:8.0f} req/s   p50 {median[1]:6.2f} ms   p99 {median[2]:6.2f} ms   "
                  f"{ratio:5.2f} x /v1")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
