"""The ``ipmi`` driver: power and boot device over IPMI 2.0 (RMCP+, lanplus) with pyghmi.

``driver_info``:

* ``ipmi_address`` (required): the BMC's host name or IP address;
* ``ipmi_port`` (default 623): its UDP port;
* ``ipmi_username``, ``ipmi_password`` (a write-only secret: the API never
  shows it, it is never part of a message or a log line, and it is stored
  sealed: :func:`call` opens it, just before logging in);
* ``ipmi_priv_level`` (optional): ``ADMINISTRATOR``, ``OPERATOR`` or
  ``USER``; by default administrator, falling back to operator.

``validate()`` checks these without touching the BMC; the ``manage``
transition proves them (``verify``: log in and read the power state).

Every BMC call goes through :func:`call` (the guard of
:mod:`conductor.drivers.bmc_access`), which enforces, across every
worker process and host (Redis is shared):

* at most one call in flight per BMC (a short Redis lock per
  ``address:port``, held for the rest of the step that took it; setting
  ``ipmi_one_in_flight``);
* for commands that change the BMC's state (power, boot device), the least
  interval ``bmc_min_interval`` (the live throttle knob) since the previous
  one.  Reads are not paced: the power workflow reads right before and
  after each command, and pacing those reads would starve the command;
* when either says "not now", the step ends with :class:`TryLater` and the
  conductor runs it again later: no job ever sleeps waiting for a BMC.

Timeouts are retried inside :class:`BMCClient` with exponential backoff and
jitter (``ipmi_timeout``, ``ipmi_retries``, ``ipmi_backoff``...); a refused
password is never retried.  pyghmi itself is only imported by
:mod:`conductor.drivers.ipmi_client`.

Clients are cached per process (pyghmi keeps sessions per process; a
conductor worker is a long-lived ``SimpleWorker`` that calls serially, so
each BMC's session stays open between the steps of a request).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from conductor import secretbox
from conductor.drivers import base, bmc_access, fake
from conductor.drivers.bmc_interfaces import FROM_BMC, BMCManagement, BMCPower, Protocol
from conductor.drivers.ipmi_client import LOGIN_TIMEOUT, BMCClient, BMCCredentials
from conductor.drivers.pxe import PXEDeploy
from conductor.exceptions import DriverError
from conductor.fsm.states import PowerState
from conductor.settings import Settings

if TYPE_CHECKING:
    from conductor.context import Context

T = TypeVar("T")

#: Ironic's names of IPMI privilege levels -> the IPMI value.
PRIV_LEVELS = {"ADMINISTRATOR": 4, "OPERATOR": 3, "USER": 2}
#: IPMI 2.0 limits (bytes).
MAX_USERNAME = 16
MAX_PASSWORD = 20
#: Most cached clients per process (the oldest is dropped beyond it).
MAX_CLIENTS = 4096

_FIELDS = {
    "ipmi_address": base.Field("Host name or IP address of the BMC.", required=True),
    "ipmi_port": base.Field("UDP port of the BMC (default 623)."),
    "ipmi_username": base.Field("User name to log in to the BMC with."),
    "ipmi_password": base.Field("Password of that user (write-only)."),
    "ipmi_priv_level": base.Field("ADMINISTRATOR, OPERATOR or USER (default: administrator, else operator)."),
}



def validate_info(driver_info: Mapping[str, Any]) -> dict[str, str]:
    """Field errors of the ``ipmi_*`` keys of ``driver_info`` (never touches the BMC)."""
    errors: dict[str, str] = {}
    address = driver_info.get("ipmi_address")
    if address is None:
        errors["ipmi_address"] = "required"
    elif not isinstance(address, str) or not address.strip() or len(address) > 255 or any(
        c.isspace() for c in address
    ):
        errors["ipmi_address"] = "must be a host name or IP address"
    port = driver_info.get("ipmi_port", 623)
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        errors["ipmi_port"] = "must be a port number (1-65535)"
    for key, limit in (("ipmi_username", MAX_USERNAME), ("ipmi_password", MAX_PASSWORD)):
        value = driver_info.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            errors[key] = "must be a string"
        elif len(value.encode("utf-8")) > limit:
            # Never echo the value: it may be the password.
            errors[key] = f"must be at most {limit} bytes (IPMI 2.0)"
    level = driver_info.get("ipmi_priv_level")
    if level is not None and (not isinstance(level, str) or level.upper() not in PRIV_LEVELS):
        errors["ipmi_priv_level"] = f"must be one of {', '.join(PRIV_LEVELS)}"
    return errors


def credentials(driver_info: Mapping[str, Any]) -> BMCCredentials:
    """The BMC credentials a (valid) ``driver_info`` names.

    :raises DriverError: ``driver_info`` is not valid (it changed under us).
    """
    errors = validate_info(driver_info)
    if errors:
        raise DriverError(
            "Invalid driver_info for driver ipmi: " + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
        )
    level = driver_info.get("ipmi_priv_level")
    return BMCCredentials(
        address=driver_info["ipmi_address"],
        port=int(driver_info.get("ipmi_port", 623)),
        username=driver_info.get("ipmi_username") or "",
        password=driver_info.get("ipmi_password") or "",
        priv_level=PRIV_LEVELS[level.upper()] if level else None,
    )


# --- per-process clients -----------------------------------------------------------------

_clients: dict[tuple[Any, ...], BMCClient] = {}


def client_for(creds: BMCCredentials, settings: Settings) -> BMCClient:
    """This process's client for ``creds`` under ``settings`` (created once)."""
    key = (creds, settings.ipmi_timeout, settings.ipmi_retries, settings.ipmi_backoff,
           settings.ipmi_max_backoff, settings.ipmi_jitter)
    client = _clients.get(key)
    if client is None:
        if len(_clients) >= MAX_CLIENTS:
            _clients.pop(next(iter(_clients)))
        client = _clients[key] = BMCClient(
            creds, timeout=settings.ipmi_timeout, retries=settings.ipmi_retries, backoff=settings.ipmi_backoff,
            max_backoff=settings.ipmi_max_backoff, jitter=settings.ipmi_jitter,
        )
    return client


