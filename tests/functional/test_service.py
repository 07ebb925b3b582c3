"""The real thing: `conductor up` (gunicorn API + worker processes), real Redis, real DB."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import threading
import time

import requests
import urllib3


def create(service, name, **driver_info):  # type: ignore[no-untyped-def]
    response = service.http.post(f"{service.url}/v1/nodes", json={"name": name, "driver": "fake",
                                                              "driver_info": driver_info}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def put(service, node, kind, target):  # type: ignore[no-untyped-def]
    response = service.http.put(f"{service.url}/v1/nodes/{node}/states/{kind}", json={"target": target}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["id"]


#: The fake deploy interface never fetches the image; a URL needs its checksum all the same.
IMAGE_URL = "http://images.example/ubuntu-24.04.img"
IMAGE_SHA256 = "0" * 64


def test_cli_drives_a_node_through_its_life(service_factory) -> None:
    service = service_factory(workers=2)
    service.cli("node", "create", "--driver", "fake", "--name", "life", "-i", "fake_delay=0.2")
    deploy = ["node", "deploy", "--image", IMAGE_URL, "--checksum", IMAGE_SHA256]
    for command in (["node", "manage"], ["node", "provide", "--erase", "full"], deploy,
                    ["node", "reboot"], ["node", "power", "soft-off"], ["node", "undeploy"]):
        result = service.cli(*command, "life", "--wait")
        assert "succeeded" in result.stderr
    shown = json.loads(service.cli("--json", "node", "show", "life").stdout)
    assert shown["provision_state"] == "available" and shown["power_state"] == "power off"
    listed = service.cli("request", "list", "--node", "life").stdout
    assert listed.count("succeeded") == 6
    requests_of_life = service.http.get(f"{service.url}/v1/requests", params={"node": "life"}, timeout=10).json()
    (provide,) = [r for r in requests_of_life["requests"] if r["target"] == "provide"]
    assert provide["params"]["erase"] == "full"
    conductors = json.loads(service.cli("--json", "conductors").stdout)
    assert sum(c["alive"] for c in conductors) == 2


def test_cli_wait_exits_non_zero_when_the_request_fails(service_factory) -> None:
    service = service_factory()
    service.cli("node", "create", "--driver", "fake", "--name", "bad", "-i", "fake_fail=no BMC")
    result = service.cli("node", "manage", "bad", "--wait", check=False)
    assert result.returncode == 1
    assert "no BMC" in result.stderr
    result = service.cli("node", "deploy", "bad", "--image", IMAGE_URL, "--checksum", IMAGE_SHA256, check=False)
    assert result.returncode == 3 and "invalid_transition" in result.stderr


def test_fifty_simultaneous_puts_across_api_processes_accept_exactly_one(service_factory) -> None:
    service = service_factory(api_workers=4)
    node = create(service, "hot", fake_delay=2)
    barrier = threading.Barrier(50)
    # Only targets that take fake_delay from the node's initial "power off":
    # a winning "power off" would finish at once and let a later PUT win too.
    targets = ["power on", "rebooting"]

    def shoot(i: int) -> tuple[int, str | None]:
        session = requests.Session()
        session.headers.update(service.auth_headers)
        barrier.wait()
        response = session.put(f"{service.url}/v1/nodes/hot/states/power",
                               json={"target": targets[i % 2]}, timeout=30)
        body = response.json()
        return response.status_code, body.get("id") or body.get("request_id")

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(shoot, range(50)))
    accepted_ids = {rid for status, rid in results if status == 202}
    assert len(accepted_ids) == 1, results
    (winner,) = accepted_ids
    assert all(status in (202, 409) for status, _ in results)
    assert all(rid == winner for _, rid in results)  # every 409 names the winner
    listed = service.http.get(f"{service.url}/v1/requests", params={"node": node["uuid"]}, timeout=10).json()
    assert [r["id"] for r in listed["requests"]] == [winner]


def test_killed_worker_is_noticed_and_its_request_failed(service_factory) -> None:
    service = service_factory(env={"CONDUCTOR_HEARTBEAT_INTERVAL": "0.5", "CONDUCTOR_HEARTBEAT_TIMEOUT": "3",
                                   "CONDUCTOR_SWEEP_INTERVAL": "0.5"}, workers=2)
    # Every BMC call blocks 30 s: the step is in progress when the worker dies.
    create(service, "victim", fake_hang=30)
    request_id = put(service, "victim", "provision", "manage")
    deadline = time.monotonic() + 10
    holder = None
    while holder is None:
        assert time.monotonic() < deadline, "no conductor took the request"
        holder = service.http.get(f"{service.url}/v1/requests/{request_id}", timeout=5).json()["conductor"]
        time.sleep(0.05)
    pid = next(c["pid"] for c in service.http.get(f"{service.url}/v1/conductors", timeout=5).json()["conductors"]
               if c["name"] == holder)
    os.kill(pid, signal.SIGKILL)
    # wait_request gives up after 20 s: noticed long before RQ's 600 s cleanup.
    finished = service.wait_request(request_id, timeout=20)
    assert finished["state"] == "failed"
    assert f"Conductor {holder} stopped" in finished["error"]
    node = service.http.get(f"{service.url}/v1/nodes/victim", timeout=5).json()
    assert node["reservation"] is None and node["request_id"] is None
    assert node["provision_state"] == "enroll"  # verifying failed back to enroll
    assert "stopped while running" in node["last_error"]
    # The supervisor restarted the killed worker: two conductors alive again.
    deadline = time.monotonic() + 20
    while sum(c["alive"] for c in service.http.get(f"{service.url}/v1/conductors", timeout=5).json()["conductors"]) < 2:
        assert time.monotonic() < deadline, "killed worker was not restarted"
        time.sleep(0.2)


def test_data_survives_a_restart(settings, service_factory) -> None:
    service = service_factory()
    create(service, "keep")
    request_id = put(service, "keep", "power", "power on")
    assert service.wait_request(request_id)["state"] == "succeeded"
    service.stop()
    again = service_factory()
    node = again.http.get(f"{again.url}/v1/nodes/keep", timeout=5).json()
    assert node["power_state"] == "power on"
    assert again.http.get(f"{again.url}/v1/requests/{request_id}", timeout=5).json()["state"] == "succeeded"


def test_cli_import_set_cancel_history_delete(service_factory, tmp_path) -> None:
    service = service_factory()
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"nodes": [
        {"name": f"imp-{i}", "driver": "fake", "driver_info": {"fake_delay": 5}} for i in range(3)]}))
    assert "Enrolled 3" in service.cli("node", "import", str(inventory)).stdout
    assert "skipped 3" in service.cli("node", "import", str(inventory)).stdout
    listed = json.loads(service.cli("--json", "node", "list").stdout)
    assert [n["name"] for n in listed] == ["imp-0", "imp-1", "imp-2"]
    service.cli("node", "set", "imp-0", "--maintenance", "--reason", "fan")
    assert json.loads(service.cli("--json", "node", "list", "--maintenance").stdout)[0]["name"] == "imp-0"
    # The only worker is stuck in a slow BMC call on imp-0: imp-1's request stays queued.  (8 s: the
    # five CLI calls below must all come while it is stuck; 3 s was too short on a loaded machine.)
    service.cli("node", "set", "imp-0", "-i", "fake_hang=8")
    busy = json.loads(service.cli("--json", "node", "power", "on", "imp-0").stdout)
    deadline = time.monotonic() + 10
    while json.loads(service.cli("--json", "request", "show", busy["id"]).stdout)["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    queued = json.loads(service.cli("--json", "node", "power", "on", "imp-1").stdout)
    assert "cancelled" in service.cli("request", "cancel", queued["id"]).stdout
    result = service.cli("request", "cancel", busy["id"], check=False)
    assert result.returncode == 3 and "request_not_cancellable" in result.stderr
    history = json.loads(service.cli("--json", "node", "history", "imp-1").stdout)
    assert history[0]["event"] == "request.cancelled"
    states = json.loads(service.cli("--json", "node", "states", "imp-2").stdout)
    assert states["provision_state"] == "enroll"
    service.cli("node", "delete", "imp-2")
    result = service.cli("node", "show", "imp-2", check=False)
    assert result.returncode == 3 and "node_not_found" in result.stderr


def test_cli_ports_import_create_list_delete(service_factory, tmp_path) -> None:
    service = service_factory()
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"nodes": [
        {"name": "rack-1", "driver": "fake", "ports": ["52:54:00:00:01:01", "52-54-00-00-01-02"]}]}))
    assert "Enrolled 1" in service.cli("node", "import", str(inventory)).stdout
    service.cli("node", "create", "--driver", "fake", "--name", "rack-2", "--port", "525400000201")
    created = json.loads(service.cli("--json", "port", "create", "rack-2", "52:54:00:00:02:02").stdout)
    assert created["address"] == "52:54:00:00:02:02"
    listed = json.loads(service.cli("--json", "port", "list", "--node", "rack-1").stdout)
    assert [p["address"] for p in listed] == ["52:54:00:00:01:01", "52:54:00:00:01:02"]
    assert len(json.loads(service.cli("--json", "port", "list").stdout)) == 4
    taken = service.cli("port", "create", "rack-2", "52:54:00:00:01:01", check=False)
    assert taken.returncode == 3 and "port_address_in_use" in taken.stderr
    bad = service.cli("port", "create", "rack-2", "not-a-mac", check=False)
    assert bad.returncode == 3 and "validation_error" in bad.stderr
    service.cli("port", "delete", created["uuid"])
    assert [p["address"] for p in json.loads(service.cli("--json", "port", "list", "--node", "rack-2").stdout)] \
        == ["52:54:00:00:02:01"]
    shown = json.loads(service.cli("--json", "port", "show", listed[0]["uuid"]).stdout)
    assert shown == listed[0]


def test_db_upgrade_command(settings, tmp_path) -> None:
    import subprocess
    import sys

    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite'}", CONDUCTOR_DATA_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "conductor", "db", "upgrade"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    from conductor import database

    assert f"Schema at {database.head_revision()}." in result.stdout


def test_a_slow_boot_file_download_does_not_hold_the_api_process(service_factory) -> None:
    """One API process: a client reading a large boot file slowly leaves the API answering others.

    A machine fetching its initramfs over a slow link (or a stalled agent
    download) holds one thread of the threaded worker; with gunicorn's sync
    worker it would hold the whole process and this GET would wait for it.
    """
    service = service_factory(workers=0, api_workers=1)
    ramdisk_dir = service.settings.data_dir / "ramdisk"
    ramdisk_dir.mkdir(exist_ok=True)
    (ramdisk_dir / "agent.initramfs").write_bytes(os.urandom(1 << 20) * 64)  # far more than socket buffers
    with requests.get(f"{service.url}/v1/boot/files/agent.initramfs", stream=True, timeout=30) as slow:
        assert slow.status_code == 200 and slow.headers["Content-Length"] == str(64 << 20)
        first = slow.raw.read(65536)  # the server now blocks writing the rest
        assert len(first) == 65536
        answered = service.http.get(f"{service.url}/v1/nodes", timeout=15)
        assert answered.status_code == 200, answered.text
        again = requests.get(f"{service.url}/v1/boot/files/agent.initramfs", headers={"Range": "bytes=0-15"},
                             timeout=15)
        assert again.status_code == 206 and again.content == first[:16]


def test_a_client_that_stops_reading_a_download_is_dropped_after_the_client_timeout(service_factory) -> None:
    """A stalled download frees its thread after ``api_client_timeout``: the connection ends short."""
    service = service_factory(workers=0, api_workers=1, env={"CONDUCTOR_API_CLIENT_TIMEOUT": "1"})
    ramdisk_dir = service.settings.data_dir / "ramdisk"
    ramdisk_dir.mkdir(exist_ok=True)
    size = 64 << 20
    (ramdisk_dir / "agent.initramfs").write_bytes(bytes(size))
    with requests.get(f"{service.url}/v1/boot/files/agent.initramfs", stream=True, timeout=30) as stalled:
        assert stalled.raw.read(65536)
        time.sleep(4)  # the server's send blocks longer than its timeout
        received = 65536
        with contextlib.suppress(requests.RequestException, urllib3.exceptions.HTTPError):
            for piece in stalled.raw.stream(1 << 20, decode_content=False):
                received += len(piece)
        assert received < size
    assert service.http.get(f"{service.url}/v1/nodes", timeout=15).status_code == 200
