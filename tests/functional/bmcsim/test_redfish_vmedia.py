"""The ``redfish-virtual-media`` boot interface, through the API, against the simulator's Redfish.

The conductor builds each agent phase's ISO with the real xorriso and
isolinux (from stand-in kernel and initramfs files: the simulated machine
does not execute them), serves it at a signed URL, and inserts it over
Redfish; the simulator's BMC fetches the URL when the media is inserted
(refusing the insert when it cannot) and its machine, powered on from
``cdrom``, asks its Redfish service what is inserted and reads the image to
its end before its simulated agent runs.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from conductor.bmcsim import BMCSpec, Fleet
from conductor.bmcsim.agent import SimAgent
from conductor.ramdisk import iso
from tests.functional.bmcsim.test_deploy import image, run  # noqa: F401 - image: the autouse fixture
from tests.functional.bmcsim.test_ipmi_driver import node_of
from tests.functional.bmcsim.test_redfish_driver import FAST_REDFISH, enroll

#: The ISO served to BMCs is the hybrid one (BIOS and UEFI): its tools are needed too.
MISSING = iso.missing_tools() + iso.missing_uefi_tools()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")
VMEDIA = {"boot_interface": "redfish-virtual-media", "inspect_interface": "agent"}


@pytest.fixture
def media_agent(redfish_fleet: Fleet, settings) -> Iterator[SimAgent]:  # type: ignore[no-untyped-def]
    with SimAgent(redfish_fleet, settings.pxe_dir, boot_delay=0.2, work_duration=0.2, seed=1) as running:
        yield running


def _service(service_factory, **env: str):  # type: ignore[no-untyped-def]
    service = service_factory(workers=2, env={**FAST_REDFISH, "CONDUCTOR_WAIT_CHECK_INTERVAL": "0.2",
                                              "CONDUCTOR_POWER_SYNC_INTERVAL": "0.5", **env})
    response = service.http.patch(f"{service.url}/v1/throttle", json={"bmc_min_interval": 0}, timeout=10)
    assert response.status_code == 200, response.text
    ramdisk = service.settings.ramdisk_path
    ramdisk.mkdir(parents=True, exist_ok=True)
    (ramdisk / "agent.kernel").write_bytes(b"stand-in kernel " * 4096)
    (ramdisk / "agent.initramfs").write_bytes(b"stand-in initramfs " * 4096)
    return service


def _media(fleet: Fleet, bmc: BMCSpec) -> dict[str, Any]:
    info = fleet.redfish_driver_info(bmc.name)
    assert info is not None
    answer = requests.get(f"{info['redfish_address']}/redfish/v1/Managers/{bmc.name}-bmc/VirtualMedia/Cd",
                          auth=(info["redfish_username"], info["redfish_password"]),
                          verify=info.get("redfish_verify_ca", True), timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _notes(agent: SimAgent, bmc: BMCSpec) -> list[str]:
    return [what for _t, name, what in agent.log if name == bmc.name]


def _history(service, name: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    answer = service.http.get(f"{service.url}/v1/nodes/{name}/history", timeout=10)
    assert answer.status_code == 200, answer.text
    return list(answer.json().get("items") or answer.json().get("history") or [])


def test_ipmi_nodes_refuse_virtual_media(service_factory, fleet: Fleet,  # type: ignore[no-untyped-def]
                                         new_bmc: Callable[..., BMCSpec]) -> None:
    service = service_factory(workers=1)
    bmc = new_bmc()
    response = service.http.post(f"{service.url}/v1/nodes", json={
        "name": bmc.name, "driver": "ipmi", "driver_info": {
            "ipmi_address": bmc.host, "ipmi_port": bmc.port, "ipmi_username": bmc.username,
            "ipmi_password": bmc.password, "boot_interface": "redfish-virtual-media"}}, timeout=10)
    assert response.status_code == 400, response.text
    assert "boots its agent from the network only" in response.text


def test_inspect_clean_deploy_from_virtual_media(service_factory, redfish_fleet: Fleet,  # type: ignore[no-untyped-def]
                                                 media_agent: SimAgent,
                                                 new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = _service(service_factory)
    bmc = new_redfish_bmc(delay=0.05)
    enroll(service, redfish_fleet, bmc, **VMEDIA)
    urls: list[str] = []

    def capture(event: Any) -> None:  # the URL the conductor inserted, while it is inserted
        if event.booted and event.boot_device == "cdrom":
            urls.append(str(_media(redfish_fleet, bmc)["Image"]))

    redfish_fleet.on_power_change(capture)
    try:
        run(service, bmc.name, "manage")
        run(service, bmc.name, "inspect")
        node = node_of(service, bmc.name)
        assert node["properties"]["cpus"] > 0
        run(service, bmc.name, "provide")
        run(service, bmc.name, "active")
    finally:
        redfish_fleet.remove_power_hook(capture)
    node = node_of(service, bmc.name)
    assert node["provision_state"] == "active" and node["power_state"] == "power on"
    state = redfish_fleet.state(bmc.name)
    assert state["boot_device"] == "disk" and state["boot_persistent"] is True
    notes = _notes(media_agent, bmc)
    assert sum("read the inserted media" in n for n in notes) == 3, notes
    assert any("running inspect" in n for n in notes) and any("running write_image" in n for n in notes)
    # Each phase ejected its media and deleted its ISO; its URL is refused now.
    assert _media(redfish_fleet, bmc)["Inserted"] is False
    assert not list((service.settings.data_dir / "vmedia").glob("*.iso"))
    assert len(urls) == 3 and len(set(urls)) == 3
    for url in urls:
        assert "/v1/boot/media/" in url
        answer = requests.get(url, timeout=10)
        assert answer.status_code == 401, answer.text


def test_abort_ejects_and_deletes(service_factory, redfish_fleet: Fleet, media_agent: SimAgent,  # type: ignore[no-untyped-def]
                                  new_redfish_bmc: Callable[..., BMCSpec], tmp_path: Path) -> None:
    service = _service(service_factory)
    bmc = new_redfish_bmc(delay=0.05)
    enroll(service, redfish_fleet, bmc, **VMEDIA)
    run(service, bmc.name, "manage")
    media_agent.configure(bmc.name, silent=True)
    request = service.http.put(f"{service.url}/v1/nodes/{bmc.name}/states/provision",
                               json={"target": "inspect"}, timeout=10)
    assert request.status_code in (200, 202), request.text
    deadline = time.monotonic() + 30
    while node_of(service, bmc.name)["provision_state"] != "inspect wait":
        assert time.monotonic() < deadline, node_of(service, bmc.name)
        time.sleep(0.05)
    media = _media(redfish_fleet, bmc)
    assert media["Inserted"] is True
    iso_file = service.settings.data_dir / "vmedia" / f"{node_of(service, bmc.name)['uuid']}.iso"
    assert iso_file.is_file() and iso_file.stat().st_mode & 0o777 == 0o600
    # The BMC's URL works during the phase, with no bearer token, and serves ranges.
    whole = requests.get(media["Image"], timeout=10)
    assert whole.status_code == 200 and len(whole.content) == iso_file.stat().st_size
    # One ISO for both firmware kinds: a BIOS and a UEFI El Torito boot image (xorriso reads it back).
    served = tmp_path / "served.iso"
    served.write_bytes(whole.content)
    report = subprocess.run(["xorriso", "-indev", str(served), "-report_el_torito", "plain"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    platforms = [line.split()[6] for line in report.splitlines() if line.startswith("El Torito boot img :")]
    assert platforms == ["BIOS", "UEFI"], report
    part = requests.get(media["Image"], headers={"Range": "bytes=0-99"}, timeout=10)
    assert part.status_code == 206 and part.content == whole.content[:100]
    run(service, bmc.name, "abort")
    assert node_of(service, bmc.name)["provision_state"] == "inspect failed"
    assert not iso_file.exists()
    assert requests.get(media["Image"], timeout=10).status_code == 401
    deadline = time.monotonic() + 30  # the power state sync ejects what the aborted phase left
    while _media(redfish_fleet, bmc)["Inserted"]:
        assert time.monotonic() < deadline, "the media was never ejected"
        time.sleep(0.1)
    media_agent.reset(bmc.name)
    run(service, bmc.name, "manage")  # the node leaves the failed state


def test_media_the_bmc_cannot_fetch(service_factory, redfish_fleet: Fleet, media_agent: SimAgent,  # type: ignore[no-untyped-def]
                                    new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    # The BMCs are told to fetch from an address where nothing listens.
    service = _service(service_factory, CONDUCTOR_VIRTUAL_MEDIA_URL="http://127.0.0.1:9")
    bmc = new_redfish_bmc(delay=0.05)
    enroll(service, redfish_fleet, bmc, **VMEDIA)
    run(service, bmc.name, "manage")
    done = run(service, bmc.name, "inspect", expect="failed")
    node = node_of(service, bmc.name)
    assert node["provision_state"] == "inspect failed"
    assert "insert virtual media" in node["last_error"] and "Unable to access the image" in node["last_error"]
    assert "/v1/boot/media/" not in node["last_error"] and "/v1/boot/media/" not in str(done)
    assert not list((service.settings.data_dir / "vmedia").glob("*.iso"))
    assert _media(redfish_fleet, bmc)["Inserted"] is False
    assert not _notes(media_agent, bmc)
    run(service, bmc.name, "manage")
