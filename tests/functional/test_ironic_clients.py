"""The real OpenStack clients against a real `conductor up`: the `baremetal` CLI and openstacksdk.

Both authenticate with our token as OpenStack clients do without Keystone
(keystoneauth's ``admin_token`` plugin sends it as ``X-Auth-Token``;
``http_basic`` as the password), discover the API at ``/baremetal`` and
negotiate its microversion; nodes are ``fake-hardware`` (our ``fake``
driver), so no machine is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

openstack = pytest.importorskip("openstack", reason="openstacksdk is in the test extra")
pytest.importorskip("ironicclient", reason="python-ironicclient is in the test extra")

BAREMETAL = Path(sys.executable).parent / "baremetal"
CHECKSUM = "c" * 64
IMAGE = "http://images.example.com/disk.raw"
TIMEOUT = 60


def client_env(service: Any, home: Path, **extra: str) -> dict[str, str]:
    """The environment of an OpenStack client pointed at ``service`` with its admin token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(
        # (python-ironicclient caches the negotiated version under ~/.cache.)
        HOME=str(home), XDG_CACHE_HOME=str(home / "cache"),
        OS_AUTH_TYPE="admin_token", OS_ENDPOINT=f"{service.url}/baremetal", OS_TOKEN=service.admin_token,
    )
    env.update(extra)
    return env


class CLI:
    """Runs the `baremetal` command of python-ironicclient."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(BAREMETAL), *args], env=self.env, capture_output=True, text=True, timeout=180)
        if check and result.returncode != 0:
            raise AssertionError(f"baremetal {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-f", "json").stdout)


def wait_states(service: Any, node: str, **wanted: str) -> dict[str, Any]:
    """Poll the node's states (Ironic's endpoint) until each field has its wanted value."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        states = service.http.get(f"{service.url}/baremetal/v1/nodes/{node}/states",
                                  headers={"X-OpenStack-Ironic-API-Version": "latest"}, timeout=5).json()
        if all(states.get(k) == v for k, v in wanted.items()) or time.monotonic() > deadline:
            assert all(states.get(k) == v for k, v in wanted.items()), states
            return dict(states)
        time.sleep(0.1)


def rejected(service: Any, reason: str) -> float:
    """How many state changes the API refused for ``reason`` (from /metrics/fleet)."""
    for line in service.http.get(f"{service.url}/metrics/fleet", timeout=5).text.splitlines():
        if line.startswith("conductor_requests_rejected_total") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.skipif(not BAREMETAL.exists(), reason="the baremetal command of python-ironicclient is not installed")
