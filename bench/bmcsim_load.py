"""Load figures for the BMC simulator and the IPMI client (prints, never asserts).

Usage (from the repository root)::

    python bench/bmcsim_load.py start   --count 1000 --shards 1,4
    python bench/bmcsim_load.py models  --count 200 --duration 8 \
        --models plain-serial,serial,threads4,threads16,plain-threads16,procs2,procs4
    python bench/bmcsim_load.py reboots --count 1000 --delay 2 --model procs4
    python bench/bmcsim_load.py storm   --count 1000 --duration 60 --ipmitool 16 --pyghmi 4
    python bench/bmcsim_load.py storm   --target plain --count 1000 --duration 60 --ipmitool 16

``models``: calls/s of ``get_power`` on open sessions, per concurrency model
(``plain-*`` = pyghmi's own ``Command``, no fixes; the rest = BMCClient).
Each model runs in fresh processes; a worker that makes no progress for
``--hang`` seconds is reported as hung and killed.

``reboots``: N power-off-then-on cycles driven the way conductor jobs are
meant to (send, never sleep on a BMC, poll later), by P processes.

``storm``: sustained concurrent load (ipmitool processes re-logging all the
time plus pyghmi clients) against a fleet, reporting shard restarts,
probe misses and per-shard errors: whether the fleet wedges, and survives.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conductor.bmcsim import Fleet


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# --- start --------------------------------------------------------------------------
def bench_start(args: argparse.Namespace) -> None:
    import psutil

    for shards in [int(s) for s in args.shards.split(",")]:
        with Fleet(count=args.count, shards=shards) as fleet:
            me = psutil.Process()
            kids = [psutil.Process(s["pid"]) for s in fleet.shards()]
            rss = me.memory_info().rss + sum(k.memory_info().rss for k in kids)
            uss = me.memory_full_info().uss + sum(k.memory_full_info().uss for k in kids)
            began = time.monotonic()
        print(f"start count={args.count} shards={shards}: ready in {fleet.started_in:.2f} s, "
              f"RSS total {rss / 2**20:.0f} MB (USS {uss / 2**20:.0f} MB; control "
              f"{me.memory_info().rss / 2**20:.0f} MB), stop {time.monotonic() - began:.2f} s; {_load()}")


# --- models -------------------------------------------------------------------------
def _make_caller(bmc: dict[str, Any], plain: bool) -> Any:
    if plain:
        from pyghmi.ipmi import command

        cmd = command.Command(bmc["host"], bmc["username"].encode(), bmc["password"].encode(),
                              port=bmc["port"])
        return lambda: cmd.raw_command(netfn=0, command=1)
    from conductor.drivers.ipmi_client import BMCClient, BMCCredentials

    client = BMCClient(BMCCredentials(bmc["host"], bmc["port"], bmc["username"], bmc["password"]),
                       retries=1)
    client.check_credentials()  # log in now, outside the timed phase
    return client.get_power


def _thread_loop(bmcs: list[dict[str, Any]], plain: bool, duration: float, out: dict[str, Any],
                 progress: list[float]) -> None:
    lat: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    began = time.monotonic()
    callers = []
    for bmc in bmcs:  # log in to each BMC once (timed separately)
        try:
            callers.append(_make_caller(bmc, plain))
        except Exception as exc:  # report, do not die: we are measuring failures
            errors[f"login: {type(exc).__name__}: {exc}"[:80]] += 1
        progress[0] = time.monotonic()
    out["login_s"] = time.monotonic() - began
    out["logins"] = len(callers)
    stop_at = time.monotonic() + duration  # the call phase is timed on its own
    i = 0
    while callers and time.monotonic() < stop_at:
        call = callers[i % len(callers)]
        i += 1
        t0 = time.perf_counter()
        try:
            call()
        except Exception as exc:  # report, do not die: we are measuring failures
            errors[f"{type(exc).__name__}: {exc}"[:80]] += 1
        lat.append(time.perf_counter() - t0)
        progress[0] = time.monotonic()
    out["lat"] = lat
    out["errors"] = errors


def _async_loop(bmcs: list[dict[str, Any]], duration: float, out: dict[str, Any],
                progress: list[float]) -> None:
    """pyghmi's callback API: one request in flight per BMC, all from this one thread.

    Sessions are opened with our Command (pyghmi's synchronous login loses
    wake-ups); then each call is ``Session.raw_command(callback=...)`` and
    this thread turns pyghmi's loop with ``Session.wait_for_rsp``.
    """
    from pyghmi.ipmi.private import session as ipmi_session

    from conductor.drivers.ipmi_client import _Command

    lat: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    began = time.monotonic()
    sessions = []
    for bmc in bmcs:
        try:
            sessions.append(_Command(bmc["host"], bmc["username"].encode(), bmc["password"].encode(),
                                     bmc["port"]).ipmi_session)
        except Exception as exc:  # report, do not die: we are measuring failures
            errors[f"login: {exc}"[:80]] += 1
    out["login_s"] = time.monotonic() - began
    out["logins"] = len(sessions)
    ready: collections.deque[Any] = collections.deque(sessions)
    sent_at: dict[Any, float] = {}

    def make_callback(sess: Any) -> Any:
        def callback(response: dict[str, Any]) -> None:
            # what raw_command's synchronous path does after a reply
            sess.incommand = False
            while sess.evq:
                sess.evq.popleft().set()
            lat.append(time.perf_counter() - sent_at.pop(sess))
            if "error" in response:
                errors[str(response["error"])[:80]] += 1
            ready.append(sess)
        return callback

    callbacks = {sess: make_callback(sess) for sess in sessions}
    stop_at = time.monotonic() + duration
    while time.monotonic() < stop_at:
        while ready:
            sess = ready.popleft()
            sent_at[sess] = time.perf_counter()
            try:
                sess.raw_command(netfn=0, command=1, callback=callbacks[sess])
            except Exception as exc:  # report, do not die
                errors[f"{type(exc).__name__}: {exc}"[:80]] += 1
                sent_at.pop(sess, None)
        ipmi_session.Session.wait_for_rsp(timeout=0.05)
        progress[0] = time.monotonic()
    out["lat"] = lat
    out["errors"] = errors


def _proc_main(bmcs: list[dict[str, Any]], threads: int, plain: bool, duration: float,
               results: mp.Queue, hang: float) -> None:
    outs: list[dict[str, Any]] = [{} for _ in range(threads)]
    progress = [[time.monotonic()] for _ in range(threads)]
    workers = []
    for t in range(threads):
        part = bmcs[t::threads]
        target = _async_loop if plain is None else _thread_loop
        args = (part, duration, outs[t], progress[t]) if plain is None else (part, plain, duration, outs[t],
                                                                             progress[t])
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        workers.append(thread)
    hung = 0
    for t, thread in enumerate(workers):
        while thread.is_alive():
            thread.join(1.0)
            if thread.is_alive() and time.monotonic() - progress[t][0] > hang:
                hung += 1
                break
    lat = [x for o in outs for x in o.get("lat", [])]
    errors: collections.Counter[str] = collections.Counter()
    for o in outs:
        errors.update(o.get("errors", {}))
    results.put({"lat": lat, "errors": dict(errors), "hung": hung,
                 "login_s": max(o.get("login_s", 0.0) for o in outs),
                 "logins": sum(o.get("logins", 0) for o in outs)})
    _exit_now(results)


def _exit_now(results: mp.Queue) -> None:
    """Flush our result, then exit without waiting for (possibly hung) threads."""
    results.close()
    results.join_thread()
    os._exit(0)


def _parse_model(name: str) -> tuple[bool | None, int, int]:
    """``[plain-][procsP][xthreadsT|xasync]`` -> (plain, P, T); plain None means async."""
    plain: bool | None = name.startswith("plain-")
    name = name.removeprefix("plain-")
    procs, threads = 1, 1
    for part in name.split("x"):
        if part.startswith("procs"):
            procs = int(part[5:])
        elif part.startswith("threads"):
            threads = int(part[7:])
        elif part == "async":
            plain = None
        elif part != "serial":
            raise SystemExit(f"unknown model {name}")
    return plain, procs, threads


def run_model(bmcs: list[dict[str, Any]], model: str, duration: float, hang: float) -> dict[str, Any]:
    """Run one concurrency model against ``bmcs``; returns its figures."""
    plain, procs, threads = _parse_model(model)
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    children = []
    for p in range(procs):
        child = ctx.Process(target=_proc_main, args=(bmcs[p::procs], threads, plain, duration, results, hang))
        child.start()
        children.append(child)
    collected = []
    deadline = time.monotonic() + duration + hang + 30 + 30.0 * len(bmcs) / 1000
    while len(collected) < procs and time.monotonic() < deadline:
        try:
            collected.append(results.get(timeout=1.0))
        except Exception:  # queue.Empty: keep waiting until the deadline
            continue
    for child in children:
        child.join(2)
        if child.is_alive():
            child.kill()
            child.join()
    lat = sorted(x for r in collected for x in r["lat"])
    errors: collections.Counter[str] = collections.Counter()
    for r in collected:
        errors.update(r["errors"])
    hung = sum(r["hung"] for r in collected) + (procs - len(collected)) * threads
    calls = len(lat)
    return {
        "model": model, "calls": calls, "calls_s": calls / duration if calls else 0.0,
        "p50_ms": 1e3 * lat[calls // 2] if calls else None,
        "p99_ms": 1e3 * lat[int(calls * 0.99)] if calls else None,
        "max_ms": 1e3 * lat[-1] if calls else None,
        "slow_over_100ms": sum(1 for x in lat if x > 0.1),
        "errors": sum(errors.values()), "error_kinds": dict(errors.most_common(3)),
        "hung_workers": hung, "login_s": max((r["login_s"] for r in collected), default=None),
        "logins": sum(r["logins"] for r in collected),
    }


def bench_models(args: argparse.Namespace) -> None:
    with Fleet(count=args.count, shards=args.shards) as fleet:
        bmcs = [{"host": b.host, "port": b.port, "username": b.username, "password": b.password}
                for b in fleet.bmcs]
        print(f"fleet {args.count} BMCs, {fleet.shard_count} shards; {_load()}")
        summary: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for round_no in range(args.rounds):  # interleaved, so machine noise hits every model
            for model in args.models.split(","):
                r = run_model(bmcs, model, args.duration, args.hang)
                summary[model].append(r)
                print(f"[{round_no + 1}] {r['model']:>18}: {r['calls_s']:6.0f} calls/s  "
                      f"p50 {r['p50_ms'] or 0:6.2f} ms  p99 {r['p99_ms'] or 0:7.1f} ms  "
                      f"max {r['max_ms'] or 0:6.0f} ms  >100ms {r['slow_over_100ms']:4d}  "
                      f"errors {r['errors']:3d}  hung {r['hung_workers']}  "
                      f"logins {r['logins']} in {r['login_s'] or 0:.1f} s  "
                      f"shard restarts {len(fleet.restarts)}  {_load()}"
                      + (f"\n{'':>24}errors: {r['error_kinds']}" if r["errors"] else ""), flush=True)
        print("summary (median [min-max] calls/s over rounds; totals of errors/hung/slow):")
        for model, runs in summary.items():
            rates = sorted(r["calls_s"] for r in runs)
            print(f"  {model:>18}: {statistics.median(rates):6.0f} [{rates[0]:.0f}-{rates[-1]:.0f}]  "
                  f"errors {sum(r['errors'] for r in runs)}  hung {sum(r['hung_workers'] for r in runs)}  "
                  f">100ms {sum(r['slow_over_100ms'] for r in runs)}  "
                  f"login {statistics.median(r['login_s'] or 0 for r in runs):.1f} s")


# --- reboots ------------------------------------------------------------------------
class _PlainPower:
    """The bare baseline: pyghmi's own Command API, nothing of ours."""

    def __init__(self, bmc: dict[str, Any]) -> None:
        from pyghmi.ipmi import command

        self.cmd = command.Command(bmc["host"], bmc["username"].encode(), bmc["password"].encode(),
                                   port=bmc["port"])

    def set_power(self, state: str) -> None:
        self.cmd.set_power(state, wait=False)

    def get_power(self) -> str:
        return self.cmd.get_power()["powerstate"]


