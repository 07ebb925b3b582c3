"""VM BMCs over Redfish: virtual media is the QEMU machine's CD-ROM, and graceful power actions are ACPI.

Real QEMU (TCG) behind the simulator's Redfish, driven by the conductor's
Redfish client (sushy underneath) exactly as the ``redfish`` driver drives
a BMC.  The guests are single boot sectors (:mod:`conductor.bmcsim.vm`):
on a CD, one that prints a line and powers off; on a disk, one that waits
for the ACPI power button and then powers off.  What is checked is what a
user sees: the machine's QMP ``query-block``, its command line, its serial
console and its process, and the power state over Redfish.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conductor.bmcsim import Fleet
from conductor.bmcsim.vm import (
    ACPI_GUEST_BOOT_SECTOR,
    ACPI_GUEST_OFF,
    ACPI_GUEST_UP,
    CDROM_DEVICE,
    poweroff_boot_sector,
    write_poweroff_disk,
)
from conductor.drivers.redfish_client import RedfishClient, RedfishCredentials
from conductor.exceptions import BMCError

from .conftest import client_for
from .test_vm import cmdline, console, running, wait_for

CD_MESSAGE = "bmcsim-guest: booted from CD, powering off"


def boot_iso(path: Path, boot_sector: bytes) -> Path:
    """An ISO 9660 image whose El Torito (no emulation) boot image is ``boot_sector``."""
    stage = path.parent / f"{path.name}.d"
    stage.mkdir()
    (stage / "boot.bin").write_bytes(boot_sector.ljust(2048, b"\0"))
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(path), "-b", "boot.bin", "-c", "boot.cat",
                    "-no-emul-boot", "-boot-load-size", "4", str(stage)], check=True, capture_output=True, timeout=60)
    return path


@pytest.fixture
def media_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server for ``tmp_path/www``: ``(base URL, directory)``."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def redfish_client(fleet: Fleet, name: str) -> RedfishClient:
    info = fleet.redfish_driver_info(name)
    assert info is not None
    return RedfishClient(RedfishCredentials(info["redfish_address"], info["redfish_system_id"],
                                            info["redfish_username"], info["redfish_password"],
                                            verify=info["redfish_verify_ca"]), timeout=20.0)


def redfish_vm_fleet(vm_fleet) -> Fleet:  # type: ignore[no-untyped-def]
    fleet: Fleet = vm_fleet(1, fleet={"redfish_port": 0, "redfish_tls": False})
    return fleet


def cd_medium(fleet: Fleet, name: str) -> dict[str, Any] | None:
    """What QEMU says the CD-ROM holds (``inserted`` of ``query-block``), or None when it is empty."""
    (drive,) = [d for d in fleet.vm_qmp(name, "query-block") if d.get("qdev") == CDROM_DEVICE]
    return drive.get("inserted")


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso is not installed (Debian package xorriso)")
def test_inserted_media_is_the_machines_cdrom_and_a_cd_boot_boots_it(vm_fleet, media_server) -> None:  # type: ignore[no-untyped-def]
    fleet = redfish_vm_fleet(vm_fleet)
    bmc = fleet.bmcs[0]
    base, www = media_server
    iso = boot_iso(www / "boot.iso", poweroff_boot_sector(CD_MESSAGE))
    client = redfish_client(fleet, bmc.name)

    # Inserted while the machine is off: the BMC fetched it, and the machine will start with it.
    client.insert_media(f"{base}/boot.iso")
    media = Path(fleet.vm(bmc.name)["media"])
    assert media.read_bytes() == iso.read_bytes() and media.stat().st_mode & 0o777 == 0o600
    client.set_boot_device("cdrom")  # once
    client.set_power("on")
    vm = wait_for("QEMU runs", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    assert vm["boot"] == {"device": "cdrom", "persistent": False, "order": "cn", "once": "dcn"}
    cd = next(arg for arg in cmdline(vm["pid"]) if arg.startswith("if=none,id=cd0,"))
    assert f"file={media},format=raw" in cd and "media=cdrom" in cd
    # The firmware boots the CD: its guest prints its line and powers the machine off.
    wait_for("the CD's guest powered off", lambda: (s := fleet.vm(bmc.name))["last_exit"]
             and s["last_exit"]["reason"] == "the guest powered off")
    wait_for("the BMC reads off", lambda: client.get_power() == "off")
    text = console(vm)
    assert "Booting from DVD/CD" in text and CD_MESSAGE in text and "Booting from ROM" not in text, text
    assert client.get_boot_device().device == "default"  # the one-time override was used up

    # Ejected and inserted again while QEMU runs: QMP changes the medium in place.
    client.set_power("on")  # the default order: the empty disk, then iPXE finds nothing; it stays on
    vm = wait_for("QEMU runs again", lambda: (s := fleet.vm(bmc.name))["running"] and s)
    assert cd_medium(fleet, bmc.name)["file"] == str(media)
    client.eject_media()
    assert cd_medium(fleet, bmc.name) is None and fleet.vm(bmc.name)["media"] is None
    assert not media.exists()  # the BMC's copy goes with the media
    client.insert_media(f"{base}/boot.iso")
    inserted = cd_medium(fleet, bmc.name)
    assert inserted is not None and inserted["file"] == str(media) and inserted["ro"] is True
    assert fleet.vm(bmc.name)["pid"] == vm["pid"]  # the same process: no restart for a media change
    # A one-time boot from the CD by a reset restarts QEMU for the boot order, with the medium in.
    client.set_boot_device("cdrom")
    client.set_power("reboot")
    wait_for("the CD's guest powered off again", lambda: CD_MESSAGE in console(fleet.vm(bmc.name))
             and not fleet.vm(bmc.name)["running"])
    assert fleet.vm(bmc.name)["pid"] is None and not running(vm["pid"])
    history = [what for _, what in fleet.vm(bmc.name)["history"]]
    assert any(what.startswith("virtual media ejected") for what in history)

    # A second insert is refused (eject first), and the drive keeps what it had.
    with pytest.raises(BMCError, match="409"):
        client.insert_media(f"{base}/boot.iso")
    assert fleet.vm(bmc.name)["media"] == str(media) and media.read_bytes() == iso.read_bytes()
    assert not list(media.parent.glob("*.part"))
    # An image the BMC cannot fetch is refused, and the drive stays empty.
    client.eject_media()
    with pytest.raises(BMCError, match="Unable to access the image"):
        client.insert_media(f"{base}/missing.iso")
    assert fleet.vm(bmc.name)["media"] is None and not list(media.parent.glob("*.cd.iso*"))


def test_graceful_shutdown_and_restart_are_acpi_requests_to_the_guest(vm_fleet) -> None:  # type: ignore[no-untyped-def]
    """GracefulShutdown and GracefulRestart press the power button; the guest decides; ForceOff does not ask.

