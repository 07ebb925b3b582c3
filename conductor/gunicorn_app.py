"""Serve the API with gunicorn, configured from the conductor's settings."""

from __future__ import annotations

import os
import signal
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from conductor import logs, procs, tls
from conductor.api import http_metrics, limits
from conductor.settings import Settings


class _App(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        # The master's own lines (workers booted, stopped, timed out) in the same format as the app's.
        logs.configure(self.settings)
        options: dict[str, Any] = {
            "bind": f"{self.settings.api_host}:{self.settings.api_port}",
            "workers": self.settings.api_workers,
            "timeout": 60,
            "graceful_timeout": 10,
            "loglevel": self.settings.log_level.lower(),
            "logger_class": _RootLogger,
            "proc_name": "conductor-api",
            # The worker class (threaded unless api_threads is 1) and its threads
            # (api_threads, plus one per event stream slot), and the request
            # line and header limits, refused with our JSON error.
            **limits.gunicorn_options(self.settings.api_threads, self.settings.api_client_timeout,
                                      held=self.settings.event_stream_slots),
            # No control socket (gunicorn's default is one per user, ~/.gunicorn/gunicorn.ctl,
            # which every API on the host would take from the one before; nothing here uses it).
            "control_socket_disable": True,
            # A worker dies with its master, whatever kills the master.
            "post_fork": _die_with_master,
            # A worker's metric files stay in the host's sums; its live gauges go.
            "child_exit": _worker_exited,
            # HTTPS when a certificate is set (tls_cert_file, tls_key_file, tls_client_ca_file).
            **tls.gunicorn_options(self.settings),
        }
        for key, value in options.items():
            self.cfg.set(key, value)
        # Before the workers fork: each counts its HTTP calls in a file of its own, and a
        # scrape of GET /metrics, whichever worker answers it, adds up the host's.
        http_metrics.share_between_processes(self.settings.data_dir / "metrics" / f"api-{self.settings.api_port}")

    def load(self) -> Any:
        # Gunicorn calls load() in the process that serves: the application
        # (Flask and everything under it) is imported there, not at start-up.
        from conductor.api import create_app

        logs.configure(self.settings)
        app = create_app(self.settings)
        instance = os.environ.get("CONDUCTOR_INSTANCE_ID")
        if instance:  # under `conductor up`, whose start-up check looks for it
            # Flask's own way to add WSGI middleware; mypy sees a method replaced.
            app.wsgi_app = _EchoInstance(app.wsgi_app, instance)  # type: ignore[method-assign]
        return app


class _RootLogger(glogging.Logger):
    """gunicorn's logger, writing through the root logger (conductor.logs: format, file, masking)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.handlers[:] = []
            log.propagate = True


def _worker_exited(server: Any, worker: Any) -> None:
    http_metrics.process_exited(worker.pid)


def _die_with_master(server: Any, worker: Any) -> None:
    procs.set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != server.pid:
        os._exit(1)
    # Image downloads outlast the worker timeout; they prove progress instead.
    # Event streams end when the worker stops, not when its graceful timeout cuts them.
    from conductor.api import events, images

    images.prove_alive_with(worker.notify)
    events.stop_streams_when(lambda: not worker.alive)


class _EchoInstance:
    """WSGI middleware: every response names the ``conductor up`` instance that started this API."""

    def __init__(self, app: Any, instance: str) -> None:
        self.app = app
        self.instance = instance

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Conductor-Instance", self.instance)], exc_info)

        return self.app(environ, start)


def serve(settings: Settings) -> None:
    """Run gunicorn in the foreground until SIGTERM/SIGINT.

    :raises InvalidInput: the TLS settings cannot work (checked before gunicorn starts).
    """
    tls.check(settings)
    _App(settings).run()
