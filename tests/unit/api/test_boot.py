"""Network boot through the real API: iPXE scripts by MAC, the agent token in them, boot files.

Nodes are driven into their agent waits the way tests/unit/engine/test_pxe.py
does (fake driver, deploy interface ``pxe``, steps run in this process);
the test then plays the machine: it asks for its boot script with no
credentials, and heartbeats with the token the script carries.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import sqlalchemy as sa

from conductor import ramdisk
from conductor.api import admission
from conductor.models import Node
from tests.conftest import drain, free_port
from tests.unit.engine.test_pxe import boot_config, heartbeat, make_node, put, states, waiting_in

MAC = "52:54:00:12:34:56"
#: What iPXE accepts in the scripts we write (command -> how many arguments at least).
IPXE_COMMANDS = {"kernel": 1, "initrd": 1, "boot": 0, "chain": 1, "sanboot": 0, "exit": 0}


def parse_ipxe(text: str) -> list[list[str]]:
    """The commands of an iPXE script, checked to be well-formed; each a list of words.

    ``a || b`` is split into two commands.
    """
    assert text.endswith("\n") and "\r" not in text
    first, *lines = text.splitlines()
    assert first == "#!ipxe"
    commands = []
    for line in lines:
        assert line.strip() and not line.startswith("#"), line
        for part in line.split("||"):
            words = part.split()
            assert words and words[0] in IPXE_COMMANDS, line
            assert len(words) - 1 >= IPXE_COMMANDS[words[0]], line
            assert all(c.isprintable() and c not in "\"'" for c in part), line
            commands.append(words)
    return commands


def script(anonymous, mac: str = MAC):  # type: ignore[no-untyped-def]
    response = anonymous.get(f"/v1/boot/{mac}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["Cache-Control"] == "no-store"
    return response.get_data(as_text=True)


def agent_args(text: str, settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The kernel arguments of an agent script (checking its shape on the way)."""
    files = f"{settings.agent_url}/v1/boot/files"
    commands = parse_ipxe(text)
    assert [c[0] for c in commands] == ["kernel", "initrd", "boot"]
    kernel, initrd, _boot = commands
    assert kernel[1] == f"{files}/agent.kernel"
    assert initrd == ["initrd", "--name", "agent.initramfs", f"{files}/agent.initramfs"]
    assert kernel[2] == "initrd=agent.initramfs"
    extra = settings.agent_kernel_params.split()  # the console, before the agent's own
    assert kernel[3:3 + len(extra)] == extra
    return dict(word.split("=", 1) for word in kernel[3 + len(extra):])


def local(anonymous) -> str:  # type: ignore[no-untyped-def]
    """The local-disk script (what an unknown MAC gets)."""
    return script(anonymous, "02:00:00:00:00:01")


def with_port(client, name: str = "n1", mac: str = MAC):  # type: ignore[no-untyped-def]
    node = make_node(client, name)
    response = client.post("/v1/ports", json={"node": name, "address": mac})
    assert response.status_code == 201, response.json
    return node


def test_the_generic_script_chains_to_the_script_of_the_booting_mac(anonymous, settings) -> None:
    response = anonymous.get("/v1/boot")
    assert response.status_code == 200
    commands = parse_ipxe(response.get_data(as_text=True))
    assert commands == [["chain", settings.agent_url + "/v1/boot/${netX/mac}"]]


def test_the_local_disk_script_is_the_same_for_unknown_and_idle_nodes(client, anonymous) -> None:
    with_port(client)
    unknown = local(anonymous)
    assert parse_ipxe(unknown) == [["sanboot", "--no-describe", "--drive", "0x80"], ["exit"]]
    # enroll, then manageable: a known MAC, not waiting for an agent
    assert script(anonymous) == unknown
    put(client, "manage")
    assert script(anonymous, "52-54-00-12-34-56") == unknown
    assert "n1" not in unknown and "manage" not in unknown


@pytest.mark.parametrize("mac", ["nothing", "52:54:00:12:34", "01:00:5e:00:00:01", "00:00:00:00:00:00",
                                 "52:54:00:12:34:56:78"])
