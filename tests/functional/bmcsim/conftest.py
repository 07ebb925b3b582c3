"""Fixtures: a real simulated fleet on loopback UDP, and clients for it.

One fleet serves the whole module set (starting one costs ~0.3 s); each
test takes fresh BMCs from it with ``new_bmc`` so tests never see each
other's power state or faults.  Tests that kill shards get their own small
fleet (``own_fleet``).  The suite's guard (tests/conftest.py) fails a test
that leaves a shard or simulator process running.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator

import pytest

from conductor.bmcsim import BMCSpec, Fleet
from conductor.drivers.ipmi_client import BMCClient, BMCCredentials

POOL_SIZE = 64


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


REDFISH_POOL_SIZE = 40


@pytest.fixture(scope="session")
def redfish_fleet() -> Iterator[Fleet]:
    """A shared fleet that also speaks Redfish (HTTPS, self-signed): REDFISH_POOL_SIZE BMCs, one shard."""
    with Fleet(count=REDFISH_POOL_SIZE, shards=1, password_mode="per-bmc", name_prefix="rf-",
               redfish_port=0) as running:
        yield running


_REDFISH_POOL = itertools.count()


@pytest.fixture
def new_redfish_bmc(redfish_fleet: Fleet) -> Iterator[Callable[..., BMCSpec]]:
    """Hand out unused BMCs of the Redfish fleet, each with the given power delay; faults cleared after."""
    used: list[BMCSpec] = []

    def take(delay: float = 0.0) -> BMCSpec:
        index = next(_REDFISH_POOL)
        if index >= REDFISH_POOL_SIZE:
            pytest.fail(f"the Redfish fleet has only {REDFISH_POOL_SIZE} BMCs; raise REDFISH_POOL_SIZE")
        bmc = redfish_fleet.bmcs[index]
        redfish_fleet.set_delay(delay, bmc.name)
        used.append(bmc)
        return bmc

    yield take
    for bmc in used:
        redfish_fleet.clear_faults(bmc.name)
