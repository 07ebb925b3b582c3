"""A simulated deploy ramdisk (agent) for the machines of a simulated fleet.

When a simulated machine powers on (or resets) with boot device ``pxe``,
it "network-boots": after ``boot_delay`` seconds it reads the boot config
the conductor's ``pxe`` deploy interface wrote for its BMC into the "TFTP
root" (:mod:`conductor.bootfiles`: API URL, node UUID, agent token) and
heartbeats to the conductor's API like a ramdisk would.  It runs the
command the conductor answers with (``write_image``, ``erase_disks``,
``inspect``) for ``work_duration`` seconds, fails it with probability
``failure_rate``, and reports the result with its next heartbeat.
Powered off (or booted from anything else: "the installed OS") the agent
is gone: a powered-off machine never calls back.  BMCs that drive a real
virtual machine (see :mod:`.vmmanager`) have no simulated agent.

How the agent learns the token: through the boot config, the simulated
equivalent of the kernel command line a PXE server hands a booting
machine.  The conductor and the simulator must therefore share the TFTP
root directory (``pxe_root``; both on one host here).

Per-machine behaviour can be changed at run time with :meth:`SimAgent.configure`
(``fail``: always fail, ``silent``: never call back, ``token``: send this
token instead, plus the delays), for tests and the demo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, cast

import requests

from conductor import bootfiles
from conductor.bmcsim.events import PowerEvent

LOG = logging.getLogger(__name__)

#: Heartbeats refused with 409 are retried this long (the conductor may not
#: have finished the step that booted the machine yet).
NOT_WAITING_PATIENCE = 30.0
RETRY_INTERVAL = 0.2


@dataclasses.dataclass
class Behaviour:
    """How one machine's agent behaves (``None``: the agent's default)."""

    boot_delay: float | None = None
    work_duration: float | None = None
    failure_rate: float | None = None
    #: Always fail commands (with this message if a string).
    fail: bool | str = False
    #: Never call back (a ramdisk that hangs at boot).
    silent: bool = False
    #: Send this token instead of the one in the boot config.
    token: str | None = None
    #: Download the image of ``write_image`` and check its checksum, as a
    #: real agent does (off by default: the fleet's thousand agents write no disk).
    fetch_image: bool = False


class SimAgent:
    """Agents for every machine of ``fleet`` (a :class:`~conductor.bmcsim.fleet.Fleet`).

    :param pxe_root: the TFTP root the conductor writes boot configs into.
    :param boot_delay: seconds from power on to the first heartbeat.
    :param work_duration: seconds a command takes.
    :param failure_rate: probability that a command fails.
    :param api_url: overrides the boot config's API URL (None: use it).
    """

    def __init__(self, fleet: Any, pxe_root: Path, *, boot_delay: float = 1.0, work_duration: float = 1.0,
                 failure_rate: float = 0.0, api_url: str | None = None, seed: int | None = None) -> None:
        self.fleet = fleet
        self.pxe_root = Path(pxe_root)
        self.default = Behaviour(boot_delay, work_duration, failure_rate)
        self.api_url = api_url
        self._vm_names: frozenset[str] = getattr(fleet, "vm_names", frozenset())
        self._behaviours: dict[str, Behaviour] = {}
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._stopping = threading.Event()
        self._http = threading.local()
        #: What the agents did, newest last: (time, bmc, what) - for tests and the demo.
        self.log: list[tuple[float, str, str]] = []

    # --- control -------------------------------------------------------------------
    def start(self) -> SimAgent:
        """Start reacting to the fleet's power events."""
        self.fleet.on_power_change(self._on_power)
        return self

    def stop(self) -> None:
        """Stop every agent (their threads end at their next check)."""
        self._stopping.set()
        with contextlib.suppress(ValueError):
            self.fleet.remove_power_hook(self._on_power)

    def __enter__(self) -> SimAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def configure(self, bmc: str, **changes: Any) -> Behaviour:
        """Change how ``bmc``'s agent behaves from its next boot (see :class:`Behaviour`)."""
        with self._lock:
            current = self._behaviours.get(bmc, Behaviour())
            updated = dataclasses.replace(current, **changes)
            self._behaviours[bmc] = updated
        return updated

    def reset(self, bmc: str) -> None:
        """Back to the default behaviour."""
        with self._lock:
            self._behaviours.pop(bmc, None)

    # --- events --------------------------------------------------------------------
    def _on_power(self, event: PowerEvent) -> None:
        if event.bmc in self._vm_names:
            return  # a real machine: its own firmware and ramdisk do the talking
        with self._lock:
            # Any power change ends what the machine was running.
            generation = self._generation[event.bmc] = self._generation.get(event.bmc, 0) + 1
        if not event.booted:
            return
        if event.boot_device not in ("pxe", "cdrom"):
            self._note(event.bmc, f"booted from {event.boot_device}: the installed OS, no agent")
            return
        threading.Thread(target=self._run, args=(event.bmc, generation, event.boot_device == "cdrom"),
                         name=f"agent-{event.bmc}",
                         daemon=True).start()

    def _alive(self, bmc: str, generation: int) -> bool:
        return not self._stopping.is_set() and self._generation.get(bmc) == generation

    def _sleep(self, bmc: str, generation: int, seconds: float) -> bool:
        """Sleep, waking early when the machine is powered off; False then."""
        deadline = time.monotonic() + seconds
        while self._alive(bmc, generation):
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._stopping.wait(min(left, 0.05))
        return False

    def _note(self, bmc: str, what: str) -> None:
        self.log.append((time.time(), bmc, what))
        LOG.info("agent %s: %s", bmc, what)

    def _behaviour(self, bmc: str) -> Behaviour:
        with self._lock:
            own = self._behaviours.get(bmc, Behaviour())
        return Behaviour(
            boot_delay=own.boot_delay if own.boot_delay is not None else self.default.boot_delay,
            work_duration=own.work_duration if own.work_duration is not None else self.default.work_duration,
            failure_rate=own.failure_rate if own.failure_rate is not None else self.default.failure_rate,
            fail=own.fail, silent=own.silent, token=own.token, fetch_image=own.fetch_image,
        )

    # --- one boot of one machine ---------------------------------------------------
    def _run(self, bmc: str, generation: int, cdrom: bool = False) -> None:
        try:
            if cdrom and not self._media_boots(bmc):
                return
            self._boot(bmc, generation)
        except Exception:  # a bug here must not kill the hook thread's siblings
            LOG.exception("agent %s crashed", bmc)

    def _boot(self, bmc: str, generation: int) -> None:
        behaviour = self._behaviour(bmc)
        if not self._sleep(bmc, generation, behaviour.boot_delay or 0.0):
            return
        spec = self.fleet.bmc(bmc)
        keys = [bootfiles.key_for({"ipmi_address": spec.host, "ipmi_port": spec.port}, "")]
        redfish = getattr(self.fleet, "redfish_driver_info", None)
        if redfish is not None and redfish(bmc):  # the node may be enrolled with either driver
            keys.append(bootfiles.key_for(redfish(bmc), ""))
        config = next((found for key in keys if (found := bootfiles.read(self.pxe_root, key)) is not None), None)
        if config is None:
            self._note(bmc, "network boot found no boot config: nothing to run")
            return
        if behaviour.silent:
            self._note(bmc, "ramdisk hangs (silent): no heartbeat")
            return
        url = f"{(self.api_url or config['api_url']).rstrip('/')}/v1/nodes/{config['node']}/heartbeat"
        token = behaviour.token or config["token"]
        answer = self._heartbeat(bmc, generation, url, token, {"agent_version": "bmcsim-1"})
        if answer is None or not answer.get("command"):
            return
        command = answer["command"]
        self._note(bmc, f"running {command['name']} ({command['id']})")
        if not self._sleep(bmc, generation, behaviour.work_duration or 0.0):
            return
        result: dict[str, Any] = {"id": command["id"], "status": "succeeded"}
        fetch_error = (self._fetch_image(bmc, command.get("params") or {})
                       if behaviour.fetch_image and command["name"] == "write_image" else None)
        if fetch_error:
            result.update(status="failed", error=fetch_error)
        elif behaviour.fail or self._random.random() < (behaviour.failure_rate or 0.0):
            result.update(status="failed", error=behaviour.fail if isinstance(behaviour.fail, str)
                          else f"simulated failure of {command['name']}")
        elif command["name"] == "inspect":
            result["inventory"] = inventory(spec.index)
        if self._heartbeat(bmc, generation, url, token, {"command_result": result}) is not None:
            self._note(bmc, f"reported {command['name']} {result['status']}")

    def _media_boots(self, bmc: str) -> bool:
        """Booted from the virtual CD: whether it holds media the machine can read.

        Asks the BMC's Redfish service what is inserted (``VirtualMedia/Cd``)
        and reads that image's URL to its end (HTTP 200, every byte of its
        ``Content-Length``), as firmware reading the CD would.  Only then does
        the agent run, taking its node and token from the boot config (the
        stand-in for the ISO's kernel arguments: the ISO is not unpacked).
        """
        info = getattr(self.fleet, "redfish_driver_info", lambda _name: None)(bmc)
        if not info:
            self._note(bmc, "booted from cdrom without Redfish virtual media: nothing to run")
            return False
        verify = info.get("redfish_verify_ca", True)
        cd = f"{info['redfish_address'].rstrip('/')}/redfish/v1/Managers/{bmc}-bmc/VirtualMedia/Cd"
        try:
            media = self._session().get(cd, auth=(info["redfish_username"], info["redfish_password"]),
                                        verify=verify, timeout=10).json()
        except (requests.RequestException, ValueError) as exc:
            self._note(bmc, f"booted from cdrom: could not read the virtual drive ({exc})")
            return False
        if not media.get("Inserted") or not media.get("Image"):
            self._note(bmc, "booted from cdrom: no media inserted")
            return False
        size = 0
        try:
            with self._session().get(media["Image"], stream=True, timeout=30) as response:
                want = response.headers.get("Content-Length")
                for chunk in response.iter_content(1 << 20):
                    size += len(chunk)
                ok = response.status_code == 200 and want is not None and int(want) == size
                status = response.status_code
        except requests.RequestException as exc:
            self._note(bmc, f"booted from cdrom: the media cannot be read ({exc})")
            return False
        if not ok:
            self._note(bmc, f"booted from cdrom: the media cannot be read (HTTP {status}, {size} bytes)")
            return False
        self._note(bmc, f"booted from cdrom: read the inserted media ({size} bytes)")
        return True

    def _fetch_image(self, bmc: str, params: dict[str, Any]) -> str | None:
        """Download ``image_source`` and check ``image_checksum``; the error (as the real agent words it) or None."""
        url, want = params.get("image_source", ""), str(params.get("image_checksum") or "").removeprefix("sha256:")
        digest, size = hashlib.sha256(), 0
        try:
            with self._session().get(url, stream=True, timeout=30) as response:
                if response.status_code != 200:
                    return f"downloading {url} failed: HTTP {response.status_code}"
                for chunk in response.iter_content(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
        except requests.RequestException as exc:
            return f"downloading {url} failed: {exc}"
        if want and digest.hexdigest() != want:
            return f"checksum mismatch for {url}: expected sha256 {want}, downloaded {digest.hexdigest()}"
        self._note(bmc, f"downloaded the image ({size} bytes, sha256 {digest.hexdigest()[:12]}...)")
        return None

    def _heartbeat(self, bmc: str, generation: int, url: str, token: str,
                   body: dict[str, Any]) -> dict[str, Any] | None:
        """POST one heartbeat, retrying 409s and connection errors for a while; None if given up."""
        deadline = time.monotonic() + NOT_WAITING_PATIENCE
        while self._alive(bmc, generation):
            try:
                response = self._session().post(url, json=body, headers={"X-Agent-Token": token}, timeout=10)
            except requests.RequestException as exc:
                status, detail = None, str(exc)
            else:
                if response.status_code == 200:
                    return cast("dict[str, Any]", response.json())
                status, detail = response.status_code, response.text[:200]
                if status in (400, 401, 404):
                    self._note(bmc, f"heartbeat refused ({status}): {detail}")
                    return None
            if time.monotonic() > deadline:
                self._note(bmc, f"gave up heartbeating ({status}): {detail}")
                return None
            pause = RETRY_INTERVAL
            if status == 503:
                # Throttled: come back when the API says (Retry-After, whole seconds).
                try:
                    pause = max(pause, float(response.headers.get("Retry-After", 1)))
                except ValueError:
                    pause = 1.0
            if not self._sleep(bmc, generation, pause):
                return None
        return None

    def _session(self) -> requests.Session:
        session = getattr(self._http, "session", None)
        if session is None:
            session = self._http.session = requests.Session()
        return session


def inventory(index: int) -> dict[str, Any]:
    """The hardware a simulated machine reports (stable per machine)."""
    rng = random.Random(index)
    cpus = rng.choice([8, 16, 32, 64])
    disks = [{"name": f"/dev/sd{chr(97 + i)}", "size_gb": rng.choice([240, 480, 960, 1920])}
             for i in range(rng.choice([1, 2]))]
    nics = [{"name": f"eth{i}", "mac": f"52:54:00:{index >> 8 & 0xff:02x}:{index & 0xff:02x}:{i:02x}"}
            for i in range(2)]
    return {"cpus": cpus, "cpu_arch": "x86_64", "memory_mb": cpus * 4096,
            "local_gb": sum(d["size_gb"] for d in disks), "disks": disks, "nics": nics}
