"""Fixtures: a real simulated fleet on loopback UDP, and clients for it.

One fleet serves the whole module set (starting one costs ~0.3 s); each
test takes fresh BMCs from it with ``new_bmc`` so tests never see each
other's power state or faults.  Tests that kill shards get their own small
fleet (``own_fleet``).  A session-end check fails the run if any process we
started is still alive.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conductor.bmcsim import BMCSpec, Fleet
from conductor.drivers.ipmi_client import BMCClient, BMCCredentials

POOL_SIZE = 64


def _our_children() -> list[int]:
    """Pids whose parent is this test process (Linux /proc)."""
    me = str(os.getpid())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:") and line.split()[1] == me:
                pids.append(int(entry.name))
                break
    return pids


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail the session if a shard or simulator process outlives its test."""
    before = set(_our_children())
    yield
    leaked = set(_our_children()) - before
    assert not leaked, f"processes left running: {sorted(leaked)}"


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    """A shared fleet: POOL_SIZE BMCs in 2 shards, no delay by default."""
    with Fleet(count=POOL_SIZE, shards=2, password_mode="per-bmc") as running:
        yield running


_POOL = itertools.count()  # each BMC of the shared fleet serves one test only


@pytest.fixture
def new_bmc(fleet: Fleet) -> Iterator[Callable[..., BMCSpec]]:
    """Hand out unused BMCs of the shared fleet, each with the given power delay."""
    used: list[BMCSpec] = []

    def take(delay: float = 0.0) -> BMCSpec:
        index = next(_POOL)
        if index >= POOL_SIZE:
            pytest.fail(f"the shared fleet has only {POOL_SIZE} BMCs; raise POOL_SIZE")
        bmc = fleet.bmcs[index]
        fleet.set_delay(delay, bmc.name)
        used.append(bmc)
        return bmc

    yield take
    for bmc in used:
        fleet.clear_faults(bmc.name)


def client_for(bmc: BMCSpec, *, username: str | None = None, password: str | None = None,
               **kwargs: object) -> BMCClient:
    """A client for ``bmc`` (other credentials if given), quick retries unless overridden."""
    options: dict[str, object] = {"timeout": 2.0, "retries": 2, "backoff": 0.05}
    options.update(kwargs)
    credentials = BMCCredentials(bmc.host, bmc.port, username or bmc.username,
                                 bmc.password if password is None else password)
    return BMCClient(credentials, **options)  # type: ignore[arg-type]


@pytest.fixture
def own_fleet() -> Iterator[Callable[..., Fleet]]:
    """Start a private fleet (for tests that crash or wedge shards); stopped after."""
    started: list[Fleet] = []

    def start(**kwargs: object) -> Fleet:
        options: dict[str, object] = {"count": 4, "shards": 2, "probe_interval": 0.2,
                                      "probe_timeout": 0.2, "probe_failures": 3}
        options.update(kwargs)
        running = Fleet(**options).start()  # type: ignore[arg-type]
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


requires_ipmitool = pytest.mark.skipif(shutil.which("ipmitool") is None,
                                       reason="ipmitool is not installed (apt-get install ipmitool)")
