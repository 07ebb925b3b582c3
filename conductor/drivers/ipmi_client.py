"""IPMI over LAN (RMCP+) client: the only driver-side module that imports pyghmi.

:class:`BMCClient` talks to one BMC.  Every failure, whether pyghmi raised
it (``IpmiException``) or returned it (``{'error': ...}``), becomes one
:class:`~conductor.exceptions.BMCError` whose message says what to do
about it; the password is never part of a message or a log line.

Timeouts are retried with exponential backoff and jitter; nothing else is
(a wrong password stays wrong, and retrying it can lock the account).

How pyghmi behaves, and what this module does about it (pyghmi 1.6.19):

* Sessions are shared process-wide per (BMC, user, password) and survive
  between calls, so a call on an open session is one round trip (~0.3 ms on
  loopback).  We build a ``Command`` per call: it is cheap, and pyghmi's
  session lookup drops sessions that went stale while idle.
* Credentials must be ``bytes``: with ``str``, the second ``Command`` to the
  same BMC does not find the first session (it compares the stored
  ``bytes`` with the given ``str``) and hangs for ever.
* The synchronous wait in ``Session.awaitresponse`` registers for the reply
  only after sending; a reply that arrives first sits in the session's
  queue while the caller sleeps until its retry timer (0.5-1 s).  On a fast
  BMC that happened to ~1-3% of calls (measured; see docs/ipmi-notes.md).
  :class:`_Session` overrides that one method to look at the queue first
  and to wait in short slices.
* ``Command.set_power`` costs three round trips (OEM probe, power read,
  control); :meth:`BMCClient.set_power` sends the standard Chassis Control
  command directly, which every IPMI 2.0 BMC implements.
* pyghmi's ``_io_sendto`` switches the (shared) socket to blocking mode
  before every send, while its I/O thread switches it back to non-blocking
  just before each ``recvfrom``.  When a send lands between the two, the I/O
  thread blocks in ``recvfrom`` on that socket until a datagram arrives
  there; if the BMC behind it has just gone silent, none ever does, and every
  wait in the process (``_io_wait`` waits without a timeout) hangs for ever.
  This hung CI.  :func:`_io_sendto` replaces pyghmi's: it sends with
  ``MSG_DONTWAIT`` and never touches the socket's mode; and
  :func:`_io_wait` replaces pyghmi's with a bounded wait that un-wedges (or
  restarts) the I/O thread if it ever stops answering.
* Every call is bounded: the login by ``login_timeout`` (pyghmi's own login
  is unbounded when a BMC answers only part of the handshake, or when it
  returns a cached half-initialised session), then the command by
  ``timeout``.  A session an attempt gave up on is dropped from pyghmi's
  process-wide caches so no later call is handed it half-dead.
* One process, one thread per pyghmi at a time: pyghmi's session state is
  not thread-safe (see docs/ipmi-notes.md for what threads did).  Drive many
  BMCs from several processes, each calling serially.
"""

from __future__ import annotations

import enum
import logging
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command as ipmi_command
from pyghmi.ipmi.private import session as ipmi_session
from pyghmi.ipmi.private import util as ipmi_util

from conductor.drivers.base import BootSetting
from conductor.exceptions import BMCError

LOG = logging.getLogger(__name__)
T = TypeVar("T")

#: Longest single sleep while waiting for a reply; bounds the cost of a
#: wake-up pyghmi misses (see :class:`_Session`).
WAIT_SLICE = 0.02
#: Default bound of one login (pyghmi's own retry ladder gives up after
#: ~4.9 s when nothing answers; this is the backstop for when it does not).
LOGIN_TIMEOUT = 5.0
#: How late pyghmi's I/O thread may be to wake a waiter before we assume it
#: is wedged, kick it and stop waiting for it (see :func:`_io_wait`).
IO_STALL_GRACE = 0.5


class PowerAction(enum.StrEnum):
    """Power commands a BMC accepts (IPMI Chassis Control)."""

    ON = "on"
    OFF = "off"
    SOFT = "soft"  # ACPI shutdown request to the OS
    CYCLE = "cycle"
    RESET = "reset"


