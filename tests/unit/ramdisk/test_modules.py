"""Module dependency resolution, on a real modules.dep (Debian 12, kernel 6.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conductor.ramdisk import modules

DEP = modules.parse((Path(__file__).with_name("modules.dep.6.1")).read_text())


def test_parse_reads_paths_and_dependencies() -> None:
    assert DEP["kernel/drivers/net/ethernet/intel/e1000/e1000.ko"] == []
    assert DEP["kernel/drivers/block/virtio_blk.ko"] == [
        "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"]
    assert not any(path.startswith("#") for path in DEP)


def test_names_ignore_suffixes_and_dashes() -> None:
    assert modules.module_name("kernel/lib/crc-t10dif.ko") == "crc_t10dif"
    assert modules.module_name("kernel/drivers/net/virtio_net.ko.xz") == "virtio_net"
    assert modules.module_name("a/b/nvme-core.ko.zst") == "nvme_core"


def test_default_set_loads_every_dependency_first_and_once() -> None:
    order = modules.load_order(DEP, modules.DEFAULT_MODULES)
    assert len(order) == len(set(order))
    for position, path in enumerate(order):
        for dep in DEP[path]:
            assert order.index(dep) < position, f"{path} before its dependency {dep}"
    names = [modules.module_name(p) for p in order]
    for wanted in ("virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "e1000", "ahci", "nvme", "sd_mod"):
        assert wanted in names
    # What they pull in on this kernel.
    assert {"virtio", "virtio_ring", "net_failover", "failover", "scsi_mod", "libata", "libahci",
            "nvme_core", "t10_pi", "crc_t10dif"} <= set(names)
    assert "xfs" not in names and "btrfs" not in names


def test_dash_and_underscore_name_the_same_module() -> None:
    assert modules.load_order(DEP, ["crc-t10dif"]) == modules.load_order(DEP, ["crc_t10dif"])


def test_unknown_module_is_an_error_unless_optional() -> None:
    with pytest.raises(modules.UnknownModule, match="no_such_driver"):
        modules.load_order(DEP, ["virtio_net", "no_such_driver"])
    # af_packet is built into Debian's kernel: absent from modules.dep, not an error.
    assert modules.load_order(DEP, ["af_packet"]) == []


def test_a_cycle_does_not_loop_for_ever() -> None:
    deps = {"a.ko": ["b.ko"], "b.ko": ["a.ko"]}
    assert sorted(modules.load_order(deps, ["a"])) == ["a.ko", "b.ko"]
