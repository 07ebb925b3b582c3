"""The host entries: one file per MAC dnsmasq answers, kept equal to the nodes booting from the network.

A node boots from the network while its provision state is one of
:data:`NETWORK_BOOT_STATES` and its deploy interface is ``pxe``.  The entry
of each of its ports appears when it enters the first such state and goes
once it leaves the last (``active``, ``available``, ``manageable`` or a
failed state), each within one pass of :mod:`conductor.dhcp.sync`.  The
workflow's first phase powers the node off, so the entry is normally in
place before the node is powered on from the network; firmware that asked
earlier asks again (PXE retries for about a minute).  The
simulated flows (deploy interface ``fake``) boot nothing, and get no entry.

A file is written beside the directory and renamed into it, so dnsmasq
(which reads a file when it is closed or moved in) never reads half of one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor import drivers
from conductor.core import agent as protocol
from conductor.drivers.pxe import PXEDeploy
from conductor.exceptions import UnknownDriver
from conductor.fsm.states import ProvisionState as S
from conductor.models import Node, Port

LOG = logging.getLogger(__name__)

#: Where the ``pxe`` workflows boot the node's agent from the network: the
#: busy states that power it on into the agent, and the waits for its call-back.
#: ``deleting`` is left out: tearing down only powers the node off (the
#: cleaning that follows boots the agent, in ``cleaning``).
NETWORK_BOOT_STATES = frozenset(
    {S.DEPLOYING, S.DEPLOY_WAIT, S.CLEANING, S.CLEAN_WAIT, S.INSPECTING, S.INSPECT_WAIT}
)

_WANTED = (
    sa.select(Port.address, Node.uuid, Node.driver, Node.driver_info, Node.driver_internal_info)
    .join(Node, Port.node_id == Node.id)
    .where(Node.provision_state.in_(sorted(str(s) for s in NETWORK_BOOT_STATES)))
    .order_by(Port.address)
)


def boots_from_network(driver: str, driver_info: Mapping[str, Any]) -> bool:
    """Whether a node of ``driver`` with ``driver_info`` boots its agent from the network (deploy interface ``pxe``)."""
    try:
        deploy = drivers.get(driver).deploy_for(driver_info)
    except (UnknownDriver, KeyError):  # a driver or interface since removed: it boots nothing of ours
        return False
    return isinstance(deploy, PXEDeploy) and deploy.network_boot


def wanted(session: Session) -> dict[str, str]:
    """MAC -> node uuid, for every port of a node booting its agent from the network now.

    Only once the agent phase has issued its token: a rebuild's image
    preparation (in ``deploying``, the node still in service) may take
    hours, and its OS must not get answers from the provisioning network
    meanwhile.  The token is committed before the node is powered on.
    """
    return {
        address: uuid
        for address, uuid, driver, driver_info, internal in session.execute(_WANTED)
        if protocol.issued(internal) and boots_from_network(driver, driver_info or {})
    }


@dataclasses.dataclass(frozen=True)
class Changes:
    """What one reconciliation wrote and removed (MACs)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


class HostsDir:
    """The ``dhcp-hostsdir`` directory: a file named after each MAC answered (``52-54-00-12-34-56``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def file_name(mac: str) -> str:
        return mac.replace(":", "-")

    @staticmethod
    def entry(mac: str, node_uuid: str) -> str:
        """A file's text: the MAC (a dnsmasq ``dhcp-host`` without options), and whose it is."""
        return f"# node {node_uuid}\n{mac}\n"

    def present(self) -> dict[str, str]:
        """File name -> text, of every file in the directory (none before the first reconciliation)."""
        found: dict[str, str] = {}
        if not self.path.is_dir():
            return found
        for path in self.path.iterdir():
            try:
                found[path.name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                found[path.name] = ""  # unreadable: not ours to keep
        return found

    def reconcile(self, want: Mapping[str, str]) -> Changes:
        """Make the directory hold exactly the entries of ``want`` (MAC -> node uuid)."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        present = self.present()
        added = []
        for mac, node_uuid in sorted(want.items()):
            name, text = self.file_name(mac), self.entry(mac, node_uuid)
            if present.get(name) != text:
                self._write(name, text)
                added.append(mac)
        names = {self.file_name(mac) for mac in want}
        removed = []
        for name in sorted(set(present) - names):
            (self.path / name).unlink(missing_ok=True)
            removed.append(name.replace("-", ":"))
        for mac in added:
            LOG.info("DHCP: answering %s (node %s)", mac, want[mac])
        for mac in removed:
            LOG.info("DHCP: no longer answering %s", mac)
        return Changes(tuple(added), tuple(removed))

    def _write(self, name: str, text: str) -> None:
        # Beside the directory, not in it: dnsmasq reads any file closed in it.
        tmp = self.path.parent / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path / name)
