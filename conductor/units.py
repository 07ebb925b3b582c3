"""systemd units for the conductor's processes (``conductor install-units``).

What ``conductor up`` supervises on one box, as systemd services on any
number of hosts, each host running the roles it is given:

``conductor-api.service``
    ``conductor api``: gunicorn, its own processes (``api_workers``).
``conductor-worker@<n>.service``
    ``conductor worker --workers 1``, one instance per conductor worker.
``conductor-callback-worker@<n>.service``
    ``conductor callback-worker --workers 1``, one per webhook worker.
``conductor.target``
    wants the instances chosen, so ``systemctl enable --now conductor.target``
    starts the host's share and a reboot brings it back.
``conductor-db-upgrade.service``
    ``conductor db upgrade``, a one-shot run by hand on one host per release
    (never by each host at start: two hosts migrating at once race).

Every service reads the same ``EnvironmentFile`` (``DATABASE_URL``,
``REDIS_URL``, ``CONDUCTOR_SECRET_KEY``, ``CONDUCTOR_*``), is restarted
when it exits abnormally (``Restart=on-failure``: a worker that exits
because it was told to stop stays stopped), and is stopped as a whole
(``KillMode=control-group``: gunicorn's and multiprocessing's children
too, SIGKILL for what is left after ``TimeoutStopSec``).  Logs go to the
journal (stderr), where journald rotates them.

What ``conductor up`` also does and these units do not: the embedded
Redis (use a Redis service), and dnsmasq with the host entries kept equal
to the booting nodes (DHCP needs ``conductor up`` on its host).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from pathlib import Path

from conductor.settings import Settings

SYSTEM_DIR = Path("/etc/systemd/system")
SYSTEM_ENV_FILE = Path("/etc/conductor/conductor.env")
#: Where system services keep their data (``StateDirectory=conductor``).
SYSTEM_DATA_DIR = Path("/var/lib/conductor")
TARGET = "conductor.target"

#: The environment file written when none exists: what every host must be told.
ENV_TEMPLATE = """\
# Read by every conductor service (systemd EnvironmentFile: KEY=value, no quotes needed).
# Every host of a deployment needs the same DATABASE_URL, REDIS_URL and CONDUCTOR_SECRET_KEY.
#DATABASE_URL=postgresql+psycopg://conductor:PASSWORD@db.example.com/conductor
#REDIS_URL=redis://:PASSWORD@redis.example.com:6379/0
#CONDUCTOR_SECRET_KEY=
#CONDUCTOR_API_HOST=0.0.0.0
#CONDUCTOR_TLS_CERT_FILE=/etc/conductor/tls/api.pem
#CONDUCTOR_TLS_KEY_FILE=/etc/conductor/tls/api.key
#CONDUCTOR_AGENT_API_URL=https://bm.example.com
#CONDUCTOR_LOG_FORMAT=json
"""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to write: the roles of this host and how the services run."""

    #: Where the unit files go.
    directory: Path
    #: The environment file every unit reads.
    env_file: Path
    #: systemd's user manager (``systemctl --user``) rather than the system's.
    user: bool = False
    #: The account system services run as (ignored for user units).
    run_as: str = "conductor"
    api: bool = True
    workers: int = 1
    callback_workers: int = 1
    #: The command that starts the conductor (this Python, ``-m conductor``).
    command: tuple[str, ...] = (sys.executable, "-m", "conductor")

    @classmethod
    def default(cls, user: bool, prefix: Path | None = None, env_file: Path | None = None,
                **roles: object) -> Plan:
        """The usual places: ``/etc/systemd/system`` and ``/etc/conductor/conductor.env``, or with
        ``user`` ``~/.config/systemd/user`` and ``~/.config/conductor/conductor.env``."""
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        directory = prefix or (config / "systemd" / "user" if user else SYSTEM_DIR)
        env = env_file or (config / "conductor" / "conductor.env" if user else SYSTEM_ENV_FILE)
        return cls(directory=directory, env_file=env, user=user, **roles)  # type: ignore[arg-type]


