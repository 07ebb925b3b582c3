"""dnsmasq's configuration and command line, from the settings."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conductor.dhcp.config import DhcpConfig
from conductor.exceptions import InvalidInput
from conductor.settings import Settings


def config(tmp_path: Path, **settings: str) -> DhcpConfig | None:
    values = {"dhcp_interface": "eth1", "dhcp_range": "192.168.50.100,192.168.50.200",
              "agent_api_url": "http://192.168.50.1:6385", **settings}
    return DhcpConfig.from_settings(Settings(data_dir=tmp_path, **values))  # type: ignore[arg-type]


def test_nothing_is_configured_by_default(tmp_path: Path) -> None:
    assert DhcpConfig.from_settings(Settings(data_dir=tmp_path)) is None
    assert not (tmp_path / "dhcp").exists()


def test_the_settings_give_the_interface_range_boot_url_and_paths(tmp_path: Path) -> None:
    dhcp = config(tmp_path, dhcp_range=" 192.168.50.100 , 192.168.50.200 ", agent_api_url="http://10.0.0.1:6385/")
    assert dhcp is not None
    assert dhcp.interface == "eth1"
    assert (dhcp.first, dhcp.last) == (ipaddress.IPv4Address("192.168.50.100"), ipaddress.IPv4Address("192.168.50.200"))
    assert dhcp.boot_url == "http://10.0.0.1:6385/v1/boot"
    assert dhcp.hosts_dir == tmp_path / "dhcp" / "hosts"
    assert dhcp.tftp_root == Path("/usr/lib/ipxe")


@pytest.mark.parametrize(("settings", "field"), [
    ({"dhcp_interface": ""}, "dhcp_interface"),
    ({"dhcp_range": ""}, "dhcp_range"),
    ({"dhcp_interface": "eth1\nport=53"}, "dhcp_interface"),
    ({"dhcp_interface": "a-name-longer-than-15"}, "dhcp_interface"),
    ({"dhcp_range": "192.168.50.100"}, "dhcp_range"),
    ({"dhcp_range": "192.168.50.100,192.168.50.200,255.255.255.0"}, "dhcp_range"),
    ({"dhcp_range": "192.168.50.200,192.168.50.100"}, "dhcp_range"),
    ({"dhcp_range": "fd00::10,fd00::20"}, "dhcp_range"),
    ({"dhcp_range": "192.168.50.100,nope"}, "dhcp_range"),
    ({"agent_api_url": "http://a,b:6385"}, "agent_api_url"),
    ({"agent_api_url": "http://example.com/" + "x" * 120}, "agent_api_url"),
    ({"tftp_root": "/srv/tftp\nport=53"}, "tftp_root"),
])
def test_what_dnsmasq_cannot_be_given_is_refused(tmp_path: Path, settings: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        config(tmp_path, **settings)
    assert field in caught.value.details["errors"]


def test_the_configuration_answers_known_macs_only_and_by_client_kind(tmp_path: Path) -> None:
    dhcp = config(tmp_path)
    assert dhcp is not None
    text = dhcp.render()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "port=0" in lines and "interface=eth1" in lines and "bind-interfaces" in lines
    assert "dhcp-range=192.168.50.100,192.168.50.200,10m" in lines
    assert f"dhcp-hostsdir={tmp_path / 'dhcp' / 'hosts'}" in lines
    assert "dhcp-ignore=tag:!known" in lines
    assert "dhcp-userclass=set:ipxe,iPXE" in lines
    assert "dhcp-boot=tag:ipxe,http://192.168.50.1:6385/v1/boot" in lines
    assert "dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe" in lines
    assert "dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi" in lines
    assert "dhcp-match=set:bios,option:client-arch,0" in lines
    assert "enable-tftp" in lines and "tftp-root=/usr/lib/ipxe" in lines


def test_the_command_line_keeps_dnsmasq_a_foreground_child_of_this_identity(tmp_path: Path) -> None:
    dhcp = config(tmp_path)
    assert dhcp is not None
    argv = dhcp.argv("/usr/sbin/dnsmasq")
    assert argv[:4] == ["/usr/sbin/dnsmasq", "--keep-in-foreground",
                        f"--conf-file={tmp_path / 'dhcp' / 'dnsmasq.conf'}", "--port=0"]
    assert f"--pid-file={tmp_path / 'dhcp' / 'dnsmasq.pid'}" in argv
    assert f"--dhcp-leasefile={tmp_path / 'dhcp' / 'dnsmasq.leases'}" in argv
    if os.geteuid() == 0:
        assert "--user=root" in argv and "--group=root" in argv


def test_a_missing_dnsmasq_is_a_clear_error(tmp_path: Path) -> None:
    dhcp = config(tmp_path, dnsmasq_path="no-such-dnsmasq")
    assert dhcp is not None
    with pytest.raises(RuntimeError, match="install the Debian package dnsmasq-base"):
        dhcp.program()


def test_missing_boot_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "tftp").mkdir()
    (tmp_path / "tftp" / "undionly.kpxe").write_bytes(b"x")
    dhcp = config(tmp_path, tftp_root=str(tmp_path / "tftp"))
    assert dhcp is not None and dhcp.missing_boot_files() == ["snponly.efi"]


@pytest.mark.skipif(not (shutil.which("dnsmasq") or Path("/usr/sbin/dnsmasq").exists()),
                    reason="dnsmasq is not installed (Debian package dnsmasq-base)")
def test_dnsmasq_accepts_the_configuration(tmp_path: Path) -> None:
    dhcp = config(tmp_path)
    assert dhcp is not None
    dhcp.write()
    assert dhcp.hosts_dir.is_dir()
    checked = subprocess.run([*dhcp.argv(dhcp.program()), "--test"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "syntax check OK" in checked.stderr
