"""``conductor up``: API, workers and (by default) Redis on one box, supervised.

The supervisor starts the embedded Redis unless ``REDIS_URL`` is set,
upgrades the schema, then runs ``conductor api``, one ``conductor worker``
per ``--workers`` and one ``conductor callback-worker`` per
``--callback-workers`` as child processes with their logs in
``<data dir>/logs``.  A child that dies is restarted (with a growing
delay if it keeps dying).  SIGINT/SIGTERM stop everything in order:
API, workers (warm shutdown: the current step finishes), then Redis.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from conductor import database, datadir
from conductor.auth import tokens
from conductor.embedded_redis import EmbeddedRedis
from conductor.settings import Settings

LOG = logging.getLogger(__name__)


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
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.started = time.monotonic()

    def stop(self, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            LOG.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            self.proc.kill()
            self.proc.wait()


class Supervisor:
    """Runs the single-box deployment until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Whether this start created a new admin token file.
        self.new_admin_token = False
        self.redis: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        """The API's URL."""
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def start(self, wait: float = 30.0) -> None:
        """Start Redis (embedded), migrate, start the children, wait for the API.

        :raises RuntimeError: something did not start.
        """
        from conductor.api import check_auth_settings

        settings = self.settings
        check_auth_settings(settings)
        datadir.ensure_data_dir(settings)  # 0700, and the secret key on first start
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
        env = dict(os.environ)
        env.update(
            CONDUCTOR_DATA_DIR=str(settings.data_dir),
            DATABASE_URL=settings.sqlalchemy_url,
            REDIS_URL=settings.redis_url,
            CONDUCTOR_LOG_LEVEL=settings.log_level,
            # Workers give it to the agents they boot (boot configs).
            CONDUCTOR_AGENT_API_URL=settings.agent_url,
        )
        exe = [sys.executable, "-m", "conductor"]
        logs = settings.data_dir / "logs"
        self.children = [
            Child(
                "api",
                exe + ["api", "--host", settings.api_host, "--port", str(settings.api_port),
                       "--api-workers", str(settings.api_workers)],
                logs / "api.log",
                env=env,
            )
        ]
        self.children += [
            Child(f"worker-{i}", exe + ["worker", "--workers", "1"], logs / f"worker-{i}.log", env=env)
            for i in range(settings.workers)
        ]
        self.children += [
            Child(f"callback-worker-{i}", exe + ["callback-worker", "--workers", "1"],
                  logs / f"callback-worker-{i}.log", env=env)
            for i in range(settings.callback_workers)
        ]
        for child in self.children:
            child.start()
        self._wait_for_api(wait)

    def _wait_for_api(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            api = self.children[0]
            if api.proc is not None and api.proc.poll() is not None:
                raise RuntimeError(f"The API exited at start; see {api.log}")
            try:
                if requests.get(self.url + "/", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
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

    def stop(self) -> None:
        """Stop the API, then the workers (warm), then Redis."""
        self.stopping.set()
        for child in self.children:
            if child.name == "api":
                timeout = 10.0
            elif child.name.startswith("callback-worker"):
                # A delivery in flight lasts at most about two timeouts.
                timeout = 2 * self.settings.callback_timeout + 5
            else:
                timeout = self.settings.job_timeout
            child.stop(timeout=timeout)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
