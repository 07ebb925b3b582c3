"""The fleet's Redfish front end, as the control process runs it.

:class:`RedfishService` picks a TCP port per BMC (``port`` = the first of a
range; 0 = any free range, trying the BMCs' UDP port numbers first, so a
BMC answers IPMI and Redfish on the same number), writes a self-signed
certificate for HTTPS (:mod:`.tlscert`), creates the Redfish table
(:mod:`.redfish_state`) and starts the Redfish process
(:mod:`.redfish_server`) on the fleet's state table.  The fleet calls it
from a few hooks (start, stop, state, faults, inventory).  With VM BMCs
(``media_files``) the process also gets the write end of an event pipe,
whose read end (:attr:`RedfishService.event_fd`) the fleet's event hub
reads: virtual media changes for the VM manager.

Each BMC's node can then be enrolled with the ``redfish`` driver::

    {"redfish_address": "https://127.0.0.1:7300", "redfish_system_id": "/redfish/v1/Systems/sim-0000",
     "redfish_username": "admin", "redfish_password": "...", "redfish_verify_ca": "<cert path>"}
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from conductor.bmcsim.inventory import BMCSpec
from conductor.bmcsim.redfish_state import FAULT_NAMES, HttpFaults, RedfishTable
from conductor.bmcsim.state import StateTable
from conductor.bmcsim.tlscert import write_self_signed

LOG = logging.getLogger(__name__)


class RedfishError(RuntimeError):
    """The Redfish front end could not start."""


class RedfishService:
    """Redfish for every BMC of a fleet, served by one child process.

    :param bmcs: the fleet's BMCs.
    :param table: the fleet's state table (power and boot device are shared with IPMI).
    :param port: first TCP port (BMC ``i`` gets ``port + i``); 0 picks a free range.
    :param tls: serve HTTPS with a self-signed certificate (:attr:`cert_path`).
    :param cert_dir: where to write it (default: a temporary directory removed by :meth:`stop`).
    :param media_files: ``{VM BMC name: path}``: where each VM BMC keeps the image
        inserted into its virtual CD, which its machine's CD-ROM reads.
    """

    def __init__(self, bmcs: Sequence[BMCSpec], host: str, table: StateTable, *, port: int = 0,
                 tls: bool = True, cert_dir: str | os.PathLike[str] | None = None,
                 stderr: IO[bytes] | int | None = None, start_timeout: float = 30.0,
                 media_files: dict[str, Path] | None = None) -> None:
        self.bmcs = list(bmcs)
        self.host = host
        self.table = table
        self.tls = tls
        self.requested_port = port
        self.start_timeout = start_timeout
        self._stderr = stderr
        self._own_dir = cert_dir is None
        self._cert_dir = Path(cert_dir) if cert_dir is not None else None
        self.base_port = 0
        self.cert_path: Path | None = None
        self.rftable: RedfishTable | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.media_files = dict(media_files or {})
        #: The read end of the process's event pipe (media events), for the fleet's hub; None without VMs.
        self.event_fd: int | None = None
        self._index = {bmc.name: i for i, bmc in enumerate(self.bmcs)}
        self._lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, preferred_base: int | None = None) -> RedfishService:
        """Pick the ports, write the certificate, start the process and wait until it serves.

        :raises RedfishError: no free ports, or the process failed to start.
        """
        count = len(self.bmcs)
        if self.requested_port:
            self.base_port = self.requested_port
        else:
            self.base_port = find_free_tcp_ports(count, self.host, preferred_base)
        tls_config = None
        if self.tls:
            if self._cert_dir is None:
                self._cert_dir = Path(tempfile.mkdtemp(prefix="bmcsim-redfish-"))
            cert, key = write_self_signed(self._cert_dir, self.host)
            self.cert_path = cert
            tls_config = {"cert": str(cert), "key": str(key)}
        self.rftable = RedfishTable.create(self.table.count)
        write_fd = None
        if self.media_files:
            self.event_fd, write_fd = os.pipe()
        config = {"host": self.host, "state_fd": self.table.fd, "count": self.table.count,
                  "shards": self.table.shards, "rf_fd": self.rftable.fd, "tls": tls_config, "event_fd": write_fd,
                  "bmcs": [self._spec(bmc) for bmc in self.bmcs]}
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        fds = (self.table.fd, self.rftable.fd) + ((write_fd,) if write_fd is not None else ())
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "conductor.bmcsim.redfish_server"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self._stderr, pass_fds=fds, env=env, start_new_session=True)
        finally:
            if write_fd is not None:
                os.close(write_fd)  # the child's now: its exit closes the pipe
        assert self.process.stdin is not None and self.process.stdout is not None
        # The passwords travel on stdin, not argv, so ps does not show them.
        self.process.stdin.write(json.dumps(config).encode())
        self.process.stdin.close()
        ready = self._read_ready(self.process.stdout)
        if ready.get("type") != "ready":
            self.stop()
            if self.event_fd is not None:
                os.close(self.event_fd)
                self.event_fd = None
            raise RedfishError(f"the Redfish process could not start: {ready.get('error', ready)}")
        LOG.info("Redfish for %d BMCs on %s:%d-%d (%s)", count, self.host, self.base_port,
                 self.base_port + count - 1, "https" if self.tls else "http")
        return self

    def _spec(self, bmc: BMCSpec) -> dict[str, Any]:
        spec = {**bmc.shard_config(), "port": self.port_of(bmc)}
        mac = getattr(bmc, "mac", None)  # a VM's NIC (BMCSpec.mac, with the QEMU backend)
        if mac:
            spec["mac"] = mac
        if bmc.name in self.media_files:
            spec["media_file"] = str(self.media_files[bmc.name])
        return spec

    def _read_ready(self, stdout: IO[bytes]) -> dict[str, Any]:
        result: dict[str, Any] = {"type": "failed", "error": f"not ready within {self.start_timeout:g} s"}

        def read() -> None:
            line = stdout.readline()
            if line:
                try:
                    result.update(json.loads(line))
                except ValueError:
                    result.update(error=line.decode(errors="replace").strip())
            else:
                result.update(error=f"exited with status {self.process.wait() if self.process else '?'}")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(self.start_timeout)
        return result

    def __str__(self) -> str:
        return "the Redfish process"

    def stop(self) -> None:
        """Stop the process, close the table, remove a temporary certificate; safe to call twice.

        The read end of the event pipe (:attr:`event_fd`) belongs to whoever reads it (the hub).
        """
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self.rftable is not None:
            self.rftable.close()
            self.rftable = None
        if self._own_dir and self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = None

    @property
    def alive(self) -> bool:
        """Whether the Redfish process runs."""
        return self.process is not None and self.process.poll() is None

    # --- BMCs ----------------------------------------------------------------------------------------
    def port_of(self, bmc: BMCSpec) -> int:
        """The TCP port of ``bmc``'s Redfish service."""
        return self.base_port + self._index[bmc.name]

    def url_of(self, bmc: BMCSpec) -> str:
        """``http(s)://host:port`` of ``bmc``'s Redfish service."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port_of(bmc)}"

    def driver_info(self, bmc: BMCSpec) -> dict[str, Any]:
        """``driver_info`` of a ``redfish`` node for ``bmc``."""
        return {"redfish_address": self.url_of(bmc), "redfish_system_id": f"/redfish/v1/Systems/{bmc.name}",
                "redfish_username": bmc.username, "redfish_password": bmc.password,
                "redfish_verify_ca": str(self.cert_path) if self.tls and self.cert_path else False}

    def state(self, bmc: BMCSpec) -> dict[str, Any]:
        """Port, URL, HTTP faults and counters of ``bmc``'s Redfish service."""
        table = self._table()
        return {"port": self.port_of(bmc), "url": self.url_of(bmc),
                "faults": table.read_faults(bmc.index).as_dict(), **table.counters(bmc.index)}

    def set_fault(self, bmc: BMCSpec, **faults: Any) -> HttpFaults:
        """Change some HTTP faults of ``bmc`` (``http_error``, ``http_error_rate``, ``retry_after``).

        :raises ValueError: an unknown fault name.
        """
        unknown = set(faults) - set(FAULT_NAMES)
        if unknown:
            raise ValueError(f"unknown Redfish faults {sorted(unknown)}; known: {', '.join(FAULT_NAMES)}")
        table = self._table()
        with self._lock:
            current = table.read_faults(bmc.index).as_dict()
            current.update({k: v for k, v in faults.items() if v is not None})
            new = HttpFaults(int(current["http_error"]), float(current["http_error_rate"]),
                             float(current["retry_after"]))
            table.write_faults(bmc.index, new)
        return new

    def clear_faults(self, bmc: BMCSpec) -> None:
        """Remove every HTTP fault of ``bmc``."""
        self._table().write_faults(bmc.index, HttpFaults())

    def expire_sessions(self, bmc: BMCSpec) -> None:
        """Drop every Redfish session of ``bmc`` (clients must log in again: a 401, then a new session)."""
        with self._lock:
            self._table().bump_session_epoch(bmc.index)

    def _table(self) -> RedfishTable:
        if self.rftable is None:
            raise RedfishError("the Redfish front end is not running")
        return self.rftable


def find_free_tcp_ports(count: int, host: str, preferred: int | None = None, attempts: int = 50) -> int:
    """The first of ``count`` consecutive free TCP ports on ``host`` (``preferred`` first, if free).

    :raises RedfishError: none found.
    """
    low, high = 10000, 32000 - count
    candidates = ([preferred] if preferred else []) + [random.randint(low, max(low, high)) for _ in range(attempts)]
    for base in candidates:
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RedfishError(f"no {count} consecutive free TCP ports on {host}")
