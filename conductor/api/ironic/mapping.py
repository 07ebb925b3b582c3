"""Ironic's names for our things, and ours for Ironic's.

Provision and power states need no mapping: ours are Ironic's (see
conductor/fsm/states.py); only versions before 1.2 and 1.39 named two of
them differently.  Drivers, provision verbs, clean steps, interfaces and
where a deploy finds its image do.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from conductor import drivers
from conductor.api.ironic import versions
from conductor.drivers.base import AGENT_INSPECTION, DEPLOY_INTERFACE_KEY, INSPECT_INTERFACE_KEY
from conductor.exceptions import InvalidInput, InvalidTransition
from conductor.fsm.states import ProvisionState, ProvisionTarget

#: Ironic hardware type -> our driver (those of our drivers that are loaded are served).
HARDWARE_TYPES: Mapping[str, str] = {"fake-hardware": "fake", "ipmi": "ipmi", "redfish": "redfish"}


def hardware_types() -> dict[str, str]:
    """The hardware types served: Ironic name -> our driver name."""
    return {ironic: ours for ironic, ours in HARDWARE_TYPES.items() if ours in drivers.DRIVERS}


def driver_to_ours(name: Any) -> str:
    """Our driver for Ironic hardware type ``name``.

    :raises InvalidInput: no such hardware type is served.
    """
    served = hardware_types()
    if name not in served:
        raise InvalidInput(
            f"No valid host was found. Reason: No conductor service registered which supports driver {name}; "
            f"drivers served: {', '.join(sorted(served))}.",
            errors={"driver": f"one of {sorted(served)}"},
        )
    return served[name]


def driver_to_ironic(ours: str) -> str:
    """The Ironic hardware type name of our driver ``ours``."""
    for ironic, mine in HARDWARE_TYPES.items():
        if mine == ours:
            return ironic
    return ours


#: Ironic's interface types, in its order.
INTERFACE_TYPES = ("bios", "boot", "console", "deploy", "inspect", "management", "network", "power", "raid",
                   "rescue", "storage", "vendor")
#: Interfaces we do not have, by Ironic's name for "none".
_ABSENT = {"bios": "no-bios", "console": "no-console", "network": "noop", "raid": "no-raid", "rescue": "no-rescue",
           "storage": "noop", "vendor": "no-vendor"}
#: Our drivers' power and management interfaces by Ironic's names.
_HARDWARE = {"fake": "fake", "ipmi": "ipmitool", "redfish": "redfish"}


#: The node fields choosing one of a driver's interfaces, and the ``driver_info`` key each is kept in.
CHOSEN_INTERFACES: Mapping[str, str] = {"deploy_interface": DEPLOY_INTERFACE_KEY,
                                        "inspect_interface": INSPECT_INTERFACE_KEY}


def deploy_name(driver: str, driver_info: Mapping[str, Any]) -> str:
    """The name of the deploy interface a node of ``driver`` uses."""
    chosen = driver_info.get(DEPLOY_INTERFACE_KEY)
    return str(chosen) if chosen else drivers.get(driver).default_deploy_name()


def _boot_of(deploy: str) -> str:
    # The fake deploy fakes its boot; the others boot our agent by iPXE.
    return "fake" if deploy == "fake" else "ipxe"


def _inspect_of(deploy: str) -> str:
    # A deploy interface's own inspection: faked, or its agent's.
    return "fake" if deploy == "fake" else AGENT_INSPECTION


def inspect_name(driver: str, driver_info: Mapping[str, Any]) -> str:
    """The name of what inspects a node of ``driver``: its inspect interface, else its deploy interface's agent."""
    loaded = drivers.get(driver)
    chosen = driver_info.get(INSPECT_INTERFACE_KEY) or next(iter(loaded.inspect_interfaces), None)
    if chosen is None or chosen == AGENT_INSPECTION:
        return _inspect_of(deploy_name(driver, driver_info))
    return str(chosen)


def interfaces(driver: str, driver_info: Mapping[str, Any]) -> dict[str, str]:
    """A node's ``<type>_interface`` fields, by Ironic's interface names."""
    return dict(_chosen_interfaces(driver, driver_info.get(DEPLOY_INTERFACE_KEY),
                                   driver_info.get(INSPECT_INTERFACE_KEY)))


