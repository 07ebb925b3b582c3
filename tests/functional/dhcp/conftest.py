"""A provisioning network in network namespaces: a veth pair, and a DHCP client to send through it.

Needs root, ``ip`` (iproute2) with network namespaces, dnsmasq (Debian
package ``dnsmasq-base``) and busybox's ``udhcpc`` (``busybox-static``);
each test skips, saying what is missing, without them.  Names carry a
random suffix, and every namespace, link and process a test made is gone
when it ends.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The DHCP client's script: the variables of a lease it obtained, one per line.
CLIENT_SCRIPT = """#!/bin/sh
[ "$1" = bound ] || exit 0
{ echo "ip=$ip"; echo "siaddr=$siaddr"; echo "boot_file=$boot_file"; echo "serverid=$serverid"; } > "$DHCP_OUT"
"""


def _missing() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and a DHCP server need root"
    for tool, package in (("ip", "iproute2"), ("busybox", "busybox-static")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if shutil.which("dnsmasq", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        return "dnsmasq is not installed (Debian package dnsmasq-base)"
    probe = f"cdhprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture(scope="session")
def netns_tools() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Link:
    """A veth pair: the server's end (``server_ns``; None is this host's own namespace) and the client's."""

    server_ns: str | None
    server_if: str
    server_ip: str
    client_ns: str
    client_if: str
    prefix: str  # the first three octets of the /24

    def address(self, last: int) -> str:
        return f"{self.prefix}.{last}"

    def in_server_ns(self, argv: list[str]) -> list[str]:
        return argv if self.server_ns is None else ["ip", "netns", "exec", self.server_ns, *argv]

    def dhcp(self, tmp_path: Path, mac: str, *options: str, attempts: int = 3, wait: int = 3) -> dict[str, str] | None:
        """Ask for a lease from the client's end with ``mac``, sending ``options`` (``udhcpc -x``).

        ``attempts`` discovers, ``wait`` seconds apart: dnsmasq pings an
        address before it offers it, so an offer can take over a second.
        Returns the lease's variables, or None when no server answered.
        """
        ip("-n", self.client_ns, "link", "set", self.client_if, "down")
        ip("-n", self.client_ns, "link", "set", self.client_if, "address", mac)
        ip("-n", self.client_ns, "link", "set", self.client_if, "up")
        script = tmp_path / "dhcp-client.sh"
        script.write_text(CLIENT_SCRIPT)
        script.chmod(0o755)
        out = tmp_path / "lease.env"
        out.unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", self.client_ns, "busybox", "udhcpc", "-i", self.client_if,
                "-n", "-q", "-f", "-t", str(attempts), "-T", str(wait), "-s", str(script)]
        for option in options:
            argv += ["-x", option]
        subprocess.run(argv, env={**os.environ, "DHCP_OUT": str(out)}, capture_output=True, text=True,
                       timeout=attempts * wait + 10)
        if not out.exists():
            return None
        return dict(line.split("=", 1) for line in out.read_text().splitlines())


@pytest.fixture
def make_link(netns_tools: None) -> Iterator:
    """Make a :class:`Link`; everything it made is deleted at the end."""
    namespaces: list[str] = []
    host_links: list[str] = []

    def make(server_in_namespace: bool = True) -> Link:
        tag = secrets.token_hex(3)
        prefix = f"198.18.{int(tag[:2], 16)}"
        client_ns = f"cdh-c-{tag}"
        server_ns = f"cdh-s-{tag}" if server_in_namespace else None
        server_if, client_if = f"cdhs{tag}", f"cdhc{tag}"
        for ns in filter(None, (server_ns, client_ns)):
            ip("netns", "add", ns)
            namespaces.append(ns)
        ip("link", "add", server_if, "type", "veth", "peer", "name", client_if)
        host_links.append(server_if)
        ip("link", "set", client_if, "netns", client_ns)
        prefix_args = [] if server_ns is None else ["-n", server_ns]
        if server_ns is not None:
            ip("link", "set", server_if, "netns", server_ns)
            ip("-n", server_ns, "link", "set", "lo", "up")
        ip(*prefix_args, "addr", "add", f"{prefix}.1/24", "dev", server_if)
        ip(*prefix_args, "link", "set", server_if, "up")
        return Link(server_ns, server_if, f"{prefix}.1", client_ns, client_if, prefix)

    yield make
    for name in host_links:  # gone already when its namespace was deleted: ignore errors
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
