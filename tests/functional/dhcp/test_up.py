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


def test_up_answers_a_node_while_it_waits_and_dnsmasq_dies_with_it(make_link, settings, tmp_path) -> None:
    link = make_link(server_in_namespace=False)
    service = Service(settings, env={"CONDUCTOR_AGENT_API_URL": f"http://{link.server_ip}:6385"})
    service.argv += ["--dhcp-interface", link.server_if, "--dhcp-range", f"{link.address(100)},{link.address(200)}"]
    try:
        service.start()
        until(lambda: f"DHCP            dnsmasq on {link.server_if}" in (settings.data_dir / "up.log").read_text(),
              10, "the DHCP line of conductor up")
        (dnsmasq,) = [r for r in service.tree() if "dnsmasq --keep-in-foreground" in r.name]
        assert link.dhcp(tmp_path, MAC, AS_IPXE, wait=1) is None  # no node has it yet

        body = {"name": "n1", "driver": "fake", "driver_info": {"deploy_interface": "pxe"}, "ports": [MAC]}
        assert service.http.post(f"{service.url}/v1/nodes", json=body, timeout=10).status_code == 201
        for target in ("manage", "inspect"):
            response = service.http.put(f"{service.url}/v1/nodes/n1/states/provision", json={"target": target},
                                        timeout=10)
            assert response.status_code == 202, response.text
            if target == "manage":
                assert service.wait_request(response.json()["id"])["state"] == "succeeded"
        until(lambda: service.http.get(f"{service.url}/v1/nodes/n1", timeout=10).json()["provision_state"]
              == "inspect wait", 30, "inspect wait")
        lease = until(lambda: link.dhcp(tmp_path, MAC, AS_IPXE), 20, "an answer to the waiting node")
        assert lease["boot_file"] == f"http://{link.server_ip}:6385/v1/boot"

        response = service.http.put(f"{service.url}/v1/nodes/n1/states/provision", json={"target": "abort"},
                                    timeout=10)
        assert response.status_code == 202, response.text
        until(lambda: service.http.get(f"{service.url}/v1/nodes/n1", timeout=10).json()["provision_state"]
              == "inspect failed", 30, "inspect failed")
        until(lambda: link.dhcp(tmp_path, MAC, AS_IPXE, wait=1) is None, 20, "silence once it stopped waiting")

        # Killed with the supervisor, whatever kills it.
        service.proc.send_signal(signal.SIGKILL)
        service.proc.wait()
        left = processes.wait_gone([dnsmasq], 30)
        processes.kill(left)
        assert not left, "dnsmasq outlived conductor up"
    finally:
        service.stop()
        # The rest of the tree (API, workers) goes with the supervisor: checked by the lifecycle tests.
        processes.kill(processes.wait_gone([r for r in processes.ours().values()
                                            if str(settings.data_dir) in r.name], 30))