#: Chassis Control (netfn 0, command 2) data byte per action (IPMI 2.0 28.3).
_CHASSIS_CONTROL = {
    PowerAction.OFF: 0,
    PowerAction.ON: 1,
    PowerAction.CYCLE: 2,
    PowerAction.RESET: 3,
    PowerAction.SOFT: 5,
}
#: Our boot device names -> pyghmi's.
_TO_PYGHMI_BOOT = {"pxe": "pxe", "disk": "hd", "cdrom": "cdrom", "bios": "bios",
                   "default": "default", "safe": "safe", "floppy": "floppy"}
#: pyghmi's names (as get_bootdev returns them) -> ours.
_FROM_PYGHMI_BOOT = {"network": "pxe", "hd": "disk", "optical": "cdrom", "setup": "bios",
                     "default": "default", "safe": "safe", "floppy": "floppy"}
BOOT_DEVICES = tuple(_TO_PYGHMI_BOOT)

# Substrings of pyghmi messages that mean "these credentials are refused".
_AUTH_ERRORS = ("Incorrect password", "Unauthorized name", "Invalid RAKP4 integrity",
                "Unauthorized role", "Invalid role", "while requesting privelege")
# ... and "nobody answered" (pyghmi raises IpmiException(None) when a login
# times out, and returns {'error': 'timeout'} when a command does).
_TIMEOUT_ERRORS = ("timeout", "Session no longer connected", "None")


@dataclass(frozen=True)
class BMCCredentials:
    """Where a BMC is and how to log in; the password never shows in a repr."""

    address: str
    port: int = 623
    username: str = ""
    password: str = field(default="", repr=False)
    #: IPMI privilege level to ask for (2 user, 3 operator, 4 administrator);
    #: None: administrator, falling back to operator (pyghmi's default).
    priv_level: int | None = None

    @property
    def endpoint(self) -> str:
        """``address:port`` as shown in messages (IPv6 in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


class _Timeout(Exception):
    """Internal: one attempt got no answer (retryable)."""


# --- pyghmi's process-wide I/O, made safe ---------------------------------------
# pyghmi's client sockets are shared by every session in the process, and one
# I/O thread reads them all.  These two functions replace pyghmi's module-level
# ones (at import, below): its internals (command waits, logins, ``_cmdwait``)
# look them up at call time, so every pyghmi session in the process gets them.
# pyghmi's files are not touched.

_IO_LOCK = threading.Lock()


def _io_sendto(mysocket: Any, packet: Any, sockaddr: Any) -> None:
    """pyghmi's ``_io_sendto``, without switching the shared socket to blocking mode.

    pyghmi's calls ``setblocking(1)`` before sending, and its I/O thread calls
    ``setblocking(0)`` then ``recvfrom`` on the same socket.  A send between
    those two leaves the I/O thread blocked in ``recvfrom`` until a datagram
    reaches that socket.  When the BMC behind it has just gone silent (and
    no other BMC shares the socket) that is for ever, and so is every wait in
    the process.  Reproduced: a BMC made unreachable right after a reply, on
    pyghmi's second socket, wedged it within ~500 tries; this is how CI hung
    in test_unreachable_times_out_within_bound (the test before it makes
    pyghmi open a second socket).  ``MSG_DONTWAIT`` makes this one send
    non-blocking whatever the socket's mode, and leaves the mode alone.
    Errors are ignored as pyghmi does: a lost datagram is retransmitted or
    times out.
    """
    if hasattr(mysocket, "fd"):  # eventlet's green socket, as in pyghmi
        mysocket = mysocket.fd
    for _ in range(2):
        try:
            mysocket.sendto(packet, socket.MSG_DONTWAIT, sockaddr)
            return
        except BlockingIOError:  # send buffer full (rare for UDP): wait for room once
            try:
                select.select((), (mysocket,), (), 0.1)
            except (OSError, ValueError):
                return
        except Exception:  # pyghmi ignores send errors too
            return


def _io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
    """pyghmi's ``_io_wait`` (sleep until a datagram from ``myaddr``, or ``timeout``), bounded.

    pyghmi's waits on an ``Event`` without a timeout and trusts its I/O
    thread to set it; with that thread wedged (see :func:`_io_sendto`) or
    dead, every command wait, login and ``_cmdwait`` in the process hangs
    for ever.  This one gives the thread ``IO_STALL_GRACE`` beyond the
    deadline, then kicks it (or restarts it) and returns.  Every caller
    loops and re-checks its own state, so returning early is safe.
    """
    evt = threading.Event()
    if evq is not None:
        evq.append(evt)
    deadline = timeout + ipmi_util._monotonic_time()
    ipmi_session.ioqueue.append((deadline, evt, myaddr))
    if deadline < ipmi_session.selectdeadline:  # (as pyghmi) break into the I/O thread's select
        _send_wakeups(ipmi_session.iosockets[:1])
    if not evt.wait(max(0.0, timeout) + IO_STALL_GRACE):
        _unwedge_io_thread()


def _send_wakeups(sockets: list[Any]) -> None:
    """Send pyghmi's 1-byte wake-up datagram to each socket (its reader drops them)."""
    for sock in sockets:
        try:
            raw = sock.fd if hasattr(sock, "fd") else sock
            raw.sendto(b"\x01", socket.MSG_DONTWAIT, (ipmi_session.myself, sock.getsockname()[1]))
        except OSError:
            pass