@functools.cache
def _chosen_interfaces(driver: str, deploy: Any, inspect: Any) -> tuple[tuple[str, str], ...]:
    # (Every node of a list asks: computed once per driver and the interfaces its node chose.)
    chosen = {key: value for key, value in ((DEPLOY_INTERFACE_KEY, deploy), (INSPECT_INTERFACE_KEY, inspect)) if value}
    return _interfaces(driver, deploy_name(driver, chosen), inspect_name(driver, chosen))


@functools.cache
def _interfaces(driver: str, deploy: str, inspect: str) -> tuple[tuple[str, str], ...]:
    # (Every node of a list asks: computed once per driver and chosen interfaces.)
    hardware = _HARDWARE.get(driver, driver)
    named = {**_ABSENT, "boot": _boot_of(deploy), "inspect": inspect, "deploy": deploy, "power": hardware,
             "management": hardware}
    return tuple((f"{kind}_interface", named[kind]) for kind in INTERFACE_TYPES)


def driver_interfaces(driver: str) -> dict[str, Any]:
    """A hardware type's ``default_<type>_interface`` and ``enabled_<type>_interfaces``."""
    loaded = drivers.get(driver)
    deploys = list(loaded.deploy_interfaces) or [loaded.default_deploy_name()]
    default = loaded.default_deploy_name()
    inspects = [_inspect_of(d) for d in deploys]
    inspects += [name for name in loaded.inspect_interfaces if name != AGENT_INSPECTION]
    hardware = _HARDWARE.get(driver, driver)
    chosen = {
        "deploy": (default, deploys),
        "boot": (_boot_of(default), sorted({_boot_of(d) for d in deploys})),
        "inspect": (inspect_name(driver, {}), sorted(set(inspects))),
        "power": (hardware, [hardware]),
        "management": (hardware, [hardware]),
    }
    fields: dict[str, Any] = {}
    for kind in INTERFACE_TYPES:
        default_name, enabled = chosen.get(kind, (_ABSENT.get(kind), [_ABSENT.get(kind)]))
        fields[f"default_{kind}_interface"] = default_name
        fields[f"enabled_{kind}_interfaces"] = enabled
    return fields


def provision_state(state: str | None, minor: int | None = None) -> str | None:
    """A provision state as version 1.``minor`` (default: the call's) names it (1.1: ``None`` for
    available; before 1.39: ``inspecting`` for inspect wait)."""
    if state not in (ProvisionState.AVAILABLE, ProvisionState.INSPECT_WAIT):
        return state
    minor = versions.minor() if minor is None else minor
    if state == ProvisionState.AVAILABLE and minor < versions.AVAILABLE_STATE:
        return None
    if state == ProvisionState.INSPECT_WAIT and minor < versions.INSPECT_WAIT:
        return str(ProvisionState.INSPECTING)
    return state


#: Ironic provision verb -> our target.
VERBS: Mapping[str, ProvisionTarget] = {
    "manage": ProvisionTarget.MANAGE,
    "provide": ProvisionTarget.PROVIDE,
    "inspect": ProvisionTarget.INSPECT,
    "clean": ProvisionTarget.CLEAN,
    "active": ProvisionTarget.ACTIVE,
    "deploy": ProvisionTarget.ACTIVE,
    "rebuild": ProvisionTarget.REBUILD,
    "deleted": ProvisionTarget.DELETED,
    "undeploy": ProvisionTarget.DELETED,
    "abort": ProvisionTarget.ABORT,
}
#: The version each verb appeared in (Ironic's MIN_VERB_VERSIONS).
VERB_VERSIONS: Mapping[str, int] = {
    "manage": versions.MANAGEABLE_STATE, "provide": versions.MANAGEABLE_STATE, "inspect": versions.INSPECT_STATE,
    "abort": versions.ABORT_VERB, "clean": versions.MANUAL_CLEAN, "adopt": 17, "rescue": versions.RESCUE_INTERFACE,
    "unrescue": versions.RESCUE_INTERFACE, "deploy": versions.DEPLOY_UNDEPLOY_VERBS,
    "undeploy": versions.DEPLOY_UNDEPLOY_VERBS,
}
#: Verbs Ironic has and we do not (no adoption, rescue, hold or servicing here).
UNSUPPORTED_VERBS = frozenset({"adopt", "rescue", "unrescue", "unhold", "service"})


