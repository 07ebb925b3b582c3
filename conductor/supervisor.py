"""``conductor up``: API, workers and (by default) Redis on one box, supervised.

The supervisor starts the embedded Redis unless ``REDIS_URL`` is set,
upgrades the schema, then runs ``conductor api``, one ``conductor worker``
per ``--workers`` and one ``conductor callback-worker`` per
``--callback-workers`` as child processes with their logs in
``<data dir>/logs``.  A child that dies is restarted (with a growing
delay if it keeps dying).  SIGINT/SIGTERM stop everything in order:
API, workers (warm shutdown: the current step finishes), then Redis.

The children die with the supervisor whatever kills it: each gets SIGTERM
from the kernel when the supervisor dies (``PR_SET_PDEATHSIG``) and watches
its parent (:func:`conductor.procs.exit_with_parent`).  The supervisor
holds an exclusive lock on ``<data dir>/conductor.lock`` for its life, so
a second ``conductor up`` on the same data directory refuses to start; it
records its children in ``<data dir>/conductor.pids`` (pid and start time),
so that the next one, if this one was killed, stops any that survived.
The start-up check knows its own API by a random instance id the API
echoes in :data:`INSTANCE_HEADER`.

With ``dhcp_interface`` and ``dhcp_range`` set, dnsmasq is one more child
(started first: a DHCP server that cannot start stops ``conductor up``
before anything else runs), under the same rules, and a thread keeps its
host entries equal to the nodes booting from the network
(:mod:`conductor.dhcp`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3

from conductor import database, datadir, procs, tls
from conductor.auth import tokenfile, tokens
from conductor.dhcp.config import DhcpConfig
from conductor.dhcp.hosts import HostsDir
from conductor.dhcp.sync import HostsSync
from conductor.embedded_redis import EmbeddedRedis
from conductor.settings import Settings

LOG = logging.getLogger(__name__)
#: The API echoes the supervisor's ``CONDUCTOR_INSTANCE_ID`` in this header.
INSTANCE_HEADER = "X-Conductor-Instance"
#: How long dnsmasq may take to open its sockets and write its pid file.
DNSMASQ_START_WAIT = 10.0


class DataDirInUse(RuntimeError):
    """Another live ``conductor up`` holds the data directory."""


@dataclass
class Child:
    """A supervised child process."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    failures: int = 0
    started: float = 0.0
    restart_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            # A session of its own (Ctrl-C in the terminal reaches the
            # supervisor only, which stops children in order); the kernel's
            # SIGTERM when the supervisor dies (PR_SET_PDEATHSIG: sent when
            # the *thread* that started the child ends, so children are
            # started by threads that live as long as the supervisor).
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                preexec_fn=procs.die_with_parent(os.getpid()),
            )
        self.started = time.monotonic()

    @property
    def record(self) -> procs.ProcessRecord | None:
        """The running child's identity, for ``conductor.pids``."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return procs.ProcessRecord.of(self.name, self.proc.pid)

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM to it alone: it stops its own children)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        """Wait for the child until ``deadline`` (monotonic), then kill its process group.

        The group is killed before the child is reaped: until then its pid,
        which is the group's id (a session of its own), names no other
        process.  Nothing to do for a child already reaped.
        """
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            if not _wait_unreaped(self.proc.pid, deadline):
                LOG.warning("%s did not stop in time; killing it", self.name)
        except ChildProcessError:  # reaped meanwhile by another thread's poll()
            self.proc.wait()
            return
        # The group goes too: whatever the child left behind (its own children).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float) -> None:
        self.terminate()
        self.wait_or_kill(time.monotonic() + timeout)


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Whether child ``pid`` has exited by ``deadline`` (monotonic); it is left unreaped (a zombie).

    :raises ChildProcessError: it was reaped already.
    """
    delay = 0.0005
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        delay = min(delay * 2, remaining, 0.05)  # as Popen.wait(timeout) polls
        time.sleep(delay)
    return True


