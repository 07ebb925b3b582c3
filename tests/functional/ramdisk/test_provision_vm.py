"""A real machine provisioned end to end, by the CLI alone: a QEMU VM behind a simulated IPMI or Redfish BMC.

``conductor up`` (subprocess) serves the agent ramdisk built from Debian
packages; the VM network-boots through QEMU's user network (its DHCP hands
iPXE ``http://10.0.2.2:<port>/v1/boot``), iPXE chains to its MAC's script,
boots the agent, and the agent inspects, erases and writes the disk image,
which the VM then boots from its own disk.  Behind a Redfish BMC with
``boot_interface: redfish-virtual-media`` the VM boots the agent from the
node's ISO in its virtual CD-ROM instead, with no network boot at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Service

pytestmark = pytest.mark.slow

MARK = b"CONDUCTOR-TEST-CLEAN-ME"
MARK_OFFSET = 512 * 1024  # within the first 4 MiB: a metadata erase must wipe it


def _need_vms() -> None:
    from conductor.bmcsim.vm import missing_requirements

    missing = missing_requirements()
    if missing:
        pytest.skip(missing)


def _console_after(path: Path, offset: int) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as console:
        console.seek(offset)
        return console.read().decode(errors="replace")


def _wait_for(predicate, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


@pytest.fixture
def vm_service(request, settings, built_ramdisk, tmp_path):  # type: ignore[no-untyped-def]
    """``conductor up`` whose agents call it at 10.0.2.2 (QEMU's name for this host), serving the built ramdisk.

    BMCs (on this host) fetch virtual media from 127.0.0.1.  Indirect parametrization adds settings
    (``{"CONDUCTOR_...": "..."}``).
    """
    _need_vms()
    service = Service(settings, workers=2)
    service.env.update(
        CONDUCTOR_AGENT_API_URL=f"http://10.0.2.2:{service.port}",
        CONDUCTOR_VIRTUAL_MEDIA_URL=f"http://127.0.0.1:{service.port}",
        CONDUCTOR_RAMDISK_DIR=str(built_ramdisk.kernel.path.parent),
        CONDUCTOR_DEPLOY_AGENT_TIMEOUT="600", CONDUCTOR_CLEAN_AGENT_TIMEOUT="600",
        CONDUCTOR_INSPECT_AGENT_TIMEOUT="600",
        CONDUCTOR_POWER_POLL_INITIAL="0.2", CONDUCTOR_POWER_POLL_MAX="1",
        **getattr(request, "param", {}),
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def _one_vm_fleet(tmp_path: Path, boot_url: str | None, **options: object) -> Iterator:  # type: ignore[type-arg]
    """A fleet of one 512 MiB VM with a 1 GiB disk; afterwards, no QEMU it started is left."""
    from conductor.bmcsim.fleet import Fleet
    from conductor.bmcsim.vm import UserNetwork, VmSpec

    spec = VmSpec(count=1, memory_mb=512, cpus=1, disk_size="1G", directory=tmp_path / "vms",
                  network=UserNetwork(boot_url=boot_url))
    with open(tmp_path / "bmcsim.log", "ab") as log, Fleet(0, vms=spec, stderr=log, **options) as fleet:  # type: ignore[arg-type]
        yield fleet
    for vm in fleet.vms():
        assert vm["pid"] is None or not Path(f"/proc/{vm['pid']}").exists()


@pytest.fixture
def vm_fleet(vm_service, tmp_path):  # type: ignore[no-untyped-def]
    """One VM behind an IPMI BMC, network-booting from ``vm_service``."""
    with _one_vm_fleet(tmp_path, f"http://10.0.2.2:{vm_service.port}/v1/boot") as fleet:
        yield fleet


@pytest.fixture
def redfish_vm_fleet(vm_service, tmp_path):  # type: ignore[no-untyped-def]
    """One VM behind a BMC that also speaks Redfish (HTTPS); QEMU's DHCP offers no boot file."""
    with _one_vm_fleet(tmp_path, None, redfish_port=0) as fleet:
        yield fleet


def _import_the_vm(service, fleet, tmp_path: Path, *options: str) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    """Enrol the fleet's one VM through ``conductor node import`` of its inventory; its name and description."""
    (name,) = [vm["name"] for vm in fleet.vms()]
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps(fleet.inventory()))
    service.cli("node", "import", str(inventory), *options)
    return name, fleet.vm(name)