def test_a_malformed_mac_is_400(anonymous, mac) -> None:
    response = anonymous.get(f"/v1/boot/{mac}")
    assert response.status_code == 400
    assert response.json["code"] == "validation_error" and "mac" in response.json["errors"]


def test_a_waiting_node_boots_its_agent_until_the_agent_has_called(client, anonymous, conductor_ctx,
                                                                    settings) -> None:
    node = with_port(client)
    request_id = waiting_in(client, conductor_ctx, "inspect")
    assert states(client)["provision_state"] == "inspect wait"
    text = script(anonymous, "52:54:00:12:34:56".upper())
    args = agent_args(text, settings)
    assert args == {
        ramdisk.API_URL_ARG: settings.agent_url,
        ramdisk.NODE_ARG: node["uuid"],
        ramdisk.TOKEN_ARG: boot_config(settings, client)["token"],
    }
    token = args[ramdisk.TOKEN_ARG]
    assert ramdisk.kernel_args(settings.agent_url, node["uuid"], token) in text
    # Asked again before the agent called (a retrying firmware): the same token.
    assert agent_args(script(anonymous), settings)[ramdisk.TOKEN_ARG] == token
    # The heartbeat accepts the script's token; from then on the MAC boots its disk.
    first = heartbeat(anonymous, "n1", token)
    assert first.status_code == 200 and first.json["command"]["name"] == "inspect"
    assert script(anonymous) == local(anonymous)
    # The agent goes on with the same token (claimed is not revoked).
    done = heartbeat(anonymous, "n1", token, command_result={"id": first.json["command"]["id"],
                                                             "status": "succeeded", "inventory": {"cpus": 2}})
    assert done.status_code == 200 and done.json["accepted"] is True
    drain(conductor_ctx)
    assert client.get(f"/v1/requests/{request_id}").json["state"] == "succeeded"
    assert script(anonymous) == local(anonymous)
    # The token never shows in what the API says about the node.
    for path in ("/v1/nodes/n1", "/v1/nodes/n1/states", f"/v1/requests/{request_id}", "/v1/nodes/n1/history",
                 "/v1/ports?node=n1"):
        assert token not in client.get(path).get_data(as_text=True), path


def test_each_phase_boots_with_a_new_token_and_the_old_one_is_dead(client, anonymous, conductor_ctx,
                                                                   settings) -> None:
    with_port(client)
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "clean")
    drain(conductor_ctx)
    first = agent_args(script(anonymous), settings)[ramdisk.TOKEN_ARG]
    command = heartbeat(anonymous, "n1", first).json["command"]
    heartbeat(anonymous, "n1", first, command_result={"id": command["id"], "status": "succeeded"})
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "manageable"
    put(client, "clean")
    drain(conductor_ctx)
    second = agent_args(script(anonymous), settings)[ramdisk.TOKEN_ARG]
    assert second != first
    assert heartbeat(anonymous, "n1", first).json["code"] == "invalid_agent_token"
    assert heartbeat(anonymous, "n1", second).status_code == 200


def test_the_token_is_stored_sealed_and_dropped_once_claimed(client, anonymous, conductor_ctx, settings) -> None:
    with_port(client)
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "clean")
    drain(conductor_ctx)
    token = agent_args(script(anonymous), settings)[ramdisk.TOKEN_ARG]

    def stored() -> tuple[dict, str]:
        with conductor_ctx.db.session() as session:
            info = session.scalars(sa.select(Node.driver_internal_info)).one()
            raw = session.execute(sa.text("SELECT driver_internal_info FROM nodes")).scalar_one()
        return info, str(raw)

    info, raw = stored()
    assert info["agent_token_sealed"].startswith("fernet:") and token not in raw
    assert "agent_token_claimed_at" not in info
    heartbeat(anonymous, "n1", token)
    info, raw = stored()
    assert "agent_token_sealed" not in info and info["agent_token_claimed_at"]
    assert "agent_token_sha256" in info  # the agent is still heard


