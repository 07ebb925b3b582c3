"""The VM lab's enrolment: ipmi nodes booting from the network, or redfish nodes booting from virtual media."""

from __future__ import annotations

from pathlib import Path

import pytest

from conductor.vmlab import VmLab

ENTRY = {
    "name": "vm-0000", "driver": "ipmi", "ports": ["52:54:00:68:f9:b2"],
    "driver_info": {"ipmi_address": "127.0.0.1", "ipmi_port": 6230, "ipmi_username": "admin",
                    "ipmi_password": "p"},
    "driver_infos": {
        "ipmi": {"ipmi_address": "127.0.0.1", "ipmi_port": 6230, "ipmi_username": "admin", "ipmi_password": "p"},
        "redfish": {"redfish_address": "https://127.0.0.1:6230", "redfish_system_id": "/redfish/v1/Systems/vm-0000",
                    "redfish_username": "admin", "redfish_password": "p", "redfish_verify_ca": "/tmp/cert.pem"}},
}


def test_network_boot_enrols_the_inventory_entry_as_it_is(tmp_path: Path) -> None:
    entry = VmLab(1, data_dir=tmp_path, port=0).node_entry(ENTRY)
    assert entry == {k: v for k, v in ENTRY.items() if k != "driver_infos"}


def test_virtual_media_enrols_a_redfish_node_whose_agent_boots_from_the_cd_and_inspects(tmp_path: Path) -> None:
    entry = VmLab(1, data_dir=tmp_path, port=0, boot="redfish-virtual-media").node_entry(ENTRY)
    assert entry["driver"] == "redfish" and entry["ports"] == ENTRY["ports"] and "driver_infos" not in entry
    assert entry["driver_info"] == {**ENTRY["driver_infos"]["redfish"], "boot_interface": "redfish-virtual-media",
                                    "inspect_interface": "agent"}


def test_an_unknown_boot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boot must be one of pxe, redfish-virtual-media"):
        VmLab(1, data_dir=tmp_path, port=0, boot="http")