def test_the_baremetal_cli(service_factory, tmp_path) -> None:
    service = service_factory()
    cli = CLI(client_env(service, tmp_path))

    assert {"fake-hardware", "ipmi"} <= {d["name"] for d in cli.json("driver", "list")}

    created = cli.json("node", "create", "--driver", "fake-hardware", "--name", "c1",
                       "--driver-info", "fake_delay=0.2", "--resource-class", "gold")
    assert (created["provision_state"], created["driver"], created["resource_class"]) == ("enroll", "fake-hardware",
                                                                                          "gold")
    assert created["driver_info"] == {"fake_delay": 0.2}
    assert [n["name"] for n in cli.json("node", "list")] == ["c1"]

    cli.run("node", "set", "c1", "--instance-info", f"image_source={IMAGE}",
            "--instance-info", f"image_checksum={CHECKSUM}", "--property", "cpus=8", "--extra", "rack=r4",
            "--description", "first of its kind")
    cli.run("node", "unset", "c1", "--extra", "rack")
    shown = cli.json("node", "show", "c1")
    assert shown["instance_info"] == {"image_source": IMAGE, "image_checksum": CHECKSUM}
    assert (shown["properties"], shown["extra"], shown["description"]) == ({"cpus": 8}, {}, "first of its kind")

    # Provisioning, with the client's own --wait (it polls the node).
    cli.run("node", "manage", "c1", "--wait", str(TIMEOUT))
    cli.run("node", "provide", "c1", "--wait", str(TIMEOUT))
    wait_states(service, "c1", provision_state="available", target_provision_state=None)

    port = cli.json("port", "create", "52:54:00:12:34:56", "--node", "c1")
    assert port["node_uuid"] == created["uuid"]
    assert [p["address"] for p in cli.json("port", "list", "--node", "c1")] == ["52:54:00:12:34:56"]

    cli.run("node", "power", "on", "c1")
    wait_states(service, "c1", power_state="power on", target_power_state=None)
    cli.run("node", "deploy", "c1", "--wait", str(TIMEOUT))
    wait_states(service, "c1", provision_state="active", target_provision_state=None)
    cli.run("node", "reboot", "c1")
    wait_states(service, "c1", power_state="power on", target_power_state=None)
    cli.run("node", "power", "off", "c1")
    wait_states(service, "c1", power_state="power off", target_power_state=None)

    cli.run("node", "maintenance", "set", "c1", "--reason", "disk swap")
    shown = cli.json("node", "show", "c1")
    assert (shown["maintenance"], shown["maintenance_reason"]) == (True, "disk swap")
    cli.run("node", "maintenance", "unset", "c1")
    assert service.http.get(f"{service.url}/v1/nodes/c1", timeout=5).json()["maintenance"] is False

    cli.run("node", "undeploy", "c1", "--wait", str(TIMEOUT))
    shown = cli.json("node", "show", "c1")
    # The instance went with the deployment, as in Ironic.
    assert (shown["provision_state"], shown["instance_info"]) == ("available", {})

    # Errors, as the client reports them: 404, and 400 for an action the state has not.
    missing = cli.run("node", "show", "nope", check=False)
    assert missing.returncode == 1 and "Node nope not found. (HTTP 404)" in missing.stderr
    invalid = cli.run("node", "inspect", "c1", check=False)
    assert invalid.returncode == 1 and "(HTTP 400)" in invalid.stderr and "not allowed" in invalid.stderr

    # The token as HTTP basic's password works too.
    basic_env = client_env(service, tmp_path, OS_AUTH_TYPE="http_basic", OS_USERNAME="ops",
                           OS_PASSWORD=service.admin_token)
    del basic_env["OS_TOKEN"]
    basic = CLI(basic_env)
    assert [n["name"] for n in basic.json("node", "list")] == ["c1"]
    cli.run("node", "delete", "c1")
    assert service.http.get(f"{service.url}/v1/nodes/c1", timeout=5).status_code == 404

    # A node busy with a transition answers 409, as a locked node does in
    # Ironic: the client retries it 5 times, 2 s apart, then gives up.
    # (The node is made busy through our own API: the CLI's part is the refusal.)
    service.http.post(f"{service.url}/v1/nodes", json={"name": "c2", "driver": "fake",
                                                         "driver_info": {"fake_delay": 120}}, timeout=5)
    service.wait_request(service.http.put(f"{service.url}/v1/nodes/c2/states/provision", json={"target": "manage"},
                                          timeout=5).json()["id"])
    service.http.put(f"{service.url}/v1/nodes/c2/states/provision", json={"target": "provide"}, timeout=5)
    busy = cli.run("node", "power", "on", "c2", check=False)
    assert busy.returncode == 1 and "(HTTP 409)" in busy.stderr and "transition in progress" in busy.stderr
    assert rejected(service, "transition_in_progress") >= 6


