"""BMC descriptions and the inventory file ``conductor node import`` reads."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Stable per-BMC UUIDs (the RAKP exchange carries the BMC's GUID).
_UUID_NAMESPACE = uuid.UUID("7b3cf2a4-6f0e-4a51-9d8e-6c1d2f0b9a10")


@dataclass(frozen=True)
class BMCSpec:
    """One simulated BMC's identity and credentials (the password is not in repr).

    :ivar vm: a QEMU virtual machine is behind it (see :mod:`.vmmanager`).
    :ivar mac: the MAC of that machine's NIC (enrolled as the node's port).
    """

    name: str
    index: int
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    shard: int = 0
    vm: bool = False
    mac: str | None = None

    @property
    def uuid(self) -> uuid.UUID:
        """The BMC's GUID, stable across restarts."""
        return uuid.uuid5(_UUID_NAMESPACE, self.name)

    def driver_info(self) -> dict[str, Any]:
        """``driver_info`` of the node this BMC controls."""
        return {"ipmi_address": self.host, "ipmi_port": self.port,
                "ipmi_username": self.username, "ipmi_password": self.password}

    def public_dict(self) -> dict[str, Any]:
        """Identity without the password (for listings)."""
        public = {"name": self.name, "address": self.host, "port": self.port,
                  "username": self.username, "shard": self.shard}
        if self.vm:
            public["mac"] = self.mac
        return public

    def shard_config(self) -> dict[str, Any]:
        """What a shard process needs to serve this BMC."""
        return {"index": self.index, "name": self.name, "port": self.port,
                "username": self.username, "password": self.password, "uuid": str(self.uuid),
                "vm": self.vm}

    def node(self) -> dict[str, Any]:
        """The create body of this BMC's node (``ports``: the VM's MAC, if any)."""
        entry: dict[str, Any] = {"name": self.name, "driver": "ipmi", "driver_info": self.driver_info()}
        if self.mac:
            entry["ports"] = [self.mac]
        return entry


def inventory_document(bmcs: Iterable[BMCSpec]) -> dict[str, Any]:
    """``{"nodes": [{"name", "driver": "ipmi", "driver_info": {...}[, "ports": [MAC]]}]}``.

    Each entry is a ``POST /v1/nodes`` body: ``conductor node import``
    enrols VM BMCs' nodes with their MAC as a port.
    """
    return {"nodes": [bmc.node() for bmc in bmcs]}


def write_inventory(bmcs: Iterable[BMCSpec], path: str | os.PathLike[str]) -> Path:
    """Write the inventory to ``path`` atomically, readable by its owner only.

    :raises OSError: the file cannot be written.
    """
    return write_document(inventory_document(bmcs), path)


def write_document(document: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write an inventory document (mode 0600: it holds passwords).

    :raises OSError: the file cannot be written.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, target)
    return target
