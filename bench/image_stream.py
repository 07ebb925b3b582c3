#!/usr/bin/env python3
"""Image serving: streaming throughput and memory of the API, and the remote image cache.

Starts ``conductor up`` (gunicorn with 2 sync API processes, 1 conductor
worker, automated cleaning off) in a temporary data directory and enrols
``fake`` nodes with the ``pxe`` deploy interface; the bench plays their
agents (it reads the boot config, heartbeats for the command and
downloads the URL it is given, exactly as the ramdisk's wget does).
Prints:

1. cache miss vs hit: two nodes deploy one remote http image (``--remote-mb``,
   random bytes from a local HTTP server): seconds from the request to the
   node waiting for its agent (the conductor downloaded, verified and stored
   the image), and how many times the source was asked;
2. the same for a local ``file://`` image of ``--size-mb`` (its checksum is
   computed on first use, then remembered);
3. streaming: the agent's download of that image from the conductor over
   loopback, read and discarded (``--runs`` times): MB/s, and the resident
   memory (RSS) of the API processes before, at the peak during, and after
   (target: >= 200 MB/s, memory flat);
4. the cached remote image, streamed the same way.

Figures only, never asserts (docs/benchmarks.md).

Usage: python bench/image_stream.py [--size-mb 1024] [--remote-mb 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import psutil
import requests

from conductor import bootfiles

CHUNK = 16 * 1024 * 1024


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def random_file(path: Path, megabytes: int) -> str:
    """Write ``megabytes`` MiB of random bytes; returns their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = megabytes * 1024 * 1024
        while left:
            chunk = os.urandom(min(CHUNK, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


class Source:
    """A remote image server on loopback that counts requests."""

    def __init__(self, path: Path) -> None:
        self.hits = 0
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.end_headers()
                with open(path, "rb") as handle:
                    shutil.copyfileobj(handle, self.wfile, CHUNK)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{path.name}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


class Service:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(CONDUCTOR_DATA_DIR=str(data_dir), CONDUCTOR_LOG_LEVEL="WARNING", CONDUCTOR_AUTOMATED_CLEAN="false",
                   CONDUCTOR_IMAGE_FILE_DIRS=str(data_dir.parent / "files"))
        self.proc = subprocess.Popen([sys.executable, "-m", "conductor", "up", "--port", str(self.port),
                                      "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.http = requests.Session()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/", timeout=1).ok:
                    token = (data_dir / "admin.token").read_text().strip()
                    self.http.headers["Authorization"] = f"Bearer {token}"
                    self.call("PATCH", "/v1/throttle", json={"write_rate": 0, "client_write_rate": 0,
                                                             "read_rate": 0, "bmc_min_interval": 0})
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("the service did not start")

    def call(self, method: str, path: str, **kwargs: object) -> dict:  # type: ignore[type-arg]
        response = self.http.request(method, self.url + path, timeout=30, **kwargs)  # type: ignore[arg-type]
        response.raise_for_status()
        return response.json() if response.content else {}

    def api_processes(self) -> list[psutil.Process]:
        """The gunicorn master and workers of the API."""
        found = []
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if " api " in " ".join(proc.cmdline()) + " ":
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def api_rss_mb(self) -> float:
        total = 0
        for proc in self.api_processes():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total / 1e6

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def available_pxe_node(service: Service, name: str) -> str:
    node = service.call("POST", "/v1/nodes", json={"name": name, "driver": "fake",
                                                   "driver_info": {"deploy_interface": "pxe"}})
    for target in ("manage", "provide"):
        wait_request(service, service.call("PUT", f"/v1/nodes/{name}/states/provision",
                                           json={"target": target})["id"])
    return str(node["uuid"])


def wait_request(service: Service, request_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = service.call("GET", f"/v1/requests/{request_id}")["state"]
        if state in ("succeeded", "failed", "cancelled"):
            if state != "succeeded":
                raise SystemExit(f"request {request_id} {state}")
            return
        time.sleep(0.05)
    raise SystemExit(f"request {request_id} did not finish")


def deploy_until_waiting(service: Service, name: str, **params: str) -> float:
    """Seconds from asking for the deploy to the node waiting for its agent (the image is ready)."""
    began = time.monotonic()
    service.call("PUT", f"/v1/nodes/{name}/states/provision", json={"target": "active", **params})
    while True:
        node = service.call("GET", f"/v1/nodes/{name}/states")
        if node["provision_state"] == "wait call-back":
            return time.monotonic() - began
        if node["provision_state"] == "deploy failed":
            raise SystemExit(f"{name}: {node['last_error']}")
        time.sleep(0.02)


def agent_url(service: Service, uuid: str) -> str:
    """What the node's agent is told to download (read as the agent reads it)."""
    config = bootfiles.read(service.data_dir / "pxe", bootfiles.key_for({}, uuid))
    assert config is not None
    answer = requests.post(f"{service.url}/v1/nodes/{uuid}/heartbeat", json={"agent_version": "bench"},
                           headers={"X-Agent-Token": config["token"]}, timeout=10).json()
    return str(answer["command"]["params"]["image_source"])


def stream(url: str) -> tuple[int, float]:
    """Download ``url`` and discard it; (bytes, seconds)."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    buffer = bytearray(1024 * 1024)
    view = memoryview(buffer)
    began = time.monotonic()
    conn.request("GET", parsed.path)
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"GET {url}: {response.status} {response.read()[:200]!r}")
    total = 0
    while count := response.readinto(view):
        total += count
    elapsed = time.monotonic() - began
    conn.close()
    return total, elapsed


def measured_stream(service: Service, url: str) -> tuple[float, float, float]:
    """(MB/s, RSS before, peak RSS during) of one download."""
    before = service.api_rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], service.api_rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    size, seconds = stream(url)
    done.set()
    sampler.join()
    return size / seconds / 1e6, before, peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="local image size, MiB [1024]")
    parser.add_argument("--remote-mb", type=int, default=200, help="remote image size, MiB [200]")
    parser.add_argument("--runs", type=int, default=3, help="downloads of the local image [3]")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conductor-bench-images-"))
    service = None
    try:
        print(f"writing {args.size_mb} MiB and {args.remote_mb} MiB of random bytes ...", flush=True)
        (work / "files").mkdir()
        local, remote = work / "files" / "local.img", work / "remote.img"
        random_file(local, args.size_mb)
        remote_sha = random_file(remote, args.remote_mb)
        source = Source(remote)
        service = Service(work / "data")
        uuids = {name: available_pxe_node(service, name) for name in ("n1", "n2", "n3")}

        print(f"\n1. remote image ({args.remote_mb} MiB over http, loopback), request -> node waiting for its agent")
        miss = deploy_until_waiting(service, "n1", image_source=source.url, image_checksum=remote_sha)
        hit = deploy_until_waiting(service, "n2", image_source=source.url, image_checksum=remote_sha)
        print(f"   cache miss: {miss:6.2f} s  (download, sha256, store)")
        print(f"   cache hit:  {hit:6.2f} s")
        print(f"   requests to the source: {source.hits}")

        print(f"\n2. local image ({args.size_mb} MiB, file://), request -> node waiting for its agent")
        first = deploy_until_waiting(service, "n3", image_source=local.as_uri())
        print(f"   first use:  {first:6.2f} s  (sha256 of the file, then remembered)")

        print(f"\n3. agent download of the {args.size_mb} MiB image from the API (gunicorn, 1 MiB pieces), "
              "read and discarded")
        url = agent_url(service, uuids["n3"])
        rates = []
        for run in range(args.runs):
            rate, before, peak = measured_stream(service, url)
            rates.append(rate)
            print(f"   run {run + 1}: {rate:7.0f} MB/s   API RSS before {before:6.1f} MB, "
                  f"peak during {peak:6.1f} MB")
        time.sleep(0.5)
        print(f"   API RSS after: {service.api_rss_mb():.1f} MB ({len(service.api_processes())} processes)")
        print(f"   best {max(rates):.0f} MB/s, mean {sum(rates) / len(rates):.0f} MB/s (target >= 200)")

        print(f"\n4. agent download of the cached {args.remote_mb} MiB remote image")
        rate, before, peak = measured_stream(service, agent_url(service, uuids["n1"]))
        print(f"   {rate:7.0f} MB/s   API RSS before {before:6.1f} MB, peak during {peak:6.1f} MB")
    finally:
        if service is not None:
            service.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
