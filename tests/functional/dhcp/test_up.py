"""``conductor up --dhcp-interface IF --dhcp-range A,B``: dnsmasq under the supervisor, entries kept current.

The server's end of the veth pair is in this host's own namespace (where
``conductor up`` runs), with an address of 198.18.0.0/15 (reserved for
benchmarks); the client's end is in a namespace of its own.  Both are
deleted at the end.
"""

from __future__ import annotations

import signal
import time

from tests import processes
from tests.conftest import Service
from tests.functional.dhcp.test_dnsmasq import AS_IPXE

MAC = "52:54:00:d1:00:01"


def until(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def up(settings, link) -> Service:  # type: ignore[no-untyped-def]
    service = Service(settings, env={"CONDUCTOR_AGENT_API_URL": f"http://{link.server_ip}:6385"})
    service.argv += ["--dhcp-interface", link.server_if, "--dhcp-range", f"{link.address(100)},{link.address(200)}"]
    return service


def provision_state(service: Service) -> str:
    return service.http.get(f"{service.url}/v1/nodes/n1", timeout=10).json()["provision_state"]


def target(service: Service, name: str) -> str:
    response = service.http.put(f"{service.url}/v1/nodes/n1/states/provision", json={"target": name}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_up_answers_a_node_while_it_waits_and_dnsmasq_lives_and_dies_with_up(make_link, settings, tmp_path) -> None:
    link = make_link(server_in_namespace=False)
    first = up(settings, link)
    try:
        first.start()
        until(lambda: f"DHCP            dnsmasq on {link.server_if}" in (settings.data_dir / "up.log").read_text(),
              10, "the DHCP line of conductor up")
        assert link.dhcp(tmp_path, MAC, AS_IPXE, wait=1) is None  # no node has it yet
        body = {"name": "n1", "driver": "fake", "driver_info": {"deploy_interface": "pxe"}, "ports": [MAC]}
        assert first.http.post(f"{first.url}/v1/nodes", json=body, timeout=10).status_code == 201
        assert first.wait_request(target(first, "manage"))["state"] == "succeeded"
        target(first, "inspect")
        until(lambda: provision_state(first) == "inspect wait", 30, "inspect wait")
        lease = until(lambda: link.dhcp(tmp_path, MAC, AS_IPXE), 20, "an answer to the waiting node")
        assert lease["boot_file"] == f"http://{link.server_ip}:6385/v1/boot"
        (dnsmasq,) = [r for r in first.tree() if "dnsmasq --keep-in-foreground" in r.name]
    finally:
        first.stop()  # SIGTERM: checks that its whole tree, dnsmasq included, is gone
    assert "exiting on receipt of SIGTERM" in (settings.data_dir / "logs" / "dnsmasq.log").read_text()

    second = up(settings, link)
    try:
        second.start()
        # Still waiting: answered from the start (the entries are written before dnsmasq reads them).
        assert link.dhcp(tmp_path, MAC, AS_IPXE) is not None
        target(second, "abort")
        until(lambda: provision_state(second) == "inspect failed", 30, "inspect failed")
        until(lambda: link.dhcp(tmp_path, MAC, AS_IPXE, wait=1) is None, 20, "silence once it stopped waiting")

        # Killed with the supervisor, whatever kills it, like the rest of the tree.
        tree = second.tree()[1:]
        assert any("dnsmasq --keep-in-foreground" in r.name and r != dnsmasq for r in tree)
        second.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        second.proc.wait()  # type: ignore[union-attr]
        left = processes.wait_gone(tree, 60)
        processes.kill(left)
        assert not left, f"still running after the supervisor's SIGKILL: {processes.describe(left)}"
    finally:
        second.stop()
