"""Figures for VM BMCs: how long real QEMU machines take to follow IPMI (prints, never asserts).

Usage (from the repository root)::

    python bench/vm_power.py [--rounds 5] [--vms 4] [--probe-kvm]

Measured through the IPMI client, as the conductor sees a VM BMC:

* ``power on -> QEMU up``: from sending ``power on`` to the QEMU process
  answering QMP (the manager's start, what ``start_seconds`` records too);
* ``power off -> QEMU gone``: from ``power off`` to the process reaped;
* ``guest off -> IPMI off``: from the guest's own power off (QEMU's
  SHUTDOWN event) to the BMC reading "off" (manager poll + shard tick);
* ``SIGKILL -> IPMI off``: a QEMU killed from outside;
* ``pxe once -> disk -> off``: a one-time network boot (iPXE, DHCP, no boot
  file) that falls back to the disk, whose boot sector powers off;
* ``N at once``: N VMs powered on together until all run.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conductor.bmcsim import BMCSpec, Fleet, VmSpec
from conductor.bmcsim.vm import write_poweroff_disk
from conductor.bmcsim.vmmanager import probe_kvm
from conductor.drivers.ipmi_client import BMCClient, BMCCredentials


def client(bmc: BMCSpec) -> BMCClient:
    return BMCClient(BMCCredentials(bmc.host, bmc.port, bmc.username, bmc.password))


def until(predicate: Callable[[], Any], timeout: float = 120.0, step: float = 0.005) -> float:
    """Seconds until ``predicate()`` is true."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise RuntimeError("timed out")
        time.sleep(step)
    return time.monotonic() - began


def show(label: str, values: list[float]) -> None:
    print(f"{label:<28} median {statistics.median(values) * 1000:8.1f} ms   "
          f"min {min(values) * 1000:8.1f}   max {max(values) * 1000:8.1f}   (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vms", type=int, default=4)
    parser.add_argument("--probe-kvm", action="store_true", help="Also time the KVM probe (up to 30 s).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vm-bench-") as tmp:
        spec = VmSpec(count=max(args.vms, 1), memory_mb=256, disk_size="16M", directory=Path(tmp))
        with Fleet(vms=spec) as fleet:
            bmc = fleet.bmcs[0]
            ipmi = client(bmc)
            name = bmc.name
            on, off, killed, guest, pxe = [], [], [], [], []
            for _ in range(args.rounds):
                began = time.monotonic()
                ipmi.set_power("on")
                until(lambda: fleet.vm(name)["running"])
                on.append(time.monotonic() - began)
                began = time.monotonic()
                ipmi.set_power("off")
                until(lambda: not fleet.vm(name)["running"])
                off.append(time.monotonic() - began)

                ipmi.set_power("on")
                until(lambda: fleet.vm(name)["running"])
                pid = fleet.vm(name)["pid"]
                began = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                until(lambda: ipmi.get_power() == "off")
                killed.append(time.monotonic() - began)

            write_poweroff_disk(Path(fleet.vm(name)["disk"]), 16 << 20)
            for _ in range(args.rounds):
                ipmi.set_power("on")
                until(lambda: fleet.vm(name)["running"])
                until(lambda: ipmi.get_power() == "off", step=0.002)
                seen = time.time()
                stopped = [at for at, what in fleet.vm(name)["history"] if "SHUTDOWN" in what][-1]
                guest.append(seen - stopped)
            for _ in range(max(1, args.rounds // 2)):
                ipmi.set_boot_device("pxe")
                began = time.monotonic()
                ipmi.set_power("on")
                until(lambda: fleet.vm(name)["running"])
                until(lambda: ipmi.get_power() == "off", step=0.05)
                pxe.append(time.monotonic() - began)

            show("power on -> QEMU up", on)
            show("power off -> QEMU gone", off)
            show("guest off -> IPMI off", guest)
            show("SIGKILL -> IPMI off", killed)
            show("pxe once -> disk -> off", pxe)
            starts = [s for s in (fleet.vm(name)["start_seconds"],) if s]
            print(f"{'manager start_seconds':<28} {starts[0] * 1000:8.1f} ms (last start)")

            if args.vms > 1:
                for other in fleet.bmcs:
                    write_poweroff_disk(Path(fleet.vm(other.name)["disk"]), 16 << 20)
                clients = [client(b) for b in fleet.bmcs]
                began, wall = time.monotonic(), time.time()

                def all_done() -> bool:
                    exits = [fleet.vm(b.name)["last_exit"] for b in fleet.bmcs]
                    return all(e and e["at"] > wall and e["reason"] == "the guest powered off" for e in exits)

                for each in clients:
                    each.set_power("on")
                until(all_done)
                print(f"{args.vms} VMs on at once, booted to disk and powered off: "
                      f"{time.monotonic() - began:.2f} s")
    if args.probe_kvm:
        began = time.monotonic()
        works, why = probe_kvm()
        print(f"KVM probe: {'works' if works else 'not usable'} ({why}) in {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
