"""The ``redfish`` driver: power, boot device and out-of-band inspection over DMTF Redfish, with sushy.

``driver_info``:

* ``redfish_address`` (required): the service's URL, ``https://host[:port]``
  (``http://`` works too; no scheme means https);
* ``redfish_system_id``: the system's path (``/redfish/v1/Systems/1``) or
  id (``1``); may be left out when the service has exactly one system;
* ``redfish_username``, ``redfish_password`` (a write-only secret, like
  ``ipmi_password``: never shown, never in a message or a log line, stored
  sealed; :func:`call` opens it just before use);
* ``redfish_verify_ca``: ``true`` (the default: the system's CAs),
  ``false`` (no verification), or the path of a CA bundle;
* ``redfish_auth_type``: ``session`` (the default: one session per BMC
  and login, ``X-Auth-Token``, shared by every worker), ``basic`` or
  ``auto`` (a shared session, else basic);
* ``redfish_timeout``, ``redfish_connect_timeout``: this node's own bounds
  of one HTTP request (default: the settings of the same names).

``validate()`` checks these without touching the BMC; ``manage`` proves
them (log in, find the system, read its power state).

Every call goes through :func:`call`: the guard of
:mod:`conductor.drivers.bmc_access` (one call in flight per system, paced
commands, ``TryLater`` instead of waiting), then the per-process client
(:mod:`conductor.drivers.redfish_client`, the only module importing
sushy), whose session is the one every worker shares
(:mod:`conductor.drivers.redfish_sessions`: its token sealed in Redis;
``redfish_session_ttl`` 0 gives each worker its own).  A 503 from the BMC ends the step with ``TryLater`` after its
``Retry-After``; 503s in a row for longer than ``redfish_busy_timeout``
fail the request.

Inspection: the ``redfish`` inspect interface (the driver's default; see
:class:`RedfishInspect`) reads processors, memory, storage and NICs from
the Redfish tree, with no agent and without touching the node's power.
``inspect_interface: agent`` inspects with the deploy interface's agent
instead.  The deploy interface is ``pxe`` (``fake`` for benchmarks of the
power path), as for ``ipmi``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from conductor import secretbox
from conductor.core import inventory as inventory_core
from conductor.core.agent import MEDIA_INSERTED
from conductor.drivers import base, bmc_access, fake, vmedia
from conductor.drivers.bmc_interfaces import FROM_BMC, BMCManagement, BMCPower, Protocol
from conductor.drivers.pxe import PXEDeploy
from conductor.drivers.redfish_client import AUTH_TYPES, RedfishClient, RedfishCredentials, ServiceBusy
from conductor.drivers.redfish_sessions import SessionStore
from conductor.exceptions import BMCError, DriverError
from conductor.fsm.states import PowerState
from conductor.settings import Settings

if TYPE_CHECKING:
    from conductor.context import Context
    from conductor.engine.task import Task

T = TypeVar("T")

#: Most cached clients per process (the oldest is dropped beyond it: its connection closed, a shared
#: session left to the other workers).
MAX_CLIENTS = 4096
MAX_TIMEOUT = 300.0
#: The key of a request's progress where the first of a run of 503s is remembered.
BUSY_SINCE = "redfish_busy_since"

_FIELDS = {
    "redfish_address": base.Field("URL of the Redfish service (https://host[:port]).", required=True),
    "redfish_system_id": base.Field("Path or id of the system (optional when the service has one)."),
    "redfish_username": base.Field("User name to log in with."),
    "redfish_password": base.Field("Password of that user (write-only)."),
    "redfish_verify_ca": base.Field("true, false, or the path of a CA bundle (default true)."),
    "redfish_auth_type": base.Field("session, basic or auto (default session)."),
    "redfish_timeout": base.Field("Seconds one HTTP request may wait for its answer (default: setting)."),
    "redfish_connect_timeout": base.Field("Seconds to connect, TLS included (default: setting)."),
}



def _address(value: str) -> str:
    return value if "://" in value else f"https://{value}"


def validate_info(driver_info: Mapping[str, Any]) -> dict[str, str]:
    """Field errors of the ``redfish_*`` keys of ``driver_info`` (never touches the BMC)."""
    errors: dict[str, str] = {}
    address = driver_info.get("redfish_address")
    if address is None:
        errors["redfish_address"] = "required"
    elif not isinstance(address, str) or not address.strip() or any(c.isspace() for c in address):
        errors["redfish_address"] = "must be a URL (https://host[:port])"
    else:
        try:
            parts = urlsplit(_address(address))
            port_ok = parts.port is None or 1 <= parts.port <= 65535
        except ValueError:
            parts, port_ok = None, False
        if parts is None or not port_ok or parts.scheme not in ("http", "https") or not parts.hostname:
            errors["redfish_address"] = "must be a URL (https://host[:port])"
        elif parts.username is not None or parts.password is not None:
            # Never echo it: it may hold the password.
            errors["redfish_address"] = "must not hold credentials: use redfish_username and redfish_password"
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            errors["redfish_address"] = "must be scheme, host and port only (the service root is /redfish/v1)"
    system_id = driver_info.get("redfish_system_id")
    if system_id is not None and (not isinstance(system_id, str) or not system_id.strip()
                                  or any(c.isspace() for c in system_id)
                                  or (not system_id.startswith("/") and "/" in system_id)):
        errors["redfish_system_id"] = "must be a system's path (/redfish/v1/Systems/...) or id"
    for key in ("redfish_username", "redfish_password"):
        value = driver_info.get(key)
        if value is not None and not isinstance(value, str):
            errors[key] = "must be a string"  # never echo the value
    verify = driver_info.get("redfish_verify_ca")
    if verify is not None and not isinstance(verify, bool) and not (isinstance(verify, str) and verify.strip()):
        errors["redfish_verify_ca"] = "must be true, false or the path of a CA bundle"
    auth_type = driver_info.get("redfish_auth_type")
    if auth_type is not None and auth_type not in AUTH_TYPES:
        errors["redfish_auth_type"] = f"must be one of {', '.join(AUTH_TYPES)}"
    for key in ("redfish_timeout", "redfish_connect_timeout"):
        value = driver_info.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not 0 < value <= MAX_TIMEOUT):
            errors[key] = f"must be a number of seconds above 0, at most {MAX_TIMEOUT:g}"
    return errors


def _verify(value: Any) -> bool | str:
    if value is None or isinstance(value, bool):
        return True if value is None else value
    text = str(value).strip()
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    return text


def credentials(driver_info: Mapping[str, Any]) -> RedfishCredentials:
    """The credentials a (valid) ``driver_info`` names.

    :raises DriverError: ``driver_info`` is not valid (it changed under us).
    """
    errors = validate_info(driver_info)
    if errors:
        raise DriverError("Invalid driver_info for driver redfish: "
                          + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
    address = _address(driver_info["redfish_address"].strip()).rstrip("/")
    return RedfishCredentials(
        address=address, system_id=driver_info.get("redfish_system_id"),
        username=driver_info.get("redfish_username") or "", password=driver_info.get("redfish_password") or "",
        verify=_verify(driver_info.get("redfish_verify_ca")),
        auth_type=driver_info.get("redfish_auth_type") or "session")


# --- per-process clients -----------------------------------------------------------------

_clients: dict[tuple[Any, ...], RedfishClient] = {}


def client_for(creds: RedfishCredentials, settings: Settings, driver_info: Mapping[str, Any],
               sessions: SessionStore | None = None) -> RedfishClient:
    """This process's client for ``creds`` (created once; it keeps its session and connection).

    ``sessions``: the store of the sessions every worker shares (None: the
    client logs in for itself); a client keeps the store it was created with.
    """
    timeout = float(driver_info.get("redfish_timeout") or settings.redfish_timeout)
    connect_timeout = float(driver_info.get("redfish_connect_timeout") or settings.redfish_connect_timeout)
    shared = (settings.redis_url, settings.redis_namespace) if sessions is not None else None
    key = (creds, timeout, connect_timeout, settings.redfish_retries, settings.redfish_backoff,
           settings.redfish_keepalive, shared)
    client = _clients.get(key)
    if client is None:
        if len(_clients) >= MAX_CLIENTS:
            _clients.pop(next(iter(_clients))).close()
        client = _clients[key] = RedfishClient(
            creds, timeout=timeout, connect_timeout=connect_timeout, retries=settings.redfish_retries,
            backoff=settings.redfish_backoff, keepalive=settings.redfish_keepalive, sessions=sessions)
    return client


def lock_ttl(settings: Settings, driver_info: Mapping[str, Any]) -> float:
    """How long a system's in-flight lock lives without its holder (a step's calls at their longest)."""
    timeout = float(driver_info.get("redfish_timeout") or settings.redfish_timeout)
    connect_timeout = float(driver_info.get("redfish_connect_timeout") or settings.redfish_connect_timeout)
    bound = RedfishClient(RedfishCredentials("https://bound"), timeout=timeout, connect_timeout=connect_timeout,
                          retries=settings.redfish_retries, backoff=settings.redfish_backoff).call_bound
    return 4 * bound + 5.0


def call(ctx: Context, driver_info: Mapping[str, Any], action: Callable[[RedfishClient], T], *,
         command: bool, holder: Any = None) -> T:
    """Run ``action`` on the node's system under the one-in-flight lock and, for a ``command``, the pacing.

    A 503 ends the step for ``Retry-After`` seconds (``TryLater``) while the
    BMC has answered 503 for less than ``redfish_busy_timeout`` in a row
    (remembered in the request's progress, when ``holder`` has one).

    :raises TryLater: the system is busy with another call, a command is too soon, or the BMC answered 503.
    :raises BMCError: the BMC refused, failed, did not answer, or kept answering 503.
    :raises DriverError: Redis (which coordinates BMC access) is unavailable.
    """
    settings = ctx.settings
    # The only place the password is decrypted (it is stored sealed).
    opened = secretbox.for_settings(settings).open_info(driver_info)
    creds = credentials(opened)
    endpoint = creds.endpoint
    release_after = bmc_access.enter(ctx, endpoint, kind="redfish", command=command, holder=holder,
                                     ttl=lock_ttl(settings, opened), one_in_flight=settings.redfish_one_in_flight,
                                     busy_retry=settings.redfish_busy_retry)
    progress = getattr(holder, "request_progress", None)
    try:
        sessions = SessionStore(ctx.redis, settings) if settings.redfish_session_ttl > 0 else None
        result = action(client_for(creds, settings, opened, sessions))
    except ServiceBusy as exc:
        now = time.time()
        since = float(progress.setdefault(BUSY_SINCE, now)) if isinstance(progress, dict) else now
        if now - since > settings.redfish_busy_timeout:
            raise BMCError(f"{exc.message.split(';')[0]}, and has been for {now - since:.0f} s "
                           f"(redfish_busy_timeout {settings.redfish_busy_timeout:g} s)", bmc=endpoint) from None
        raise base.TryLater(max(exc.retry_after, 0.1), exc.message) from None
    finally:
        if release_after is not None:
            bmc_access.release_quietly(ctx, endpoint, release_after)
    if isinstance(progress, dict):
        progress.pop(BUSY_SINCE, None)
    return result


def read_power(ctx: Context, driver_info: Mapping[str, Any], holder: Any = None) -> PowerState:
    """The power state the system reports (for the power state observer as well as steps).

    :raises TryLater: the system is busy with another call, or the BMC answered 503.
    :raises BMCError: the BMC refused, failed or did not answer.
    """
    return FROM_BMC[call(ctx, driver_info, lambda client: client.get_power(), command=False, holder=holder)]


# --- interfaces ------------------------------------------------------------------------------

_PROTOCOL = Protocol("redfish", _FIELDS, validate_info, call)


class RedfishPower(BMCPower):
    """Power through ``#ComputerSystem.Reset`` and the system's ``PowerState``."""

    def get_power_state(self, task: Task) -> PowerState | None:
        state = super().get_power_state(task)
        if task.request is None and (task.node.driver_internal_info or {}).get(MEDIA_INSERTED):
            # The power state sync: eject what an aborted or timed-out virtual media phase left.
            vmedia.eject_pending(task)
        return state


class RedfishManagement(BMCManagement):
    """Boot device through the system's ``Boot`` override (in the mode the system reports)."""


class RedfishInspect(base.InspectInterface):
    """Out-of-band inspection: the hardware as the Redfish tree describes it, in one step, no agent.

    Records what it found like an agent's inspection
    (:func:`conductor.core.inventory.record`: ``properties`` and a port per
    new MAC) and leaves the node's power as it was.
    """

    fields = _FIELDS

    def validate(self, driver_info: Mapping[str, Any]) -> dict[str, str]:
        return validate_info(driver_info)

    def inspect(self, task: Task) -> base.StepResult:
        found = call(task.ctx, task.node.driver_info, lambda client: client.inventory(), command=False,
                     holder=task)
        added = inventory_core.record(task.session, task.node, found, task.request, task.conductor)
        task.record("inspect.redfish",
                    f"Inspected out of band over Redfish: {found.get('cpus')} CPUs, {found.get('memory_mb')} MiB, "
                    f"{len(found.get('disks') or [])} disk(s), {len(found.get('nics') or [])} NIC(s)"
                    + (f"; new ports {', '.join(added)}" if added else "") + ".")
        return base.DONE


class _NoFields(fake.FakeDeploy):
    """The fake deploy interface without the fake driver's ``driver_info`` fields."""

    fields: Mapping[str, base.Field] = {}

    def validate(self, driver_info: Mapping[str, Any]) -> dict[str, str]:
        return {}


def driver() -> base.Driver:
    """The redfish driver: deploy interface ``pxe``, inspect interface ``redfish`` (out of band) by default."""
    deploy = PXEDeploy()
    return base.Driver(
        name="redfish",
        power=RedfishPower(_PROTOCOL),
        management=RedfishManagement(_PROTOCOL),
        deploy=deploy,
        deploy_interfaces={"pxe": deploy, "fake": _NoFields()},
        inspect_interfaces={"redfish": RedfishInspect(), base.AGENT_INSPECTION: None},
        boot_interfaces={"pxe": None, vmedia.NAME: vmedia.VirtualMediaDeploy()},
    )


def close_clients() -> None:
    """Close every cached client (tests, shutdown): connections closed, shared sessions left; never raises."""
    while _clients:
        _clients.popitem()[1].close()


__all__ = ["BMCError", "RedfishClient", "call", "client_for", "close_clients", "credentials", "driver",
           "read_power", "validate_info"]
