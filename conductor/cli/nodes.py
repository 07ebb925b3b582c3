"""``conductor node ...``: enrol, list, show, change, power and provision nodes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from conductor.cli import bulk
from conductor.cli.base import REQUEST_KEYS, Obj, finish_request, pass_obj, remaining, submit_change
from conductor.cli.client import ApiError, Client

NODE_COLUMNS = ["uuid", "name", "driver", "power_state", "provision_state", "maintenance", "request_id"]
NODE_KEYS = [
    "uuid", "name", "driver", "driver_info", "properties", "power_state", "target_power_state",
    "provision_state", "target_provision_state", "last_error", "maintenance", "maintenance_reason",
    "fault", "reservation", "request_id", "created_at", "updated_at",
]


def _pairs(values: tuple[str, ...], option: str) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON when they parse."""
    result: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        try:
            result[key] = json.loads(raw)
        except ValueError:
            result[key] = raw
    return result


@click.group()
def node() -> None:
    """Nodes: enrol, inspect and change them."""


@node.command("create")
@click.option("--driver", required=True, help="fake, ipmi or redfish.")
@click.option("--name", help="A unique name (not a UUID).")
@click.option("--driver-info", "-i", multiple=True, metavar="KEY=VALUE", help="A driver_info field (repeat).")
@click.option("--property", "-p", "props", multiple=True, metavar="KEY=VALUE", help="A property (repeat).")
@click.option("--port", "macs", multiple=True, metavar="MAC", help="A MAC address of the node's NICs (repeat).")
@pass_obj
def create(obj: Obj, driver: str, name: str | None, driver_info: tuple[str, ...], props: tuple[str, ...],
           macs: tuple[str, ...]) -> None:
    """Enrol a node (with its ports)."""
    body: dict[str, Any] = {
        "driver": driver,
        "name": name,
        "driver_info": _pairs(driver_info, "--driver-info"),
        "properties": _pairs(props, "--property"),
    }
    if macs:
        body["ports"] = list(macs)
    obj.out.item(obj.client.call("POST", "/v1/nodes", json=body), NODE_KEYS)


@node.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--driver", default=None,
              help="Enrol with this driver, from each entry's driver_infos (e.g. redfish; default: its driver).")
@pass_obj
def import_nodes(obj: Obj, file: Path, driver: str | None) -> None:
    """Enrol every node of an inventory file ({"nodes": [...]}); existing names are skipped.

    Each entry is a node's create body; its ``ports`` (a list of MACs) are
    created with it.  An entry may also offer ``driver_infos``
    (``{"ipmi": {...}, "redfish": {...}}``, as the simulator's inventory
    does): ``--driver`` picks one of them.
    """
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise click.ClickException(f"{file} is not JSON: {exc}") from None
    entries = data.get("nodes") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise click.ClickException(f"{file} must hold a list of nodes or {{\"nodes\": [...]}}")
    created = skipped = 0
    for given in entries:
        entry = dict(given)
        choices = entry.pop("driver_infos", None) or {}
        if driver is not None and driver != entry.get("driver"):
            if driver not in choices:
                raise click.ClickException(f"entry {entry.get('name')!r} has no driver_info for driver {driver} "
                                           f"(it offers: {', '.join(sorted(choices)) or 'none'})")
            entry.update(driver=driver, driver_info=choices[driver])
        try:
            obj.client.call("POST", "/v1/nodes", json=entry)
            created += 1
        except ApiError as exc:
            if exc.body.get("code") != "node_name_in_use":
                raise
            skipped += 1
    click.echo(f"Enrolled {created} node(s), skipped {skipped} already enrolled.", err=obj.out.machine)


@node.command("list")
@click.option("--provision-state")
@click.option("--power-state")
@click.option("--driver")
@click.option("--maintenance/--no-maintenance", default=None)
@click.option("--limit", type=int, default=None, help="At most this many (default all).")
@pass_obj
def list_nodes(obj: Obj, provision_state: str | None, power_state: str | None, driver: str | None,
               maintenance: bool | None, limit: int | None) -> None:
    """List nodes (following pages)."""
    params: dict[str, Any] = {"provision_state": provision_state, "power_state": power_state, "driver": driver}
    if maintenance is not None:
        params["maintenance"] = str(maintenance).lower()
    params = {k: v for k, v in params.items() if v is not None}
    obj.out.table(obj.client.every("/v1/nodes", "nodes", params, limit), NODE_COLUMNS)


@node.command("show")
@click.argument("node_id", metavar="NODE")
@pass_obj
def show(obj: Obj, node_id: str) -> None:
    """Show a node (UUID or name)."""
    obj.out.item(obj.client.call("GET", f"/v1/nodes/{node_id}"), NODE_KEYS)