def target(verb: Any, node_uuid: str, state: str) -> ProvisionTarget:
    """Our provision target for Ironic's ``verb``.

    :raises NotAcceptable: the verb is newer than the call's version (or, for ``abort`` in
        ``inspect wait``, before 1.41).
    :raises InvalidTransition: a verb we do not have (Ironic's 400 for an action it cannot take).
    """
    if not isinstance(verb, str):
        raise InvalidInput("target must be a string.", errors={"target": "a string"})
    wanted = VERB_VERSIONS.get(verb)
    if wanted is not None:
        versions.require(wanted, f"the provision action {verb!r}")
    if verb == "abort" and state == ProvisionState.INSPECT_WAIT:
        versions.require(versions.INSPECT_ABORT, "aborting an inspection")
    if verb in VERBS:
        return VERBS[verb]
    reason = " (not supported by this conductor)" if verb in UNSUPPORTED_VERBS else ""
    raise InvalidTransition(
        f'The requested action "{verb}" can not be performed on node "{node_uuid}" while it is in state '
        f'"{state}"{reason}.',
        provision_state=state,
    )


#: Ironic's clean steps we run, and the erase mode each is.
CLEAN_STEPS: Mapping[tuple[str, str], str] = {
    ("deploy", "erase_devices"): "full",
    ("deploy", "erase_devices_metadata"): "metadata",
}


def erase_mode(clean_steps: Any) -> str:
    """The erase mode of a manual cleaning's ``clean_steps``.

    :raises InvalidInput: missing, malformed, or a step we do not have.
    """
    if not clean_steps:
        raise InvalidInput('"clean_steps" is required when setting target provision state to clean',
                           errors={"clean_steps": "required"})
    if not isinstance(clean_steps, list):
        raise InvalidInput('"clean_steps" must be a list.', errors={"clean_steps": "a list"})
    modes = set()
    for step in clean_steps:
        key = (str(step.get("interface")), str(step.get("step"))) if isinstance(step, dict) else ("", "")
        if key not in CLEAN_STEPS:
            known = ", ".join(f"{i}.{s}" for i, s in CLEAN_STEPS)
            raise InvalidInput(f"Clean step {step!r} is not supported; supported: {known}.",
                               errors={"clean_steps": "unsupported step"})
        modes.add(CLEAN_STEPS[key])
    return "full" if "full" in modes else "metadata"


def image_params(node_uuid: str, instance_info: Mapping[str, Any]) -> dict[str, Any]:
    """What a deploy of the node takes from its ``instance_info`` (Ironic keeps the image there).

    ``image_source``, and its SHA-256 from ``image_checksum`` or
    ``image_os_hash_value`` (with ``image_os_hash_algo`` sha256).

    :raises InvalidInput: no ``image_source``.
    """
    source = instance_info.get("image_source")
    if not source:
        raise InvalidInput(
            f"Cannot deploy node {node_uuid}: instance_info is missing image_source (set it with "
            f"PATCH /nodes/{node_uuid} [{{\"op\": \"add\", \"path\": \"/instance_info/image_source\", ...}}]).",
            errors={"instance_info.image_source": "required"},
        )
    params: dict[str, Any] = {"image_source": source}
    checksum = instance_info.get("image_checksum")
    if instance_info.get("image_os_hash_algo") == "sha256" and instance_info.get("image_os_hash_value"):
        checksum = instance_info["image_os_hash_value"]
    if checksum:
        params["image_checksum"] = checksum
    return params


def check_version_for_configdrive(verb: str, configdrive: Any) -> None:
    """:raises NotAcceptable: a config drive the call's version cannot send (rebuild 1.35, object 1.56)."""
    if configdrive is None:
        return
    if verb == "rebuild":
        versions.require(versions.REBUILD_CONFIGDRIVE, "a config drive with rebuild")
    if isinstance(configdrive, dict):
        versions.require(versions.CONFIGDRIVE_DICT, "a config drive given as an object")
    if verb not in ("active", "deploy", "rebuild"):
        raise InvalidInput("Config drive can only be provided with the active and rebuild targets.",
                           errors={"configdrive": "only with active, rebuild"})

