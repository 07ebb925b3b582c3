"""JSON Patch (RFC 6902) on Ironic's view of a node, turned into a change our services make.

Ironic changes a node with a JSON Patch applied to the whole node; our
service (:func:`conductor.service.nodes.patch`) takes the fields that
change, objects merged key by key (RFC 7396).  So the patch is applied
to the node's patchable fields as stored (secrets still sealed: one the
patch does not touch is never seen, nor written back), and what differs
afterwards becomes the change: a key removed from an object is ``null``,
a key changed is its new value.

All six operations are taken (Ironic takes add, replace and remove); an
``add`` of a field the node does not have is refused, as in Ironic.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer

from conductor.api.ironic import mapping, representation, versions
from conductor.api.ironic.common import boolean
from conductor.exceptions import InvalidInput, NotAcceptable
from conductor.models import Node
from conductor.secretbox import is_secret

OPERATIONS = frozenset({"add", "remove", "replace", "move", "copy", "test"})
#: Node fields kept as objects (changed key by key).
OBJECT_FIELDS = ("driver_info", "properties", "instance_info", "extra")
#: Node fields stored as they are.
PLAIN_FIELDS = ("name", "instance_uuid", "resource_class", "description", "maintenance")
#: Ironic's patchable node fields that are constants here: a patch may only leave them as they are.
CONSTANT_FIELDS = ("automated_clean", "chassis_uuid", "conductor_group", "owner", "lessee", "network_data",
                   "protected", "protected_reason", "retired", "retired_reason")
#: Interfaces a patch may only leave as they are (the deploy interface may change).
FIXED_INTERFACES = tuple(f"{kind}_interface" for kind in mapping.INTERFACE_TYPES
                         if f"{kind}_interface" not in mapping.CHOSEN_INTERFACES)


def apply(document: dict[str, Any], operations: Any) -> dict[str, Any]:
    """``document`` after the JSON Patch ``operations`` (applied one by one, for a clear error).

    :raises InvalidInput: a malformed patch, an ``add`` of a new top-level field, or an operation
        that does not apply (a missing path, a failed ``test``).
    """
    if not isinstance(operations, list) or not all(
        isinstance(op, dict) and op.get("op") in OPERATIONS and isinstance(op.get("path"), str) for op in operations
    ):
        raise InvalidInput(
            "A JSON Patch is a list of operations {op, path, value|from}; op one of "
            f"{', '.join(sorted(OPERATIONS))}.",
            errors={"json": "not a JSON Patch"},
        )
    for op in operations:
        parts = op["path"].split("/")
        if op["op"] == "add" and len(parts) == 2 and jsonpointer.unescape(parts[1]) not in document:
            raise InvalidInput(f"Adding a new attribute ({op['path']}) to the root of the resource is not allowed",
                               errors={op["path"]: "no such field"})
    patched = copy.deepcopy(document)
    for op in operations:
        try:
            patched = jsonpatch.apply_patch(patched, [op])
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, KeyError, IndexError) as exc:
            raise InvalidInput(f"Couldn't apply patch '{op}'. Reason: {exc}", errors={op["path"]: str(exc)}) from None
    return patched


def _reads_secret(path: str) -> bool:
    """Whether ``path`` names a secret or an object holding secrets (``driver_info``, ``instance_info``).

    A ``copy``, ``move`` or ``test`` reads the value at its ``from`` (or
    ``path``): from a secret, it would carry a sealed password where it is
    shown unmasked (``extra``, another key) or quote it in its error.
    """
    parts = [jsonpointer.unescape(part) for part in path.split("/")[1:]]
    if not parts or parts[0] not in ("driver_info", "instance_info"):
        return False
    if len(parts) == 1:
        return True
    return is_secret(parts[1]) if parts[0] == "driver_info" else representation.secret_instance_key(parts[1])


def _root(path: str) -> str:
    return jsonpointer.unescape(path.split("/")[1]) if path.count("/") else path


def node_document(node: Node) -> dict[str, Any]:
    """The node's patchable fields, as stored (secrets sealed), in Ironic's names."""
    document: dict[str, Any] = {field: copy.deepcopy(getattr(node, field) or {}) for field in OBJECT_FIELDS}
    document.update({field: getattr(node, field) for field in PLAIN_FIELDS})
    document["driver"] = mapping.driver_to_ironic(node.driver)
    document.update({field: representation.NODE_CONSTANTS[field] for field in CONSTANT_FIELDS})
    document.update(mapping.interfaces(node.driver, node.driver_info or {}))
    return document


def _object_changes(field: str, before: Mapping[str, Any], after: Any) -> dict[str, Any]:
    if after is None:
        after = {}
    if not isinstance(after, dict):
        raise InvalidInput(f"{field} must be an object.", errors={field: "must be an object"})
    changes: dict[str, Any] = {k: None for k in before if k not in after}
    changes.update({k: v for k, v in after.items() if k not in before or before[k] != v})
    return changes


def node_changes(node: Node, operations: Any) -> dict[str, Any]:
    """The change (for :func:`conductor.service.nodes.patch`) a JSON Patch of Ironic's node makes.

    :raises InvalidInput: a malformed patch, a field that cannot be patched, a value we cannot keep.
    :raises NotAcceptable: a field newer than the call's version.
    """
    document = node_document(node)
    if isinstance(operations, list):
        for op in operations:
            if isinstance(op, dict) and op.get("op") in ("copy", "move", "test"):
                read = op.get("from") if op.get("op") != "test" else op.get("path")
                if isinstance(read, str) and _reads_secret(read):
                    raise InvalidInput(
                        f"Cannot {op['op']} {read}: secrets are write-only (replace or remove them instead).",
                        errors={read: "secret"},
                    )
            paths = [op.get("path"), op.get("from")] if isinstance(op, dict) else []
            for root in {_root(p) for p in paths if isinstance(p, str)}:
                if root not in document:
                    raise InvalidInput(
                        f"Cannot patch /{root}. Only the following can be updated: {', '.join(sorted(document))}",
                        errors={f"/{root}": "not patchable"},
                    )
                if not representation.node_allowed(root):
                    raise NotAcceptable(f"Field {root} is not acceptable in version 1.{versions.minor()}.")
    # A field removed (``remove /resource_class``) is null, as in Ironic.
    patched = dict.fromkeys(document) | apply(document, operations)
    changes: dict[str, Any] = {}
    for field in OBJECT_FIELDS:
        if patched[field] != document[field]:
            changes[field] = _object_changes(field, document[field], patched[field])
    for field in PLAIN_FIELDS:
        if patched[field] != document[field]:
            changes[field] = patched[field]
    if patched["driver"] != document["driver"]:
        changes["driver"] = mapping.driver_to_ours(patched["driver"])
    for field, key in mapping.CHOSEN_INTERFACES.items():
        if patched[field] != document[field]:
            changes.setdefault("driver_info", {})[key] = patched[field]
    for field in (*CONSTANT_FIELDS, *FIXED_INTERFACES):
        if patched[field] != document[field]:
            raise InvalidInput(
                f"Cannot set {field} to {patched[field]!r}: this conductor keeps it {document[field]!r}.",
                errors={field: "not supported"},
            )
    if changes.get("maintenance") is not None and not isinstance(changes["maintenance"], bool):
        changes["maintenance"] = boolean("maintenance", changes["maintenance"])
    return changes
