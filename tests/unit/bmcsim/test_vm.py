"""VM BMCs' pure parts: the declaration, QEMU's command line, boot orders, MACs, the inventory."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from conductor import macs
from conductor.bmcsim import Fleet, PowerEvent, UserNetwork, VmSpec
from conductor.bmcsim.agent import SimAgent
from conductor.bmcsim.cli import sim
from conductor.bmcsim.state import ForceCause, PowerState, StateTable
from conductor.bmcsim.vm import (
    POWEROFF_BOOT_SECTOR,
    POWEROFF_MESSAGE,
    VmFiles,
    boot_order,
    create_disk,
    parse_size,
    qemu_command,
    vm_mac,
)


def files(tmp: Path) -> VmFiles:
    return VmFiles(disk=tmp / "vm-0000.img", console=tmp / "c.log", qemu_log=tmp / "q.log",
                   qmp=tmp / "vm-0000.qmp", qemu="qemu-system-x86_64")


@pytest.mark.parametrize(("text", "size"), [("2G", 2 << 30), ("512M", 512 << 20), ("64k", 64 << 10),
                                            ("1GiB", 1 << 30), ("4096", 4096), (123, 123)])
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "2X", "-1", "0", "G"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_macs_are_qemus_stable_per_name_and_valid() -> None:
    mac = vm_mac("vm-0000")
    assert mac.startswith("52:54:00:") and mac == vm_mac("vm-0000") != vm_mac("vm-0001")
    assert macs.normalise(mac) == mac  # the conductor accepts it as a port as is
    assert len({vm_mac(f"vm-{i:04d}") for i in range(1000)}) == 1000


@pytest.mark.parametrize(("device", "persistent", "expected"), [
    ("default", False, ("cn", None)),
    ("disk", True, ("cn", None)),
    ("disk", False, ("cn", "cn")),
    ("pxe", True, ("nc", None)),
    ("pxe", False, ("cn", "nc")),  # this boot from the network, then back to the default
    ("cdrom", False, ("cn", "dcn")),
    ("bios", True, ("cn", None)),
])
def test_boot_orders(device: str, persistent: bool, expected: tuple[str, str | None]) -> None:
    assert boot_order(device, persistent) == expected


def test_qemu_command_line(tmp_path: Path) -> None:
    spec = VmSpec(memory_mb=768, cpus=2, network=UserNetwork(boot_url="http://10.0.2.2:6385/v1/boot,x"))
    args = qemu_command(spec, "vm-0000", "52:54:00:aa:bb:cc", files(tmp_path), "tcg", "cn", "nc")
    joined = " ".join(args)
    assert args[0] == "qemu-system-x86_64"
    assert ["-accel", "tcg"] == args[args.index("-accel"):args.index("-accel") + 2]
    assert ["-m", "768", "-smp", "2"] == args[args.index("-m"):args.index("-m") + 4]
    assert "-boot order=cn,once=nc" in joined
    assert f"-qmp unix:{tmp_path}/vm-0000.qmp,server=on,wait=off" in joined
    assert f"file={tmp_path}/vm-0000.img,format=raw,if=none,id=disk0" in joined
    # Commas inside a value are doubled, as QEMU's option parser wants.
    assert "-netdev user,id=net0,bootfile=http://10.0.2.2:6385/v1/boot,,x" in joined
    assert ("virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc,romfile=/usr/lib/ipxe/qemu/efi-virtio.rom,"
            "disable-legacy=on") in joined
    assert f"file,id=serial0,path={tmp_path}/c.log,append=on" in joined
    assert "qcow2" in " ".join(qemu_command(spec, "vm-0000", "52:54:00:aa:bb:cc", files(tmp_path), "kvm",
                                            "nc", None, "qcow2"))
    # The CD-ROM is always there: empty, or with the virtual media inserted over Redfish.
    assert "-drive if=none,id=cd0,media=cdrom,readonly=on -device ide-cd,drive=cd0,id=cdrom0,bus=ide.1,unit=0" \
        in joined
    media = qemu_command(spec, "vm-0000", "52:54:00:aa:bb:cc", files(tmp_path), "tcg", "cn", "dcn",
                         media=tmp_path / "vm-0000.cd.iso")
    assert f"if=none,id=cd0,media=cdrom,readonly=on,file={tmp_path}/vm-0000.cd.iso,format=raw" in media


def test_spec_is_checked() -> None:
    for bad in ({"disk_format": "vmdk"}, {"accel": "hvf"}, {"disk_size": "lots"}, {"memory_mb": 1},
                {"count": -1}, {"nic_model": "rtl8139"}):
        with pytest.raises(ValueError):
            VmSpec(**bad)  # type: ignore[arg-type]


def test_spec_as_cli_args_round_trips() -> None:
    spec = VmSpec(count=3, memory_mb=640, disk_size="1G", directory=Path("/tmp/x"), accel="auto",
                  network=UserNetwork(boot_url="http://10.0.2.2:1/v1/boot"))
    args = spec.cli_args()
    assert args[args.index("--vm-boot-url") + 1] == "http://10.0.2.2:1/v1/boot"
    assert args[args.index("--vm-dir") + 1] == "/tmp/x" and args[args.index("--vm-accel") + 1] == "auto"
    with pytest.raises(ValueError):
        VmSpec(name_prefix="box-").cli_args()


def test_the_poweroff_guest_is_one_boot_sector() -> None:
    assert len(POWEROFF_BOOT_SECTOR) == 512 and POWEROFF_BOOT_SECTOR.endswith(b"\x55\xaa")
    assert POWEROFF_MESSAGE.encode() in POWEROFF_BOOT_SECTOR


def test_disks_are_created_once_at_their_size(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    assert create_disk(disk, 8 << 20, "raw") is True
    assert disk.stat().st_size == 8 << 20 and disk.stat().st_blocks == 0  # sparse
    disk.write_bytes(b"kept")
    assert create_disk(disk, 8 << 20, "raw") is False and disk.read_bytes() == b"kept"
    with pytest.raises(FileNotFoundError):
        create_disk(tmp_path / "missing" / "d.img", 1 << 20, "raw")


def test_vm_bmcs_follow_the_others_and_carry_their_mac() -> None:
    fleet = Fleet(2, vms=VmSpec(count=2))
    assert [(b.name, b.vm) for b in fleet.bmcs] == [("sim-0000", False), ("sim-0001", False),
                                                    ("vm-0000", True), ("vm-0001", True)]
    assert [b.port - fleet.base_port for b in fleet.bmcs] == [0, 1, 2, 3]
    assert fleet.vm_names == {"vm-0000", "vm-0001"}
    nodes = fleet.inventory()["nodes"]
    assert "ports" not in nodes[0] and nodes[2]["ports"] == [vm_mac("vm-0000")]
    assert fleet.bmcs[2].shard_config()["vm"] is True and fleet.bmcs[0].shard_config()["vm"] is False
    assert Fleet(vms=VmSpec(count=1)).count == 1  # VMs only
    with pytest.raises(ValueError):
        Fleet(0)
    with pytest.raises(ValueError):
        Fleet(1, name_prefix="vm-", vms=VmSpec(count=1))  # two BMCs named vm-0000


def test_a_force_request_carries_its_cause() -> None:
    table = StateTable.create(count=2, shards=1, delay=0.0)
    try:
        seq = table.request_force(1, PowerState.OFF, ForceCause.VM_EXIT)
        assert table.read_force(1) == (seq, 0, 0)
        assert table.read_force_cause(1).label == "vm-exit"
        table.request_force(1, PowerState.ON)
        assert table.read_force_cause(1).label == "drift"
        assert table.read_force_cause(0) == ForceCause.DRIFT
        assert ForceCause.VM_FAILED.label == "vm-failed"
    finally:
        table.close()


def test_cli_declares_vms() -> None:
    result = CliRunner().invoke(sim, ["run", "--help"])
    for option in ("--vm-count", "--vm-memory", "--vm-cpus", "--vm-disk-size", "--vm-dir", "--vm-boot-url",
                   "--vm-accel", "--vm-qemu", "--vm-disk-format"):
        assert option in result.output
    assert "vms" in CliRunner().invoke(sim, ["--help"]).output


def test_the_simulated_agent_leaves_vm_bmcs_to_their_machine(tmp_path: Path) -> None:
    fleet = Fleet(1, vms=VmSpec(count=1))
    agent = SimAgent(fleet, tmp_path)
    for name in ("sim-0000", "vm-0000"):
        agent._on_power(PowerEvent(1, name, "off", "on", "on", "disk", False, False, 0.0))
    assert [bmc for _, bmc, _ in agent.log] == ["sim-0000"]  # "booted from disk: the installed OS"