def test_an_aborted_wait_boots_the_local_disk(client, anonymous, conductor_ctx, settings) -> None:
    with_port(client)
    waiting_in(client, conductor_ctx, "inspect")
    assert "conductor_token=" in script(anonymous)
    assert client.put("/v1/nodes/n1/states/provision", json={"target": "abort"}).status_code == 202
    assert states(client)["provision_state"] == "inspect failed"
    assert script(anonymous) == local(anonymous)


def test_another_nodes_mac_gets_nothing_of_a_waiting_node(client, anonymous, conductor_ctx) -> None:
    with_port(client)
    with_port(client, "n2", "52:54:00:00:00:02")
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "clean")
    drain(conductor_ctx)
    assert "conductor_token=" in script(anonymous)
    assert script(anonymous, "52:54:00:00:00:02") == local(anonymous)


def test_the_token_stays_out_of_the_logs(client, anonymous, conductor_ctx, settings, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with_port(client)
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "clean")
    drain(conductor_ctx)
    token = agent_args(script(anonymous), settings)[ramdisk.TOKEN_ARG]
    heartbeat(anonymous, "n1", token)
    script(anonymous)
    assert any("agent boot script" in r.getMessage() for r in caplog.records)
    assert not [r.getMessage() for r in caplog.records if token in r.getMessage()]


def test_boot_calls_are_throttled_per_address(anonymous) -> None:
    answers = [anonymous.get("/v1/boot") for _ in range(admission.BOOT_ADDRESS_BURST + 5)]
    assert [a.status_code for a in answers[: admission.BOOT_ADDRESS_BURST]] == [200] * admission.BOOT_ADDRESS_BURST
    refused = answers[-1]
    assert refused.status_code == 503 and refused.json["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    # Another address has its own budget.
    other = anonymous.get("/v1/boot", environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 200


# --- boot files ----------------------------------------------------------------------------


@pytest.fixture
def files(settings):  # type: ignore[no-untyped-def]
    """A built ramdisk: two files of known bytes in the default ``ramdisk_dir``."""
    directory = settings.ramdisk_path
    directory.mkdir(parents=True)
    kernel = os.urandom(100_000)
    (directory / "agent.kernel").write_bytes(kernel)
    (directory / "agent.initramfs").write_bytes(b"initramfs" * 1000)
    (settings.data_dir / "secret.txt").write_text("not for you")
    return {"agent.kernel": kernel, "agent.initramfs": b"initramfs" * 1000}


def test_boot_files_are_served_whole(anonymous, files) -> None:
    for name, data in files.items():
        response = anonymous.get(f"/v1/boot/files/{name}")
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(len(data))
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.data == data
    head = anonymous.head("/v1/boot/files/agent.kernel")
    assert head.status_code == 200 and head.headers["Content-Length"] == "100000" and head.data == b""


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-0", 0, 0),
    ("bytes=10-19", 10, 19),
    ("bytes=99990-", 99990, 99999),
    ("bytes=-5", 99995, 99999),
    ("bytes=99000-200000", 99000, 99999),
])
def test_boot_files_answer_a_range(anonymous, files, header, start, end) -> None:
    response = anonymous.get("/v1/boot/files/agent.kernel", headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/100000"
    assert response.headers["Content-Length"] == str(end - start + 1)
    assert response.data == files["agent.kernel"][start:end + 1]


@pytest.mark.parametrize("header", ["bytes=100000-", "bytes=200000-300000"])
def test_an_unsatisfiable_range_is_416(anonymous, files, header) -> None:
    response = anonymous.get("/v1/boot/files/agent.kernel", headers={"Range": header})
    assert response.status_code == 416
    assert response.json["code"] == "range_not_satisfiable"
    assert response.headers["Content-Range"] == "bytes */100000"


@pytest.mark.parametrize("header", ["pages=1-2", "bytes=abc", "bytes=0-1,5-6", "bytes=5-2"])
def test_a_range_not_understood_or_of_several_parts_is_ignored(anonymous, files, header) -> None:
    response = anonymous.get("/v1/boot/files/agent.kernel", headers={"Range": header})
    assert response.status_code == 200
    assert response.data == files["agent.kernel"]


@pytest.mark.parametrize("path", [
    "/v1/boot/files/secret.txt",
    "/v1/boot/files/..%2Fsecret.txt",
    "/v1/boot/files/..%2F..%2Fsecret.txt",
    "/v1/boot/files/../secret.txt",
    "/v1/boot/files/agent.kernel%2F..%2F..%2Fsecret.txt",
    "/v1/boot/files/%2E%2E",
    "/v1/boot/files/",
    "/v1/boot/files/agent.kernel/x",
])
def test_only_the_listed_files_are_served(anonymous, files, path) -> None:
    response = anonymous.get(path)
    # (A path that is no route at all is 401 to a caller without a token, like any other.)
    assert response.status_code in (400, 401, 404), (path, response.status_code)
    assert b"not for you" not in response.data
    assert response.headers["Content-Type"] == "application/problem+json"


def test_a_boot_file_not_built_is_404_saying_how_to_build_it(anonymous, settings) -> None:
    response = anonymous.get("/v1/boot/files/agent.initramfs")
    assert response.status_code == 404 and response.json["code"] == "not_found"
    assert "conductor ramdisk build" in response.json["message"]
    assert str(settings.data_dir) not in response.json["message"]


def test_boot_files_come_from_the_ramdisk_dir_setting(ctx, tmp_path) -> None:
    from conductor.api import create_app
    from conductor.bootstrap import build_context

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "agent.kernel").write_bytes(b"k" * 10)
    other = build_context(ctx.settings.replace(ramdisk_dir=str(elsewhere)))
    try:
        response = create_app(ctx=other).test_client().get("/v1/boot/files/agent.kernel")
        assert response.status_code == 200 and response.data == b"k" * 10
    finally:
        other.close()


