"""``conductor demo``: the whole system on one box, with a live view.

It starts, in this process, a simulated fleet of IPMI BMCs with their
simulated agents (:mod:`conductor.bmcsim`), and ``conductor up``'s
supervisor (embedded Redis, SQLite, the API, two conductor workers) on a
data directory (a new temporary one unless ``--data-dir``).  Then it runs a
script against the API, as any client would:

enrol every BMC as an ``ipmi`` node -> ``manage`` (IPMI credentials proven)
-> ``provide`` (automated cleaning: the agent erases the disks) -> deploy
all (``pxe``: boot the agent, write the image, boot from disk) -> reboot a
few -> abort one whose agent never calls back -> undeploy some.

A live table shows every node's states and current step; a summary follows.
The dashboard's URL is printed before the script starts, so it can be
watched in a browser too.  The service keeps running (its URL and docs are
printed) until Ctrl-C, unless ``--exit``.
"""

from __future__ import annotations

import collections
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import requests

from conductor import httpclient

#: The image deployed, registered at start (a small file: the simulated agents write no disk).
IMAGE = "ubuntu-24.04-server"
CONFIGDRIVE = "#cloud-config\nhostname: demo\n"
STYLE = {
    "active": "bold green", "available": "green", "manageable": "cyan", "enroll": "white",
    "deploy failed": "bold red", "clean failed": "red", "inspect failed": "red", "error": "red",
    "wait call-back": "blue", "clean wait": "blue", "inspect wait": "blue",
}


class DemoError(RuntimeError):
    """The demo's script could not go on."""


def free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return int(sock.getsockname()[1])  # preferred, or any free one for 0
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


class Api:
    """A small client of the API (admin token of the local ``up``)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.http = httpclient.session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, self.url + path, timeout=30, **kwargs)
        if response.status_code >= 400:
            raise DemoError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def provision(self, node: str, target: str, **params: Any) -> str:
        return cast(str, self.call("PUT", f"/v1/nodes/{node}/states/provision",
                                   json={"target": target, **params})["id"])

    def power(self, node: str, target: str) -> str:
        return cast(str, self.call("PUT", f"/v1/nodes/{node}/states/power", json={"target": target})["id"])

    def nodes(self) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", self.call("GET", "/v1/nodes", params={"limit": 1000})["nodes"])

    def request(self, request_id: str) -> dict[str, Any]:
        return cast("dict[str, Any]", self.call("GET", f"/v1/requests/{request_id}"))

    def node(self, name: str) -> dict[str, Any]:
        return cast("dict[str, Any]", self.call("GET", f"/v1/nodes/{name}"))

    def history(self, name: str) -> list[dict[str, Any]]:
        """The node's history, newest first."""
        return cast("list[dict[str, Any]]",
                    self.call("GET", f"/v1/nodes/{name}/history", params={"limit": 1000})["history"])

    def wait(self, request_id: str, timeout: float, interval: float = 0.5) -> dict[str, Any]:
        """The request once it ended (any way), polled; :class:`DemoError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            request = self.request(request_id)
            if request["state"] in ("succeeded", "failed", "cancelled"):
                return request
            if time.monotonic() > deadline:
                raise DemoError(f"request {request_id} ({request['target']}) still {request['state']} "
                                f"after {timeout:.0f} s (step: {request.get('step')})")
            time.sleep(interval)


def register_image(settings: Any, name: str, size: int = 65536) -> None:
    """Register a small image ``name`` in ``settings``' deployment (as ``conductor image add`` does), once."""
    # Loaded only when the demo (or a bench) runs, like the rest of the server side.
    from conductor.database import Database
    from conductor.exceptions import ImageNameInUse
    from conductor.images import registry

    source = settings.data_dir / f".{name}.source"
    source.write_bytes(b"\x00" * size)
    db = Database.from_settings(settings)
    try:
        with db.session() as session:
            registry.add(session, settings.images_path, name, source)
    except ImageNameInUse:
        pass  # a data directory used before
    finally:
        db.dispose()
        source.unlink()


