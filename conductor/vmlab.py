"""Real machines, end to end: QEMU VMs behind simulated IPMI (or Redfish) BMCs, provisioned through the API.

One story, told by ``conductor demo --vm N``, ``bench/vm_provision.py`` and
the slow end-to-end test alike:

1. the agent ramdisk (``conductor ramdisk build``) and a small bootable disk
   image (``conductor ramdisk image``: it prints a marker line on the serial
   console and powers off) are built from Debian packages;
2. a BMC simulator fleet of ``vms`` QEMU machines (:mod:`conductor.bmcsim.vm`)
   on QEMU's user network, whose DHCP hands iPXE the conductor's boot URL
   (``http://10.0.2.2:<port>/v1/boot``: the guest reaches this host's
   loopback as 10.0.2.2), and the service (``conductor up``'s supervisor)
   with ``agent_api_url`` set to that address;
3. through the API only: enrol the nodes from the simulator's inventory
   (IPMI address, credentials and the VM's MAC as a port) -> ``manage`` ->
   ``inspect`` (the agent's inventory is compared with the VM's
   declaration) -> ``provide`` (cleaning: a marker written on the disk
   beforehand must be gone) -> ``active`` with the image (the VM then boots
   from its disk and prints the image's marker) -> ``deleted`` (cleaned back
   to ``available``).

Each phase is timed; for deploys also power on -> the agent's first
heartbeat, the image write, and reboot -> the marker on the console, from
the node's history (``power.changed``, ``agent.connected``,
``agent.result``) and the console log.

With ``boot="redfish-virtual-media"`` the same story runs on ``redfish``
nodes (the simulator's Redfish over HTTPS) whose agent boots from the
node's ISO in the VM's virtual CD-ROM: QEMU's DHCP offers no boot file,
the BMC fetches the ISO from ``127.0.0.1`` (``virtual_media_url``), and
inspection is the agent's (``inspect_interface: agent``), so it is checked
against the VM as before.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from conductor.demo import Api, Demo, DemoError, free_port

#: The name the disk image is registered under (``conductor image add``).
IMAGE = "demo-disk"
#: Written on each disk before cleaning, where a metadata erase must wipe it.
CLEAN_MARKER = b"CONDUCTOR-VMLAB-CLEAN-ME"
CLEAN_MARKER_OFFSET = 512 * 1024
#: The guest reaches this host's loopback at this address on QEMU's user network.
HOST_FROM_GUEST = "10.0.2.2"
#: How the agent boots: from the network (ipmi nodes), or from virtual media (redfish nodes).
BOOTS = ("pxe", "redfish-virtual-media")


class LabError(DemoError):
    """The story could not go on (a request failed, a check did not hold, a timeout)."""


def _parse_time(value: str) -> float:
    stamp = datetime.datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


@dataclass
class NodeTimes:
    """One node's figures (seconds)."""

    name: str
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.name, **{k: round(v, 1) for k, v in self.phases.items()}}


