"""The watchdog: a crashed or wedged shard is restarted and its BMCs keep their state."""

from __future__ import annotations

import time
from collections.abc import Callable

from conductor.bmcsim import Fleet

from .conftest import client_for


def wait_for_restart(fleet: Fleet, count: int, timeout: float = 10.0) -> float:
    began = time.monotonic()
    while len(fleet.restarts) < count and time.monotonic() - began < timeout:
        time.sleep(0.05)
    assert len(fleet.restarts) >= count, f"no restart within {timeout} s: {fleet.shards()}"
    return time.monotonic() - began


def test_crashed_shard_is_restarted_with_state_kept(own_fleet: Callable[..., Fleet]) -> None:
    fleet = own_fleet(delay=5.0)
    bmc = fleet.bmcs[-1]  # in shard 1
    client = client_for(bmc, timeout=0.5, retries=4, backoff=0.2)
    client.set_boot_device("pxe", persistent=True)
    client.set_power("on")  # pending: completes 5 s from now, whoever serves the BMC then
    old_pid = fleet.shards()[1]["pid"]

    fleet.crash_shard(1)
    wait_for_restart(fleet, 1)
    restart = fleet.restarts[0]
    assert restart.shard == 1 and restart.reason.startswith("process exited with status -9")
    status = fleet.shards()[1]
    assert status["restarts"] == 1 and status["alive"] and status["pid"] != old_pid
    assert fleet.shards()[0]["restarts"] == 0  # the other shard was not touched

    state = fleet.state(bmc.name)
    assert state["pending"] == "on" and state["boot_device"] == "pxe" and state["boot_persistent"]
    # The client's session died with the old process: one timeout, then a new login.
    assert client.get_boot_device().device == "pxe"
    fleet.set_delay(0.0, bmc.name)


def test_wedged_shard_is_detected_and_restarted(own_fleet: Callable[..., Fleet]) -> None:
    fleet = own_fleet()
    bmc = fleet.bmcs[0]  # in shard 0
    client = client_for(bmc, timeout=0.5, retries=6, backoff=0.2)
    client.set_power("on")
    fleet.wedge_shard(0)  # SIGSTOP: alive, but answers nothing
    wait_for_restart(fleet, 1)
    reason = fleet.restarts[0].reason
    assert reason.startswith("wedged:"), reason
    assert client.get_power() == "on"
    assert fleet.shards()[0]["probe_misses"] == 0


def test_hooks_see_transitions_completed_by_a_restarted_shard(own_fleet: Callable[..., Fleet]) -> None:
    fleet = own_fleet(delay=0.6)
    events = []
    fleet.on_power_change(events.append)
    bmc = fleet.bmcs[-1]
    client_for(bmc).set_power("on")
    fleet.crash_shard(1)
    wait_for_restart(fleet, 1)
    deadline = time.monotonic() + 3
    while not events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [(e.bmc, e.old, e.new, e.cause) for e in events] == [(bmc.name, "off", "on", "on")]