@pytest.mark.timeout(600)  # four agent boots under TCG, plus the ramdisk and image builds, on 2 shared cores
def test_a_vm_is_inspected_cleaned_deployed_booted_from_disk_and_cleaned_again(
        vm_service, vm_fleet, demo_image, tmp_path) -> None:
    service, fleet = vm_service, vm_fleet
    name, vm = _import_the_vm(service, fleet, tmp_path)
    assert service.cli("port", "list", "--node", name).stdout.count(vm["mac"]) == 1

    service.cli("node", "manage", name, "--wait")

    service.cli("node", "inspect", name, "--wait", "--timeout", "600")
    props = json.loads(service.cli("--json", "node", "show", name).stdout)["properties"]
    assert (props["cpus"], props["memory_mb"]) == (1, 512)
    assert [d["size"] for d in props["disks"]] == [1 << 30]
    assert props["macs"] == [vm["mac"]]

    disk = Path(vm["disk"])
    with open(disk, "r+b") as raw:
        raw.seek(MARK_OFFSET)
        raw.write(MARK)
    service.cli("node", "provide", name, "--wait", "--timeout", "600")
    with open(disk, "rb") as raw:
        raw.seek(MARK_OFFSET)
        assert raw.read(len(MARK)) == bytes(len(MARK)), "cleaning left the marker on the disk"

    service.cli("image", "add", "demo-disk", str(demo_image.image.path))
    console = Path(vm["console_log"])
    before = console.stat().st_size if console.exists() else 0
    service.cli("node", "deploy", name, "--image", "demo-disk", "--wait", "--timeout", "600")
    shown = json.loads(service.cli("--json", "node", "show", name).stdout)
    assert shown["provision_state"] == "active" and shown["last_error"] is None
    # The VM reboots from its disk into the image, which prints its line and powers off.
    _wait_for(lambda: demo_image.line in _console_after(console, before), "the image's line on the console", 300)
    with open(disk, "rb") as raw:
        written = raw.read(demo_image.image.size)
    assert written == demo_image.image.path.read_bytes()
    _wait_for(lambda: not fleet.vm(name)["running"], "the image to power the VM off", 120)

    service.cli("node", "undeploy", name, "--wait", "--timeout", "600")
    shown = json.loads(service.cli("--json", "node", "show", name).stdout)
    assert shown["provision_state"] == "available"
    with open(disk, "rb") as raw:
        assert raw.read(4096) == bytes(4096), "undeploy's cleaning left the image's boot sector"
    history = service.http.get(f"{service.url}/v1/nodes/{name}/history", params={"limit": 1000}).json()["history"]
    # One agent per phase: inspect, clean (provide), deploy, clean (undeploy).
    assert sum(e["event"] == "agent.connected" for e in history) == 4


