"""Dashboard benchmark: first paint with N nodes, and how soon a node change is visible in the page.

On a fresh data directory: the service (``conductor up``'s supervisor:
embedded Redis, SQLite, 2 API processes, W conductor workers) with N
``fake`` nodes, and the dashboard (``/ui/``) in Debian's Chromium driven
by Playwright (headless, 1400x900), signed in with the admin token.

* **First paint**: the page is loaded again R times; each time, the time
  from navigation start to the fleet table drawn with every node (the
  page's ``fleet-rendered`` performance mark).  Target: under 1 s.
* **Change -> visible, one at a time**: C changes (a node's maintenance
  flag, ``PATCH /v1/nodes/<id>``), one every 0.2 s; for each, from the
  moment the API call is sent to the animation frame after its row was
  redrawn.  Target: under 1 s.
* **Change -> visible, under load**: every node is powered on at once
  (N requests, each a few events); for every redrawn row, from the commit
  of the oldest change it shows (the event's ``committed_at``) to the
  animation frame after the redraw.  For comparison, a plain client of the
  same event stream (Python, a thread) notes when each event reaches it:
  what of the delay is delivery, and what is the browser's.

The browser and the service share this machine's clock.

    python bench/dashboard.py --nodes 1000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import random
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
from playwright.sync_api import sync_playwright

from conductor.demo import Api
from conductor.settings import load
from conductor.supervisor import Supervisor

CHROMIUM = "/usr/bin/chromium"

#: In the page: note, for every row whose data-committed changes, when the frame after it was painted.
OBSERVE = """() => {
    window.seen = [];
    new MutationObserver((mutations) => {
        const rows = mutations.map((m) => m.target);
        requestAnimationFrame(() => {
            const at = performance.timeOrigin + performance.now();
            for (const row of rows) window.seen.push([row.dataset.uuid, row.dataset.committed, at]);
        });
    }).observe(document.querySelector('#fleet-rows'), {attributes: true, attributeFilter: ['data-committed'],
                                                       subtree: true});
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def figures(values: list[float]) -> str:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return (f"n={len(ordered)}  p50 {statistics.median(ordered):.0f} ms  p95 {pick(0.95):.0f} ms  "
            f"p99 {pick(0.99):.0f} ms  max {ordered[-1]:.0f} ms")


def epoch_ms(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def enrol(api: Api, count: int) -> list[dict[str, Any]]:
    def one(i: int) -> dict[str, Any]:
        return dict(api.call("POST", "/v1/nodes", json={
            "name": f"node-{i:04d}", "driver": "fake", "driver_info": {"fake_delay": 0.05}}))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def first_paint(page: Any, url: str, nodes: int, reloads: int) -> list[float]:
    times = []
    for _ in range(reloads):
        page.goto(url, wait_until="commit")
        page.wait_for_function("() => performance.getEntriesByName('fleet-rendered').length > 0")
        rows = page.locator("#fleet-rows .row").count()
        if rows != nodes:
            raise SystemExit(f"the table shows {rows} rows, not {nodes}")
        times.append(page.evaluate("() => performance.getEntriesByName('fleet-rendered')[0].startTime"))
    return times


def one_at_a_time(page: Any, api: Api, nodes: list[dict[str, Any]], changes: int) -> list[float]:
    page.evaluate(OBSERVE)
    latencies = []
    for i, node in enumerate(random.sample(nodes, changes)):
        sent = time.time() * 1000
        api.call("PATCH", f"/v1/nodes/{node['uuid']}", json={"maintenance": True, "maintenance_reason": f"b{i}"})
        page.wait_for_function("(uuid) => window.seen.some(([u]) => u === uuid)", arg=node["uuid"])
        seen = next(at for uuid, _, at in page.evaluate("() => window.seen") if uuid == node["uuid"])
        latencies.append(seen - sent)
        time.sleep(0.2)
    return latencies


class StreamClock:
    """Reads ``GET /v1/events`` in a thread; for each event, commit -> arrival (ms)."""

    def __init__(self, url: str, secret: str) -> None:
        self.delays: list[float] = []
        self.response = requests.get(url + "/v1/events", headers={"Authorization": f"Bearer {secret}"},
                                     stream=True, timeout=(5, 120))
        self.response.raise_for_status()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                if line.startswith("data: "):
                    arrived = time.time() * 1000
                    committed = json.loads(line[6:]).get("committed_at")
                    if committed:
                        self.delays.append(arrived - epoch_ms(committed))
        except (requests.RequestException, OSError, AttributeError, ValueError):
            pass  # closed

    def close(self) -> None:
        self.response.close()


def under_load(page: Any, api: Api, nodes: list[dict[str, Any]], timeout: float) -> tuple[list[float], float]:
    page.evaluate(OBSERVE)
    began = time.monotonic()

    def power_on(node: dict[str, Any]) -> None:
        api.call("PUT", f"/v1/nodes/{node['uuid']}/states/power", json={"target": "power on"})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(power_on, nodes))
    page.wait_for_function(
        "(n) => document.querySelector('#power-counts [data-state=\"power on\"]')?.dataset.count === String(n)",
        arg=len(nodes), timeout=timeout * 1000)
    wall = time.monotonic() - began
    time.sleep(1)  # the last frames
    seen = page.evaluate("() => window.seen")
    return [at - epoch_ms(committed) for _, committed, at in seen if committed], wall


def run(nodes: int, workers: int, reloads: int, changes: int, timeout: float) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="conductor-bench-dashboard-"))
    settings = load({"data_dir": data_dir, "api_port": free_port(), "workers": workers, "log_level": "WARNING",
                     "power_poll_initial": 0.05, "power_poll_max": 0.2}, env={})
    supervisor = Supervisor(settings)
    try:
        supervisor.start()
        threading.Thread(target=supervisor.watch, daemon=True).start()
        secret = settings.admin_token_file.read_text().strip()
        api = Api(supervisor.url, secret)
        api.call("PATCH", "/v1/throttle", json={"bmc_min_interval": 0, "write_rate": 0, "client_write_rate": 0})
        began = time.monotonic()
        enrolled = enrol(api, nodes)
        print(f"enrolled {nodes} fake nodes in {time.monotonic() - began:.1f} s; {workers} conductor workers",
              flush=True)
        url = f"{supervisor.url}/ui/"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
                page.set_default_timeout(timeout * 1000)
                page.goto(url)
                page.fill("#token", secret)
                page.click("#sign-in")
                page.wait_for_selector("#live.is-live")
                paints = first_paint(page, url, nodes, reloads)
                print(f"first paint (navigation start -> table of {nodes} drawn), {reloads} loads: "
                      f"{figures(paints)}   target < 1000 ms", flush=True)
                page.wait_for_selector("#live.is-live")
                single = one_at_a_time(page, api, enrolled, changes)
                print(f"change -> visible, one at a time (API call sent -> frame painted): {figures(single)}   "
                      "target < 1000 ms", flush=True)
                clock = StreamClock(supervisor.url, secret)
                try:
                    loaded, wall = under_load(page, api, enrolled, timeout)
                finally:
                    clock.close()
                print(f"change -> visible while {nodes} nodes power on ({wall:.1f} s; commit -> frame painted, "
                      f"per redrawn row): {figures(loaded)}", flush=True)
                print(f"  the same events at a plain stream client (commit -> arrival): {figures(clock.delays)}",
                      flush=True)
            finally:
                browser.close()
    finally:
        supervisor.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="Conductor workers.")
    parser.add_argument("--reloads", type=int, default=10, help="Page loads measured for the first paint.")
    parser.add_argument("--changes", type=int, default=50, help="Changes measured one at a time.")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    run(args.nodes, args.workers, args.reloads, args.changes, args.timeout)


if __name__ == "__main__":
    main()
