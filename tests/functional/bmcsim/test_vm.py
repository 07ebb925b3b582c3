"""VM BMCs: real IPMI driving real QEMU machines (TCG), no mocks.

The guests are tiny: an empty disk (the firmware, then iPXE, look for
something to boot and find nothing: the machine stays on), or a disk whose
boot sector prints a line on the serial port and powers the machine off
(:data:`~conductor.bmcsim.vm.POWEROFF_BOOT_SECTOR`).  Everything is seen the
way a user sees it: the power state through the IPMI client, the machine
through its process, its QMP socket and its serial console.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conductor.bmcsim import Fleet, FleetError, RemoteFleet, UserNetwork, VmSpec
from conductor.bmcsim.cli import sim
from conductor.bmcsim.vm import POWEROFF_MESSAGE, missing_requirements, write_poweroff_disk
from conductor.procs import start_time
from tests import processes

from .conftest import client_for, requires_ipmitool
from .test_ipmitool import ipmitool

WAIT = 60.0  # generous bound for anything a TCG guest or the simulator does


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {what}")
        time.sleep(0.05)


def vm_client(bmc: Any) -> Any:
    """A client that sends each command once and waits long for its answer.

    A TCG guest beside a busy test run can starve the simulator: the quick
    client of the other tests times out and sends "power on" again, which a
    BMC rightly obeys, so a machine whose guest has already powered off
    would start a second time under the test's feet.
    """
    return client_for(bmc, timeout=15.0, retries=0)


def console(vm: dict[str, Any], since: int | None = None) -> str:
    """The VM's serial output (from ``since``: default this boot's start), escapes removed."""
    data = Path(vm["console_log"]).read_bytes()[vm["console_offset"] if since is None else since:]
    return re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|c)", "", data.decode(errors="replace")).replace("\r", "")


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def running(pid: int) -> bool:
    return start_time(pid) is not None  # None: gone, or a zombie


def qemus_using(path: Path) -> list[int]:
    """Running processes whose command line names ``path`` (the VM's disk)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(path).encode() in args and running(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_power_on_starts_qemu_with_the_nodes_disk_mac_and_boot_order(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = vm_fleet(1)
    bmc = fleet.bmcs[0]
    client = client_for(bmc)
    assert (bmc.name, client.get_power(), fleet.vm(bmc.name)["running"]) == ("vm-0000", "off", False)

    client.set_power("on")
    vm = wait_for("QEMU runs", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    wait_for("the BMC reads on", lambda: client.get_power() == "on")  # once QEMU runs
    args = cmdline(vm["pid"])
    assert args[0].endswith("qemu-system-x86_64") and args[args.index("-accel") + 1] == "tcg"
    assert args[args.index("-boot") + 1] == "order=cn"  # no override: disk first, then the network
    nic = next(arg for arg in args if "netdev=net0" in arg)
    assert f"mac={bmc.mac}" in nic and "romfile=/usr/lib/ipxe/qemu/" in nic
    assert f"file={vm['disk']},format=raw" in args[args.index("-drive") + 1]
    assert os.path.getsize(vm["disk"]) == 16 << 20 == vm["disk_size"]  # created at the declared size
    # QEMU itself: running, with the NIC the inventory enrols.
    assert fleet.vm_qmp(bmc.name, "query-status")["status"] == "running"
    network = fleet.vm_qmp(bmc.name, "human-monitor-command", {"command-line": "info network"})
    assert f"macaddr={bmc.mac}" in network
    assert fleet.inventory()["nodes"][0]["ports"] == [bmc.mac]
    # The firmware ran with its console on the serial log: disk first, then iPXE.
    text = wait_for("iPXE booting", lambda: "Booting from ROM" in (t := console(vm)) and t)
    assert text.index("Booting from Hard Disk") < text.index("Booting from ROM")

    client.set_power("off")
    assert client.get_power() == "off"
    stopped = wait_for("QEMU quit", lambda: not (s := fleet.vm(bmc.name))["running"] and s)
    assert stopped["last_exit"]["reason"] == "stopped (BMC power off)" and stopped["pid"] is None
    assert not running(vm["pid"])


def test_a_one_time_pxe_boot_tries_the_network_first_and_the_next_boot_does_not(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    """The guest's boot sector powers the machine off: the BMC reads "off" by itself."""
    fleet: Fleet = vm_fleet(1)
    bmc = fleet.bmcs[0]
    write_poweroff_disk(Path(fleet.vm(bmc.name)["disk"]), 16 << 20)
    client = vm_client(bmc)

    client.set_boot_device("pxe")
    client.set_power("on")
    vm = wait_for("QEMU runs", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    wait_for("the BMC reads on", lambda: client.get_power() == "on")  # once QEMU runs
    assert vm["boot"] == {"device": "pxe", "persistent": False, "order": "cn", "once": "nc"}
    wait_for("the guest powers off, and the BMC says so", lambda: client.get_power() == "off")
    first = console(vm)
    assert "Booting from ROM" in first and POWEROFF_MESSAGE in first, first
    assert first.index("Booting from ROM") < first.index(POWEROFF_MESSAGE)  # network first, then the disk
    assert "Nothing to boot" in first  # QEMU's DHCP offered no boot file (no --vm-boot-url)
    assert fleet.vm(bmc.name)["last_exit"]["reason"] == "the guest powered off"
    events = [(e.old, e.new, e.cause) for e in fleet.events()]
    assert events[-1] == ("on", "off", "vm-exit"), (events, fleet.vm(bmc.name)["history"])
    assert client.get_boot_device().device == "default"  # the override was used up

    client.set_power("on")
    vm = wait_for("QEMU runs again", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    wait_for("the BMC reads on", lambda: client.get_power() == "on")  # once QEMU runs
    assert (vm["boot"]["device"], vm["boot"]["order"], vm["boot"]["once"]) == ("default", "cn", None)
    wait_for("the guest powers off again", lambda: client.get_power() == "off")
    second = console(vm)
    assert POWEROFF_MESSAGE in second and "Booting from ROM" not in second, second


def test_soft_power_off_presses_the_acpi_button_and_a_guest_without_acpi_stays_on(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = vm_fleet(1)
    bmc = fleet.bmcs[0]
    client = vm_client(bmc)
    client.set_power("on")
    vm = wait_for("QEMU runs", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    wait_for("the BMC reads on", lambda: client.get_power() == "on")  # once QEMU runs

    client.set_power("soft")
    wait_for("QEMU saw the power button", lambda: any(
        "QMP event POWERDOWN" in what for _, what in fleet.vm(bmc.name)["history"]))
    # SeaBIOS and iPXE do not handle ACPI: the machine is still on, and the BMC says so.
    wait_for("the BMC reads on", lambda: client.get_power() == "on")
    assert fleet.vm(bmc.name)["pid"] == vm["pid"] and running(vm["pid"])
    events = [(e.old, e.new, e.cause) for e in fleet.events()]
    assert events[-1] == ("on", "on", "soft"), (events, fleet.vm(bmc.name)["history"])

    client.set_power("off")
    wait_for("QEMU gone", lambda: not running(vm["pid"]))
    assert client.get_power() == "off"


def test_a_qemu_killed_from_outside_reads_off(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = vm_fleet(1)
    bmc = fleet.bmcs[0]
    client = client_for(bmc)
    client.set_power("on")
    vm = wait_for("QEMU runs", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    wait_for("the BMC reads on", lambda: client.get_power() == "on")  # once QEMU runs

    os.kill(vm["pid"], signal.SIGKILL)
    wait_for("the BMC reads off", lambda: client.get_power() == "off")
    assert fleet.vm(bmc.name)["last_exit"]["reason"] == "QEMU was killed by signal SIGKILL"
    assert [(e.old, e.new, e.cause) for e in fleet.events()][-1] == ("on", "off", "vm-exit")

    client.set_power("on")  # and it powers on again
    wait_for("QEMU runs again", lambda: fleet.vm(bmc.name)["running"])
    wait_for("the BMC reads on", lambda: client.get_power() == "on")


def test_vms_that_cannot_start_read_off_with_a_clear_error_and_the_others_run(vm_fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = vm_fleet(4)
    missing_dir, no_qemu, not_qcow2, good = (bmc.name for bmc in fleet.bmcs)
    fleet.configure_vm(missing_dir, disk=tmp_path / "no-such-dir" / "disk.img")
    fleet.configure_vm(no_qemu, qemu="/nonexistent/qemu-system-x86_64")
    (tmp_path / "garbage.qcow2").write_text("not a disk image\n")
    fleet.configure_vm(not_qcow2, disk=tmp_path / "garbage.qcow2", disk_format="qcow2")
    clients = {bmc.name: client_for(bmc) for bmc in fleet.bmcs}
    for client in clients.values():
        client.set_power("on")

    wait_for("the good VM runs", lambda: fleet.vm(good)["running"])
    for name in (missing_dir, no_qemu, not_qcow2):
        wait_for(f"{name} failed", lambda name=name: any(
            e.bmc == name and e.cause == "vm-failed" for e in fleet.events()))
        assert clients[name].get_power() == "off" and fleet.vm(name)["running"] is False
    assert "cannot create disk" in fleet.vm(missing_dir)["last_error"]
    assert "No such file or directory" in fleet.vm(missing_dir)["last_error"]
    assert fleet.vm(no_qemu)["last_error"] == "cannot run /nonexistent/qemu-system-x86_64: No such file or directory"
    assert "QEMU exited with status 1 at start" in fleet.vm(not_qcow2)["last_error"]
    assert "qcow2" in fleet.vm(not_qcow2)["last_error"]  # QEMU's own words, from its log
    failed = {e.bmc for e in fleet.events() if e.cause == "vm-failed" and e.new == "off"}
    assert failed == {missing_dir, no_qemu, not_qcow2}
    wait_for("the good BMC reads on", lambda: clients[good].get_power() == "on")
    # A power on completes only once QEMU runs: the machines that could not start never read "on".
    assert {e.bmc for e in fleet.events() if e.cause == "vm-started"} == {good}
    assert not [e for e in fleet.events() if e.bmc in failed and e.new == "on" and e.cause != "on"]

    # Fixed, it starts.
    fleet.configure_vm(no_qemu, qemu="qemu-system-x86_64")
    clients[no_qemu].set_power("on")
    wait_for("the fixed VM runs", lambda: fleet.vm(no_qemu)["running"])
    assert fleet.vm(no_qemu)["last_error"] is None


def test_reset_keeps_the_process_unless_the_boot_order_changes(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = vm_fleet(1)
    bmc = fleet.bmcs[0]
    client = client_for(bmc)
    client.set_power("on")
    vm = wait_for("QEMU runs", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    wait_for("the BMC reads on", lambda: client.get_power() == "on")  # once QEMU runs

    client.set_power("reset")
    wait_for("QEMU reset", lambda: any("QMP event RESET" in what for _, what in fleet.vm(bmc.name)["history"]))
    assert fleet.vm(bmc.name)["pid"] == vm["pid"]

    client.set_boot_device("pxe")  # one time: QEMU starts again with the network first
    client.set_power("reset")
    again = wait_for("a new QEMU", lambda: (s := fleet.vm(bmc.name))["pid"] not in (None, vm["pid"]) and s)
    assert again["boot"]["once"] == "nc" and "order=cn,once=nc" in cmdline(again["pid"])
    assert not running(vm["pid"])

    client.set_power("cycle")  # off, then on: another process, the override used up
    third = wait_for("QEMU after the cycle", lambda: (s := fleet.vm(bmc.name))["pid"] not in (None, again["pid"]) and s)
    assert third["boot"]["device"] == "default"
    wait_for("the BMC reads on", lambda: client.get_power() == "on")


def test_a_shard_restart_leaves_the_vms_running(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = vm_fleet(1, fleet={"probe_interval": 0.2, "probe_timeout": 0.2})
    bmc = fleet.bmcs[0]
    client = client_for(bmc)
    client.set_power("on")
    vm = wait_for("QEMU runs", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    wait_for("the BMC reads on", lambda: client.get_power() == "on")  # once QEMU runs

    fleet.crash_shard(0)
    wait_for("the shard restarted", lambda: fleet.restarts)
    wait_for("the BMC reads on", lambda: client.get_power() == "on")
    assert fleet.vm(bmc.name)["pid"] == vm["pid"] and running(vm["pid"])
    client.set_power("off")  # the new shard process drives the same machine
    wait_for("QEMU gone", lambda: not running(vm["pid"]))


def test_no_qemu_outlives_the_fleet(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = vm_fleet(2)
    for bmc in fleet.bmcs:
        client_for(bmc).set_power("on")
    vms = [wait_for("QEMU runs", lambda name=bmc.name: (s := fleet.vm(name))["running"] and s)
           for bmc in fleet.bmcs]
    assert all(qemus_using(Path(vm["disk"])) == [vm["pid"]] for vm in vms)
    assert all(os.getpgid(vm["pid"]) == vm["pid"] for vm in vms)  # each leads its own process group

    fleet.stop()  # returns once every machine has quit
    for vm in vms:
        assert not running(vm["pid"]) and qemus_using(Path(vm["disk"])) == []


def test_no_qemu_outlives_a_killed_simulator_process(tmp_path: Path) -> None:
    """``conductor sim run --vm-count`` killed with SIGKILL: its VMs go too (parent-death signal)."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    remote = RemoteFleet.spawn(1, vms=VmSpec(count=1, memory_mb=128, disk_size="8M", directory=tmp_path / "vms"))
    try:
        plain, bmc = remote.bmcs
        assert remote.inventory()["nodes"][1]["ports"] == [bmc.mac] and bmc.vm and not plain.vm
        assert [vm["name"] for vm in remote.vms()] == [bmc.name]
        with pytest.raises(FleetError, match="sim-0000 is not a VM BMC"):
            remote.vm(plain.name)
        assert remote.configure_vm(bmc.name, qemu="/opt/qemu")["qemu"] == "/opt/qemu"
        listed = CliRunner().invoke(sim, ["--control", remote.url, "vms"])
        assert listed.exit_code == 0 and bmc.mac in listed.output and str(tmp_path / "vms") in listed.output
        remote.configure_vm(bmc.name, qemu="qemu-system-x86_64")
        client_for(bmc).set_power("on")
        vm = wait_for("QEMU runs", lambda: (s := remote.vm(bmc.name))["running"] and s)
        assert remote.state(bmc.name)["vm"]["pid"] == vm["pid"]
        assert remote.vm_qmp(bmc.name, "query-status")["running"] is True
        assert vm["pid"] in {r.pid for r in processes.descendants(os.getpid())}

        assert remote.process is not None
        remote.process.kill()
        remote.process.wait()
        wait_for("QEMU gone", lambda: not running(vm["pid"]), timeout=20)
    finally:
        remote.stop()


def test_the_inventory_enrols_vm_nodes_with_their_mac_as_a_port(client) -> None:  # type: ignore[no-untyped-def]
    """``conductor node import`` posts each inventory entry as is: the VM's MAC becomes the node's port."""
    fleet = Fleet(1, vms=VmSpec(count=2))  # not started: no QEMU needed to write an inventory
    for entry in fleet.inventory()["nodes"]:
        assert client.post("/v1/nodes", json=entry).status_code == 201
    for bmc in fleet.bmcs:
        ports = client.get(f"/v1/ports?node={bmc.name}").get_json()["ports"]
        assert [port["address"] for port in ports] == ([bmc.mac] if bmc.vm else [])


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed (Debian package qemu-utils)")
def test_a_qcow2_disk_is_created_by_qemu_img_at_the_declared_size(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = vm_fleet(1, disk_format="qcow2", disk_size="1G")
    bmc = fleet.bmcs[0]
    client_for(bmc).set_power("on")
    vm = wait_for("QEMU runs", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    assert vm["disk"].endswith(".qcow2") and "format=qcow2" in " ".join(cmdline(vm["pid"]))
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", vm["disk"]], check=True,
                                     capture_output=True, text=True).stdout)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 1 << 30)
    assert os.path.getsize(vm["disk"]) < 1 << 20  # allocated on write


def test_a_network_boot_fetches_the_boot_url_given_by_qemus_dhcp(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    """``--vm-boot-url``: iPXE gets the URL by DHCP and reaches this host's loopback as 10.0.2.2."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = b"#!ipxe\nchain http://10.0.2.2:%d/hello?mac=${net0/mac}\n" % self.server.server_address[1]
            self.send_response(200 if self.path == "/boot" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fleet: Fleet = vm_fleet(1, network=UserNetwork(boot_url=f"http://10.0.2.2:{server.server_address[1]}/boot"))
        bmc = fleet.bmcs[0]
        client = client_for(bmc)
        client.set_boot_device("pxe", persistent=True)
        client.set_power("on")
        wait_for("iPXE chained to the script's URL", lambda: len(seen) >= 2)
        assert [urllib.parse.unquote(path) for path in seen[:2]] == ["/boot", f"/hello?mac={bmc.mac}"]
        assert fleet.vm(bmc.name)["boot"]["order"] == "nc"
        client.set_power("off")
    finally:
        server.shutdown()
        server.server_close()


@requires_ipmitool
def test_ipmitool_sees_a_guest_that_powers_itself_off(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = vm_fleet(1)
    bmc = fleet.bmcs[0]
    write_poweroff_disk(Path(fleet.vm(bmc.name)["disk"]), 16 << 20)
    assert ipmitool(bmc, "chassis", "power", "on").stdout.strip() == "Chassis Power Control: Up/On"
    wait_for("ipmitool reads on (QEMU runs)", lambda: ipmitool(bmc, "chassis", "power", "status").stdout.strip()
             == "Chassis Power is on")
    wait_for("ipmitool reads off", lambda: ipmitool(bmc, "chassis", "power", "status").stdout.strip()
             == "Chassis Power is off")
    assert POWEROFF_MESSAGE in console(fleet.vm(bmc.name))


def test_drift_and_initial_power_drive_the_machine_too(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    """``sim power NAME on|off`` (behind the conductor's back) really starts and stops the VM."""
    fleet: Fleet = vm_fleet(1, fleet={"initial_power": "on"})
    bmc = fleet.bmcs[0]
    first = wait_for("the VM of a BMC that starts on runs", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    assert fleet.set_power(bmc.name, "off")["power"] == "off"
    wait_for("QEMU quit", lambda: not fleet.vm(bmc.name)["running"])
    assert not running(first["pid"])
    fleet.set_power(bmc.name, "on")
    wait_for("QEMU runs again", lambda: fleet.vm(bmc.name)["running"])
    wait_for("the BMC reads on", lambda: client_for(bmc).get_power() == "on")
