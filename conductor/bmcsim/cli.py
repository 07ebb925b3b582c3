"""``conductor sim ...`` / ``conductor-bmcsim ...``: run and steer a BMC fleet.

``run`` starts a fleet in the foreground; every other command talks to a
running one through its control API (``--control`` or the environment
variable ``BMCSIM_CONTROL_URL``; default ``http://127.0.0.1:8623``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from conductor.bmcsim.control import ControlServer, RemoteFleet
from conductor.bmcsim.fleet import Fleet, FleetError
from conductor.bmcsim.vm import UserNetwork, VmSpec

DEFAULT_CONTROL_PORT = 8623
DEFAULT_BASE_PORT = 6230


@click.group(name="sim")
@click.option("--control", "control_url", envvar="BMCSIM_CONTROL_URL", show_default=True,
              default=f"http://127.0.0.1:{DEFAULT_CONTROL_PORT}",
              help="Control API of a running simulator.")
@click.pass_context
def sim(ctx: click.Context, control_url: str) -> None:
    """Simulated BMCs speaking IPMI 2.0 (lanplus) on UDP."""
    ctx.obj = control_url


def _remote(ctx: click.Context) -> RemoteFleet:
    return RemoteFleet(ctx.obj)


@sim.command()
@click.option("--count", type=int, default=None, help="Number of in-memory BMCs [default: 10, or 0 with --vm-count].")
@click.option("--base-port", default=DEFAULT_BASE_PORT, show_default=True,
              help="UDP port of the first BMC; the others follow.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--delay", default=0.0, show_default=True, help="Seconds a power transition takes.")
@click.option("--control-port", default=DEFAULT_CONTROL_PORT, show_default=True,
              help="Port of the HTTP control API (0: any free port).")
@click.option("--inventory", "inventory_path", type=click.Path(dir_okay=False),
              help="Write the node inventory to this file.")
@click.option("--password-mode", type=click.Choice(["same", "per-bmc"]), default="same",
              show_default=True, help="One password for all, or a random one per BMC.")
@click.option("--username", default="admin", show_default=True)
@click.option("--password", default="password", show_default=True,
              help="Password of every BMC with --password-mode same.")
@click.option("--shards", type=int, help="Shard processes (default: one per 250 BMCs).")
@click.option("--initial-power", type=click.Choice(["on", "off"]), default="off", show_default=True)
@click.option("--ready-json", is_flag=True, help="Print one JSON line when ready (for scripts).")
@click.option("--exit-with-parent", is_flag=True,
              help="Stop when the process that started this one exits (for test harnesses).")
@click.option("--log-level", default="WARNING", show_default=True)
@click.option("--agent/--no-agent", default=True, show_default=True,
              help="Simulate deploy agents: machines network-booted by the conductor call it back.")
@click.option("--pxe-root", type=click.Path(file_okay=False), default=None,
              help="The conductor's TFTP root (its pxe_root; default <conductor data dir>/pxe).")
@click.option("--agent-boot-delay", default=2.0, show_default=True, help="Seconds an agent takes to boot.")
@click.option("--agent-work-duration", default=2.0, show_default=True,
              help="Seconds an agent takes per command (write image, erase, inspect).")
@click.option("--agent-failure-rate", default=0.0, show_default=True, help="Probability that a command fails.")
@click.option("--vm-count", default=0, show_default=True,
              help="BMCs that each drive a QEMU virtual machine (named vm-0000...; see docs/vm.md).")
@click.option("--vm-memory", default=512, show_default=True, help="MiB of RAM per VM.")
@click.option("--vm-cpus", default=1, show_default=True, help="Virtual CPUs per VM.")
@click.option("--vm-disk-size", default="2G", show_default=True, help="Size of a VM's disk when created.")
@click.option("--vm-disk-format", type=click.Choice(["raw", "qcow2"]), default="raw", show_default=True)
@click.option("--vm-dir", type=click.Path(file_okay=False), default=None,
              help="Where disks, serial logs and QMP sockets go (default: a temporary directory, removed at exit).")
@click.option("--vm-boot-url", default=None,
              help="Boot file URL QEMU's DHCP hands iPXE (e.g. http://10.0.2.2:6385/v1/boot; "
                   "10.0.2.2 is this host's loopback as the guest sees it).")
@click.option("--vm-accel", type=click.Choice(["tcg", "kvm", "auto"]), default="tcg", show_default=True,
              help="auto: kvm if a probe guest boots through iPXE with it, else tcg.")
@click.option("--vm-qemu", default="qemu-system-x86_64", show_default=True, help="QEMU binary.")
@click.option("--redfish-port", type=int, default=None,
              help="Also serve Redfish: BMC i on TCP port REDFISH_PORT + i (0: any free ports).")
@click.option("--redfish-tls/--redfish-http", default=True, show_default=True,
              help="Redfish over HTTPS (self-signed certificate, in the inventory's redfish_verify_ca) or HTTP.")
def run(count: int | None, base_port: int, host: str, delay: float, control_port: int,
        inventory_path: str | None, password_mode: str, username: str, password: str,
        shards: int | None, initial_power: str, ready_json: bool, exit_with_parent: bool,
        log_level: str, agent: bool, pxe_root: str | None, agent_boot_delay: float,
        agent_work_duration: float, agent_failure_rate: float, vm_count: int, vm_memory: int,
        vm_cpus: int, vm_disk_size: str, vm_disk_format: str, vm_dir: str | None,
        vm_boot_url: str | None, vm_accel: str, vm_qemu: str, redfish_port: int | None,
        redfish_tls: bool) -> None:
    """Run a fleet in the foreground until interrupted.

    With --agent (the default) a machine powered on from pxe reads the boot
    config the conductor wrote for it under --pxe-root and heartbeats to the
    conductor's API (see docs/deploy.md); VM BMCs (--vm-count) boot for real
    instead, and the inventory gives their nodes the VMs' MACs as ports.
    With --redfish-port every BMC also speaks Redfish (docs/redfish.md), and
    the inventory offers a redfish driver_info too (``conductor node import
    --driver redfish``).
    """
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    vms = None
    if vm_count:
        try:
            vms = VmSpec(count=vm_count, memory_mb=vm_memory, cpus=vm_cpus, disk_size=vm_disk_size,
                         disk_format=vm_disk_format, directory=Path(vm_dir) if vm_dir else None,
                         accel=vm_accel, network=UserNetwork(boot_url=vm_boot_url), qemu=vm_qemu)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    if count is None:
        count = 0 if vms else 10
    fleet = Fleet(count, vms=vms, base_port=base_port, host=host, delay=delay, username=username,
                  password=password, password_mode=password_mode, shards=shards,
                  initial_power=initial_power, redfish_port=redfish_port, redfish_tls=redfish_tls)
    try:
        fleet.start()
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        server = ControlServer(fleet, control_port).start()
    except OSError as exc:
        fleet.stop()
        raise click.ClickException(f"control port {control_port}: {exc}") from None
    if inventory_path:
        fleet.write_inventory(inventory_path)
    agents = None
    if agent:
        # Only with --agent: the simulated agents speak to a conductor's API.
        from conductor.bmcsim.agent import SimAgent
        from conductor.settings import load

        root = Path(pxe_root) if pxe_root else load().pxe_dir
        agents = SimAgent(fleet, root, boot_delay=agent_boot_delay, work_duration=agent_work_duration,
                          failure_rate=agent_failure_rate).start()
    total = fleet.count
    ready = {"control_url": server.url, "host": host, "base_port": fleet.base_port, "count": total,
             "vms": vm_count, "shards": fleet.shard_count, "started_in": round(fleet.started_in or 0.0, 3),
             "inventory": inventory_path,
             "redfish_base_port": fleet.redfish.base_port if fleet.redfish else None,
             "redfish_ca": str(fleet.redfish.cert_path) if fleet.redfish and fleet.redfish.cert_path else None}
    if ready_json:
        click.echo(json.dumps(ready))
    else:
        click.echo(f"{total} BMCs ({vm_count} with a VM) on {host}:{fleet.base_port}-{fleet.base_port + total - 1} "
                   f"({fleet.shard_count} shards) started in {ready['started_in']} s; "
                   f"control API {server.url}" + (f"; inventory {inventory_path}" if inventory_path else "")
                   + (f"; Redfish on {fleet.redfish.url_of(fleet.bmcs[0])} and up" if fleet.redfish else ""))
    sys.stdout.flush()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if exit_with_parent:
        parent = os.getppid()
        # A harness killed with SIGKILL cannot stop us; notice it instead.
        while not stop.wait(0.5):
            if os.getppid() != parent:
                break
    else:
        stop.wait()
    server.stop()
    if agents is not None:
        agents.stop()
    fleet.stop()


@sim.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_bmcs(ctx: click.Context, as_json: bool) -> None:
    """List BMCs with their state."""
    states = _call(_remote(ctx).states)
    if as_json:
        click.echo(json.dumps(states, indent=2))
        return
    click.echo(f"{'NAME':<12} {'PORT':>6} {'POWER':<5} {'PENDING':<8} {'BOOT':<8} FAULTS")
    for state in states:
        click.echo(f"{state['name']:<12} {state['port']:>6} {state['power']:<5} "
                   f"{state['pending'] or '-':<8} {state['boot_device']:<8} {_faults(state['faults'])}")


@sim.command()
@click.argument("name")
@click.pass_context
def show(ctx: click.Context, name: str) -> None:
    """Show one BMC."""
    click.echo(json.dumps(_call(_remote(ctx).state, name), indent=2))


@sim.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def vms(ctx: click.Context, as_json: bool) -> None:
    """List the VM BMCs' machines: running, pid, disk, last error."""
    machines = _call(_remote(ctx).vms)
    if as_json:
        click.echo(json.dumps(machines, indent=2))
        return
    click.echo(f"{'NAME':<12} {'MAC':<18} {'RUN':<4} {'PID':>7} {'BOOT':<8} DISK / LAST ERROR")
    for vm in machines:
        boot = (vm["boot"] or {}).get("device") or "-"
        click.echo(f"{vm['name']:<12} {vm['mac']:<18} {'yes' if vm['running'] else 'no':<4} "
                   f"{vm['pid'] or '-':>7} {boot:<8} {vm['disk']}"
                   + (f"  ! {vm['last_error']}" if vm["last_error"] else ""))


