"""The data directory and the database file: private to the user running the conductor.

The data directory holds the SQLite database (BMC passwords, sealed), the
key that seals them (``secret.key``), the admin token and the embedded Redis: it is created
with mode 0700, and an existing one loses any group and other access.  The
SQLite file is created 0600 before SQLite opens it; SQLite gives its WAL
and shared-memory files the database file's mode.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from conductor import secretbox
from conductor.settings import Settings

#: What SQLite creates beside a database file.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700; take group and other access from an existing one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o077)
    return path


def ensure_data_dir(settings: Settings) -> Path:
    """Create (or tighten) the data directory to mode 0700, and the secret key file on first start.

    Called before the schema is migrated, so that migration 0006 finds the
    key (it seals secrets stored in plain text by older versions).
    """
    ensure_private_dir(settings.data_dir)
    if not settings.secret_key:
        secretbox.for_settings(settings).keys()  # creates <data dir>/secret.key (0600) if missing
    return settings.data_dir


def ensure_private_sqlite(path: Path) -> None:
    """Create the SQLite file ``path`` with mode 0600 if missing, and tighten it and its WAL/SHM files.

    Its directory is created 0700 when missing (an existing one is left as
    it is: a custom database path may sit in a shared directory).
    """
    if not path.parent.exists():
        ensure_private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        # An empty file is an empty SQLite database; created here so that
        # SQLite never creates it with the process umask (0644).
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for name in [path.name] + [path.name + suffix for suffix in SQLITE_SIDE_FILES]:
        _tighten(path.with_name(name), 0o177)


def _tighten(path: Path, remove: int) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & remove and st.st_uid == os.getuid():
        os.chmod(path, mode & ~remove)