class VmLab:
    """The service, a fleet of VM BMCs and the story (see the module docstring).

    :param vms: how many VMs.
    :param data_dir: the service's data directory (a new temporary one by default).
    :param cache: the ramdisk builder's package cache (default: its own).
    :param accel: QEMU accelerator (``tcg``; ``auto`` probes KVM).
    :param on_phase: called with a line of text as the story moves on.
    :param boot: one of :data:`BOOTS` (see the module docstring).
    """

    def __init__(self, vms: int = 1, data_dir: Path | None = None, port: int = 6385, memory_mb: int = 512,
                 cpus: int = 1, disk_size: str = "2G", cache: Path | None = None, accel: str = "tcg",
                 workers: int = 2, agent_timeout: float = 900.0,
                 on_phase: Callable[[str], None] | None = None, boot: str = "pxe") -> None:
        if boot not in BOOTS:
            raise ValueError(f"boot must be one of {', '.join(BOOTS)}")
        self.boot = boot
        self.count = vms
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="conductor-vmlab-"))
        self.port = free_port(port)
        self.memory_mb, self.cpus, self.disk_size = memory_mb, cpus, disk_size
        self.cache = cache
        self.accel = accel
        self.workers = workers
        self.agent_timeout = agent_timeout
        self.on_phase = on_phase or (lambda text: None)
        self.marker = f"lab-{os.urandom(4).hex()}"
        self.figures: dict[str, Any] = {}
        self.nodes: dict[str, NodeTimes] = {}
        self.fleet: Any = None
        self.supervisor: Any = None
        self.api: Api | None = None
        self.image: Any = None
        self._watcher: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------
    def prepare(self) -> None:
        """Build the agent ramdisk and the disk image (cached packages make this quick)."""
        # Loaded only when a lab runs: the CLI imports this module for its options.
        from conductor.ramdisk.build import build, default_cache_dir
        from conductor.ramdisk.diskimage import build_image

        cache = self.cache or default_cache_dir()
        began = time.monotonic()
        self.on_phase("building the agent ramdisk from Debian packages")
        built = build(self.data_dir / "ramdisk", cache)
        self.figures["ramdisk_mb"] = round(built.total_size / 1e6, 1)
        self.figures["ramdisk_build_s"] = round(time.monotonic() - began, 1)
        began = time.monotonic()
        self.on_phase("building the disk image to deploy")
        self.image = build_image(self.data_dir / "demo-disk.img", cache, marker=self.marker)
        self.figures["image_mb"] = round(self.image.image.size / 1e6, 1)
        self.figures["image_build_s"] = round(time.monotonic() - began, 1)

    def start(self) -> None:
        """Start the VM fleet and the service; register the image."""
        # Loaded only when a lab runs (as in prepare()).
        from conductor.bmcsim.fleet import Fleet
        from conductor.bmcsim.vm import UserNetwork, VmSpec
        from conductor.database import Database
        from conductor.images import registry
        from conductor.settings import load
        from conductor.supervisor import Supervisor

        agent_url = f"http://{HOST_FROM_GUEST}:{self.port}"
        # env={}: never a DATABASE_URL or REDIS_URL of a real deployment from the environment.
        settings = load({
            "data_dir": self.data_dir, "api_port": self.port, "workers": self.workers,
            "agent_api_url": agent_url, "log_level": "WARNING",
            # The BMCs run on this host: they fetch virtual media from its loopback.
            "virtual_media_url": f"http://127.0.0.1:{self.port}",
            "power_poll_initial": 0.2, "power_poll_max": 1.0,
            "deploy_agent_timeout": self.agent_timeout, "clean_agent_timeout": self.agent_timeout,
            "inspect_agent_timeout": self.agent_timeout,
        }, env={})
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.on_phase(f"starting {self.count} QEMU VM BMC(s) and the service")
        bmcsim_log = open(self.data_dir / "logs" / "bmcsim.log", "ab")  # noqa: SIM115 - open for the fleet's life
        vmedia = self.boot == "redfish-virtual-media"
        spec = VmSpec(count=self.count, memory_mb=self.memory_mb, cpus=self.cpus, disk_size=self.disk_size,
                      directory=self.data_dir / "vms", accel=self.accel,
                      network=UserNetwork(boot_url=None if vmedia else f"{agent_url}/v1/boot"))
        self.fleet = Fleet(0, vms=spec, password_mode="per-bmc", stderr=bmcsim_log,
                           redfish_port=0 if vmedia else None).start()
        self.supervisor = Supervisor(settings)
        self.supervisor.start()
        self._watcher = threading.Thread(target=self.supervisor.watch, name="vmlab-supervisor", daemon=True)
        self._watcher.start()
        db = Database.from_settings(settings)
        try:
            with db.session() as session:
                registry.add(session, settings.images_path, IMAGE, self.image.image.path)
        finally:
            db.dispose()
        token_file = settings.admin_token_file
        self.api = Api(self.supervisor.url, token_file.read_text().strip() if token_file.exists() else None)
        # A lab: no pacing between commands to one BMC, no write budget.
        self.api.call("PATCH", "/v1/throttle", json={"bmc_min_interval": 0, "write_rate": 0,
                                                     "client_write_rate": 0})

    def stop(self) -> None:
        """Stop the service and the fleet (which stops every VM)."""
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.fleet is not None:
            self.fleet.stop()

    def __enter__(self) -> VmLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the story ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole story on every VM; returns the figures (see :meth:`summary`)."""
        api = self._api()
        began = time.monotonic()
        names = []
        if self.boot == "pxe":
            self.on_phase("enrolling the VMs' BMCs as ipmi nodes (with their MACs as ports)")
        else:
            self.on_phase(f"enrolling the VMs' BMCs as redfish nodes with boot_interface {self.boot}")
        for entry in self.fleet.inventory()["nodes"]:
            api.call("POST", "/v1/nodes", json=self.node_entry(entry))
            names.append(entry["name"])
            self.nodes[entry["name"]] = NodeTimes(entry["name"])
        self._everyone(names, "manage", 120)
        self._everyone(names, "inspect", self.agent_timeout)
        for name in names:
            self.check_inventory(name)
        for name in names:
            self.mark_disk(name)
        self._everyone(names, "provide", self.agent_timeout)
        for name in names:
            if self.disk_marked(name):
                raise LabError(f"{name}: the marker written before cleaning is still on its disk")
        self.deploy(names)
        self._everyone(names, "deleted", self.agent_timeout)
        self.figures["total_s"] = round(time.monotonic() - began, 1)
        self.on_phase("done")
        return self.summary()

    def node_entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The node to create for one inventory entry (a redfish node booting from virtual media, if so chosen)."""
        entry = dict(entry)
        choices = entry.pop("driver_infos", None) or {}
        if self.boot == "pxe":
            return entry
        return {**entry, "driver": "redfish",
                "driver_info": {**choices["redfish"], "boot_interface": self.boot, "inspect_interface": "agent"}}

    def deploy(self, names: list[str]) -> None:
        """``active`` with the image on ``names`` at once; then each VM must boot it from disk."""
        api = self._api()
        offsets = {name: Path(self.fleet.vm(name)["console_log"]).stat().st_size
                   if Path(self.fleet.vm(name)["console_log"]).exists() else 0 for name in names}
        began = time.time()
        self.on_phase(f"deploying {IMAGE} on {len(names)} VM(s): agent writes it, VM reboots from disk")
        ids = {name: api.provision(name, "active", image_source=IMAGE) for name in names}
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda n: self._deployed(n, ids[n], began, offsets[n]), names))
        self.figures["deploy_all_s"] = round(time.time() - began, 1)

    def _deployed(self, name: str, request_id: str, began: float, offset: int) -> None:
        api = self._api()
        request = api.wait(request_id, self.agent_timeout)
        if request["state"] != "succeeded":
            raise LabError(f"{name}: deploy {request['state']}: {request.get('error')}")
        finished = _parse_time(request["finished_at"])
        seen = self.wait_for_console(name, self.image.line, offset, timeout=300)
        times = self.nodes[name].phases
        events = [e for e in api.history(name) if e.get("request_id") == request_id]
        events.sort(key=lambda e: e["id"])  # oldest first (the API lists newest first)
        connected = next((e for e in events if e["event"] == "agent.connected"), None)
        result = next((e for e in events if e["event"] == "agent.result"), None)
        if connected and result:
            power_on = [e for e in events if e["event"] == "power.changed" and "-> power on" in e["message"]
                        and e["id"] < connected["id"]]
            start = _parse_time(power_on[-1]["created_at"]) if power_on else began
            times["power_on_to_first_heartbeat_s"] = _parse_time(connected["created_at"]) - start
            times["image_write_s"] = _parse_time(result["created_at"]) - _parse_time(connected["created_at"])
            times["reboot_to_marker_s"] = seen - _parse_time(result["created_at"])
        times["deploy_request_s"] = finished - began
        times["available_to_booted_s"] = seen - began

    def check_inventory(self, name: str) -> dict[str, Any]:
        """The node's inspected properties agree with its VM; returns them."""
        node = self._api().node(name)
        vm = self.fleet.vm(name)
        props = node.get("properties") or {}
        problems = []
        if props.get("cpus") != vm["cpus"]:
            problems.append(f"cpus {props.get('cpus')} != {vm['cpus']}")
        if props.get("memory_mb") != vm["memory_mb"]:
            problems.append(f"memory_mb {props.get('memory_mb')} != {vm['memory_mb']}")
        sizes = [d.get("size") for d in props.get("disks") or []]
        if vm["disk_size"] not in sizes:
            problems.append(f"no disk of {vm['disk_size']} bytes in {sizes}")
        if vm["mac"] not in (props.get("macs") or []):
            problems.append(f"MAC {vm['mac']} not in {props.get('macs')}")
        if problems:
            raise LabError(f"{name}: inspection disagrees with the VM: {'; '.join(problems)}")
        return cast("dict[str, Any]", props)

    def mark_disk(self, name: str) -> None:
        """Write :data:`CLEAN_MARKER` where cleaning's metadata erase must wipe it (the VM is off)."""
        fd = os.open(self.fleet.vm(name)["disk"], os.O_WRONLY)
        try:
            os.pwrite(fd, CLEAN_MARKER, CLEAN_MARKER_OFFSET)
            os.fsync(fd)
        finally:
            os.close(fd)

    def disk_marked(self, name: str) -> bool:
        """Whether :data:`CLEAN_MARKER` is on the VM's disk."""
        with open(self.fleet.vm(name)["disk"], "rb") as disk:
            disk.seek(CLEAN_MARKER_OFFSET)
            return disk.read(len(CLEAN_MARKER)) == CLEAN_MARKER

    def wait_for_console(self, name: str, line: str, offset: int = 0, timeout: float = 300) -> float:
        """When ``line`` appeared on the VM's serial console (after ``offset``); :class:`LabError` on timeout."""
        path = Path(self.fleet.vm(name)["console_log"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                with open(path, "rb") as console:
                    console.seek(offset)
                    if line.encode() in console.read():
                        return time.time()
            time.sleep(0.2)
        raise LabError(f"{name}: {line!r} did not appear on its console within {timeout:.0f} s")

    def summary(self) -> dict[str, Any]:
        """Figures: builds, each phase, each node."""
        return {"vms": self.count, "accel": self.accel, "boot": self.boot, **self.figures,
                "nodes": [times.as_dict() for times in self.nodes.values()],
                "api": self.supervisor.url if self.supervisor else None, "data_dir": str(self.data_dir)}

    def _everyone(self, names: list[str], target: str, timeout: float) -> None:
        api = self._api()
        began = time.monotonic()
        self.on_phase(f"{target} on {len(names)} node(s)")
        ids = {name: api.provision(name, target) for name in names}
        failed = []
        for name, request_id in ids.items():
            request = api.wait(request_id, timeout)
            if request["state"] != "succeeded":
                failed.append(f"{name}: {request['state']}: {request.get('error')}")
        if failed:
            raise LabError(f"{target} failed: {'; '.join(failed)}")
        self.figures[f"{target}_s"] = round(time.monotonic() - began, 1)

    def _api(self) -> Api:
        if self.api is None:
            raise LabError("start() first")
        return self.api


class VmDemo(Demo):
    """``conductor demo --vm N``: the lab's story on N VMs under the demo's live view."""

    def __init__(self, vms: int, data_dir: Path | None = None, port: int = 6385, accel: str = "tcg",
                 console: Any = None) -> None:
        super().__init__(nodes=vms, data_dir=data_dir, port=port, console=console)
        self.lab = VmLab(vms, data_dir=self.data_dir, port=self.port, accel=accel, on_phase=self._phase)

    def start(self) -> None:
        self.lab.prepare()
        self.lab.start()
        self.supervisor = self.lab.supervisor
        self.fleet = self.lab.fleet
        self.api = self.lab.api

    def stop(self) -> None:
        self.lab.stop()

    def _script(self) -> None:
        self.lab.run()

    def _summary(self, elapsed: float) -> dict[str, Any]:
        return {**super()._summary(elapsed), "lab": self.lab.summary()}

    def print_summary(self, summary: dict[str, Any]) -> None:
        super().print_summary(summary)
        lab = summary["lab"]
        figures = {k: v for k, v in lab.items() if k not in ("nodes", "api", "data_dir")}
        self.console.print("  " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        for node in lab["nodes"]:
            self.console.print("  " + ", ".join(f"{k} {v}" for k, v in node.items()))
        for vm in self.lab.fleet.vms():
            self.console.print(f"  {vm['name']}: serial console {vm['console_log']}")
