"""The simulator's Redfish, checked by independent clients: sushy itself, and plain HTTP requests.

sushy (the Redfish library Ironic uses) knows nothing of the simulator:
what it can read and do here is what a Redfish client gets.  DMTF's
Redfish Service Validator runs against it in bench/redfish_validator.py.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import requests
import sushy
from sushy import exceptions as sushy_exc

from conductor.bmcsim import BMCSpec, Fleet
from conductor.bmcsim.agent import inventory as agent_inventory
from conductor.drivers.ipmi_client import BMCClient, BMCCredentials


def root_of(fleet: Fleet, bmc: BMCSpec, **kwargs: object) -> sushy.Sushy:
    info = fleet.redfish_driver_info(bmc.name)
    assert info is not None
    return sushy.Sushy(info["redfish_address"], username=bmc.username, password=bmc.password,
                       verify=info["redfish_verify_ca"], **kwargs)


def wait_until(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_sushy_reads_the_tree(redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_redfish_bmc()
    root = root_of(redfish_fleet, bmc)
    assert root.redfish_version == "1.11.0"
    system = root.get_system()  # the only system: no id needed
    assert system.identity == bmc.name and system.uuid == str(bmc.uuid)
    assert system.power_state == sushy.PowerState.OFF
    hardware = agent_inventory(bmc.index)
    assert sum(p.total_threads for p in system.processors.get_members()) == hardware["cpus"]
    assert system.memory_summary.size_gib * 1024 == hardware["memory_mb"]
    assert [n.mac_address.lower() for n in system.ethernet_interfaces.get_members()] == \
        [nic["mac"] for nic in hardware["nics"]]
    drives = [d for storage in system.storage.get_members() for d in storage.drives]
    assert [d.capacity_bytes for d in drives] == [d["size_gb"] * 10**9 for d in hardware["disks"]]
    assert system.simple_storage.max_size_bytes == max(d["size_gb"] for d in hardware["disks"]) * 10**9
    assert {str(v.value) for v in system.get_allowed_reset_system_values()} >= {
        "On", "ForceOff", "GracefulShutdown", "ForceRestart", "GracefulRestart"}
    manager = root.get_manager()
    assert manager.manager_type == sushy.ManagerType.BMC
    assert root.get_chassis().identity == bmc.name
    media = manager.virtual_media.get_members()
    assert len(media) == 1 and not media[0].inserted


def test_sushy_powers_and_sets_boot_device_on_the_shared_machine(
        redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_redfish_bmc(delay=0.2)
    system = root_of(redfish_fleet, bmc).get_system()
    system.set_system_boot_options(sushy.BootSource.PXE, enabled=sushy.BootSourceOverrideEnabled.ONCE,
                                   mode=sushy.BootSourceOverrideMode.UEFI)
    state = redfish_fleet.state(bmc.name)
    assert (state["boot_device"], state["boot_persistent"], state["boot_uefi"]) == ("pxe", False, True)
    booted = []
    hook = redfish_fleet.on_power_change(lambda ev: booted.append(ev) if ev.bmc == bmc.name else None)
    try:
        system.reset_system(sushy.ResetType.ON)
        system.refresh()
        assert system.power_state == sushy.PowerState.OFF  # the machine takes 0.2 s
        assert wait_until(lambda: (system.refresh() or system.power_state) == sushy.PowerState.ON)
        assert wait_until(lambda: bool(booted))
    finally:
        redfish_fleet.remove_power_hook(hook)
    # The same event IPMI would cause: booted from pxe, UEFI, one-time override used up.
    assert (booted[0].booted, booted[0].boot_device, booted[0].uefi) == (True, "pxe", True)
    system.refresh()
    assert system.boot.enabled == sushy.BootSourceOverrideEnabled.DISABLED
    # The same machine over IPMI: it is on, and IPMI's boot device setting shows through Redfish.
    ipmi = BMCClient(BMCCredentials(bmc.host, bmc.port, bmc.username, bmc.password), timeout=2.0)
    try:
        assert ipmi.get_power() == "on"
        ipmi.set_boot_device("disk", persistent=True)
    finally:
        ipmi.close()
    system.refresh()
    assert (system.boot.target, system.boot.enabled) == (sushy.BootSource.HDD,
                                                         sushy.BootSourceOverrideEnabled.CONTINUOUS)
    system.reset_system(sushy.ResetType.FORCE_OFF)
    assert wait_until(lambda: redfish_fleet.state(bmc.name)["power"] == "off")


def test_sessions_and_authentication(redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_redfish_bmc()
    info = redfish_fleet.redfish_driver_info(bmc.name)
    assert info is not None
    base, verify = info["redfish_address"], info["redfish_verify_ca"]
    with requests.Session() as http:
        # Per request: requests lets REQUESTS_CA_BUNDLE override a session's own verify.
        http.request = functools.partial(http.request, verify=verify)  # type: ignore[method-assign]
        assert http.get(f"{base}/redfish/v1/", timeout=5).status_code == 200  # the service root is public
        assert http.get(f"{base}/redfish/v1/Systems", timeout=5).status_code == 401
        refused = http.post(f"{base}/redfish/v1/SessionService/Sessions",
                            json={"UserName": bmc.username, "Password": "wrong"}, timeout=5)
        assert refused.status_code == 401 and "wrong" not in refused.text
        created = http.post(f"{base}/redfish/v1/SessionService/Sessions",
                            json={"UserName": bmc.username, "Password": bmc.password}, timeout=5)
        assert created.status_code == 201
        token, location = created.headers["X-Auth-Token"], created.headers["Location"]
        systems = http.get(f"{base}/redfish/v1/Systems", headers={"X-Auth-Token": token}, timeout=5)
        assert systems.status_code == 200 and systems.headers["OData-Version"] == "4.0"
        assert http.get(f"{base}/redfish/v1/Systems", auth=(bmc.username, bmc.password), timeout=5).ok  # Basic
        assert http.delete(f"{base}{location}", headers={"X-Auth-Token": token}, timeout=5).status_code == 204
        assert http.get(f"{base}/redfish/v1/Systems", headers={"X-Auth-Token": token}, timeout=5).status_code == 401
        missing = http.get(f"{base}/redfish/v1/Systems/nope", auth=(bmc.username, bmc.password), timeout=5)
        assert missing.status_code == 404 and "ResourceNotFound" in missing.text
        bad = http.post(f"{base}/redfish/v1/Systems/{bmc.name}/Actions/ComputerSystem.Reset",
                        json={"ResetType": "Explode"}, auth=(bmc.username, bmc.password), timeout=5)
        assert bad.status_code == 400 and "ActionParameterValueNotInList" in bad.text


def test_faults_as_a_client_sees_them(redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_redfish_bmc()
    info = redfish_fleet.redfish_driver_info(bmc.name)
    assert info is not None
    url, verify = f"{info['redfish_address']}/redfish/v1/", info["redfish_verify_ca"]
    redfish_fleet.set_fault(bmc.name, latency=0.3)
    began = time.monotonic()
    assert requests.get(url, verify=verify, timeout=5).ok
    assert time.monotonic() - began >= 0.3
    redfish_fleet.set_fault(bmc.name, latency=0, http_error=503, retry_after=2)
    busy = requests.get(url, verify=verify, timeout=5)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "2"
    redfish_fleet.set_fault(bmc.name, http_error=500)
    assert requests.get(url, verify=verify, timeout=5).status_code == 500
    redfish_fleet.set_fault(bmc.name, http_error=0, unreachable=True)
    try:
        requests.get(url, verify=verify, timeout=0.5)
        raise AssertionError("an unreachable BMC answered")
    except requests.exceptions.ReadTimeout:
        pass
    redfish_fleet.clear_faults(bmc.name)
    assert requests.get(url, verify=verify, timeout=5).ok
    redfish_fleet.set_fault(bmc.name, reject_password=True)
    try:
        root_of(redfish_fleet, bmc, auth=None)
    except sushy_exc.AccessError:
        pass
    else:
        # SessionOrBasicAuth falls back to Basic: the first authenticated call is refused
        try:
            root_of(redfish_fleet, bmc).get_system_collection()
            raise AssertionError("a BMC rejecting the password let sushy in")
        except sushy_exc.AccessError:
            pass


def test_plain_http_and_a_fixed_port(own_fleet: Callable[..., Fleet]) -> None:
    fleet = own_fleet(count=2, shards=1, redfish_port=0, redfish_tls=False)
    assert fleet.redfish is not None
    info = fleet.redfish_driver_info("sim-0001")
    assert info is not None
    assert info["redfish_address"].startswith("http://") and info["redfish_verify_ca"] is False
    assert info["redfish_address"].endswith(f":{fleet.redfish.base_port + 1}")
    system = sushy.Sushy(info["redfish_address"], username="admin", password="password").get_system()
    assert system.identity == "sim-0001"
    entry = fleet.inventory()["nodes"][1]
    assert entry["driver"] == "ipmi" and entry["driver_infos"]["redfish"]["redfish_system_id"] == \
        "/redfish/v1/Systems/sim-0001"
