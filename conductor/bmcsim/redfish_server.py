"""The Redfish process: every BMC's Redfish service over HTTP/1.1 (TLS optional), one port each.

Run as ``python -m conductor.bmcsim.redfish_server`` by the control process
(:mod:`.redfish_service`), which writes a JSON configuration on stdin
(passwords never travel in argv) and passes the descriptors of the state
table and of the Redfish table.  It answers ``{"type": "ready"}`` (or
``{"type": "failed", "error"}``) as one line on stdout.

One asyncio loop serves every BMC: a listening socket per BMC on its own
TCP port (as a real BMC is its own host), keep-alive connections, and the
faults the fleet injects, per request:

* ``unreachable``, and each request dropped with probability ``drop``: no
  answer at all (the client's timeout fires; the connection is held until
  the client closes it);
* ``latency``: the answer comes that much later;
* ``http_error`` (with ``http_error_rate``): the request is answered with
  that status (a 503 with ``Retry-After: retry_after``) and not acted on;
* ``reject_password``: logins and every authenticated request get 401;
* ``stuck``, ``ignore_acpi``: as for IPMI (the machine, :mod:`.redfish`).

A reset that arrives while a power transition is due is queued (see
:class:`~conductor.bmcsim.redfish.Machine`); the loop applies queued
commands every :data:`APPLY_EVERY` seconds.  A ``PATCH`` of the boot
override waits (without blocking the loop) for the shard to finish such a
transition instead.  The process exits when its parent goes away.

Virtual media: an ``InsertMedia`` makes the BMC GET the image to its end
first (in a thread), and is refused (400) when it cannot.  For a VM BMC
(``media_file`` in its spec) the image is kept there, mode 0600, and the
machine gets it: this process writes ``{"type": "media", "index", "file",
"seq"}`` on its event pipe (``event_fd``, read by the fleet's event hub
like a shard's), the VM manager attaches the file as the QEMU machine's
CD-ROM (or detaches it, ``file`` null, on ``EjectMedia``) and acknowledges
``seq`` in the Redfish table; only then is the action answered, so a
client that inserts media, sets the boot device and powers on finds the
medium in the machine.  A change the machine did not take (no answer
within :data:`MEDIA_ACK_TIMEOUT`, or QEMU refused it) is a 500 and leaves
the drive as it was.  Media actions of one BMC run one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import random
import signal
import ssl
import sys
import time
import urllib.request
from http import HTTPStatus
from typing import Any

from conductor.bmcsim.redfish import RedfishBMC, Response, error
from conductor.bmcsim.redfish_state import RedfishTable
from conductor.bmcsim.state import FaultBit, StateTable
from conductor.procs import set_parent_death_signal

LOG = logging.getLogger("conductor.bmcsim.redfish_server")

APPLY_EVERY = 0.01  # seconds between looks at queued power commands
PARENT_CHECK = 0.5  # seconds between checks that the control process lives
MAX_BODY = 1 << 20
MAX_HEADERS = 100
BUSY_WAIT = 2.0  # longest a PATCH waits for the shard to finish a due transition
MEDIA_ACK_TIMEOUT = 15.0  # longest a media action of a VM BMC waits for the VM manager
MEDIA_ACTIONS = ("/VirtualMedia.InsertMedia", "/VirtualMedia.EjectMedia")
_KEEP = {"connection": "keep-alive"}


class Server:
    """Every BMC's listener, in one event loop.

    :param config: ``{"host", "state_fd", "count", "shards", "rf_fd", "tls":
        {"cert", "key"} or null, "event_fd": the write end of the event pipe
        or null (no VM BMCs), "bmcs": [{"index", "name", "port", "username",
        "password", "uuid", "mac"?, "media_file"?}]}``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.host: str = config["host"]
        self.table = StateTable.attach(config["state_fd"], config["count"], config["shards"])
        self.rftable = RedfishTable.attach(config["rf_fd"], config["count"])
        self.bmcs = [(spec["port"], RedfishBMC(spec, self.table, self.rftable)) for spec in config["bmcs"]]
        self.ssl: ssl.SSLContext | None = None
        if config.get("tls"):
            self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl.load_cert_chain(config["tls"]["cert"], config["tls"]["key"])
        self.parent_pid = os.getppid()
        self.servers: list[asyncio.AbstractServer] = []
        self.errors = 0
        self.event_fd: int | None = config.get("event_fd")
        if self.event_fd is not None:
            os.set_blocking(self.event_fd, False)
        #: The last media change numbered per VM BMC (acknowledged ones are in the Redfish table).
        self._media_seq = {bmc.index: self.rftable.media_ack(bmc.index)[0] for _, bmc in self.bmcs}
        self._media_locks: dict[int, asyncio.Lock] = {}

    async def start(self) -> None:
        """Bind every BMC's port.

        :raises OSError: a port is taken.
        """
        for port, bmc in self.bmcs:
            server = await asyncio.start_server(
                functools.partial(self._connection, bmc), self.host, port, ssl=self.ssl,
                reuse_address=True, backlog=64, limit=64 * 1024)
            self.servers.append(server)

    async def run(self) -> None:
        """Apply queued commands and watch the parent, until the parent goes."""
        next_parent_check = 0.0
        while True:
            await asyncio.sleep(APPLY_EVERY)
            now = time.monotonic()
            for _, bmc in self.bmcs:
                if bmc.machine.queued is not None:
                    bmc.machine.apply(now)
            if now >= next_parent_check:
                next_parent_check = now + PARENT_CHECK
                if os.getppid() != self.parent_pid:
                    LOG.warning("redfish: control process gone, exiting")
                    return

    # --- one connection -------------------------------------------------------------------
    async def _connection(self, bmc: RedfishBMC, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            while await self._request(bmc, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError,
                TimeoutError):
            pass
        except Exception:  # a bug here costs this connection, never the process
            self.errors += 1
            if self.errors <= 20:
                LOG.exception("redfish: error serving %s", bmc.name)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _request(self, bmc: RedfishBMC, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read and answer one request; False when the connection is over."""
        line = await reader.readline()
        if not line:
            return False
        try:
            method, target, version = line.decode("latin-1").split()
        except ValueError:
            await self._send(writer, error(400, "MalformedJSON", "Malformed request line."), "GET", close=True)
            return False
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            await self._send(writer, error(431, "GeneralError", "Too many header fields."), method, close=True)
            return False
        if "transfer-encoding" in headers:
            await self._send(writer, error(411, "GeneralError", "Send a Content-Length."), method, close=True)
            return False
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            await self._send(writer, error(413, "GeneralError", "Bad or too large Content-Length."), method,
                             close=True)
            return False
        body = await reader.readexactly(length) if length else b""
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        # --- faults -------------------------------------------------------------------------
        bits, drop, latency = self.table.read_net_faults(bmc.index)
        if bits & FaultBit.UNREACHABLE or (drop and random.random() < drop):
            # Never answer: hold the connection until the client gives up.
            while await reader.read(65536):
                pass
            return False
        if latency:
            await asyncio.sleep(latency)
        faults = self.rftable.read_faults(bmc.index)
        if faults.http_error and random.random() < faults.http_error_rate:
            response = self._injected(faults.http_error, faults.retry_after)
        else:
            if method == "PATCH":
                # A boot override must not land while the shard completes a transition.
                deadline = time.monotonic() + BUSY_WAIT
                while bmc.machine.busy(time.monotonic()) and time.monotonic() < deadline:
                    await asyncio.sleep(APPLY_EVERY)
            problem = None
            media_action = method == "POST" and target.split("?", 1)[0].rstrip("/").endswith(MEDIA_ACTIONS)
            if media_action and bmc.media_file is not None:
                response = await self._vm_media(bmc, method, target, headers, body)
            else:
                if media_action and target.split("?", 1)[0].rstrip("/").endswith(MEDIA_ACTIONS[0]):
                    # A BMC fetches the image when it is inserted: one it cannot fetch is refused.
                    problem = await asyncio.to_thread(fetch_media, body)
                response = (error(400, "ActionParameterValueFormatError", problem) if problem
                            else bmc.handle(method, target, headers, body))
        await self._send(writer, response, method, close=close)
        return not close

    # --- virtual media of a VM BMC -------------------------------------------------------------
    async def _vm_media(self, bmc: RedfishBMC, method: str, target: str, headers: dict[str, str],
                        body: bytes) -> Response:
        """InsertMedia / EjectMedia of a VM BMC: the image fetched to its file, the machine told (see above)."""
        assert bmc.media_file is not None
        media_file = bmc.media_file
        partial = media_file + ".part"
        insert = target.split("?", 1)[0].rstrip("/").endswith(MEDIA_ACTIONS[0])
        lock = self._media_locks.setdefault(bmc.index, asyncio.Lock())
        async with lock:
            if insert:
                problem = await asyncio.to_thread(fetch_media, body, partial)
                if problem:
                    return error(400, "ActionParameterValueFormatError", problem)
            before = dict(bmc.media)
            response = bmc.handle(method, target, headers, body)
            file = media_file if insert and bmc.media["Inserted"] else None
            if response.status != 204 or (file is None and not before["Inserted"]):
                # Refused (not logged in, already inserted...), or nothing changes in the drive.
                _remove(partial)
                return response
            if file is not None:
                os.replace(partial, file)
            problem = await self._tell_machine(bmc, file)
            if problem:
                bmc.media = before
                if file is not None:
                    _remove(file)
                return error(500, "GeneralError", problem)
            if file is None:
                _remove(media_file)  # it holds what the image held (an agent's token): gone with the media
            return response

    async def _tell_machine(self, bmc: RedfishBMC, file: str | None) -> str | None:
        """Send a media event to the VM manager and wait for its acknowledgement; what went wrong, or None."""
        if self.event_fd is None:
            return "This BMC has no machine to give the media to."
        seq = self._media_seq[bmc.index] = (self._media_seq[bmc.index] + 1) & 0xFFFFFFFF or 1
        line = json.dumps({"type": "media", "index": bmc.index, "file": file, "seq": seq}) + "\n"
        try:
            os.write(self.event_fd, line.encode())  # far below PIPE_BUF: all or nothing
        except OSError as exc:
            return f"The machine could not be told about the media: {exc}."
        deadline = time.monotonic() + MEDIA_ACK_TIMEOUT
        while True:
            acked, ok = self.rftable.media_ack(bmc.index)
            if acked == seq:
                return None if ok else "The machine could not take the media change (see its VM's history)."
            if time.monotonic() > deadline:
                return f"The machine did not take the media change within {MEDIA_ACK_TIMEOUT:g} s."
            await asyncio.sleep(APPLY_EVERY)

    @staticmethod
    def _injected(status: int, retry_after: float) -> Response:
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        response = error(status, "GeneralError", f"Simulated failure: {status} {phrase}.")
        if status == 503 and retry_after:
            response.headers["Retry-After"] = str(math.ceil(retry_after))
        return response

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Response, method: str, close: bool) -> None:
        payload = response.payload()
        status = response.status
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Status"
        headers = {"OData-Version": "4.0", "Cache-Control": "no-cache",
                   "Content-Length": str(len(payload)), "Connection": "close" if close else "keep-alive"}
        if payload:
            headers["Content-Type"] = "application/json; charset=utf-8"
        headers.update(response.headers)
        if method == "HEAD":
            payload = b""
        head = f"HTTP/1.1 {status} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1") + payload)
        await writer.drain()


def _report(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def fetch_media(body: bytes, dest: str | None = None) -> str | None:
    """GET the ``Image`` of an InsertMedia request to its end; what went wrong, or None (HTTP 200, whole size).

    :param dest: keep the image there (mode 0600; removed when the fetch fails).  With
        ``dest`` only an http(s) image is accepted: the machine must read it.
    """
    try:
        image = json.loads(body or b"{}").get("Image")
    except (ValueError, AttributeError):
        return None  # the handler answers the malformed request
    if not isinstance(image, str) or not image.startswith(("http://", "https://")):
        if dest is not None and isinstance(image, str) and image:
            return "Unable to access the image: only http and https URIs are supported."
        return None
    out = None
    try:
        if dest is not None:
            out = os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
        with urllib.request.urlopen(image, timeout=10) as answer:
            size, want = 0, answer.headers.get("Content-Length")
            while chunk := answer.read(1 << 20):
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
            if answer.status != 200 or (want is not None and int(want) != size):
                problem = f"Unable to access the image: HTTP {answer.status}, {size} of {want} bytes."
            else:
                problem = None
    except Exception as exc:  # whatever it was, the BMC could not read the image
        problem = f"Unable to access the image: {str(exc)[:200]}."
    finally:
        if out is not None:
            out.close()
    if problem and dest is not None:
        _remove(dest)
    return problem


async def _main(config: dict[str, Any]) -> None:
    server = Server(config)
    try:
        await server.start()
    except OSError as exc:
        _report({"type": "failed", "error": str(exc)})
        sys.exit(2)
    _report({"type": "ready", "pid": os.getpid(), "bmcs": len(server.bmcs)})
    await server.run()


def main() -> None:
    """Entry point of the Redfish process: config on stdin, then serve until the parent goes."""
    logging.basicConfig(level=os.environ.get("BMCSIM_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_parent_death_signal(signal.SIGTERM)
    config = json.load(sys.stdin)
    asyncio.run(_main(config))


if __name__ == "__main__":
    main()