def _unwedge_io_thread() -> None:
    """pyghmi's I/O thread did not wake a waiter in time: kick it, or restart it if it died."""
    thread = ipmi_session.iothread
    if thread is not None and not thread.is_alive():
        with _IO_LOCK:
            if ipmi_session.iothread is thread:
                LOG.error("pyghmi's I/O thread has died; starting a new one")
                worker = ipmi_session.define_worker()()
                worker.daemon = True
                ipmi_session.iothread = worker
                worker.start()
        return
    # A datagram on every socket ends a recvfrom blocked on any of them.  Also
    # harmless when the thread was merely slow (a loaded machine).
    LOG.info("pyghmi's I/O thread did not wake a waiter within %.1f s; kicking it", IO_STALL_GRACE)
    _send_wakeups(list(ipmi_session.iosockets))


def _install_io_fixes() -> None:
    if ipmi_session._io_sendto is not _io_sendto:
        ipmi_session._io_sendto = _io_sendto
    if ipmi_session._io_wait is not _io_wait:
        ipmi_session._io_wait = _io_wait


_install_io_fixes()

#: How often (at most) a login also runs one turn of pyghmi's loop for every
#: other session (see :meth:`_Session._wait_login`), and when one last did.
_SHARED_TURN_EVERY = 1.0
_last_shared_turn = 0.0

#: Per thread: the login deadline for the ``_Session`` being constructed, and
#: that session (set by :meth:`BMCClient._command`, read by ``_Session.__init__``;
#: a constructor argument would not get through pyghmi's ``Session.__new__``).
_constructing = threading.local()


