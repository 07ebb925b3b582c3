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
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conductor.exceptions import InvalidInput


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The data directory used when none is configured."""
    env = os.environ if env is None else env
    if env.get("CONDUCTOR_DATA_DIR"):
        return Path(env["CONDUCTOR_DATA_DIR"]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(base) / "conductor"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a conductor process can be told.  Durations are seconds."""

    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    #: SQLAlchemy URL; empty means the SQLite file ``<data_dir>/conductor.sqlite``.
    database_url: str = dataclasses.field(default="", repr=False)
    #: Redis URL; empty means the embedded Redis of ``conductor up``.
    redis_url: str = dataclasses.field(default="", repr=False)
    #: Prefix of every Redis key and RQ queue name of this deployment.
    redis_namespace: str = "conductor"

    api_host: str = "127.0.0.1"
    api_port: int = 6385
    api_workers: int = 2
    workers: int = 1
    #: Base of this host's conductor names; defaults to the host name.
    conductor_name: str = ""

    #: How often a conductor records that it is alive, and after how long
    #: without a heartbeat the others declare it dead.
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0
    #: How often each conductor sweeps for dead conductors and lost jobs.
    sweep_interval: float = 10.0
    #: A queued request older than this with no job in Redis is re-enqueued.
    requeue_after: float = 30.0
    #: A job that finds its node reserved retries for this long, then fails.
    node_locked_timeout: float = 60.0
    #: RQ job timeout (one step of a request, never a whole transition).
    job_timeout: float = 120.0

    #: How long the BMC may take to report the target power state.
    power_timeout: float = 60.0
    #: First and longest interval between power state polls (doubling).
    power_poll_initial: float = 0.25
    power_poll_max: float = 4.0
    #: How long the OS may take to honour a soft power off (ACPI), and
    #: whether a hard power off follows when it does not.
    soft_power_off_timeout: float = 30.0
    soft_power_off_fallback: bool = True
    #: IPMI driver (see docs/ipmi.md).  One attempt of a call on an open
    #: session may take ``ipmi_timeout`` (a login ~5 s more); a timed-out
    #: attempt is retried ``ipmi_retries`` times after ``ipmi_backoff``
    #: seconds (doubling, capped at ``ipmi_max_backoff``, each scaled by a
    #: random factor in 1 +/- ``ipmi_jitter``).  A refused password is never
    #: retried.
    ipmi_timeout: float = 5.0
    ipmi_retries: int = 2
    ipmi_backoff: float = 0.5
    ipmi_max_backoff: float = 4.0
    ipmi_jitter: float = 0.5
    #: At most one IPMI call in flight per BMC across every conductor (a
    #: Redis lock per BMC); a step that finds the BMC busy is polled again
    #: after ``ipmi_busy_retry`` seconds.  The least time between two
    #: commands to a BMC is the live throttle knob ``bmc_min_interval``.
    ipmi_one_in_flight: bool = True
    ipmi_busy_retry: float = 0.1
    #: Power state observer (see docs/ipmi.md): how often one conductor reads
    #: the power state of every idle node (0: never), how many nodes one job
    #: reads, and after how many failed reads in a row a node goes into
    #: maintenance (fault ``power failure``; out again when its BMC answers).
    power_sync_interval: float = 60.0
    power_sync_batch: int = 50
    power_sync_max_failures: int = 3
    #: Whether undeploy and provide run automated cleaning.
    automated_clean: bool = True
    #: How long a node may wait for its agent in ``wait call-back``,
    #: ``clean wait`` and ``inspect wait`` before the watchdog fails it.
    deploy_callback_timeout: float = 1800.0
    clean_callback_timeout: float = 1800.0
    inspect_callback_timeout: float = 1800.0
    #: How often (at most) one conductor of the deployment checks for overdue waits.
    wait_check_interval: float = 1.0
    #: The "TFTP root" of the pxe deploy: per-node boot configs (kernel
    #: parameters: API URL and agent token) the booting agent reads.
    #: Empty means ``<data_dir>/pxe``.
    pxe_root: str = ""
    #: The API URL agents call back; empty means ``http://<api_host>:<api_port>``.
    agent_api_url: str = ""

    #: Whether the API requires bearer tokens.  Switching it off is only
    #: allowed while ``api_host`` is a loopback address.
    auth_enabled: bool = True
    #: How long an ``Idempotency-Key`` is remembered.
    idempotency_retention: float = 86400.0
    #: Retention (see conductor/engine/retention.py): finished requests and
    #: ended callback deliveries are deleted this long after they ended
    #: (never sooner than ``idempotency_retention``), node history entries
    #: this long after they were written; 0 keeps them for ever.  One
    #: conductor purges at most every ``purge_interval`` seconds (0: never).
    request_retention: float = 30 * 86400.0
    history_retention: float = 90 * 86400.0
    purge_interval: float = 600.0
    #: Callback (webhook) delivery: worker processes started by ``up``; how
    #: long a receiver may take (to connect, and for each read); the delays
    #: in seconds before each retry (the first attempt is immediate; the
    #: last delay repeats) and for how long after the event attempts go on;
    #: the +/- fraction of random jitter applied to each delay.
    callback_workers: int = 1
    callback_timeout: float = 10.0
    callback_retry_schedule: str = "5,30,120,600,1800,3600"
    callback_retry_window: float = 86400.0
    callback_jitter: float = 0.2
    #: How often each callback worker looks for due deliveries in the database.
    callback_poll_interval: float = 0.5
    #: Callback destinations: comma-separated host names (``*.example.com``)
    #: and networks (CIDR).  A non-empty allow list admits only what it
    #: names; the deny list always wins.  Loopback is allowed by default.
    callback_allow: str = ""
    callback_deny: str = (
        "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32,metadata.google.internal"
    )
    #: How long a rotated-out signing secret keeps signing (both are sent).
    callback_secret_overlap: float = 86400.0

    #: Fernet keys sealing secrets at rest (BMC passwords, webhook signing
    #: secrets; see conductor/secretbox.py), comma-separated, current first.
    #: Empty means the key file ``<data_dir>/secret.key``, created on first
    #: start.  Deployments on several hosts must give every host the same keys.
    secret_key: str = dataclasses.field(default="", repr=False)

    log_level: str = "INFO"

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
    def agent_url(self) -> str:
        """The API URL given to agents."""
        return self.agent_api_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def base_name(self) -> str:
        """The base of this host's conductor names."""
        return self.conductor_name or socket.gethostname()

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (values are coerced like env values)."""
        return dataclasses.replace(self, **_coerce_all(changes))


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_ENV_ALIASES = {"DATABASE_URL": "database_url", "REDIS_URL": "redis_url"}


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

    :raises InvalidInput: an unknown key or a value of the wrong type.
    """
    env = os.environ if env is None else env
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_env: dict[str, Any] = {}
    for key, value in env.items():
        if key in _ENV_ALIASES:
            from_env[_ENV_ALIASES[key]] = value
        elif key.startswith("CONDUCTOR_") and key[10:].lower() in _FIELDS:
            from_env[key[10:].lower()] = value
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
    merged = {**from_file, **from_env, **overrides, "data_dir": data_dir}
    return Settings(**_coerce_all(merged))
