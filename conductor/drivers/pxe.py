"""The ``pxe`` deploy interface: network-boot an agent and let it do the work.

Every workflow is a list of phases run as continuations (a job never
sleeps: power changes are polled with ``Poll``, the agent is waited for
with ``Wait``, holding no worker)::

    deploy     prepare image -> power off -> agent "write_image" -> boot device disk (persistent)
               -> power off -> power on                       (reboot into the image)
    clean      power off -> agent "erase_disks" -> power off
    inspect    power off -> agent "inspect"     -> power off  (inventory -> properties)
    tear_down  power off

An agent phase issues a new agent token and command through the agent
protocol (:mod:`conductor.core.agent`: the token's SHA-256, and the token
sealed until the agent claims it, for the iPXE boot script of
``GET /v1/boot/<mac>``), writes the node's boot config for the simulated
agent (API URL, node, token; see :mod:`conductor.bootfiles`),
sets the boot device to ``pxe`` (one time) and powers the node on, then
waits (``wait call-back``, ``clean wait`` or ``inspect wait``).  The agent's
heartbeat (:mod:`conductor.service.agent`) hands it the command and, when it
reports the result, wakes the request; the phase then checks the result.
The wait's timeout is ``deploy_agent_timeout`` (``clean_``,
``inspect_``): the watchdog fails the node when it passes.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from conductor import bootfiles
from conductor.core import agent as protocol
from conductor.core import inventory
from conductor.drivers import base
from conductor.exceptions import DriverError
from conductor.fsm.states import PowerState as P
from conductor.images import flight, sources
from conductor.models import Port

if TYPE_CHECKING:
    from conductor.engine.task import Task


def _power(want: P) -> Callable[[Task, dict[str, Any]], base.StepResult | None]:
    def phase(task: Task, progress: dict[str, Any]) -> base.StepResult | None:
        return task.reach_power(want, progress)

    phase.__doc__ = f"power {'on' if want == P.POWER_ON else 'off'}"
    return phase


def _boot_disk(task: Task, progress: dict[str, Any]) -> None:
    """boot device disk (persistent)"""
    _management(task).set_boot_device(task, "disk", persistent=True)
    return None


def _management(task: Task) -> base.ManagementInterface:
    if task.driver.management is None:
        raise DriverError(f"Driver {task.driver.name} cannot set a boot device; pxe needs it.")
    return task.driver.management


def _agent(name: str) -> Callable[[Task, dict[str, Any]], base.StepResult | None]:
    def phase(task: Task, progress: dict[str, Any]) -> base.StepResult | None:
        timeout = float(getattr(task.settings, protocol.COMMANDS[name]))
        if "command_id" not in progress:
            return _boot_agent(task, name, progress, timeout)
        result = protocol.result(task.node)
        if result.get("id") != progress["command_id"]:
            # Woken without this command's result (should not happen): wait on,
            # for what is left of the timeout.
            left = max(0.0, timeout - (time.time() - float(progress["waiting_since"])))
            return base.Wait(f"agent {name}", left)
        protocol.revoke(task.settings, task.node)
        if result.get("status") != "succeeded":
            raise DriverError(f"The agent failed to {name.replace('_', ' ')}: "
                              f"{_masked(task, str(result.get('error') or 'no reason given'))}")
        if name == "inspect":
            inventory.record(task.session, task.node, result.get("inventory") or {}, task.request, task.conductor)
        return None

    phase.__doc__ = f"agent {name}"
    return phase


def _masked(task: Task, error: str) -> str:
    """The agent's ``error`` without the query string of the request's image URL.

    With the cache off the agent downloads a remote image itself, and its
    error names the URL it was given: a pre-signed URL's signature must not
    reach ``last_error``.
    """
    source = str((task.request.params or {}).get("image_source") or "")
    query = urllib.parse.urlsplit(source).query if "://" in source else ""
    return error.replace(query, "******") if query else error


def _boot_agent(task: Task, name: str, progress: dict[str, Any], timeout: float) -> base.StepResult:
    # Each BMC command is marked done in ``progress`` as soon as it is sent:
    # a paced or busy BMC (TryLater) ends the step and the retry resumes
    # after the last command sent, never sending one twice.
    node, settings = task.node, task.settings
    if "command" not in progress:
        _token, command = protocol.issue(task.session, node, name, _command_params(task, name))
        progress["command"] = command["id"]
        # Commit the token before anything can hand it to an agent: one that
        # called before this step's commit would get 401, and a step run
        # again (a database error) issues another token.
        return base.Poll(0.0, "agent token recorded")
    if not progress.get("boot_config"):
        # The token committed by the previous step (sealed at rest).
        token = protocol.boot_token(task.session, node)
        if token is None:
            raise DriverError(f"The agent token of node {node.uuid} was claimed or revoked before the node "
                              "was booted; start the workflow again.")
        bootfiles.write(settings.pxe_dir, bootfiles.key_for(node.driver_info or {}, node.uuid),
                        {"api_url": settings.agent_url, "node": node.uuid, "token": token})
        progress["boot_config"] = True
    if not progress.get("pxe_set"):
        _management(task).set_boot_device(task, "pxe", persistent=False)
        progress["pxe_set"] = True
    task.driver.power.set_power_state(task, P.POWER_ON)
    progress.update(command_id=progress["command"], waiting_since=time.time())
    task.record("agent.command",
                f"Booting the agent from the network for {name} (command {progress['command']}); "
                f"waiting up to {timeout:g} s for its call-back.")
    if not task.session.scalar(sa.select(sa.exists().where(Port.node_id == node.id))):
        # Network boot finds a machine by its MAC: without a port, DHCP ignores
        # it and GET /v1/boot/<mac> boots its disk (only a simulated agent,
        # which reads its boot config by BMC address, gets through).
        task.record("agent.no_ports",
                    "The node has no ports: a real machine cannot find its boot script; register its NICs' "
                    "MACs (conductor port create) or this phase times out.", severity="warning")
    return base.Wait(f"agent {name}", timeout)


# --- images --------------------------------------------------------------------------
#: Longest pause between two looks at an image being prepared.
IMAGE_POLL_MAX = 5.0


def _prepare_image(task: Task, progress: dict[str, Any]) -> base.StepResult | None:
    """prepare image"""
    # Before the node is touched: an image that cannot be had fails the
    # deploy with the node as it was.  A download or checksum runs in the
    # background (conductor/images/flight.py); the step polls it.
    params = task.request.params or {}
    since = progress.setdefault("since", time.time())
    prepared = sources.prepare(task.settings, task.session, params["image_source"], params.get("image_checksum"),
                               node=task.node.uuid, owner=task.request.id, since=since)
    if isinstance(prepared, flight.Running):
        limit = float(task.settings.image_prepare_timeout)
        if time.time() - float(since) > limit:
            # A source that trickles bytes never trips image_download_timeout,
            # and a hung file system never ends a checksum: without a bound the
            # deploy would poll for ever, and a deploy in progress cannot be aborted.
            raise DriverError(f"The image {sources.shown(params['image_source'])} was not ready after "
                              f"{limit:g} s (image_prepare_timeout; {prepared.detail}); the deploy failed.")
        polls = progress["polls"] = int(progress.get("polls", 0)) + 1
        task.request.step = f"{task.request.step}: {prepared.detail}"[:64]
        return base.Poll(min(IMAGE_POLL_MAX, 0.25 * 2 ** min(polls, 5)), prepared.detail)
    task.progress["image"] = prepared
    return None


def _command_params(task: Task, name: str) -> dict[str, Any]:
    """The params of agent command ``name``: the request's, with what the conductor adds.

    ``write_image``: the prepared image (the URL the agent downloads from,
    checksum, compression, decompressed size) and the node's root device
    hints; ``erase_disks``: ``erase`` from the request, else the setting
    ``clean_erase``.  :data:`conductor.core.agent.COMMAND_PARAMS` keeps
    only what the command takes.
    """
    params = dict(task.request.params or {})
    if name == "write_image":
        if "image" not in task.progress:
            # Never hand the agent the request's own image_source: only a prepared image is verified.
            raise DriverError("The image was not prepared for this deploy (internal error); deploy again.")
        params.update(task.progress["image"])
        hints = (task.node.properties or {}).get("root_device")
        if hints:
            params["root_device"] = hints
    elif name == "erase_disks":
        params["erase"] = params.get("erase") or task.settings.clean_erase
    return params


Phase = Callable[["Task", dict[str, Any]], "base.StepResult | None"]
FLOWS: dict[str, tuple[Phase, ...]] = {
    "deploy": (_prepare_image, _power(P.POWER_OFF), _agent("write_image"), _boot_disk, _power(P.POWER_OFF),
               _power(P.POWER_ON)),
    "clean": (_power(P.POWER_OFF), _agent("erase_disks"), _power(P.POWER_OFF)),
    "inspect": (_power(P.POWER_OFF), _agent("inspect"), _power(P.POWER_OFF)),
    "tear_down": (_power(P.POWER_OFF),),
}


def run_flow(task: Task, flow: str, flows: dict[str, tuple[Phase, ...]] | None = None) -> base.StepResult:
    """Run ``(flows or FLOWS)[flow]`` from where the task's progress says, as far as it goes now.

    Each phase starts with a history entry (``deploy.step``) and shows in the
    request's ``step``.
    """
    phases = (flows or FLOWS)[flow]
    progress = task.progress
    while (index := int(progress.get("phase", 0))) < len(phases):
        phase = phases[index]
        label = f"{flow} {index + 1}/{len(phases)}: {phase.__doc__}"
        task.request.step = label[:64]
        if not progress.get(f"started{index}"):
            progress[f"started{index}"] = time.time()
            task.record("deploy.step", f"Step {label}.")
        result = phase(task, progress.setdefault(f"p{index}", {}))
        if result is not None:
            return result
        progress["phase"] = index + 1
    return base.DONE


class PXEDeploy(base.DeployInterface):
    """Deploy, clean and inspect through an agent booted from the network."""

    #: Whether the agent boots from the network (DHCP host entries, ``GET /v1/boot/<mac>``).
    network_boot = True

    def deploy(self, task: Task) -> base.StepResult:
        return run_flow(task, "deploy")

    def tear_down(self, task: Task) -> base.StepResult:
        return run_flow(task, "tear_down")

    def clean(self, task: Task) -> base.StepResult:
        return run_flow(task, "clean")

    def inspect(self, task: Task) -> base.StepResult:
        return run_flow(task, "inspect")
