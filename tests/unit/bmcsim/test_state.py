"""The shared-memory state table: layout, single-writer fields, lazy completion."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from conductor.bmcsim.state import (
    BOOT_PERSISTENT,
    BOOT_UEFI,
    BOOT_VALID,
    BMCState,
    BootDevice,
    Directive,
    FaultBit,
    Faults,
    PowerState,
    StateTable,
    transition_target,
)


@pytest.fixture
def table() -> Iterator[StateTable]:
    t = StateTable.create(count=3, shards=2, delay=1.5)
    yield t
    t.close()


def test_new_table_is_off_with_defaults(table: StateTable) -> None:
    state = table.read(1)
    assert isinstance(state, BMCState)
    assert (state.power, state.pending, state.boot_device, state.boot_persistent) == (
        PowerState.OFF, Directive.NONE, BootDevice.DEFAULT, True)
    assert state.delay == 1.5 and state.faults == Faults()


def test_pending_transition_reads_as_done_once_due(table: StateTable) -> None:
    now = time.monotonic()
    table.write_power(0, 0, Directive.ON, now + 60)
    assert table.read(0).power == PowerState.OFF and table.read(0).as_dict()["pending"] == "on"
    table.write_power(0, 0, Directive.ON, now - 0.001)
    state = table.read(0)
    assert state.power == PowerState.ON and state.pending == Directive.NONE
    assert table.read_raw_power(0)[1] == Directive.ON  # only the shard writes the completion


def test_faults_roundtrip_and_clamping(table: StateTable) -> None:
    table.write_faults(2, Faults(drop=1.7, latency=-1, stuck=True, flap=True, flap_period=0.0))
    faults = table.read_faults(2)
    assert (faults.drop, faults.latency, faults.stuck, faults.flap) == (1.0, 0.0, True, True)
    assert faults.flap_period == 0.05
    assert table.read_fault_bits(2) == FaultBit.STUCK | FaultBit.FLAP
    assert table.read_delay(2) == 1.5  # faults do not clobber the control-owned delay
    assert table.read_faults(1) == Faults()


def test_writers_do_not_clobber_each_other(table: StateTable) -> None:
    table.write_boot(0, 1, BOOT_VALID | BOOT_PERSISTENT | BOOT_UEFI)
    table.write_power(0, 1, Directive.OFF, 5.0)
    table.write_faults(0, Faults(unreachable=True))
    seq = table.request_force(0, PowerState.OFF)
    state = table.read(0)
    assert (state.boot_device, state.boot_persistent, state.boot_uefi) == (BootDevice.PXE, True, True)
    assert table.read_raw_power(0) == (1, Directive.OFF, 5.0)
    assert table.read_force(0) == (seq, 0, 0)
    table.write_applied(0, seq)
    assert table.read_force(0)[2] == seq
    assert table.read_faults(0).unreachable


def test_counters_and_shard_header(table: StateTable) -> None:
    for _ in range(3):
        table.bump(1, 1)
    assert table.read(1).packets == 3
    table.write_shard(1, heartbeat=7, errors=2, pid=1234)
    health = table.read_shard(1)
    assert (health.heartbeat, health.errors, health.pid) == (7, 2, 1234)
    assert time.monotonic() - health.last_loop < 1


def test_transition_targets() -> None:
    assert transition_target(Directive.CYCLE) == PowerState.ON
    assert transition_target(Directive.SOFT) == PowerState.OFF
    assert transition_target(Directive.NONE) is None
