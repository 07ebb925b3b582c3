"""The real dnsmasq, with the configuration and host entries the conductor writes, answers a DHCP client.

dnsmasq runs in one network namespace and busybox's ``udhcpc`` in another,
joined by a veth pair; nodes are enrolled and driven through the real API,
database and workflows (run in this process).  A node waiting for its agent
is answered (iPXE with the boot script's URL, PXE firmware with iPXE by
TFTP); a node in service and an unknown MAC get nothing, and neither does
the waiting node once it stops waiting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor import procs
from conductor.database import Database
from conductor.dhcp.config import DhcpConfig
from conductor.dhcp.hosts import HostsDir
from conductor.dhcp.sync import HostsSync
from tests.conftest import drain
from tests.functional.dhcp.conftest import Link
from tests.unit.engine.test_pxe import agent, put, states, to_available

WAITING = "52:54:00:d0:00:01"
ACTIVE = "52:54:00:d0:00:02"
UNKNOWN = "52:54:00:d0:00:03"
#: ``udhcpc -x`` options: user class (77) "iPXE"; client architecture (93) BIOS, x86-64 UEFI.
AS_IPXE = "0x4d:69505845"
AS_BIOS_PXE = "0x5d:0000"
AS_UEFI_PXE = "0x5d:0007"


class Dnsmasq:
    """dnsmasq started the way ``conductor up`` starts it, in the link's server namespace."""

    def __init__(self, config: DhcpConfig, link: Link, log: Path) -> None:
        self.config = config
        self.log = log
        config.write()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                link.in_server_ns(config.argv(config.program())), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=procs.die_with_parent(os.getpid()),
            )
        deadline = time.monotonic() + 10
        while config.running_pid() != self.proc.pid:  # ``ip netns exec`` execs dnsmasq: one pid
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    def reload(self) -> bool:
        self.proc.send_signal(signal.SIGHUP)
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def network(make_link, settings, tmp_path: Path) -> Iterator[tuple[Link, Dnsmasq, HostsSync]]:
    link = make_link()
    config = DhcpConfig.from_settings(settings.replace(
        dhcp_interface=link.server_if, dhcp_range=f"{link.address(100)},{link.address(200)}",
        agent_api_url=f"http://{link.server_ip}:6385",
    ))
    assert config is not None
    db = Database(settings.sqlalchemy_url)
    server = Dnsmasq(config, link, tmp_path / "dnsmasq.log")
    try:
        yield link, server, HostsSync(db, HostsDir(config.hosts_dir), server.reload)
    finally:
        server.stop()
        db.dispose()


def enrol(client, name: str, mac: str) -> None:  # type: ignore[no-untyped-def]
    body = {"name": name, "driver": "fake", "driver_info": {"deploy_interface": "pxe"}, "ports": [mac]}
    assert client.post("/v1/nodes", json=body).status_code == 201


def test_a_waiting_node_is_answered_an_active_or_unknown_one_is_not(
        network, client, anonymous, conductor_ctx, settings, tmp_path: Path) -> None:
    link, server, sync = network
    enrol(client, "waiting", WAITING)
    enrol(client, "active", ACTIVE)
    to_available(client, anonymous, settings, conductor_ctx, "active")
    put(client, "active", "active")
    drain(conductor_ctx)
    agent(anonymous, settings, client, "active")
    drain(conductor_ctx)
    assert states(client, "active")["provision_state"] == "active"
    put(client, "manage", "waiting")
    drain(conductor_ctx)
    put(client, "inspect", "waiting")
    drain(conductor_ctx)
    assert states(client, "waiting")["provision_state"] == "inspect wait"
    assert sync.sync().added == (WAITING,)

    # iPXE gets the boot script's URL; PXE firmware gets iPXE, by TFTP from this server.
    ipxe = link.dhcp(tmp_path, WAITING, AS_IPXE)
    assert ipxe is not None, server.log.read_text()
    assert ipxe["boot_file"] == f"http://{link.server_ip}:6385/v1/boot"
    assert ipxe["ip"].startswith(link.prefix + ".")
    bios = link.dhcp(tmp_path, WAITING, AS_BIOS_PXE)
    assert bios is not None and bios["boot_file"] == "undionly.kpxe" and bios["siaddr"] == link.server_ip
    uefi = link.dhcp(tmp_path, WAITING, AS_UEFI_PXE)
    assert uefi is not None and uefi["boot_file"] == "snponly.efi"
    # The agent's own DHCP client (no architecture, not iPXE): an address, nothing to boot.
    plain = link.dhcp(tmp_path, WAITING)
    assert plain is not None and plain["boot_file"] == ""

    # A node in service and a MAC no node has: ignored by dnsmasq (not lost on the way).
    assert link.dhcp(tmp_path, ACTIVE, AS_IPXE, wait=1) is None
    assert link.dhcp(tmp_path, UNKNOWN, AS_BIOS_PXE, wait=1) is None
    log = server.log.read_text()
    assert f"DHCPDISCOVER({link.server_if}) {ACTIVE} ignored" in log
    assert f"DHCPDISCOVER({link.server_if}) {UNKNOWN} ignored" in log

    # Once the node stops waiting its entry goes, and dnsmasq forgets it.
    put(client, "abort", "waiting")
    drain(conductor_ctx)
    assert states(client, "waiting")["provision_state"] == "inspect failed"
    assert sync.sync().removed == (WAITING,)
    time.sleep(0.2)  # SIGHUP is asynchronous
    assert link.dhcp(tmp_path, WAITING, AS_IPXE, wait=1) is None
    assert server.log.read_text().count(f"DHCPDISCOVER({link.server_if}) {WAITING} ignored") >= 3


def test_pxe_firmware_can_fetch_ipxe_by_tftp(network, tmp_path: Path) -> None:
    link, server, _sync = network
    if server.config.missing_boot_files():
        pytest.skip(f"{server.config.tftp_root} has no iPXE binaries (Debian package ipxe)")
    client_ip = link.address(50)
    subprocess.run(["ip", "-n", link.client_ns, "addr", "add", f"{client_ip}/24", "dev", link.client_if],
                   check=True)
    subprocess.run(["ip", "-n", link.client_ns, "link", "set", link.client_if, "up"], check=True)
    fetched = tmp_path / "undionly.kpxe"
    result = subprocess.run(
        ["ip", "netns", "exec", link.client_ns, "busybox", "tftp", "-g", "-r", "undionly.kpxe",
         "-l", str(fetched), link.server_ip],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr + server.log.read_text()
    assert fetched.read_bytes() == (server.config.tftp_root / "undionly.kpxe").read_bytes()