@node.command("states")
@click.argument("node_id", metavar="NODE")
@pass_obj
def states(obj: Obj, node_id: str) -> None:
    """Show a node's current and target states."""
    obj.out.item(obj.client.call("GET", f"/v1/nodes/{node_id}/states"))


@node.command("set")
@click.argument("node_id", metavar="NODE")
@click.option("--name")
@click.option("--driver")
@click.option("--driver-info", "-i", multiple=True, metavar="KEY=VALUE", help="Set (or with null, remove) a field.")
@click.option("--property", "-p", "props", multiple=True, metavar="KEY=VALUE")
@click.option("--maintenance/--no-maintenance", default=None)
@click.option("--reason", help="Maintenance reason.")
@pass_obj
def set_node(obj: Obj, node_id: str, name: str | None, driver: str | None, driver_info: tuple[str, ...],
             props: tuple[str, ...], maintenance: bool | None, reason: str | None) -> None:
    """Change a node (JSON merge patch)."""
    patch: dict[str, Any] = {}
    if name is not None:
        patch["name"] = name
    if driver is not None:
        patch["driver"] = driver
    if driver_info:
        patch["driver_info"] = _pairs(driver_info, "--driver-info")
    if props:
        patch["properties"] = _pairs(props, "--property")
    if maintenance is not None:
        patch["maintenance"] = maintenance
    if reason is not None:
        patch["maintenance_reason"] = reason
    if not patch:
        raise click.UsageError("nothing to change")
    obj.out.item(obj.client.call("PATCH", f"/v1/nodes/{node_id}", json=patch), NODE_KEYS)


@node.command("delete")
@click.argument("node_id", metavar="NODE")
@pass_obj
def delete(obj: Obj, node_id: str) -> None:
    """Delete a node."""
    obj.client.call("DELETE", f"/v1/nodes/{node_id}")
    click.echo(f"Deleted node {node_id}.", err=obj.out.machine)


@node.command("history")
@click.argument("node_id", metavar="NODE")
@click.option("--limit", type=int, default=20, show_default=True)
@pass_obj
def node_history(obj: Obj, node_id: str, limit: int) -> None:
    """Show a node's history, newest first."""
    page = obj.client.call("GET", f"/v1/nodes/{node_id}/history", params={"limit": limit})
    obj.out.table(page["history"], ["created_at", "event", "provision_state", "power_state", "message"],
                  raw=page["history"])


_wait = click.option("--wait", is_flag=True,
                     help="Wait for the request to finish, showing each change; exit 1 if it fails.")
_wait_free = click.option("--wait-free", is_flag=True,
                          help="If the node is busy with another request (409 transition_in_progress), "
                               "wait for that one to finish, then submit.")
_timeout = click.option("--timeout", type=float, default=None,
                        help="With --wait or --wait-free: give up after this many seconds (exit 2).")
_callback = click.option("--callback-url", help="URL to POST to when the request finishes.")
_all = click.option("--all", "all_nodes", is_flag=True, help="Every node (with --filter: every node matching).")
_filter = click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
                       help="Only nodes with this provision_state, power_state, driver or maintenance (repeat).")
_concurrency = click.option("--concurrency", type=click.IntRange(1, 64), default=bulk.DEFAULT_CONCURRENCY,
                            show_default=True, help="With several nodes: requests submitted (and waited for) "
                                                    "at once.")


def _selected(obj: Obj, node_ids: tuple[str, ...], all_nodes: bool, filters: tuple[str, ...]) -> list[str]:
    """The nodes a command acts on: those named, or with --all / --filter those the API lists."""
    if not node_ids and not all_nodes and not filters:
        raise click.UsageError("name the node(s), or select them with --all or --filter KEY=VALUE")
    if node_ids and (all_nodes or filters):
        raise click.UsageError("name nodes or use --all / --filter, not both")
    if node_ids:
        return list(node_ids)
    query: dict[str, str] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--filter")
        query[key] = value
    return bulk.select_nodes(obj.client, query)