def lock_ttl(settings: Settings) -> float:
    """How long a BMC's in-flight lock lives without its holder.

    A step makes up to three calls (read, command, read), each with every
    attempt and backoff in the worst case; four such calls plus slack, so the
    lock never expires under a living step.
    """
    attempts = settings.ipmi_retries + 1
    # (each attempt: a login bounded by LOGIN_TIMEOUT, then the command by ipmi_timeout)
    return 4 * (attempts * (settings.ipmi_timeout + LOGIN_TIMEOUT) + attempts * settings.ipmi_max_backoff) + 5.0


def call(ctx: Context, driver_info: Mapping[str, Any], action: Callable[[BMCClient], T], *,
         command: bool, holder: Any = None) -> T:
    """Run ``action`` on the node's BMC under the one-in-flight lock and, for a ``command``, the pacing.

    ``holder`` (a :class:`~conductor.engine.task.Task`, or anything with its
    ``held`` and ``cleanups``) keeps the BMC's lock until the step ends, so
    the several calls of one step cost one Redis round trip, not two each;
    without it the lock is given back after the call (see
    :mod:`conductor.drivers.bmc_access`).

    :raises TryLater: the BMC is busy with another call, or a command is too soon.
    :raises BMCError: the BMC refused, failed or did not answer.
    :raises DriverError: Redis (which coordinates BMC access) is unavailable.
    """
    settings = ctx.settings
    # The only place the BMC password is decrypted (it is stored sealed).
    creds = credentials(secretbox.for_settings(settings).open_info(driver_info))
    endpoint = creds.endpoint
    release_after = bmc_access.enter(ctx, endpoint, kind="ipmi", command=command, holder=holder,
                                     ttl=lock_ttl(settings), one_in_flight=settings.ipmi_one_in_flight,
                                     busy_retry=settings.ipmi_busy_retry)
    try:
        return action(client_for(creds, settings))
    finally:
        if release_after is not None:
            bmc_access.release_quietly(ctx, endpoint, release_after)


def read_power(ctx: Context, driver_info: Mapping[str, Any], holder: Any = None) -> PowerState:
    """The power state the BMC reports (for the power state observer as well as steps).

    :raises TryLater: the BMC is busy with another call.
    :raises BMCError: the BMC refused, failed or did not answer.
    """
    return FROM_BMC[call(ctx, driver_info, lambda client: client.get_power(), command=False, holder=holder)]


# --- interfaces ----------------------------------------------------------------------------

_PROTOCOL = Protocol("ipmi", _FIELDS, validate_info, call)


class IPMIPower(BMCPower):
    """Power over IPMI Chassis Control / Chassis Status."""


class IPMIManagement(BMCManagement):
    """Boot device over IPMI (Get/Set System Boot Options, parameter 5)."""


class _NoFields(fake.FakeDeploy):
    """The fake deploy interface without the fake driver's ``driver_info`` fields."""

    fields: Mapping[str, base.Field] = {}

    def validate(self, driver_info: Mapping[str, Any]) -> dict[str, str]:
        return {}


def driver() -> base.Driver:
    """The ipmi driver: deploy interface ``pxe`` (an agent booted from the network) by default.

    ``deploy_interface: fake`` makes deploy, clean and inspect complete at
    once (power and boot device still go to the BMC): for benchmarks of the
    power path.
    """
    deploy = PXEDeploy()
    return base.Driver(
        name="ipmi",
        power=IPMIPower(_PROTOCOL),
        management=IPMIManagement(_PROTOCOL),
        deploy=deploy,
        deploy_interfaces={"pxe": deploy, "fake": _NoFields()},
    )
