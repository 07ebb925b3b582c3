"""What is done to a node through Ironic's API: states, power, provisioning, maintenance,
boot device, validation, history.

A state change is accepted the way ``/v1`` accepts it (conductor/service/submit.py:
one transition per node, identical requests given back, queue-depth and
rate admission, webhooks) and answered as Ironic answers: 202 without a
body, ``Location`` the node's states; the request it was accepted as is
named in ``X-Conductor-Request-Id`` (and ``X-OpenStack-Request-Id``), to
poll at ``/v1/requests/<id>`` if wanted.  A node with a transition in
progress answers 409, as a locked node does in Ironic.
"""

from __future__ import annotations

from typing import Any

from flask import Response, request

from conductor.api import admission
from conductor.api.common import context, session
from conductor.api.ironic import mapping, representation, versions
from conductor.api.ironic.common import accepted, arg_limit, blp, body_object, boolean, empty, json_body, next_url
from conductor.api.ironic.nodes import find
from conductor.exceptions import InvalidInput, NotFound, TransitionInProgress
from conductor.fsm import machine
from conductor.fsm.states import PowerState, ProvisionTarget
from conductor.service import history, nodes, submit
from conductor.service.params import BOOT_DEVICES


@blp.get("/v1/nodes/<ident>/states")
def node_states(ident: str) -> Response:
    """The node's power and provision states and targets, and its last error."""
    if not nodes.looks_like_uuid(ident):
        versions.require(versions.NODE_NAME, "naming a node by its name")
    # The polling path: one narrow query on a plain connection, as /v1's.
    with context().db.engine.connect() as conn:
        return json_body(200, representation.node_states(nodes.states(conn, ident)))


#: Ironic's power targets that we have.
_POWER_TARGETS = {str(t): t for t in (PowerState.POWER_ON, PowerState.POWER_OFF, PowerState.REBOOTING,
                                      PowerState.SOFT_POWER_OFF)}


@blp.put("/v1/nodes/<ident>/states/power")
def set_power_state(ident: str) -> Response:
    """Power on, off (soft: 1.27), reboot."""
    body = body_object()
    target = body.get("target")
    if target in ("soft power off", "soft rebooting") or body.get("timeout") is not None:
        versions.require(versions.SOFT_POWER_OFF, "soft power actions and timeouts")
    node = find(session(), ident)
    if body.get("timeout") is not None:
        raise InvalidInput("A per-request power timeout is not supported by this conductor (its setting "
                           "power_timeout applies).", errors={"timeout": "not supported"})
    if target not in _POWER_TARGETS:
        raise InvalidInput(
            f'The requested action "{target}" can not be performed on node "{node.uuid}" while it is in state '
            f'"{node.power_state}" (power targets here: {", ".join(_POWER_TARGETS)}).',
            errors={"target": "unknown power target"},
        )
    submitted = submit.submit_power(context(), node.uuid, _POWER_TARGETS[target], client=admission.client(),
                                    idempotency_key=admission.idempotency_key())
    return accepted(ident, submitted.request.id)


#: Provision arguments of Ironic's we take (others are refused, naming them).
_PROVISION_ARGS = frozenset({"target", "configdrive", "clean_steps", "deploy_steps", "disable_ramdisk",
                             "rescue_password", "service_steps", "runbook"})


def _provision_params(verb: str, goal: ProvisionTarget, body: dict[str, Any], instance_info: dict[str, Any],
                      node_uuid: str) -> dict[str, Any]:
    """Our provision parameters for Ironic's request ``body`` (``verb`` -> ``goal``)."""
    unknown = sorted(set(body) - _PROVISION_ARGS)
    if unknown:
        raise InvalidInput(f"Unknown provision argument(s): {', '.join(unknown)}.",
                           errors=dict.fromkeys(unknown, "unknown"))
    # (Ironic's messages; rescue, service and runbooks are not here at all.)
    for name, its_verb in (("clean_steps", "clean"), ("rescue_password", "rescue"), ("service_steps", "service"),
                           ("runbook", "clean or service")):
        if body.get(name) is not None and not (name == "clean_steps" and goal == ProvisionTarget.CLEAN):
            raise InvalidInput(f'"{name}" is only valid when setting target provision state to {its_verb}',
                               errors={name: "not with this target"})
    if body.get("deploy_steps"):
        versions.require(versions.DEPLOY_STEPS, "deploy_steps")
        raise InvalidInput("Deploy steps are not supported by this conductor.", errors={"deploy_steps": "unsupported"})
    if body.get("disable_ramdisk") is not None and boolean("disable_ramdisk", body["disable_ramdisk"]):
        raise InvalidInput("Cleaning without the ramdisk is not supported by this conductor.",
                           errors={"disable_ramdisk": "unsupported"})
    mapping.check_version_for_configdrive(verb, body.get("configdrive"))
    params: dict[str, Any] = {}
    if goal in (ProvisionTarget.ACTIVE, ProvisionTarget.REBUILD):
        params.update(mapping.image_params(node_uuid, instance_info))
        if body.get("configdrive") is not None:
            params["configdrive"] = body["configdrive"]
    elif goal == ProvisionTarget.CLEAN:
        params["erase"] = mapping.erase_mode(body.get("clean_steps"))
    return params


