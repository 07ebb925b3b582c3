"""The admin token file of a local ``conductor up``, and which URL it is good for.

Light on purpose (no database, no Flask): the CLI reads it at start-up.
``conductor up`` writes ``<data dir>/admin.token`` (mode 0600) and
``<data dir>/api.url``; the CLI sends that token only to that URL, so a
local admin secret never travels to another server.

So that the CLI finds the token of any data directory, not only the
default one, ``conductor up`` also records its URL and token file in a
per-user registry (:func:`registry_path`: ``$XDG_CONFIG_HOME/conductor/
local-services.json``, else ``~/.config/conductor/``, mode 0600 in a 0700
directory) and removes its entry when it stops.  The registry holds paths,
never secrets; an entry is used only while the data directory's
``api.url`` still names that URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
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


REGISTRY_NAME = "local-services.json"


def registry_path(env: Mapping[str, str] | None = None) -> Path:
    """Where this user's registry of local services lives."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "conductor" / REGISTRY_NAME


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` (two ``conductor up`` starting at once)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, list):
        return []
    return [e for e in services if isinstance(e, dict) and isinstance(e.get("url"), str)
            and isinstance(e.get("token_file"), str)]


def _write_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    """Replace the registry atomically (written 0600, then renamed over the old one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    write_secret(temporary, json.dumps({"services": entries}, indent=2))
    os.replace(temporary, path)


def register(url: str, token_file: Path, path: Path | None = None) -> None:
    """Record that the local service at ``url`` keeps its admin token in ``token_file``."""
    path = path or registry_path()
    with _locked(path):
        entries = [e for e in _entries(path) if not same_service(e["url"], url)]
        entries.append({"url": url, "token_file": str(token_file.resolve())})
        _write_entries(path, entries)


def unregister(url: str, token_file: Path, path: Path | None = None) -> None:
    """Forget ``url`` if the registry still gives it ``token_file`` (another service may have taken the URL)."""
    path = path or registry_path()
    if not path.exists():
        return
    with _locked(path):
        entries = _entries(path)
        kept = [e for e in entries
                if not (same_service(e["url"], url) and e["token_file"] == str(token_file.resolve()))]
        if kept != entries:
            _write_entries(path, kept)


def registered_token_file(url: str, path: Path | None = None) -> Path | None:
    """The admin token file of the local service registered for ``url``, if it still serves there.

    An entry counts only while ``api.url`` beside the token file names
    ``url`` (a data directory later served on another port, or removed, is
    ignored).
    """
    for entry in _entries(path or registry_path()):
        if not same_service(entry["url"], url):
            continue
        token_file = Path(entry["token_file"])
        try:
            served = (token_file.parent / "api.url").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if served and same_service(url, served):
            return token_file
    return None
