"""The ``redfish-virtual-media`` boot interface: boot the agent from an ISO the BMC fetches, no DHCP.

A ``redfish`` node with ``driver_info.boot_interface: redfish-virtual-media``
runs the ``pxe`` deploy interface's workflows (:data:`conductor.drivers.pxe.FLOWS`)
with each agent phase booting the agent this way instead of from the network:

1. issue the agent token and command (:mod:`conductor.core.agent`), committed
   before anything can hand the token out (as ``pxe``);
2. build the node's ISO (:func:`conductor.ramdisk.iso.build_iso`: the agent
   ramdisk with ``agent_kernel_params`` and the agent's arguments, API URL
   ``agent_url``, node, token, baked in) at ``<data dir>/vmedia/<uuid>.iso``,
   mode 0600; write the simulated agent's boot config (as ``pxe`` does).
   The ISO is always the hybrid one, BIOS (isolinux) and UEFI (GRUB) El
   Torito images side by side, so it boots whichever way the machine's
   firmware does (see docs/redfish.md for why not the reported mode);
3. insert it into the BMC's virtual CD drive (``Image`` = a per-node
   signed URL, ``GET /v1/boot/media/<ticket>``, ``Inserted``,
   ``WriteProtected``); the URL needs no bearer token, expires with the
   phase's timeout, and is refused as soon as the phase is over;
4. boot device ``cdrom`` (one time), power on, wait for the agent's result.

When the phase ends the token is revoked, which deletes the ISO (its URL
is refused from then on), and the media is ejected: by the phase itself on
success and on a failed step; after an abort or the watchdog's timeout
(which run outside any step) the node keeps ``vmedia_inserted`` and the
power state sync ejects it (:func:`eject_pending`), as does the next phase
before it inserts its own ISO.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from conductor import bootfiles
from conductor.core import agent as protocol
from conductor.drivers import base, pxe
from conductor.exceptions import DriverError
from conductor.fsm.states import PowerState as P
from conductor.images import tickets
from conductor.ramdisk import iso

if TYPE_CHECKING:
    from conductor.engine.task import Task

#: The ``driver_info`` value choosing this boot interface.
NAME = "redfish-virtual-media"
#: How long a media URL outlives the phase's agent timeout (the BMC may still be reading).
URL_MARGIN = 300.0


def _media(task: Task) -> Any:
    """The redfish driver module, whose ``call`` reaches the node's BMC."""
    # Imported here: conductor.drivers.redfish builds its driver with this module's interface.
    from conductor.drivers import redfish

    return redfish


def media_url(task: Task, ticket: str) -> str:
    """The URL the BMC fetches the ISO from."""
    base_url = task.settings.virtual_media_url or task.settings.agent_url
    return base_url.rstrip("/") + "/v1/boot/media/" + ticket


def _eject(task: Task) -> None:
    """Eject the node's virtual CD (:raises TryLater, BMCError:)."""
    redfish = _media(task)
    redfish.call(task.ctx, task.node.driver_info, lambda client: client.eject_media(), command=True, holder=task)
    task.update_internal_info(**{protocol.MEDIA_INSERTED: None})


def _eject_quietly(task: Task, why: str) -> None:
    """Eject after a failed step; a BMC that cannot be told now leaves it to the power state sync."""
    try:
        _eject(task)
    except (base.TryLater, DriverError) as exc:
        task.record("vmedia.eject_failed", f"Could not eject the virtual media after {why} ({exc}); "
                    "the power state sync will.", severity="warning")


def eject_pending(task: Any) -> None:
    """Eject media an aborted or timed-out phase left inserted (power state sync; no request runs).

    Never raises: a BMC that does not answer now is asked at the next round.
    """
    info = task.node.driver_internal_info or {}
    if not info.get(protocol.MEDIA_INSERTED) or protocol.issued(info):
        return
    redfish = _media(task)
    try:
        redfish.call(task.ctx, task.node.driver_info, lambda client: client.eject_media(), command=True,
                     holder=task)
    except (base.TryLater, DriverError):
        return
    task.update_internal_info(**{protocol.MEDIA_INSERTED: None})


def _agent(name: str) -> Callable[[Task, dict[str, Any]], base.StepResult | None]:
    def phase(task: Task, progress: dict[str, Any]) -> base.StepResult | None:
        timeout = float(getattr(task.settings, protocol.COMMANDS[name]))
        if "command_id" not in progress:
            try:
                return _boot_agent(task, name, progress, timeout)
            except DriverError:
                protocol.revoke(task.settings, task.node)
                if progress.get("inserted"):
                    _eject_quietly(task, "a failed step")
                raise
        result = protocol.result(task.node)
        if result.get("id") != progress["command_id"]:
            left = max(0.0, timeout - (time.time() - float(progress["waiting_since"])))
            return base.Wait(f"agent {name}", left)
        protocol.revoke(task.settings, task.node)  # the ISO goes with the token
        if not progress.get("ejected"):
            try:
                _eject(task)
            except DriverError as exc:
                task.record("vmedia.eject_failed", f"Could not eject the virtual media ({exc}); the power "
                            "state sync will.", severity="warning")
            progress["ejected"] = True
        # The rest (result check, inventory) as pxe does: its phase sees the result and the revoked token.
        pxe_phase = pxe._agent(name)
        return pxe_phase(task, progress)

    phase.__doc__ = f"agent {name} (virtual media)"
    return phase


