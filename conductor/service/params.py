"""What a state change request may carry, checked before it is accepted, and how it is shown.

The targets of each kind, the boot devices, and the provision parameters
(``image_source``, ``configdrive``) with their limits; the API schemas
take their choices from here.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from conductor.drivers.base import ManagementInterface
from conductor.exceptions import InvalidInput
from conductor.fsm.states import PowerState, ProvisionTarget

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


#: Targets that deploy an image: they need ``image_source``, may take ``configdrive``.
IMAGE_TARGETS = frozenset({ProvisionTarget.ACTIVE, ProvisionTarget.REBUILD})
MAX_CONFIGDRIVE = 64 * 1024
MAX_IMAGE_SOURCE = 2048
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")
_IMAGE_SCHEMES = frozenset({"http", "https", "file"})


def check_provision_params(target: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The provision request's extra inputs, checked (``image_source``, ``configdrive``).

    :raises InvalidInput: a missing, malformed or oversized input, or one the target does not take.
    """
    errors: dict[str, str] = {}
    known = {"image_source", "configdrive"}
    for key in sorted(set(params) - known):
        errors[key] = "unknown field"
    if target not in IMAGE_TARGETS:
        for key in sorted(known & set(params)):
            errors[key] = f"only taken by the targets {', '.join(sorted(IMAGE_TARGETS))}"
    else:
        image = params.get("image_source")
        if image is None or image == "":
            errors["image_source"] = "required: an http(s) or file URL, or an image name"
        elif not isinstance(image, str) or len(image) > MAX_IMAGE_SOURCE:
            errors["image_source"] = f"must be a string of at most {MAX_IMAGE_SOURCE} characters"
        elif "://" in image:
            parsed = urllib.parse.urlsplit(image)
            if parsed.scheme not in _IMAGE_SCHEMES or (parsed.scheme != "file" and not parsed.hostname):
                errors["image_source"] = "must be an http(s) or file URL, or an image name"
        elif not _IMAGE_NAME.match(image):
            errors["image_source"] = "an image name is letters, digits and . _ : - (at most 255)"
        drive = params.get("configdrive")
        if drive is not None:
            if not isinstance(drive, str | dict):
                errors["configdrive"] = "must be a string or a JSON object"
            else:
                size = len((drive if isinstance(drive, str) else json.dumps(drive)).encode())
                if size > MAX_CONFIGDRIVE:
                    errors["configdrive"] = f"is {size} bytes; at most {MAX_CONFIGDRIVE} (64 KiB)"
    if errors:
        raise InvalidInput(
            "Invalid provision request: " + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())),
            errors=errors,
        )
    return {k: v for k, v in params.items() if v is not None}


def public_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Request parameters as shown: the config drive (user data, keys) by size only, URL passwords masked."""
    shown = dict(params or {})
    drive = shown.get("configdrive")
    if drive is not None:
        size = len((drive if isinstance(drive, str) else json.dumps(drive)).encode())
        shown["configdrive"] = f"<{size} bytes>"
    image = shown.get("image_source")
    if isinstance(image, str) and "@" in image and "://" in image:
        parsed = urllib.parse.urlsplit(image)
        if parsed.password:
            netloc = f"{parsed.username}:******@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
            shown["image_source"] = urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return shown
