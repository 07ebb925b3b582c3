"""Redfish client: the only driver-side module that imports sushy.

:class:`RedfishClient` talks to one system of one Redfish service.  Every
failure becomes one :class:`~conductor.exceptions.BMCError` whose message
says what happened and what to check (TLS, credentials, the system id,
the BMC's own error message); the password is never part of a message or a
log line.  A 503 becomes :class:`ServiceBusy` with the ``Retry-After`` the
BMC asked for, so the driver can come back later instead of sleeping.

How sushy is used, and why (sushy 5.x):

* One ``sushy.Sushy`` root per client, built on our own ``Connector``:
  creating it reads the service root and authenticates (``X-Auth-Token``
  on every later call).  With a :class:`~conductor.drivers.redfish_sessions.SessionStore`
  (the driver passes the deployment's) the session is shared by every
  worker: :class:`SharedSessionAuth` adopts the stored token, and logs in
  (a ``POST`` to the session service) only when none is stored.  Without
  one, sushy's ``SessionAuth`` logs in for this client alone.  sushy's
  connector authenticates again by itself when a call gets 401 (an expired
  session) and repeats the call once.
* sushy asks the BMC to close the TCP connection after every call
  (``Connection: close``, "some BMCs choke on persistent connections").
  Over HTTPS that is a TLS handshake per call; the client keeps the
  connection open instead (``keepalive``, the default), and falls back to a
  new connection when the BMC closed it.
* sushy retries transport errors three times with 2 s sleeps, and GETs
  that got a 5xx up to ten times with 3 s sleeps: unbounded from a worker's
  point of view.  The connector is built with one attempt and no 5xx
  retries; :meth:`RedfishClient._call` retries connection failures and
  timeouts ``retries`` times with a jittered backoff.  Every HTTP request is
  bounded by ``connect_timeout`` and ``timeout``; a whole call by
  :attr:`RedfishClient.call_bound`.
* Reads that run often (the power state, the boot override) are one GET of
  the system decoded as JSON; commands use sushy's resources (the reset
  action's target and allowable values, ``set_system_boot_options``).
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
import sushy
from sushy import auth as sushy_auth
from sushy import connector as sushy_connector
from sushy import exceptions as sushy_exc

from conductor.drivers.base import BootSetting
from conductor.drivers.redfish_sessions import SessionStore, StoredSession
from conductor.exceptions import BMCError

LOG = logging.getLogger(__name__)
T = TypeVar("T")

#: Our power actions -> Redfish ``ResetType``.
RESET_TYPES = {
    "on": "On",
    "off": "ForceOff",
    "soft": "GracefulShutdown",
    "reboot": "ForceRestart",
    "soft_reboot": "GracefulRestart",
}
#: Redfish ``PowerState`` -> ``on``/``off``; a transition counts as not there yet.
POWER_STATES = {"On": "on", "Off": "off", "PoweringOn": "off", "PoweringOff": "on", "Paused": "on"}
#: Our boot devices <-> Redfish ``BootSourceOverrideTarget``.
BOOT_TARGETS = {"pxe": "Pxe", "disk": "Hdd", "cdrom": "Cd", "bios": "BiosSetup"}
BOOT_DEVICES = {target: device for device, target in BOOT_TARGETS.items()}
AUTH_TYPES = ("session", "basic", "auto")
#: Longest ``Retry-After`` honoured as such (a longer one is capped).
MAX_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class RedfishCredentials:
    """Where a Redfish service is, which system, how to log in; the password never shows in a repr.

    :ivar address: ``https://host[:port]`` (validated by the driver).
    :ivar system_id: the system's path (``/redfish/v1/Systems/1``) or id
        (``1``); None when the service has exactly one system.
    :ivar verify: verify the TLS certificate (True), not (False), or
        against this CA bundle (a path).
    :ivar auth_type: ``session`` (X-Auth-Token), ``basic``, or ``auto``
        (a session, else basic).
    """

    address: str
    system_id: str | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    verify: bool | str = True
    auth_type: str = "session"

    @property
    def endpoint(self) -> str:
        """The BMC and system as shown in messages and used as the BMC lock's name."""
        return f"{self.address}{' system ' + self.system_id if self.system_id else ''}"


