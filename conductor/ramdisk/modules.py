"""Kernel modules for the ramdisk: what to load, with what, in which order.

``modules.dep`` (written by ``depmod``) has one line per module::

    kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko

listing every module it needs, directly or not.  Busybox ``insmod`` loads
one file and knows nothing of dependencies, so the builder resolves them
here and writes the load order for ``/init``.  Module names compare with
``-`` and ``_`` as the same character, like ``modprobe`` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: What the agent needs on virtual and common physical machines: virtio,
#: e1000 for QEMU's default NIC, SATA (ahci), NVMe and SCSI disks, plus
#: the usual server NICs. Built-in ones are simply absent from modules.dep.
DEFAULT_MODULES = (
    "virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "e1000", "ahci", "nvme", "sd_mod",
    "e1000e", "igb", "ixgbe", "tg3", "af_packet",
)
#: Modules that may be built into the kernel (then not in modules.dep): not an error.
OPTIONAL_MODULES = frozenset({"af_packet", "sd_mod", "ahci", "virtio_pci"})

_SUFFIX = re.compile(r"\.ko(\.(xz|zst|gz))?$")


class UnknownModule(LookupError):
    """A wanted module is in neither modules.dep nor the optional list."""


def module_name(path: str) -> str:
    """``kernel/drivers/net/virtio_net.ko.xz`` -> ``virtio_net``."""
    return _SUFFIX.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def parse(text: str) -> dict[str, list[str]]:
    """modules.dep text -> {module path: [dependency paths]}."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, _, rest = line.partition(":")
        deps[path.strip()] = rest.split()
    return deps


def load_order(deps: Mapping[str, list[str]], wanted: Iterable[str],
               optional: Iterable[str] = OPTIONAL_MODULES) -> list[str]:
    """The module files to load for ``wanted`` (names), dependencies first, each once.

    :raises UnknownModule: a wanted module that is not optional is not in ``deps``.
    """
    by_name = {module_name(path): path for path in deps}
    optional = {o.replace("-", "_") for o in optional}
    order: list[str] = []
    done: set[str] = set()

    def visit(path: str, trail: tuple[str, ...]) -> None:
        if path in done:
            return
        if path in trail:  # a cycle would be a broken modules.dep: load what we can
            return
        # modules.dep lists the transitive closure; visiting each dependency's
        # own line first still yields a valid order when it is incomplete.
        for dep in deps.get(path, []):
            visit(dep, (*trail, path))
        done.add(path)
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        path = by_name.get(key)
        if path is None:
            if key in optional:
                continue
            raise UnknownModule(f"module {name} is not in modules.dep (and is not built in as far as we know)")
        visit(path, ())
    return order