def _boot_agent(task: Task, name: str, progress: dict[str, Any], timeout: float) -> base.StepResult:
    node, settings = task.node, task.settings
    if "command" not in progress:
        _token, command = protocol.issue(task.session, node, name, pxe._command_params(task, name))
        progress["command"] = command["id"]
        return base.Poll(0.0, "agent token recorded")
    if not progress.get("media_built"):
        token = protocol.boot_token(task.session, node)
        if token is None:
            raise DriverError(f"The agent token of node {node.uuid} was claimed or revoked before the node "
                              "was booted; start the workflow again.")
        path = bootfiles.media_path(settings.data_dir, node.uuid)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        kernel, initramfs = settings.ramdisk_path / "agent.kernel", settings.ramdisk_path / "agent.initramfs"
        try:
            args = iso.node_kernel_args(settings.agent_url, node.uuid, token, extra=settings.agent_kernel_params)
            # Hybrid: the firmware picks its boot image (the override's reported mode need not be its own).
            built = iso.build_iso(path, kernel, initramfs, args, uefi=True)
        except (ValueError, iso.IsoError) as exc:
            raise DriverError(f"Could not build the agent ISO for virtual media: {exc}") from None
        identity = tickets.identity_of(path.stat())
        ticket = tickets.issue(settings, node.uuid, path, timeout + URL_MARGIN, identity,
                               purpose=tickets.MEDIA_PURPOSE)
        task.update_internal_info(**{protocol.MEDIA: {"path": str(path), "ticket": tickets.digest(ticket)}})
        # The simulated agent's stand-in for the ISO's kernel arguments (it reads it only once
        # its BMC has fetched the inserted media; conductor/bmcsim/agent.py).
        bootfiles.write(settings.pxe_dir, bootfiles.key_for(node.driver_info or {}, node.uuid),
                        {"api_url": settings.agent_url, "node": node.uuid, "token": token})
        progress.update(media_built=True, url=media_url(task, ticket), iso_bytes=built.image.size)
        task.record("vmedia.built", f"Built the agent ISO for {name} (BIOS and UEFI, {built.image.size} bytes, "
                    f"{built.seconds:.2f} s).")
        # Commit the ISO's record before the BMC is given its URL: the URL is honoured only
        # while the node's record names that ISO (a BMC fetches it at once, on insert).
        return base.Poll(0.0, "agent ISO built")
    redfish = _media(task)
    if not progress.get("inserted"):
        info = node.driver_internal_info or {}
        if info.get(protocol.MEDIA_INSERTED) and not progress.get("pre_ejected"):
            _eject(task)  # what an aborted phase left behind
            progress["pre_ejected"] = True
        url = str(progress["url"])
        try:
            redfish.call(task.ctx, node.driver_info, lambda client: client.insert_media(url), command=True,
                         holder=task)
        except DriverError as exc:
            # The message names the URL: its ticket is a credential of sorts; keep it out of last_error.
            raise DriverError(str(exc).replace(url, "<media URL>")) from None
        progress["inserted"] = True
        task.update_internal_info(**{protocol.MEDIA_INSERTED: True})
        # Commit the mark before anything else can fail: whoever ends the phase knows to eject.
        return base.Poll(0.0, "virtual media inserted")
    if not progress.get("cd_set"):
        pxe._management(task).set_boot_device(task, "cdrom", persistent=False)
        progress["cd_set"] = True
    task.driver.power.set_power_state(task, P.POWER_ON)
    progress.update(command_id=progress["command"], waiting_since=time.time())
    task.record("agent.command",
                f"Booting the agent from virtual media for {name} (command {progress['command']}); "
                f"waiting up to {timeout:g} s for its call-back.")
    return base.Wait(f"agent {name}", timeout)


FLOWS: dict[str, tuple[pxe.Phase, ...]] = {
    flow: tuple(_agent((p.__doc__ or "").split()[1]) if (p.__doc__ or "").startswith("agent ") else p
                for p in phases)
    for flow, phases in pxe.FLOWS.items()
}


class VirtualMediaDeploy(pxe.PXEDeploy):
    """Deploy, clean and inspect through an agent booted from virtual media (Redfish)."""

    network_boot = False

    def validate(self, driver_info: Mapping[str, Any]) -> dict[str, str]:
        if driver_info.get(base.BOOT_INTERFACE_KEY) == NAME:
            return validate_choice(driver_info)
        return {}

    def deploy(self, task: Task) -> base.StepResult:
        return pxe.run_flow(task, "deploy", FLOWS)

    def tear_down(self, task: Task) -> base.StepResult:
        return pxe.run_flow(task, "tear_down", FLOWS)

    def clean(self, task: Task) -> base.StepResult:
        return pxe.run_flow(task, "clean", FLOWS)

    def inspect(self, task: Task) -> base.StepResult:
        return pxe.run_flow(task, "inspect", FLOWS)


def validate_choice(driver_info: Mapping[str, Any]) -> dict[str, str]:
    """Errors of choosing this boot interface with ``driver_info`` (its deploy interface must be pxe)."""
    chosen = driver_info.get(base.DEPLOY_INTERFACE_KEY)
    if chosen not in (None, "pxe"):
        return {base.BOOT_INTERFACE_KEY: f"{NAME} boots the agent of the pxe deploy interface, "
                                         f"not of deploy_interface {chosen}"}
    return {}

