"""The Redfish side of a simulated machine: it starts transitions and leaves their completion to the shard."""

from __future__ import annotations

import time

from conductor.bmcsim.redfish import Machine
from conductor.bmcsim.state import Directive, Faults, PowerState, StateTable


def test_a_command_waits_while_the_shard_owes_a_transition() -> None:
    table = StateTable.create(1, 1, delay=5.0)
    try:
        machine = Machine(table, 0)
        now = time.monotonic()
        machine.command(Directive.ON, now)
        assert machine.queued is None and table.read_raw_power(0)[1] == Directive.ON  # started, not done
        assert machine.power_state() == "Off"
        # The transition is due: the record is the shard's until it completes it.
        table.write_power(0, 0, Directive.ON, now - 1)
        assert machine.power_state() == "On"  # a due transition reads as done
        machine.command(Directive.OFF, now)
        assert machine.queued == Directive.OFF and table.read_raw_power(0)[1] == Directive.ON
        assert not machine.apply(time.monotonic())
        table.write_power(0, 1, Directive.NONE, 0.0)  # what the shard's settle writes
        assert machine.apply(time.monotonic()) and machine.queued is None
        assert table.read_raw_power(0)[1] == Directive.OFF
    finally:
        table.close()


def test_stuck_and_ignored_acpi_accept_and_do_nothing() -> None:
    table = StateTable.create(1, 1, delay=0.0)
    try:
        machine = Machine(table, 0)
        table.init_power(0, PowerState.ON)
        table.write_faults(0, Faults(ignore_acpi=True))
        machine.command(Directive.SOFT, time.monotonic())
        assert table.read_raw_power(0)[:2] == (1, Directive.NONE)
        table.write_faults(0, Faults(stuck=True))
        machine.command(Directive.OFF, time.monotonic())
        assert table.read_raw_power(0)[:2] == (1, Directive.NONE)
    finally:
        table.close()


def test_boot_override_round_trip() -> None:
    table = StateTable.create(1, 1, delay=0.0)
    try:
        machine = Machine(table, 0)
        assert machine.boot()["BootSourceOverrideEnabled"] == "Disabled"
        machine.set_boot("Pxe", "Once", "UEFI")
        assert machine.boot() == {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once",
                                  "BootSourceOverrideMode": "UEFI"}
        state = table.read(0)
        assert (state.boot_device, state.boot_persistent, state.boot_uefi) == ("pxe", False, True)
        machine.set_boot("Hdd", "Continuous", "Legacy")
        assert table.read(0).boot_device == "disk" and table.read(0).boot_persistent
        machine.set_boot("Hdd", "Disabled", "Legacy")
        assert machine.boot()["BootSourceOverrideTarget"] == "None"
    finally:
        table.close()


def test_graceful_restart_is_an_acpi_reboot_on_a_vm_and_a_reset_elsewhere() -> None:
    from conductor.bmcsim.redfish import RedfishBMC
    from conductor.bmcsim.redfish_state import RedfishTable

    table = StateTable.create(2, 1, delay=5.0)
    rftable = RedfishTable.create(2)
    try:
        spec = {"username": "admin", "password": "p", "uuid": "00000000-0000-0000-0000-000000000000"}
        plain = RedfishBMC({**spec, "index": 0, "name": "sim-0000"}, table, rftable)
        vm = RedfishBMC({**spec, "index": 1, "name": "vm-0000", "vm": True, "mac": "52:54:00:00:00:01",
                         "media_file": "/tmp/vm-0000.cd.iso"}, table, rftable)
        for bmc in (plain, vm):
            table.init_power(bmc.index, PowerState.ON)
            assert bmc._reset({"ResetType": "GracefulRestart"}).status == 204
        assert table.read_raw_power(0)[1] == Directive.RESET
        assert table.read_raw_power(1)[1] == Directive.SOFT_RESTART  # the shard passes it to the VM manager
        assert vm.media_file == "/tmp/vm-0000.cd.iso" and plain.media_file is None
        # A guest that ignores ACPI ignores a graceful restart too; a machine that is off stays off.
        table.write_power(1, 1, Directive.NONE, 0.0)
        table.write_faults(1, Faults(ignore_acpi=True))
        vm._reset({"ResetType": "GracefulRestart"})
        assert table.read_raw_power(1)[:2] == (1, Directive.NONE)
        table.write_faults(1, Faults())
        table.write_power(1, 0, Directive.NONE, 0.0)
        vm._reset({"ResetType": "GracefulRestart"})
        assert table.read_raw_power(1)[:2] == (0, Directive.NONE)
    finally:
        rftable.close()
        table.close()


def test_the_media_acknowledgement_round_trips() -> None:
    from conductor.bmcsim.redfish_state import HttpFaults, RedfishTable

    rftable = RedfishTable.create(3)
    try:
        assert rftable.media_ack(1) == (0, False)
        rftable.ack_media(1, 7, True)
        rftable.ack_media(2, 9, False)
        assert (rftable.media_ack(0), rftable.media_ack(1), rftable.media_ack(2)) == ((0, False), (7, True), (9, False))
        # Its own field: the faults and counters of the same record are untouched.
        assert rftable.read_faults(1) == HttpFaults() and rftable.counters(1) == {"requests": 0, "sessions": 0}
    finally:
        rftable.close()
