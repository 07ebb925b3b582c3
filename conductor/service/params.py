"""What a state change request may carry, checked before it is accepted, and how it is shown.

The targets of each kind, the boot devices, and the provision parameters
(``image_source``, ``image_checksum``, ``configdrive``; ``erase`` for
cleaning) with their limits; the API schemas take their choices from here.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from conductor.context import Context
from conductor.drivers.base import ManagementInterface
from conductor.exceptions import InvalidInput
from conductor.fsm.states import PowerState, ProvisionTarget
from conductor.images import registry, sources

POWER_TARGETS = (
    PowerState.POWER_ON,
    PowerState.POWER_OFF,
    PowerState.REBOOTING,
    PowerState.SOFT_POWER_OFF,
)
#: Provision targets refused while a node is in maintenance.
REFUSED_IN_MAINTENANCE = frozenset(
    {
        ProvisionTarget.PROVIDE,
        ProvisionTarget.ACTIVE,
        ProvisionTarget.REBUILD,
        ProvisionTarget.INSPECT,
        ProvisionTarget.CLEAN,
    }
)
#: Boot devices a management request may set.
BOOT_DEVICES = ManagementInterface.BOOT_DEVICES


#: Targets that deploy an image: they need ``image_source``, may take ``image_checksum`` and ``configdrive``.
IMAGE_TARGETS = frozenset({ProvisionTarget.ACTIVE, ProvisionTarget.REBUILD})
IMAGE_PARAMS = frozenset({"image_source", "image_checksum", "configdrive"})
#: Targets that clean (``clean``; ``provide`` and ``deleted`` with automated cleaning): they may take ``erase``.
CLEAN_TARGETS = frozenset({ProvisionTarget.CLEAN, ProvisionTarget.PROVIDE, ProvisionTarget.DELETED})
ERASE_MODES = ("metadata", "full")
MAX_CONFIGDRIVE = 64 * 1024
MAX_IMAGE_SOURCE = 2048
_IMAGE_SCHEMES = frozenset({"http", "https", "file"})


@dataclasses.dataclass(frozen=True)
class ImageRules:
    """What :func:`check_provision_params` asks the deployment about an ``image_source``."""

    #: Whether an image is registered under a name.
    exists: Callable[[str], bool]
    #: Why a ``file://`` image's path may not be deployed (None: it may).
    file_refusal: Callable[[Path], str | None]


def check_provision_params(target: str, params: Mapping[str, Any],
                           images: ImageRules | None = None) -> dict[str, Any]:
    """The provision request's extra inputs, checked (``image_source``, ``image_checksum``, ``configdrive``,
    ``erase``).

    ``image_checksum`` is required with an http(s) ``image_source`` (the
    conductor verifies the download against it) and optional otherwise
    (computed for files and registered images; checked when given).
    ``images`` checks names and ``file://`` paths against the deployment (None: not checked).

    :raises InvalidInput: a missing, malformed or oversized input, one the target does not take,
        or an image name that is not registered.
    """
    errors: dict[str, str] = {}
    known = IMAGE_PARAMS | {"erase"}
    for key in sorted(set(params) - known):
        errors[key] = "unknown field"
    taken = IMAGE_PARAMS if target in IMAGE_TARGETS else {"erase"} if target in CLEAN_TARGETS else set()
    for key in sorted((known - taken) & set(params)):
        targets = IMAGE_TARGETS if key in IMAGE_PARAMS else CLEAN_TARGETS
        errors[key] = f"only taken by the targets {', '.join(sorted(targets))}"
    if target in IMAGE_TARGETS:
        _check_image(params, errors, images)
        drive = params.get("configdrive")
        if drive is not None:
            if not isinstance(drive, str | dict):
                errors["configdrive"] = "must be a string or a JSON object"
            else:
                size = len((drive if isinstance(drive, str) else json.dumps(drive)).encode())
                if size > MAX_CONFIGDRIVE:
                    errors["configdrive"] = f"is {size} bytes; at most {MAX_CONFIGDRIVE} (64 KiB)"
    erase = params.get("erase")
    if erase is not None and "erase" not in errors and erase not in ERASE_MODES:
        errors["erase"] = f"one of {', '.join(ERASE_MODES)}"
    if errors:
        raise InvalidInput(
            "Invalid provision request: " + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())),
            errors=errors,
        )
    return {k: v for k, v in params.items() if v is not None}


def image_rules(ctx: Context) -> ImageRules:
    """The :class:`ImageRules` of ``ctx``'s deployment (its database, its settings)."""

    def exists(name: str) -> bool:
        with ctx.db.session() as session:
            return registry.exists(session, name)

    return ImageRules(exists, lambda path: sources.file_refusal(ctx.settings, path))


def _check_image(params: Mapping[str, Any], errors: dict[str, str],
                 images: ImageRules | None) -> None:
    image, checksum = params.get("image_source"), params.get("image_checksum")
    if checksum is not None:
        try:
            registry.check_checksum(checksum)
        except InvalidInput:
            errors["image_checksum"] = "a SHA-256: 64 hex digits, optionally prefixed sha256:"
    if image is None or image == "":
        errors["image_source"] = "required: an http(s) or file URL, or an image name"
    elif not isinstance(image, str) or len(image) > MAX_IMAGE_SOURCE:
        errors["image_source"] = f"must be a string of at most {MAX_IMAGE_SOURCE} characters"
    elif "://" in image:
        parsed = urllib.parse.urlsplit(image)
        if parsed.scheme not in _IMAGE_SCHEMES or (parsed.scheme != "file" and not parsed.hostname):
            errors["image_source"] = "must be an http(s) or file URL, or an image name"
        elif parsed.scheme == "file" and (parsed.hostname not in (None, "localhost")
                                          or not parsed.path.startswith("/")):
            errors["image_source"] = "a file URL names an absolute path on the conductor host (file:///srv/image.raw)"
        elif parsed.scheme != "file" and checksum is None:
            errors["image_checksum"] = "required with an http(s) image_source: its SHA-256 (64 hex digits)"
        elif parsed.scheme == "file" and images is not None:
            refused = images.file_refusal(sources.file_path(image))
            if refused is not None:
                errors["image_source"] = refused
    elif not registry.NAME.match(image):
        errors["image_source"] = registry.NAME_RULE
    elif images is not None and not images.exists(image):
        errors["image_source"] = f"no image is registered as {image!r} (see `conductor image list`)"


def public_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Request parameters as shown: the config drive (user data, keys) by size only, a URL's password and
    query string (a pre-signed URL's signature) masked."""
    shown = dict(params or {})
    drive = shown.get("configdrive")
    if drive is not None:
        size = len((drive if isinstance(drive, str) else json.dumps(drive)).encode())
        shown["configdrive"] = f"<{size} bytes>"
    image = shown.get("image_source")
    if isinstance(image, str):
        shown["image_source"] = sources.shown(image)
    return shown
