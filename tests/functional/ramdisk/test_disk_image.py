"""The demo disk image: built from the cached Debian packages, laid out as SeaBIOS expects, reproducible,
and booted in QEMU (TCG) it prints its marker on the serial console and powers the machine off."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conductor import procs
from conductor.cli import main
from conductor.ramdisk import diskimage

MIB = 1 << 20


def _mdir(image: Path) -> str:
    done = subprocess.run(["mdir", "-a", "-b", "-i", f"{image}@@{diskimage.PART_START * 512}", "::/"],
                          capture_output=True, text=True, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    return done.stdout


def test_the_image_is_an_mbr_disk_with_a_bootable_fat_partition(demo_image) -> None:
    image = demo_image.image.path
    data = image.read_bytes()
    assert demo_image.image.size == len(data) == 16 * MIB
    code = diskimage.mbr_code()
    assert code is not None
    boot = code.read_bytes()
    assert data[:len(boot)] == boot and data[510:512] == b"\x55\xaa"
    status, _, kind, _, start, sectors = struct.unpack("<B3sB3sII", data[446:462])
    assert (status, kind, start, start + sectors) == (0x80, 0x0E, 2048, len(data) // 512)
    assert data[462:510] == bytes(48)  # one partition
    vbr = data[start * 512:(start + 1) * 512]
    assert vbr[54:62] == b"FAT16   " and vbr[510:] == b"\x55\xaa"
    assert struct.unpack("<I", vbr[28:32])[0] == start  # hidden sectors: where syslinux finds itself
    names = {Path(line).name.upper() for line in _mdir(image).split()}
    assert {"LDLINUX.SYS", "LDLINUX.C32", "LINUX", "INITRD.IMG", "SYSLINUX.CFG"} <= names, names
    assert gzip.decompress(demo_image.compressed.path.read_bytes()) == data
    assert demo_image.line == f"CONDUCTOR-DEMO-IMAGE-BOOTED {demo_image.marker}"
    print(f"\nimage {demo_image.image.size / MIB:.0f} MiB, gzip {demo_image.compressed.size / 1e6:.1f} MB, "
          f"built in {demo_image.seconds:.1f} s")


def test_the_same_packages_and_marker_give_the_same_bytes(demo_image, ramdisk_cache: Path, tmp_path: Path) -> None:
    """Built again by the CLI (``conductor ramdisk image --json``), into another directory."""
    done = CliRunner().invoke(main, ["ramdisk", "image", "--out", str(tmp_path / "again.img"), "--marker",
                                     demo_image.marker, "--cache", str(ramdisk_cache), "--json"])
    assert done.exit_code == 0, done.output
    again = json.loads(done.output)
    assert again["image"] == {"path": str(tmp_path / "again.img"), "size": 16 * MIB,
                              "sha256": demo_image.image.sha256}
    assert again["gzip"]["sha256"] == demo_image.compressed.sha256
    assert again["console_line"] == demo_image.line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.img", "again.img.gz"]  # no leftovers


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
@pytest.mark.parametrize("disk", ["ide", "virtio"])
def test_booted_from_its_disk_it_prints_the_marker_and_powers_off(demo_image, tmp_path: Path, disk: str) -> None:
    """ide: the image file itself; virtio: a larger disk with the image at its start, as a deploy leaves it."""
    console = tmp_path / "console.log"
    if disk == "ide":
        drive = ["-drive", f"file={demo_image.image.path},format=raw,snapshot=on"]
    else:
        target = tmp_path / "disk.raw"
        with target.open("wb") as handle:
            handle.truncate(64 * MIB)
            handle.write(demo_image.image.path.read_bytes())
        drive = ["-drive", f"file={target},format=raw,if=virtio"]
    args = ["qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-display", "none", "-no-reboot",
            "-m", "256", "-serial", f"file:{console}", *drive]
    started = time.monotonic()
    messages = tmp_path / "qemu.out"
    with messages.open("wb") as out:
        qemu = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=procs.die_with_parent(os.getpid()))
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            qemu.wait(timeout=240)
        exited = qemu.poll() is not None
    finally:
        if qemu.poll() is None:
            os.killpg(qemu.pid, signal.SIGKILL)
            qemu.wait(timeout=30)
    seconds = time.monotonic() - started
    log = console.read_text(errors="replace") if console.exists() else ""
    context = f"qemu: {messages.read_text(errors='replace')[-1000:]}\nconsole tail:\n{log[-3000:]}"
    assert exited, "QEMU did not power off\n" + context
    assert qemu.returncode == 0, context
    lines = log.splitlines()
    assert demo_image.line in lines, context
    # Its /init powered the machine off (and did not panic and reboot: -no-reboot would exit QEMU too).
    after = lines[lines.index(demo_image.line):]
    assert any("reboot: Power down" in line for line in after), context
    assert not any("Kernel panic" in line for line in lines), context
    print(f"\n{disk}: booted from disk and powered off {seconds:.1f} s after QEMU started")