@pytest.mark.parametrize("vm_service", [{"CONDUCTOR_AUTOMATED_CLEAN": "false"}], indirect=True)  # one agent boot
@pytest.mark.timeout(600)  # ~100 s with the ramdisk and image builds; TCG on 2 shared cores can take far more
def test_a_redfish_vm_boots_its_agent_from_virtual_media_and_then_the_image_from_disk(
        vm_service, redfish_vm_fleet, demo_image, tmp_path) -> None:
    import requests

    service, fleet = vm_service, redfish_vm_fleet
    name, vm = _import_the_vm(service, fleet, tmp_path, "--driver", "redfish")
    service.cli("node", "set", name, "-i", "boot_interface=redfish-virtual-media")
    service.cli("node", "manage", name, "--wait")
    service.cli("node", "provide", name, "--wait")
    service.cli("image", "add", "demo-disk", str(demo_image.image.path))
    console = Path(vm["console_log"])
    before = console.stat().st_size if console.exists() else 0
    inserted: list[str | None] = []
    fleet.on_power_change(lambda event: inserted.append(fleet.vm(name)["media"]) if event.booted else None)

    service.cli("node", "deploy", name, "--image", "demo-disk", "--wait", "--timeout", "600")
    shown = json.loads(service.cli("--json", "node", "show", name).stdout)
    assert shown["provision_state"] == "active" and shown["last_error"] is None
    _wait_for(lambda: demo_image.line in _console_after(console, before), "the image's line on the console", 300)
    text = _console_after(console, before)
    # The agent came from the CD (isolinux on the ISO the BMC fetched), never from the network ...
    assert "Booting from DVD/CD" in text and "ISOLINUX" in text and "Booting from ROM" not in text
    assert f"conductor_node={shown['uuid']}" in text  # the kernel's command line, from the ISO
    assert inserted and inserted[0] is not None and inserted[0].endswith(f"{name}.cd.iso")
    # ... and the machine then booted the image from its disk, with the CD empty.
    assert text.index("ISOLINUX") < text.rindex("Booting from Hard Disk") < text.index(demo_image.line)
    with open(vm["disk"], "rb") as raw:
        assert raw.read(demo_image.image.size) == demo_image.image.path.read_bytes()
    _wait_for(lambda: not fleet.vm(name)["running"], "the image to power the VM off", 120)
    # The workflow ejected the media and deleted the ISO; the BMC's copy is gone too.
    assert fleet.vm(name)["media"] is None and not list((tmp_path / "vms").glob("*.iso*"))
    assert not list((service.settings.data_dir / "vmedia").glob("*.iso"))
    info = fleet.redfish_driver_info(name)
    assert info is not None
    cd = requests.get(f"{info['redfish_address']}/redfish/v1/Managers/{name}-bmc/VirtualMedia/Cd",
                      auth=(info["redfish_username"], info["redfish_password"]),
                      verify=info["redfish_verify_ca"], timeout=10).json()
    assert cd["Inserted"] is False and cd["Image"] is None
    history = service.http.get(f"{service.url}/v1/nodes/{name}/history", params={"limit": 1000}).json()["history"]
    assert [e["event"] for e in history].count("vmedia.built") == 1
    assert sum(e["event"] == "agent.connected" for e in history) == 1


def test_a_vm_that_cannot_start_fails_its_power_on_clearly_and_leaves_the_other_vm_alone(
        settings, tmp_path) -> None:
    """A QEMU that cannot start (a disk in a missing directory): the BMC reads off, the node fails, others run."""
    _need_vms()
    from conductor.bmcsim.fleet import Fleet
    from conductor.bmcsim.vm import VmSpec

    service = Service(settings)
    service.env.update(CONDUCTOR_POWER_TIMEOUT="10", CONDUCTOR_POWER_POLL_INITIAL="0.2",
                       CONDUCTOR_POWER_POLL_MAX="1")
    spec = VmSpec(count=2, memory_mb=64, disk_size="16M", directory=tmp_path / "vms")
    with open(tmp_path / "bmcsim.log", "ab") as log, Fleet(0, vms=spec, stderr=log) as fleet:
        service.start()
        try:
            broken, healthy = [vm["name"] for vm in fleet.vms()]
            fleet.configure_vm(broken, disk=tmp_path / "missing" / "disk.img")
            inventory = tmp_path / "inventory.json"
            inventory.write_text(json.dumps(fleet.inventory()))
            service.cli("node", "import", str(inventory))
            for name in (broken, healthy):
                service.cli("node", "manage", name, "--wait")
            service.cli("node", "power", "on", healthy, "--wait")
            failed = service.cli("node", "power", "on", broken, "--wait", check=False)
            assert failed.returncode == 1
            node = json.loads(service.cli("--json", "node", "show", broken).stdout)
            assert node["power_state"] == "power off" and node["last_error"]
            assert fleet.vm(broken)["last_error"] and "disk" in fleet.vm(broken)["last_error"]
            assert fleet.vm(healthy)["running"]
            # The node can be used again once the machine is fixed.
            fleet.configure_vm(broken, disk=tmp_path / "vms" / "fixed.img")
            service.cli("node", "power", "on", broken, "--wait")
            assert fleet.vm(broken)["running"]
            pid = fleet.vm(healthy)["pid"]
        finally:
            service.stop()
    with pytest.raises(ProcessLookupError):  # the fleet stopped: its QEMUs are gone
        os.kill(pid, 0)


