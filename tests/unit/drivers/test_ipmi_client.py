"""BMCClient pieces that need no BMC (the rest: tests/functional/bmcsim)."""

from __future__ import annotations

import pytest

from conductor.drivers.ipmi_client import BMCClient, BMCCredentials, _is_auth_error, _is_timeout


def test_credentials_hide_the_password() -> None:
    creds = BMCCredentials("10.0.0.7", 623, "admin", "hunter2")
    assert "hunter2" not in repr(creds) and "hunter2" not in repr(BMCClient(creds))
    assert creds.endpoint == "10.0.0.7:623"
    assert BMCCredentials("fe80::1", 6230).endpoint == "[fe80::1]:6230"
    with pytest.raises(AttributeError):
        creds.password = "other"  # type: ignore[misc]


def test_error_classification() -> None:
    assert _is_auth_error("Incorrect password provided")
    assert _is_auth_error("Unauthorized name in RAKP2")
    assert not _is_auth_error("timeout")
    assert _is_timeout("timeout") and _is_timeout("Session no longer connected")
    assert _is_timeout("None")  # pyghmi raises IpmiException(None) when a login times out
    assert not _is_timeout(None) and not _is_timeout("Invalid command")


def test_bad_arguments_fail_before_any_network() -> None:
    client = BMCClient(BMCCredentials("192.0.2.1", 623, "admin", "x"))  # TEST-NET: never contacted
    with pytest.raises(ValueError):
        client.set_power("explode")
    with pytest.raises(ValueError):
        client.set_boot_device("tape")
