"""The real agent's protocol code against the real service: `conductor up`, a simulated BMC, busybox on this host.

The agent ramdisk's ``/init`` is sourced by busybox ash on this host (its
functions only; no VM: that is ``tests/functional/ramdisk``), plays the
machine's agent for an ``inspect`` driven through real IPMI, and talks to
the running API with busybox ``wget`` exactly as it does in the ramdisk.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conductor import bootfiles
from conductor.bmcsim import BMCSpec, Fleet
from conductor.ramdisk.build import FILES
from tests.functional.bmcsim.test_ipmi_driver import FAST_IPMI, enroll, node_of, put

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed (Debian package busybox-static)")

GIB = 1 << 30


def _agent_shell(tmp_path: Path) -> dict[str, str]:
    applets = tmp_path / "applets"
    applets.mkdir()
    for name in subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split():
        (applets / name).symlink_to(BUSYBOX)
    disk = tmp_path / "sys" / "block" / "sda"
    (disk / "device").mkdir(parents=True)
    (disk / "size").write_text(f"{480 * GIB // 512}\n")
    (disk / "ro").write_text("0\n")
    (disk / "device" / "model").write_text("TEST SSD\n")
    (disk / "serial").write_text("SER-1\n")
    (tmp_path / "work").mkdir()
    return {"AGENT_SOURCE_ONLY": "1", "AGENT_PATH": str(applets), "AGENT_WORK": str(tmp_path / "work"),
            "AGENT_JSON_AWK": str(FILES / "json.awk"), "AGENT_SYSFS": str(tmp_path / "sys"),
            "AGENT_PATIENCE": "20", "PATH": str(applets)}


CONVERSATION = """
heartbeat "{\\"agent_version\\": \\"$AGENT_VERSION\\"}" || exit 3
CMD_ID=$(jget command.id "$WORK/answer"); CMD_NAME=$(jget command.name "$WORK/answer")
echo "command=$CMD_NAME"
RESULT_ERROR=""; RESULT_INVENTORY=""
cmd_$CMD_NAME
report "$CMD_ID" succeeded "" "$RESULT_INVENTORY" || exit 4
heartbeat "{}"
echo "afterwards=$HTTP_STATUS"
"""


def test_shell_agent_inspects_through_the_real_api(service_factory, settings, fleet: Fleet,
                                                    new_bmc: Callable[..., BMCSpec], tmp_path: Path) -> None:
    service = service_factory(workers=2, env={**FAST_IPMI, "CONDUCTOR_WAIT_CHECK_INTERVAL": "0.2"})
    assert service.http.patch(f"{service.url}/v1/throttle", json={"bmc_min_interval": 0}, timeout=10).ok
    bmc = new_bmc(delay=0.1)
    node = enroll(service, bmc)
    assert service.wait_request(put(service, bmc.name, "provision", "manage"))["state"] == "succeeded"
    request = put(service, bmc.name, "provision", "inspect")

    # What a PXE boot would hand the ramdisk on its kernel command line.
    key = bootfiles.key_for(bmc.driver_info(), node["uuid"])
    deadline = time.monotonic() + 30
    while (config := bootfiles.read(settings.pxe_dir, key)) is None:
        assert time.monotonic() < deadline, "the conductor wrote no boot config"
        time.sleep(0.1)
    env = {**_agent_shell(tmp_path), "API_URL": config["api_url"], "NODE": config["node"], "TOKEN": config["token"]}
    done = subprocess.run([BUSYBOX, "sh", "-c", f'. "{FILES / "init"}"\n{CONVERSATION}'], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.split()
    assert "command=inspect" in lines
    # The result was taken once; the token then stops working (the conductor revoked it).
    assert "afterwards=401" in lines, done.stdout + done.stderr

    finished = service.wait_request(request)
    assert finished["state"] == "succeeded", finished
    properties = node_of(service, bmc.name)["properties"]
    assert properties["cpus"] >= 1 and properties["memory_mb"] > 0 and properties["cpu_arch"]
    assert properties["disks"][0]["serial"] == "SER-1" and properties["disks"][0]["size_gb"] == 480
    assert properties["local_gb"] == 480
    assert all({"name", "mac", "link"} <= set(nic) for nic in properties["nics"])
