"""A real HTTP server for remote images: counts requests, can be slow or fall silent."""

from __future__ import annotations

import collections
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor.settings import Settings


class ImageServer:
    """Serves ``files`` (path -> bytes) on loopback; 404 for anything else."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        #: Seconds to pause between 64 KiB pieces (a slow source).
        self.pace = 0.0
        #: Send the headers, then nothing (a source that falls silent).
        self.silent = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.silent:
                    time.sleep(5)
                    return
                for start in range(0, len(body), 65536):
                    if server.pace:
                        time.sleep(server.pace)
                    self.wfile.write(body[start:start + 65536])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url + path


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture
def image_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where file:// images may come from in these tests (outside the data directory)."""
    return tmp_path_factory.mktemp("srv-images")


@pytest.fixture
def settings(settings: Settings, image_files: Path) -> Settings:
    """The shared test settings, with ``image_files`` as the one directory of file:// images."""
    return settings.replace(image_file_dirs=str(image_files))