class Supervisor:
    """Runs the single-box deployment until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Whether this start created a new admin token file.
        self.new_admin_token = False
        self.redis: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self.stopping = threading.Event()
        #: Echoed by this supervisor's API (and no other server) in INSTANCE_HEADER.
        self.instance_id = secrets.token_hex(16)
        self._lock: int | None = None
        #: The DHCP server's configuration, once started; None when DHCP is not configured.
        self.dhcp: DhcpConfig | None = None
        self._dnsmasq: Child | None = None
        self._dhcp_sync: HostsSync | None = None
        self._dhcp_db: database.Database | None = None
        #: Whether this start recorded its URL in the user's registry of local services.
        self._registered = False

    @property
    def url(self) -> str:
        """The API's URL."""
        return self.settings.api_url

    def start(self, wait: float = 30.0) -> None:
        """Start Redis (embedded), migrate, start the children (dnsmasq first, if configured), wait for the API.

        :raises RuntimeError: something did not start.
        :raises InvalidInput: the settings cannot work (auth off on a public address, a malformed DHCP range...).
        """
        # The supervisor serves nothing: the API's modules (Flask) are loaded
        # by the API processes; this check is all it needs of them.
        from conductor.api import check_auth_settings

        settings = self.settings
        check_auth_settings(settings)
        tls.check(settings)
        self.dhcp = DhcpConfig.from_settings(settings)
        datadir.ensure_data_dir(settings)  # 0700, and the secret key on first start
        self._take_data_dir()
        _check_port_free(settings.api_host, settings.api_port)
        if not settings.redis_url:
            self.redis = EmbeddedRedis(settings.data_dir).start()
            settings = self.settings = settings.replace(redis_url=self.redis.url)
        database.upgrade(settings.sqlalchemy_url)
        if settings.auth_enabled:
            db = database.Database.from_settings(settings)
            try:
                self.new_admin_token = tokens.ensure_admin_token(db, settings)
            finally:
                db.dispose()
        # The CLI sends the local admin token to this URL only.
        settings.api_url_file.write_text(self.url + "\n", encoding="utf-8")
        if settings.auth_enabled:
            self._register()
        env = dict(os.environ)
        env.update(
            CONDUCTOR_DATA_DIR=str(settings.data_dir),
            DATABASE_URL=settings.sqlalchemy_url,
            REDIS_URL=settings.redis_url,
            CONDUCTOR_LOG_LEVEL=settings.log_level,
            # Workers give it to the agents they boot (boot configs).
            CONDUCTOR_AGENT_API_URL=settings.agent_url,
            # Children stop when this process is gone (conductor.procs.exit_with_parent).
            CONDUCTOR_SUPERVISOR_PID=str(os.getpid()),
            CONDUCTOR_INSTANCE_ID=self.instance_id,
        )
        if settings.virtual_media_url:
            # Workers give it to the BMCs they insert virtual media into (as the agent URL, above).
            env["CONDUCTOR_VIRTUAL_MEDIA_URL"] = settings.virtual_media_url
        exe = [sys.executable, "-m", "conductor"]
        logs = settings.data_dir / "logs"
        self.children = [
            Child(
                "api",
                [*exe, "api", "--host", settings.api_host, "--port", str(settings.api_port),
                 "--api-workers", str(settings.api_workers)],
                logs / "api.log",
                env=env,
            )
        ]
        self.children += [
            Child(f"worker-{i}", [*exe, "worker", "--workers", "1"], logs / f"worker-{i}.log", env=env)
            for i in range(settings.workers)
        ]
        self.children += [
            Child(f"callback-worker-{i}", [*exe, "callback-worker", "--workers", "1"],
                  logs / f"callback-worker-{i}.log", env=env)
            for i in range(settings.callback_workers)
        ]
        if self.dhcp is not None:
            self._start_dhcp(self.dhcp, env, logs / "dnsmasq.log")
        for child in self.children:
            if child.proc is None:
                child.start()
        self._record_children()
        self._wait_for_api(wait)

    def _start_dhcp(self, config: DhcpConfig, env: dict[str, str], log: Path) -> None:
        """Write dnsmasq's configuration and host entries, start it and wait until it is set up.

        :raises RuntimeError: dnsmasq is not installed, or exited at start
            (its reason, from its log, is in the message).
        """
        program = config.program()
        missing = config.missing_boot_files()
        if missing:
            LOG.warning("tftp_root %s has no %s: PXE firmware cannot load iPXE (install the Debian package "
                        "ipxe, or set tftp_root); machines already running iPXE still boot",
                        config.tftp_root, " or ".join(missing))
        if urllib.parse.urlsplit(config.boot_url).hostname in ("127.0.0.1", "localhost", "::1"):
            LOG.warning("Machines are sent the boot URL %s, on the loopback: set agent_api_url to an address "
                        "they reach", config.boot_url)
        config.write()
        self._dhcp_db = database.Database.from_settings(self.settings)
        self._dhcp_sync = HostsSync(self._dhcp_db, HostsDir(config.hosts_dir), self._reload_dnsmasq)
        self._dhcp_sync.sync()  # the entries are in place before dnsmasq first reads them
        config.pid_file.unlink(missing_ok=True)
        child = self._dnsmasq = Child("dnsmasq", config.argv(program), log, env=env)
        self.children.append(child)
        start_of_log = log.stat().st_size if log.exists() else 0
        child.start()
        deadline = time.monotonic() + DNSMASQ_START_WAIT
        while config.running_pid() != child.proc.pid:  # type: ignore[union-attr]
            if child.proc.poll() is not None or time.monotonic() > deadline:  # type: ignore[union-attr]
                with open(log, "rb") as out:
                    out.seek(start_of_log)
                    said = out.read().decode(errors="replace").strip()[-2000:]
                raise RuntimeError(f"dnsmasq did not start on {config.interface}: {said or 'no message'} "
                                   f"(log: {log})")
            time.sleep(0.05)
        self._dhcp_sync.start()

    def _reload_dnsmasq(self) -> bool:
        """Have dnsmasq re-read its host entries (SIGHUP); False when it cannot be asked yet."""
        child = self._dnsmasq
        if child is None or child.proc is None or child.proc.poll() is not None:
            return True  # not running: the restart reads the directory as it is
        if self.dhcp is None or self.dhcp.running_pid() != child.proc.pid:
            # Restarted and still setting up: SIGHUP might kill it before its
            # handler is installed, and it may have read the removed file.
            return False
        child.proc.send_signal(signal.SIGHUP)
        return True

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the live supervisor of the data directory."""
        return self.settings.data_dir / "conductor.lock"

    @property
    def pids_file(self) -> Path:
        """The processes the supervisor started (pid, start time), for the next one if it is killed."""
        return self.settings.data_dir / "conductor.pids"

    def _take_data_dir(self) -> None:
        """Lock the data directory for this supervisor's life; stop what a killed predecessor left.

        :raises DataDirInUse: another live supervisor holds it.
        """
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise DataDirInUse(
                f"The data directory {self.settings.data_dir} is in use by another `conductor up` "
                f"(pid {holder}); stop it first, or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd
        self._stop_orphans()

    def _stop_orphans(self) -> None:
        """Stop the processes a killed predecessor recorded that still run (the same processes, not reused pids)."""
        try:
            recorded = [procs.ProcessRecord(**entry) for entry in json.loads(self.pids_file.read_text())]
        except FileNotFoundError:
            return
        except (ValueError, TypeError) as exc:
            LOG.warning("Ignoring unreadable %s (%s)", self.pids_file, exc)
            recorded = []
        # Redis last: the others may still be saving to it.
        for record in procs.kill_tree([r for r in recorded if r.name != "redis"], procs.ORPHAN_GRACE) + procs.kill_tree(
            [r for r in recorded if r.name == "redis"], procs.ORPHAN_GRACE
        ):
            LOG.warning("Stopped %s (pid %d), left running by a `conductor up` that was killed",
                        record.name, record.pid)
        self.pids_file.unlink(missing_ok=True)

    def _record_children(self) -> None:
        records = [c.record for c in self.children]
        if self.redis is not None and self.redis.pid is not None:
            records.append(procs.ProcessRecord.of("redis", self.redis.pid))
        entries = [dataclasses.asdict(r) for r in records if r is not None]
        tmp = self.pids_file.with_suffix(".pids.tmp")
        tmp.write_text(json.dumps(entries) + "\n", encoding="utf-8")
        tmp.replace(self.pids_file)

    def _release_data_dir(self) -> None:
        if self._lock is None:
            return
        self.pids_file.unlink(missing_ok=True)
        os.close(self._lock)  # releases the flock
        self._lock = None

    def _wait_for_api(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            api = self.children[0]
            if api.proc is not None and api.proc.poll() is not None:
                raise RuntimeError(f"The API exited at start; see {api.log}")
            try:
                # (Connection: close: a kept-alive probe would hold an API worker's stop for 2 s.)
                # The certificate is not verified: its name need not be api_host (0.0.0.0, say),
                # and the instance header below proves which server answered.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                    response = requests.get(self.url + "/", timeout=1, headers={"Connection": "close"},
                                            verify=False)
            except requests.exceptions.SSLError as exc:
                if self.settings.tls_client_ca_file and _asks_for_client_certificate(exc):
                    # Mutual TLS: the supervisor has no client certificate, so the instance
                    # header cannot be read. The port was free before the API started, and
                    # the API still runs: the server asking for a certificate is ours.
                    return
                time.sleep(0.1)
                continue
            except requests.RequestException:
                time.sleep(0.1)
                continue
            if response.headers.get(INSTANCE_HEADER) != self.instance_id:
                raise RuntimeError(
                    f"Another server answers on {self.url}, not this conductor's API; "
                    "stop it, or choose another --port"
                )
            if response.ok:
                return
            time.sleep(0.1)
        raise RuntimeError(f"The API did not answer on {self.url} within {wait:.0f} s; see {self.children[0].log}")

    def watch(self) -> None:
        """Restart children that die, until :meth:`stop` is called."""
        while not self.stopping.wait(0.5):
            for child in self.children:
                if child.proc is None or child.proc.poll() is None:
                    continue
                now = time.monotonic()
                if child.restart_at == 0.0:
                    child.failures = child.failures + 1 if now - child.started < 60 else 1
                    delay = min(2 ** (child.failures - 1), 30)
                    child.restart_at = now + delay
                    LOG.warning("%s exited with %s; restarting in %d s (log: %s)",
                                child.name, child.proc.returncode, delay, child.log)
                elif now >= child.restart_at:
                    child.restart_at = 0.0
                    child.start()
                    self._record_children()

    def stop(self) -> None:
        """Stop the API and the workers (warm, all at once), then dnsmasq, then Redis; release the data directory.

        The API and the workers stop side by side: a request the API accepts
        meanwhile is committed before it is queued, and the queue outlives the
        workers (it is in Redis, or rebuilt from the database by the sweeper),
        so the next start runs it. Each child has its own deadline.
        """
        self.stopping.set()
        if self._dhcp_sync is not None:
            if self._dhcp_sync.is_alive():
                self._dhcp_sync.stop()
            self._dhcp_sync = None
        stopping = [c for c in self.children if c.name != "dnsmasq"]
        for child in stopping:
            child.terminate()
        began = time.monotonic()
        for child in stopping:
            if child.name == "api":
                timeout = 15.0  # gunicorn's graceful_timeout is 10 s
            elif child.name.startswith("callback-worker"):
                # A delivery in flight lasts at most about two timeouts.
                timeout = 2 * self.settings.callback_timeout + 5
            else:
                timeout = self.settings.job_timeout
            child.wait_or_kill(began + timeout)
        # DHCP last: a node the workers were still booting could ask until then.
        for child in self.children:
            if child.name == "dnsmasq":
                child.stop(timeout=10.0)
        if self._dhcp_db is not None:
            self._dhcp_db.dispose()
            self._dhcp_db = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self._registered:
            self._registered = False
            try:
                tokenfile.unregister(self.url, self.settings.admin_token_file)
            except OSError as exc:
                LOG.warning("Could not remove %s from %s: %s", self.url, tokenfile.registry_path(), exc)
        self._release_data_dir()

    def _register(self) -> None:
        """Record this URL and its token file for the CLI of this user (any data directory)."""
        try:
            tokenfile.register(self.url, self.settings.admin_token_file)
        except OSError as exc:  # a read-only home: only the default data directory is found then
            LOG.warning("Could not record %s in %s (the CLI finds its token only with CONDUCTOR_DATA_DIR "
                        "set): %s", self.url, tokenfile.registry_path(), exc)
            return
        self._registered = True


def _asks_for_client_certificate(error: Exception) -> bool:
    """Whether a TLS failure is a server's refusal of a client without a certificate."""
    text = str(error).lower()
    return "certificate required" in text or "certificate_required" in text or "handshake failure" in text


def _check_port_free(host: str, port: int) -> None:
    """Fail fast when another process listens on the API's address.

    :raises RuntimeError: the port is taken.
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):  # SO_REUSEADDR, as gunicorn binds
            pass
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise RuntimeError(f"Cannot listen on {host}:{port}: {exc}") from None
        raise RuntimeError(
            f"Port {port} on {host} is in use by another process (not this conductor); "
            "stop it, or choose another --port"
        ) from None
