"""The redfish driver end to end: `conductor up` (API + workers) driving simulated BMCs over real Redfish (HTTPS).

The simulator's Redfish services are independent of the driver's code (its
own HTTP server and resource tree); tests/functional/bmcsim/test_redfish_sim.py
checks them with sushy alone, and bench/redfish_validator.py with DMTF's
validator.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from conductor import keys, secretbox
from conductor.bmcsim import BMCSpec, Fleet
from conductor.bmcsim.agent import inventory as agent_inventory
from tests.functional.bmcsim.test_ipmi_driver import node_of, put, wait_node

#: Quick bounds so that failure tests do not take the production ones.
FAST_REDFISH = {"CONDUCTOR_REDFISH_TIMEOUT": "1", "CONDUCTOR_REDFISH_CONNECT_TIMEOUT": "1",
                "CONDUCTOR_REDFISH_RETRIES": "1", "CONDUCTOR_REDFISH_BACKOFF": "0.1",
                "CONDUCTOR_POWER_POLL_INITIAL": "0.1", "CONDUCTOR_POWER_POLL_MAX": "0.5"}


@pytest.fixture
def redfish_service(service_factory):  # type: ignore[no-untyped-def]
    """A running service with quick Redfish bounds and no command pacing."""
    def start(**env: str):  # type: ignore[no-untyped-def]
        service = service_factory(workers=2, env={**FAST_REDFISH, **env})
        response = service.http.patch(f"{service.url}/v1/throttle", json={"bmc_min_interval": 0}, timeout=10)
        assert response.status_code == 200, response.text
        return service
    return start


def info_of(fleet: Fleet, bmc: BMCSpec, **overrides: Any) -> dict[str, Any]:
    info = fleet.redfish_driver_info(bmc.name)
    assert info is not None
    info.update(overrides)
    return {k: v for k, v in info.items() if v is not None}


def enroll(service, fleet: Fleet, bmc: BMCSpec, **overrides: Any) -> dict:  # type: ignore[no-untyped-def]
    response = service.http.post(f"{service.url}/v1/nodes", json={
        "name": bmc.name, "driver": "redfish", "driver_info": info_of(fleet, bmc, **overrides)}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def manage(service, bmc: BMCSpec) -> dict:  # type: ignore[no-untyped-def]
    done = service.wait_request(put(service, bmc.name, "provision", "manage"))
    assert done["state"] == "succeeded", done
    return node_of(service, bmc.name)


def history(service, name: str) -> str:  # type: ignore[no-untyped-def]
    return service.http.get(f"{service.url}/v1/nodes/{name}/history", params={"limit": 100}, timeout=10).text


def assert_no_password(service, bmc: BMCSpec, *texts: str, extra: str | None = None) -> None:  # type: ignore[no-untyped-def]
    log = (service.settings.data_dir / "up.log").read_text()
    for text in (*texts, log):
        assert bmc.password not in text
        if extra:
            assert extra not in text


def test_manage_proves_credentials_and_reads_power(redfish_service, redfish_fleet: Fleet,
                                                   new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    redfish_fleet.set_power(bmc.name, "on")
    created = enroll(service, redfish_fleet, bmc)
    assert created["driver_info"]["redfish_password"] == "******"
    node = manage(service, bmc)
    assert node["provision_state"] == "manageable" and node["power_state"] == "power on"
    assert node["last_error"] is None
    assert_no_password(service, bmc, json.dumps(node), history(service, bmc.name))


def test_system_id_may_be_left_out_when_the_service_has_one_system(
        redfish_service, redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc, redfish_system_id=None)
    assert manage(service, bmc)["power_state"] == "power off"
    # ... and the id alone (not the path) names it too
    response = service.http.patch(f"{service.url}/v1/nodes/{bmc.name}",
                                  json={"driver_info": {"redfish_system_id": bmc.name}}, timeout=10)
    assert response.status_code == 200, response.text
    done = service.wait_request(put(service, bmc.name, "power", "power on"))
    assert done["state"] == "succeeded", done
    assert redfish_fleet.state(bmc.name)["power"] == "on"


def test_wrong_password_fails_manage_back_to_enroll(redfish_service, redfish_fleet: Fleet,
                                                     new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc, redfish_password="not-the-password")
    done = service.wait_request(put(service, bmc.name, "provision", "manage"))
    assert done["state"] == "failed"
    assert f"BMC https://{bmc.host}:" in done["error"]
    assert f"rejected the credentials of user '{bmc.username}' (401)" in done["error"]
    assert "redfish_password" in done["error"]
    node = node_of(service, bmc.name)
    assert node["provision_state"] == "enroll"
    assert "rejected the credentials" in node["last_error"]
    assert_no_password(service, bmc, done["error"], node["last_error"], history(service, bmc.name),
                       extra="not-the-password")


def test_a_bmc_that_rejects_the_password_fails_manage(redfish_service, redfish_fleet: Fleet,
                                                      new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc)
    redfish_fleet.set_fault(bmc.name, reject_password=True)
    done = service.wait_request(put(service, bmc.name, "provision", "manage"))
    assert done["state"] == "failed" and "(401)" in done["error"], done
    assert node_of(service, bmc.name)["provision_state"] == "enroll"
    assert_no_password(service, bmc, done["error"], history(service, bmc.name))
    # Once the BMC takes the password again, manage goes through.
    redfish_fleet.set_fault(bmc.name, reject_password=False)
    assert manage(service, bmc)["provision_state"] == "manageable"


def test_unknown_system_id_is_named_with_the_systems_there(redfish_service, redfish_fleet: Fleet,
                                                           new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc, redfish_system_id="/redfish/v1/Systems/nope")
    done = service.wait_request(put(service, bmc.name, "provision", "manage"))
    assert done["state"] == "failed"
    assert "has no system /redfish/v1/Systems/nope" in done["error"], done["error"]
    assert f"/redfish/v1/Systems/{bmc.name}" in done["error"] and "redfish_system_id" in done["error"]


def test_every_power_target(redfish_service, redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc(delay=0.3)
    enroll(service, redfish_fleet, bmc)
    manage(service, bmc)
    seen: list[str] = []
    hook = redfish_fleet.on_power_change(lambda event: seen.append(event.cause) if event.bmc == bmc.name else None)
    try:
        for target, final in (("power on", "on"), ("power off", "off"), ("power on", "on"),
                              ("rebooting", "on"), ("soft power off", "off"), ("power off", "off")):
            done = service.wait_request(put(service, bmc.name, "power", target))
            assert done["state"] == "succeeded", (target, done)
            assert redfish_fleet.state(bmc.name)["power"] == final, target
            assert node_of(service, bmc.name)["power_state"] == f"power {final}"
        deadline = time.monotonic() + 2
        while len(seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        redfish_fleet.remove_power_hook(hook)
    # The machine (completed by the BMC's shard, as for IPMI): on, off, on, off+on, soft off
    assert seen == ["on", "off", "on", "off", "on", "soft"], seen


def test_soft_power_off_ignored_falls_back_to_hard_off(redfish_service, redfish_fleet: Fleet,
                                                       new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service(CONDUCTOR_SOFT_POWER_OFF_TIMEOUT="0.5")
    bmc = new_redfish_bmc(delay=0.1)
    enroll(service, redfish_fleet, bmc)
    manage(service, bmc)
    redfish_fleet.set_power(bmc.name, "on")
    redfish_fleet.set_fault(bmc.name, ignore_acpi=True)
    done = service.wait_request(put(service, bmc.name, "power", "soft power off"))
    assert done["state"] == "succeeded", done
    assert redfish_fleet.state(bmc.name)["power"] == "off"


def test_stuck_power_fails_with_a_clear_timeout(redfish_service, redfish_fleet: Fleet,
                                                new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service(CONDUCTOR_POWER_TIMEOUT="1.5")
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc)
    manage(service, bmc)
    redfish_fleet.set_fault(bmc.name, stuck=True)
    done = service.wait_request(put(service, bmc.name, "power", "power on"))
    assert done["state"] == "failed"
    assert "Node reports power off" in done["error"] and "timeout 1.5 s" in done["error"]


def test_boot_device_once_and_persistent(redfish_service, redfish_fleet: Fleet,
                                         new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc)
    manage(service, bmc)
    result = service.cli("node", "boot-device", bmc.name, "pxe", "--wait")
    assert "succeeded" in result.stderr
    state = redfish_fleet.state(bmc.name)
    assert (state["boot_device"], state["boot_persistent"]) == ("pxe", False)
    response = service.http.put(f"{service.url}/v1/nodes/{bmc.name}/management/boot_device",
                                json={"boot_device": "disk", "persistent": True}, timeout=10)
    assert response.status_code == 202, response.text
    assert service.wait_request(response.json()["id"])["state"] == "succeeded"
    state = redfish_fleet.state(bmc.name)
    assert (state["boot_device"], state["boot_persistent"]) == ("disk", True)
    shown = service.http.get(f"{service.url}/v1/nodes/{bmc.name}/management/boot_device", timeout=10).json()
    assert (shown["boot_device"], shown["persistent"], shown["source"]) == ("disk", True, "bmc")
    for device in ("cdrom", "bios"):
        response = service.http.put(f"{service.url}/v1/nodes/{bmc.name}/management/boot_device",
                                    json={"boot_device": device}, timeout=10)
        assert service.wait_request(response.json()["id"])["state"] == "succeeded"
        assert redfish_fleet.state(bmc.name)["boot_device"] == device
    # A one-time override is used up by the next boot (the BMC's shard consumes it, as with IPMI).
    done = service.wait_request(put(service, bmc.name, "power", "power on"))
    assert done["state"] == "succeeded", done
    deadline = time.monotonic() + 2
    while redfish_fleet.state(bmc.name)["boot_device"] != "default" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert redfish_fleet.state(bmc.name)["boot_device"] == "default"


def test_inspect_out_of_band_without_an_agent(redfish_service, redfish_fleet: Fleet,
                                              new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc)
    manage(service, bmc)
    # No simulated agent runs here: only the Redfish tree can answer.
    done = service.wait_request(put(service, bmc.name, "provision", "inspect"))
    assert done["state"] == "succeeded", done
    node = node_of(service, bmc.name)
    assert node["provision_state"] == "manageable" and node["power_state"] == "power off"
    hardware = agent_inventory(bmc.index)  # what the same machine's agent would report
    props = node["properties"]
    assert props["cpus"] == hardware["cpus"] and props["memory_mb"] == hardware["memory_mb"]
    assert props["cpu_arch"] == "x86_64" and props["boot_mode"] in ("uefi", "bios")
    assert [d["size_gb"] for d in props["disks"]] == [d["size_gb"] for d in hardware["disks"]]
    assert props["local_gb"] == max(d["size_gb"] for d in hardware["disks"])
    assert props["macs"] == [nic["mac"] for nic in hardware["nics"]]
    ports = service.http.get(f"{service.url}/v1/ports", params={"node": bmc.name}, timeout=10).json()["ports"]
    assert sorted(p["address"] for p in ports) == sorted(props["macs"])
    assert "Inspected out of band over Redfish" in history(service, bmc.name)


def test_agent_inspection_can_be_chosen_instead(redfish_service, redfish_fleet: Fleet,
                                                new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    response = service.http.post(f"{service.url}/v1/nodes", json={
        "name": bmc.name, "driver": "redfish",
        "driver_info": {**info_of(redfish_fleet, bmc), "inspect_interface": "nope"}}, timeout=10)
    assert response.status_code == 400 and "inspect_interface" in response.text
    enroll(service, redfish_fleet, bmc, inspect_interface="agent", deploy_interface="fake")
    manage(service, bmc)
    done = service.wait_request(put(service, bmc.name, "provision", "inspect"))
    assert done["state"] == "succeeded", done
    # the fake deploy interface's inspection, not the Redfish tree's
    assert node_of(service, bmc.name)["properties"]["cpus"] == 4


def test_server_error_fails_with_the_bmcs_status(redfish_service, redfish_fleet: Fleet,
                                                 new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc)
    manage(service, bmc)
    redfish_fleet.set_fault(bmc.name, http_error=500)
    done = service.wait_request(put(service, bmc.name, "power", "power on"))
    assert done["state"] == "failed"
    assert "failed to read the power state: 500" in done["error"], done["error"]
    assert "Simulated failure" in done["error"]  # the BMC's own message
    assert redfish_fleet.state(bmc.name)["power"] == "off"


def test_503_is_honoured_then_bounded(redfish_service, redfish_fleet: Fleet,
                                      new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service(CONDUCTOR_REDFISH_BUSY_TIMEOUT="3")
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc)
    manage(service, bmc)
    # Busy for a while, then well: the request waits it out (Retry-After 1 s) and succeeds.
    redfish_fleet.set_fault(bmc.name, http_error=503, retry_after=1)
    timer = threading.Timer(1.5, lambda: redfish_fleet.set_fault(bmc.name, http_error=0))
    timer.start()
    try:
        done = service.wait_request(put(service, bmc.name, "power", "power on"))
    finally:
        timer.cancel()
    assert done["state"] == "succeeded", done
    assert redfish_fleet.state(bmc.name)["power"] == "on"
    # Busy for good: the request fails once redfish_busy_timeout has passed.
    redfish_fleet.set_fault(bmc.name, http_error=503, retry_after=1)
    began = time.monotonic()
    done = service.wait_request(put(service, bmc.name, "power", "power off"))
    assert done["state"] == "failed"
    assert "503 Service Unavailable" in done["error"] and "redfish_busy_timeout 3 s" in done["error"], done
    assert time.monotonic() - began < 15


def test_a_hung_bmc_is_bounded_by_the_timeouts(redfish_service, redfish_fleet: Fleet,
                                               new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc)
    redfish_fleet.set_fault(bmc.name, unreachable=True)  # accepts connections, never answers
    began = time.monotonic()
    done = service.wait_request(put(service, bmc.name, "provision", "manage"), timeout=60)
    assert done["state"] == "failed"
    assert "did not answer within 1 s" in done["error"] and "(2 attempts" in done["error"], done["error"]
    assert time.monotonic() - began < 30
    assert node_of(service, bmc.name)["provision_state"] == "enroll"


def test_tls_failure_says_how_to_fix_it(redfish_service, redfish_fleet: Fleet,
                                        new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc, redfish_verify_ca=True)  # the system's CAs: the BMC's cert is self-signed
    done = service.wait_request(put(service, bmc.name, "provision", "manage"))
    assert done["state"] == "failed"
    assert "TLS with BMC https://" in done["error"] and "certificate verify failed" in done["error"], done
    assert "redfish_verify_ca" in done["error"]
    response = service.http.patch(f"{service.url}/v1/nodes/{bmc.name}",
                                  json={"driver_info": {"redfish_verify_ca": "/nonexistent/ca.pem"}}, timeout=10)
    assert response.status_code == 200, response.text
    done = service.wait_request(put(service, bmc.name, "provision", "manage"))
    assert done["state"] == "failed"
    assert "/nonexistent/ca.pem" in done["error"] and "redfish_verify_ca" in done["error"], done
    response = service.http.patch(f"{service.url}/v1/nodes/{bmc.name}",
                                  json={"driver_info": {"redfish_verify_ca": False}}, timeout=10)
    assert response.status_code == 200, response.text
    assert manage(service, bmc)["provision_state"] == "manageable"


def test_the_workers_share_one_session_and_renew_it_once_when_it_expires(
        redfish_service, redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service()  # two worker processes, each with its own clients
    bmc = new_redfish_bmc()
    enroll(service, redfish_fleet, bmc)
    manage(service, bmc)
    for target in ("power on", "power off", "rebooting", "power off", "power on", "power off"):
        assert service.wait_request(put(service, bmc.name, "power", target))["state"] == "succeeded"
    entries = service.http.get(f"{service.url}/v1/nodes/{bmc.name}/history", params={"limit": 100},
                               timeout=10).json()["history"]
    assert len({entry["conductor"] for entry in entries if entry.get("conductor")}) == 2  # both workers drove it
    counters = redfish_fleet.state(bmc.name)["redfish"]
    assert counters["sessions"] == 1, counters  # one login for the whole deployment
    assert counters["requests"] > 20
    redfish_fleet.redfish.expire_sessions(bmc)  # type: ignore[union-attr]
    for target in ("power on", "power off", "rebooting"):
        done = service.wait_request(put(service, bmc.name, "power", target))
        assert done["state"] == "succeeded", done  # a 401, one new session, the call again
    assert redfish_fleet.state(bmc.name)["redfish"]["sessions"] == 2
    # The token is in Redis only sealed, and in no log.
    connection = redis.Redis.from_url(service.settings.redis_url)
    try:
        names = list(connection.scan_iter(keys.redfish_session(service.settings.redis_namespace, "*")))
        assert len(names) == 1
        sealed = (connection.get(names[0]) or b"").decode()
        token = json.loads(secretbox.for_settings(service.settings).open(sealed))["token"]
        for name in connection.scan_iter(f"{service.settings.redis_namespace}*"):
            if connection.type(name) == b"string":
                assert token.encode() not in (connection.get(name) or b"")
    finally:
        connection.close()
    for log in [service.settings.data_dir / "up.log", *(service.settings.data_dir / "logs").glob("*.log")]:
        assert token not in log.read_text(), log
    assert_no_password(service, bmc, history(service, bmc.name))


def test_node_import_enrols_redfish_nodes_from_the_simulators_inventory(
        redfish_service, redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec], tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = redfish_service()
    bmcs = [new_redfish_bmc(), new_redfish_bmc()]
    document = redfish_fleet.inventory()
    document["nodes"] = [entry for entry in document["nodes"] if entry["name"] in {b.name for b in bmcs}]
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(document))
    result = service.cli("node", "import", str(path), "--driver", "redfish")
    assert result.returncode == 0, result.stderr
    for bmc in bmcs:
        node = node_of(service, bmc.name)
        assert node["driver"] == "redfish"
        assert node["driver_info"]["redfish_password"] == "******"
        assert manage(service, bmc)["provision_state"] == "manageable"


def test_observer_corrects_drift_and_fences_a_failing_bmc(redfish_service, redfish_fleet: Fleet,
                                                          new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = redfish_service(CONDUCTOR_POWER_SYNC_INTERVAL="0.5", CONDUCTOR_POWER_SYNC_MAX_FAILURES="2",
                              CONDUCTOR_REDFISH_RETRIES="0")
    drifting, failing = new_redfish_bmc(), new_redfish_bmc()
    for bmc in (drifting, failing):
        enroll(service, redfish_fleet, bmc)
        manage(service, bmc)
    redfish_fleet.set_power(drifting.name, "on")  # behind the conductor's back
    node = wait_node(service, drifting.name, lambda n: n["power_state"] == "power on")
    assert node["maintenance"] is False
    assert "power off -> power on" in history(service, drifting.name)
    redfish_fleet.set_fault(failing.name, http_error=500)
    node = wait_node(service, failing.name, lambda n: n["maintenance"], timeout=60)
    assert node["fault"] == "power failure" and "500" in node["maintenance_reason"]
    redfish_fleet.clear_faults(failing.name)
    node = wait_node(service, failing.name, lambda n: not n["maintenance"], timeout=60)
    assert node["fault"] is None
