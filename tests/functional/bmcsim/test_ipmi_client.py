"""BMCClient against the simulator, over real RMCP+ on loopback UDP."""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pyghmi.ipmi.private import session as ipmi_session

from conductor.bmcsim import BMCSpec, Fleet
from conductor.drivers.ipmi_client import BMCClient, BMCCredentials, BootSetting
from conductor.exceptions import BMCError

from .conftest import client_for


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_power_on_off_with_delay(new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc(delay=0.3)
    client = client_for(bmc)
    assert client.get_power() == "off"
    began = time.monotonic()
    client.set_power("on")
    assert client.get_power() == "off"  # set_power returned before the transition
    assert wait_for(lambda: client.get_power() == "on")
    assert time.monotonic() - began >= 0.3
    client.set_power("off")
    assert client.get_power() == "on"
    assert wait_for(lambda: client.get_power() == "off")


def test_soft_off_and_os_that_ignores_acpi(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc(delay=0.2)
    fleet.set_power(bmc.name, "on")
    client = client_for(bmc)
    client.set_power("soft")
    assert client.get_power() == "on"
    assert wait_for(lambda: client.get_power() == "off")

    fleet.set_power(bmc.name, "on")
    fleet.set_fault(bmc.name, ignore_acpi=True)
    client.set_power("soft")
    time.sleep(0.4)
    assert client.get_power() == "on"
    client.set_power("off")  # a hard power off still works
    assert wait_for(lambda: client.get_power() == "off")


def test_cycle_and_reset(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc(delay=0.2)
    events = []
    fleet.on_power_change(events.append)
    try:
        client = client_for(bmc)
        fleet.set_power(bmc.name, "on")
        client.set_power("cycle")
        assert client.get_power() == "off"  # off at once, back on after the delay
        assert wait_for(lambda: client.get_power() == "on")
        client.set_power("reset")
        assert wait_for(lambda: any(e.cause == "reset" and e.bmc == bmc.name for e in events))
    finally:
        fleet.remove_power_hook(events.append)
    causes = [e.cause for e in events if e.bmc == bmc.name]
    assert causes == ["drift", "cycle", "cycle", "reset"]
    reset = [e for e in events if e.bmc == bmc.name][-1]
    assert reset.booted and reset.old == reset.new == "on"


def test_boot_device_persistent_and_one_time(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    client = client_for(bmc)
    assert client.get_boot_device() == BootSetting("default", persistent=True)
    client.set_boot_device("pxe", persistent=True, uefi=True)
    assert client.get_boot_device() == BootSetting("pxe", persistent=True, uefi=True)
    client.set_boot_device("cdrom")
    assert client.get_boot_device() == BootSetting("cdrom", persistent=False)
    # a one-time override is used up by the next boot, as firmware does
    client.set_power("on")
    assert wait_for(lambda: client.get_boot_device().device == "default")
    client.set_boot_device("bios", persistent=True)
    client.set_power("reset")
    time.sleep(0.2)
    assert client.get_boot_device() == BootSetting("bios", persistent=True)
    assert client.get_boot_device().as_dict() == {"boot_device": "bios", "persistent": True, "uefi": False}


def test_wrong_password_fails_fast_without_retries(new_bmc: Callable[..., BMCSpec],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    bmc = new_bmc()
    sleeps: list[float] = []
    client = client_for(bmc, password="definitely-wrong", sleep=sleeps.append)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BMCError) as info:
        client.get_power()
    assert sleeps == []  # no retry
    message = str(info.value)
    assert f"BMC {bmc.host}:{bmc.port} rejected the password for user 'admin'" in message
    assert "definitely-wrong" not in message + caplog.text + repr(client)
    assert info.value.status == 502 and info.value.code == "bmc_error"


def test_reject_password_fault_and_unknown_user(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    fleet.set_fault(bmc.name, reject_password=True)
    with pytest.raises(BMCError, match="rejected the password"):
        client_for(bmc).check_credentials()
    fleet.clear_faults(bmc.name)
    assert client_for(bmc).check_credentials() == "off"
    with pytest.raises(BMCError, match="rejected the password for user 'nobody'"):
        client_for(bmc, username="nobody").get_power()


def test_unreachable_times_out_within_bound(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    """An open session times out after `timeout`; the retry's login after pyghmi's ~5 s."""
    bmc = new_bmc()
    sleeps: list[float] = []
    client = client_for(bmc, timeout=0.5, retries=1, backoff=0.1, sleep=sleeps.append)
    assert client.get_power() == "off"  # session open
    fleet.set_fault(bmc.name, unreachable=True)
    with pytest.raises(BMCError) as info:
        client.get_power()
    assert len(sleeps) == 1 and 0.05 <= sleeps[0] <= 0.15  # backoff with jitter
    assert f"BMC {bmc.host}:{bmc.port} did not answer within" in str(info.value)
    assert "(2 attempts)" in str(info.value)


def test_packet_loss_is_absorbed_by_retransmits(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    """pyghmi retransmits after 0.5-1 s, then +1 s each time: 3 fit in a 6 s attempt."""
    bmc = new_bmc()
    client = client_for(bmc, timeout=6.0, retries=2)
    client.get_power()
    fleet.set_fault(bmc.name, drop=0.2)
    for _ in range(5):  # loss is random: most runs lose one or more of these requests
        assert client.get_power() == "off"


def test_latency(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    client = client_for(bmc)
    client.get_power()
    fleet.set_fault(bmc.name, latency=0.2)
    began = time.monotonic()
    client.get_power()
    assert time.monotonic() - began >= 0.2  # the injected latency is felt


def test_stuck_accepts_but_never_changes(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc(delay=0.1)
    fleet.set_fault(bmc.name, stuck=True)
    client = client_for(bmc)
    client.set_power("on")  # accepted
    time.sleep(0.3)
    assert client.get_power() == "off"
    assert fleet.state(bmc.name)["commands"] == 1


def test_flapping(fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    client = client_for(bmc)
    fleet.set_fault(bmc.name, flap=True, flap_period=0.2)
    seen = set()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and len(seen) < 2:
        seen.add(client.get_power())
        time.sleep(0.05)
    assert seen == {"on", "off"}
    fleet.clear_faults(bmc.name)


def test_invalid_arguments_are_refused_locally(new_bmc: Callable[..., BMCSpec]) -> None:
    client = client_for(new_bmc())
    with pytest.raises(ValueError, match="unknown power action 'sideways'"):
        client.set_power("sideways")
    with pytest.raises(ValueError, match="unknown boot device 'tape'"):
        client.set_boot_device("tape")


class _Relay:
    """A UDP relay in front of one simulated BMC that drops the client packets ``drop`` picks."""

    def __init__(self, bmc: BMCSpec, drop: Callable[[bytes], bool]) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.bmc = bmc
        self.drop = drop
        self.dropped = 0
        self._client: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.front, self.back], [], [], 0.05)
            if self.front in ready:
                data, self._client = self.front.recvfrom(4096)
                if self.drop(data):
                    self.dropped += 1
                else:
                    self.back.sendto(data, (self.bmc.host, self.bmc.port))
            if self.back in ready:
                data, _ = self.back.recvfrom(4096)
                if self._client is not None:
                    self.front.sendto(data, self._client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.front.close()
        self.back.close()


@pytest.fixture
def relay() -> Iterator[Callable[[BMCSpec, Callable[[bytes], bool]], _Relay]]:
    started: list[_Relay] = []

    def start(bmc: BMCSpec, drop: Callable[[bytes], bool]) -> _Relay:
        started.append(_Relay(bmc, drop))
        return started[-1]

    yield start
    for running in started:
        running.close()


def _is_rakp1(packet: bytes) -> bool:
    """RMCP, auth type RMCP+ (6), payload type RAKP message 1 (0x12)."""
    return len(packet) > 5 and packet[0] == 6 and packet[4] == 6 and packet[5] & 0x3F == 0x12


def _cached_sessions_for(port: int) -> list[ipmi_session.Session]:
    """Sessions pyghmi's Session.__new__ could hand out for a BMC on 127.0.0.1:``port``."""
    cls = ipmi_session.Session
    found = [s for addr, ports in cls.bmc_handlers.items() if addr[1] == port for s in ports.values()]
    found += [s for key, s in cls.initting_sessions.items() if key[3] == port]
    return [s for s in found if not s.broken]


def test_login_that_never_completes_is_bounded(new_bmc: Callable[..., BMCSpec],
                                               relay: Callable[..., _Relay]) -> None:
    """A BMC that answers the first login steps but never RAKP1.

    pyghmi re-logs after each RAKP1 timeout and its retry guard never
    trips (it re-logged for ever: 47 RAKP1 in 40 s, the call never ended);
    each login now ends at ``login_timeout`` and the call after its attempts.
    """
    bmc = new_bmc()
    silent = relay(bmc, _is_rakp1)
    sleeps: list[float] = []
    client = BMCClient(BMCCredentials(bmc.host, silent.port, bmc.username, bmc.password),
                       timeout=0.5, retries=1, backoff=0.1, login_timeout=1.0, sleep=sleeps.append)
    with pytest.raises(BMCError) as info:
        client.get_power()
    assert "(2 attempts)" in str(info.value)
    assert f"BMC {bmc.host}:{silent.port} did not answer within" in str(info.value)
    assert len(sleeps) == 1
    assert silent.dropped >= 2  # both attempts got as far as RAKP1
    assert _cached_sessions_for(silent.port) == []  # nothing half-dead left for the next call


def test_wedged_pyghmi_io_thread_does_not_hang_calls(fleet: Fleet, new_bmc: Callable[..., BMCSpec],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What hung CI: pyghmi's I/O thread blocked in recvfrom on a socket nothing arrives on.

    pyghmi's ``_io_sendto`` set the shared socket blocking between the I/O
    thread's ``setblocking(0)`` and its ``recvfrom``; on pyghmi's second
    socket (no wake-ups go there) with a BMC that had just gone silent, the
    I/O thread never returned and every wait hung.  Here the race's outcome
    is forced once, on a socket of our own among pyghmi's.
    """
    bmc = new_bmc()
    client = client_for(bmc, timeout=0.5, retries=1, backoff=0.1)
    assert client.get_power() == "off"  # session open, I/O thread running

    spare = socket.socket(socket.AF_INET6 if ipmi_session.ipv6support else socket.AF_INET, socket.SOCK_DGRAM)
    spare.bind(("", 0))
    wedged = threading.Event()
    original = ipmi_session._io_recvfrom

    def recvfrom_after_the_race(sock: socket.socket, size: int) -> object:
        if sock is spare and not wedged.is_set():
            wedged.set()
            sock.setblocking(True)  # as pyghmi's _io_sendto left it
            try:
                return sock.recvfrom(size)  # blocks until a datagram reaches `spare`
            except OSError:
                return None
        return original(sock, size)

    def wedge_the_io_thread() -> None:
        # pyghmi's own wake-up byte on its first socket: the I/O thread leaves
        # select, reads every socket in turn and, reaching `spare`, blocks.
        wedged.clear()
        first = ipmi_session.iosockets[0]
        first.sendto(b"\x01", (ipmi_session.myself, first.getsockname()[1]))
        assert wedged.wait(5), "the I/O thread never reached the spare socket"

    monkeypatch.setattr(ipmi_session, "_io_recvfrom", recvfrom_after_the_race)
    ipmi_session.iosockets.append(spare)
    try:
        # a healthy BMC still answers with the I/O thread stuck (the call's wait frees it) ...
        wedge_the_io_thread()
        assert client.get_power() == "off"
        # ... and an unreachable one fails after its attempts, as in the CI test
        wedge_the_io_thread()
        fleet.set_fault(bmc.name, unreachable=True)
        with pytest.raises(BMCError, match=r"did not answer within .*\(2 attempts\)"):
            client.get_power()
        fleet.clear_faults(bmc.name)
        assert client.get_power() == "off"
    finally:
        wedged.set()
        ipmi_session.iosockets.remove(spare)
        spare.sendto(b"\x01", spare.getsockname()[:2])  # in case the thread still waits on it
        time.sleep(0.05)
        spare.close()


def test_sends_leave_pyghmi_sockets_non_blocking() -> None:
    """pyghmi's own _io_sendto switched its shared sockets to blocking mode (see above)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        ipmi_session._io_sendto(sock, b"\x01", peer.getsockname())
        assert sock.getblocking() is False
        peer.settimeout(2)
        assert peer.recvfrom(16)[0] == b"\x01"