def _reboot_thread(bmcs: list[dict[str, Any]], delay: float, poll: float, plain: bool,
                   out: dict[str, Any], clients: list[Any] | None = None) -> None:
    """Reboot each BMC (off, wait off, on, wait on) without ever sleeping on one BMC.

    ``clients``: already logged-in clients (bench/fleet_reboot.py), else each
    logs in at first contact.
    """
    import heapq

    from conductor.drivers.ipmi_client import BMCClient, BMCCredentials

    clients = list(clients) if clients is not None else [None] * len(bmcs)
    # (due time, index, phase): phases 0 send off, 1 poll off, 2 send on, 3 poll on
    queue = [(time.monotonic(), i, 0) for i in range(len(bmcs))]
    heapq.heapify(queue)
    calls = errors = 0
    done_at: list[float] = []
    while queue:
        due, i, phase = heapq.heappop(queue)
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # nothing else is due: this worker is idle
        try:
            if clients[i] is None:  # first contact: log in (counted in the total time)
                b = bmcs[i]
                clients[i] = _PlainPower(b) if plain else BMCClient(
                    BMCCredentials(b["host"], b["port"], b["username"], b["password"]), retries=2)
            client = clients[i]
            calls += 1
            if phase == 0:
                client.set_power("off")
                heapq.heappush(queue, (time.monotonic() + delay, i, 1))
            elif phase == 1:
                nxt = (i, 2) if client.get_power() == "off" else (i, 1)
                heapq.heappush(queue, (time.monotonic() + (0 if nxt[1] == 2 else poll), *nxt))
            elif phase == 2:
                client.set_power("on")
                heapq.heappush(queue, (time.monotonic() + delay, i, 3))
            elif client.get_power() == "on":
                done_at.append(time.monotonic())
            else:
                heapq.heappush(queue, (time.monotonic() + poll, i, 3))
        except Exception:  # BMCError or pyghmi's own: count it and try again later
            errors += 1
            heapq.heappush(queue, (time.monotonic() + poll, i, phase))
    out.update(calls=calls, errors=errors, done=done_at)


