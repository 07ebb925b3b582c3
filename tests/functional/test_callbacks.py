"""Callbacks over real processes: `conductor up` with its callback worker, a
receiver that never answers, and a callback worker SIGKILLed mid-delivery."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.callback_helpers import Receiver, Reply, deliveries, receiver_fixture, verify_signature
from tests.conftest import drain

FAST = {"CONDUCTOR_CALLBACK_POLL_INTERVAL": "0.1", "CONDUCTOR_CALLBACK_RETRY_SCHEDULE": "0.2",
        "CONDUCTOR_CALLBACK_JITTER": "0"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiver_fixture()


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout} s")


def test_up_delivers_signed_callbacks_and_subscriptions(service_factory, receiver) -> None:
    service = service_factory(env=FAST)
    secret = service.cli("callbacks", "rotate-secret").stdout.strip()
    assert secret.startswith("whsec_")
    shown = service.cli("callbacks", "secret").stdout
    assert "fingerprint" in shown and secret not in shown
    created = json.loads(service.cli("--json", "subscription", "create", receiver.url("/sub"),
                                     "-e", "node.power_state.*", "-e", "request.finished").stdout)
    service.cli("node", "create", "--driver", "fake", "--name", "n1")
    result = service.cli("--json", "node", "power", "on", "n1", "--wait", "--callback-url", receiver.url("/req"))
    request_id = json.loads(result.stdout)["id"]

    def delivered() -> dict | None:
        shown = json.loads(service.cli("--json", "request", "show", request_id).stdout)
        return shown if shown["callback"]["state"] == "delivered" else None

    shown = wait_until(delivered, what="callback delivered")
    assert shown["callback"]["attempts"] == 1 and shown["callback"]["last_status"] == 200
    (own,) = receiver.at("/req")
    assert verify_signature(secret, own.headers, own.body)
    assert own.json["data"]["request"]["id"] == request_id

    def all_delivered() -> list | None:
        listed = service.http.get(f"{service.url}/v1/subscriptions/{created['id']}/deliveries", timeout=10).json()
        states = [d["state"] for d in listed["deliveries"]]
        return states if states and set(states) == {"delivered"} else None

    states = wait_until(all_delivered, what="subscription deliveries delivered")
    assert len(receiver.at("/sub")) == len(states)
    assert all(verify_signature(secret, r.headers, r.body) for r in receiver.at("/sub"))
    types = [r.json["type"] for r in receiver.at("/sub")]
    assert types[-1] == "request.finished" and "node.power_state.changed" in types
    assert "delivered" in service.cli("subscription", "deliveries", created["id"]).stdout
    assert created["id"] in service.cli("subscription", "list").stdout
    service.cli("subscription", "delete", created["id"])
    gone = service.cli("subscription", "show", created["id"], check=False)
    assert gone.returncode == 3 and "subscription_not_found" in gone.stderr


def test_a_receiver_that_never_answers_does_not_delay_power_requests(service_factory, receiver) -> None:
    service = service_factory(env={**FAST, "CONDUCTOR_CALLBACK_TIMEOUT": "120"})
    receiver.default = Reply(200, hold=300)  # every POST waits until released
    service.http.post(f"{service.url}/v1/subscriptions", json={"url": receiver.url("/slow"), "events": ["*"]},
                  timeout=10).raise_for_status()
    names = [f"n{i}" for i in range(3)]
    for name in names:
        service.http.post(f"{service.url}/v1/nodes", json={"name": name, "driver": "fake"}, timeout=10)
    for target in ("power on", "power off", "rebooting"):
        ids = []
        for name in names:
            response = service.http.put(f"{service.url}/v1/nodes/{name}/states/power",
                                    json={"target": target, "callback_url": receiver.url("/own")}, timeout=10)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        assert [service.wait_request(i)["state"] for i in ids] == ["succeeded"] * 3
    # All nine requests finished while the only callback worker is still
    # stuck on its very first POST.
    receiver.wait_arrived(1)
    assert receiver.arrived == 1 and receiver.received == []
    pending = service.http.get(f"{service.url}/v1/requests/{ids[-1]}", timeout=10).json()["callback"]
    assert pending["state"] == "pending"
    receiver.release()
    wait_until(lambda: service.http.get(f"{service.url}/v1/requests/{ids[-1]}", timeout=10)
               .json()["callback"]["state"] == "delivered", what="callbacks delivered after release")
    assert len(receiver.at("/own")) >= 1


def _callback_worker(settings, env_extra: dict[str, str]) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    env = dict(os.environ)
    env.update(
        CONDUCTOR_DATA_DIR=str(settings.data_dir),
        DATABASE_URL=settings.sqlalchemy_url,
        REDIS_URL=settings.redis_url,
        CONDUCTOR_REDIS_NAMESPACE=settings.redis_namespace,
        **env_extra,
    )
    with open(settings.data_dir / "callback-worker.log", "ab") as log:  # the child writes to its own copy
        return subprocess.Popen([sys.executable, "-m", "conductor", "callback-worker"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_worker_killed_mid_delivery_is_resumed_by_the_next(settings, ctx, client, conductor_ctx, receiver) -> None:
    receiver.script(Reply(200, hold=300))  # the first POST hangs
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    response = client.put("/v1/nodes/n1/states/power",
                          json={"target": "power on", "callback_url": receiver.url("/cb")})
    request_id = response.json["id"]
    drain(conductor_ctx)  # the request finishes in this process; its delivery is queued
    workers: list[subprocess.Popen[bytes]] = []
    try:
        workers.append(_callback_worker(settings, FAST))
        receiver.wait_arrived(1)
        (row,) = deliveries(ctx)
        assert row.state == "pending" and row.attempts == 1
        assert row.claimed_by == f"{socket.gethostname()}:{workers[0].pid}"
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait(10)
        workers.append(_callback_worker(settings, FAST))
        wait_until(lambda: client.get(f"/v1/requests/{request_id}").json["callback"]["state"] == "delivered",
                   what="delivery resumed by the new worker")
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    callback = client.get(f"/v1/requests/{request_id}").json["callback"]
    assert callback["attempts"] == 2 and callback["last_status"] == 200
    receiver.release()
    both = receiver.wait_received(2)
    assert {r.headers["webhook-id"] for r in both} == {callback["id"]}
