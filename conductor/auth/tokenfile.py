"""The admin token file of a local ``conductor up``, and which URL it is good for.

Light on purpose (no database, no Flask): the CLI reads it at start-up.
``conductor up`` writes ``<data dir>/admin.token`` (mode 0600) and
``<data dir>/api.url``; the CLI sends that token only to that URL, so a
local admin secret never travels to another server.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

# A server bound to every address answers on loopback too.
_LOCAL_NAMES = {"localhost": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` readable by the owner only (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)  # a key file must survive a crash right after it is written
    finally:
        os.close(fd)


def read_secret(path: Path) -> str | None:
    """The token in ``path``, or None when there is none."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return secret or None


def _normalised(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    host = _LOCAL_NAMES.get(host, host)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, host, port


def same_service(url: str, other: str) -> bool:
    """Whether two URLs name the same scheme, host and port (``localhost`` = 127.0.0.1)."""
    try:
        return _normalised(url) == _normalised(other)
    except ValueError:
        return False


def local_token_for(url: str, data_dir: Path) -> str | None:
    """The admin token of the ``conductor up`` of ``data_dir``, if ``url`` is where it serves."""
    try:
        served = (data_dir / "api.url").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not served or not same_service(url, served):
        return None
    return read_secret(data_dir / "admin.token")
