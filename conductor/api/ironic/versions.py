"""Microversions of the Ironic-compatible API, negotiated the way Ironic does.

A call names the version it speaks in ``X-OpenStack-Ironic-API-Version``
(or ``OpenStack-API-Version: baremetal 1.x``); ``latest`` is the highest
served, and no header at all means the lowest (1.1), as in Ironic.  A
version outside the range is refused with 406.  Every answer under
``/baremetal`` carries the range served
(``X-OpenStack-Ironic-API-{Minimum,Maximum}-Version``) and, once
negotiated, the version it was answered in (``X-OpenStack-Ironic-API-Version``).

What each version adds is Ironic's (``ironic/api/controllers/v1/versions.py``);
the minors this API looks at are named here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from flask import g
from werkzeug.datastructures import Headers

from conductor.exceptions import NotAcceptable, NotFound

HEADER = "X-OpenStack-Ironic-API-Version"
MIN_HEADER = "X-OpenStack-Ironic-API-Minimum-Version"
MAX_HEADER = "X-OpenStack-Ironic-API-Maximum-Version"
#: The generic microversion header (``OpenStack-API-Version: baremetal 1.31``).
GENERIC_HEADER = "OpenStack-API-Version"

MAJOR = 1
MIN_MINOR = 1
#: 1.80: "self service node creation/deletion" (a marker; no change of behaviour).
MAX_MINOR = 80
MIN_VERSION = f"{MAJOR}.{MIN_MINOR}"
MAX_VERSION = f"{MAJOR}.{MAX_MINOR}"

# The minors this API's behaviour depends on (Ironic's names, shortened).
AVAILABLE_STATE = 2
MANAGEABLE_STATE = 4
NODE_NAME = 5
INSPECT_STATE = 6
FIELDS_SELECTOR = 8
PROVISION_STATE_FILTER = 9
ENROLL_STATE = 11
RAID_CONFIG = 12
ABORT_VERB = 13
STATES_LINKS = 14
MANUAL_CLEAN = 15
DRIVER_FILTER = 16
PORT_INTERNAL_INFO = 18
PORT_NET_FIELDS = 19
RESOURCE_CLASS = 21
PORTGROUPS = 24
SOFT_POWER_OFF = 27
VIFS = 28
DYNAMIC_DRIVERS = 30
DYNAMIC_INTERFACES = 31
PORT_PHYSICAL_NETWORK = 34
REBUILD_CONFIGDRIVE = 35
TRAITS = 37
RESCUE_INTERFACE = 38
INSPECT_WAIT = 39
BIOS_INTERFACE = 40
INSPECT_ABORT = 41
FAULT = 42
DETAIL_QUERY = 43
CONDUCTORS = 49
PORT_SMARTNIC = 53
CONFIGDRIVE_DICT = 56
DEPLOY_STEPS = 69
DEPLOY_UNDEPLOY_VERBS = 73
BOOT_MODE = 75
DRIVER_FIELDS = 77
NODE_HISTORY = 78

_VERSION = re.compile(r"^(\d+)\.(\d+)$")


def _requested(headers: Headers | Mapping[str, str]) -> str | None:
    value = headers.get(HEADER)
    if value is not None:
        return value.strip()
    for item in headers.get(GENERIC_HEADER, "").split(","):
        service, _, version = item.strip().partition(" ")
        if service.lower() == "baremetal":
            return version.strip()
    return None


def parse(headers: Headers | Mapping[str, str]) -> int:
    """The minor version a call asks for (no header: the lowest; ``latest``: the highest).

    :raises NotAcceptable: a malformed version, another major version, or a minor out of range.
    """
    value = _requested(headers)
    if not value:
        return MIN_MINOR
    if value.lower() == "latest":
        return MAX_MINOR
    match = _VERSION.match(value)
    if match is None:
        raise NotAcceptable(f"Invalid value for {HEADER} header")
    major, minor = int(match.group(1)), int(match.group(2))
    if major != MAJOR:
        raise NotAcceptable(
            f"Mutually exclusive versions requested. Version {value} requested but not supported by this "
            f"service. The supported version range is: [{MIN_VERSION}, {MAX_VERSION}]."
        )
    if not MIN_MINOR <= minor <= MAX_MINOR:
        raise NotAcceptable(
            f"Version {value} was requested but the minor version is not supported by this service. "
            f"The supported version range is: [{MIN_VERSION}, {MAX_VERSION}]."
        )
    return minor


def negotiate(headers: Headers | Mapping[str, str]) -> int:
    """Parse the call's version and remember it for the views (:func:`minor`).

    :raises NotAcceptable: as :func:`parse`.
    """
    g.ironic_minor = parse(headers)
    return int(g.ironic_minor)


def minor() -> int:
    """The minor version of the current call (negotiated before its view runs)."""
    return int(g.get("ironic_minor", MIN_MINOR))


def at_least(wanted: int) -> bool:
    """Whether the current call speaks version 1.``wanted`` or later."""
    return minor() >= wanted


def require(wanted: int, what: str) -> None:
    """:raises NotAcceptable: the current call speaks a version before 1.``wanted``."""
    if not at_least(wanted):
        raise NotAcceptable(
            f"Request not acceptable: {what} needs API version {MAJOR}.{wanted} or later "
            f"(this call speaks {MAJOR}.{minor()})."
        )


def require_endpoint(wanted: int) -> None:
    """:raises NotFound: the endpoint appeared in version 1.``wanted``, after the call's (Ironic: 404)."""
    if not at_least(wanted):
        raise NotFound(f"The requested URL was not found in API version {MAJOR}.{minor()} "
                       f"(it appeared in {MAJOR}.{wanted}).")


def response_headers() -> dict[str, str]:
    """The version headers of an answer (the negotiated one only once negotiated)."""
    headers = {MIN_HEADER: MIN_VERSION, MAX_HEADER: MAX_VERSION}
    if "ironic_minor" in g:
        headers[HEADER] = f"{MAJOR}.{g.ironic_minor}"
    return headers
