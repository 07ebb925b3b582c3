"""The ipmi driver's parts that need no BMC: validation, the per-BMC lock, TryLater."""

from __future__ import annotations

import pytest

from conductor import drivers
from conductor.drivers import ipmi
from conductor.drivers.base import TryLater
from conductor.exceptions import InvalidInput
from conductor.throttle import bmc as bmc_throttle
from conductor.throttle import settings as throttle_settings

GOOD = {"ipmi_address": "10.0.0.7", "ipmi_port": 6230, "ipmi_username": "admin", "ipmi_password": "hunter2"}


def test_valid_driver_info_is_accepted_without_touching_a_bmc() -> None:
    drivers.validate("ipmi", GOOD)
    drivers.validate("ipmi", {"ipmi_address": "bmc-7.example.com"})  # port defaults to 623
    drivers.validate("ipmi", {**GOOD, "ipmi_priv_level": "operator"})


@pytest.mark.parametrize("info, field", [
    ({}, "ipmi_address"),
    ({"ipmi_address": ""}, "ipmi_address"),
    ({"ipmi_address": "10.0.0.7 x"}, "ipmi_address"),
    ({"ipmi_address": "10.0.0.7", "ipmi_port": 0}, "ipmi_port"),
    ({"ipmi_address": "10.0.0.7", "ipmi_port": True}, "ipmi_port"),
    ({"ipmi_address": "10.0.0.7", "ipmi_port": 70000}, "ipmi_port"),
    ({"ipmi_address": "10.0.0.7", "ipmi_priv_level": "ROOT"}, "ipmi_priv_level"),
    ({"ipmi_address": "10.0.0.7", "ipmi_username": "u" * 17}, "ipmi_username"),
    ({"ipmi_address": "10.0.0.7", "fake_delay": 1}, "fake_delay"),
])
def test_invalid_driver_info_names_the_field(info, field) -> None:
    with pytest.raises(InvalidInput) as caught:
        drivers.validate("ipmi", info)
    assert f"driver_info.{field}" in caught.value.details["errors"]


def test_a_too_long_password_is_refused_without_echoing_it() -> None:
    secret = "s3cr3t-" * 4
    with pytest.raises(InvalidInput) as caught:
        drivers.validate("ipmi", {**GOOD, "ipmi_password": secret})
    assert secret not in caught.value.message and secret not in str(caught.value.details["errors"])


def test_credentials_carry_port_and_privilege() -> None:
    creds = ipmi.credentials({**GOOD, "ipmi_priv_level": "OPERATOR"})
    assert (creds.address, creds.port, creds.username, creds.priv_level) == ("10.0.0.7", 6230, "admin", 3)
    assert "hunter2" not in repr(creds)
    assert ipmi.credentials({"ipmi_address": "h"}).port == 623


def test_the_driver_composes_power_management_and_pxe_deploy() -> None:
    from conductor.drivers.pxe import PXEDeploy

    driver = drivers.get("ipmi")
    assert isinstance(driver.power, ipmi.IPMIPower) and isinstance(driver.management, ipmi.IPMIManagement)
    assert isinstance(driver.deploy, PXEDeploy) and driver.default_deploy_name() == "pxe"
    assert set(driver.deploy_interfaces) == {"pxe", "fake"}
    assert set(driver.fields()) == set(ipmi._FIELDS) | {"deploy_interface"}
    assert driver.validate({"ipmi_address": "h", "deploy_interface": "iscsi"}) == {
        "deploy_interface": "must be one of ['fake', 'pxe'] for driver ipmi (default pxe)"}


def test_one_call_in_flight_per_bmc(conductor_ctx) -> None:
    assert bmc_throttle.acquire(conductor_ctx, "10.0.0.7:623", "a", 5)
    assert not bmc_throttle.acquire(conductor_ctx, "10.0.0.7:623", "b", 5)
    assert bmc_throttle.acquire(conductor_ctx, "10.0.0.8:623", "b", 5)  # another BMC
    bmc_throttle.release(conductor_ctx, "10.0.0.7:623", "b")  # not the holder: no effect
    assert not bmc_throttle.acquire(conductor_ctx, "10.0.0.7:623", "c", 5)
    bmc_throttle.release(conductor_ctx, "10.0.0.7:623", "a")
    assert bmc_throttle.acquire(conductor_ctx, "10.0.0.7:623", "c", 5)


def test_a_busy_bmc_means_try_later_not_an_error(conductor_ctx) -> None:
    calls = []
    assert bmc_throttle.acquire(conductor_ctx, "10.0.0.7:6230", "someone else", 5)
    with pytest.raises(TryLater) as caught:
        ipmi.call(conductor_ctx, GOOD, calls.append, command=False)
    assert calls == [] and 0 < caught.value.after < 1 and "busy" in caught.value.reason


def test_commands_are_paced_reads_are_not(conductor_ctx) -> None:
    throttle_settings.update(conductor_ctx, {"bmc_min_interval": 30})
    assert ipmi.call(conductor_ctx, GOOD, lambda client: "sent", command=True) == "sent"
    with pytest.raises(TryLater) as caught:
        ipmi.call(conductor_ctx, GOOD, lambda client: "sent", command=True)
    assert 29 < caught.value.after <= 30
    assert ipmi.call(conductor_ctx, GOOD, lambda client: "read", command=False) == "read"
    # the lock was given back every time
    assert bmc_throttle.acquire(conductor_ctx, "10.0.0.7:6230", "x", 5)


class Holder:
    """What a step's Task offers the driver: ``held`` and ``cleanups``."""

    def __init__(self) -> None:
        self.held: dict = {}
        self.cleanups: list = []


def test_a_step_keeps_the_bmc_until_it_ends(conductor_ctx) -> None:
    throttle_settings.update(conductor_ctx, {"bmc_min_interval": 0})
    step = Holder()
    assert ipmi.call(conductor_ctx, GOOD, lambda client: 1, command=False, holder=step) == 1
    assert ipmi.call(conductor_ctx, GOOD, lambda client: 2, command=True, holder=step) == 2
    # still held between the calls of the step: others are told to try later
    with pytest.raises(TryLater):
        ipmi.call(conductor_ctx, GOOD, lambda client: 3, command=False)
    assert len(step.cleanups) == 1
    for cleanup in step.cleanups:
        cleanup()
    assert ipmi.call(conductor_ctx, GOOD, lambda client: 4, command=False) == 4
