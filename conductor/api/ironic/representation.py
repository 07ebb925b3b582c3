"""Our nodes, ports, conductors and history as Ironic shows them, in the call's version.

Each representation is built whole (every field of the highest version
served) and then cut down: the fields newer than the call's version go
(Ironic's ``hide_fields_in_newer_versions``), then those not asked for
(``fields``).  Ironic fields we have no data for show the value Ironic
shows for a node that never used them (:data:`NODE_CONSTANTS`):
``console_enabled`` false, no traits, no RAID configuration, no owner...
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid as uuidlib
from collections.abc import Mapping
from typing import Any

from conductor.api.ironic import mapping, versions
from conductor.api.ironic.common import links, public_url, url
from conductor.drivers import mask_secrets
from conductor.exceptions import InvalidInput
from conductor.models import Node, NodeHistory, Port

MASK = "******"

#: Node fields and the minor version that added each (Ironic's VERSIONED_FIELDS).
NODE_FIELD_VERSIONS: Mapping[str, int] = {
    "driver_internal_info": 3, "name": 5, "inspection_finished_at": 6, "inspection_started_at": 6,
    "clean_step": 7, "raid_config": 12, "target_raid_config": 12, "network_interface": 20, "resource_class": 21,
    "storage_interface": 33, "traits": 37, "rescue_interface": 38, "bios_interface": 40, "fault": 42,
    "deploy_step": 44, "conductor_group": 46, "automated_clean": 47, "protected": 48, "protected_reason": 48,
    "conductor": 49, "owner": 50, "description": 51, "allocation_uuid": 52, "retired": 61, "retired_reason": 61,
    "lessee": 65, "network_data": 66, "boot_mode": 75, "secure_boot": 75,
    **dict.fromkeys(("boot_interface", "console_interface", "deploy_interface", "inspect_interface",
                     "management_interface", "power_interface", "raid_interface", "vendor_interface"),
                    versions.DYNAMIC_INTERFACES),
}
#: Ironic's node fields we keep no data for, with the value a node that never used them shows.
NODE_CONSTANTS: Mapping[str, Any] = {
    "console_enabled": False, "driver_internal_info": {}, "clean_step": {}, "deploy_step": {}, "raid_config": {},
    "target_raid_config": {}, "inspection_started_at": None, "inspection_finished_at": None,
    "provision_updated_at": None, "chassis_uuid": None, "conductor_group": "", "allocation_uuid": None,
    "automated_clean": None, "protected": False, "protected_reason": None, "owner": None, "lessee": None,
    "retired": False, "retired_reason": None, "network_data": {}, "boot_mode": None, "secure_boot": None,
    "traits": [],
}
#: What ``GET /nodes`` shows without ``fields`` or ``detail``.
NODE_LIST_FIELDS = ("instance_uuid", "maintenance", "power_state", "provision_state", "uuid", "name")


def timestamp(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def node_allowed(field: str) -> bool:
    """Whether the call's version shows node field ``field``."""
    return versions.at_least(NODE_FIELD_VERSIONS.get(field, versions.MIN_MINOR))


@functools.cache
def hidden_node_fields(minor: int) -> frozenset[str]:
    """The node fields version 1.``minor`` does not show."""
    return frozenset(field for field, added in NODE_FIELD_VERSIONS.items() if minor < added)


#: Parts of an ``instance_info`` key that make its value a secret (as Ironic masks them).
INSTANCE_SECRET_WORDS = ("password", "admin_pass", "new_pass", "secret", "token", "private_key", "encryption_key",
                         "pswd")


def secret_instance_key(key: str) -> bool:
    """Whether ``instance_info[key]`` is shown as ``******``."""
    lowered = key.lower()
    return any(word in lowered for word in INSTANCE_SECRET_WORDS) or lowered in ("configdrive", "image_url")


def mask_instance_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """``instance_info`` as Ironic shows it: passwords, the config drive and image URLs masked."""
    shown = {k: (MASK if secret_instance_key(k) and v is not None else v) for k, v in info.items()}
    for key in ("configdrive", "image_url"):
        if shown.get(key):
            shown[key] = MASK
    return shown


def node(item: Node, fields: list[str] | None = None, *, minor: int | None = None,
         base: str | None = None) -> dict[str, Any]:
    """A node as Ironic shows it in the call's version (only ``fields`` when given, and links).

    ``minor`` and ``base`` (the call's version and :func:`~.common.public_url`) may be given by
    a caller showing many nodes.
    """
    minor = versions.minor() if minor is None else minor
    base = base or public_url()
    body: dict[str, Any] = {
        "uuid": item.uuid,
        "name": item.name,
        "driver": mapping.driver_to_ironic(item.driver),
        "driver_info": mask_secrets(item.driver_info or {}),
        "properties": item.properties or {},
        "instance_uuid": item.instance_uuid,
        "instance_info": mask_instance_info(item.instance_info or {}),
        "extra": item.extra or {},
        "resource_class": item.resource_class,
        "description": item.description,
        "power_state": item.power_state,
        "target_power_state": item.target_power_state,
        "provision_state": mapping.provision_state(item.provision_state, minor),
        "target_provision_state": mapping.provision_state(item.target_provision_state, minor),
        "last_error": item.last_error,
        "maintenance": bool(item.maintenance),
        "maintenance_reason": item.maintenance_reason,
        "fault": item.fault,
        "reservation": item.reservation,
        # Any live conductor works on any node: the one named is the one working on it now.
        "conductor": item.reservation,
        "created_at": timestamp(item.created_at),
        "updated_at": timestamp(item.updated_at),
        **NODE_CONSTANTS,
        **mapping.interfaces(item.driver, item.driver_info or {}),
    }
    hidden = hidden_node_fields(minor)
    if hidden:  # (none at the newest versions, which the clients ask for)
        body = {k: v for k, v in body.items() if k not in hidden}
    if fields is not None:
        return _finish(body, fields, links("nodes", item.uuid, base))
    body["ports"] = links("nodes", f"{item.uuid}/ports", base)
    if minor >= versions.STATES_LINKS:
        body["states"] = links("nodes", f"{item.uuid}/states", base)
    body["links"] = links("nodes", item.uuid, base)
    return body