class Demo:
    """One run of the demo (see the module docstring)."""

    def __init__(self, nodes: int = 20, data_dir: Path | None = None, port: int = 6385, workers: int = 2,
                 boot_delay: float = 1.5, work_duration: float = 1.0, power_delay: float = 0.2,
                 console: Any = None) -> None:
        from rich.console import Console

        self.count = nodes
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="conductor-demo-"))
        self.port = free_port(port)
        self.workers = workers
        self.boot_delay, self.work_duration, self.power_delay = boot_delay, work_duration, power_delay
        self.console = console or Console()
        self.phase = "starting"
        self.events: collections.deque[str] = collections.deque(maxlen=6)
        self.phase_times: list[tuple[str, float]] = []
        self.snapshot: list[dict[str, Any]] = []
        #: node UUID -> its active request's current step
        self.steps: dict[str, str] = {}
        self.supervisor: Any = None
        self.fleet: Any = None
        self.agent: Any = None
        self.api: Api | None = None
        self._watcher: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Start the fleet, its agents and the service."""
        # Started only by `conductor demo`: importing the module (for its
        # command's options) does not load the simulator and the supervisor.
        from conductor.bmcsim.agent import SimAgent
        from conductor.bmcsim.fleet import Fleet
        from conductor.settings import load
        from conductor.supervisor import Supervisor

        # env={}: the demo never picks up a DATABASE_URL or REDIS_URL of a real
        # deployment from the environment; it runs on its own embedded default.
        settings = load({
            "data_dir": self.data_dir, "api_port": self.port, "workers": self.workers,
            "power_poll_initial": 0.1, "power_poll_max": 0.5, "log_level": "WARNING",
            "deploy_agent_timeout": 120, "clean_agent_timeout": 120, "inspect_agent_timeout": 120,
        }, env={})
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        # Open for the fleet's life: it starts a crashed shard again with the same stderr.
        bmcsim_log = open(self.data_dir / "logs" / "bmcsim.log", "ab")  # noqa: SIM115
        self.fleet = Fleet(count=self.count, delay=self.power_delay, password_mode="per-bmc",
                           stderr=bmcsim_log).start()
        self.agent = SimAgent(self.fleet, settings.pxe_dir, boot_delay=self.boot_delay,
                              work_duration=self.work_duration).start()
        self.supervisor = Supervisor(settings)
        self.supervisor.start()
        self._watcher = threading.Thread(target=self.supervisor.watch, name="demo-supervisor", daemon=True)
        self._watcher.start()
        register_image(settings, IMAGE)
        token_file = settings.admin_token_file
        token = token_file.read_text().strip() if token_file.exists() else None
        self.api = Api(self.supervisor.url, token)
        # Short-lived demo: no pacing between commands to one BMC, no write budget.
        self.api.call("PATCH", "/v1/throttle", json={"bmc_min_interval": 0, "write_rate": 0,
                                                     "client_write_rate": 0})

    def stop(self) -> None:
        """Stop the service, the agents and the fleet."""
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.agent is not None:
            self.agent.stop()
        if self.fleet is not None:
            self.fleet.stop()

    def dashboard(self) -> str:
        """Where to watch it in a browser, and the token to sign in with."""
        token_file = self.supervisor.settings.admin_token_file
        return (f"Dashboard {self.supervisor.url}/ui/   (sign in with the admin token: "
                f"cat {token_file})")

    # --- the script ----------------------------------------------------------------
    def run_script(self) -> dict[str, Any]:
        """Run the scenario under a live view; returns the summary."""
        from rich.live import Live

        began = time.monotonic()
        with Live(self._render(), console=self.console, refresh_per_second=4, transient=False) as live:
            stop = threading.Event()

            def refresh() -> None:
                while not stop.wait(0.25):
                    try:
                        self.snapshot = self._api().nodes()
                        self.steps = self._steps()
                    except (DemoError, requests.RequestException):
                        continue
                    live.update(self._render())

            painter = threading.Thread(target=refresh, name="demo-view", daemon=True)
            painter.start()
            try:
                self._script()
            finally:
                stop.set()
                painter.join(2)
                self.snapshot = self._api().nodes()
                live.update(self._render())
        return self._summary(time.monotonic() - began)

    def _steps(self) -> dict[str, str]:
        steps: dict[str, str] = {}
        for state in ("running", "waiting"):
            page = self._api().call("GET", "/v1/requests", params={"state": state, "limit": 1000})
            for request in page["requests"]:
                label = request.get("step") or request["target"]
                steps[request["node_uuid"]] = f"{label} ({state})" if state == "waiting" else label
        return steps

    def _api(self) -> Api:
        assert self.api is not None, "start() first"
        return self.api

    def _script(self) -> None:
        api = self._api()
        names = [bmc.name for bmc in self.fleet.bmcs]
        existing = api.nodes()
        if existing:
            raise DemoError(f"{self.data_dir} already holds {len(existing)} node(s); the demo needs an empty "
                            "data directory (omit --data-dir for a new temporary one)")
        self._phase(f"enrolling {len(names)} ipmi nodes from the simulator's inventory")
        for entry in self.fleet.inventory()["nodes"]:
            api.call("POST", "/v1/nodes", json=entry)
        self._all(names, "manage")
        self._all(names, "provide")
        victim = names[len(names) // 2]
        self.agent.configure(self.fleet.bmc(victim).name, silent=True)
        self._note(f"{victim}'s agent will hang at boot (it will be aborted)")
        deploying = [n for n in names if n != victim]
        self._phase(f"deploying all {len(names)} nodes (pxe: agent writes {IMAGE})")
        ids = {n: api.provision(n, "active", image_source=IMAGE, configdrive=CONFIGDRIVE) for n in names}
        self._wait(ids, skip={victim})
        self._until(lambda: self._state(victim) == "wait call-back", f"{victim} waiting for its agent")
        few = deploying[: max(1, len(names) // 7)]
        self._phase(f"rebooting {len(few)} active nodes")
        self._wait({n: api.power(n, "rebooting") for n in few})
        self._phase(f"aborting {victim} in wait call-back")
        api.provision(victim, "abort")
        self._wait({victim: ids[victim]}, expect="cancelled")
        some = deploying[-max(1, len(names) // 4):]
        self._phase(f"undeploying {len(some)} nodes (automated clean by the agent)")
        self._wait({n: api.provision(n, "deleted") for n in some})
        self._phase("done")

    def _all(self, names: list[str], target: str) -> None:
        self._phase(f"{target} x{len(names)}")
        self._wait({n: self._api().provision(n, target) for n in names})

    def _phase(self, text: str) -> None:
        self.phase = text
        self.phase_times.append((text, time.monotonic()))
        self._note(text)

    def _note(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")

    def _state(self, name: str) -> str | None:
        for node in self.snapshot or self._api().nodes():
            if node["name"] == name:
                return cast(str, node["provision_state"])
        return None

    def _until(self, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise DemoError(f"gave up waiting for {what}")
            time.sleep(0.1)

    def _wait(self, ids: dict[str, str], skip: Iterable[str] = (), expect: str = "succeeded",
              timeout: float = 120) -> None:
        pending = {n: i for n, i in ids.items() if n not in set(skip)}
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise DemoError(f"requests still running after {timeout:.0f} s: {sorted(pending)}")
            for name, request_id in list(pending.items()):
                request = self._api().request(request_id)
                if request["state"] in ("succeeded", "failed", "cancelled"):
                    del pending[name]
                    if request["state"] != expect:
                        self._note(f"{name}: {request['kind']} {request['target']} {request['state']}: "
                                   f"{request.get('error')}")
            time.sleep(0.2)

    # --- output --------------------------------------------------------------------
    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        table = Table(expand=False, title=f"conductor demo - {self.phase}", title_justify="left")
        widths = {"node": (8, None), "provision state": (14, None), "power": (9, None),
                  "step": (10, 36), "last error": (10, 40)}
        for column, (least, most) in widths.items():
            table.add_column(column, overflow="ellipsis", no_wrap=True, min_width=least, max_width=most)
        for node in self.snapshot:
            state = node["provision_state"]
            table.add_row(node["name"], f"[{STYLE.get(state, 'yellow')}]{state}[/]",
                          node.get("power_state") or "", self._step_of(node), node.get("last_error") or "")
        return Group(table, Panel("\n".join(self.events), title="script", expand=False))

    def _summary(self, elapsed: float) -> dict[str, Any]:
        counts = collections.Counter(n["provision_state"] for n in self.snapshot)
        phases = [(text, round(self.phase_times[i + 1][1] - at, 1))
                  for i, (text, at) in enumerate(self.phase_times[:-1])]
        return {"nodes": len(self.snapshot), "states": dict(sorted(counts.items())),
                "script_seconds": round(elapsed, 1), "phases": phases,
                "api": self.supervisor.url, "docs": f"{self.supervisor.url}/docs",
                "data_dir": str(self.data_dir)}

    def print_summary(self, summary: dict[str, Any]) -> None:
        from rich.table import Table

        self.console.print()
        table = Table(title="summary", title_justify="left")
        table.add_column("provision state")
        table.add_column("nodes", justify="right")
        for state, count in summary["states"].items():
            table.add_row(f"[{STYLE.get(state, 'yellow')}]{state}[/]", str(count))
        self.console.print(table)
        for text, seconds in summary["phases"]:
            self.console.print(f"  {seconds:5.1f} s  {text}")
        self.console.print(f"Script finished in [bold]{summary['script_seconds']} s[/].")
        self.console.print(f"API   {summary['api']}\nDocs  {summary['docs']}\nData  {summary['data_dir']}")
        self.console.print(self.dashboard(), markup=False, highlight=False, soft_wrap=True)
        self.console.print("Summary: " + json.dumps({k: summary[k] for k in ("nodes", "states", "script_seconds")}),
                           markup=False, highlight=False, soft_wrap=True)

    def _step_of(self, node: dict[str, Any]) -> str:
        if node.get("request_id") is None:
            return ""
        return self.steps.get(node["uuid"]) or str(node.get("target_provision_state")
                                                   or node.get("target_power_state") or "queued")