class _Session(ipmi_session.Session):
    """pyghmi's client session with its lost wake-up fixed and every wait bounded.

    ``Session.awaitresponse`` sends, then registers with pyghmi's I/O thread
    to be woken by the next datagram *from that BMC*.  When the reply is
    already in ``self.pktqueue`` by then (a fast BMC, a busy client), no
    further datagram comes and the caller sleeps until the retry timer.
    This copy of pyghmi 1.6.19's method differs in three marked places.

    The login (``__init__``/``login``), the wait for a command in flight
    (``_cmdwait``) and the command wait all stop at ``call_deadline``; a
    session given up on is dropped from pyghmi's caches (``_forget``).
    """

    #: ``_monotonic_time()`` after which the current call gives up (set per call by
    #: BMCClient: the login's deadline while logging in, then the command's);
    #: pyghmi alone keeps retransmitting and re-logging for up to ~30 s on an
    #: established session to a BMC that went away, and for ever in a login
    #: to a BMC that answers the first steps but not RAKP1 (each RAKP1
    #: timeout re-logs and resets the retry count's guard).
    call_deadline: float | None = None

    def __init__(self, bmc: str, userid: bytes, password: bytes, port: int = 623, kg: Any = None,
                 onlogon: Any = None, privlevel: int | None = None, keepalive: bool = True) -> None:
        deadline = getattr(_constructing, "deadline", None)
        _constructing.session = self  # so a failed attempt can evict it (BMCClient._call)
        if hasattr(self, "initialized"):
            # Session.__new__ handed us a cached session.  If it is still
            # logging in (pyghmi's __new__ even forces ``logging = True`` on an
            # entry of ``initting_sessions``), pyghmi's __init__ would wait
            # ``while self.logging and not self.broken: Session.wait_for_rsp()``
            # with no bound: a login nobody drives any more spins there for
            # ever.  Wait here instead, until the deadline.
            if onlogon is None and self.logging and not self.broken:
                self.call_deadline = deadline
                self._wait_login()
                if self.broken:
                    raise pyghmi_exc.IpmiException(getattr(self, "errormsg", None) or "timeout")
        else:
            self.call_deadline = deadline
            self._sync_login_pending = onlogon is None
        super().__init__(bmc, userid, password, port, kg, onlogon, privlevel, keepalive)

    def login(self) -> None:
        super().login()
        if getattr(self, "_sync_login_pending", False):
            # Called from Session.__init__, which next waits ``while
            # self.logging: Session.wait_for_rsp()`` without a bound.  Wait
            # here instead (bounded); its loop then finds the login over.
            # (login() is also called again from inside the handshake; those
            # calls only send.)
            self._sync_login_pending = False
            self._wait_login()

    def _wait_login(self) -> None:
        """Drive this session's login until it ends or ``call_deadline`` passes.

        pyghmi's loop (``Session.wait_for_rsp``) scans every session of the
        process four times a turn (retry timers and keepalives) and a login
        takes several turns: with 1000 sessions open a login cost 3.15 ms of
        CPU against 2.1 ms with 200 (docs/ipmi-notes.md row 11).  This loop
        serves only this session, as :meth:`awaitresponse` does for a
        command: its replies (routed to its ``pktqueue`` by the I/O thread)
        and its retry timer.  At the end, at most every
        ``_SHARED_TURN_EVERY`` seconds, one pyghmi turn serves every other
        session (queued replies, keepalives due every ~25 s, retry timers)
        as pyghmi's loop did.
        """
        cls = ipmi_session.Session
        while self.logging and not self.broken:
            self.process_pktqueue()
            if not self.logging or self.broken:
                break
            now = ipmi_util._monotonic_time()
            if self.call_deadline is not None and now > self.call_deadline:
                self._mark_broken("timeout")
                return
            with ipmi_util.protect(ipmi_session.WAITING_SESSIONS):
                parms = cls.waiting_sessions.get(self)
                due = parms["timeout"] if parms is not None else now + WAIT_SLICE
                expired = parms is not None and due <= now
                if expired:
                    cls.waiting_sessions.pop(self, None)
            if expired:
                self._timedout()  # resend (or re-log, or give up), as pyghmi's loop would
                continue
            wait = min(WAIT_SLICE, due - now)
            if self.call_deadline is not None:
                wait = min(wait, self.call_deadline - now)
            ipmi_session._io_wait(max(0.001, wait), self.sockaddr)
        global _last_shared_turn
        now = ipmi_util._monotonic_time()
        if now - _last_shared_turn >= _SHARED_TURN_EVERY:
            _last_shared_turn = now
            cls.wait_for_rsp(timeout=0)

    def _cmdwait(self) -> None:
        # pyghmi waits (without processing replies) for the command in flight
        # on this session until that command's own expiry: ~6 s when it is a
        # keepalive pyghmi sent while another BMC logged in.  Process replies
        # while waiting (the keepalive's reply ends it), and stop at our deadline.
        while self._isincommand():
            self.process_pktqueue()
            stillin = self._isincommand()
            if not stillin:
                break
            if self.call_deadline is not None:
                left = self.call_deadline - ipmi_util._monotonic_time()
                if left < 0:
                    self._mark_broken()
                    raise pyghmi_exc.IpmiException("timeout")
                stillin = min(stillin, left)
            ipmi_session._io_wait(min(stillin, WAIT_SLICE), self.sockaddr, self.evq)

    def awaitresponse(self, retry: bool, netfn: int, command: int) -> None:
        self.awaitingresponse = True
        try:
            alltimeout = ipmi_util._monotonic_time() + (self._getmaxtimeout() * 2)
            while (retry and ipmi_session.unmatched(self.lastresponse, netfn, command)
                   and (self.logging or self.logged or self.onlogpayload)):
                # (1) handle a reply that arrived before we started waiting.
                self.process_pktqueue()
                if not ipmi_session.unmatched(self.lastresponse, netfn, command):
                    break
                timeout = self.expiration - ipmi_util._monotonic_time()
                # (2) never sleep longer than a slice, so a wake-up lost in
                # the window between (1) and registering costs milliseconds.
                ipmi_session._io_wait(min(timeout, WAIT_SLICE), self.sockaddr)
                while self.iterwaiters:
                    waiter = self.iterwaiters.pop()
                    waiter({"success": True})
                self.process_pktqueue()
                if ipmi_util._monotonic_time() > alltimeout:
                    self._mark_broken()
                    raise pyghmi_exc.IpmiException("Session no longer connected")
                # (3) our per-call deadline
                if self.call_deadline is not None and ipmi_util._monotonic_time() > self.call_deadline:
                    self._mark_broken()
                    raise pyghmi_exc.IpmiException("timeout")
                with ipmi_util.protect(ipmi_session.WAITING_SESSIONS):
                    if (self in self.waiting_sessions
                            and self.expiration < ipmi_util._monotonic_time()):
                        self.waiting_sessions.pop(self, None)
                        if not self.lastpayload and not self.logging:
                            return
                        self._timedout()
        finally:
            self.awaitingresponse = False


    def _mark_broken(self, error: Any = None) -> None:
        # pyghmi's _mark_broken logs out, and logout's raw_command first
        # waits (_cmdwait) for the command in flight to finish; that is the
        # very command that just failed, so it blocked until that command's
        # own expiry (10-20 s).  A broken session has nothing in flight.
        self.incommand = False
        try:
            super()._mark_broken(error)
        except (AttributeError, KeyError, OSError) as exc:
            # A session that never sent anything has no ``allsockaddrs`` (or
            # no socket), and pyghmi's logout trips on it half-way.
            LOG.debug("marking a half-built pyghmi session broken: %r", exc)
            self.logging = False
            self.logged = 0
            self.broken = True
            self.errormsg = error
        self._forget()

    def _forget(self) -> None:
        """Drop every reference pyghmi's process-wide caches hold to this session.

        ``Session.__new__`` hands out sessions from ``bmc_handlers`` (keyed
        by BMC address, then local port) and ``initting_sessions`` (keyed by
        BMC, user, password, port, Kg).  pyghmi's own cleanup removes the
        first only on the first logout and by slot, not by identity; a
        session we gave up on must never be handed to a later call.
        """
        cls = ipmi_session.Session
        for sockaddr, ports in list(cls.bmc_handlers.items()):
            for port, session in list(ports.items()):
                if session is self:
                    del ports[port]
            if not ports:
                cls.bmc_handlers.pop(sockaddr, None)
        for key, session in list(cls.initting_sessions.items()):
            if session is self:
                del cls.initting_sessions[key]
        with ipmi_util.protect(ipmi_session.KEEPALIVE_SESSIONS):
            cls.keepalive_sessions.pop(self, None)
        with ipmi_util.protect(ipmi_session.WAITING_SESSIONS):
            cls.waiting_sessions.pop(self, None)

    def discard(self) -> None:
        """Give up on this session (a failed attempt): broken and forgotten; never raises."""
        try:
            if not getattr(self, "broken", False):
                self._mark_broken("abandoned")
            self._forget()
        except Exception as exc:  # must not hide the attempt's error
            LOG.debug("discarding a pyghmi session failed: %r", exc)