def test_openstacksdk(service_factory, tmp_path) -> None:
    from openstack import exceptions

    service = service_factory()
    url = f"{service.url}/baremetal"
    # Discovery needs no token (as in Ironic); the rest does.
    assert requests.get(f"{url}/", timeout=5).json()["versions"][0]["version"] == "1.80"
    assert requests.get(f"{url}/v1/nodes", timeout=5).status_code == 401
    conn = openstack.connect(
        auth_type="admin_token", auth={"endpoint": url, "token": service.admin_token},
        baremetal_endpoint_override=url,
        # Shown as they come (the SDK retries 409 and 503 by default, as for a locked Ironic node).
        baremetal_status_code_retries=0,
    )
    baremetal = conn.baremetal
    endpoint = baremetal.get_endpoint_data()
    assert (endpoint.min_microversion, endpoint.max_microversion) == ((1, 1), (1, 80))

    node = baremetal.create_node(driver="fake-hardware", name="s1", driver_info={"fake_delay": 0.2},
                                 instance_info={"image_source": IMAGE, "image_checksum": CHECKSUM},
                                 properties={"cpus": 4})
    assert (node.provision_state, node.driver, node.properties) == ("enroll", "fake-hardware", {"cpus": 4})
    node = baremetal.set_node_provision_state(node, "manage", wait=True, timeout=TIMEOUT)
    assert node.provision_state == "manageable"
    node = baremetal.set_node_provision_state(node, "provide", wait=True, timeout=TIMEOUT)
    assert node.provision_state == "available"

    baremetal.set_node_power_state(node, "power on", wait=True, timeout=TIMEOUT)
    assert baremetal.get_node("s1").power_state == "power on"
    baremetal.set_node_power_state(node, "power off", wait=True, timeout=TIMEOUT)
    assert baremetal.get_node("s1").power_state == "power off"

    baremetal.set_node_provision_state(node, "active")
    (done,) = baremetal.wait_for_nodes_provision_state([node.id], "active", timeout=TIMEOUT)
    assert done.provision_state == "active"
    assert [(n.name, n.provision_state) for n in baremetal.nodes(details=True)] == [("s1", "active")]

    port = baremetal.create_port(node_id=node.id, address="52:54:00:ab:cd:ef")
    assert [p.id for p in baremetal.ports(node=node.id)] == [port.id]
    baremetal.patch_node(node, [{"op": "add", "path": "/extra/owner", "value": "team-a"},
                                {"op": "replace", "path": "/description", "value": "rack 4"}])
    patched = baremetal.get_node(node.id)
    assert (patched.extra, patched.description) == ({"owner": "team-a"}, "rack 4")
    baremetal.set_node_maintenance(node, reason="fan")
    assert baremetal.get_node(node.id).maintenance_reason == "fan"
    baremetal.unset_node_maintenance(node)
    assert baremetal.get_node(node.id).is_maintenance is False

    # Errors: 404, 400 for an action the state has not, 409 while a transition runs.
    with pytest.raises(exceptions.NotFoundException):
        baremetal.get_node("nope")
    with pytest.raises(exceptions.BadRequestException, match="not allowed"):
        baremetal.set_node_provision_state(node, "provide")
    baremetal.update_node(node, driver_info={"fake_delay": 3})
    baremetal.set_node_provision_state(node, "deleted")
    with pytest.raises(exceptions.ConflictException, match="transition in progress"):
        baremetal.set_node_power_state(node, "power on")
    node = baremetal.wait_for_nodes_provision_state([node.id], "available", timeout=TIMEOUT)[0]
    assert node.instance_info == {}

    # A failure reaches the waiting client with the node's last error.
    baremetal.update_node(node, driver_info={"fake_fail": "disk on fire"},
                          instance_info={"image_source": IMAGE, "image_checksum": CHECKSUM})
    with pytest.raises(exceptions.ResourceFailure, match="disk on fire"):
        baremetal.set_node_provision_state(node, "active", wait=True, timeout=TIMEOUT)
    assert baremetal.get_node(node.id).provision_state == "deploy failed"

    # (A failed node may be deleted in maintenance, as in Ironic.)
    with pytest.raises(exceptions.ConflictException):
        baremetal.delete_node(node)
    baremetal.set_node_maintenance(node, reason="scrapped")
    baremetal.delete_node(node)
    assert list(baremetal.nodes()) == []

    # The SDK's cloud layer (what Ansible's openstack.cloud.baremetal_node uses): enrol with a NIC,
    # manage and provide, waiting; then take it away.
    machine = conn.register_machine(nics=[{"address": "52:54:00:00:10:01"}], driver="fake-hardware",
                                    name="m1", wait=True, timeout=TIMEOUT)
    assert machine.provision_state == "available"
    assert [p.address for p in baremetal.ports(node=machine.id)] == ["52:54:00:00:10:01"]
    conn.unregister_machine(nics=[{"address": "52:54:00:00:10:01"}], uuid=machine.id, wait=True)
    assert list(baremetal.nodes()) == [] and list(baremetal.ports()) == []
