"""The host entries follow the nodes booting from the network, through the real API, database and workflows.

The workflows run in this process (``drain``) with the fake driver's power
and boot device and the ``pxe`` deploy interface; the test plays the agent
with the helpers of the pxe tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conductor.database import Database
from conductor.dhcp.hosts import NETWORK_BOOT_STATES, Changes, HostsDir, boots_from_network
from conductor.dhcp.sync import HostsSync
from conductor.engine import runner
from conductor.fsm import table
from tests.conftest import drain
from tests.unit.engine.test_pxe import agent, put, states, to_available

MAC = "52:54:00:00:00:01"
OTHER_MAC = "52:54:00:00:00:02"


class Reloads:
    """Stands for dnsmasq's SIGHUP: counts them; refuses while ``ready`` is False."""

    def __init__(self) -> None:
        self.count = 0
        self.ready = True

    def __call__(self) -> bool:
        if self.ready:
            self.count += 1
        return self.ready


@pytest.fixture
def sync(ctx, tmp_path: Path):  # type: ignore[no-untyped-def]
    db = Database(ctx.settings.sqlalchemy_url)
    hosts = HostsSync(db, HostsDir(tmp_path / "dhcp" / "hosts"), Reloads(), interval=0.05)
    yield hosts
    if hosts.is_alive():
        hosts.stop()
    db.dispose()


def entries(sync: HostsSync) -> dict[str, str]:
    return sync.hosts.present()


def make_node(client, name="n1", ports=(MAC,), **driver_info):  # type: ignore[no-untyped-def]
    body = {"name": name, "driver": "fake", "driver_info": {"deploy_interface": "pxe", **driver_info},
            "ports": list(ports)}
    response = client.post("/v1/nodes", json=body)
    assert response.status_code == 201, response.json
    return response.json


def test_a_deploy_is_answered_while_it_boots_the_agent_and_not_once_active(
        client, anonymous, conductor_ctx, settings, sync) -> None:
    node = make_node(client)
    assert sync.sync().added == () and entries(sync) == {}  # enroll: not answered
    to_available(client, anonymous, settings, conductor_ctx)
    sync.sync()
    assert entries(sync) == {}  # available
    put(client, "active")
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "wait call-back"
    changes = sync.sync()
    assert changes.added == (MAC,) and changes.removed == ()
    assert entries(sync) == {"52-54-00-00-00-01": f"# node {node['uuid']}\n{MAC}\n"}
    assert sync.sync().added == ()  # unchanged: not rewritten
    agent(anonymous, settings, client)
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "active"
    before = sync.reload.count
    assert sync.sync().removed == (MAC,)
    assert entries(sync) == {}
    assert sync.reload.count == before + 1  # dnsmasq forgets a removed entry on SIGHUP only


def test_abort_of_a_wait_removes_the_entry_of_every_port(client, conductor_ctx, sync) -> None:
    make_node(client, ports=(MAC, OTHER_MAC))
    make_node(client, "bystander", ports=("52:54:00:00:00:03",))
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "inspect")
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "inspect wait"
    assert sync.sync().added == (MAC, OTHER_MAC)
    put(client, "abort")
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "inspect failed"
    assert sync.sync().removed == (MAC, OTHER_MAC) and entries(sync) == {}


def test_a_node_of_the_fake_deploy_interface_boots_nothing(client, conductor_ctx, sync) -> None:
    make_node(client, deploy_interface="fake", fake_delay=30)
    put(client, "manage")
    drain(conductor_ctx)
    request_id = put(client, "inspect")
    runner.run_step(conductor_ctx, request_id)  # the first step: the fake inspection takes 30 s
    assert states(client)["provision_state"] == "inspecting"
    assert sync.sync() == Changes() and entries(sync) == {}


def test_a_reload_refused_while_dnsmasq_starts_is_retried(client, conductor_ctx, sync) -> None:
    make_node(client)
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "inspect")
    drain(conductor_ctx)
    sync.sync()
    put(client, "abort")
    drain(conductor_ctx)
    sync.reload.ready = False
    assert sync.sync().removed == (MAC,) and sync.reload_pending
    sync.reload.ready = True
    assert sync.sync().removed == ()
    assert sync.reload.count == 1 and not sync.reload_pending


def test_the_thread_keeps_the_directory_current(client, conductor_ctx, sync) -> None:
    make_node(client)
    sync.start()
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "inspect")
    drain(conductor_ctx)
    deadline = time.monotonic() + 10
    while not entries(sync) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(entries(sync)) == ["52-54-00-00-00-01"]


def test_foreign_files_are_removed(tmp_path: Path) -> None:
    hosts = HostsDir(tmp_path / "hosts")
    hosts.path.mkdir()
    (hosts.path / "leftover").write_text("52:54:00:00:00:09\n")
    assert hosts.reconcile({MAC: "u1"}).added == (MAC,)
    assert sorted(hosts.present()) == ["52-54-00-00-00-01"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left beside it


def test_which_deploy_interfaces_boot_from_the_network() -> None:
    assert boots_from_network("ipmi", {})  # pxe is its default
    assert not boots_from_network("ipmi", {"deploy_interface": "fake"})
    assert boots_from_network("fake", {"deploy_interface": "pxe"})
    assert not boots_from_network("fake", {})
    assert not boots_from_network("gone", {})


def test_the_network_boot_states_are_the_agent_waits_and_the_states_that_enter_them() -> None:
    entering = {source for source, event, target in table.TRANSITIONS if target in table.WAIT_STATES}
    assert NETWORK_BOOT_STATES == table.WAIT_STATES | entering
    assert NETWORK_BOOT_STATES <= table.POWER_OWNED_STATES


def test_a_node_gets_its_entry_only_once_its_agent_token_is_issued(client, conductor_ctx) -> None:
    import sqlalchemy as sa

    from conductor.dhcp.hosts import wanted
    from conductor.models import Node

    make_node(client)
    # A rebuild preparing its image: deploying, still in service, no agent token yet.
    with conductor_ctx.db.begin() as session:
        session.execute(sa.update(Node).values(provision_state="deploying", driver_internal_info={}))
    with conductor_ctx.db.session() as session:
        assert wanted(session) == {}
    with conductor_ctx.db.begin() as session:
        session.execute(sa.update(Node).values(driver_internal_info={"agent_token_sha256": "ab" * 32}))
    with conductor_ctx.db.session() as session:
        assert list(wanted(session)) == [MAC]
