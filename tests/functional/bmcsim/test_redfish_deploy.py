"""A redfish node through its whole life: out-of-band inspection, then the pxe deploy interface's agent.

Boot device and power go over Redfish; the simulated agent boots when the
BMC's shard completes the power-on from ``pxe`` (the same machine as for
IPMI) and finds the boot config the conductor wrote under the node's
Redfish name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from conductor.bmcsim import BMCSpec, Fleet
from conductor.bmcsim.agent import SimAgent
from tests.functional.bmcsim.test_deploy import image, run  # noqa: F401 - image: the autouse fixture
from tests.functional.bmcsim.test_ipmi_driver import node_of
from tests.functional.bmcsim.test_redfish_driver import FAST_REDFISH, enroll


@pytest.fixture
def redfish_agent(redfish_fleet: Fleet, settings) -> Iterator[SimAgent]:  # type: ignore[no-untyped-def]
    """Simulated agents for the Redfish fleet, reading this test's TFTP root."""
    with SimAgent(redfish_fleet, settings.pxe_dir, boot_delay=0.3, work_duration=0.3, seed=1) as running:
        yield running


def test_full_lifecycle_over_redfish(service_factory, redfish_fleet: Fleet, redfish_agent: SimAgent,  # type: ignore[no-untyped-def]
                                     new_redfish_bmc: Callable[..., BMCSpec]) -> None:
    service = service_factory(workers=2, env={**FAST_REDFISH, "CONDUCTOR_WAIT_CHECK_INTERVAL": "0.2"})
    response = service.http.patch(f"{service.url}/v1/throttle", json={"bmc_min_interval": 0}, timeout=10)
    assert response.status_code == 200, response.text
    bmc = new_redfish_bmc(delay=0.1)
    enroll(service, redfish_fleet, bmc)
    run(service, bmc.name, "manage")
    run(service, bmc.name, "inspect")  # out of band: the agent is not booted
    assert not [what for _t, name, what in redfish_agent.log if name == bmc.name]
    assert node_of(service, bmc.name)["properties"]["cpus"] > 0
    run(service, bmc.name, "provide")  # cleaning: the agent, booted from pxe over Redfish
    run(service, bmc.name, "active")
    node = node_of(service, bmc.name)
    assert node["provision_state"] == "active" and node["power_state"] == "power on"
    state = redfish_fleet.state(bmc.name)
    assert state["power"] == "on" and state["boot_device"] == "disk" and state["boot_persistent"] is True
    notes = [what for _t, name, what in redfish_agent.log if name == bmc.name]
    assert any("running erase_disks" in n for n in notes) and any("running write_image" in n for n in notes)
    run(service, bmc.name, "deleted")
    assert node_of(service, bmc.name)["provision_state"] == "available"
    logs = "".join(p.read_text() for p in (service.settings.data_dir / "logs").glob("*.log"))
    assert bmc.password not in logs