@sim.command()
@click.argument("name")
@click.option("--drop", type=float, help="Fraction of packets to drop (0..1).")
@click.option("--latency", type=float, help="Seconds added to every packet.")
@click.option("--reject-password", is_flag=True, default=None, help="Refuse the password.")
@click.option("--stuck", is_flag=True, default=None, help="Accept power commands, never act.")
@click.option("--flap", is_flag=True, default=None, help="Power toggles by itself.")
@click.option("--flap-period", type=float, help="Seconds between flaps.")
@click.option("--unreachable", is_flag=True, default=None, help="Drop every packet.")
@click.option("--ignore-acpi", is_flag=True, default=None, help="Ignore soft power off.")
@click.option("--http-error", type=int, help="Redfish: answer requests with this HTTP status (0: none).")
@click.option("--http-error-rate", type=float, help="Redfish: the fraction of requests so answered (default 1).")
@click.option("--retry-after", type=float, help="Redfish: Retry-After seconds of a 503.")
@click.option("--clear", is_flag=True, help="Remove every fault first.")
@click.pass_context
def fault(ctx: click.Context, name: str, clear: bool, **faults: Any) -> None:
    """Set (or --clear) faults of one BMC, at run time."""
    remote = _remote(ctx)
    changes = {k: v for k, v in faults.items() if v is not None}
    state = _call(remote.clear_faults, name) if clear else None
    if changes or state is None:
        state = _call(remote.set_fault, name, **changes)
    click.echo(f"{name}: {_all_faults(state)}")


