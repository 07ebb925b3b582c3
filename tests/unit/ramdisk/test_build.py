"""The builder's pieces that need no download: package resolution, archive contents, kernel arguments, CLI."""

from __future__ import annotations

import lzma
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from conductor.cli import main
from conductor.ramdisk import build, cpio, debs, kernel_args

SHOW = {
    "linux-image-amd64": "Package: linux-image-amd64\nVersion: 6.1.192-3\nArchitecture: amd64\n"
                         "Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)\nDescription: x\n  more: text\n",
    "linux-image-6.1.0-57-amd64": "Package: linux-image-6.1.0-57-amd64\nVersion: 6.1.192-3\nArchitecture: amd64\n",
    "busybox-static": "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nArchitecture: amd64\n",
}


@pytest.fixture()
def apt(monkeypatch):
    calls: list[list[str]] = []

    def fake_run(args: list[str], cwd: Path | None = None) -> str:
        calls.append(args)
        if args[:2] == ["apt-cache", "show"]:
            return SHOW[args[-1]]
        if args[:2] == ["apt-get", "download"]:
            name, version = args[-1].split("=")
            Path(cwd, f"{name}_{version.replace(':', '%3a')}_amd64.deb").write_bytes(b"deb")
            return ""
        raise AssertionError(args)

    monkeypatch.setattr(debs, "_run", fake_run)
    return calls


def test_the_metapackage_resolves_to_the_versioned_kernel(apt) -> None:
    kernel = debs.resolve_kernel()
    assert (kernel.name, kernel.version) == ("linux-image-6.1.0-57-amd64", "6.1.192-3")
    assert debs.resolve("busybox-static").filename == "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"


def test_a_cached_deb_is_not_downloaded_again(apt, tmp_path: Path) -> None:
    package = debs.resolve("busybox-static")
    first = debs.fetch(package, tmp_path)
    assert first.name == package.filename and first.read_bytes() == b"deb"
    assert debs.fetch(package, tmp_path) == first
    assert sum(1 for call in apt if call[:2] == ["apt-get", "download"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == [package.filename]  # no leftovers


def test_initramfs_holds_the_agent_busybox_and_modules_in_order(tmp_path: Path) -> None:
    tree = tmp_path / "kernel"
    moddir = tree / "lib/modules/6.1.0-57-amd64"
    (moddir / "kernel/drivers/virtio").mkdir(parents=True)
    (moddir / "kernel/drivers/virtio/virtio.ko").write_bytes(b"virtio")
    (moddir / "kernel/drivers/virtio/virtio_ring.ko.xz").write_bytes(lzma.compress(b"ring"))
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF busybox")
    assert build.kernel_release(tree) == "6.1.0-57-amd64"
    entries = build.initramfs_entries(busybox, tree, "6.1.0-57-amd64",
                                      ["kernel/drivers/virtio/virtio_ring.ko.xz", "kernel/drivers/virtio/virtio.ko"],
                                      "kernel x\n")
    members = {name: (mode, data) for name, mode, data, _ in cpio.read(_write(entries))}
    assert stat.S_IMODE(members["init"][0]) == 0o755 and members["init"][1].startswith(b"#!/bin/sh")
    assert members["bin/busybox"][1] == b"\x7fELF busybox" and members["bin/sh"][1] == b"busybox"
    assert members["lib/modules/6.1.0-57-amd64/kernel/drivers/virtio/virtio_ring.ko"][1] == b"ring"  # unpacked
    assert members["lib/modules/6.1.0-57-amd64/load.order"][1] == (
        b"kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio.ko\n")
    assert {"etc/udhcpc.script", "lib/agent/json.awk", "dev/console", "proc", "sys"} <= set(members)


def _write(entries: list[cpio.Entry]) -> bytes:
    import io

    out = io.BytesIO()
    cpio.write(out, entries)
    return out.getvalue()


def test_kernel_args_carry_url_node_and_token() -> None:
    assert kernel_args("http://10.0.2.2:6385", "node-1", "tok_-1") == (
        "conductor_api_url=http://10.0.2.2:6385 conductor_node=node-1 conductor_token=tok_-1")
    for bad in ("two words", "", 'q"uote'):
        with pytest.raises(ValueError):
            kernel_args("http://x", "n", bad)


def test_the_cli_has_the_ramdisk_build_command() -> None:
    result = CliRunner().invoke(main, ["ramdisk", "build", "--help"])
    assert result.exit_code == 0 and "--out" in result.output and "--cache" in result.output


def test_build_reports_a_missing_apt_clearly(monkeypatch, tmp_path: Path) -> None:
    def no_apt(args: list[str], cwd: Path | None = None) -> str:
        raise debs.PackageError(f"{args[0]} is not installed (a Debian host is needed to build the ramdisk)")

    monkeypatch.setattr(debs, "_run", no_apt)
    result = CliRunner().invoke(main, ["ramdisk", "build", "--out", str(tmp_path / "o"),
                                       "--cache", str(tmp_path / "c")])
    assert result.exit_code == 1 and "apt-cache is not installed" in result.output


def _fake_dpkg_deb(monkeypatch, during=None) -> list[list[str]]:
    """``dpkg-deb -x`` writing one file (and running ``during`` first, to play a concurrent build)."""
    calls: list[list[str]] = []

    def fake_run(args: list[str], cwd: Path | None = None) -> str:
        assert args[:2] == ["dpkg-deb", "-x"]
        calls.append(args)
        if during is not None:
            during()
        Path(args[3], "bin").mkdir()
        Path(args[3], "bin", "busybox").write_bytes(b"ours")
        return ""

    monkeypatch.setattr(debs, "_run", fake_run)
    return calls


def test_an_unpacked_tree_replaces_an_incomplete_one_and_leaves_nothing_else(monkeypatch, tmp_path: Path) -> None:
    deb = tmp_path / "busybox-static_1_amd64.deb"
    deb.write_bytes(b"deb")
    stale = tmp_path / "busybox-static_1_amd64.tree"
    (stale / "bin").mkdir(parents=True)  # an interrupted older layout: no .complete
    calls = _fake_dpkg_deb(monkeypatch)
    tree = debs.unpack(deb)
    assert tree == stale and (tree / "bin/busybox").read_bytes() == b"ours" and (tree / ".complete").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [deb.name, tree.name]
    assert debs.unpack(deb) == tree and len(calls) == 1  # kept for the next build


def test_a_tree_another_build_completed_meanwhile_is_kept(monkeypatch, tmp_path: Path) -> None:
    deb = tmp_path / "busybox-static_1_amd64.deb"
    deb.write_bytes(b"deb")
    tree = tmp_path / "busybox-static_1_amd64.tree"

    def other_build() -> None:
        (tree / "bin").mkdir(parents=True)
        (tree / "bin/busybox").write_bytes(b"theirs")
        (tree / ".complete").write_text(deb.name)

    _fake_dpkg_deb(monkeypatch, during=other_build)
    assert debs.unpack(deb) == tree
    assert (tree / "bin/busybox").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [deb.name, tree.name]