class _Command(ipmi_command.Command):
    """``Command`` bound to a :class:`_Session`.

    ``Command.__init__`` always builds a plain ``Session``; these are the
    attributes it sets, with our session instead.
    """

    def __init__(self, bmc: str, userid: bytes, password: bytes, port: int, privlevel: int | None = None) -> None:
        self.onlogon = None
        self.bmc = bmc
        self._sdrcachedir = None
        self._sdr = None
        self._oem = None
        self._oemknown = False
        self._netchannel = None
        self._ipv6support = None
        self.certverify = None
        self.kwargs: dict[str, Any] = {}
        self.ipmi_session = _Session(bmc=bmc, userid=userid, password=password, port=port, privlevel=privlevel)


class BMCClient:
    """Power and boot-device control of one BMC over IPMI (lanplus).

    :param credentials: where the BMC is and how to log in.
    :param timeout: seconds one attempt on an open session may take.
    :param login_timeout: seconds a login may take when an attempt needs one
        (pyghmi's own gives up after ~4.9 s when nothing answers; this is the
        hard bound).  One call never takes longer than :attr:`call_bound`.
    :param retries: extra attempts after a timeout (never after a refusal).
    :param backoff: seconds before the first retry; doubles each time.
    :param max_backoff: cap of one backoff sleep.
    :param jitter: each sleep is scaled by a random factor in ``1 +- jitter``.
    :param sleep: injectable for tests.
    """

    def __init__(self, credentials: BMCCredentials, *, timeout: float = 5.0, retries: int = 2, backoff: float = 0.5,
                 max_backoff: float = 4.0, jitter: float = 0.5, login_timeout: float = LOGIN_TIMEOUT,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.credentials = credentials
        self.timeout = timeout
        self.login_timeout = login_timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.jitter = jitter
        self._sleep = sleep
        self._session: _Session | None = None

    def __repr__(self) -> str:
        return f"BMCClient({self.credentials!r})"

    @property
    def call_bound(self) -> float:
        """Seconds one public call can take at most: every attempt's login and
        command, each deadline's overshoot (one wait slice plus the I/O
        thread's grace), and every backoff sleep at its longest."""
        attempts = self.retries + 1
        per_attempt = self.login_timeout + self.timeout + 2 * (WAIT_SLICE + IO_STALL_GRACE)
        backoff = sum(min(self.max_backoff, self.backoff * 2.0 ** i) * (1 + self.jitter)
                      for i in range(attempts - 1))
        return attempts * per_attempt + backoff

    # --- public API -----------------------------------------------------------
    def get_power(self) -> str:
        """``'on'`` or ``'off'``.

        :raises BMCError: refused, failed or no answer.
        """
        what = "read the power state"

        def action(cmd: _Command) -> str:
            response = self._raw(cmd, what, netfn=0, command=1)
            return "on" if response["data"][0] & 1 else "off"

        return self._call(what, action)

    def set_power(self, action: str) -> None:
        """Send a power command and return without waiting for the transition.

        :param action: ``on``, ``off``, ``soft`` (ACPI), ``cycle`` or ``reset``.
        :raises ValueError: unknown action.
        :raises BMCError: refused, failed or no answer.
        """
        try:
            directive = _CHASSIS_CONTROL[PowerAction(str(action))]
        except ValueError:
            raise ValueError(f"unknown power action {action!r}; expected one of "
                             f"{', '.join(PowerAction)}") from None
        what = f"power {action}"
        self._call(what, lambda cmd: self._raw(cmd, what, netfn=0, command=2, data=[directive]))

    def get_boot_device(self) -> BootSetting:
        """The boot device override and its flags.

        :raises BMCError: refused, failed or no answer.
        """
        what = "read the boot device"

        def action(cmd: _Command) -> BootSetting:
            result = self._checked(cmd.get_bootdev(), what)
            device = result.get("bootdev")
            name = _FROM_PYGHMI_BOOT.get(device, device) if isinstance(device, str) else f"selector-{device}"
            return BootSetting(device=name, persistent=bool(result.get("persistent")),
                               uefi=bool(result.get("uefimode")))

        return self._call(what, action)

    def set_boot_device(self, device: str, persistent: bool = False, uefi: bool = False) -> None:
        """Set the boot device for the next boot (every boot if ``persistent``).

        :raises ValueError: unknown device.
        :raises BMCError: refused, failed or no answer.
        """
        if device not in _TO_PYGHMI_BOOT:
            raise ValueError(f"unknown boot device {device!r}; expected one of {', '.join(BOOT_DEVICES)}")
        what = f"set the boot device to {device}"
        self._call(what, lambda cmd: self._checked(
            cmd.set_bootdev(_TO_PYGHMI_BOOT[device], persist=persistent, uefiboot=uefi), what))

    def check_credentials(self) -> str:
        """Log in (or reuse the session) and read the power state.

        Cheap: one round trip on an open session, a login plus one otherwise.
        A wrong password never matches an open session (pyghmi keys sessions
        by password too), so it is always tried against the BMC.

        :returns: the power state read on the way.
        :raises BMCError: the credentials were refused, or no answer.
        """
        return self.get_power()

    def close(self) -> None:
        """Log out of the session this client last used (others re-login)."""
        session, self._session = self._session, None
        if session is None or not getattr(session, "logged", 0):
            return
        try:
            session.logout()
        except (pyghmi_exc.IpmiException, OSError) as exc:
            LOG.debug("logout from BMC %s failed: %s", self.credentials.endpoint, exc)

    # --- internals --------------------------------------------------------------
    def _command(self) -> _Command:
        """A ``Command`` on a logged-in session; a login is bounded by ``login_timeout``."""
        creds = self.credentials
        # Read by _Session.__init__: the login inside pyghmi's Session.__init__
        # (or the wait for a cached session still logging in) gets a deadline too.
        _constructing.deadline = ipmi_util._monotonic_time() + self.login_timeout
        _constructing.session = None
        try:
            cmd = _Command(creds.address, creds.username.encode("utf-8"), creds.password.encode("utf-8"),
                           creds.port, creds.priv_level)
        finally:
            _constructing.deadline = None
        self._session = cmd.ipmi_session
        return cmd

    def _attempt(self, action: Callable[[_Command], T]) -> T:
        """One attempt; a session it gave up on is evicted from pyghmi's caches."""
        session: _Session | None = None
        try:
            cmd = self._command()
            session = cmd.ipmi_session
            # No silent re-login inside a command: pyghmi's nested login
            # waits for the in-flight command to expire first.  A timed-out
            # command fails this attempt instead; the next one logs in.
            session.logontries = 0
            # pyghmi's clock (os.times()[4], 10 ms ticks), not time.monotonic()
            session.call_deadline = ipmi_util._monotonic_time() + self.timeout
            return action(cmd)
        except BMCError:
            raise  # a definite answer (an error completion code): the session is sound
        except BaseException:
            # Timed out, refused, malformed reply, or interrupted (even half-way
            # through a login): never leave the session for pyghmi's cache to
            # hand half-dead to the next call.
            failed = session if session is not None else getattr(_constructing, "session", None)
            if isinstance(failed, _Session):
                failed.discard()
            raise
        finally:
            if session is not None:
                # A stale deadline must not fire in a later keepalive on this session.
                session.call_deadline = None

    def _call(self, what: str, action: Callable[[_Command], T]) -> T:
        """Run ``action`` on a (re)used session, retrying timeouts only.

        :raises BMCError: refused, failed, or no answer after every attempt.
        """
        endpoint = self.credentials.endpoint
        attempts = self.retries + 1
        start = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(action)
            except (pyghmi_exc.IpmiException, _Timeout) as exc:
                message = str(exc)
                if _is_auth_error(message):
                    raise BMCError(f"BMC {endpoint} rejected the password for user "
                                   f"{self.credentials.username!r}; check the node's ipmi_username "
                                   f"and ipmi_password", bmc=endpoint) from exc
                if not isinstance(exc, _Timeout) and not _is_timeout(message):
                    raise BMCError(f"BMC {endpoint} could not {what}: {message}", bmc=endpoint) from exc
            except socket.gaierror as exc:
                raise BMCError(f"BMC address {self.credentials.address!r} does not resolve: "
                               f"{exc.strerror}", bmc=endpoint) from exc
            except (AssertionError, IndexError, KeyError, TypeError) as exc:
                # pyghmi asserts on (and indexes into) replies without checking
                # their length; a malformed reply lands here.
                raise BMCError(f"BMC {endpoint} sent a malformed reply when asked to {what}",
                               bmc=endpoint) from exc
            if attempt < attempts:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                delay *= random.uniform(1 - self.jitter, 1 + self.jitter)
                LOG.info("BMC %s did not answer (attempt %d of %d to %s); retrying in %.2f s",
                         endpoint, attempt, attempts, what, delay)
                self._sleep(delay)
        elapsed = time.monotonic() - start
        raise BMCError(f"BMC {endpoint} did not answer within {elapsed:.0f} s "
                       f"({attempts} attempt{'s' if attempts > 1 else ''}) when asked to {what}; "
                       f"check its address, port and network", bmc=endpoint)

    def _raw(self, cmd: _Command, what: str, **kwargs: Any) -> dict[str, Any]:
        """One raw IPMI request; an error reply becomes BMCError or _Timeout."""
        return cast("dict[str, Any]", self._checked(cmd.raw_command(**kwargs), what))

    def _checked(self, result: Any, what: str) -> Any:
        """Turn a returned ``{'error': ...}`` or completion code into an exception.

        :raises _Timeout: the error is a timeout (the caller retries).
        :raises BMCError: any other error.
        """
        if not isinstance(result, dict):
            return result
        message = result.get("error")
        if not message and result.get("code"):
            message = ipmi_util.get_ipmi_error(result) if "command" in result else f"code {result['code']:#x}"
        if not message:
            return result
        if _is_timeout(message):
            raise _Timeout(message)
        raise BMCError(f"BMC {self.credentials.endpoint} could not {what}: {message}",
                       bmc=self.credentials.endpoint)


def _is_auth_error(message: str) -> bool:
    return any(marker in message for marker in _AUTH_ERRORS)


def _is_timeout(message: Any) -> bool:
    if message is None:
        return False
    text = str(message)
    return text == "" or any(marker in text for marker in _TIMEOUT_ERRORS)
