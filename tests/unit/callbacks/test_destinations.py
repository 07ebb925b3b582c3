"""Where callbacks may go: allow/deny lists, checked when the URL is given."""

from __future__ import annotations

import socket

import pytest

from conductor.callbacks import destinations
from conductor.exceptions import CallbackUrlDenied, InvalidInput
from conductor.models import CallbackSubscription, Request
from conductor.settings import load


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook",
    "https://127.0.0.1/hook?x=1",
    "http://localhost:9/cb",
    pytest.param("http://[::1]:8080/", marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6")),
])
def test_loopback_is_allowed_by_default(settings, url) -> None:
    target = destinations.check(settings, url)
    assert target.addresses and all(a.is_loopback for a in target.addresses)


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",  # AWS, Azure, GCP, OpenStack metadata
    "http://169.254.10.20:8080/",                # any link-local
    "http://[fe80::1]/",                         # IPv6 link-local
    "http://[fd00:ec2::254]/",                   # AWS IPv6 metadata
    "http://[::ffff:169.254.169.254]/",          # IPv4-mapped IPv6 spelling
    "http://100.100.100.200/",                   # Alibaba metadata
    "http://metadata.google.internal/computeMetadata/v1/",
])
def test_link_local_and_metadata_are_denied_by_default(settings, url) -> None:
    with pytest.raises(CallbackUrlDenied) as raised:
        destinations.check(settings, url)
    assert raised.value.code == "callback_url_denied" and raised.value.status == 400
    assert "deny list" in raised.value.message


def test_a_non_empty_allow_list_admits_only_what_it_names(settings) -> None:
    by_network = settings.replace(callback_allow="10.0.0.0/8, 127.0.0.2")
    destinations.check(by_network, "http://127.0.0.2:9/")
    with pytest.raises(CallbackUrlDenied, match="not on the allow list"):
        destinations.check(by_network, "http://127.0.0.1:9/")
    by_name = settings.replace(callback_allow="localhost")
    destinations.check(by_name, "http://localhost:9/")
    with pytest.raises(CallbackUrlDenied):
        destinations.check(by_name, "http://127.0.0.1:9/")


def test_the_deny_list_wins_over_the_allow_list(settings) -> None:
    both = settings.replace(callback_allow="127.0.0.0/8", callback_deny="127.0.0.2")
    destinations.check(both, "http://127.0.0.1:9/")
    with pytest.raises(CallbackUrlDenied, match="deny list"):
        destinations.check(both, "http://127.0.0.2:9/")


def test_host_name_patterns_match_subdomains(settings) -> None:
    rules = destinations.Rules.parse("*.example.com, hooks.test", "callback_deny")
    assert rules.matches_host("a.example.com") and rules.matches_host("x.y.example.com")
    assert not rules.matches_host("example.com") and not rules.matches_host("badexample.com")
    assert rules.matches_host("HOOKS.test.") and not rules.matches_host("a.hooks.test")


def test_a_host_that_does_not_resolve_is_refused(settings) -> None:
    with pytest.raises(CallbackUrlDenied) as raised:
        destinations.check(settings, "http://no-such-host.invalid/hook")
    assert raised.value.details["reason"] == destinations.UNRESOLVABLE


@pytest.mark.parametrize("url", ["http://user:pw@127.0.0.1/", "ftp://127.0.0.1/", "/relative", "http://127.0.0.1:99999/"])
def test_malformed_urls_are_validation_errors(settings, url) -> None:
    with pytest.raises(InvalidInput) as raised:
        destinations.check(settings, url)
    assert raised.value.code == "validation_error"


def test_a_malformed_list_entry_is_refused(settings) -> None:
    with pytest.raises(InvalidInput, match="callback_deny"):
        destinations.check(settings.replace(callback_deny="10.0.0.0/8, not/a/net"), "http://127.0.0.1/")


def test_denied_callback_url_is_400_at_request_time_and_nothing_is_accepted(client, ctx) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    for path, target in (("power", "power on"), ("provision", "manage")):
        response = client.put(f"/v1/nodes/n1/states/{path}",
                              json={"target": target, "callback_url": "http://169.254.169.254/latest"})
        assert response.status_code == 400
        assert response.json["code"] == "callback_url_denied"
        assert "169.254.169.254" in response.json["message"]
    assert client.get("/v1/nodes/n1/states").json["request_id"] is None
    with ctx.db.session() as session:
        assert session.query(Request).count() == 0


def test_credentials_in_a_callback_url_are_refused(client) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    response = client.put("/v1/nodes/n1/states/power",
                          json={"target": "power on", "callback_url": "http://me:secret@127.0.0.1/cb"})
    assert response.status_code == 400 and response.json["code"] == "validation_error"
    assert "secret" not in response.json["message"]


def test_denied_subscription_url_is_400_and_not_stored(client, ctx) -> None:
    response = client.post("/v1/subscriptions", json={"url": "http://[fe80::1]:8080/", "events": ["*"]})
    assert response.status_code == 400 and response.json["code"] == "callback_url_denied"
    with ctx.db.session() as session:
        assert session.query(CallbackSubscription).count() == 0


def test_lists_come_from_a_toml_array_or_the_environment(tmp_path) -> None:
    config = tmp_path / "conductor.toml"
    config.write_text('callback_deny = ["10.0.0.0/8", "*.internal"]\n', encoding="utf-8")
    from_file = load({"data_dir": tmp_path}, env={"CONDUCTOR_CONFIG": str(config)})
    assert from_file.callback_deny == "10.0.0.0/8,*.internal"
    with pytest.raises(CallbackUrlDenied):
        destinations.check(from_file, "http://10.1.2.3/")
    from_env = load({"data_dir": tmp_path}, env={"CONDUCTOR_CALLBACK_ALLOW": "127.0.0.2, hooks.test"})
    policy = destinations.Policy.from_settings(from_env)
    assert policy.allow.hosts == ("hooks.test",) and len(policy.allow.networks) == 1


def test_unspecified_and_ipv6_wrapped_addresses_are_caught(settings) -> None:
    import pytest as _pytest

    from conductor.callbacks import destinations
    from conductor.exceptions import CallbackUrlDenied

    denying_loopback = settings.replace(callback_deny="127.0.0.0/8,169.254.0.0/16")
    for url in ("http://0.0.0.0:6379/", "http://[::]/", "http://[::ffff:127.0.0.1]/",
                "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/", "http://[::169.254.169.254]/"):
        with _pytest.raises(CallbackUrlDenied):
            destinations.check(denying_loopback, url)