def test_a_large_file_is_streamed_not_read_into_memory(anonymous, settings) -> None:
    size = 256 * 1024 * 1024
    settings.ramdisk_path.mkdir(parents=True)
    path = settings.ramdisk_path / "agent.initramfs"
    with open(path, "wb") as handle:  # sparse: no disk used
        handle.truncate(size)
        handle.seek(size - 4)
        handle.write(b"tail")
    tracemalloc.start()
    try:
        response = anonymous.get("/v1/boot/files/agent.initramfs", buffered=False)
        assert response.status_code == 200 and response.headers["Content-Length"] == str(size)
        # Ranges seek: the last bytes come at once.
        end = anonymous.get("/v1/boot/files/agent.initramfs", headers={"Range": "bytes=-4"}, buffered=False)
        assert end.status_code == 206 and b"".join(end.response) == b"tail"
        end.close()
        seen = 0
        for chunk in response.response:
            seen += len(chunk)
            if seen >= 32 * 1024 * 1024:
                break
        response.close()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen >= 32 * 1024 * 1024
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while streaming"


def test_boot_endpoints_need_no_bearer_token_and_are_documented(anonymous) -> None:
    spec = anonymous.get("/openapi.json").json
    for path in ("/v1/boot", "/v1/boot/{mac}", "/v1/boot/files/{name}"):
        assert spec["paths"][path]["get"]["security"] == [], path
    assert anonymous.get("/v1/boot").status_code == 200
    assert "WWW-Authenticate" not in anonymous.get("/v1/boot/files/nothing").headers


def test_a_token_the_secret_key_cannot_open_boots_the_local_disk(client, anonymous, conductor_ctx,
                                                                 settings) -> None:
    with_port(client)
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "clean")
    drain(conductor_ctx)
    with conductor_ctx.db.begin() as session:
        node = session.scalars(sa.select(Node)).one()
        info = dict(node.driver_internal_info)
        info["agent_token_sealed"] = "fernet:" + re.sub(r".", "A", info["agent_token_sealed"][7:])
        node.driver_internal_info = info
    assert script(anonymous) == local(anonymous)


# --- real iPXE -----------------------------------------------------------------------------

IPXE_ROM = Path("/usr/lib/ipxe/qemu/pxe-e1000.rom")


