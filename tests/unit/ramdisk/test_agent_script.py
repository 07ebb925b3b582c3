"""The agent's shell functions, run by busybox ash on this host (no VM).

The script is sourced with ``AGENT_SOURCE_ONLY=1`` (it then defines its
functions and does nothing), a PATH holding only busybox applets (so that
``wget`` is busybox's, as in the ramdisk), a fake sysfs and a work directory.
"""

from __future__ import annotations

import contextlib
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
        "command.params.list.0": "a", "command.params.list.1.b": "c", "command.params.list.2": "[]",
        "command.params.empty": "{}", "command.params.uni": "caf? A",
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
            def do_POST(self) -> None:
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


# --- commands on files standing in for disks ------------------------------------
MIB = 1 << 20
MARK = b"SIGNATURE!" * 100
STUBS = 'blockdev() { case "$1" in --getsize64) wc -c < "$2" ;; *) : ;; esac; }\n'


def _disk_file(sh, name: str, size: int, serial: str = "") -> Path:
    _disk(sh.sys, name, size, serial=serial)
    dev = sh.sys.parent / "dev"
    dev.mkdir(exist_ok=True)
    path = dev / name
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset in (0, size // 2, size - len(MARK)):
            handle.seek(offset)
            handle.write(MARK)
    return path


def _command(sh, params: dict[str, Any], name: str) -> subprocess.CompletedProcess[str]:
    doc = sh.work / "answer.json"
    doc.write_text(json.dumps({"command": {"id": "c", "name": name, "params": params}}))
    flat = subprocess.run([BUSYBOX, "awk", "-f", str(FILES / "json.awk"), str(doc)],
                          capture_output=True, text=True, check=True).stdout
    (sh.work / "answer").write_text(flat)
    return sh(STUBS + f'RESULT_ERROR=""; cmd_{name}; echo "error=$RESULT_ERROR"',
              AGENT_DEV=str(sh.sys.parent / "dev"))


@pytest.mark.parametrize("mode", ["metadata", "full"])
def test_erase_wipes_both_ends_or_everything(sh, mode: str) -> None:
    disks = [_disk_file(sh, "vda", 16 * MIB), _disk_file(sh, "vdb", 3 * MIB)]
    done = _command(sh, {"erase": mode} if mode == "full" else {}, "erase_disks")
    assert done.stdout.strip().endswith("error="), done.stderr
    big, small = (d.read_bytes() for d in disks)
    assert len(big) == 16 * MIB and len(small) == 3 * MIB  # nothing truncated or appended
    assert small == bytes(3 * MIB)  # smaller than both 4 MiB ends together
    assert big[:4 * MIB] == bytes(4 * MIB) and big[-4 * MIB:] == bytes(4 * MIB)
    assert (MARK in big) == (mode == "metadata"), "the middle is kept by a metadata erase only"


@pytest.fixture()
def images(endpoint):
    import gzip
    import lzma

    raw = bytes(range(256)) * (5 * MIB // 256) + b"tail"
    files = {"/raw.img": raw, "/img.gz": gzip.compress(raw), "/img.xz": lzma.compress(raw),
             "/img.zst": b"(zstd)"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = files.get(self.path)
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            if self.command == "GET":
                # busybox wget --spider hangs up after the headers.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data or b"")

        do_HEAD = do_GET  # noqa: N815 (busybox --spider may send either)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", raw, files
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ["/raw.img", "/img.gz", "/img.xz"])
def test_write_image_streams_verifies_and_picks_the_smallest_disk(sh, images, path: str) -> None:
    import hashlib

    url, raw, files = images
    big, small, tiny = _disk_file(sh, "vda", 32 * MIB), _disk_file(sh, "vdb", 8 * MIB), _disk_file(sh, "vdc", 2 * MIB)
    params = {"image_source": url + path, "image_checksum": "sha256:" + hashlib.sha256(files[path]).hexdigest(),
              # Compressed: the agent cannot know the size; tell it.
              **({} if path == "/raw.img" else {"image_size": len(raw)})}
    done = _command(sh, params, "write_image")
    assert done.stdout.strip().endswith("error="), done.stdout + done.stderr
    assert small.read_bytes()[: len(raw)] == raw
    assert MARK in big.read_bytes()[:MIB] and MARK in tiny.read_bytes()[:MIB]  # the others untouched


def test_write_image_by_hint_and_its_failures(sh, images) -> None:
    url, raw, _files = images
    big, small = _disk_file(sh, "vda", 32 * MIB, serial="ROOT"), _disk_file(sh, "vdb", 8 * MIB)

    def error(params: dict[str, Any]) -> str:
        done = _command(sh, params, "write_image")
        return done.stdout.strip().rpartition("error=")[2]

    assert error({"image_source": url + "/raw.img", "root_device": {"serial": "ROOT"}}) == ""
    assert big.read_bytes()[: len(raw)] == raw and MARK in small.read_bytes()[:MIB]

    mismatch = error({"image_source": url + "/raw.img", "image_checksum": "ab" * 32})
    assert mismatch.startswith("checksum mismatch for") and "ab" * 32 in mismatch
    assert small.read_bytes()[: 4 * MIB] == bytes(4 * MIB), "a write that failed verification is wiped"
    assert "404" in error({"image_source": url + "/missing.img"})
    assert "no disk matches" in error({"image_source": url + "/raw.img", "image_size": 64 * MIB})
    assert "no disk matches" in error({"image_source": url + "/raw.img", "root_device": {"serial": "NOPE"}})
    assert "cannot decompress zstd" in error({"image_source": url + "/img.zst"})
    assert "http(s) URL" in error({"image_source": "file:///srv/image.raw"})
    assert "configdrive" in error({"image_source": url + "/raw.img", "configdrive": {"meta_data": {}}})