def _action_command(kind: str, target: str, help_text: str, options: tuple[Callable[..., Any], ...] = (),
                    params: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> click.Command:
    """A state change of one or more nodes: ``NODE...``, or ``--all`` / ``--filter``.

    ``options`` are the command's own, whose values ``params`` turns into the
    body's fields.  One node named: the request (with --wait, followed until
    it ends); several: see :mod:`conductor.cli.bulk`.
    """
    path = "/v1/nodes/{node}/states/" + kind

    def command(obj: Obj, node_ids: tuple[str, ...], all_nodes: bool, filters: tuple[str, ...], wait: bool,
                wait_free: bool, timeout: float | None, callback_url: str | None, concurrency: int,
                **own: Any) -> None:
        body: dict[str, Any] = {"target": target, **(params(own) if params else {})}
        if callback_url:
            body["callback_url"] = callback_url
        nodes = _selected(obj, node_ids, all_nodes, filters)
        deadline = None if timeout is None else time.monotonic() + timeout

        def submit(client: Client, node: str) -> dict[str, Any]:
            return submit_change(client, path.format(node=node), body, wait_free=wait_free, deadline=deadline,
                                 label=node)

        if len(node_ids) == 1:
            obj.out.check_columns(REQUEST_KEYS)
            finish_request(obj, submit(obj.client, node_ids[0]), wait, remaining(deadline))
            return
        label = click.get_current_context().command_path.partition(" node ")[2] or target
        bulk.run(obj, label, nodes, submit, wait=wait, timeout=remaining(deadline), concurrency=concurrency)

    for decorator in (pass_obj, *reversed(options), _concurrency, _callback, _timeout, _wait_free, _wait, _filter,
                      _all, click.argument("node_ids", metavar="NODE...", nargs=-1)):
        command = decorator(command)
    return click.command(help=help_text)(command)


@node.group("power")
def power() -> None:
    """Power nodes on, off, or reboot them."""


for _name, _target, _help in (
    ("on", "power on", "Power the node(s) on."),
    ("off", "power off", "Power the node(s) off (hard)."),
    ("soft-off", "soft power off", "Ask the OS to power off (ACPI), then hard off on timeout."),
    ("reboot", "rebooting", "Power cycle the node(s) (off, then on)."),
):
    power.add_command(_action_command("power", _target, _help), _name)

# Shortcut used by the guide: `conductor node reboot NODE`.
node.add_command(power.commands["reboot"], "reboot")

_erase = click.option("--erase", type=click.Choice(["metadata", "full"]), default=None,
                      help="What cleaning erases: partition tables and signatures at both ends of each disk, "
                           "or every byte (default: the setting clean_erase).")
_image = click.option("--image", "image_source", required=True,
                      help="Image to write: an http(s)/file URL or a name.")
_checksum = click.option("--checksum", "image_checksum", default=None,
                         help="The image file's SHA-256 (required for http(s) URLs).")
_configdrive = click.option("--configdrive", type=click.File("r"), default=None,
                            help="File whose content is the config drive (at most 64 KiB).")


def _cleaning_params(own: dict[str, Any]) -> dict[str, Any]:
    return {"erase": own["erase"]} if own.get("erase") else {}


def _image_params(own: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"image_source": own["image_source"]}
    if own.get("image_checksum") is not None:
        params["image_checksum"] = own["image_checksum"]
    if own.get("configdrive") is not None:
        params["configdrive"] = own["configdrive"].read()
    return params


for _name, _target, _help in (
    ("manage", "manage", "Verify the BMC credentials: enroll -> manageable."),
    ("inspect", "inspect", "Discover the hardware: manageable -> manageable."),
    ("abort", "abort", "Abort a wait (wait call-back, clean wait, inspect wait)."),
):
    node.add_command(_action_command("provision", _target, _help), _name)
for _name, _target, _help in (
    ("provide", "provide", "Clean and make available: manageable -> available."),
    ("clean", "clean", "Erase the node: manageable -> manageable."),
    ("undeploy", "deleted", "Tear down and clean: active -> available."),
):
    node.add_command(_action_command("provision", _target, _help, (_erase,), _cleaning_params), _name)
for _name, _target, _help in (
    ("deploy", "active", "Deploy an image: available -> active."),
    ("rebuild", "rebuild", "Deploy again: active -> active."),
):
    node.add_command(_action_command("provision", _target, _help, (_image, _checksum, _configdrive), _image_params),
                     _name)


@node.command("boot-device")
@click.argument("node_id", metavar="NODE")
@click.argument("device", required=False, type=click.Choice(["pxe", "disk", "cdrom", "bios"]))
@click.option("--persistent", is_flag=True, help="For every boot, not only the next one.")
@_wait
@_wait_free
@_timeout
@_callback
@pass_obj
def boot_device(obj: Obj, node_id: str, device: str | None, persistent: bool, wait: bool, wait_free: bool,
                timeout: float | None, callback_url: str | None) -> None:
    """Set the boot device (a request), or without DEVICE show the last one set or read."""
    path = f"/v1/nodes/{node_id}/management/boot_device"
    if device is None:
        obj.out.item(obj.client.call("GET", path), ["boot_device", "persistent", "observed_at", "source"])
        return
    obj.out.check_columns(REQUEST_KEYS)
    body: dict[str, Any] = {"boot_device": device, "persistent": persistent}
    if callback_url:
        body["callback_url"] = callback_url
    deadline = None if timeout is None else time.monotonic() + timeout
    accepted = submit_change(obj.client, path, body, wait_free=wait_free, deadline=deadline, label=node_id)
    finish_request(obj, accepted, wait, remaining(deadline))