IPMI's soft power off reaches the same guest the same way."""
    fleet = redfish_vm_fleet(vm_fleet)
    bmc = fleet.bmcs[0]
    write_poweroff_disk(Path(fleet.vm(bmc.name)["disk"]), 16 << 20, boot_sector=ACPI_GUEST_BOOT_SECTOR)
    client = redfish_client(fleet, bmc.name)
    client.set_power("on")
    first = wait_for("the guest is up", lambda: (s := fleet.vm(bmc.name))["running"] and ACPI_GUEST_UP in console(s)
                     and s)
    wait_for("the BMC reads on", lambda: client.get_power() == "on")

    client.set_power("soft_reboot")  # GracefulRestart
    second = wait_for("the guest is up again", lambda: (s := fleet.vm(bmc.name))["pid"] not in (None, first["pid"])
                      and ACPI_GUEST_UP in console(s) and s)
    assert ACPI_GUEST_OFF in console(first, first["console_offset"])  # it shut down when asked
    assert client.get_power() == "on"  # a reboot: the BMC never read "off"
    causes = [(e.old, e.new, e.cause) for e in fleet.events() if e.bmc == bmc.name]
    assert causes[-2:] == [("on", "on", "soft-restart"), ("on", "on", "vm-reboot")], causes
    assert not [c for c in causes if c[1] == "off"]

    client.set_power("soft")  # GracefulShutdown
    wait_for("the BMC reads off", lambda: client.get_power() == "off")
    assert ACPI_GUEST_OFF in console(second)
    assert fleet.vm(bmc.name)["last_exit"]["reason"] == "the guest powered off"
    assert any("system_powerdown" in what for _, what in fleet.vm(bmc.name)["history"])

    # A hard power off does not ask the guest.
    client.set_power("on")
    third = wait_for("the guest is up a third time", lambda: (s := fleet.vm(bmc.name))["running"]
                     and ACPI_GUEST_UP in console(s) and s)
    client.set_power("off")  # ForceOff
    wait_for("QEMU quit by the BMC", lambda: fleet.vm(bmc.name)["last_exit"]["reason"] == "stopped (BMC power off)")
    assert not running(third["pid"]) and ACPI_GUEST_OFF not in console(third)

    # The same machine over IPMI: its soft power off is the same power button.
    ipmi = client_for(bmc)
    ipmi.set_power("on")
    fourth = wait_for("the guest is up a fourth time", lambda: (s := fleet.vm(bmc.name))["running"]
                      and ACPI_GUEST_UP in console(s) and s)
    wait_for("IPMI reads on", lambda: ipmi.get_power() == "on")
    ipmi.set_power("soft")
    wait_for("IPMI reads off", lambda: ipmi.get_power() == "off")
    assert ACPI_GUEST_OFF in console(fourth) and not running(fourth["pid"])
