"""A minimal QMP (QEMU Machine Protocol) client over a unix socket.

QMP is line-delimited JSON: the server greets, the client sends
``qmp_capabilities``, then each ``{"execute": ...}`` is answered with one
``{"return": ...}`` or ``{"error": ...}``; asynchronous ``{"event": ...}``
lines (``POWERDOWN``, ``RESET``, ``SHUTDOWN``...) may arrive at any time and
are kept in :attr:`QmpClient.events`.  One client per socket: QEMU serves
one QMP connection at a time, so the VM manager owns it and forwards
callers' commands (see :meth:`conductor.bmcsim.vmmanager.VmManager.qmp`).
"""

from __future__ import annotations

import collections
import json
import socket
import time
from typing import Any


class QmpError(RuntimeError):
    """QMP refused a command, or the connection failed or closed."""


class QmpClient:
    """A connected, negotiated QMP session.

    :param path: the unix socket QEMU listens on (``-qmp unix:PATH,server=on,wait=off``).
    :raises QmpError: cannot connect or negotiate within ``timeout`` seconds.
    """

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._unseen: list[dict[str, Any]] = []
        self._buffer = b""
        self.closed = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            greeting = self._read_message(time.monotonic() + timeout)
            if "QMP" not in greeting:
                raise QmpError(f"not a QMP greeting: {greeting!r}")
            self.execute("qmp_capabilities")
        except (OSError, QmpError) as exc:
            self._sock.close()
            raise QmpError(f"QMP at {path}: {exc}") from None

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command and return its ``return`` value.

        :raises QmpError: QEMU answered an error, or the connection failed.
        """
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"{command}: {exc}") from None
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read_message(deadline)
            if "return" in answer:
                return answer["return"]
            if "error" in answer:
                error = answer["error"]
                raise QmpError(f"{command}: {error.get('class')}: {error.get('desc')}")

    def poll_events(self) -> list[dict[str, Any]]:
        """The events that arrived since the last call (read without waiting).

        Once QEMU has closed the connection (it exited), :attr:`closed` is
        True; the events it sent before (``SHUTDOWN``...) are still returned.
        """
        if not self.closed:
            self._sock.setblocking(False)
            try:
                while True:
                    try:
                        chunk = self._sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        self.closed = True
                        break
                    if not chunk:
                        self.closed = True
                        break
                    self._buffer += chunk
            finally:
                self._sock.settimeout(self.timeout)
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = self._decode(line)
            if message is not None and "event" in message:
                self._keep(message)
        fresh, self._unseen = self._unseen, []
        return fresh

    def close(self) -> None:
        """Close the connection (QEMU goes on running)."""
        self._sock.close()

    def _keep(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._unseen.append(event)

    def _decode(self, line: bytes) -> dict[str, Any] | None:
        if not line.strip():
            return None
        try:
            message = json.loads(line)
        except ValueError:
            raise QmpError(f"garbage from QMP: {line[:200]!r}") from None
        return message if isinstance(message, dict) else None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        """The next non-event message; events met on the way are kept."""
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                message = self._decode(line)
                if message is None:
                    continue
                if "event" in message:
                    self._keep(message)
                    continue
                return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError("no answer in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise QmpError(str(exc)) from None
            if not chunk:
                raise QmpError("connection closed")
            self._buffer += chunk