def _exec(plan: Plan, *args: str) -> str:
    return shlex.join([*plan.command, *args])


def _service(plan: Plan, description: str, args: tuple[str, ...], stop_timeout: float) -> str:
    unit = [
        "[Unit]",
        f"Description={description}",
        "After=network-online.target",
        "Wants=network-online.target",
        f"PartOf={TARGET}",
        "",
        "[Service]",
        "Type=simple",
        f"EnvironmentFile={plan.env_file}",
    ]
    if not plan.user:
        unit += [
            f"User={plan.run_as}",
            f"Group={plan.run_as}",
            # The data directory (SQLite, pxe boot configs, images, keys), 0700, owned by run_as;
            # CONDUCTOR_DATA_DIR in the environment file wins.
            f"Environment=CONDUCTOR_DATA_DIR={SYSTEM_DATA_DIR}",
            "StateDirectory=conductor",
            "StateDirectoryMode=0700",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "ProtectSystem=full",
        ]
    unit += [
        f"ExecStart={_exec(plan, *args)}",
        "Restart=on-failure",
        "RestartSec=2",
        # Every process of the service goes, SIGTERM first: gunicorn's workers finish their
        # requests; a conductor worker (one process, RQ's SimpleWorker) finishes its step.
        "KillMode=control-group",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={int(stop_timeout)}",
        "",
        "[Install]",
        f"WantedBy={TARGET}",
        "",
    ]
    return "\n".join(unit)


def render(plan: Plan, settings: Settings) -> dict[str, str]:
    """The unit files of ``plan``, by file name.

    Stop timeouts follow the settings as ``conductor up`` stops its children:
    the API 15 s (gunicorn's graceful 10 s), a worker ``job_timeout`` + 10 s
    (warm shutdown: the current step finishes), a callback worker two
    ``callback_timeout`` + 5 s (a delivery in flight).
    """
    files: dict[str, str] = {}
    wanted: list[str] = []
    if plan.api:
        files["conductor-api.service"] = _service(plan, "Bare-metal conductor API", ("api",), 15)
        wanted.append("conductor-api.service")
    if plan.workers:
        files["conductor-worker@.service"] = _service(
            plan, "Bare-metal conductor worker %i", ("worker", "--workers", "1"), settings.job_timeout + 10)
        wanted += [f"conductor-worker@{n}.service" for n in range(1, plan.workers + 1)]
    if plan.callback_workers:
        files["conductor-callback-worker@.service"] = _service(
            plan, "Bare-metal conductor callback worker %i", ("callback-worker", "--workers", "1"),
            2 * settings.callback_timeout + 5)
        wanted += [f"conductor-callback-worker@{n}.service" for n in range(1, plan.callback_workers + 1)]
    upgrade = _service(plan, "Bare-metal conductor: upgrade the database schema (run on one host)",
                       ("db", "upgrade"), 600)
    upgrade = (upgrade.replace("Type=simple", "Type=oneshot").replace("Restart=on-failure\nRestartSec=2\n", "")
               .replace(f"PartOf={TARGET}\n", "").split("\n[Install]")[0] + "\n")
    files["conductor-db-upgrade.service"] = upgrade
    files[TARGET] = "\n".join([
        "[Unit]",
        "Description=Bare-metal conductor services of this host",
        f"Wants={' '.join(wanted)}",
        "",
        "[Install]",
        f"WantedBy={'default.target' if plan.user else 'multi-user.target'}",
        "",
    ])
    return files


def write(plan: Plan, settings: Settings) -> list[Path]:
    """Write the unit files of ``plan`` (replacing older ones) and, if there is none, the environment
    file (mode 0600: it holds passwords); the paths written."""
    plan.directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(plan, settings).items():
        path = plan.directory / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
        written.append(path)
    if not plan.env_file.exists():
        plan.env_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(plan.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(ENV_TEMPLATE)
        written.append(plan.env_file)
    return written
