"""PowerEvent semantics, the inventory document, and the CLI's surface."""

from __future__ import annotations

from click.testing import CliRunner

from conductor.bmcsim.cli import sim
from conductor.bmcsim.events import PowerEvent
from conductor.bmcsim.inventory import BMCSpec, inventory_document


def event(old: str, new: str, cause: str) -> PowerEvent:
    return PowerEvent(seq=1, bmc="sim-0000", old=old, new=new, cause=cause, boot_device="pxe",
                      persistent=False, uefi=False, time=0.0)


def test_booted() -> None:
    assert event("off", "on", "on").booted
    assert event("on", "on", "reset").booted
    assert event("on", "on", "vm-reboot").booted  # a VM boots again after its guest's graceful restart
    assert not event("on", "on", "soft-restart").booted  # asked, not yet done
    assert not event("on", "off", "off").booted
    assert not event("off", "off", "drift").booted


def test_media_lines_reach_the_media_hooks_only() -> None:
    import json
    import os
    import threading

    from conductor.bmcsim.events import EventHub, MediaEvent

    hub = EventHub(["sim-0000", "vm-0000"])
    got: list[object] = []
    seen = threading.Event()
    hub.add_hook(got.append)
    hub.add_media_hook(lambda event: (got.append(event), seen.set()))
    read, write = os.pipe()
    hub.start()
    try:
        hub.add_pipe(read, "the Redfish process")
        os.write(write, json.dumps({"type": "media", "index": 1, "file": "/vms/vm-0000.cd.iso", "seq": 3}).encode()
                 + b"\n")
        assert seen.wait(5)
        assert got == [MediaEvent(1, "vm-0000", "/vms/vm-0000.cd.iso", 3)] and hub.events() == []
    finally:
        os.close(write)
        hub.stop()


def test_inventory_document_shape() -> None:
    spec = BMCSpec(name="sim-0007", index=7, host="127.0.0.1", port=6237, username="admin", password="s3cret")
    assert inventory_document([spec]) == {"nodes": [{
        "name": "sim-0007", "driver": "ipmi",
        "driver_info": {"ipmi_address": "127.0.0.1", "ipmi_port": 6237, "ipmi_username": "admin",
                        "ipmi_password": "s3cret"}}]}
    assert "s3cret" not in repr(spec) and "s3cret" not in str(spec.public_dict())
    assert spec.uuid == BMCSpec("sim-0007", 0, "h", 1, "u", "p").uuid  # stable per name


def test_cli_commands_exist() -> None:
    result = CliRunner().invoke(sim, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "list", "show", "fault", "power", "inventory", "shards"):
        assert command in result.output
    result = CliRunner().invoke(sim, ["run", "--help"])
    for option in ("--count", "--base-port", "--delay", "--control-port", "--inventory", "--password-mode"):
        assert option in result.output
