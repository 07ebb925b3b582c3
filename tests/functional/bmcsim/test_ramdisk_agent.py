"""The real agent's protocol code against the real service: `conductor up`, a simulated BMC, busybox on this host.

The agent ramdisk's ``/init`` is sourced by busybox ash on this host (its
functions only; no VM: that is ``tests/functional/ramdisk``), plays the
machine's agent for ``inspect``, ``provide`` (erase) and ``active`` (an
image from this host's loopback to a file standing in for the disk), driven
through real IPMI, and talks to the running API with busybox ``wget``
exactly as it does in the ramdisk.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conductor import bootfiles
from conductor.bmcsim import BMCSpec, Fleet
from conductor.ramdisk.build import FILES
from tests.functional.bmcsim.test_ipmi_driver import FAST_IPMI, enroll, node_of, put

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed (Debian package busybox-static)")

GIB = 1 << 30


MIB = 1 << 20
MARK = b"OLD-OS" * 1000


def _agent_shell(tmp_path: Path) -> dict[str, str]:
    """The environment that runs the agent's functions on this host, with one 480 GiB "disk" of 16 MiB."""
    applets = tmp_path / "applets"
    applets.mkdir()
    for name in subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split():
        (applets / name).symlink_to(BUSYBOX)
    disk = tmp_path / "sys" / "block" / "sda"
    (disk / "device").mkdir(parents=True)
    # sysfs says 480 GiB (what inspect reports); the file is 16 MiB (what erase and write touch).
    (disk / "size").write_text(f"{480 * GIB // 512}\n")
    (disk / "ro").write_text("0\n")
    (disk / "device" / "model").write_text("TEST SSD\n")
    (disk / "serial").write_text("SER-1\n")
    (tmp_path / "dev").mkdir()
    with (tmp_path / "dev" / "sda").open("wb") as handle:
        handle.truncate(16 * MIB)
        handle.write(MARK)
    (tmp_path / "work").mkdir()
    return {"AGENT_SOURCE_ONLY": "1", "AGENT_PATH": str(applets), "AGENT_WORK": str(tmp_path / "work"),
            "AGENT_JSON_AWK": str(FILES / "json.awk"), "AGENT_SYSFS": str(tmp_path / "sys"),
            "AGENT_DEV": str(tmp_path / "dev"), "AGENT_PATIENCE": "20", "PATH": str(applets)}


# One boot of the agent: take the command, run it, report, hear that the token is spent.
CONVERSATION = """
blockdev() { case "$1" in --getsize64) wc -c < "$2" ;; *) : ;; esac; }
heartbeat "{\\"agent_version\\": \\"$AGENT_VERSION\\"}" || exit 3
CMD_ID=$(jget command.id "$WORK/answer"); CMD_NAME=$(jget command.name "$WORK/answer")
echo "command=$CMD_NAME"
RESULT_ERROR=""; RESULT_INVENTORY=""
cmd_$CMD_NAME
if [ -n "$RESULT_ERROR" ]; then report "$CMD_ID" failed "$RESULT_ERROR"; else
    report "$CMD_ID" succeeded "" "$RESULT_INVENTORY"; fi || exit 4
heartbeat "{}"
echo "afterwards=$HTTP_STATUS"
"""


def _boot_agent(settings, key: str, env: dict[str, str], spent: set[str]) -> list[str]:
    """Wait for a boot config with a new token (what PXE would hand the ramdisk), then run one boot."""
    deadline = time.monotonic() + 30
    while (config := bootfiles.read(settings.pxe_dir, key)) is None or config["token"] in spent:
        assert time.monotonic() < deadline, "the conductor wrote no new boot config"
        time.sleep(0.1)
    spent.add(config["token"])
    env = {**env, "API_URL": config["api_url"], "NODE": config["node"], "TOKEN": config["token"]}
    done = subprocess.run([BUSYBOX, "sh", "-c", f'. "{FILES / "init"}"\n{CONVERSATION}'], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.split()
    # The result was taken once; the token then stops working (the conductor revoked it).
    assert "afterwards=401" in lines, done.stdout + done.stderr
    return lines


@pytest.fixture
def image_server():
    """Serves one raw image on this host's loopback."""
    image = bytes(range(256)) * (3 * MIB // 256)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            if self.command == "GET":
                # busybox wget --spider hangs up after the headers.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(image)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/image.raw", image
    server.shutdown()
    server.server_close()


def test_shell_agent_inspects_cleans_and_deploys_through_the_real_api(
        service_factory, settings, fleet: Fleet, new_bmc: Callable[..., BMCSpec], image_server,
        tmp_path: Path) -> None:
    url, image = image_server
    service = service_factory(workers=2, env={**FAST_IPMI, "CONDUCTOR_WAIT_CHECK_INTERVAL": "0.2"})
    assert service.http.patch(f"{service.url}/v1/throttle", json={"bmc_min_interval": 0}, timeout=10).ok
    bmc = new_bmc(delay=0.1)
    node = enroll(service, bmc)
    assert service.wait_request(put(service, bmc.name, "provision", "manage"))["state"] == "succeeded"
    key = bootfiles.key_for(bmc.driver_info(), node["uuid"])
    env, spent = _agent_shell(tmp_path), set()
    disk = tmp_path / "dev" / "sda"

    request = put(service, bmc.name, "provision", "inspect")
    assert "command=inspect" in _boot_agent(settings, key, env, spent)
    assert service.wait_request(request)["state"] == "succeeded"
    properties = node_of(service, bmc.name)["properties"]
    assert properties["cpus"] >= 1 and properties["memory_mb"] > 0 and properties["cpu_arch"]
    assert properties["disks"][0]["serial"] == "SER-1" and properties["disks"][0]["size_gb"] == 480
    assert properties["local_gb"] == 480
    assert all({"name", "mac", "link"} <= set(nic) for nic in properties["nics"])

    request = put(service, bmc.name, "provision", "provide")
    assert "command=erase_disks" in _boot_agent(settings, key, env, spent)
    assert service.wait_request(request)["state"] == "succeeded"
    assert MARK not in disk.read_bytes()[:MIB]

    response = service.http.put(f"{service.url}/v1/nodes/{bmc.name}/states/provision",
                                json={"target": "active", "image_source": url,
                                      "image_checksum": hashlib.sha256(image).hexdigest()}, timeout=10)
    assert response.status_code == 202, response.text
    assert "command=write_image" in _boot_agent(settings, key, env, spent)
    finished = service.wait_request(response.json()["id"])
    assert finished["state"] == "succeeded", finished
    assert disk.read_bytes()[: len(image)] == image
    assert node_of(service, bmc.name)["provision_state"] == "active"
    # The conductor downloaded the image once into its cache and the agent fetched it from there.
    assert (settings.image_cache_path / hashlib.sha256(image).hexdigest()).read_bytes() == image
