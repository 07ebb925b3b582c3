"""The agent's shell functions, run by busybox ash on this host (no VM).

The script is sourced with ``AGENT_SOURCE_ONLY=1`` (it then defines its
functions and does nothing), a PATH holding only busybox applets (so that
``wget`` is busybox's, as in the ramdisk), a fake sysfs and a work directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conductor.api import schemas
from conductor.ramdisk.build import FILES

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed (Debian package busybox-static)")


@pytest.fixture()
def sh(tmp_path: Path):
    """Run a snippet after sourcing the agent; returns the CompletedProcess."""
    applets = tmp_path / "applets"
    applets.mkdir()
    listed = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        (applets / name).symlink_to(BUSYBOX)
    work = tmp_path / "work"
    work.mkdir()
    env = {"AGENT_SOURCE_ONLY": "1", "AGENT_PATH": str(applets), "AGENT_WORK": str(work),
           "AGENT_JSON_AWK": str(FILES / "json.awk"), "AGENT_SYSFS": str(tmp_path / "sys"), "PATH": str(applets)}

    def run(snippet: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BUSYBOX, "sh", "-c", f'. "{FILES / "init"}"\n{snippet}'],
                              env={**env, **extra}, capture_output=True, text=True, timeout=60)

    run.work = work  # type: ignore[attr-defined]
    run.sys = tmp_path / "sys"  # type: ignore[attr-defined]
    return run


def test_init_is_valid_sh() -> None:
    subprocess.run([BUSYBOX, "sh", "-n", str(FILES / "init")], check=True)
    subprocess.run([BUSYBOX, "sh", "-n", str(FILES / "udhcpc.script")], check=True)


def test_json_is_flattened_to_paths(tmp_path: Path) -> None:
    answer = {"node": "n1", "provision_state": "wait call-back", "accepted": True, "n": -1.5e3, "none": None,
              "command": {"id": "cmd-1", "name": "write_image",
                          "params": {"image_source": "http://10.0.2.2:8080/i.img?a=1&b=\"2\"",
                                     "root_device": {"serial": "S 1\\x", "size": 40},
                                     "list": ["a", {"b": "c"}, []], "empty": {}, "uni": "caf\u00e9 \u0041"}}}
    doc = tmp_path / "a.json"
    doc.write_text(json.dumps(answer))
    out = subprocess.run([BUSYBOX, "awk", "-f", str(FILES / "json.awk"), str(doc)],
                         capture_output=True, text=True, check=True).stdout
    flat = dict(line.split("\t", 1) for line in out.splitlines())
    assert flat == {
        "node": "n1", "provision_state": "wait call-back", "accepted": "true", "n": "-1500.0", "none": "null",
        "command.id": "cmd-1", "command.name": "write_image",
        "command.params.image_source": 'http://10.0.2.2:8080/i.img?a=1&b="2"',
        "command.params.root_device.serial": "S 1\\x", "command.params.root_device.size": "40",
        "command.params.list.0": "a", "command.params.list.1.b": "c", "command.params.uni": "caf? A",
    }
    # Compact JSON (as Flask sends it) gives the same.
    doc.write_text(json.dumps(answer, separators=(",", ":")))
    again = subprocess.run([BUSYBOX, "awk", "-f", str(FILES / "json.awk"), str(doc)],
                           capture_output=True, text=True, check=True).stdout
    assert again == out


def test_strings_are_escaped_for_json(sh) -> None:
    nasty = 'a "quoted" \\ back\tslash\nnew line'
    done = sh('jstr "$NASTY"', NASTY=nasty)
    assert json.loads(done.stdout) == 'a "quoted" \\ back slash new line'


def _disk(sys: Path, name: str, size_bytes: int, serial: str = "", model: str = "", ro: bool = False) -> None:
    path = sys / "block" / name
    (path / "device").mkdir(parents=True)
    (path / "size").write_text(f"{size_bytes // 512}\n")
    (path / "ro").write_text("1\n" if ro else "0\n")
    if serial:
        (path / "serial").write_text(serial + "\n")
    if model:
        (path / "device" / "model").write_text(model + "   \n")


GIB = 1 << 30


def test_root_disk_by_hints_else_the_smallest_that_fits(sh) -> None:
    _disk(sh.sys, "sda", 960 * GIB, serial="S-A", model="BIG SSD")
    _disk(sh.sys, "sdb", 240 * GIB, serial="S-B", model="SMALL SSD")
    _disk(sh.sys, "nvme0n1", 480 * GIB, serial="S-N")
    _disk(sh.sys, "sr0", 1 * GIB)
    _disk(sh.sys, "loop0", 10 * GIB)
    _disk(sh.sys, "sdz", 20 * GIB, ro=True)

    def choose(min_bytes: int, hints: dict[str, Any] | None = None) -> str:
        flat = "".join(f"command.params.root_device.{k}\t{v}\n" for k, v in (hints or {}).items())
        (sh.work / "hints").write_text(flat)
        done = sh(f'choose_disk {min_bytes} "{sh.work / "hints"}"')
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert sh("disks").stdout.split("\n")[:3] == [f"nvme0n1 {480 * GIB}", f"sda {960 * GIB}", f"sdb {240 * GIB}"]
    assert choose(0) == "sdb"
    assert choose(300 * GIB) == "nvme0n1"
    assert choose(500 * GIB) == "sda"
    assert choose(2000 * GIB) == ""
    assert choose(0, {"serial": "S-A"}) == "sda"
    assert choose(0, {"name": "/dev/nvme0n1"}) == "nvme0n1"
    assert choose(0, {"name": "sdb"}) == "sdb"
    assert choose(0, {"size": 480}) == "nvme0n1"
    assert choose(0, {"model": "BIG SSD"}) == "sda"
    assert choose(0, {"serial": "S-B", "size": 960}) == ""  # hints combine
    assert choose(300 * GIB, {"serial": "S-B"}) == ""  # a hint does not make a small disk fit


class _Endpoint:
    """Answers heartbeats from a script of (status, body); records what it got."""

    def __init__(self, script: list[tuple[int, dict[str, Any]]]) -> None:
        self.script = script
        self.got: list[tuple[dict[str, str], dict[str, Any]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.got.append((dict(self.headers), body))
                status, answer = owner.script.pop(0) if owner.script else (401, {"code": "invalid_agent_token"})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def endpoint():
    made: list[_Endpoint] = []

    def make(script: list[tuple[int, dict[str, Any]]]) -> _Endpoint:
        made.append(_Endpoint(script))
        return made[-1]

    yield make
    for one in made:
        one.close()


def _conversation_env(url: str) -> dict[str, str]:
    return {"API_URL": url, "NODE": "node-1", "TOKEN": "tok-123", "AGENT_PATIENCE": "20"}


def test_heartbeat_retries_409_then_takes_the_command(sh, endpoint) -> None:
    command = {"id": "cmd-9", "name": "inspect", "params": {}}
    server = endpoint([(409, {"code": "node_not_waiting"}), (503, {"code": "rate_limited"}),
                       (200, {"node": "node-1", "provision_state": "inspect wait", "command": command})])
    done = sh('heartbeat "{\\"agent_version\\": \\"$AGENT_VERSION\\"}" && '
              'echo "$HTTP_STATUS $(jget command.id "$WORK/answer") $(jget command.name "$WORK/answer")"',
              **_conversation_env(server.url))
    assert done.stdout.strip() == "200 cmd-9 inspect", done.stderr
    assert len(server.got) == 3
    for headers, body in server.got:
        assert headers["X-Agent-Token"] == "tok-123" and headers["Content-Type"] == "application/json"
        schemas.Heartbeat().load(body)  # what the API accepts
    assert server.got[0][1] == {"agent_version": "conductor-ramdisk-1"}


def test_401_ends_the_conversation_at_once(sh, endpoint) -> None:
    server = endpoint([(401, {"code": "invalid_agent_token"})])
    done = sh('heartbeat "{}"; echo "rc=$? status=$HTTP_STATUS"', **_conversation_env(server.url))
    assert done.stdout.strip() == "rc=1 status=401"
    assert len(server.got) == 1


def test_results_are_what_the_api_accepts_and_a_409_is_final(sh, endpoint) -> None:
    server = endpoint([(200, {"accepted": True, "command": None}), (200, {"accepted": True, "command": None}),
                       (409, {"code": "node_not_waiting"})])
    inventory = '{"cpus": 2, "disks": [{"name": "/dev/vda", "model": ""}], "system_vendor": {"manufacturer": "Q"}}'
    done = sh('CMD_NAME=inspect; report cmd-1 succeeded "" "$INV" && '
              'report cmd-2 failed "checksum mismatch: \\"x\\"" && '
              'report cmd-3 succeeded ""; echo "rc=$? status=$HTTP_STATUS"',
              INV=inventory, **_conversation_env(server.url))
    assert done.stdout.strip().endswith("rc=1 status=409"), done.stderr
    bodies = [schemas.Heartbeat().load(body) for _, body in server.got]
    assert len(bodies) == 3  # the 409 was not retried
    assert bodies[0]["command_result"] == {"id": "cmd-1", "status": "succeeded", "error": None,
                                           "inventory": json.loads(inventory)}
    assert bodies[1]["command_result"]["error"] == 'checksum mismatch: "x"'
