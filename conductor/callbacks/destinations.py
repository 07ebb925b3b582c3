"""Where callbacks may go: allow and deny lists of hosts and networks.

Both lists (settings ``callback_allow`` and ``callback_deny``) hold host
names (``hooks.example.com``, or ``*.example.com`` for any subdomain) and
networks (``10.0.0.0/8``, ``fd00::/8``, or a single address).  The host
name is resolved and **every** address is checked:

* the deny list always wins: a URL is refused if its host name matches a
  denied name or any of its addresses lies in a denied network;
* a non-empty allow list admits only URLs whose host name matches an
  allowed name or whose addresses all lie in allowed networks;
* by default nothing is allowed-only and link-local (``169.254.0.0/16``,
  ``fe80::/10``) and the cloud metadata services (``169.254.169.254``,
  ``fd00:ec2::254``, ``100.100.100.200``, ``metadata.google.internal``)
  are denied.  Loopback is allowed, for local receivers and tests.

An IPv4 address written as IPv6 (``::ffff:169.254.169.254``) is checked
as the IPv4 address it is.  The check runs when a callback URL is given
(a refused URL is a 400 ``callback_url_denied``) and again before each
delivery, which then connects to the very address it checked.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import ipaddress
import socket
from urllib.parse import urlsplit

from conductor.exceptions import CallbackUrlDenied, InvalidInput
from conductor.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed callback URL and the addresses its host resolved to."""

    scheme: str
    host: str
    port: int
    #: Path and query, as sent in the request line.
    path: str
    addresses: tuple[IPAddress, ...] = ()

    @property
    def host_header(self) -> str:
        """The ``Host`` header for this URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Rules:
    """One list: host name patterns and networks."""

    hosts: tuple[str, ...]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, text: str, setting: str) -> Rules:
        """Parse a comma- or space-separated list.

        :raises InvalidInput: an entry is neither a host name nor a network.
        """
        hosts: list[str] = []
        networks: list[IPNetwork] = []
        for entry in text.replace(",", " ").split():
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            bare = name.removeprefix("*.")
            if not bare or "/" in bare or "*" in bare or ":" in bare:
                raise InvalidInput(
                    f"Setting {setting}: {entry!r} is neither a host name nor a network.",
                    errors={setting: f"bad entry {entry!r}"},
                )
            hosts.append(name)
        return cls(tuple(hosts), tuple(networks))

    def matches_host(self, host: str) -> bool:
        """Whether ``host`` matches one of the host name patterns."""
        host = host.lower().rstrip(".")
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]):
                    return True
            elif host == pattern:
                return True
        return False

    def contains(self, address: IPAddress) -> bool:
        """Whether ``address`` lies in one of the networks."""
        candidates = embedded_addresses(address)
        return any(a in net for a in candidates for net in self.networks if a.version == net.version)

    @property
    def empty(self) -> bool:
        """Whether the list names nothing."""
        return not self.hosts and not self.networks


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_addresses(address: IPAddress) -> list[IPAddress]:
    """``address`` and the IPv4 addresses it carries (mapped, NAT64, 6to4, compatible).

    A deny list of IPv4 networks must also catch them in their IPv6 forms.
    """
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address in _NAT64 or int(address) >> 32 == 0:  # NAT64, or IPv4-compatible ::a.b.c.d
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


@dataclasses.dataclass(frozen=True)
class Policy:
    """The allow and deny lists of a deployment."""

    allow: Rules
    deny: Rules

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy the settings describe.

        :raises InvalidInput: a malformed list entry.
        """
        return _policy(settings.callback_allow, settings.callback_deny)

    def check(self, target: Target) -> None:
        """Refuse a resolved target the lists do not admit.

        :raises CallbackUrlDenied: with the reason.
        """
        if self.deny.matches_host(target.host):
            raise _denied(f"host {target.host} is on the deny list", "denied")
        for address in target.addresses:
            if any(a.is_unspecified for a in embedded_addresses(address)):
                # 0.0.0.0 and :: connect to this host's own listeners.
                raise _denied(f"{target.host} is the unspecified address {address}", "denied")
            if self.deny.contains(address):
                raise _denied(f"{target.host} resolves to {address}, which is on the deny list", "denied")
        if self.allow.empty or self.allow.matches_host(target.host):
            return
        outside = [a for a in target.addresses if not self.allow.contains(a)]
        if outside:
            raise _denied(
                f"{target.host} resolves to {outside[0]}, which is not on the allow list", "not_allowed"
            )


#: Why a destination was refused (the ``reason`` of the error).
UNRESOLVABLE = "unresolvable"


@functools.lru_cache(maxsize=8)
def _policy(allow: str, deny: str) -> Policy:
    # Parsed once per distinct pair of lists: the API checks every callback URL.
    return Policy(allow=Rules.parse(allow, "callback_allow"), deny=Rules.parse(deny, "callback_deny"))


def _denied(message: str, reason: str) -> CallbackUrlDenied:
    return CallbackUrlDenied(
        f"Callback destination refused: {message} (settings callback_allow / callback_deny).",
        errors={"callback_url": message},
        reason=reason,
    )


def parse(url: str) -> Target:
    """Split a callback URL into its parts (nothing is resolved).

    :raises InvalidInput: not an absolute http(s) URL, or it carries credentials.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"Invalid callback URL: {exc}.", errors={"callback_url": str(exc)}) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("A callback URL must be an absolute http or https URL.",
                           errors={"callback_url": "not an http(s) URL"})
    if parts.username is not None or parts.password is not None:
        # They would be shown by every GET of the request; the signature
        # is how a receiver authenticates us.
        raise InvalidInput("A callback URL must not carry credentials; verify the signature instead.",
                           errors={"callback_url": "credentials in URL"})
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
        path=path,
    )


#: How long a name may take to resolve (the API waits for it; a stuck
#: resolver must not hold an API worker for its own 5-30 s).
RESOLVE_TIMEOUT = 3.0
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")


def resolve(target: Target, timeout: float = RESOLVE_TIMEOUT) -> Target:
    """``target`` with the addresses its host resolves to.

    :raises CallbackUrlDenied: the host does not resolve (within ``timeout``).
    """
    lookup = _resolver.submit(socket.getaddrinfo, target.host, target.port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout)
    except concurrent.futures.TimeoutError:
        raise _denied(f"host {target.host} did not resolve within {timeout:g} s", UNRESOLVABLE) from None
    except (socket.gaierror, UnicodeError) as exc:
        raise _denied(f"host {target.host} does not resolve ({exc})", UNRESOLVABLE) from None
    addresses: list[IPAddress] = []
    for info in infos:
        # Strip an IPv6 zone ("fe80::1%eth0"): the address decides.
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    return dataclasses.replace(target, addresses=tuple(addresses))


def check(settings: Settings, url: str) -> Target:
    """Parse, resolve and check a callback URL; return where to connect.

    :raises InvalidInput: a malformed URL or setting.
    :raises CallbackUrlDenied: the destination is refused or does not resolve.
    """
    target = parse(url)
    policy = Policy.from_settings(settings)
    # A denied name is refused before any DNS query is made for it.
    if policy.deny.matches_host(target.host):
        policy.check(target)
    target = resolve(target)
    policy.check(target)
    return target
