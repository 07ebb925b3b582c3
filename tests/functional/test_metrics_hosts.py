"""Metrics over several API hosts of one deployment, each running several gunicorn processes: a host's
``/metrics`` counts the calls it answered (whichever process is scraped, a replaced process included),
``/metrics/fleet`` gives every host the same figures of the deployment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet

from conductor.context import Context
from conductor.settings import Settings
from tests import processes
from tests.conftest import bearer, free_port, make_token
from tests.unit.test_metrics import http_count, samples


class ApiHost:
    """``conductor api`` with two processes and a data directory of its own, on the shared database and Redis."""

    def __init__(self, settings: Settings, data_dir: Path, secret_key: str) -> None:
        data_dir.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CONDUCTOR_DATA_DIR": str(data_dir), "DATABASE_URL": settings.sqlalchemy_url,
               "REDIS_URL": settings.redis_url, "CONDUCTOR_REDIS_NAMESPACE": settings.redis_namespace,
               # The deployment's key: hosts of one deployment share it.
               "CONDUCTOR_SECRET_KEY": secret_key}
        self.log = data_dir / "api.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conductor", "api", "--port", str(self.port), "--api-workers", "2"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            try:
                requests.get(self.url + "/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)

    def workers(self) -> list[int]:
        return [record.pid for record in processes.descendants(self.proc.pid)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def two_hosts(settings: Settings, ctx: Context, tmp_path: Path) -> Iterator[tuple[ApiHost, ApiHost]]:
    hosts: list[ApiHost] = []
    key = Fernet.generate_key().decode()
    try:
        hosts.append(ApiHost(settings, tmp_path / "host-a", key))
        hosts.append(ApiHost(settings, tmp_path / "host-b", key))
        yield hosts[0], hosts[1]
    finally:
        for host in hosts:
            host.stop()


def test_each_host_counts_its_calls_and_every_host_shows_the_same_fleet(
        two_hosts: tuple[ApiHost, ApiHost], ctx: Context) -> None:
    a, b = two_hosts
    http = requests.Session()
    http.headers.update(bearer(make_token(ctx, "admin")))
    assert http.post(f"{a.url}/v1/nodes", json={"name": "n1", "driver": "fake"}, timeout=10).status_code == 201
    for _ in range(20):
        assert requests.get(f"{a.url}/v1/nodes", headers=http.headers, timeout=10).status_code == 200
    for _ in range(5):
        assert requests.get(f"{b.url}/v1/nodes", headers=http.headers, timeout=10).status_code == 200
    # New connections: the scrapes reach both processes of the host; each answers the host's total.
    for _ in range(6):
        text = requests.get(f"{a.url}/metrics", headers=http.headers, timeout=10).text
        assert http_count(text, "GET", "/v1/nodes", "2xx") == 20
        assert http_count(text, "POST", "/v1/nodes", "2xx") == 1
        assert http_count(requests.get(f"{b.url}/metrics", headers=http.headers, timeout=10).text,
                          "GET", "/v1/nodes", "2xx") == 5

    # A process of host a is replaced (killed; gunicorn starts another): its counts stay in the sum.
    before = set(a.workers())
    os.kill(sorted(before)[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while len(set(a.workers()) - before) < 1:
        assert time.monotonic() < deadline, "gunicorn did not replace the process"
        time.sleep(0.1)
    for _ in range(4):
        text = requests.get(f"{a.url}/metrics", headers=http.headers, timeout=10).text
        assert http_count(text, "GET", "/v1/nodes", "2xx") == 20

    # The fleet: one figure for the deployment, whichever host says it.
    fleet_a = samples(requests.get(f"{a.url}/metrics/fleet", headers=http.headers, timeout=10).text)
    fleet_b = samples(requests.get(f"{b.url}/metrics/fleet", headers=http.headers, timeout=10).text)
    nodes_a = {k: v for k, v in fleet_a.items() if k[0] == "conductor_nodes"}
    assert nodes_a and nodes_a == {k: v for k, v in fleet_b.items() if k[0] == "conductor_nodes"}
    assert sum(nodes_a.values()) == 1
    assert fleet_a[("conductor_queue_depth", ())] == fleet_b[("conductor_queue_depth", ())]

    # What a scrape costs (printed, not asserted).
    for path in ("/metrics", "/metrics/fleet"):
        http.get(a.url + path, timeout=10)
        began = time.perf_counter()
        for _ in range(20):
            size = len(http.get(a.url + path, timeout=10).content)
        print(f"\nscrape {path}: {(time.perf_counter() - began) / 20 * 1000:.1f} ms, {size} bytes")
