"""A Server-Sent Events client for the tests: reads a stream in a thread, keeps what it got."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass
class Frame:
    """One event of the stream."""

    event: str
    id: str | None
    data: dict[str, Any]

    @property
    def key(self) -> tuple[int, int]:
        assert self.id is not None
        ms, _, n = self.id.partition("-")
        return int(ms), int(n)


@dataclass
class Stream:
    """``GET url`` as an event stream, read by a thread until the server or :meth:`close` ends it."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    frames: list[Frame] = field(default_factory=list)
    comments: int = 0
    ended: bool = False

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self.response = requests.get(self.url, headers=self.headers, params=self.params, stream=True,
                                     timeout=(5, 60))
        self.status = self.response.status_code
        if self.status != 200:
            self.error = self.response.json()
            self.ended = True
            return
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event, event_id, data = "message", None, []
        try:
            for raw in self.response.iter_lines(decode_unicode=True):
                if raw == "":
                    if data:
                        with self._changed:
                            self.frames.append(Frame(event, event_id, json.loads("\n".join(data))))
                            self._changed.notify_all()
                    event, event_id, data = "message", None, []
                elif raw.startswith(":"):
                    with self._changed:
                        self.comments += 1
                elif ":" in raw:
                    name, _, value = raw.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        event = value
                    elif name == "id":
                        event_id = value
                    elif name == "data":
                        data.append(value)
        except (requests.RequestException, OSError, AttributeError, ValueError):
            pass  # closed under our feet
        finally:
            with self._changed:
                self.ended = True
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[Frame]], Any], timeout: float = 30.0, what: str = "") -> Any:
        """Wait until ``predicate(frames)`` is true; its value."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate(list(self.frames))
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.ended:
                    raise AssertionError(f"{what or 'stream condition'} not reached in {timeout} s "
                                         f"(stream ended: {self.ended}); got {[(f.event, f.id) for f in self.frames]}")
                self._changed.wait(min(remaining, 0.5))

    def wait_ended(self, timeout: float = 30.0) -> None:
        self.wait_for(lambda _frames: self.ended, timeout, "end of stream")

    def events(self, prefix: str = "") -> list[Frame]:
        """The real events (not the stream's own) so far, of types starting with ``prefix``."""
        return [f for f in list(self.frames) if not f.event.startswith("stream.") and f.event.startswith(prefix)]

    def close(self) -> None:
        self.response.close()
