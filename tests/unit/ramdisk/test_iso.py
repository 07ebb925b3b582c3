"""The ISO builder's pieces that need no tools: the boot config, argument checks, the command, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from conductor.cli import main
from conductor.ramdisk import iso

NODE = "7d3c2f9e-1b4a-4c1e-9a57-1f0e3a6b8c21"


def test_the_boot_config_boots_the_agent_at_once_with_the_node_s_arguments() -> None:
    args = iso.node_kernel_args("http://192.0.2.1:6385", NODE, "tok-1")
    assert args == (f"{iso.CONSOLE_ARGS} conductor_api_url=http://192.0.2.1:6385 conductor_node={NODE} "
                    "conductor_token=tok-1")
    cfg = iso.isolinux_cfg(args)
    lines = cfg.splitlines()
    assert lines[:4] == ["SERIAL 0 115200", "DEFAULT agent", "PROMPT 0", "TIMEOUT 0"]
    assert lines[4:] == ["LABEL agent", f"  LINUX {iso.KERNEL_ON_ISO}", f"  INITRD {iso.INITRAMFS_ON_ISO}",
                         f"  APPEND {args}"]
    # The agent takes the last console= for /dev/console: the serial port, where it logs.
    assert args.split().index("console=ttyS0,115200") > args.split().index("console=tty0")


def test_grub_gets_the_same_arguments_each_single_quoted() -> None:
    args = iso.node_kernel_args("http://192.0.2.1:6385/a;b#c", NODE, "tok$en")
    cfg = iso.grub_cfg(args)
    assert cfg.startswith("serial --unit=0 --speed=115200\n")
    linux = next(line.strip() for line in cfg.splitlines() if line.strip().startswith("linux "))
    # Quoted, GRUB expands no $ and starts no new command at ; or comment at #.
    assert linux == (f"linux {iso.KERNEL_ON_ISO} 'console=tty0' 'console=ttyS0,115200' "
                     f"'conductor_api_url=http://192.0.2.1:6385/a;b#c' 'conductor_node={NODE}' "
                     "'conductor_token=tok$en'")
    assert f"  initrd {iso.INITRAMFS_ON_ISO}\n" in cfg
    with pytest.raises(ValueError):
        iso.grub_cfg("a=b'\nreboot")


def test_extra_arguments_come_first_and_spaces_are_collapsed() -> None:
    args = iso.node_kernel_args("http://h/", "n", "t", extra="  console=ttyS1,9600   panic=-1 ")
    assert args == "console=ttyS1,9600 panic=-1 conductor_api_url=http://h/ conductor_node=n conductor_token=t"


@pytest.mark.parametrize("api_url, node, token", [
    ("http://h/", "n", "a token"), ("http://h/", "n", 'tok"en'), ("http://h/", "n'1", "t"),
    ("http://h /", "n", "t"), ("http://h/", "n", "t\nDEFAULT evil"), ("http://h/", "", "t"),
])
def test_values_with_whitespace_or_quotes_are_refused(api_url: str, node: str, token: str) -> None:
    with pytest.raises(ValueError, match="without whitespace or quotes"):
        iso.node_kernel_args(api_url, node, token)


@pytest.mark.parametrize("args", [
    "console=ttyS0\nLABEL evil", "a=b\rc", "a=\"b c\"", "a='b'", "a=b\\", "a=b\tc", "", "   ",
    "a=\x00", "x=" + "y" * 2000,
])
def test_arguments_that_cannot_be_one_append_line_are_refused(args: str) -> None:
    with pytest.raises(ValueError):
        iso.isolinux_cfg(args)
    with pytest.raises(ValueError):
        iso.grub_cfg(args)
    with pytest.raises(ValueError):
        iso.node_kernel_args("http://h/", "n", "t", extra=args if args.strip() else "a=\n")


@pytest.mark.parametrize("volume_id, ok", [("CONDUCTOR_AGENT", True), ("A", True), ("N" * 32, True),
                                           ("", False), ("N" * 33, False), ("lower", False), ("A B", False),
                                           ("A-B", False), ("É", False)])
def test_volume_ids_are_iso_9660_d_characters(volume_id: str, ok: bool) -> None:
    if ok:
        assert iso.check_volume_id(volume_id) == volume_id
    else:
        with pytest.raises(ValueError, match="volume id"):
            iso.check_volume_id(volume_id)


def test_the_command_grafts_the_ramdisk_in_place_with_one_time_for_everything(tmp_path: Path) -> None:
    command = iso.xorriso_command(tmp_path / "o.iso", tmp_path / "stage", Path("/r/agent.kernel"),
                                  Path("/r/agent.initramfs"), "VOL", Path("/m/isohdpfx.bin"), 1700000000)
    assert command[:3] == ["xorriso", "-as", "mkisofs"]
    assert command[command.index("-V") + 1] == "VOL"
    assert command[command.index("--set_all_file_dates") + 1] == "=1700000000"
    assert "--modification-date=2023111422132000" in command
    assert command[command.index("-b") + 1] == "isolinux/isolinux.bin"
    assert command[command.index("-isohybrid-mbr") + 1] == "/m/isohdpfx.bin"
    assert command[-3:] == [f"/isolinux={tmp_path / 'stage'}", "/agent.kernel=/r/agent.kernel",
                            "/agent.initramfs=/r/agent.initramfs"]
    assert "-e" not in command and "/conductor-agent=" not in " ".join(command)
    both = iso.xorriso_command(tmp_path / "o.iso", tmp_path / "stage", Path("k"), Path("i"), "V", Path("m"), 1,
                               grub_dir=tmp_path / "grub")
    assert both[both.index("-eltorito-alt-boot") + 1:both.index("-eltorito-alt-boot") + 3] == [
        "-e", "isolinux/efiboot.img"]
    assert f"/conductor-agent={tmp_path / 'grub'}" in both
    # xorriso takes time 0 for "not set": the earliest time used is one second after 1970.
    zero = iso.xorriso_command(tmp_path / "o.iso", tmp_path, Path("k"), Path("i"), "V", Path("m"), 0)
    assert zero[zero.index("--set_all_file_dates") + 1] == "=1"


def test_missing_tools_are_named_with_their_debian_packages(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(iso.shutil, "which", lambda *_args, **_kwargs: None)
    monkeypatch.setattr(iso, "ISOLINUX_BIN", ("/nonexistent/isolinux.bin",))
    monkeypatch.setattr(iso, "LDLINUX_C32", ("/nonexistent/ldlinux.c32",))
    assert iso.missing_tools() == ["xorriso (Debian package xorriso)",
                                   "isolinux.bin and isohdpfx.bin (Debian package isolinux)",
                                   "ldlinux.c32 (Debian package syslinux-common)"]
    with pytest.raises(iso.IsoError, match="needs xorriso"):
        iso.build_iso(tmp_path / "o.iso", tmp_path / "k", tmp_path / "i", "console=ttyS0")
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(iso, "GRUB_EFI_MODULES_DIR", "/nonexistent/x86_64-efi")
    assert iso.missing_uefi_tools() == [
        "grub-mkimage (Debian package grub-common)", "mkfs.vfat (Debian package dosfstools)",
        "mcopy (Debian package mtools)", "mmd (Debian package mtools)",
        "/nonexistent/x86_64-efi (Debian package grub-efi-amd64-bin)"]
    with pytest.raises(iso.IsoError, match="UEFI boot image needs grub-mkimage"):
        iso.efi_image(tmp_path / "efiboot.img", tmp_path)


def test_the_cli_refuses_bad_arguments_before_building(tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["ramdisk", "iso", "--out", str(tmp_path / "a.iso"), "--kernel-args", "a='b c'",
                                "--ramdisk", str(tmp_path)])
    assert done.exit_code == 64 and "--kernel-args" in done.output and "without quotes" in done.output
    done = runner.invoke(main, ["ramdisk", "iso", "--out", str(tmp_path / "a.iso"), "--volume-id", "bad id",
                                "--ramdisk", str(tmp_path)])
    assert done.exit_code == 64 and "--volume-id" in done.output
    assert not list(tmp_path.iterdir())
