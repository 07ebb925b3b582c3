"""ipmitool (lanplus, cipher suite 3) against the simulator: the real-world client."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from conductor.bmcsim import BMCSpec, Fleet

from .conftest import requires_ipmitool

pytestmark = requires_ipmitool


def ipmitool(bmc: BMCSpec, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ipmitool", "-I", "lanplus", "-C", "3", "-N", "1", "-R", "2", "-H", bmc.host, "-p", str(bmc.port),
         "-U", bmc.username, "-P", bmc.password if password is None else password, *args],
        capture_output=True, text=True, timeout=30)


def test_power_status_on_off(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc(delay=0.3)
    assert ipmitool(bmc, "chassis", "power", "status").stdout.strip() == "Chassis Power is off"
    assert ipmitool(bmc, "chassis", "power", "on").stdout.strip() == "Chassis Power Control: Up/On"
    # the transition takes the configured delay, and is visible meanwhile
    assert fleet.state(bmc.name)["pending"] == "on"
    assert ipmitool(bmc, "chassis", "power", "status").stdout.strip() == "Chassis Power is off"
    time.sleep(0.35)
    assert ipmitool(bmc, "chassis", "power", "status").stdout.strip() == "Chassis Power is on"
    assert ipmitool(bmc, "chassis", "power", "off").returncode == 0
    time.sleep(0.35)
    assert fleet.state(bmc.name)["power"] == "off"


def test_bootdev_and_bootparam(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    result = ipmitool(bmc, "chassis", "bootdev", "pxe")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Set Boot Device to pxe"
    out = ipmitool(bmc, "chassis", "bootparam", "get", "5").stdout
    assert "Boot Flag Valid" in out
    assert "Options apply to only next boot" in out
    assert "Force PXE" in out
    state = fleet.state(bmc.name)
    assert (state["boot_device"], state["boot_persistent"]) == ("pxe", False)

    assert ipmitool(bmc, "chassis", "bootdev", "disk", "options=persistent,efiboot").returncode == 0
    out = ipmitool(bmc, "chassis", "bootparam", "get", "5").stdout
    assert "Options apply to all future boots" in out
    assert "BIOS EFI boot" in out
    assert "Force Boot from default Hard-Drive" in out


def test_wrong_password_is_refused(new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    result = ipmitool(bmc, "chassis", "power", "status", password="not-the-password")
    assert result.returncode != 0
    assert "Unable to establish IPMI v2 / RMCP+ session" in result.stderr


def test_default_cipher_suite_negotiation(new_bmc: Callable[..., BMCSpec]) -> None:
    """Without -C, ipmitool asks for the cipher suites and settles on 3 by itself."""
    bmc = new_bmc()
    result = subprocess.run(["ipmitool", "-I", "lanplus", "-H", bmc.host, "-p", str(bmc.port),
                             "-U", bmc.username, "-P", bmc.password, "chassis", "power", "status"],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "Chassis Power is off", result.stderr
