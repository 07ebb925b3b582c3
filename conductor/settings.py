"""Settings: one frozen object, loaded once and passed in.

Sources, later ones winning:

1. the defaults below;
2. a TOML file: ``$CONDUCTOR_CONFIG``, else ``<data dir>/conductor.toml``
   when it exists (keys are the field names, at top level);
3. environment variables: ``CONDUCTOR_<FIELD>`` for any field, plus the
   conventional ``DATABASE_URL`` and ``REDIS_URL``;
4. explicit overrides (command-line flags).

The data directory is ``$CONDUCTOR_DATA_DIR``, else
``$XDG_DATA_HOME/conductor``, else ``~/.local/share/conductor``.

Every setting belongs to one subsystem (:class:`Group`), recorded in its
field's metadata: ``Settings.group("webhooks")`` names the webhook
settings, :meth:`Settings.grouped` shows values by subsystem, and the
README's tables follow the same groups.  Access stays flat
(``settings.callback_timeout``): a group is how settings are found and
documented, not a second way to reach them.

"callback" means webhooks only.  The agent waits of the ``pxe`` deploy
were once ``*_callback_timeout``; those names (attribute, keyword, TOML
key, environment variable) still work for one release, with a warning:
see :data:`RENAMED`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import socket
import tomllib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from conductor.exceptions import InvalidInput

LOG = logging.getLogger(__name__)


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The data directory used when none is configured."""
    env = os.environ if env is None else env
    if env.get("CONDUCTOR_DATA_DIR"):
        return Path(env["CONDUCTOR_DATA_DIR"]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(base) / "conductor"


class Group(enum.StrEnum):
    """The subsystems settings are grouped by, in the order they are shown."""

    #: Where the state lives: data directory, database, Redis, the keys sealing secrets.
    STORAGE = "storage"
    #: The HTTP API and its authentication.
    API = "api"
    #: The conductor processes: how many, their names, their liveness.
    CONDUCTORS = "conductors"
    #: The work queue: jobs, timeouts, and the sweep that recovers lost work.
    QUEUE = "queue"
    #: Admission control kept in the settings (the rates live in the database: ``conductor throttle``).
    THROTTLE = "throttle"
    #: Power changes and the power state observer, whatever the driver.
    POWER = "power"
    #: The IPMI driver.
    IPMI = "ipmi"
    #: The Redfish driver.
    REDFISH = "redfish"
    #: Deploy, clean and inspect with an agent (the ``pxe`` deploy interface).
    DEPLOY = "deploy"
    #: Images: registered images and the cache of remote ones.
    IMAGES = "images"
    #: DHCP and TFTP for network boot: dnsmasq run by ``conductor up`` (see conductor/dhcp/).
    DHCP = "dhcp"
    #: Callbacks: webhook deliveries to subscribers and ``callback_url``.
    WEBHOOKS = "webhooks"
    #: The event stream (``GET /v1/events``) and long polling (see docs/events.md).
    EVENTS = "events"
    #: How long finished requests, deliveries and history are kept.
    RETENTION = "retention"
    LOGGING = "logging"


def _setting(group: Group, default: Any = dataclasses.MISSING, *,
             factory: Any = dataclasses.MISSING, secret: bool = False) -> Any:
    """A field of ``group``.  A ``secret`` one stays out of ``repr`` and is masked by :meth:`Settings.grouped`."""
    return dataclasses.field(default=default, default_factory=factory, repr=not secret,
                             metadata={"group": group, "secret": secret})


class _Renamed:
    """The old name of a renamed setting, as an attribute: reads the new one, with a DeprecationWarning."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.old = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, settings: Settings | None, owner: type | None = None) -> Any:
        if settings is None:
            return self
        warnings.warn(f"{self.old} is deprecated and will be removed in the next release: use {self.new}.",
                      DeprecationWarning, stacklevel=2)
        return getattr(settings, self.new)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a conductor process can be told.  Durations are seconds."""

    # --- storage ---------------------------------------------------------------------------
    data_dir: Path = _setting(Group.STORAGE, factory=default_data_dir)
    #: SQLAlchemy URL; empty means the SQLite file ``<data_dir>/conductor.sqlite``.
    database_url: str = _setting(Group.STORAGE, "", secret=True)
    #: Redis URL; empty means the embedded Redis of ``conductor up``.
    redis_url: str = _setting(Group.STORAGE, "", secret=True)
    #: Prefix of every Redis key and RQ queue name of this deployment (see conductor/keys.py).
    redis_namespace: str = _setting(Group.STORAGE, "conductor")
    #: Fernet keys sealing secrets at rest (BMC passwords, webhook signing
    #: secrets; see conductor/secretbox.py), comma-separated, current first.
    #: Empty means the key file ``<data_dir>/secret.key``, created on first
    #: start.  Deployments on several hosts must give every host the same keys.
    secret_key: str = _setting(Group.STORAGE, "", secret=True)

    # --- api -------------------------------------------------------------------------------
    api_host: str = _setting(Group.API, "127.0.0.1")
    api_port: int = _setting(Group.API, 6385)
    api_workers: int = _setting(Group.API, 2)
    #: Threads per API process (gunicorn's ``gthread`` worker): a slow client
    #: or a long download (an image, an agent kernel) holds one thread, not
    #: the process, and connections are kept alive between requests.  1 runs
    #: gunicorn's ``sync`` worker (one request per process at a time,
    #: ``Connection: close``).
    api_threads: int = _setting(Group.API, 8)
    #: Seconds a threaded API worker waits on a client that neither sends nor
    #: reads (a stalled download) before it drops the connection and frees
    #: the thread.  (The sync worker: gunicorn kills the process instead.)
    api_client_timeout: float = _setting(Group.API, 60.0)
    #: Most tokens of a client's read budget (``read_rate``/``read_burst``)
    #: an API process takes from Redis at once and spends locally, so that
    #: a fast poller costs one Redis round trip per lease instead of per read
    #: (conductor/throttle/buckets.py ``Leases``: the rate holds; the burst
    #: may be exceeded, or a client refused early, by up to one lease per
    #: process).  1 checks every read in Redis.
    read_budget_lease: int = _setting(Group.API, 64)
    #: Whether the API requires bearer tokens.  Switching it off is only
    #: allowed while ``api_host`` is a loopback address.
    auth_enabled: bool = _setting(Group.API, True)
    #: HTTPS (see conductor/tls.py and docs/production.md): the API's
    #: certificate (PEM, chain after it) and its private key; both empty
    #: serve plain HTTP.  With ``tls_client_ca_file`` too, clients must
    #: present a certificate signed by that CA (mutual TLS).
    tls_cert_file: str = _setting(Group.API, "")
    tls_key_file: str = _setting(Group.API, "")
    tls_client_ca_file: str = _setting(Group.API, "")
    #: Reverse proxies in front of the API whose ``X-Forwarded-For``,
    #: ``-Proto``, ``-Host`` and ``-Port`` are believed (werkzeug's
    #: ProxyFix, that many hops); 0 ignores them.  Per-address budgets
    #: (admission) and the URLs the API writes depend on it: set it to the
    #: number of proxies, never more (a client could then choose its address).
    proxy_trusted_hops: int = _setting(Group.API, 0)

    # --- conductors ------------------------------------------------------------------------
    workers: int = _setting(Group.CONDUCTORS, 1)
    #: Base of this host's conductor names; defaults to the host name.
    conductor_name: str = _setting(Group.CONDUCTORS, "")
    #: How often a conductor records that it is alive, and after how long
    #: without a heartbeat the others declare it dead.
    heartbeat_interval: float = _setting(Group.CONDUCTORS, 5.0)
    heartbeat_timeout: float = _setting(Group.CONDUCTORS, 30.0)

    # --- queue -----------------------------------------------------------------------------
    #: How often each conductor sweeps for dead conductors and lost jobs.
    sweep_interval: float = _setting(Group.QUEUE, 10.0)
    #: A queued request older than this with no job in Redis is re-enqueued.
    requeue_after: float = _setting(Group.QUEUE, 30.0)
    #: A job that finds its node reserved retries for this long, then fails.
    node_locked_timeout: float = _setting(Group.QUEUE, 60.0)
    #: RQ job timeout (one step of a request, never a whole transition).
    job_timeout: float = _setting(Group.QUEUE, 120.0)

    # --- throttle --------------------------------------------------------------------------
    #: How long an ``Idempotency-Key`` is remembered.
    idempotency_retention: float = _setting(Group.THROTTLE, 86400.0)

    # --- power -----------------------------------------------------------------------------
    #: How long the BMC may take to report the target power state.
    power_timeout: float = _setting(Group.POWER, 60.0)
    #: First and longest interval between power state polls (doubling).
    power_poll_initial: float = _setting(Group.POWER, 0.25)
    power_poll_max: float = _setting(Group.POWER, 4.0)
    #: How long the OS may take to honour a soft power off (ACPI), and
    #: whether a hard power off follows when it does not.
    soft_power_off_timeout: float = _setting(Group.POWER, 30.0)
    soft_power_off_fallback: bool = _setting(Group.POWER, True)
    #: Power state observer (see docs/ipmi.md): how often one conductor reads
    #: the power state of every idle node (0: never), how many nodes one job
    #: reads, and after how many failed reads in a row a node goes into
    #: maintenance (fault ``power failure``; out again when its BMC answers).
    power_sync_interval: float = _setting(Group.POWER, 60.0)
    power_sync_batch: int = _setting(Group.POWER, 50)
    power_sync_max_failures: int = _setting(Group.POWER, 3)

    # --- ipmi ------------------------------------------------------------------------------
    #: IPMI driver (see docs/ipmi.md).  One attempt of a call on an open
    #: session may take ``ipmi_timeout`` (a login ~5 s more); a timed-out
    #: attempt is retried ``ipmi_retries`` times after ``ipmi_backoff``
    #: seconds (doubling, capped at ``ipmi_max_backoff``, each scaled by a
    #: random factor in 1 +/- ``ipmi_jitter``).  A refused password is never
    #: retried.
    ipmi_timeout: float = _setting(Group.IPMI, 5.0)
    ipmi_retries: int = _setting(Group.IPMI, 2)
    ipmi_backoff: float = _setting(Group.IPMI, 0.5)
    ipmi_max_backoff: float = _setting(Group.IPMI, 4.0)
    ipmi_jitter: float = _setting(Group.IPMI, 0.5)
    #: At most one IPMI call in flight per BMC across every conductor (a
    #: Redis lock per BMC); a step that finds the BMC busy is polled again
    #: after ``ipmi_busy_retry`` seconds.  The least time between two
    #: commands to a BMC is the live throttle knob ``bmc_min_interval``.
    ipmi_one_in_flight: bool = _setting(Group.IPMI, True)
    ipmi_busy_retry: float = _setting(Group.IPMI, 0.1)

    # --- redfish ---------------------------------------------------------------------------
    #: Redfish driver (see docs/redfish.md).  One HTTP request may take
    #: ``redfish_connect_timeout`` to connect (TLS included) and
    #: ``redfish_timeout`` to answer (a node's ``driver_info`` may set its
    #: own); a connection failure or timeout is retried ``redfish_retries``
    #: times after ``redfish_backoff`` seconds (doubling, jittered).  A 503
    #: is honoured: the step comes back after its ``Retry-After``, for at
    #: most ``redfish_busy_timeout`` seconds of 503s in a row.  The
    #: connection to a BMC stays open between calls unless
    #: ``redfish_keepalive`` is off.  One call in flight per system, and
    #: ``bmc_min_interval`` between commands, as for IPMI.  Every worker
    #: shares one session per BMC and login (its token sealed in Redis):
    #: a new worker adopts it for ``redfish_session_ttl`` seconds after the
    #: login, then the next first contact logs in again (0: no sharing, a
    #: session per worker and BMC).
    redfish_timeout: float = _setting(Group.REDFISH, 10.0)
    redfish_connect_timeout: float = _setting(Group.REDFISH, 5.0)
    redfish_retries: int = _setting(Group.REDFISH, 1)
    redfish_backoff: float = _setting(Group.REDFISH, 0.5)
    redfish_busy_timeout: float = _setting(Group.REDFISH, 60.0)
    redfish_keepalive: bool = _setting(Group.REDFISH, True)
    redfish_one_in_flight: bool = _setting(Group.REDFISH, True)
    redfish_busy_retry: float = _setting(Group.REDFISH, 0.1)
    redfish_session_ttl: float = _setting(Group.REDFISH, 3600.0)

    # --- deploy ----------------------------------------------------------------------------
    #: Whether undeploy and provide run automated cleaning.
    automated_clean: bool = _setting(Group.DEPLOY, True)
    #: How long a node may wait for its agent's call-back in ``wait
    #: call-back``, ``clean wait`` and ``inspect wait`` before the watchdog
    #: fails it.
    deploy_agent_timeout: float = _setting(Group.DEPLOY, 1800.0)
    clean_agent_timeout: float = _setting(Group.DEPLOY, 1800.0)
    inspect_agent_timeout: float = _setting(Group.DEPLOY, 1800.0)
    #: The names these had until "callback" came to mean webhooks only.
    deploy_callback_timeout = _Renamed("deploy_agent_timeout")
    clean_callback_timeout = _Renamed("clean_agent_timeout")
    inspect_callback_timeout = _Renamed("inspect_agent_timeout")
    #: How often (at most) one conductor of the deployment checks for overdue waits.
    wait_check_interval: float = _setting(Group.DEPLOY, 1.0)
    #: The "TFTP root" of the pxe deploy: per-node boot configs (kernel
    #: parameters: API URL and agent token) the booting agent reads.
    #: Empty means ``<data_dir>/pxe``.
    pxe_root: str = _setting(Group.DEPLOY, "")
    #: The API URL agents call; empty means ``http://<api_host>:<api_port>``.
    agent_api_url: str = _setting(Group.DEPLOY, "")
    #: The API URL BMCs fetch virtual media ISOs from (``redfish-virtual-media``:
    #: ``<url>/v1/boot/media/<ticket>``), when their network reaches the API
    #: at another address than the agents'; empty means the agents' URL.
    virtual_media_url: str = _setting(Group.DEPLOY, "")
    #: Where the agent ramdisk's ``agent.kernel`` and ``agent.initramfs``
    #: are served from (``GET /v1/boot/files/<name>``); empty means
    #: ``<data_dir>/ramdisk``, where ``conductor ramdisk build`` writes them.
    ramdisk_dir: str = _setting(Group.DEPLOY, "")
    #: Kernel parameters added to the agent's in its boot script: where its
    #: console (and the agent's log lines) go.  The last ``console=`` is
    #: the one the agent writes to: the serial port here, as on a server
    #: whose BMC offers serial-over-LAN.  Space-separated, no quotes.
    agent_kernel_params: str = _setting(Group.DEPLOY, "console=tty0 console=ttyS0,115200n8")
    #: What cleaning erases when the request does not say (``erase``):
    #: ``metadata`` (partition tables and signatures at both ends of each
    #: disk) or ``full`` (a zero pass over every disk).
    clean_erase: str = _setting(Group.DEPLOY, "metadata")

    # --- images ----------------------------------------------------------------------------
    #: Images (see docs/images.md).  Registered images (``conductor image
    #: add``) live in ``image_dir``; remote (http/https) images are downloaded
    #: once into ``image_cache_dir`` (empty: ``<data_dir>/images`` and
    #: ``<data_dir>/image-cache``), which holds at most ``image_cache_size``
    #: GiB (least recently used evicted first).  ``image_cache_size = 0``
    #: turns the cache off: agents then download remote images from their
    #: source themselves.  A download fails when its source sends nothing
    #: for ``image_download_timeout`` seconds; a deploy whose image is not
    #: ready (downloaded, or its checksum computed) ``image_prepare_timeout``
    #: seconds after it began preparing it fails.  ``file://`` images may come
    #: only from under ``image_file_dirs`` (comma-separated directories; empty:
    #: no ``file://`` images), never from the data directory: whoever may
    #: deploy could otherwise have any file the conductor can read written to
    #: a machine they hold.
    image_dir: str = _setting(Group.IMAGES, "")
    image_cache_dir: str = _setting(Group.IMAGES, "")
    image_cache_size: float = _setting(Group.IMAGES, 50.0)
    image_download_timeout: float = _setting(Group.IMAGES, 60.0)
    image_prepare_timeout: float = _setting(Group.IMAGES, 3600.0)
    image_file_dirs: str = _setting(Group.IMAGES, "/srv/images")

    # --- dhcp ------------------------------------------------------------------------------
    #: The interface dnsmasq serves DHCP and TFTP on, and the addresses it
    #: leases (``first,last``, IPv4, inside the interface's subnet).  Both
    #: empty: ``conductor up`` runs no DHCP server (the default).  Set both,
    #: or neither.
    dhcp_interface: str = _setting(Group.DHCP, "")
    dhcp_range: str = _setting(Group.DHCP, "")
    #: The dnsmasq program (Debian package ``dnsmasq-base``), by name or path.
    dnsmasq_path: str = _setting(Group.DHCP, "dnsmasq")
    #: What dnsmasq's TFTP serves: the iPXE binaries legacy PXE firmware
    #: chain-loads (``undionly.kpxe``, ``snponly.efi``: Debian package ``ipxe``).
    tftp_root: str = _setting(Group.DHCP, "/usr/lib/ipxe")

    # --- webhooks --------------------------------------------------------------------------
    #: Callback (webhook) delivery: worker processes started by ``up``; how
    #: long a receiver may take (to connect, and for each read); the delays
    #: in seconds before each retry (the first attempt is immediate; the
    #: last delay repeats) and for how long after the event attempts go on;
    #: the +/- fraction of random jitter applied to each delay.
    callback_workers: int = _setting(Group.WEBHOOKS, 1)
    callback_timeout: float = _setting(Group.WEBHOOKS, 10.0)
    callback_retry_schedule: str = _setting(Group.WEBHOOKS, "5,30,120,600,1800,3600")
    callback_retry_window: float = _setting(Group.WEBHOOKS, 86400.0)
    callback_jitter: float = _setting(Group.WEBHOOKS, 0.2)
    #: How often each callback worker looks for due deliveries in the database.
    callback_poll_interval: float = _setting(Group.WEBHOOKS, 0.5)
    #: Callback destinations: comma-separated host names (``*.example.com``)
    #: and networks (CIDR).  A non-empty allow list admits only what it
    #: names; the deny list always wins.  Loopback is allowed by default.
    callback_allow: str = _setting(Group.WEBHOOKS, "")
    callback_deny: str = _setting(
        Group.WEBHOOKS, "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32,metadata.google.internal"
    )
    #: How long a rotated-out signing secret keeps signing (both are sent).
    callback_secret_overlap: float = _setting(Group.WEBHOOKS, 86400.0)

    # --- events ----------------------------------------------------------------------------
    #: The event stream (docs/events.md).  Events are kept in a Redis stream
    #: for ``event_retention`` seconds, and at most ``event_max_length`` of
    #: them: a client resumes (``Last-Event-ID``) without loss within that.
    event_retention: float = _setting(Group.EVENTS, 3600.0)
    event_max_length: int = _setting(Group.EVENTS, 100_000)
    #: Seconds between heartbeat comments on an idle stream (proxies close
    #: silent connections); also how often a stream checks its token.
    event_heartbeat: float = _setting(Group.EVENTS, 15.0)
    #: Events one stream may have waiting for its client; a client that
    #: falls further behind is dropped (``stream.closed``, reason
    #: ``slow_consumer``) and may resume with ``Last-Event-ID``.
    event_stream_buffer: int = _setting(Group.EVENTS, 1000)
    #: Connections each API process holds open for event streams and long
    #: polls together.  Each holds a thread of its own, on top of
    #: ``api_threads``, so other calls always find a thread; a stream beyond
    #: is refused (503 ``streams_busy``), a long poll beyond answers at once.
    event_stream_slots: int = _setting(Group.EVENTS, 128)
    #: The longest ``?wait=`` a long poll of a request may ask for (seconds).
    request_wait_max: float = _setting(Group.EVENTS, 60.0)

    # --- retention -------------------------------------------------------------------------
    #: Retention (see conductor/engine/retention.py): finished requests and
    #: ended callback deliveries are deleted this long after they ended
    #: (never sooner than ``idempotency_retention``), node history entries
    #: this long after they were written; 0 keeps them for ever.  One
    #: conductor purges at most every ``purge_interval`` seconds (0: never).
    request_retention: float = _setting(Group.RETENTION, 30 * 86400.0)
    history_retention: float = _setting(Group.RETENTION, 90 * 86400.0)
    purge_interval: float = _setting(Group.RETENTION, 600.0)

    # --- logging ---------------------------------------------------------------------------
    log_level: str = _setting(Group.LOGGING, "INFO")
    #: ``text`` (one line, ``request_id=<id>`` at its end) or ``json`` (one
    #: JSON object per line: time, level, logger, message, request_id, node).
    log_format: str = _setting(Group.LOGGING, "text")
    #: Where the server processes log: empty is stderr (the journal under
    #: systemd; ``<data_dir>/logs`` under ``conductor up``), else this file,
    #: shared by the host's processes and re-opened when logrotate moves it.
    log_file: str = _setting(Group.LOGGING, "")

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, defaulting to the SQLite file in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir / 'conductor.sqlite'}"

    @property
    def admin_token_file(self) -> Path:
        """Where ``conductor up`` keeps the local admin token (mode 0600)."""
        return self.data_dir / "admin.token"

    @property
    def secret_key_file(self) -> Path:
        """Where the key sealing secrets at rest lives when ``secret_key`` is empty (mode 0600)."""
        return self.data_dir / "secret.key"

    @property
    def api_url_file(self) -> Path:
        """Where ``conductor up`` records the URL it serves (the CLI's "local service")."""
        return self.data_dir / "api.url"

    @property
    def pxe_dir(self) -> Path:
        """Where the pxe deploy writes per-node boot configs."""
        return Path(self.pxe_root).expanduser() if self.pxe_root else self.data_dir / "pxe"

    @property
    def images_path(self) -> Path:
        """Where registered images are kept."""
        return Path(self.image_dir).expanduser() if self.image_dir else self.data_dir / "images"

    @property
    def image_cache_path(self) -> Path:
        """Where downloaded remote images are cached."""
        return Path(self.image_cache_dir).expanduser() if self.image_cache_dir else self.data_dir / "image-cache"

    @property
    def ramdisk_path(self) -> Path:
        """Where the boot files of the agent ramdisk are served from."""
        return Path(self.ramdisk_dir).expanduser() if self.ramdisk_dir else self.data_dir / "ramdisk"

    @property
    def api_url(self) -> str:
        """The URL this host's API serves: ``https`` when a certificate is set."""
        scheme = "https" if self.tls_cert_file else "http"
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"{scheme}://{host}:{self.api_port}"

    @property
    def agent_url(self) -> str:
        """The API URL given to agents."""
        return self.agent_api_url or self.api_url

    @property
    def base_name(self) -> str:
        """The base of this host's conductor names."""
        return self.conductor_name or socket.gethostname()

    @classmethod
    def group(cls, name: str) -> tuple[str, ...]:
        """The names of the settings of subsystem ``name`` (a :class:`Group`), in order.

        :raises ValueError: ``name`` is not a group.
        """
        return _GROUPS[Group(name)]

    def grouped(self, show_secrets: bool = False) -> dict[Group, dict[str, Any]]:
        """Every setting's value by subsystem; secrets that are set read ``******`` unless ``show_secrets``."""
        return {
            group: {
                name: "******" if _FIELDS[name].metadata["secret"] and getattr(self, name) and not show_secrets
                else getattr(self, name)
                for name in names
            }
            for group, names in _GROUPS.items()
        }

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (values are coerced like env values; old names are accepted, warning)."""
        changes = _renamed(changes, _deprecated_keyword, lambda name: name)
        return dataclasses.replace(self, **_coerce_all(changes))


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_GROUPS = {group: tuple(f.name for f in _FIELDS.values() if f.metadata["group"] == group) for group in Group}
_ENV_ALIASES = {"DATABASE_URL": "database_url", "REDIS_URL": "redis_url"}
#: Renamed settings, old name -> new name.  The old names are accepted for
#: one release as an attribute (:class:`_Renamed`), a keyword of
#: :func:`load` or :meth:`Settings.replace`, a key of the TOML file and an
#: environment variable, each with a warning.
RENAMED = {name: alias.new for name, alias in vars(Settings).items() if isinstance(alias, _Renamed)}


def _deprecated_keyword(message: str) -> None:
    # Code using an old name: a DeprecationWarning pointing at the caller of
    # load() or replace() (stack: caller -> load/replace -> _renamed -> here).
    warnings.warn(message, DeprecationWarning, stacklevel=4)


def _deprecated_input(message: str) -> None:
    # An operator's environment or file: a log line they will see (a
    # DeprecationWarning is hidden by default outside tests).
    LOG.warning("%s", message)


def _renamed(values: Mapping[str, Any], warn: Callable[[str], None], spell: Callable[[str], str]) -> dict[str, Any]:
    """``values`` with old setting names turned into the new ones, warning through ``warn``.

    ``spell`` writes a setting's name as the source knows it (``CONDUCTOR_...``
    for the environment).  Given both names, the new one wins.
    """
    result = dict(values)
    for old, new in RENAMED.items():
        if old not in result:
            continue
        value = result.pop(old)
        if new in result:
            warn(f"{spell(old)} is deprecated and ignored: {spell(new)} is set too.")
        else:
            warn(f"{spell(old)} is deprecated and will be removed in the next release: use {spell(new)}.")
            result[new] = value
    return result


def _coerce(name: str, value: Any) -> Any:
    field = _FIELDS.get(name)
    if field is None:
        raise InvalidInput(f"Unknown setting {name!r}.", errors={name: "unknown setting"})
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if kind == "Path":
            return Path(str(value)).expanduser()
        if kind == "bool":
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if isinstance(value, list | tuple):
            # A list in the TOML file for a comma-separated setting.
            return ",".join(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"Setting {name} must be a {kind}, not {value!r}.", errors={name: f"expected {kind}"}
        ) from None


def _coerce_all(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _coerce(k, v) for k, v in values.items()}


def load(
    overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load the settings from file, environment and ``overrides``.

    A renamed setting's old name works in each source (with a warning); where
    one source gives both names, the new one wins.

    :raises InvalidInput: an unknown key or a value of the wrong type.
    """
    env = os.environ if env is None else env
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    overrides = _renamed(overrides, _deprecated_keyword, lambda name: name)
    from_env: dict[str, Any] = {}
    for key, value in env.items():
        if key in _ENV_ALIASES:
            from_env[_ENV_ALIASES[key]] = value
        elif key.startswith("CONDUCTOR_") and (key[10:].lower() in _FIELDS or key[10:].lower() in RENAMED):
            from_env[key[10:].lower()] = value
    from_env = _renamed(from_env, _deprecated_input, lambda name: f"CONDUCTOR_{name.upper()}")
    data_dir = _coerce(
        "data_dir", overrides.get("data_dir") or from_env.get("data_dir") or default_data_dir(env)
    )
    config_path = Path(env["CONDUCTOR_CONFIG"]) if env.get("CONDUCTOR_CONFIG") else None
    if config_path is None and (data_dir / "conductor.toml").exists():
        config_path = data_dir / "conductor.toml"
    from_file: dict[str, Any] = {}
    if config_path is not None:
        try:
            from_file = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"Cannot read config file {config_path}: {exc}") from None
        path = config_path
        from_file = _renamed(from_file, _deprecated_input, lambda name: f"{name} (in {path})")
    merged = {**from_file, **from_env, **overrides, "data_dir": data_dir}
    return Settings(**_coerce_all(merged))
