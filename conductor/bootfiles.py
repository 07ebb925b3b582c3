"""Per-node boot configs: how a booting agent learns where to call and with what token.

This plays the part of a PXE server's per-node config (``pxelinux.cfg/``
with the ramdisk's kernel parameters).  The ``pxe`` deploy interface writes
one small JSON file per node into the "TFTP root" (setting ``pxe_root``,
default ``<data_dir>/pxe``) before it powers the node on from the network,
and removes it when the agent's work is done.  A machine that boots from
``pxe`` reads the file of its BMC and its ramdisk then knows:

* ``api_url``: the conductor API to heartbeat to;
* ``node``: its node's UUID;
* ``token``: the agent token issued for this workflow (the conductor keeps
  its SHA-256, and a sealed copy for the iPXE boot script of real machines
  until the agent claims it: :mod:`conductor.core.agent`).

The file is named after the node's BMC address (``<address>-<port>.json``;
``redfish-<host:port>-<system>.json`` for a Redfish BMC),
the one identity both the conductor (``driver_info``) and the machine know
before inspection has found any MAC address; nodes without a BMC address
(``fake`` driver) use ``node-<uuid>.json``.  Files are mode 0600 in a 0700
directory: the token is a secret, like the kernel command line of a real
PXE boot, which is exactly as exposed on a real network (see
``docs/deploy.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast


def key_for(driver_info: Mapping[str, Any], node_uuid: str) -> str:
    """The boot config name of a node: its BMC address (and Redfish system), else its UUID."""
    address = driver_info.get("ipmi_address")
    if address:
        return f"{address}-{int(driver_info.get('ipmi_port') or 623)}"
    redfish = driver_info.get("redfish_address")
    if isinstance(redfish, str) and redfish:
        service = redfish.split("://", 1)[-1].rstrip("/")
        return f"redfish-{service}-{driver_info.get('redfish_system_id') or 'system'}"
    return f"node-{node_uuid}"


def path_for(root: Path, key: str) -> Path:
    """The file of boot config ``key`` under ``root``."""
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in key)
    return root / f"{safe}.json"


def write(root: Path, key: str, config: Mapping[str, Any]) -> Path:
    """Write boot config ``key`` atomically, readable by its owner only."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = path_for(root, key)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(dict(config), handle)
    os.replace(tmp, path)
    return path


def read(root: Path, key: str) -> dict[str, Any] | None:
    """Boot config ``key``, or None when there is none (the machine finds nothing to boot)."""
    try:
        return cast("dict[str, Any]", json.loads(path_for(root, key).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def remove(root: Path, key: str) -> None:
    """Remove boot config ``key`` (if present)."""
    with contextlib.suppress(FileNotFoundError):
        path_for(root, key).unlink()


# --- virtual media ISOs ---------------------------------------------------------------------
#: Where the per-node agent ISOs of the ``redfish-virtual-media`` boot interface live, under the data dir.
MEDIA_DIR = "vmedia"


def media_path(data_dir: Path, node_uuid: str) -> Path:
    """The per-node agent ISO (it holds the agent token: mode 0600, deleted when the phase ends)."""
    return Path(data_dir) / MEDIA_DIR / f"{node_uuid}.iso"


def remove_media(data_dir: Path, node_uuid: str) -> None:
    """Delete ``node_uuid``'s agent ISO, if any."""
    media_path(data_dir, node_uuid).unlink(missing_ok=True)