class Recorder:
    """WSGI middleware: every request's path and query, and its status."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.seen: list[tuple[str, int]] = []

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        path = environ.get("PATH_INFO", "") + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")

        def start(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
            self.seen.append((path, int(status.split()[0])))
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def boot_vm(mac: str, base: str, console: Path, until) -> None:  # type: ignore[no-untyped-def]
    """Network-boot a QEMU machine with NIC ``mac`` from ``base``/v1/boot until ``until()`` (or 120 s).

    QEMU's user network hands out the boot URL by DHCP and lets the guest
    reach this host's loopback as 10.0.2.2; the console (SeaBIOS's serial
    text console) goes to ``console``.
    """
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot", "-m", "256",
         "-machine", "graphics=off", "-serial", f"file:{console}", "-boot", "n",
         "-netdev", f"user,id=n0,bootfile={base}/v1/boot",
         "-device", f"e1000,netdev=n0,mac={mac},romfile={IPXE_ROM}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not until():
            assert qemu.poll() is None, qemu.stdout.read() if qemu.stdout else ""
            time.sleep(0.2)
    finally:
        os.killpg(qemu.pid, signal.SIGKILL)
        qemu.wait(timeout=30)


def console_text(console: Path) -> str:
    if not console.exists():
        return ""
    return re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|c)", "", console.read_text(errors="replace")).replace("\r", "")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or not IPXE_ROM.exists(),
                    reason="needs qemu-system-x86_64 and Debian's ipxe-qemu")
def test_real_ipxe_follows_the_scripts(client, anonymous, conductor_ctx, settings, tmp_path) -> None:
    """Debian's iPXE (in QEMU) runs our scripts: DHCP -> /v1/boot -> /v1/boot/<mac> -> kernel, initrd, boot.

    The "kernel" is an iPXE script that lists the loaded images on the
    console and calls home, so the test sees that ``boot`` ran it.  A MAC
    of no node gets the local-disk script, which iPXE runs too (there is no
    disk: sanboot fails, exit hands back to the BIOS).
    """
    from werkzeug.serving import make_server

    from conductor.api import create_app
    from conductor.bootstrap import build_context

    vm_mac, stranger = "52:54:00:b0:07:01", "52:54:00:b0:07:02"
    with_port(client, mac=vm_mac)
    waiting_in(client, conductor_ctx, "inspect")
    port = free_port()
    base = f"http://10.0.2.2:{port}"
    served = build_context(settings.replace(agent_api_url=base))
    recorder = Recorder(create_app(ctx=served))
    server = make_server("127.0.0.1", port, recorder, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.ramdisk_path.mkdir(parents=True)
    (settings.ramdisk_path / "agent.kernel").write_text(f"#!ipxe\nimgstat\nchain {base}/probe\n")
    (settings.ramdisk_path / "agent.initramfs").write_bytes(b"initramfs")
    try:
        boot_vm(vm_mac, base, tmp_path / "agent.log", lambda: any(p == "/probe" for p, _ in recorder.seen))
        agent_boot, recorder.seen = recorder.seen, []
        boot_vm(stranger, base, tmp_path / "local.log",
                lambda: "No bootable device" in console_text(tmp_path / "local.log"))
        local_boot = recorder.seen
    finally:
        server.shutdown()
        served.close()
    assert agent_boot == [("/v1/boot", 200), (f"/v1/boot/{vm_mac}", 200), ("/v1/boot/files/agent.kernel", 200),
                          ("/v1/boot/files/agent.initramfs", 200), ("/probe", 401)]
    text = console_text(tmp_path / "agent.log")
    assert "agent.initramfs : 9 bytes" in text, text  # loaded under the name initrd= gives the kernel
    assert local_boot == [("/v1/boot", 200), (f"/v1/boot/{stranger}", 200)]
    text = console_text(tmp_path / "local.log")
    assert "Booting from SAN device 0x80" in text and "No bootable device" in text, text


def test_a_claim_racing_another_write_of_the_node_is_skipped(client, anonymous, conductor_ctx, settings) -> None:
    """A claim never writes back a stale ``driver_internal_info`` (e.g. over a result or a revocation)."""
    from conductor.core import agent as protocol

    with_port(client)
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "clean")
    drain(conductor_ctx)
    with conductor_ctx.db.session() as claimer:
        stale = claimer.scalars(sa.select(Node)).one()
        with conductor_ctx.db.begin() as other:  # e.g. the wait is aborted meanwhile
            node = other.scalars(sa.select(Node)).one()
            node.driver_internal_info = {**node.driver_internal_info, "written": "meanwhile"}
        assert protocol.claim(claimer, stale) is False
        claimer.commit()
    with conductor_ctx.db.session() as session:
        info = session.scalars(sa.select(Node)).one().driver_internal_info
    assert info["written"] == "meanwhile" and "agent_token_sealed" in info
    # The agent's next heartbeat claims it.
    token = agent_args(script(anonymous), settings)[ramdisk.TOKEN_ARG]
    assert heartbeat(anonymous, "n1", token).status_code == 200
    assert script(anonymous) == local(anonymous)


def test_a_key_rotation_while_a_node_waits_keeps_its_boot_script(client, anonymous, conductor_ctx, settings) -> None:
    from tests.unit.test_secrets_at_rest import cli

    with_port(client)
    waiting_in(client, conductor_ctx, "inspect")
    token = agent_args(script(anonymous), settings)[ramdisk.TOKEN_ARG]
    with conductor_ctx.db.session() as session:
        sealed_before = session.scalars(sa.select(Node.driver_internal_info)).one()["agent_token_sealed"]
    assert "dropped 1 old key" in cli(settings, "secrets", "rotate-key").output
    with conductor_ctx.db.session() as session:
        sealed_after = session.scalars(sa.select(Node.driver_internal_info)).one()["agent_token_sealed"]
    assert sealed_after != sealed_before  # re-encrypted under the new key
    # The API (which re-reads the key file) still renders the same token; the agent is heard.
    assert agent_args(script(anonymous), settings)[ramdisk.TOKEN_ARG] == token
    assert heartbeat(anonymous, "n1", token).status_code == 200


def test_a_result_racing_the_first_heartbeats_claim_leaves_the_token_claimed(client, anonymous, conductor_ctx,
                                                                              settings, monkeypatch) -> None:
    from conductor.core import agent as protocol
    from conductor.service import agent as service_agent

    with_port(client)
    waiting_in(client, conductor_ctx, "inspect")
    token = agent_args(script(anonymous), settings)[ramdisk.TOKEN_ARG]
    with conductor_ctx.db.session() as session:
        command_id = session.scalars(sa.select(Node)).one().driver_internal_info["agent_command"]["id"]
    claim = protocol.claim

    def claimed_meanwhile(session, node):  # type: ignore[no-untyped-def]
        # The agent's first heartbeat, in another API process, claims the token right now.
        with conductor_ctx.db.session() as other:
            assert claim(other, other.scalars(sa.select(Node)).one())
            other.commit()
        return claim(session, node)  # loses: the row changed since it was read

    monkeypatch.setattr(service_agent.protocol, "claim", claimed_meanwhile)
    done = heartbeat(anonymous, "n1", token, command_result={"id": command_id, "status": "succeeded",
                                                             "inventory": {"cpus": 2}})
    assert done.status_code == 200, done.json
    # The result's write must not bring the sealed token back: the MAC boots its disk.
    assert script(anonymous) == local(anonymous)
    with conductor_ctx.db.session() as session:
        info = session.scalars(sa.select(Node)).one().driver_internal_info
    assert "agent_token_sealed" not in info and info["agent_token_claimed_at"]


def test_agent_kernel_params_come_before_the_agents_own_and_cannot_carry_quotes() -> None:
    from conductor.api.boot import agent_script

    plain = parse_ipxe(agent_script("http://h:1", "u", "t", ""))[0]
    assert plain[2:] == ["initrd=agent.initramfs", "conductor_api_url=http://h:1", "conductor_node=u",
                         "conductor_token=t"]
    spaced = parse_ipxe(agent_script("http://h:1", "u", "t", "  console=ttyS1   quiet "))[0]
    assert spaced[3:5] == ["console=ttyS1", "quiet"]
    with pytest.raises(ValueError, match="quotes"):
        agent_script("http://h:1", "u", "t", 'acpi="off"')
