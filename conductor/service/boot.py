"""Network boot: what a machine asking by MAC address is told to boot, and the files it fetches.

A machine's firmware (iPXE) asks ``GET /v1/boot/<mac>`` with no
credentials, so the answer must be safe to give anyone who can reach the
API: a node whose workflow is in its agent phase gets the agent (kernel
arguments carrying the API URL, its UUID and its agent token); every other
MAC, known or not, gets the same local-disk answer, so the endpoint tells
a stranger nothing about which MACs are enrolled or what state a node is in.

"In its agent phase" means: the node is waiting for its agent (``wait
call-back``, ``clean wait``, ``inspect wait``), or is in the busy state
just before (the phase issues the token, commits it, powers the machine on
and only then enters the wait: a fast machine may ask in between), and
its agent token is issued and not yet claimed (:mod:`conductor.core.agent`).
Once the agent's first heartbeat has claimed the token, the node's MACs
boot the local disk again: a script carries a token at most until the
agent it was issued for has called.

Boot files (the agent kernel and initramfs) are served from the setting
``ramdisk_dir`` by name, from an allow-list: a name is never a path.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor import macs
from conductor.core import agent as protocol
from conductor.dhcp.hosts import boots_from_network
from conductor.exceptions import NotFound, SecretUnreadable
from conductor.fsm import table
from conductor.fsm.states import ProvisionState as S
from conductor.models import Node, Port
from conductor.settings import Settings

LOG = logging.getLogger(__name__)

#: Provision states in which a node's agent may boot (see the module docstring):
#: the waits, and the busy states whose phases boot an agent.
AGENT_PHASE_STATES = table.WAIT_STATES | {S.DEPLOYING, S.CLEANING, S.INSPECTING}
#: The files of the agent ramdisk, as ``conductor ramdisk build`` names them.
RAMDISK_FILES = ("agent.kernel", "agent.initramfs")


@dataclasses.dataclass(frozen=True)
class AgentBoot:
    """What the boot script of a node in its agent phase carries."""

    node: str
    #: The plain agent token: for the boot script only, never logged.
    token: str = dataclasses.field(repr=False)


def agent_boot(session: Session, mac: str) -> AgentBoot | None:
    """The agent the machine with NIC ``mac`` should boot, or None: boot its local disk.

    :raises InvalidInput: ``mac`` is not a (unicast) MAC address.
    """
    address = macs.normalise(mac, "mac")
    node = session.scalars(
        sa.select(Node).join(Port, Port.node_id == Node.id).where(Port.address == address)
    ).one_or_none()
    if node is None or node.provision_state not in AGENT_PHASE_STATES:
        return None
    if not boots_from_network(node.driver, node.driver_info or {}):
        return None  # its agent boots from virtual media, with the token in its ISO: never by MAC
    try:
        token = protocol.boot_token(session, node)
    except SecretUnreadable:
        # The key that sealed it is gone (lost, or rotated out during the
        # wait): the machine boots its disk and the wait times out.
        LOG.error("Node %s: its agent token cannot be unsealed with this host's secret key; "
                  "MAC %s boots its local disk", node.uuid, address)
        return None
    if token is None:
        return None
    LOG.info("Node %s: MAC %s is given the agent boot script (%s)", node.uuid, address, node.provision_state)
    return AgentBoot(node=node.uuid, token=token)


def ramdisk_file(settings: Settings, name: str) -> Path:
    """The path of boot file ``name`` of the agent ramdisk.

    :raises NotFound: ``name`` is not a ramdisk file, or it is not built.
    """
    if name not in RAMDISK_FILES:
        raise NotFound(f"There is no boot file {name!r}; the boot files are {', '.join(RAMDISK_FILES)}.")
    path = settings.ramdisk_path / name
    if not path.is_file():
        LOG.warning("Boot file %s was asked for but %s does not exist: run `conductor ramdisk build`", name, path)
        # (The path stays in the log: the endpoint is public.)
        raise NotFound(f"The boot file {name} is not built on the conductor: run `conductor ramdisk build` "
                       "(it writes into the setting ramdisk_dir, default <data dir>/ramdisk).")
    return path
