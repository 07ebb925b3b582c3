"""The receiver in docs/callbacks.md verifies real deliveries (and refuses forgeries)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.callback_helpers import drain_callbacks
from tests.conftest import drain, free_port

DOC = Path(__file__).resolve().parents[3] / "docs" / "callbacks.md"


def receiver_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- receiver:begin -->\s*```python\n(.*?)```\s*<!-- receiver:end -->", text, re.S)
    assert block, "the receiver block is missing from docs/callbacks.md"
    return block.group(1)


def start(code: str, secret: str, port: int, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / f"receiver-{port}.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "WEBHOOK_SECRET": secret,
                                                               "PORT": str(port)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(proc.communicate()[0])


def test_the_documented_receiver_is_short_and_verifies_real_deliveries(client, ctx, conductor_ctx, tmp_path) -> None:
    code = receiver_code()
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    secret = client.post("/v1/callbacks/secret/rotate").json["secret"]
    good_port, forged_port = free_port(), free_port()
    good = start(code, secret, good_port, tmp_path)
    # A receiver holding another secret sees a forgery and answers 401.
    forged = start(code, "whsec_" + "QUJD" * 11, forged_port, tmp_path)
    try:
        client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
        ok = client.put("/v1/nodes/n1/states/power", json={
            "target": "power on", "callback_url": f"http://127.0.0.1:{good_port}/hook"}).json["id"]
        drain(conductor_ctx)
        refused = client.put("/v1/nodes/n1/states/power", json={
            "target": "power off", "callback_url": f"http://127.0.0.1:{forged_port}/hook"}).json["id"]
        drain(conductor_ctx)
        drain_callbacks(ctx)
    finally:
        good.terminate()
        forged.terminate()
        printed = good.communicate(timeout=10)[0]
        forged.communicate(timeout=10)
    delivered = client.get(f"/v1/requests/{ok}").json["callback"]
    assert delivered["state"] == "delivered" and delivered["last_status"] == 204
    assert delivered["id"] in printed and ok in printed
    rejected = client.get(f"/v1/requests/{refused}").json["callback"]
    assert rejected["state"] == "failed" and rejected["last_status"] == 401
