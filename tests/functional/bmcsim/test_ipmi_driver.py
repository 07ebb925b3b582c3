"""The ipmi driver end to end: `conductor up` (API + workers) driving simulated BMCs over real IPMI."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from conductor.bmcsim import BMCSpec, Fleet

#: Quick IPMI retries so that failure tests do not take the production 17 s.
FAST_IPMI = {"CONDUCTOR_IPMI_TIMEOUT": "1", "CONDUCTOR_IPMI_RETRIES": "1", "CONDUCTOR_IPMI_BACKOFF": "0.1",
             "CONDUCTOR_POWER_POLL_INITIAL": "0.1", "CONDUCTOR_POWER_POLL_MAX": "0.5"}


@pytest.fixture
def ipmi_service(service_factory):  # type: ignore[no-untyped-def]
    """A running service with quick IPMI retries and no command pacing."""
    def start(**env: str):  # type: ignore[no-untyped-def]
        service = service_factory(workers=2, env={**FAST_IPMI, **env})
        response = service.http.patch(f"{service.url}/v1/throttle", json={"bmc_min_interval": 0}, timeout=10)
        assert response.status_code == 200, response.text
        return service
    return start


def enroll(service, bmc: BMCSpec, **overrides: object) -> dict:  # type: ignore[no-untyped-def]
    info = {**bmc.driver_info(), **overrides}
    response = service.http.post(f"{service.url}/v1/nodes", json={"name": bmc.name, "driver": "ipmi",
                                                                  "driver_info": info}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def put(service, node: str, kind: str, target: str) -> str:  # type: ignore[no-untyped-def]
    response = service.http.put(f"{service.url}/v1/nodes/{node}/states/{kind}", json={"target": target}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def node_of(service, name: str) -> dict:  # type: ignore[no-untyped-def]
    return service.http.get(f"{service.url}/v1/nodes/{name}", timeout=10).json()


def manage(service, bmc: BMCSpec) -> dict:  # type: ignore[no-untyped-def]
    done = service.wait_request(put(service, bmc.name, "provision", "manage"))
    assert done["state"] == "succeeded", done
    return node_of(service, bmc.name)


def test_manage_proves_credentials_and_reads_power(ipmi_service, fleet: Fleet,
                                                   new_bmc: Callable[..., BMCSpec]) -> None:
    service = ipmi_service()
    bmc = new_bmc()
    fleet.set_power(bmc.name, "on")
    created = enroll(service, bmc)
    assert created["driver_info"]["ipmi_password"] == "******"
    node = manage(service, bmc)
    assert node["provision_state"] == "manageable" and node["power_state"] == "power on"
    assert node["last_error"] is None


def test_wrong_password_fails_manage_back_to_enroll(ipmi_service, new_bmc: Callable[..., BMCSpec]) -> None:
    service = ipmi_service()
    bmc = new_bmc()
    enroll(service, bmc, ipmi_password="not-the-password")
    done = service.wait_request(put(service, bmc.name, "provision", "manage"))
    assert done["state"] == "failed"
    assert f"BMC {bmc.host}:{bmc.port} rejected the password" in done["error"]
    node = node_of(service, bmc.name)
    assert node["provision_state"] == "enroll"
    assert "rejected the password" in node["last_error"]
    history = service.http.get(f"{service.url}/v1/nodes/{bmc.name}/history", timeout=10).text
    for text in (done["error"], node["last_error"], history, (service.settings.data_dir / "up.log").read_text()):
        assert "not-the-password" not in text
        assert bmc.password not in text


def test_every_power_target(ipmi_service, fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    service = ipmi_service()
    bmc = new_bmc(delay=0.3)
    enroll(service, bmc)
    manage(service, bmc)
    for target, final in (("power on", "on"), ("power off", "off"), ("power on", "on"),
                          ("rebooting", "on"), ("soft power off", "off"), ("power off", "off")):
        done = service.wait_request(put(service, bmc.name, "power", target))
        assert done["state"] == "succeeded", (target, done)
        assert fleet.state(bmc.name)["power"] == final, target
        assert node_of(service, bmc.name)["power_state"] == f"power {final}"
    history = service.http.get(f"{service.url}/v1/nodes/{bmc.name}/history", params={"limit": 100},
                               timeout=10).json()
    entries = history.get("history", history) if isinstance(history, dict) else history
    sent = [e["message"] for e in entries if e["event"] == "power.command"]
    # rebooting sent two commands; the last "power off" found the node off: nothing sent
    assert sent == ["Sent power on.", "Sent power off.", "Sent power on.", "Sent power off.", "Sent power on.",
                    "Sent soft power off."][::-1], sent


def test_soft_power_off_ignored_falls_back_to_hard_off(ipmi_service, fleet: Fleet,
                                                       new_bmc: Callable[..., BMCSpec]) -> None:
    service = ipmi_service(CONDUCTOR_SOFT_POWER_OFF_TIMEOUT="0.5")
    bmc = new_bmc(delay=0.1)
    enroll(service, bmc)
    manage(service, bmc)
    fleet.set_power(bmc.name, "on")
    fleet.set_fault(bmc.name, ignore_acpi=True)
    done = service.wait_request(put(service, bmc.name, "power", "soft power off"))
    assert done["state"] == "succeeded", done
    assert fleet.state(bmc.name)["power"] == "off"


def test_stuck_power_fails_with_a_clear_timeout(ipmi_service, fleet: Fleet,
                                                new_bmc: Callable[..., BMCSpec]) -> None:
    service = ipmi_service(CONDUCTOR_POWER_TIMEOUT="1.5")
    bmc = new_bmc()
    enroll(service, bmc)
    manage(service, bmc)
    fleet.set_fault(bmc.name, stuck=True)
    done = service.wait_request(put(service, bmc.name, "power", "power on"))
    assert done["state"] == "failed"
    assert "Node reports power off" in done["error"] and "after power on was sent" in done["error"]
    assert "timeout 1.5 s" in done["error"]


def test_unreachable_bmc_fails_after_retries(ipmi_service, fleet: Fleet,
                                             new_bmc: Callable[..., BMCSpec]) -> None:
    service = ipmi_service()
    bmc = new_bmc()
    enroll(service, bmc)
    fleet.set_fault(bmc.name, unreachable=True)
    done = service.wait_request(put(service, bmc.name, "provision", "manage"), timeout=60)
    assert done["state"] == "failed"
    assert f"BMC {bmc.host}:{bmc.port} did not answer" in done["error"]
    assert "(2 attempts)" in done["error"]
    assert node_of(service, bmc.name)["provision_state"] == "enroll"


def test_packet_loss_is_survived(ipmi_service, fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    # Production-like retries: a lost packet costs a pyghmi resend or one retry.
    service = ipmi_service(CONDUCTOR_IPMI_TIMEOUT="3", CONDUCTOR_IPMI_RETRIES="3")
    bmc = new_bmc(delay=0.1)
    enroll(service, bmc)
    manage(service, bmc)
    fleet.set_fault(bmc.name, drop=0.2)
    for target in ("power on", "power off", "rebooting"):
        done = service.wait_request(put(service, bmc.name, "power", target), timeout=90)
        assert done["state"] == "succeeded", (target, done)
    assert fleet.state(bmc.name)["power"] == "on"


def test_commands_to_one_bmc_are_paced(service_factory, fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    service = service_factory(workers=2, env=FAST_IPMI)
    response = service.http.patch(f"{service.url}/v1/throttle", json={"bmc_min_interval": 1.0}, timeout=10)
    assert response.status_code == 200, response.text
    bmc = new_bmc()
    enroll(service, bmc)
    manage(service, bmc)
    fleet.set_power(bmc.name, "on")
    seen = []
    fleet.on_power_change(lambda event: seen.append(event) if event.bmc == bmc.name else None)
    done = service.wait_request(put(service, bmc.name, "power", "rebooting"))
    assert done["state"] == "succeeded", done
    deadline = time.monotonic() + 2
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    # off, then on no sooner than bmc_min_interval later (no power delay: the
    # simulator's events are the commands' arrival)
    commands = [e for e in seen if e.cause in ("on", "off")]
    assert [e.cause for e in commands] == ["off", "on"]
    assert commands[1].time - commands[0].time >= 0.9


def test_boot_device_through_the_api_and_the_cli(ipmi_service, fleet: Fleet,
                                                 new_bmc: Callable[..., BMCSpec]) -> None:
    service = ipmi_service()
    bmc = new_bmc()
    enroll(service, bmc)
    manage(service, bmc)
    result = service.cli("node", "boot-device", bmc.name, "pxe", "--wait")
    assert "succeeded" in result.stderr
    state = fleet.state(bmc.name)
    assert (state["boot_device"], state["boot_persistent"]) == ("pxe", False)
    response = service.http.put(f"{service.url}/v1/nodes/{bmc.name}/management/boot_device",
                                json={"boot_device": "disk", "persistent": True}, timeout=10)
    assert response.status_code == 202, response.text
    assert service.wait_request(response.json()["id"])["state"] == "succeeded"
    state = fleet.state(bmc.name)
    assert (state["boot_device"], state["boot_persistent"]) == ("disk", True)
    shown = service.http.get(f"{service.url}/v1/nodes/{bmc.name}/management/boot_device", timeout=10).json()
    assert (shown["boot_device"], shown["persistent"], shown["source"]) == ("disk", True, "bmc")
    assert '"boot_device": "disk"' in service.cli("--json", "node", "boot-device", bmc.name).stdout
    for device in ("cdrom", "bios"):
        response = service.http.put(f"{service.url}/v1/nodes/{bmc.name}/management/boot_device",
                                    json={"boot_device": device}, timeout=10)
        assert service.wait_request(response.json()["id"])["state"] == "succeeded"
        assert fleet.state(bmc.name)["boot_device"] == device


def wait_node(service, name: str, predicate, timeout: float = 30.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    node = node_of(service, name)
    while not predicate(node):
        assert time.monotonic() < deadline, f"node never got there: {node}"
        time.sleep(0.1)
        node = node_of(service, name)
    return node


def test_observer_corrects_drift_and_fences_a_dead_bmc(ipmi_service, fleet: Fleet,
                                                       new_bmc: Callable[..., BMCSpec]) -> None:
    service = ipmi_service(CONDUCTOR_POWER_SYNC_INTERVAL="0.5", CONDUCTOR_POWER_SYNC_MAX_FAILURES="2",
                           CONDUCTOR_IPMI_RETRIES="0")
    drifting, dying = new_bmc(), new_bmc()
    for bmc in (drifting, dying):
        enroll(service, bmc)
        manage(service, bmc)
    # drift: the machine is powered on behind the conductor's back
    fleet.set_power(drifting.name, "on")
    node = wait_node(service, drifting.name, lambda n: n["power_state"] == "power on")
    assert node["maintenance"] is False
    history = service.http.get(f"{service.url}/v1/nodes/{drifting.name}/history", timeout=10).json()["history"]
    assert any(e["event"] == "power.drift" and "power off -> power on" in e["message"] for e in history)
    # a BMC that stops answering: maintenance after 2 failed reads in a row
    fleet.set_fault(dying.name, unreachable=True)
    node = wait_node(service, dying.name, lambda n: n["maintenance"], timeout=60)
    assert node["fault"] == "power failure"
    assert "failed 2 times in a row" in node["maintenance_reason"]
    assert f"BMC {dying.host}:{dying.port} did not answer" in node["maintenance_reason"]
    # the BMC answers again: out of maintenance, by the observer
    fleet.clear_faults(dying.name)
    node = wait_node(service, dying.name, lambda n: not n["maintenance"], timeout=60)
    assert node["fault"] is None and node["maintenance_reason"] is None
    events = [e["event"] for e in
              service.http.get(f"{service.url}/v1/nodes/{dying.name}/history", timeout=10).json()["history"]]
    assert events.index("maintenance.cleared") < events.index("maintenance.fault")  # newest first


def test_two_nodes_on_one_bmc_take_turns(ipmi_service, fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    """The BMC's in-flight lock, end to end: the busy step is polled again, nothing fails."""
    service = ipmi_service()
    bmc = new_bmc(delay=0.2)
    for name in ("blade-a", "blade-b"):
        response = service.http.post(f"{service.url}/v1/nodes", json={"name": name, "driver": "ipmi",
                                                                      "driver_info": bmc.driver_info()}, timeout=10)
        assert response.status_code == 201, response.text
        assert service.wait_request(put(service, name, "provision", "manage"))["state"] == "succeeded"
    # Targets that agree (two reboots of one machine would undo each other's phases).
    for target in ("power on", "power off", "power on"):
        ids = [put(service, name, "power", target) for name in ("blade-a", "blade-b")]
        assert [service.wait_request(rid)["state"] for rid in ids] == ["succeeded", "succeeded"]
        assert fleet.state(bmc.name)["power"] == target.split()[-1]
    ids = [service.http.put(f"{service.url}/v1/nodes/{name}/management/boot_device", json={"boot_device": "pxe"},
                            timeout=10).json()["id"] for name in ("blade-a", "blade-b")]
    assert [service.wait_request(rid)["state"] for rid in ids] == ["succeeded", "succeeded"]
