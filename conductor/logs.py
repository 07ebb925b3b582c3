"""Logging set-up shared by the server processes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


def setup(level: str = "INFO", file: Path | None = None) -> None:
    """Log at ``level`` to ``file`` (or stderr); quiet the chatty libraries."""
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # RQ logs every job at INFO; alembic every plugin it loads.
    for name in ("rq.worker", "rq.queue", "alembic"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