def _reboot_proc(bmcs: list[dict[str, Any]], delay: float, poll: float, plain: bool, threads: int,
                 results: mp.Queue) -> None:
    outs: list[dict[str, Any]] = [{} for _ in range(threads)]
    workers = [threading.Thread(target=_reboot_thread, args=(bmcs[t::threads], delay, poll, plain, outs[t]),
                                daemon=True) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put({"calls": sum(o.get("calls", 0) for o in outs), "errors": sum(o.get("errors", 0) for o in outs),
                 "done": [t for o in outs for t in o.get("done", [])]})
    _exit_now(results)


def bench_reboots(args: argparse.Namespace) -> None:
    plain, procs, threads = _parse_model(args.model)
    with Fleet(count=args.count, delay=args.delay, initial_power="on", shards=args.shards) as fleet:
        bmcs = [{"host": b.host, "port": b.port, "username": b.username, "password": b.password}
                for b in fleet.bmcs]
        ctx = mp.get_context("spawn")
        results: mp.Queue = ctx.Queue()
        children = [ctx.Process(target=_reboot_proc, args=(bmcs[p::procs], args.delay, args.poll, plain,
                                                           threads, results)) for p in range(procs)]
        load = _load()
        start = time.monotonic()  # includes process start and every login
        for child in children:
            child.start()
        collected = []
        for _ in children:
            try:
                collected.append(results.get(timeout=args.timeout))
            except Exception:  # queue.Empty: a worker hung
                break
        for child in children:
            child.join(1)
            if child.is_alive():
                child.kill()
                child.join()
        done = sorted(t for r in collected for t in r["done"])
        total = done[-1] - start if done else float("nan")
        print(f"reboots model={args.model} count={args.count} delay={args.delay} shards={fleet.shard_count}: "
              f"{len(done)}/{args.count} done in {total:.1f} s (median node {statistics.median(done) - start:.1f} s)"
              f"{'' if len(collected) == procs else ' HUNG'}; IPMI calls {sum(r['calls'] for r in collected)}, "
              f"errors {sum(r['errors'] for r in collected)}; shard restarts {len(fleet.restarts)}; "
              f"before: {load}", flush=True)


# --- storm --------------------------------------------------------------------------
class _Target:
    """What the storm hits: our Fleet, or the plain one-process pyghmi server."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.fleet: Fleet | None = None
        self.process: subprocess.Popen[bytes] | None = None
        if args.target == "fleet":
            self.fleet = Fleet(count=args.count, shards=args.shards).start()
            self.bmcs = [(b.host, b.port, b.username, b.password) for b in self.fleet.bmcs]
        else:
            from conductor.bmcsim.fleet import find_free_ports

            base = find_free_ports(args.count)
            script = Path(__file__).with_name("plain_pyghmi_fleet.py")
            self.stderr_path = Path(args.plain_stderr)
            self.process = subprocess.Popen([sys.executable, str(script), str(base), str(args.count)],
                                            stdout=subprocess.PIPE, stderr=self.stderr_path.open("wb"))
            assert self.process.stdout is not None
            self.process.stdout.readline()
            self.bmcs = [("127.0.0.1", base + i, "admin", "password") for i in range(args.count)]

    def stop(self) -> None:
        if self.fleet:
            self.fleet.stop()
        if self.process:
            self.process.kill()
            self.process.wait()


def _probe(host: str, port: int, timeout: float) -> bool:
    import socket

    from conductor.bmcsim.supervisor import PROBE_REQUEST

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(PROBE_REQUEST, (host, port))
            return bool(sock.recvfrom(512)[0])
        except OSError:
            return False


def bench_storm(args: argparse.Namespace) -> None:
    target = _Target(args)
    began = time.monotonic()
    stop_at = began + args.duration
    counts: collections.Counter[str] = collections.Counter()
    outages: list[tuple[float, float]] = []  # (start, end) of client-visible total outages

    def ipmitool_loop() -> None:
        while time.monotonic() < stop_at:
            host, port, user, password = random.choice(target.bmcs)
            verb = random.choice(["status", "on", "off"])
            try:
                rc = subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-N", "1", "-R", "2",
                                     "-H", host, "-p", str(port), "-U", user, "-P", password,
                                     "chassis", "power", verb], capture_output=True, timeout=30).returncode
            except subprocess.TimeoutExpired:
                rc = -1
            counts["ipmitool ok" if rc == 0 else "ipmitool failed"] += 1

    recovered_after: list[float] = []

    def monitor() -> None:
        """Every 0.5 s ask 5 random BMCs; all silent = an outage (what a client sees).

        Keeps watching for ``--recovery`` seconds after the load stops, to tell
        a permanent wedge from an overload that clears by itself.
        """
        down_since: float | None = None
        last_dump = 0.0
        watch_until = stop_at + args.recovery
        while time.monotonic() < watch_until:
            sample = random.sample(target.bmcs, min(5, len(target.bmcs)))
            alive = any(_probe(h, p, 0.5) for h, p, _, _ in sample)
            now = time.monotonic()
            if not alive:
                if down_since is None:
                    down_since = now
                if target.process is not None and now - last_dump >= 5:
                    last_dump = now  # ask the plain server where it is stuck
                    target.process.send_signal(signal.SIGUSR1)
            elif down_since is not None:
                outages.append((down_since - began, now - began))
                if down_since < stop_at <= now:
                    recovered_after.append(now - stop_at)
                down_since = None
            if alive and now >= stop_at:
                break  # up after the load: nothing more to learn
            time.sleep(0.5)
        if down_since is not None:
            outages.append((down_since - began, float("inf")))

    threads = [threading.Thread(target=ipmitool_loop, daemon=True) for _ in range(args.ipmitool)]
    threads.append(threading.Thread(target=monitor, daemon=True))
    for thread in threads:
        thread.start()
    print(f"storm on {args.target}: {args.count} BMCs, {args.ipmitool} ipmitool loops, "
          f"{args.pyghmi} pyghmi processes (fleet only), {args.duration:.0f} s; {_load()}", flush=True)
    result = None
    if args.pyghmi and target.fleet is not None:
        plain_bmcs = [{"host": h, "port": p, "username": u, "password": pw} for h, p, u, pw in target.bmcs]
        result = run_model(plain_bmcs, f"procs{args.pyghmi}", args.duration, hang=30)
    for thread in threads:
        thread.join(args.duration + args.recovery + 60)
    print(f"  ipmitool calls: {dict(counts)}")
    if result:
        print(f"  pyghmi clients: {result['calls_s']:.0f} calls/s, errors {result['errors']}, "
              f"hung {result['hung_workers']}, max {result['max_ms'] or 0:.0f} ms")
    print(f"  client-visible outages (s from start): {[(round(a, 1), round(b, 1)) for a, b in outages]}")
    if outages and outages[-1][1] == float("inf"):
        print(f"  still not answering {args.recovery:.0f} s after the load stopped: wedged")
    elif recovered_after:
        print(f"  answered again {recovered_after[0]:.1f} s after the load stopped")
    if target.fleet is not None:
        for s in target.fleet.shards():
            print(f"  shard {s['shard']}: restarts {s['restarts']}, packet errors {s['errors']}")
        for restart in target.fleet.restarts:
            print(f"  restart: {restart.as_dict()}")
    elif target.process is not None:
        state = "alive" if target.process.poll() is None else f"exited {target.process.returncode}"
        print(f"  plain server process: {state}; its stderr (stack dumps at each outage): "
              f"{target.stderr_path}")
    print(f"  {_load()}")
    target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--shards", default="1,4")
    p = sub.add_parser("models")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--shards", type=int)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--hang", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--models", default="plain-serial,serial,threads4,threads16,plain-threads16,procs2,procs4")
    p = sub.add_parser("reboots")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--delay", type=float, default=2.0)
    p.add_argument("--poll", type=float, default=0.5)
    p.add_argument("--model", default="procs4", help="as in models, e.g. plain-threads16, procs4")
    p.add_argument("--shards", type=int)
    p.add_argument("--timeout", type=float, default=300.0)
    p = sub.add_parser("storm")
    p.add_argument("--target", choices=["fleet", "plain"], default="fleet")
    p.add_argument("--plain-stderr", default="/tmp/plain_pyghmi_fleet.stderr")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--shards", type=int)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--ipmitool", type=int, default=16)
    p.add_argument("--recovery", type=float, default=30.0, help="seconds to watch after the load")
    p.add_argument("--pyghmi", type=int, default=4)
    args = parser.parse_args()
    {"start": bench_start, "models": bench_models, "reboots": bench_reboots, "storm": bench_storm}[args.cmd](args)


if __name__ == "__main__":
    main()