@sim.command()
@click.argument("name")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.pass_context
def power(ctx: click.Context, name: str, state: str) -> None:
    """Set a BMC's power directly, behind the conductor's back (drift)."""
    result = _call(_remote(ctx).set_power, name, state)
    click.echo(f"{name}: power {result['power']}")


@sim.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.pass_context
def inventory(ctx: click.Context, path: str) -> None:
    """Write the inventory of the running fleet to PATH (mode 0600)."""
    written = _call(_remote(ctx).write_inventory, path)
    click.echo(f"wrote {written}")


@sim.command()
@click.pass_context
def shards(ctx: click.Context) -> None:
    """Show the shard processes and their restarts."""
    click.echo(json.dumps(_call(_remote(ctx).shards), indent=2))


def _call(func: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return func(*args, **kwargs)
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None


def _faults(faults: dict[str, Any]) -> str:
    parts = [name for name in ("reject_password", "stuck", "flap", "unreachable", "ignore_acpi")
             if faults.get(name)]
    if faults.get("drop"):
        parts.append(f"drop={faults['drop']}")
    if faults.get("latency"):
        parts.append(f"latency={faults['latency']}")
    return ",".join(parts) or "-"


def _all_faults(state: dict[str, Any]) -> str:
    shown = _faults(state["faults"])
    http = (state.get("redfish") or {}).get("faults") or {}
    if http.get("http_error"):
        extra = f"http_error={http['http_error']}@{http['http_error_rate']}"
        shown = extra if shown == "-" else f"{shown},{extra}"
    return shown


def main() -> None:
    """Console script ``conductor-bmcsim``."""
    sim(prog_name="conductor-bmcsim")


if __name__ == "__main__":
    main()
