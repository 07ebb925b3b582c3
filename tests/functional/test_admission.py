"""Admission over real processes: limits shared by several gunicorn servers, the CLI's tokens."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from conductor.auth import tokens
from conductor.throttle import settings as throttle_settings
from tests.conftest import bearer, free_port


@pytest.fixture
def second_api(service_factory):  # type: ignore[no-untyped-def]
    """A service (no workers) plus a second, separate API server on the same database and Redis."""
    service = service_factory(workers=0, api_workers=2)
    port = free_port()
    with open(service.settings.data_dir / "api2.log", "ab") as log:  # the child writes to its own copy
        proc = subprocess.Popen([sys.executable, "-m", "conductor", "api", "--port", str(port), "--api-workers", "2"],
                                env=service.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (service.settings.data_dir / "api2.log").read_text()
            try:
                if requests.get(url + "/", timeout=1, headers={"Connection": "close"}).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "second API did not start"
            time.sleep(0.1)
        yield service, url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # gunicorn's workers too, if any is left
            proc.wait()


def test_limits_are_shared_by_every_api_process(second_api) -> None:
    service, other_url = second_api
    urls = [service.url, other_url]
    service.http.post(f"{service.url}/v1/nodes", json={"name": "hot", "driver": "fake"}, timeout=10)
    rate, burst = 20.0, 5
    response = service.http.patch(f"{service.url}/v1/throttle", timeout=10, json={
        "write_rate": rate, "write_burst": burst, "client_write_rate": 0, "client_write_burst": 1})
    assert response.status_code == 200
    time.sleep(1.0)  # every process sees the new knobs within a second
    threads, per_thread_rate, duration = 4, 5 * rate / 4, 3.0
    started = time.monotonic()

    def offer(index: int) -> list[int]:
        session = requests.Session()
        session.headers.update(service.auth_headers)
        statuses = []
        for i in range(int(per_thread_rate * duration)):
            time.sleep(max(0.0, started + i / per_thread_rate - time.monotonic()))
            statuses.append(session.put(f"{urls[index % 2]}/v1/nodes/hot/states/power",
                                        json={"target": "power on"}, timeout=10).status_code)
        return statuses

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        statuses = [s for chunk in pool.map(offer, range(threads)) for s in chunk]
    elapsed = time.monotonic() - started
    accepted = sum(1 for s in statuses if s == 202)
    assert set(statuses) <= {202, 503}
    expected = burst + rate * elapsed
    # Offered 5x the limit, through two servers of two processes each.
    assert len(statuses) >= 4.5 * rate * duration
    assert abs(accepted - expected) <= 0.1 * expected, (accepted, expected, elapsed)


def test_retry_after_is_honest_across_servers(second_api) -> None:
    service, other_url = second_api
    service.http.post(f"{service.url}/v1/nodes", json={"name": "n", "driver": "fake"}, timeout=10)
    service.http.patch(f"{service.url}/v1/throttle", json={"client_write_rate": 0.5, "client_write_burst": 1},
                       timeout=10)
    time.sleep(1.0)
    put = {"json": {"target": "power on"}, "timeout": 10}
    assert service.http.put(f"{service.url}/v1/nodes/n/states/power", **put).status_code == 202
    refused = service.http.put(f"{other_url}/v1/nodes/n/states/power", **put)
    assert refused.status_code == 503 and refused.json()["code"] == "rate_limited"
    time.sleep(int(refused.headers["Retry-After"]))
    assert service.http.put(f"{other_url}/v1/nodes/n/states/power", **put).status_code == 202


def test_cli_manages_tokens_and_throttle(service_factory) -> None:
    service = service_factory(workers=0)
    created = json.loads(service.cli("--json", "token", "create", "--role", "reader", "--name", "dash").stdout)
    reader = created["token"]
    assert created["role"] == "reader" and reader.startswith("cdt_")
    listed = service.cli("token", "list").stdout
    assert "dash" in listed and "reader" in listed and reader not in listed
    # The reader may look but not touch.
    assert service.cli("--token", reader, "node", "list").returncode == 0
    refused = service.cli("--token", reader, "node", "create", "--driver", "fake", check=False)
    assert refused.returncode == 3 and "forbidden" in refused.stderr
    shown = service.cli("throttle", "set", "write_rate=12.5", "max_queue_depth=99").stdout
    assert "12.5" in shown and "99" in shown
    # The other API process may still hold the old knobs for throttle_settings.LOCAL_TTL
    # (documented: "every API and conductor process applies them within a second").
    deadline = time.monotonic() + 1 + throttle_settings.LOCAL_TTL
    while json.loads(service.cli("--json", "throttle", "show").stdout)["max_queue_depth"] != 99:
        assert time.monotonic() < deadline, "the change did not reach every API process within a second"
        time.sleep(0.1)
    bad = service.cli("throttle", "set", "write_rate=-3", check=False)
    assert bad.returncode == 3 and "validation_error" in bad.stderr
    service.cli("token", "revoke", created["id"])
    # Each API process remembers a look-up for tokens.CACHE_TTL (documented:
    # "refused everywhere within 1 s"); the next call may reach another one.
    time.sleep(tokens.CACHE_TTL + 0.2)
    gone = service.cli("--token", reader, "node", "list", check=False)
    assert gone.returncode == 3 and "unauthorized" in gone.stderr
    # localhost is the same service: the local admin token goes there too.
    assert "dash" in service.cli("--url", service.url.replace("127.0.0.1", "localhost"), "token", "list",
                                 "--all").stdout


def test_the_local_admin_token_is_private_and_kept_across_restarts(settings, service_factory) -> None:
    service = service_factory(workers=0)
    path = settings.data_dir / "admin.token"
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_text()
    assert requests.get(f"{service.url}/v1/nodes", timeout=5).status_code == 401
    assert requests.get(f"{service.url}/v1/nodes", headers=bearer(first.strip()), timeout=5).status_code == 200
    service.stop()
    again = service_factory(workers=0)
    assert path.read_text() == first
    assert again.http.get(f"{again.url}/v1/throttle", timeout=5).status_code == 200


def test_direct_token_creation_needs_no_api(settings, service_factory) -> None:
    service = service_factory(workers=0)
    result = subprocess.run([sys.executable, "-m", "conductor", "--json", "token", "create", "--role", "operator",
                             "--direct"], env=service.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    secret = json.loads(result.stdout)["token"]
    response = requests.post(f"{service.url}/v1/nodes", json={"name": "d", "driver": "fake"},
                             headers=bearer(secret), timeout=5)
    assert response.status_code == 201
