"""The fleet's HTTP/JSON control API (loopback only) and a client for it.

Endpoints (all JSON; errors are ``{"error": message}`` with 400 or 404)::

    GET    /health                      {"ok": true, "bmcs": N, "shards": K}
    GET    /bmcs                        {"bmcs": [state, ...]}
    GET    /bmcs/NAME                   state of one BMC
    PUT    /bmcs/NAME/faults            body {"drop": 0.3, "stuck": true, ...}: merge
    DELETE /bmcs/NAME/faults            clear every fault
    POST   /bmcs/NAME/power             body {"state": "on"|"off"}: drift
    PUT    /delay                       body {"delay": 2.0[, "name": NAME]}
    GET    /inventory                   the inventory document (with passwords)
    POST   /inventory                   body {"path": FILE}: write it on this host
    GET    /events?since=S&timeout=T    {"events": [...], "last": seq} (long poll)
    GET    /shards                      health of each shard process
    GET    /restarts                    every shard restart so far, with reasons
    POST   /shards/K/crash|wedge        test aids: SIGKILL / SIGSTOP a shard
    GET    /vms                         {"vms": [vm, ...]}: the VM BMCs' machines
    GET    /vms/NAME                    one VM (disk, console log, running, pid...)
    PUT    /vms/NAME                    body {"disk", "disk_format", "qemu"}: from its next start
    POST   /vms/NAME/qmp                body {"execute": CMD[, "arguments": {...}]}:
                                        {"return": ...} from the running QEMU

A state is ``{"name", "address", "port", "username", "shard", "power",
"pending", "pending_in", "boot_device", "boot_persistent", "boot_uefi",
"faults", "delay", "power_changes", "packets", "commands", "logins"}``,
plus ``"mac"`` and ``"vm"`` (see :meth:`Fleet.vm`) for a VM BMC.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from conductor.bmcsim.events import PowerEvent
from conductor.bmcsim.fleet import Fleet, FleetError
from conductor.bmcsim.inventory import BMCSpec, write_document
from conductor.bmcsim.vm import VmSpec

LOG = logging.getLogger(__name__)


class _BadRequest(Exception):
    """400 with this message."""


class ControlServer:
    """A threaded HTTP server exposing a :class:`Fleet` on ``host:port``.

    :param port: 0 picks a free port (see :attr:`url`).
    :raises OSError: the port cannot be bound.
    """

    def __init__(self, fleet: Fleet, port: int = 0, host: str = "127.0.0.1") -> None:
        handler = type("Handler", (_Handler,), {"fleet": fleet})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host, port = self.httpd.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> ControlServer:
        """Serve in a background thread."""
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="bmcsim-control",
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    fleet: Fleet
    server_version = "bmcsim"
    protocol_version = "HTTP/1.1"

    _ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
        ("GET", re.compile(r"/health"), "health"),
        ("GET", re.compile(r"/bmcs"), "list_bmcs"),
        ("GET", re.compile(r"/bmcs/(?P<name>[^/]+)"), "show_bmc"),
        ("PUT", re.compile(r"/bmcs/(?P<name>[^/]+)/faults"), "set_faults"),
        ("DELETE", re.compile(r"/bmcs/(?P<name>[^/]+)/faults"), "clear_faults"),
        ("POST", re.compile(r"/bmcs/(?P<name>[^/]+)/power"), "set_power"),
        ("PUT", re.compile(r"/delay"), "set_delay"),
        ("GET", re.compile(r"/inventory"), "get_inventory"),
        ("POST", re.compile(r"/inventory"), "write_inventory"),
        ("GET", re.compile(r"/events"), "events"),
        ("GET", re.compile(r"/shards"), "shards"),
        ("GET", re.compile(r"/restarts"), "restarts"),
        ("POST", re.compile(r"/shards/(?P<shard>\d+)/(?P<action>crash|wedge)"), "shard_action"),
        ("GET", re.compile(r"/vms"), "list_vms"),
        ("GET", re.compile(r"/vms/(?P<name>[^/]+)"), "show_vm"),
        ("PUT", re.compile(r"/vms/(?P<name>[^/]+)"), "configure_vm"),
        ("POST", re.compile(r"/vms/(?P<name>[^/]+)/qmp"), "vm_qmp"),
    )

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOG.debug("control: " + format, *args)

    def do_GET(self) -> None:
        self._route("GET")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        self.query = dict(urllib.parse.parse_qsl(parsed.query))
        for verb, pattern, name in self._ROUTES:
            match = pattern.fullmatch(parsed.path.rstrip("/") or "/")
            if match and verb == method:
                try:
                    self._reply(HTTPStatus.OK, getattr(self, name)(**match.groupdict()))
                except FleetError as exc:
                    self._reply(HTTPStatus.NOT_FOUND, {"error": str(exc)})
                except (_BadRequest, ValueError, TypeError) as exc:
                    self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
        self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {method} {parsed.path}"})

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as exc:
            raise _BadRequest(f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest("body must be a JSON object")
        return body

    def _reply(self, status: HTTPStatus, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # --- views ---------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {"ok": True, "bmcs": self.fleet.count, "shards": self.fleet.shard_count}

    def list_bmcs(self) -> dict[str, Any]:
        return {"bmcs": self.fleet.states()}

    def show_bmc(self, name: str) -> dict[str, Any]:
        return self.fleet.state(name)

    def set_faults(self, name: str) -> dict[str, Any]:
        self.fleet.set_fault(name, **self._body())
        return self.fleet.state(name)

    def clear_faults(self, name: str) -> dict[str, Any]:
        self.fleet.clear_faults(name)
        return self.fleet.state(name)

    def set_power(self, name: str) -> dict[str, Any]:
        state = self._body().get("state")
        if state not in ("on", "off"):
            raise _BadRequest("state must be 'on' or 'off'")
        return self.fleet.set_power(name, state)

    def set_delay(self) -> dict[str, Any]:
        body = self._body()
        self.fleet.set_delay(float(body["delay"]), body.get("name"))
        return {"delay": float(body["delay"]), "name": body.get("name")}

    def get_inventory(self) -> dict[str, Any]:
        return self.fleet.inventory()

    def write_inventory(self) -> dict[str, Any]:
        path = self._body().get("path")
        if not path:
            raise _BadRequest("path is required")
        return {"path": str(self.fleet.write_inventory(path))}

    def events(self) -> dict[str, Any]:
        since = int(self.query.get("since", 0))
        timeout = min(float(self.query.get("timeout", 0)), 60.0)
        events = [ev.as_dict() for ev in self.fleet.events(since, timeout)]
        return {"events": events, "last": events[-1]["seq"] if events else since}

    def shards(self) -> dict[str, Any]:
        return {"shards": self.fleet.shards()}

    def restarts(self) -> dict[str, Any]:
        return {"restarts": [r.as_dict() for r in self.fleet.restarts]}

    def shard_action(self, shard: str, action: str) -> dict[str, Any]:
        index = int(shard)
        if not 0 <= index < self.fleet.shard_count:
            raise FleetError(f"no shard {index}")
        (self.fleet.crash_shard if action == "crash" else self.fleet.wedge_shard)(index)
        return {"shard": index, "action": action}

    def list_vms(self) -> dict[str, Any]:
        return {"vms": self.fleet.vms()}

    def show_vm(self, name: str) -> dict[str, Any]:
        return self.fleet.vm(name)

    def configure_vm(self, name: str) -> dict[str, Any]:
        body = self._body()
        unknown = set(body) - {"disk", "disk_format", "qemu"}
        if unknown:
            raise _BadRequest(f"unknown fields {sorted(unknown)}; known: disk, disk_format, qemu")
        return self.fleet.configure_vm(name, **body)

    def vm_qmp(self, name: str) -> dict[str, Any]:
        body = self._body()
        if not isinstance(body.get("execute"), str):
            raise _BadRequest("execute (a QMP command name) is required")
        arguments = body.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise _BadRequest("arguments must be an object")
        return {"return": self.fleet.vm_qmp(name, body["execute"], arguments)}


class RemoteFleet:
    """Drive a fleet that runs in another process, through its control API.

    Mirrors :class:`Fleet`'s methods except hooks (use :meth:`events`).

    :param url: ``http://127.0.0.1:PORT`` of ``conductor sim run``.
    """

    def __init__(self, url: str, process: subprocess.Popen[bytes] | None = None) -> None:
        self.url = url.rstrip("/")
        self.process = process

    @classmethod
    def spawn(cls, count: int = 1, *, base_port: int | None = None, delay: float = 0.0,
              password_mode: str = "same", shards: int | None = None, timeout: float = 60.0,
              extra_args: tuple[str, ...] = (), vms: VmSpec | None = None) -> RemoteFleet:
        """Start ``conductor sim run`` as a subprocess and connect to it.

        :param vms: VM BMCs too (see :meth:`VmSpec.cli_args`); ``count`` may be 0 then.
        :raises FleetError: the simulator did not start.
        """
        args = [sys.executable, "-m", "conductor.bmcsim.cli", "run", "--count", str(count),
                "--delay", str(delay), "--control-port", "0", "--password-mode", password_mode,
                "--ready-json", "--exit-with-parent"]
        if base_port is not None:
            args += ["--base-port", str(base_port)]
        if shards is not None:
            args += ["--shards", str(shards)]
        if vms is not None:
            args += vms.cli_args()
        args += list(extra_args)
        process = subprocess.Popen(args, stdout=subprocess.PIPE, env=_child_env())
        stdout = process.stdout
        assert stdout is not None
        reader: list[bytes] = []
        thread = threading.Thread(target=lambda: reader.append(stdout.readline()),
                                  daemon=True)
        thread.start()
        thread.join(timeout)
        line = reader[0] if reader else b""
        if not line:
            process.kill()
            process.wait()
            raise FleetError(f"simulator did not start within {timeout} s (status {process.poll()})")
        ready = json.loads(line)
        return cls(ready["control_url"], process)

    def stop(self) -> None:
        """Stop the simulator if this object started it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> RemoteFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- mirror of Fleet --------------------------------------------------------------
    @property
    def bmcs(self) -> list[BMCSpec]:
        """Every BMC, with credentials (from the inventory)."""
        specs = []
        for index, node in enumerate(self.inventory()["nodes"]):
            info = node["driver_info"]
            ports = node.get("ports") or []
            specs.append(BMCSpec(name=node["name"], index=index, host=info["ipmi_address"],
                                 port=info["ipmi_port"], username=info["ipmi_username"],
                                 password=info["ipmi_password"], vm=bool(ports),
                                 mac=ports[0] if ports else None))
        return specs

    def state(self, name: str) -> dict[str, Any]:
        """See :meth:`Fleet.state`."""
        return self._request("GET", f"/bmcs/{urllib.parse.quote(name)}")

    def states(self) -> list[dict[str, Any]]:
        """See :meth:`Fleet.states`."""
        return cast("list[dict[str, Any]]", self._request("GET", "/bmcs")["bmcs"])

    def set_fault(self, name: str, **faults: Any) -> dict[str, Any]:
        """See :meth:`Fleet.set_fault`; returns the BMC's state."""
        return self._request("PUT", f"/bmcs/{urllib.parse.quote(name)}/faults", faults)

    def clear_faults(self, name: str) -> dict[str, Any]:
        """See :meth:`Fleet.clear_faults`."""
        return self._request("DELETE", f"/bmcs/{urllib.parse.quote(name)}/faults")

    def set_power(self, name: str, state: str) -> dict[str, Any]:
        """See :meth:`Fleet.set_power`."""
        return self._request("POST", f"/bmcs/{urllib.parse.quote(name)}/power", {"state": state})

    def set_delay(self, delay: float, name: str | None = None) -> None:
        """See :meth:`Fleet.set_delay`."""
        self._request("PUT", "/delay", {"delay": delay, "name": name})

    def inventory(self) -> dict[str, Any]:
        """See :meth:`Fleet.inventory`."""
        return self._request("GET", "/inventory")

    def write_inventory(self, path: str) -> Path:
        """Fetch the inventory and write it locally (mode 0600)."""
        return write_document(self.inventory(), path)

    def events(self, since: int = 0, timeout: float = 0.0) -> list[PowerEvent]:
        """See :meth:`Fleet.events`."""
        body = self._request("GET", f"/events?since={since}&timeout={timeout}", timeout=timeout + 10)
        return [PowerEvent(**{k: v for k, v in ev.items() if k != "booted"}) for ev in body["events"]]

    def shards(self) -> list[dict[str, Any]]:
        """See :meth:`Fleet.shards`."""
        return cast("list[dict[str, Any]]", self._request("GET", "/shards")["shards"])

    def restarts(self) -> list[dict[str, Any]]:
        """Every shard restart so far."""
        return cast("list[dict[str, Any]]", self._request("GET", "/restarts")["restarts"])

    def crash_shard(self, shard: int) -> None:
        """See :meth:`Fleet.crash_shard`."""
        self._request("POST", f"/shards/{shard}/crash")

    def wedge_shard(self, shard: int) -> None:
        """See :meth:`Fleet.wedge_shard`."""
        self._request("POST", f"/shards/{shard}/wedge")

    def vm(self, name: str) -> dict[str, Any]:
        """See :meth:`Fleet.vm`."""
        return self._request("GET", f"/vms/{urllib.parse.quote(name)}")

    def vms(self) -> list[dict[str, Any]]:
        """See :meth:`Fleet.vms`."""
        return cast("list[dict[str, Any]]", self._request("GET", "/vms")["vms"])

    def configure_vm(self, name: str, **changes: Any) -> dict[str, Any]:
        """See :meth:`Fleet.configure_vm` (``disk``, ``disk_format``, ``qemu``)."""
        body = {k: str(v) for k, v in changes.items() if v is not None}
        return self._request("PUT", f"/vms/{urllib.parse.quote(name)}", body)

    def vm_qmp(self, name: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """See :meth:`Fleet.vm_qmp`."""
        body: dict[str, Any] = {"execute": command}
        if arguments is not None:
            body["arguments"] = arguments
        return self._request("POST", f"/vms/{urllib.parse.quote(name)}/qmp", body)["return"]

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float = 10.0) -> dict[str, Any]:
        """One API call; every answer is a JSON object.

        :raises FleetError: HTTP error (with the server's message) or no server.
        """
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise FleetError(f"{method} {path}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise FleetError(f"simulator control API at {self.url} unreachable: {exc}") from None


def _child_env() -> dict[str, str]:
    """Environment for a child python that must import this package."""
    import os

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
