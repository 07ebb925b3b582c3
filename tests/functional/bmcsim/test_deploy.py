"""Provisioning end to end: `conductor up`, simulated BMCs over real IPMI, and the simulated agent.

The agent reads the boot config the conductor wrote into the service's
TFTP root (``<data_dir>/pxe``) when its machine network-boots, and calls the
service's API back with the token it found there.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from conductor import bootfiles
from conductor.bmcsim import BMCSpec, Fleet
from conductor.bmcsim.agent import SimAgent
from tests.functional.bmcsim.test_ipmi_driver import FAST_IPMI, enroll, node_of

IMAGE = "ubuntu"  # registered by the image fixture


@pytest.fixture(autouse=True)
def image(settings) -> str:  # type: ignore[no-untyped-def]
    """Image ``ubuntu``, registered the way an operator does (``conductor image add``)."""
    source = settings.data_dir / "ubuntu-24.04.raw"
    source.write_bytes(b"\x00" * 65536)
    subprocess.run([sys.executable, "-m", "conductor", "image", "add", IMAGE, str(source),
                    "--data-dir", str(settings.data_dir)], check=True, capture_output=True,
                   env={**os.environ, "DATABASE_URL": settings.sqlalchemy_url})
    return IMAGE


@pytest.fixture
def agent(fleet: Fleet, settings) -> Iterator[SimAgent]:  # type: ignore[no-untyped-def]
    """Simulated agents for the shared fleet, reading this test's TFTP root."""
    with SimAgent(fleet, settings.pxe_dir, boot_delay=0.3, work_duration=0.3, seed=1) as running:
        yield running


@pytest.fixture
def deploy_service(service_factory):  # type: ignore[no-untyped-def]
    def start(**env: str):  # type: ignore[no-untyped-def]
        service = service_factory(workers=2, env={**FAST_IPMI, "CONDUCTOR_WAIT_CHECK_INTERVAL": "0.2", **env})
        response = service.http.patch(f"{service.url}/v1/throttle", json={"bmc_min_interval": 0}, timeout=10)
        assert response.status_code == 200, response.text
        return service
    return start


