"""The real agent ramdisk, booted in QEMU (TCG) against a stand-in for the conductor's agent endpoint.

One boot runs the whole conversation: inspect, erase_disks, a
write_image of a missing URL, an unknown command, a write_image with a wrong
checksum, a gzip-compressed write_image to the disk named by
a root-device hint, then power_off (QEMU exits).  The stand-in validates
every heartbeat with the API's own schema, and answers like
:func:`conductor.service.agent.heartbeat`.

QEMU's user network lets the guest reach this host's loopback as
10.0.2.2; the test sends no traffic anywhere else.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conductor.api import schemas
from conductor.ramdisk import kernel_args

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"),
]

NODE = "7d3c2f9e-1b4a-4c1e-9a57-1f0e3a6b8c21"
TOKEN = "agent-token-Zq3xT9uL0pW7mK2s"
MAC = "52:54:00:a6:e1:01"
MIB = 1 << 20
MARKER = b"OLD-OS-MARKER-" * 64


def _image() -> bytes:
    """A 4 MiB raw "image" that is not all zeros anywhere that matters."""
    block = hashlib.sha256(b"agent-image").digest() * (MIB // 32)
    return b"\x55\xaa" + block[2:] + bytes(MIB) + block + hashlib.sha256(b"end").digest() * (MIB // 32)


class Conductor:
    """Plays ``POST /v1/nodes/<node>/heartbeat`` for one node, and serves images.

    Commands are handed out in order, one per heartbeat without a result,
    the way the conductor hands out a waiting workflow's command.
    """

    def __init__(self, commands: list[dict[str, Any]], files: dict[str, bytes]) -> None:
        self.commands = commands
        self.files = files
        self.index = 0
        self.results: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[float, str]] = []
        self.refused: list[str] = []
        self.lock = threading.Lock()
        self.done = threading.Event()

    def note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    def first(self, what: str) -> float:
        return next(t for t, w in self.events if w == what)

    def heartbeat(self, headers: Any, raw: bytes) -> tuple[int, dict[str, Any]]:
        if headers.get("X-Agent-Token") != TOKEN:
            self.refused.append(f"token {headers.get('X-Agent-Token')!r}")
            return 401, {"code": "invalid_agent_token", "status": 401, "message": "bad token"}
        if (headers.get("Content-Type") or "").split(";")[0] != "application/json":
            self.refused.append(f"content type {headers.get('Content-Type')!r}")
            return 400, {"code": "validation_error", "status": 400, "message": "not JSON"}
        try:
            body = schemas.Heartbeat().load(json.loads(raw))
        except Exception as exc:  # the API answers 400 to anything its schema refuses
            self.refused.append(f"body {raw!r}: {exc}")
            return 400, {"code": "validation_error", "status": 400, "message": str(exc)}
        with self.lock:
            if self.index >= len(self.commands):
                return 401, {"code": "invalid_agent_token", "status": 401, "message": "token revoked"}
            command = self.commands[self.index]
            result = body.get("command_result")
            if result is None:
                self.note(f"heartbeat {command['id']}")
                if command["name"] == "power_off":
                    self.done.set()
                return 200, {"node": NODE, "provision_state": "wait call-back", "command": command}
            if result["id"] != command["id"]:
                return 400, {"code": "validation_error", "status": 400, "message": "not the current command"}
            self.note(f"result {command['id']}")
            self.results[command["id"]] = result
            self.index += 1
            return 200, {"node": NODE, "provision_state": "wait call-back", "command": None, "accepted": True}

    def serve(self) -> ThreadingHTTPServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: bytes, content_type: str = "application/json",
                      head: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if not head:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.wfile.write(body)
                self.close_connection = True

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != f"/v1/nodes/{NODE}/heartbeat":
                    return self._send(404, b'{"code": "node_not_found"}')
                status, answer = owner.heartbeat(self.headers, raw)
                self._send(status, json.dumps(answer).encode())

            def do_GET(self, head: bool = False) -> None:
                data = owner.files.get(self.path)
                if data is None:
                    return self._send(404, b"not found", "text/plain", head)
                owner.note(f"GET {self.path}")
                self._send(200, data, "application/octet-stream", head)

            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def _disk(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset in (0, size // 2, size - len(MARKER)):
            handle.seek(offset)
            handle.write(MARKER)
    return path


def test_agent_inspects_erases_writes_and_powers_off(built_ramdisk, tmp_path: Path) -> None:
    assert built_ramdisk.total_size < 40 * 10**6
    image = _image()
    packed = gzip.compress(image, mtime=0)
    big = _disk(tmp_path / "big.img", 64 * MIB)
    small = _disk(tmp_path / "small.img", 32 * MIB)
    conductor = Conductor([], {"/images/raw.img": image, "/images/disk.img.gz": packed})
    server = conductor.serve()
    base = f"http://10.0.2.2:{server.server_address[1]}"
    commands: list[dict[str, Any]] = [
        {"id": "cmd-inspect", "name": "inspect", "params": {}},
        {"id": "cmd-erase", "name": "erase_disks", "params": {}},
        {"id": "cmd-404", "name": "write_image", "params": {"image_source": f"{base}/images/missing.img"}},
        {"id": "cmd-what", "name": "format_floppy", "params": {}},
        # No hint: the smallest disk that holds the image (small.img); wrong checksum.
        {"id": "cmd-bad", "name": "write_image",
         "params": {"image_source": f"{base}/images/raw.img", "image_checksum": "0" * 64}},
        {"id": "cmd-write", "name": "write_image",
         "params": {"image_source": f"{base}/images/disk.img.gz",
                    "image_checksum": hashlib.sha256(packed).hexdigest(), "root_device": {"serial": "BIGDISK"}}},
        {"id": "cmd-off", "name": "power_off", "params": {}},
    ]
    conductor.commands = commands
    console = tmp_path / "console.log"
    args = [
        "qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot", "-m", "512", "-smp", "1",
        "-serial", f"file:{console}",
        "-kernel", str(built_ramdisk.kernel.path), "-initrd", str(built_ramdisk.initramfs.path),
        "-append", f"console=ttyS0 panic=-1 {kernel_args(base, NODE, TOKEN)}",
        # romfile= : no iPXE option ROM (not needed to boot with -kernel).
        "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile=",
        "-drive", f"file={big},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0,serial=BIGDISK",
        "-drive", f"file={small},format=raw,if=none,id=d1", "-device", "virtio-blk-pci,drive=d1,serial=SMALLDISK",
    ]
    started = time.monotonic()
    qemu = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            qemu.wait(timeout=420)
        exited = qemu.poll() is not None
    finally:
        if qemu.poll() is None:
            os.killpg(qemu.pid, signal.SIGKILL)
            qemu.wait(timeout=30)
        server.shutdown()
        server.server_close()
    log = console.read_text(errors="replace") if console.exists() else ""
    context = f"events: {conductor.events}\nrefused: {conductor.refused}\nconsole tail:\n{log[-3000:]}"
    assert exited, "QEMU did not power off\n" + context
    assert conductor.done.is_set(), context
    assert not conductor.refused, context

    results = conductor.results
    assert results["cmd-inspect"]["status"] == "succeeded", context
    inventory = results["cmd-inspect"]["inventory"]
    assert inventory["cpus"] == 1 and inventory["cpu_arch"] == "x86_64"
    assert 448 <= inventory["memory_mb"] <= 512, inventory
    disks = {d["serial"]: d for d in inventory["disks"]}
    assert disks["BIGDISK"]["size"] == 64 * MIB and disks["SMALLDISK"]["size"] == 32 * MIB, inventory
    assert [(n["mac"], n["link"]) for n in inventory["nics"]] == [(MAC, True)], inventory
    assert inventory["system_vendor"]["manufacturer"] == "QEMU", inventory

    assert results["cmd-erase"]["status"] == "succeeded", context
    assert results["cmd-404"]["status"] == "failed" and "404" in results["cmd-404"]["error"], results["cmd-404"]
    assert results["cmd-what"]["status"] == "failed" and "format_floppy" in results["cmd-what"]["error"]
    assert results["cmd-bad"]["status"] == "failed", context
    assert "checksum mismatch" in results["cmd-bad"]["error"], results["cmd-bad"]
    assert results["cmd-write"]["status"] == "succeeded", context

    # erase_disks wiped both ends of both disks (not the middle: that is "erase": "full");
    # the image went to the hinted disk; the failed write to the small one was wiped.
    written = big.read_bytes()
    assert written[: len(image)] == image
    assert MARKER in written[len(image):-4 * MIB] and written[-4 * MIB:] == bytes(4 * MIB)
    rest = small.read_bytes()
    assert rest[:4 * MIB] == bytes(4 * MIB) and rest[-4 * MIB:] == bytes(4 * MIB) and MARKER in rest

    first = conductor.first(f"heartbeat {commands[0]['id']}") - started
    write = conductor.first("result cmd-write") - conductor.first("heartbeat cmd-write")
    total = time.monotonic() - started
    print("".join(line + "\n" for line in log.splitlines() if "agent[" in line or "Linux version" in line))
    print(f"\nramdisk {built_ramdisk.total_size / 1e6:.1f} MB (built in {built_ramdisk.seconds:.1f} s); "
          f"first heartbeat {first:.1f} s after QEMU start; image write {write:.1f} s; "
          f"powered off after {total:.1f} s")