def test_a_disk_too_small_and_a_vm_killed_while_its_agent_boots_fail_nodes_that_can_go_on(
        settings, built_ramdisk, demo_image, tmp_path) -> None:
    """Two VMs at once: one whose disk cannot hold the image, one killed from outside before its agent called.

    Each node ends in a failed state with a clear ``last_error``, leaves it
    (``deleted``, ``manage``), and neither VM's fault touches the other.
    """
    _need_vms()
    from conductor.bmcsim.fleet import Fleet
    from conductor.bmcsim.vm import UserNetwork, VmSpec

    service = Service(settings, workers=2)
    service.env.update(
        CONDUCTOR_AGENT_API_URL=f"http://10.0.2.2:{service.port}",
        CONDUCTOR_RAMDISK_DIR=str(built_ramdisk.kernel.path.parent),
        CONDUCTOR_AUTOMATED_CLEAN="false",  # provide and undeploy without an agent: only the faults boot one
        CONDUCTOR_DEPLOY_AGENT_TIMEOUT="600", CONDUCTOR_INSPECT_AGENT_TIMEOUT="40",
        CONDUCTOR_POWER_POLL_INITIAL="0.2", CONDUCTOR_POWER_POLL_MAX="1",
    )
    spec = VmSpec(count=2, memory_mb=384, disk_size="1G", directory=tmp_path / "vms",
                  network=UserNetwork(boot_url=f"http://10.0.2.2:{service.port}/v1/boot"))
    with open(tmp_path / "bmcsim.log", "ab") as log, Fleet(0, vms=spec, stderr=log) as fleet:
        small, killed = [vm["name"] for vm in fleet.vms()]
        small_disk = tmp_path / "vms" / "small.img"
        small_disk.parent.mkdir(parents=True, exist_ok=True)
        small_disk.write_bytes(bytes(8 << 20))  # 8 MiB: the image is 16 MiB
        fleet.configure_vm(small, disk=small_disk)
        service.start()
        try:
            inventory = tmp_path / "inventory.json"
            inventory.write_text(json.dumps(fleet.inventory()))
            service.cli("node", "import", str(inventory))
            service.cli("image", "add", "demo-disk", str(demo_image.image.path))
            for name in (small, killed):
                service.cli("node", "manage", name, "--wait")
            service.cli("node", "provide", small, "--wait")
            deploy = service.http.put(f"{service.url}/v1/nodes/{small}/states/provision",
                                      json={"target": "active", "image_source": "demo-disk"}, timeout=10).json()
            inspect = service.http.put(f"{service.url}/v1/nodes/{killed}/states/provision",
                                       json={"target": "inspect"}, timeout=10).json()
            _wait_for(lambda: service.http.get(f"{service.url}/v1/nodes/{killed}", timeout=5).json()[
                "provision_state"] == "inspect wait" and fleet.vm(killed)["running"], "the VM booting its agent", 60)
            os.kill(fleet.vm(killed)["pid"], 9)

            failed = service.wait_request(deploy["id"], timeout=600)
            assert failed["state"] == "failed"
            node = service.http.get(f"{service.url}/v1/nodes/{small}", timeout=5).json()
            assert node["provision_state"] == "deploy failed"
            assert "The agent failed to write image" in node["last_error"] and "no disk" in node["last_error"]
            with open(small_disk, "rb") as raw:
                assert raw.read(1 << 20) == bytes(1 << 20)  # nothing written

            timed_out = service.wait_request(inspect["id"], timeout=120)
            assert timed_out["state"] == "failed"
            node = service.http.get(f"{service.url}/v1/nodes/{killed}", timeout=5).json()
            assert node["provision_state"] == "inspect failed"
            assert "Timed out in inspect wait" in node["last_error"]
            assert fleet.vm(killed)["last_exit"]["reason"] == "QEMU was killed by signal SIGKILL"

            # Both can go on.
            service.cli("node", "undeploy", small, "--wait")
            service.cli("node", "manage", killed, "--wait")
            states = {n: service.http.get(f"{service.url}/v1/nodes/{n}", timeout=5).json()["provision_state"]
                      for n in (small, killed)}
            assert states == {small: "available", killed: "manageable"}
        finally:
            service.stop()
    assert not [vm for vm in fleet.vms() if vm["running"]]