def provision(service, name: str, target: str, **params: object) -> str:  # type: ignore[no-untyped-def]
    if target in ("active", "rebuild"):
        params.setdefault("image_source", IMAGE)
    response = service.http.put(f"{service.url}/v1/nodes/{name}/states/provision",
                                json={"target": target, **params}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def run(service, name: str, target: str, expect: str = "succeeded", timeout: float = 60) -> dict:  # type: ignore[no-untyped-def]
    done = service.wait_request(provision(service, name, target), timeout=timeout)
    assert done["state"] == expect, done
    return done


def wait_state(service, name: str, state: str, timeout: float = 30) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = node_of(service, name)
        if node["provision_state"] == state:
            return node
        time.sleep(0.05)
    raise AssertionError(f"{name} did not reach {state}: {node}")


def ready_node(service, bmc: BMCSpec, agent: SimAgent, available: bool = True) -> None:  # type: ignore[no-untyped-def]
    enroll(service, bmc)
    run(service, bmc.name, "manage")
    if available:
        run(service, bmc.name, "provide")


def test_full_lifecycle(deploy_service, fleet: Fleet, agent: SimAgent,
                        new_bmc: Callable[..., BMCSpec]) -> None:
    service = deploy_service()
    bmc = new_bmc(delay=0.1)
    ready_node(service, bmc, agent, available=False)
    run(service, bmc.name, "inspect")
    node = node_of(service, bmc.name)
    assert node["properties"]["cpus"] > 0 and node["properties"]["nics"][0]["mac"].startswith("52:54:00:")
    run(service, bmc.name, "provide")
    assert node_of(service, bmc.name)["provision_state"] == "available"
    agent.configure(bmc.name, fetch_image=True)  # downloads the image from the conductor and checks it
    deploy = run(service, bmc.name, "active")
    node = node_of(service, bmc.name)
    assert node["provision_state"] == "active" and node["power_state"] == "power on"
    state = fleet.state(bmc.name)
    assert state["power"] == "on" and state["boot_device"] == "disk" and state["boot_persistent"] is True
    notes = [what for _t, name, what in agent.log if name == bmc.name]
    assert any("running write_image" in n for n in notes) and notes[-1].startswith("booted from disk")
    assert any(n.startswith("downloaded the image (65536 bytes") for n in notes)
    history = service.http.get(f"{service.url}/v1/nodes/{bmc.name}/history?limit=200", timeout=10).json()["history"]
    steps = [h for h in history if h["event"] == "deploy.step" and h["request_id"] == deploy["id"]]
    assert len(steps) == 6 and all(h["conductor"] for h in steps)
    assert any(h["event"] == "agent.result" and "write_image succeeded" in h["message"] for h in history)
    run(service, bmc.name, "rebuild")
    run(service, bmc.name, "deleted")
    node = node_of(service, bmc.name)
    assert node["provision_state"] == "available" and node["power_state"] == "power off"
    logs = "".join(p.read_text() for p in (service.settings.data_dir / "logs").glob("*.log"))
    assert bmc.password not in logs


def test_remote_images_are_downloaded_once_and_verified(deploy_service, agent: SimAgent,
                                                        new_bmc: Callable[..., BMCSpec]) -> None:
    body = os.urandom(300_000)
    hits: list[str] = []

    class Source(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    source = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Source)
    threading.Thread(target=source.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{source.server_address[1]}/disk.img"
    try:
        service = deploy_service()
        bmcs = [new_bmc(), new_bmc()]
        for bmc in bmcs:
            ready_node(service, bmc, agent)
            agent.configure(bmc.name, fetch_image=True)
        ids = [provision(service, bmc.name, "active", image_source=url,
                         image_checksum=hashlib.sha256(body).hexdigest()) for bmc in bmcs]
        assert [service.wait_request(i, timeout=60)["state"] for i in ids] == ["succeeded", "succeeded"]
        assert hits == ["/disk.img"]  # one download for both deploys
        for bmc in bmcs:
            notes = [what for _t, name, what in agent.log if name == bmc.name]
            assert any(n.startswith(f"downloaded the image ({len(body)} bytes") for n in notes)
        # A wrong checksum fails the deploy before the node is touched.
        run(service, bmcs[0].name, "deleted")
        done = service.wait_request(provision(service, bmcs[0].name, "active", image_source=url,
                                              image_checksum="0" * 64), timeout=60)
        node = node_of(service, bmcs[0].name)
        assert done["state"] == "failed" and node["provision_state"] == "deploy failed"
        assert f"checksum mismatch for {url}: expected sha256 {'0' * 64}" in node["last_error"]
        assert node["power_state"] == "power off"
    finally:
        source.shutdown()
        source.server_close()


def test_agent_failure_is_deploy_failed(deploy_service, agent: SimAgent,
                                        new_bmc: Callable[..., BMCSpec]) -> None:
    service = deploy_service()
    bmc = new_bmc()
    ready_node(service, bmc, agent)
    agent.configure(bmc.name, fail="no space left on /dev/sda")
    done = run(service, bmc.name, "active", expect="failed")
    assert "no space left on /dev/sda" in done["error"]
    node = node_of(service, bmc.name)
    assert node["provision_state"] == "deploy failed"
    assert node["last_error"] == "The agent failed to write image: no space left on /dev/sda"
    agent.reset(bmc.name)
    run(service, bmc.name, "active")


def test_agent_that_never_calls_back_times_out(deploy_service, agent: SimAgent,
                                               new_bmc: Callable[..., BMCSpec]) -> None:
    service = deploy_service(CONDUCTOR_DEPLOY_AGENT_TIMEOUT="1")
    bmc = new_bmc()
    ready_node(service, bmc, agent)
    agent.configure(bmc.name, silent=True)
    done = run(service, bmc.name, "active", expect="failed")
    node = node_of(service, bmc.name)
    assert node["provision_state"] == "deploy failed"
    assert "deploy_agent_timeout" in node["last_error"] and "1 s" in node["last_error"]
    assert done["error"] == node["last_error"]


@pytest.mark.parametrize(("target", "wait", "failed"), [
    ("active", "wait call-back", "deploy failed"),
    ("clean", "clean wait", "clean failed"),
    ("inspect", "inspect wait", "inspect failed"),
])
def test_abort_in_each_wait_state(deploy_service, agent: SimAgent, new_bmc: Callable[..., BMCSpec],
                                  target: str, wait: str, failed: str) -> None:
    service = deploy_service()
    bmc = new_bmc()
    ready_node(service, bmc, agent, available=target == "active")
    agent.configure(bmc.name, silent=True)
    request_id = provision(service, bmc.name, target)
    wait_state(service, bmc.name, wait)
    assert service.http.get(f"{service.url}/v1/requests/{request_id}", timeout=10).json()["state"] == "waiting"
    response = service.http.put(f"{service.url}/v1/nodes/{bmc.name}/states/provision",
                                json={"target": "abort"}, timeout=10)
    assert response.status_code == 202, response.text
    assert service.wait_request(request_id)["state"] == "cancelled"
    node = node_of(service, bmc.name)
    assert node["provision_state"] == failed and node["last_error"].startswith(f"Aborted in {wait}")


def test_bad_agent_token_is_refused(deploy_service, agent: SimAgent, new_bmc: Callable[..., BMCSpec]) -> None:
    service = deploy_service()
    bmc = new_bmc()
    ready_node(service, bmc, agent)
    agent.configure(bmc.name, token="not-the-token")
    request_id = provision(service, bmc.name, "active")
    deadline = time.monotonic() + 20
    while not any(n == bmc.name and "refused (401)" in w for _t, n, w in agent.log):
        assert time.monotonic() < deadline, agent.log[-5:]
        time.sleep(0.05)
    assert node_of(service, bmc.name)["provision_state"] == "wait call-back"
    real = bootfiles.read(service.settings.pxe_dir, bootfiles.key_for(bmc.driver_info(), ""))["token"]
    response = service.http.delete(f"{service.url}/v1/requests/{request_id}", timeout=10)
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert node_of(service, bmc.name)["provision_state"] == "deploy failed"
    # The real token never leaves the boot config: not in the API, history or logs.
    seen = [service.http.get(f"{service.url}{path}", timeout=10).text for path in (
        f"/v1/nodes/{bmc.name}", f"/v1/nodes/{bmc.name}/history?limit=200", f"/v1/requests/{request_id}")]
    seen += [p.read_text() for p in (service.settings.data_dir / "logs").glob("*.log")]
    assert not any(real in text for text in seen)


def test_conductor_restart_mid_deploy(deploy_service, agent: SimAgent, new_bmc: Callable[..., BMCSpec]) -> None:
    service = deploy_service()
    bmc = new_bmc()
    ready_node(service, bmc, agent)
    agent.configure(bmc.name, boot_delay=2.0)
    request_id = provision(service, bmc.name, "active")
    wait_state(service, bmc.name, "wait call-back")
    service.stop()  # the agent boots and heartbeats while nothing answers
    service.start()
    done = service.wait_request(request_id, timeout=60)
    assert done["state"] == "succeeded", done
    assert node_of(service, bmc.name)["provision_state"] == "active"
