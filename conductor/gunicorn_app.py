"""Serve the API with gunicorn, configured from the conductor's settings."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from conductor.api import limits
from conductor.settings import Settings


class _App(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options: dict[str, Any] = {
            "bind": f"{self.settings.api_host}:{self.settings.api_port}",
            "workers": self.settings.api_workers,
            "timeout": 60,
            "graceful_timeout": 10,
            "loglevel": self.settings.log_level.lower(),
            "proc_name": "conductor-api",
            # Request line and header limits, refused with our JSON error (a sync worker).
            **limits.gunicorn_options(),
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from conductor import logs
        from conductor.api import create_app

        logs.setup(self.settings.log_level)
        return create_app(self.settings)


def serve(settings: Settings) -> None:
    """Run gunicorn in the foreground until SIGTERM/SIGINT."""
    _App(settings).run()