@blp.put("/v1/nodes/<ident>/states/provision")
def set_provision_state(ident: str) -> Response:
    """Provisioning verbs: manage, provide, inspect, clean, active/deploy, rebuild, deleted/undeploy, abort."""
    body = body_object()
    node = find(session(), ident)
    verb = body.get("target")
    goal = mapping.target(verb, node.uuid, node.provision_state)
    try:
        params = _provision_params(str(verb), goal, body, dict(node.instance_info or {}), node.uuid)
    except InvalidInput:
        # As in Ironic, a busy node (409) or a state that has no such
        # action (400) is said first; what the arguments lack, after.
        if node.active_request_id is not None:
            raise TransitionInProgress(f"Node {node.uuid} has a transition in progress.",
                                       request_id=node.active_request_id) from None
        machine.target_event(node.provision_state, goal)
        raise
    submitted = submit.submit_provision(context(), node.uuid, goal, params, client=admission.client(),
                                        idempotency_key=admission.idempotency_key())
    return accepted(ident, submitted.request.id)


@blp.put("/v1/nodes/<ident>/maintenance")
def set_maintenance(ident: str) -> Response:
    """Maintenance on, with an optional ``reason`` (body or query)."""
    body = body_object()
    reason = body.get("reason", request.args.get("reason"))
    db = session()
    nodes.patch(db, find(db, ident).uuid, {"maintenance": True, "maintenance_reason": reason})
    return empty(202)


@blp.delete("/v1/nodes/<ident>/maintenance")
def clear_maintenance(ident: str) -> Response:
    """Maintenance off (the reason goes with it)."""
    db = session()
    nodes.patch(db, find(db, ident).uuid, {"maintenance": False})
    return empty(202)


@blp.get("/v1/nodes/<ident>/management/boot_device")
def get_boot_device(ident: str) -> Response:
    """The boot device the conductor last set or read (not a live read of the BMC)."""
    db = session()
    record = nodes.boot_device(db, find(db, ident).uuid)
    return json_body(200, {"boot_device": record["boot_device"], "persistent": record["persistent"]})


@blp.put("/v1/nodes/<ident>/management/boot_device")
def set_boot_device(ident: str) -> Response:
    """Set the boot device: accepted as a request (202), where Ironic answers 204 when done."""
    body = body_object()
    node = find(session(), ident)
    device = body.get("boot_device")
    if device not in BOOT_DEVICES:
        raise InvalidInput(f"Invalid boot device {device}, supported boot devices are: {', '.join(BOOT_DEVICES)}.",
                           errors={"boot_device": "unsupported"})
    persistent = boolean("persistent", body.get("persistent", request.args.get("persistent", False)))
    submitted = submit.submit_boot_device(context(), node.uuid, str(device), persistent, client=admission.client(),
                                          idempotency_key=admission.idempotency_key())
    return accepted(ident, submitted.request.id)


@blp.get("/v1/nodes/<ident>/management/boot_device/supported")
def supported_boot_devices(ident: str) -> Response:
    """The boot devices that may be set."""
    find(session(), ident)
    return json_body(200, {"supported_boot_devices": list(BOOT_DEVICES)})


def _result(errors: dict[str, str]) -> dict[str, Any]:
    if not errors:
        return {"result": True}
    return {"result": False, "reason": "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))}


@blp.get("/v1/nodes/<ident>/validate")
def validate(ident: str) -> Response:
    """Each interface's validation (without touching the hardware): driver_info, and the deploy's image."""
    db = session()
    node = find(db, ident)
    driver = _result(nodes.driver_errors(node))
    deploy = dict(driver)
    if driver["result"] and not (node.instance_info or {}).get("image_source"):
        deploy = {"result": False, "reason": f"Node {node.uuid} is missing instance_info.image_source."}
    unsupported = {"result": None, "reason": "not supported"}
    return json_body(200, {
        "bios": unsupported, "boot": driver, "console": unsupported, "deploy": deploy, "inspect": driver,
        "management": driver, "network": {"result": True}, "power": driver, "raid": unsupported,
        "rescue": unsupported, "storage": {"result": True},
    })


@blp.get("/v1/nodes/<ident>/history")
def node_history(ident: str) -> Response:
    """The node's history, oldest first (1.78): our history entries, each with a UUID made of its id."""
    versions.require_endpoint(versions.NODE_HISTORY)
    db = session()
    node = find(db, ident)
    detail = boolean("detail", request.args.get("detail", False))
    marker = request.args.get("marker")
    after = representation.history_id(marker) if marker else None
    if marker and after is None:
        raise InvalidInput(f"Expected a UUID but received {marker}.", errors={"marker": "a UUID"})
    limit = arg_limit()
    entries = history.list_entries_oldest_first(db, node, limit, after)
    body: dict[str, Any] = {"history": [representation.history(node.uuid, e, detail) for e in entries]}
    last = representation.history_uuid(entries[-1].id) if entries else None
    following = next_url(f"nodes/{ident}/history", len(entries), limit, last, ("detail",))
    if following:
        body["next"] = following
    return json_body(200, body)


@blp.get("/v1/nodes/<ident>/history/<event>")
def node_history_entry(ident: str, event: str) -> Response:
    """One entry of the node's history, with every field."""
    versions.require_endpoint(versions.NODE_HISTORY)
    db = session()
    node = find(db, ident)
    entry_id = representation.history_id(event)
    entry = history.get_entry(db, node, entry_id) if entry_id is not None else None
    if entry is None:
        raise NotFound(f"Node history record {event} could not be found.")
    return json_body(200, representation.history(node.uuid, entry, True))