class ServiceBusy(BMCError):
    """The BMC answered 503: come back after :attr:`retry_after` seconds."""

    def __init__(self, message: str, retry_after: float, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class _Busy(Exception):
    """Internal: a 503 seen by the connector's response callback."""

    def __init__(self, retry_after: float, url: str) -> None:
        super().__init__(url)
        self.retry_after = retry_after
        self.url = url


class _Transient(Exception):
    """Internal: no answer or no connection (retryable)."""


def _retry_after(value: str | None) -> float:
    """Seconds of a ``Retry-After`` header (delta seconds or an HTTP date); 1 when absent or unreadable."""
    if not value:
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 1.0
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _on_response(response: requests.Response) -> None:
    if response.status_code == 503:
        raise _Busy(_retry_after(response.headers.get("Retry-After")), response.url)


class SharedSessionAuth(sushy_auth.SessionAuth):
    """sushy's session authentication, with the session shared through a store by every worker.

    Authenticating adopts the stored session's token (no request), else
    logs in and offers the new session to the store: if another worker
    stored one first, this one adopts theirs and logs its own out, so a BMC
    keeps one session per login whatever the number of workers.  On 401
    (sushy's connector calls :meth:`refresh_session`, then repeats the call
    once), the stored session is dropped only if it is still the one that
    got 401, then authenticating starts over: a session another worker has
    just logged in is adopted, not replaced.  :meth:`close` never logs out
    a shared session (other workers use it): it ends on the BMC when idle.
    """

    def __init__(self, username: str, password: str, *, store: SessionStore, address: str) -> None:
        super().__init__(username=username, password=password)
        self._store = store
        self._address = address
        self._store_key: str | None = None
        self._held: StoredSession | None = None

    def _do_authenticate(self) -> None:
        if self._store_key is None:
            self._store_key = self._store.key(self._address, self._username, self._password)
        key = self._store_key
        found = self._store.get(key) if key is not None else None
        if found is None:
            token, uri = self._root_resource.create_session(self._username, self._password)
            found = StoredSession(token, uri) if key is None else self._store.offer(key, token, uri)
            if found.token != token:
                self._log_out(token, uri)  # another worker stored its session first
        self._held = found
        self._session_key = found.token
        self._session_resource_id = found.uri
        self._session_auth_previously_successful = True
        self._connector.set_http_session_auth(found.token)

    def can_refresh_session(self) -> bool:
        # Also without a session URI (some BMCs send none): a token that got 401 goes through refresh_session.
        return self._session_key is not None

    def refresh_session(self) -> None:
        held, self._held = self._held, None
        self.reset_session_attrs()
        if held is not None and self._store_key is not None:
            self._store.drop(self._store_key, held)
        self._do_authenticate()

    def close(self) -> None:
        """Log out a session of this client alone (the store failed); leave a shared one to the others."""
        held, self._held = self._held, None
        if held is not None and held.sealed is None:
            super().close()
        elif held is not None:
            self.reset_session_attrs()

    def _log_out(self, token: str, uri: str | None) -> None:
        if uri is None:
            return  # nothing to delete: it ends on the BMC when idle
        try:
            self._connector.delete(uri, headers={"X-Auth-Token": token}, allow_reauth=False)
        except Exception as exc:  # a session we cannot delete ends on the BMC when idle
            LOG.debug("logging out a second session from %s failed: %s", self._address, exc)


class SharedSessionOrBasicAuth(sushy_auth.SessionOrBasicAuth, SharedSessionAuth):
    """``auto``: a shared session (:class:`SharedSessionAuth`), else Basic authentication, as sushy falls back."""

    def __init__(self, username: str, password: str, *, store: SessionStore, address: str) -> None:
        SharedSessionAuth.__init__(self, username, password, store=store, address=address)
        self.basic_auth = sushy_auth.BasicAuth(username=username, password=password)


class RedfishClient:
    """Power, boot device, inventory and virtual media of one Redfish system.

    :param credentials: where the service is and how to log in.
    :param timeout: seconds one HTTP request may wait for its answer.
    :param connect_timeout: seconds to open a connection (and the TLS handshake).
    :param retries: extra attempts after a connection failure or a timeout
        (never after an answer: a refused password stays refused).
    :param backoff: seconds before the first retry (doubles; jittered by +-50 %).
    :param keepalive: keep the HTTP connection open between calls.
    :param sessions: where the sessions every worker shares are kept (None:
        this client logs in for itself, and out when closed).
    :param sleep: injectable for tests.
    """

    def __init__(self, credentials: RedfishCredentials, *, timeout: float = 10.0, connect_timeout: float = 5.0,
                 retries: int = 1, backoff: float = 0.5, keepalive: bool = True,
                 sessions: SessionStore | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.credentials = credentials
        self.sessions = sessions
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.keepalive = keepalive
        self._sleep = sleep
        self._root: sushy.Sushy | None = None
        self._system: Any = None
        #: The system was read by this very call (its creation): no need to GET it again.
        self._fresh = False

    def __repr__(self) -> str:
        return f"RedfishClient({self.credentials!r})"

    @property
    def call_bound(self) -> float:
        """Seconds one public call can take at most: each attempt may log in again
        (two requests) besides its own three (inventory makes more, see :meth:`inventory`),
        each bounded by connect and read timeouts, plus every backoff."""
        attempts = self.retries + 1
        per_request = self.connect_timeout + self.timeout
        backoff = sum(self.backoff * 2.0 ** i * 1.5 for i in range(attempts - 1))
        return attempts * 5 * per_request + backoff

    # --- public API -------------------------------------------------------------------
    def get_power(self) -> str:
        """``on`` or ``off`` (a system powering on still counts as off, and the reverse).

        :raises ServiceBusy: the BMC answered 503.
        :raises BMCError: refused, failed or no answer.
        """
        def action() -> str:
            state = self._system_json().get("PowerState")
            if state not in POWER_STATES:
                raise BMCError(f"BMC {self.credentials.endpoint} reports an unknown power state {state!r}",
                               bmc=self.credentials.endpoint)
            return POWER_STATES[state]

        return self._call("read the power state", action)

    def set_power(self, action: str) -> None:
        """Send a power action (``on``, ``off``, ``soft``, ``reboot``, ``soft_reboot``) without waiting.

        :raises ValueError: unknown action.
        :raises ServiceBusy: the BMC answered 503.
        :raises BMCError: refused (also: the system does not allow that reset type), failed or no answer.
        """
        if action not in RESET_TYPES:
            raise ValueError(f"unknown power action {action!r}; expected one of {', '.join(RESET_TYPES)}")
        reset = RESET_TYPES[action]

        def send() -> None:
            system = self._get_system()
            allowed = {str(v.value) for v in system.get_allowed_reset_system_values()}
            if reset not in allowed:
                raise BMCError(f"BMC {self.credentials.endpoint} does not allow ResetType {reset} "
                               f"(allowed: {', '.join(sorted(allowed))})", bmc=self.credentials.endpoint)
            system.reset_system(sushy.ResetType(reset))

        self._call(f"power {action} (ResetType {reset})", send)

    def get_boot_device(self) -> BootSetting:
        """The boot override and its mode.

        :raises ServiceBusy: the BMC answered 503.
        :raises BMCError: refused, failed or no answer.
        """
        def action() -> BootSetting:
            boot = self._system_json().get("Boot") or {}
            enabled = boot.get("BootSourceOverrideEnabled")
            target = boot.get("BootSourceOverrideTarget")
            device = "default" if enabled in (None, "Disabled") or target in (None, "None") else \
                BOOT_DEVICES.get(target, str(target))
            return BootSetting(device=device, persistent=enabled == "Continuous",
                               uefi=boot.get("BootSourceOverrideMode") == "UEFI")

        return self._call("read the boot device", action)

    def set_boot_device(self, device: str, persistent: bool = False) -> None:
        """Set the boot device for the next boot (every boot if ``persistent``), in the system's current mode.

        :raises ValueError: unknown device.
        :raises ServiceBusy: the BMC answered 503.
        :raises BMCError: refused (also: the target is not allowed), failed or no answer.
        """
        if device not in BOOT_TARGETS:
            raise ValueError(f"unknown boot device {device!r}; expected one of {', '.join(BOOT_TARGETS)}")
        target = BOOT_TARGETS[device]

        def send() -> None:
            system = self._get_system()
            system.refresh(force=True)  # sushy checks the target against the allowable values it read
            try:
                system.set_system_boot_options(
                    sushy.BootSource(target),
                    enabled=sushy.BootSourceOverrideEnabled.CONTINUOUS if persistent
                    else sushy.BootSourceOverrideEnabled.ONCE)
            except sushy_exc.InvalidParameterValueError:
                raise BMCError(f"BMC {self.credentials.endpoint} does not allow boot device {target}",
                               bmc=self.credentials.endpoint) from None

        self._call(f"set the boot device to {device}", send)

    def check_credentials(self) -> str:
        """Log in (or reuse the session), find the system, and read its power state.

        :raises BMCError: the credentials were refused, the system does not exist, or no answer.
        """
        return self.get_power()

    def inventory(self) -> dict[str, Any]:
        """The system's hardware, in the shape of an agent's inventory (see :mod:`conductor.core.inventory`).

        ``cpus`` (logical processors), ``cpu_arch``, ``memory_mb``, ``disks``
        (name, size_gb, model, serial), ``local_gb`` (the largest disk),
        ``nics`` (name, mac, link), ``boot_mode``, ``system_vendor``.

        :raises ServiceBusy: the BMC answered 503.
        :raises BMCError: refused, failed or no answer.
        """
        return self._call("read the hardware inventory", self._inventory)

    def insert_media(self, image: str) -> None:
        """Insert ``image`` (a URL the BMC fetches) into the system's virtual CD/DVD drive.

        :raises BMCError: no virtual CD drive, refused, failed or no answer.
        """
        self._call("insert virtual media", lambda: self._cd().insert_media(image, inserted=True,
                                                                          write_protected=True))

    def eject_media(self) -> None:
        """Eject whatever the virtual CD/DVD drive holds.

        :raises BMCError: no virtual CD drive, refused, failed or no answer.
        """
        def eject() -> None:
            cd = self._cd()
            if cd.inserted:
                cd.eject_media()

        self._call("eject virtual media", eject)

    def close(self) -> None:
        """Close the connection, logging out a session of this client alone (never a shared one); never raises."""
        root, self._root, self._system = self._root, None, None
        if root is None:
            return
        try:
            root._auth.close()
        except Exception as exc:  # a session we cannot delete expires on the BMC
            LOG.debug("logout from %s failed: %s", self.credentials.address, exc)
        try:
            root._conn.close()
        except Exception as exc:
            LOG.debug("closing the connection to %s failed: %s", self.credentials.address, exc)

    # --- internals -----------------------------------------------------------------------
    def _get_root(self) -> sushy.Sushy:
        if self._root is None:
            creds = self.credentials
            connector = sushy_connector.Connector(
                creds.address, verify=creds.verify, response_callback=_on_response,
                # One attempt, no 5xx retries: _call bounds and retries (see the module docstring).
                server_side_retries=1, server_side_retries_delay=0,
                default_request_timeout=self.timeout, connect_timeout=self.connect_timeout)
            if self.keepalive:
                # sushy sends "Connection: close" with every request.
                connector._session.headers.pop("Connection", None)
            try:
                self._root = sushy.Sushy(creds.address, auth=self._auth(), connector=connector)
            except BaseException:
                connector.close()
                raise
        return self._root

    def _auth(self) -> sushy_auth.AuthBase:
        creds = self.credentials
        if creds.auth_type == "basic":
            return sushy_auth.BasicAuth(username=creds.username, password=creds.password)
        if self.sessions is None:
            own = sushy_auth.SessionAuth if creds.auth_type == "session" else sushy_auth.SessionOrBasicAuth
            return own(username=creds.username, password=creds.password)
        shared = SharedSessionAuth if creds.auth_type == "session" else SharedSessionOrBasicAuth
        return shared(creds.username, creds.password, store=self.sessions, address=creds.address)

    def _system_path(self) -> str:
        system_id = self.credentials.system_id
        root = self._get_root()
        if system_id is None:
            members = root.get_system_collection().members_identities
            if len(members) != 1:
                raise BMCError(
                    f"BMC {self.credentials.address} has {len(members)} systems "
                    f"({', '.join(sorted(members)) or 'none'}); set the node's redfish_system_id to one of them",
                    bmc=self.credentials.endpoint)
            return str(next(iter(members)))
        if system_id.startswith("/"):
            return system_id
        return f"{root.get_system_collection().path.rstrip('/')}/{system_id}"

    def _get_system(self) -> Any:
        if self._system is None:
            path = self._system_path()
            try:
                self._system = self._get_root().get_system(path)
                self._fresh = True
            except sushy_exc.ResourceNotFoundError:
                raise BMCError(self._no_such_system(path), bmc=self.credentials.endpoint) from None
        return self._system

    def _no_such_system(self, path: str) -> str:
        try:
            members = sorted(self._get_root().get_system_collection().members_identities)
        except sushy_exc.SushyError:
            members = []
        return (f"BMC {self.credentials.address} has no system {path}"
                + (f" (its systems: {', '.join(members)})" if members else "")
                + "; check the node's redfish_system_id")

    def _system_json(self) -> dict[str, Any]:
        """The system resource, read now (one GET)."""
        system = self._get_system()
        if self._fresh:  # a first contact has just read it
            self._fresh = False
            return dict(system.json)
        body = system._conn.get(system.path).json()
        if not isinstance(body, dict):
            raise ValueError("the system resource is not a JSON object")
        return body

    def _cd(self) -> Any:
        system = self._get_system()
        for manager in system.managers:
            for media in manager.virtual_media.get_members():
                if {str(t.value) for t in media.media_types} & {"CD", "DVD"}:
                    return media
        raise BMCError(f"BMC {self.credentials.endpoint} has no virtual CD/DVD drive",
                       bmc=self.credentials.endpoint)

    def _inventory(self) -> dict[str, Any]:
        system = self._get_system()
        system.refresh(force=True)
        body = system.json
        processors = system.processors.get_members() if "Processors" in body else []
        threads = sum(int(p.total_threads or 0) for p in processors)
        summary = body.get("ProcessorSummary") or {}
        cpus = int(summary.get("LogicalProcessorCount") or threads or summary.get("Count") or 0)
        arch = next((str(p.instruction_set.value) for p in processors if p.instruction_set is not None), None)
        memory_gib = (body.get("MemorySummary") or {}).get("TotalSystemMemoryGiB")
        disks = self._disks(system, body)
        nics = []
        if "EthernetInterfaces" in body:
            for nic in system.ethernet_interfaces.get_members():
                if nic.mac_address:
                    link = nic.json.get("LinkStatus")
                    nics.append({"name": nic.identity, "mac": nic.mac_address.lower(),
                                 "link": link == "LinkUp" if link else None})
        boot_mode = (body.get("Boot") or {}).get("BootSourceOverrideMode")
        result: dict[str, Any] = {
            "cpus": cpus,
            "memory_mb": int(float(memory_gib) * 1024) if memory_gib is not None else None,
            "disks": disks,
            "local_gb": max((d["size_gb"] for d in disks), default=0),
            "nics": nics,
            "system_vendor": {"manufacturer": body.get("Manufacturer"), "product": body.get("Model"),
                              "serial": body.get("SerialNumber")},
        }
        if arch:
            result["cpu_arch"] = {"x86-64": "x86_64", "ARM-A64": "aarch64", "PowerISA": "ppc64le"}.get(arch, arch)
        if boot_mode:
            result["boot_mode"] = "uefi" if boot_mode == "UEFI" else "bios"
        return result

    @staticmethod
    def _disks(system: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
        disks: list[dict[str, Any]] = []
        if "Storage" in body:
            for storage in system.storage.get_members():
                for drive in storage.drives:
                    disks.append({"name": drive.name or drive.identity,
                                  "size_gb": int((drive.capacity_bytes or 0) // 10**9),
                                  "model": drive.model, "serial": drive.serial_number})
        if not disks and "SimpleStorage" in body:
            for controller in system.simple_storage.get_members():
                for device in controller.devices:
                    disks.append({"name": device.name, "size_gb": int((device.capacity_bytes or 0) // 10**9),
                                  "model": getattr(device, "model", None), "serial": None})
        return disks

    def _forget(self) -> None:
        """Drop the root and system after a transport failure: the next attempt connects afresh."""
        root, self._root, self._system = self._root, None, None
        if root is not None:
            try:
                root._conn.close()
            except Exception as exc:
                LOG.debug("closing the connection to %s failed: %s", self.credentials.address, exc)

    def _call(self, what: str, action: Callable[[], T]) -> T:
        self._fresh = False
        return self._retrying(what, action)

    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action``, retrying connection failures and timeouts only.

        :raises ServiceBusy: the BMC answered 503.
        :raises BMCError: refused, failed, or no answer after every attempt.
        """
        creds = self.credentials
        attempts = self.retries + 1
        start = time.monotonic()
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(what, action)
            except _Transient as exc:
                last = str(exc)
            if attempt < attempts:
                delay = self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                LOG.info("BMC %s: %s (attempt %d of %d to %s); retrying in %.2f s",
                         creds.endpoint, last, attempt, attempts, what, delay)
                self._sleep(delay)
        elapsed = time.monotonic() - start
        raise BMCError(f"BMC {creds.endpoint} {last} when asked to {what} ({attempts} "
                       f"attempt{'s' if attempts > 1 else ''} in {elapsed:.0f} s); check its address, port "
                       "and network", bmc=creds.endpoint)

    def _attempt(self, what: str, action: Callable[[], T]) -> T:
        """One attempt; every sushy failure becomes BMCError, ServiceBusy or _Transient."""
        creds = self.credentials
        endpoint = creds.endpoint
        try:
            return action()
        except BMCError:
            raise
        except _Busy as exc:
            raise ServiceBusy(f"BMC {endpoint} is busy (503 Service Unavailable) when asked to {what}; "
                              f"it asked to come back in {exc.retry_after:g} s", exc.retry_after,
                              bmc=endpoint) from None
        except sushy_exc.ConnectionError as exc:
            self._forget()
            cause = exc.__context__
            if isinstance(cause, requests.exceptions.SSLError):
                raise BMCError(
                    f"TLS with BMC {creds.address} failed: {_tls_reason(cause)}; set the node's redfish_verify_ca "
                    "to the BMC's CA bundle (a path), or to false to skip verification", bmc=endpoint) from None
            if isinstance(cause, requests.exceptions.ConnectTimeout):
                raise _Transient(f"did not accept a connection within {self.connect_timeout:g} s") from None
            if isinstance(cause, requests.exceptions.Timeout):
                raise _Transient(f"did not answer within {self.timeout:g} s") from None
            if isinstance(cause, requests.exceptions.ConnectionError):
                raise _Transient("refused or dropped the connection") from None
            raise BMCError(f"BMC {endpoint} could not be reached to {what}: {exc}", bmc=endpoint) from None
        except sushy_exc.AccessError as exc:
            if exc.status_code == 403:
                raise BMCError(f"BMC {endpoint} refused user {creds.username!r} the right to {what} (403); give "
                               "that user more privileges or use another", bmc=endpoint) from None
            raise BMCError(f"BMC {creds.address} rejected the credentials of user {creds.username!r} (401); check "
                           "the node's redfish_username and redfish_password", bmc=endpoint) from None
        except sushy_exc.ResourceNotFoundError as exc:
            raise BMCError(f"BMC {endpoint} answered 404 Not Found when asked to {what}: "
                           f"{exc.detail or 'no such resource'}", bmc=endpoint) from None
        except sushy_exc.HTTPError as exc:
            kind = "failed" if (exc.status_code or 0) >= 500 else "refused"
            raise BMCError(f"BMC {endpoint} {kind} to {what}: {exc.status_code} {exc.detail or exc.code}",
                           bmc=endpoint) from None
        except sushy_exc.UnknownDefaultError:
            raise BMCError(f"BMC {creds.address} does not have exactly one system; set the node's "
                           "redfish_system_id", bmc=endpoint) from None
        except sushy_exc.SushyError as exc:
            raise BMCError(f"BMC {endpoint} could not {what}: {exc}", bmc=endpoint) from None
        except OSError as exc:
            # requests raises OSError itself (not a RequestException) for a CA bundle it cannot read.
            self._forget()
            raise BMCError(f"TLS with BMC {creds.address} cannot be set up: {exc}; check the node's "
                           "redfish_verify_ca", bmc=endpoint) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A reply that is not the JSON a Redfish service sends.
            raise BMCError(f"BMC {endpoint} sent a malformed reply when asked to {what} "
                           f"({type(exc).__name__})", bmc=endpoint) from None


def _tls_reason(exc: BaseException) -> str:
    """The most specific reason of a TLS failure (certificate verify failed: ...)."""
    text = str(exc)
    for marker in ("certificate verify failed: ", "SSLError("):
        if marker in text:
            reason = text.split(marker, 1)[1]
            return ("certificate verify failed: " if marker.startswith("cert") else "") + reason.split(" (_ssl")[0] \
                .split("')")[0].rstrip(")'\"")
    return text
