"""Deploy benchmark: N simulated nodes from ``available`` to ``active`` through the agent, end to end.

For each worker count asked for, on a fresh data directory: a simulated
fleet of N IPMI BMCs (power transition delay ``--power-delay``) with their
simulated agents (boot ``--boot-delay``, image write ``--work-duration``),
the service (``conductor up``'s supervisor: embedded Redis, SQLite, 2 API
processes, W conductor workers).  The nodes are enrolled, managed and
provided (automated cleaning off, not measured); then every node is asked
to deploy at once and the clock runs until the last request finished:

    power off -> boot device pxe -> power on -> (agent boots, heartbeats, writes
    the image, reports) -> boot device disk -> power off -> power on -> active

Prints the wall time, throughput and request durations per worker count.

    python bench/deploy.py --nodes 200 --workers 1,2 --boot-delay 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from conductor.bmcsim.agent import SimAgent
from conductor.bmcsim.fleet import Fleet
from conductor.demo import Api, register_image
from conductor.settings import load
from conductor.supervisor import Supervisor

#: A small registered image (the simulated agents write no disk).
IMAGE = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_all(api: Api, ids: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(ids) - len(done)} requests still running after {timeout:.0f} s")
        page = api.call("GET", "/v1/requests", params={"limit": 1000})["requests"]
        for request in page:
            if request["id"] in ids.values() and request["state"] in ("succeeded", "failed", "cancelled"):
                done[request["id"]] = request
        time.sleep(0.25)
    return done


def _seconds(request: dict[str, Any]) -> float:
    created = dt.datetime.fromisoformat(request["created_at"])
    finished = dt.datetime.fromisoformat(request["finished_at"])
    return (finished - created).total_seconds()


def run(nodes: int, workers: int, boot_delay: float, work_duration: float, power_delay: float,
        timeout: float) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"conductor-bench-deploy-w{workers}-"))
    settings = load({"data_dir": data_dir, "api_port": free_port(), "workers": workers, "log_level": "WARNING",
                     "power_poll_initial": 0.25, "power_poll_max": 2.0, "automated_clean": False},
                    env={})
    (data_dir / "logs").mkdir(parents=True)
    # Open for the fleet's life: it starts a crashed shard again with the same stderr.
    bmcsim_log = open(data_dir / "logs" / "bmcsim.log", "ab")  # noqa: SIM115
    fleet = Fleet(count=nodes, delay=power_delay, stderr=bmcsim_log).start()
    agent = SimAgent(fleet, settings.pxe_dir, boot_delay=boot_delay, work_duration=work_duration).start()
    supervisor = Supervisor(settings)
    try:
        supervisor.start()
        threading.Thread(target=supervisor.watch, daemon=True).start()
        api = Api(supervisor.url, settings.admin_token_file.read_text().strip())
        api.call("PATCH", "/v1/throttle", json={"bmc_min_interval": 0, "write_rate": 0, "client_write_rate": 0})
        for entry in fleet.inventory()["nodes"]:
            api.call("POST", "/v1/nodes", json=entry)
        names = [bmc.name for bmc in fleet.bmcs]
        for target in ("manage", "provide"):
            results = _wait_all(api, {n: api.provision(n, target) for n in names}, timeout)
            failed = [r for r in results.values() if r["state"] != "succeeded"]
            if failed:
                raise SystemExit(f"{target}: {len(failed)} failed, e.g. {failed[0]['error']}")
        began = time.monotonic()
        register_image(settings, IMAGE)
        ids = {n: api.provision(n, "active", image_source=IMAGE) for n in names}
        accepted = time.monotonic() - began
        results = _wait_all(api, ids, timeout)
        wall = time.monotonic() - began
        durations = sorted(_seconds(r) for r in results.values())
        failed = [r for r in results.values() if r["state"] != "succeeded"]
        return {
            "nodes": nodes, "workers": workers, "wall": wall, "accepted_in": accepted,
            "rate": nodes / wall, "p50": statistics.median(durations),
            "p95": durations[int(0.95 * (len(durations) - 1))], "max": durations[-1],
            "failed": len(failed), "error": failed[0]["error"] if failed else None,
            "restarts": len(fleet.restarts),
        }
    finally:
        supervisor.stop()
        agent.stop()
        fleet.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--workers", default="1,2", help="Comma-separated worker counts to compare.")
    parser.add_argument("--boot-delay", type=float, default=2.0, help="Seconds the agent takes to boot.")
    parser.add_argument("--work-duration", type=float, default=1.0, help="Seconds the agent takes to write the image.")
    parser.add_argument("--power-delay", type=float, default=0.5, help="Seconds a BMC power transition takes.")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    print(f"deploy benchmark: {args.nodes} nodes, agent boot {args.boot_delay:g} s + write "
          f"{args.work_duration:g} s, power transitions {args.power_delay:g} s", flush=True)
    print(f"{'workers':>7} {'wall s':>7} {'nodes/s':>8} {'p50 s':>6} {'p95 s':>6} {'max s':>6} "
          f"{'failed':>6} {'accept s':>8}", flush=True)
    for workers in (int(w) for w in args.workers.split(",")):
        r = run(args.nodes, workers, args.boot_delay, args.work_duration, args.power_delay, args.timeout)
        print(f"{r['workers']:>7} {r['wall']:>7.1f} {r['rate']:>8.1f} {r['p50']:>6.1f} {r['p95']:>6.1f} "
              f"{r['max']:>6.1f} {r['failed']:>6} {r['accepted_in']:>8.1f}"
              + (f"  first error: {r['error']}" if r["error"] else "")
              + (f"  simulator shard restarts: {r['restarts']}" if r["restarts"] else ""), flush=True)


if __name__ == "__main__":
    main()
