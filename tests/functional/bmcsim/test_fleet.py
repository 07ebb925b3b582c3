"""The Fleet's Python API: hooks, drift, delay, inventory, events."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conductor.bmcsim import BMCSpec, Fleet, FleetError, PowerEvent

from .conftest import client_for


def test_power_hook_reports_pxe_boot(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    """The hook a simulated deploy agent will use: a machine powers on from PXE."""
    bmc = new_bmc(delay=0.1)
    booted: list[PowerEvent] = []

    def agent(event: PowerEvent) -> None:
        if event.bmc == bmc.name and event.booted and event.boot_device == "pxe":
            booted.append(event)

    fleet.on_power_change(agent)
    try:
        client = client_for(bmc)
        client.set_boot_device("pxe")
        client.set_power("on")
        deadline = time.monotonic() + 2
        while not booted and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        fleet.remove_power_hook(agent)
    assert len(booted) == 1
    event = booted[0]
    assert (event.old, event.new, event.cause, event.persistent) == ("off", "on", "on", False)
    assert event.as_dict()["booted"] is True


def test_a_failing_hook_does_not_stop_the_others(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    seen: list[PowerEvent] = []

    def broken(event: PowerEvent) -> None:
        raise RuntimeError("hook bug")

    fleet.on_power_change(broken)
    fleet.on_power_change(seen.append)
    try:
        fleet.set_power(bmc.name, "on")
        fleet.set_power(bmc.name, "off")
        deadline = time.monotonic() + 2
        while len([e for e in seen if e.bmc == bmc.name]) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        fleet.remove_power_hook(broken)
        fleet.remove_power_hook(seen.append)
    assert [(e.new, e.cause) for e in seen if e.bmc == bmc.name] == [("on", "drift"), ("off", "drift")]


def test_drift_is_seen_by_ipmi_clients(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    client = client_for(bmc)
    assert client.get_power() == "off"
    assert fleet.set_power(bmc.name, "on")["power"] == "on"
    assert client.get_power() == "on"


def test_events_since(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    last = fleet.events()[-1].seq if fleet.events() else 0
    fleet.set_power(bmc.name, "on")
    events = fleet.events(since=last, timeout=2)
    assert events and events[0].bmc == bmc.name and events[0].seq == last + 1


def test_inventory_file(fleet: Fleet, tmp_path: Path) -> None:
    path = fleet.write_inventory(tmp_path / "nodes.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds passwords
    nodes = json.loads(path.read_text())["nodes"]
    assert len(nodes) == fleet.count
    first, bmc = nodes[0], fleet.bmcs[0]
    assert first == {"name": "sim-0000", "driver": "ipmi",
                     "driver_info": {"ipmi_address": "127.0.0.1", "ipmi_port": fleet.base_port,
                                     "ipmi_username": "admin", "ipmi_password": bmc.password}}
    assert len({n["driver_info"]["ipmi_password"] for n in nodes}) == fleet.count  # per-bmc mode


def test_state_and_faults_api(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc(delay=0.5)
    state = fleet.state(bmc.name)
    assert state["name"] == bmc.name and state["port"] == bmc.port and "password" not in state
    assert state["delay"] == 0.5
    faults = fleet.set_fault(bmc.name, drop=0.2, stuck=True)
    assert faults.drop == 0.2 and faults.stuck and faults.active
    assert fleet.set_fault(bmc.name, stuck=False).drop == 0.2  # merge, not replace
    with pytest.raises(ValueError, match="unknown faults"):
        fleet.set_fault(bmc.name, explode=True)
    with pytest.raises(FleetError, match="no BMC named 'sim-9999'"):
        fleet.state("sim-9999")
    assert "password" not in repr(bmc)


def test_port_in_use_is_reported(fleet: Fleet) -> None:
    with pytest.raises(FleetError, match=r"could not start.*Address already in use"):
        Fleet(count=2, base_port=fleet.base_port).start()
