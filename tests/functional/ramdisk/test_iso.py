"""The agent ramdisk's bootable ISO: built from the real ramdisk, reproducible, and booted from a
QEMU CD-ROM (TCG), by SeaBIOS and by OVMF (UEFI), it runs the agent with the kernel arguments baked
into it, against the stand-in heartbeat endpoint of ``test_agent_vm``: inspect, then power off
(QEMU exits).

QEMU's user network lets the guest reach this host's loopback as
10.0.2.2; the test sends no traffic anywhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conductor import procs
from conductor.cli import main
from conductor.ramdisk import iso
from tests.functional.ramdisk.test_agent_vm import MAC, NODE, TOKEN, Conductor

#: UEFI firmware for QEMU (Debian ovmf).
OVMF = Path("/usr/share/ovmf/OVMF.fd")


def _need_tools() -> None:
    missing = iso.missing_tools()
    if missing:
        pytest.skip(f"building the ISO needs {', '.join(missing)}")


def _extract(image: Path, path: str, target: Path) -> bytes:
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(image), "-extract", path, str(target)],
                   capture_output=True, check=True, timeout=60)
    return target.read_bytes()


def test_the_iso_holds_the_ramdisk_as_built_and_the_node_s_kernel_args(built_ramdisk, tmp_path: Path) -> None:
    _need_tools()
    args = iso.node_kernel_args("http://10.0.2.2:6385", NODE, TOKEN)
    built = iso.build_iso(tmp_path / "node.iso", built_ramdisk.kernel.path, built_ramdisk.initramfs.path, args)
    assert built.uefi == (not iso.missing_uefi_tools())
    assert built.image.path.stat().st_mode & 0o777 == 0o600  # it holds the agent token
    data = built.image.path.read_bytes()
    assert data[0x8001:0x8006] == b"CD001" and data[510:512] == b"\x55\xaa"  # ISO 9660, isohybrid MBR
    assert built.image.size < built_ramdisk.total_size + 2 * (1 << 20)
    cfg = _extract(built.image.path, "/isolinux/isolinux.cfg", tmp_path / "isolinux.cfg").decode()
    assert f"  APPEND {args}\n" in cfg and cfg == iso.isolinux_cfg(args)
    assert f"conductor_node={NODE}" in args and f"conductor_token={TOKEN}" in args
    if built.uefi:
        grub = _extract(built.image.path, iso.GRUB_CFG_ON_ISO, tmp_path / "grub.cfg").decode()
        assert grub == iso.grub_cfg(args) and f"'conductor_token={TOKEN}'" in grub
        efi = _extract(built.image.path, "/isolinux/efiboot.img", tmp_path / "efiboot.img")
        assert len(efi) == iso.EFI_IMAGE_KIB * 1024
        listing = subprocess.run(["mdir", "-b", "-i", str(tmp_path / "efiboot.img"), "::/EFI/BOOT"],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
        assert listing.split() == ["::/EFI/BOOT/BOOTX64.EFI"]
        assert TOKEN.encode() not in efi  # the FAT image is the same for every node
    # Not copied through anything that could change them: the very bytes the build wrote.
    assert _extract(built.image.path, "/agent.kernel", tmp_path / "k") == built_ramdisk.kernel.path.read_bytes()
    assert _extract(built.image.path, "/agent.initramfs", tmp_path / "i") == built_ramdisk.initramfs.path.read_bytes()

    # Reproducible: the same inputs and arguments give the same bytes, whatever the inputs' times.
    os.utime(built_ramdisk.kernel.path)
    again = iso.build_iso(tmp_path / "again.iso", built_ramdisk.kernel.path, built_ramdisk.initramfs.path, args)
    assert again.image.sha256 == built.image.sha256
    other = iso.build_iso(tmp_path / "other.iso", built_ramdisk.kernel.path, built_ramdisk.initramfs.path,
                          iso.node_kernel_args("http://10.0.2.2:6385", NODE, "another-token"))
    assert other.image.sha256 != built.image.sha256


def test_the_cli_writes_the_iso_and_prints_it(built_ramdisk, tmp_path: Path) -> None:
    _need_tools()
    out = tmp_path / "agent.iso"
    result = CliRunner().invoke(main, ["ramdisk", "iso", "--out", str(out), "--ramdisk",
                                       str(built_ramdisk.kernel.path.parent), "--json",
                                       "--kernel-args", "console=ttyS0  conductor_node=n1"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["iso"]["path"] == str(out) and shown["iso"]["size"] == out.stat().st_size
    assert shown["kernel_args"] == "console=ttyS0 conductor_node=n1"
    assert shown["volume_id"] == iso.DEFAULT_VOLUME_ID

    missing = CliRunner().invoke(main, ["ramdisk", "iso", "--out", str(out), "--ramdisk", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "agent.kernel is missing" in missing.output


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_booted_from_a_cdrom_the_agent_heartbeats_with_the_baked_in_arguments(built_ramdisk, tmp_path: Path,
                                                                              firmware: str) -> None:
    _need_tools()
    if firmware == "uefi":
        missing = iso.missing_uefi_tools() + ([] if OVMF.is_file() else [f"{OVMF} (Debian package ovmf)"])
        if missing:
            pytest.skip(f"booting the ISO under UEFI needs {', '.join(missing)}")
    conductor = Conductor([{"id": "cmd-inspect", "name": "inspect", "params": {}},
                           {"id": "cmd-off", "name": "power_off", "params": {}}], {})
    server = conductor.serve()
    base = f"http://10.0.2.2:{server.server_address[1]}"
    args = iso.node_kernel_args(base, NODE, TOKEN, extra="console=ttyS0,115200 panic=-1")
    # Under BIOS too the ISO is the one with both boot images when the host can make it.
    built = iso.build_iso(tmp_path / "node.iso", built_ramdisk.kernel.path, built_ramdisk.initramfs.path, args,
                          uefi=True if firmware == "uefi" else None)
    console = tmp_path / "console.log"
    command = [
        "qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot", "-m", "512", "-smp", "1",
        *(["-bios", str(OVMF)] if firmware == "uefi" else []),
        "-cdrom", str(built.image.path), "-boot", "d", "-serial", f"file:{console}",
        # No -kernel, -initrd or -append: SeaBIOS boots the CD and isolinux the kernel, or OVMF GRUB.
        "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile=",
    ]
    started = time.monotonic()
    qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=procs.die_with_parent(os.getpid()))
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
    assert ("ISOLINUX" in log) == (firmware == "bios"), context
    # The kernel ran with the ISO's arguments (isolinux adds BOOT_IMAGE= and initrd=).
    cmdline = next((line for line in log.splitlines() if "Command line:" in line), "")
    assert f"conductor_node={NODE}" in cmdline and f"conductor_api_url={base}" in cmdline, context
    assert f"conductor_token={TOKEN}" in cmdline, cmdline
    # ... and the agent heartbeated with the baked-in node (the URL path) and token (the header).
    assert conductor.done.is_set() and not conductor.refused, context
    result: dict[str, Any] = conductor.results["cmd-inspect"]
    assert result["status"] == "succeeded", context
    assert [(n["mac"], n["link"]) for n in result["inventory"]["nics"]] == [(MAC, True)], result
    print("".join(line + "\n" for line in log.splitlines() if "agent[" in line or "Command line" in line))
    print(f"\n{firmware}: ISO {built.image.size / 1e6:.1f} MB built in {built.seconds:.2f} s; first heartbeat "
          f"{conductor.first('heartbeat cmd-inspect') - started:.1f} s after QEMU start; powered off after "
          f"{time.monotonic() - started:.1f} s")