def node_states(row: Any) -> dict[str, Any]:
    """``GET /nodes/<node>/states`` from a :func:`conductor.service.nodes.states` row."""
    body: dict[str, Any] = {
        "console_enabled": False,
        "last_error": row.last_error,
        "power_state": row.power_state,
        "provision_state": mapping.provision_state(row.provision_state),
        "target_power_state": row.target_power_state,
        "target_provision_state": mapping.provision_state(row.target_provision_state),
        "provision_updated_at": None,
    }
    if versions.at_least(versions.RAID_CONFIG):
        body.update(raid_config={}, target_raid_config={})
    if versions.at_least(versions.BOOT_MODE):
        body.update(boot_mode=None, secure_boot=None)
    return body


#: Port fields (beyond the first version's) and the minor version that added each.
PORT_FIELD_VERSIONS: Mapping[str, int] = {
    "internal_info": versions.PORT_INTERNAL_INFO, "local_link_connection": versions.PORT_NET_FIELDS,
    "pxe_enabled": versions.PORT_NET_FIELDS, "portgroup_uuid": versions.PORTGROUPS,
    "physical_network": versions.PORT_PHYSICAL_NETWORK, "is_smartnic": versions.PORT_SMARTNIC,
}
#: Ironic's port fields we keep no data for, and what a port that never used them shows.
PORT_CONSTANTS: Mapping[str, Any] = {
    "extra": {}, "internal_info": {}, "local_link_connection": {}, "pxe_enabled": True, "portgroup_uuid": None,
    "physical_network": None, "is_smartnic": False,
}
PORT_LIST_FIELDS = ("uuid", "address")


def port(item: Port, fields: list[str] | None = None) -> dict[str, Any]:
    """A port as Ironic shows it in the call's version."""
    body: dict[str, Any] = {
        "uuid": item.uuid,
        "address": item.address,
        "node_uuid": item.node.uuid,
        **PORT_CONSTANTS,
        "created_at": timestamp(item.created_at),
        "updated_at": None,
    }
    body = {k: v for k, v in body.items() if versions.at_least(PORT_FIELD_VERSIONS.get(k, versions.MIN_MINOR))}
    return _finish(body, fields, links("ports", item.uuid))


def conductor(record: Mapping[str, Any], fields: list[str] | None = None) -> dict[str, Any]:
    """A conductor (a row of :func:`conductor.engine.conductors.list_conductors`) as Ironic shows it."""
    body = {
        "hostname": record["name"],
        "conductor_group": "",
        "alive": bool(record["alive"]),
        # Every conductor loads every driver.
        "drivers": sorted(mapping.hardware_types()),
        "created_at": timestamp(record["started_at"]),
        "updated_at": timestamp(record["heartbeat_at"]),
    }
    return _finish(body, fields, links("conductors", record["name"]))


CONDUCTOR_LIST_FIELDS = ("hostname", "conductor_group", "alive")


def history_uuid(entry_id: int) -> str:
    """The UUID a history entry is known by (its id, in a UUID's clothes)."""
    return str(uuidlib.UUID(int=entry_id))


def history_id(event_uuid: str) -> int | None:
    """The id of history entry ``event_uuid`` (None: not one of ours)."""
    try:
        return uuidlib.UUID(event_uuid).int
    except ValueError:
        return None


def history(node_uuid: str, entry: NodeHistory, detail: bool) -> dict[str, Any]:
    """A node history entry as Ironic shows it (1.78)."""
    body: dict[str, Any] = {
        "uuid": history_uuid(entry.id),
        "created_at": timestamp(entry.created_at),
        "severity": entry.severity.upper(),
        "event": entry.message if detail or len(entry.message) <= 255 else entry.message[:251] + "...",
    }
    if detail:
        body.update(event_type=entry.event, conductor=entry.conductor, user=None)
    body["links"] = [{"href": url("nodes", f"{node_uuid}/history/{body['uuid']}"), "rel": "self"}]
    return body


def _finish(body: dict[str, Any], fields: list[str] | None, item_links: list[dict[str, str]]) -> dict[str, Any]:
    if fields is not None:
        unknown = sorted(set(fields) - set(body))
        if unknown:
            raise InvalidInput(f'Field(s) "{", ".join(unknown)}" are not valid',
                               errors=dict.fromkeys(unknown, "unknown"))
        body = {k: v for k, v in body.items() if k in fields}
    body["links"] = item_links
    return body
