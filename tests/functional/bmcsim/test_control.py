"""The HTTP control API, RemoteFleet, and the click commands that use them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from conductor.bmcsim import BMCSpec, Fleet, FleetError, RemoteFleet
from conductor.bmcsim.cli import sim
from conductor.bmcsim.control import ControlServer

from .conftest import client_for


@pytest.fixture(scope="module")
def control(fleet: Fleet) -> Iterator[str]:
    server = ControlServer(fleet).start()
    yield server.url
    server.stop()


def test_remote_fleet_mirrors_fleet(control: str, fleet: Fleet, new_bmc: Callable[..., BMCSpec]) -> None:
    bmc = new_bmc()
    remote = RemoteFleet(control)
    assert [b.name for b in remote.bmcs] == [b.name for b in fleet.bmcs]
    assert remote.bmcs[bmc.index].password == bmc.password
    assert remote.state(bmc.name)["power"] == "off"
    assert remote.set_fault(bmc.name, latency=0.1, stuck=True)["faults"]["stuck"] is True
    assert fleet.state(bmc.name)["faults"]["latency"] == 0.1
    assert remote.clear_faults(bmc.name)["faults"]["stuck"] is False
    last = remote.events()[-1].seq if remote.events() else 0
    assert remote.set_power(bmc.name, "on")["power"] == "on"
    assert client_for(bmc).get_power() == "on"
    events = remote.events(since=last, timeout=2)
    assert (events[0].bmc, events[0].new, events[0].cause) == (bmc.name, "on", "drift")
    assert len(remote.shards()) == fleet.shard_count
    with pytest.raises(FleetError, match="no BMC named 'nope'"):
        remote.state("nope")


def test_http_errors_are_json(control: str) -> None:
    request = urllib.request.Request(control + "/bmcs/sim-0000/power", data=b'{"state": "sideways"}',
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 400
    assert json.loads(info.value.read()) == {"error": "state must be 'on' or 'off'"}
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(control + "/nowhere", timeout=5)
    assert info.value.code == 404


def test_cli_commands(control: str, fleet: Fleet, new_bmc: Callable[..., BMCSpec], tmp_path: Path) -> None:
    bmc = new_bmc()
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(sim, ["--control", control, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert cli("fault", bmc.name, "--drop", "0.5", "--stuck").strip() == f"{bmc.name}: stuck,drop=0.5"
    assert bmc.name in cli("list") and "stuck,drop=0.5" in cli("list")
    assert cli("fault", bmc.name, "--clear").strip() == f"{bmc.name}: -"
    assert cli("power", bmc.name, "on").strip() == f"{bmc.name}: power on"
    assert json.loads(cli("show", bmc.name))["power"] == "on"
    assert "wrote" in cli("inventory", str(tmp_path / "inv.json"))
    assert len(json.loads((tmp_path / "inv.json").read_text())["nodes"]) == fleet.count
    result = runner.invoke(sim, ["--control", control, "show", "sim-9999"])
    assert result.exit_code == 1 and "no BMC named 'sim-9999'" in result.output


def test_spawned_simulator(tmp_path: Path) -> None:
    """`conductor sim run` as a subprocess: ready line, inventory, IPMI, clean stop."""
    with RemoteFleet.spawn(count=3, delay=0.1, password_mode="per-bmc",
                           extra_args=("--inventory", str(tmp_path / "nodes.json"))) as remote:
        bmcs = remote.bmcs
        assert len(bmcs) == 3 and len({b.password for b in bmcs}) == 3
        assert json.loads((tmp_path / "nodes.json").read_text()) == remote.inventory()
        client = client_for(bmcs[1])
        client.set_power("on")
        deadline = time.monotonic() + 2
        while client.get_power() != "on" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert remote.state(bmcs[1].name)["power"] == "on"
        process = remote.process
    assert process is not None and process.returncode is not None
