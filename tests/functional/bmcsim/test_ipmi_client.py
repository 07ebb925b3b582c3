"""BMCClient against the simulator, over real RMCP+ on loopback UDP."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from conductor.bmcsim import BMCSpec, Fleet
from conductor.drivers.ipmi_client import BootSetting
from conductor.exceptions import BMCError

from .conftest import client_for


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_power_on_off_with_delay(new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc(delay=0.3)
    client = client_for(bmc)
    assert client.get_power() == "off"
    began = time.monotonic()
    client.set_power("on")
    assert client.get_power() == "off"  # set_power returned before the transition
    assert wait_for(lambda: client.get_power() == "on")
    assert time.monotonic() - began >= 0.3
    client.set_power("off")
    assert client.get_power() == "on"
    assert wait_for(lambda: client.get_power() == "off")


def test_soft_off_and_os_that_ignores_acpi(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc(delay=0.2)
    fleet.set_power(bmc.name, "on")
    client = client_for(bmc)
    client.set_power("soft")
    assert client.get_power() == "on"
    assert wait_for(lambda: client.get_power() == "off")

    fleet.set_power(bmc.name, "on")
    fleet.set_fault(bmc.name, ignore_acpi=True)
    client.set_power("soft")
    time.sleep(0.4)
    assert client.get_power() == "on"
    client.set_power("off")  # a hard power off still works
    assert wait_for(lambda: client.get_power() == "off")


def test_cycle_and_reset(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc(delay=0.2)
    events = []
    fleet.on_power_change(events.append)
    try:
        client = client_for(bmc)
        fleet.set_power(bmc.name, "on")
        client.set_power("cycle")
        assert client.get_power() == "off"  # off at once, back on after the delay
        assert wait_for(lambda: client.get_power() == "on")
        client.set_power("reset")
        assert wait_for(lambda: any(e.cause == "reset" and e.bmc == bmc.name for e in events))
    finally:
        fleet.remove_power_hook(events.append)
    causes = [e.cause for e in events if e.bmc == bmc.name]
    assert causes == ["drift", "cycle", "cycle", "reset"]
    reset = [e for e in events if e.bmc == bmc.name][-1]
    assert reset.booted and reset.old == reset.new == "on"


def test_boot_device_persistent_and_one_time(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    client = client_for(bmc)
    assert client.get_boot_device() == BootSetting("default", persistent=True)
    client.set_boot_device("pxe", persistent=True, uefi=True)
    assert client.get_boot_device() == BootSetting("pxe", persistent=True, uefi=True)
    client.set_boot_device("cdrom")
    assert client.get_boot_device() == BootSetting("cdrom", persistent=False)
    # a one-time override is used up by the next boot, as firmware does
    client.set_power("on")
    assert wait_for(lambda: client.get_boot_device().device == "default")
    client.set_boot_device("bios", persistent=True)
    client.set_power("reset")
    time.sleep(0.2)
    assert client.get_boot_device() == BootSetting("bios", persistent=True)
    assert client.get_boot_device().as_dict() == {"boot_device": "bios", "persistent": True, "uefi": False}


def test_wrong_password_fails_fast_without_retries(new_bmc: Callable[..., BMCSpec],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    bmc = new_bmc()
    sleeps: list[float] = []
    client = client_for(bmc, password="definitely-wrong", sleep=sleeps.append)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BMCError) as info:
        client.get_power()
    assert sleeps == []  # no retry
    message = str(info.value)
    assert f"BMC {bmc.host}:{bmc.port} rejected the password for user 'admin'" in message
    assert "definitely-wrong" not in message + caplog.text + repr(client)
    assert info.value.status == 502 and info.value.code == "bmc_error"


def test_reject_password_fault_and_unknown_user(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    fleet.set_fault(bmc.name, reject_password=True)
    with pytest.raises(BMCError, match="rejected the password"):
        client_for(bmc).check_credentials()
    fleet.clear_faults(bmc.name)
    assert client_for(bmc).check_credentials() == "off"
    with pytest.raises(BMCError, match="rejected the password for user 'nobody'"):
        client_for(bmc, username="nobody").get_power()


def test_unreachable_times_out_within_bound(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    """An open session times out after `timeout`; the retry's login after pyghmi's ~5 s."""
    bmc = new_bmc()
    sleeps: list[float] = []
    client = client_for(bmc, timeout=0.5, retries=1, backoff=0.1, sleep=sleeps.append)
    assert client.get_power() == "off"  # session open
    fleet.set_fault(bmc.name, unreachable=True)
    with pytest.raises(BMCError) as info:
        client.get_power()
    assert len(sleeps) == 1 and 0.05 <= sleeps[0] <= 0.15  # backoff with jitter
    assert f"BMC {bmc.host}:{bmc.port} did not answer within" in str(info.value)
    assert "(2 attempts)" in str(info.value)


def test_packet_loss_is_absorbed_by_retransmits(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    """pyghmi retransmits after 0.5-1 s, then +1 s each time: 3 fit in a 6 s attempt."""
    bmc = new_bmc()
    client = client_for(bmc, timeout=6.0, retries=2)
    client.get_power()
    fleet.set_fault(bmc.name, drop=0.2)
    for _ in range(5):  # loss is random: most runs lose one or more of these requests
        assert client.get_power() == "off"


def test_latency(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    client = client_for(bmc)
    client.get_power()
    fleet.set_fault(bmc.name, latency=0.2)
    began = time.monotonic()
    client.get_power()
    assert time.monotonic() - began >= 0.2  # the injected latency is felt


def test_stuck_accepts_but_never_changes(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc(delay=0.1)
    fleet.set_fault(bmc.name, stuck=True)
    client = client_for(bmc)
    client.set_power("on")  # accepted
    time.sleep(0.3)
    assert client.get_power() == "off"
    assert fleet.state(bmc.name)["commands"] == 1


def test_flapping(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    client = client_for(bmc)
    fleet.set_fault(bmc.name, flap=True, flap_period=0.2)
    seen = set()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and len(seen) < 2:
        seen.add(client.get_power())
        time.sleep(0.05)
    assert seen == {"on", "off"}
    fleet.clear_faults(bmc.name)


def test_invalid_arguments_are_refused_locally(new_bmc: Callable[..., BMCSpec]) -> None:
    client = client_for(new_bmc())
    with pytest.raises(ValueError, match="unknown power action 'sideways'"):
        client.set_power("sideways")
    with pytest.raises(ValueError, match="unknown boot device 'tape'"):
        client.set_boot_device("tape")
