"""The redfish driver's driver_info, checked without a BMC."""

from __future__ import annotations

import hashlib

import pytest
import redis

from conductor import drivers, secretbox
from conductor.drivers import redfish
from conductor.drivers.base import AGENT_INSPECTION
from conductor.drivers.redfish_sessions import SessionStore
from conductor.exceptions import InvalidInput
from conductor.settings import Settings

GOOD = {"redfish_address": "https://10.0.0.7", "redfish_username": "admin", "redfish_password": "s3cret"}


def test_a_good_driver_info_is_valid() -> None:
    drivers.validate("redfish", GOOD)
    drivers.validate("redfish", {**GOOD, "redfish_system_id": "/redfish/v1/Systems/1", "redfish_verify_ca": False,
                                 "redfish_auth_type": "basic", "redfish_timeout": 30, "inspect_interface": "agent",
                                 "deploy_interface": "fake"})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("redfish_address", "ftp://10.0.0.7", "must be a URL"),
    ("redfish_address", "https://", "must be a URL"),
    ("redfish_address", "https://10.0.0.7:99999", "must be a URL"),
    ("redfish_address", "https://10.0.0.7/redfish/v1", "scheme, host and port only"),
    ("redfish_system_id", "Systems/1", "path"),
    ("redfish_system_id", "", "path"),
    ("redfish_verify_ca", 3, "true, false or the path"),
    ("redfish_auth_type", "kerberos", "session, basic, auto"),
    ("redfish_timeout", 0, "above 0"),
    ("redfish_connect_timeout", True, "above 0"),
    ("inspect_interface", "ipmi", "must be one of ['agent', 'redfish']"),
])
def test_bad_fields_are_named(key: str, value: object, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        drivers.validate("redfish", {**GOOD, key: value})
    assert message in caught.value.details["errors"][f"driver_info.{key}"]


def test_credentials_in_the_address_are_refused_without_being_echoed() -> None:
    with pytest.raises(InvalidInput) as caught:
        drivers.validate("redfish", {**GOOD, "redfish_address": "https://admin:hunter2@10.0.0.7"})
    assert "hunter2" not in str(caught.value) and "hunter2" not in str(caught.value.details)


def test_the_password_is_a_secret_and_never_in_a_repr() -> None:
    assert drivers.mask_secrets(GOOD)["redfish_password"] == "******"
    creds = redfish.credentials(GOOD)
    assert "s3cret" not in repr(creds) and creds.password == "s3cret"


def test_credentials_default_to_https_and_verification() -> None:
    creds = redfish.credentials({"redfish_address": "bmc.example.com:8443/"})
    assert creds.address == "https://bmc.example.com:8443"
    assert creds.verify is True and creds.auth_type == "session" and creds.system_id is None
    assert redfish.credentials({**GOOD, "redfish_verify_ca": "false"}).verify is False
    assert redfish.credentials({**GOOD, "redfish_verify_ca": "/etc/bmc-ca.pem"}).verify == "/etc/bmc-ca.pem"


def test_inspection_is_out_of_band_by_default() -> None:
    driver = drivers.get("redfish")
    assert isinstance(driver.inspect_for(GOOD), redfish.RedfishInspect)
    assert driver.inspect_for({**GOOD, "inspect_interface": AGENT_INSPECTION}) is driver.deploy
    # drivers without inspect interfaces inspect with their deploy interface, as before
    ipmi = drivers.get("ipmi")
    assert ipmi.inspect_for({"ipmi_address": "10.0.0.7"}) is ipmi.deploy
    with pytest.raises(InvalidInput):
        drivers.validate("ipmi", {"ipmi_address": "10.0.0.7", "inspect_interface": "redfish"})


def test_a_shared_sessions_key_is_an_hmac_of_address_user_and_password_under_the_secret_key() -> None:
    connection = redis.Redis()  # never connected: the key is computed without Redis
    store = SessionStore(connection, Settings(redis_namespace="ns", secret_key=secretbox.new_key()))
    key = store.key("https://10.0.0.7", "admin", "s3cret")
    assert key is not None and key.startswith("ns:redfish-session:")
    assert "s3cret" not in key and "admin" not in key
    assert key == store.key("https://10.0.0.7", "admin", "s3cret")
    assert key != store.key("https://10.0.0.7", "admin", "s3cret2")
    assert key != store.key("https://10.0.0.7", "root", "s3cret")
    assert key != store.key("https://10.0.0.8", "admin", "s3cret")
    other_deployment = SessionStore(connection, Settings(redis_namespace="ns", secret_key=secretbox.new_key()))
    assert other_deployment.key("https://10.0.0.7", "admin", "s3cret") != key
    assert key.split(":")[-1] != hashlib.sha256(b"s3cret").hexdigest()
