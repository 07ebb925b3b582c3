"""Shared Redfish sessions: real sushy clients, a real Redis and the simulator's Redfish (HTTPS).

Each :class:`RedfishClient` here has its own sushy root, connection and
session state, as the clients of separate worker processes have; only the
store (the deployment's Redis) is shared.  The simulator counts the
sessions each BMC created, and lists the live ones.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from conductor import keys, secretbox
from conductor.bmcsim import BMCSpec, Fleet
from conductor.drivers import redfish
from conductor.drivers.redfish_client import RedfishClient
from conductor.drivers.redfish_sessions import SessionStore, StoredSession
from conductor.exceptions import BMCError
from conductor.settings import Settings
from tests.functional.bmcsim.test_redfish_sim import wait_until


@pytest.fixture
def connection(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def store(connection: redis.Redis, settings: Settings) -> SessionStore:
    return SessionStore(connection, settings)


@pytest.fixture
def clients() -> Iterator[Callable[..., RedfishClient]]:
    """Make clients (each as a worker process has its own); closed after."""
    made: list[RedfishClient] = []

    def make(fleet: Fleet, bmc: BMCSpec, sessions: SessionStore | None, **overrides: object) -> RedfishClient:
        info = fleet.redfish_driver_info(bmc.name)
        assert info is not None
        info.update(overrides)
        client = RedfishClient(redfish.credentials(info), timeout=5, retries=0, sessions=sessions)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def created(fleet: Fleet, bmc: BMCSpec) -> int:
    """Sessions the BMC has created so far."""
    return int(fleet.state(bmc.name)["redfish"]["sessions"])


def live(fleet: Fleet, bmc: BMCSpec) -> list[str]:
    """The BMC's live sessions, as its session collection lists them (read with Basic auth: no session)."""
    info = fleet.redfish_driver_info(bmc.name)
    assert info is not None
    response = requests.get(f"{info['redfish_address']}/redfish/v1/SessionService/Sessions",
                            auth=(bmc.username, bmc.password), verify=info["redfish_verify_ca"], timeout=5)
    assert response.status_code == 200, response.text
    return [member["@odata.id"] for member in response.json()["Members"]]


def stored_key(store: SessionStore, fleet: Fleet, bmc: BMCSpec, password: str | None = None) -> str:
    info = fleet.redfish_driver_info(bmc.name)
    assert info is not None
    key = store.key(info["redfish_address"], bmc.username, bmc.password if password is None else password)
    assert key is not None
    return key


def token_of(client: RedfishClient) -> str:
    root = client._root
    assert root is not None
    return str(root._auth.get_session_key())


def test_clients_share_one_session_per_bmc(redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec],
                                           store: SessionStore, clients: Callable[..., RedfishClient]) -> None:
    bmc = new_redfish_bmc()
    before = created(redfish_fleet, bmc)
    workers = [clients(redfish_fleet, bmc, store) for _ in range(3)]
    workers[0].set_power("on")
    assert wait_until(lambda: all(client.get_power() == "on" for client in workers))
    workers[1].set_power("off")
    assert wait_until(lambda: workers[2].get_power() == "off")
    assert created(redfish_fleet, bmc) - before == 1
    assert len(live(redfish_fleet, bmc)) == 1
    assert len({token_of(client) for client in workers}) == 1
    # Closing a client leaves the shared session to the others: no logout, no new login.
    workers[0].close()
    assert len(live(redfish_fleet, bmc)) == 1
    assert workers[1].get_power() == "off" and created(redfish_fleet, bmc) - before == 1


def test_an_expired_session_is_replaced_once_for_everyone(
        redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec], store: SessionStore,
        clients: Callable[..., RedfishClient]) -> None:
    bmc = new_redfish_bmc()
    first, second = clients(redfish_fleet, bmc, store), clients(redfish_fleet, bmc, store)
    assert first.get_power() == "off" and second.get_power() == "off"
    old = token_of(first)
    before = created(redfish_fleet, bmc)
    assert redfish_fleet.redfish is not None
    redfish_fleet.redfish.expire_sessions(bmc)
    # first: 401, drops the stored token (still the one that failed), logs in, stores the new one;
    # second: 401, finds a different token stored, adopts it (no login).
    first.set_power("on")
    assert wait_until(lambda: second.get_power() == "on")
    assert created(redfish_fleet, bmc) - before == 1
    assert token_of(first) == token_of(second) != old
    assert len(live(redfish_fleet, bmc)) == 1


def test_a_wrong_password_is_refused_while_a_good_session_is_stored(
        redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec], store: SessionStore,
        clients: Callable[..., RedfishClient], connection: redis.Redis) -> None:
    bmc = new_redfish_bmc()
    good = clients(redfish_fleet, bmc, store)
    assert good.check_credentials() == "off"
    assert connection.exists(stored_key(store, redfish_fleet, bmc))
    for auth_type in ("session", "auto"):
        wrong = clients(redfish_fleet, bmc, store, redfish_password="not-the-password",
                        redfish_auth_type=auth_type)
        with pytest.raises(BMCError) as caught:
            wrong.check_credentials()
        assert f"rejected the credentials of user '{bmc.username}' (401)" in caught.value.message
        assert "not-the-password" not in caught.value.message
    assert not connection.exists(stored_key(store, redfish_fleet, bmc, password="not-the-password"))
    # The good session is untouched.
    assert good.get_power() == "off" and len(live(redfish_fleet, bmc)) == 1


def test_the_token_is_sealed_in_redis_and_never_logged(
        redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec], store: SessionStore,
        clients: Callable[..., RedfishClient], connection: redis.Redis, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bmc = new_redfish_bmc()
    client = clients(redfish_fleet, bmc, store)
    client.set_power("on")
    token = token_of(client)
    key = stored_key(store, redfish_fleet, bmc)
    assert key.startswith(keys.redfish_session(settings.redis_namespace, ""))
    assert bmc.password not in key and bmc.username not in key
    raw = connection.get(key)
    assert raw is not None and token.encode() not in raw and bmc.password.encode() not in raw
    assert secretbox.is_sealed(raw.decode())
    assert token in secretbox.for_settings(settings).open(raw.decode())
    assert 0 < connection.ttl(key) <= settings.redfish_session_ttl
    for name in connection.scan_iter(f"{settings.redis_namespace}:*"):
        if connection.type(name) == b"string":
            assert token.encode() not in (connection.get(name) or b"")
    assert token not in caplog.text and bmc.password not in caplog.text


def test_two_logins_at_once_keep_one_session(redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec],
                                             store: SessionStore, clients: Callable[..., RedfishClient],
                                             connection: redis.Redis, settings: Settings,
                                             caplog: pytest.LogCaptureFixture) -> None:
    class BothFindNothing(SessionStore):
        """Both clients read the store before either has offered: both log in."""

        barrier = threading.Barrier(2, timeout=10)
        offered: ClassVar[list[str]] = []

        def get(self, key: str) -> StoredSession | None:
            found = super().get(key)
            self.barrier.wait()
            return found

        def offer(self, key: str, token: str, uri: str | None) -> StoredSession:
            self.offered.append(token)
            return super().offer(key, token, uri)

    caplog.set_level(logging.DEBUG)

    racing = BothFindNothing(connection, settings)
    bmc = new_redfish_bmc()
    before = created(redfish_fleet, bmc)
    pair = [clients(redfish_fleet, bmc, racing), clients(redfish_fleet, bmc, racing)]
    results: list[str] = []
    threads = [threading.Thread(target=lambda c=client: results.append(c.get_power())) for client in pair]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == ["off", "off"]
    assert created(redfish_fleet, bmc) - before == 2  # both logged in...
    assert len(live(redfish_fleet, bmc)) == 1  # ...and the loser logged its own out
    assert token_of(pair[0]) == token_of(pair[1])
    stored = store.get(stored_key(store, redfish_fleet, bmc))
    assert stored is not None and stored.token == token_of(pair[0])
    # The loser's token went out in its logout's header (sushy masks it in its debug log).
    assert len(set(racing.offered)) == 2 and not any(token in caplog.text for token in racing.offered)


def test_drop_deletes_only_the_session_that_failed(store: SessionStore, connection: redis.Redis) -> None:
    key = store.key("https://10.0.0.7", "admin", "s3cret")
    assert key is not None and key != store.key("https://10.0.0.7", "admin", "other")
    first = store.offer(key, "token-1", "/redfish/v1/SessionService/Sessions/1")
    assert first.sealed is not None and store.get(key) == first
    # A second login finds the first stored: it is told to use that one.
    assert store.offer(key, "token-2", "/redfish/v1/SessionService/Sessions/2") == first
    # A worker whose token-2 got 401 (it never was stored) drops nothing.
    assert not store.drop(key, StoredSession("token-2", None))
    assert not store.drop(key, StoredSession("token-1", None, secretbox.PREFIX + "another-sealing"))
    assert store.get(key) == first
    assert store.drop(key, first)
    assert store.get(key) is None
    assert not store.drop(key, first)


def test_without_redis_each_client_keeps_a_session_of_its_own(
        redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec], settings: Settings,
        clients: Callable[..., RedfishClient], caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on port 1; no retries (redis-py's default retries take seconds).
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    broken = SessionStore(down, settings)
    bmc = new_redfish_bmc()
    before = created(redfish_fleet, bmc)
    with caplog.at_level(logging.WARNING, logger="conductor.drivers.redfish_sessions"):
        first, second = clients(redfish_fleet, bmc, broken), clients(redfish_fleet, bmc, broken)
        assert first.get_power() == "off" and second.get_power() == "off"
    warnings = [r for r in caplog.records if r.name == "conductor.drivers.redfish_sessions"]
    assert len(warnings) == 1 and "sessions of its own" in warnings[0].getMessage()
    assert created(redfish_fleet, bmc) - before == 2 and len(live(redfish_fleet, bmc)) == 2
    # A session of its own is logged out when its client is closed.
    first.close()
    second.close()
    assert live(redfish_fleet, bmc) == []


def test_basic_auth_makes_no_session(redfish_fleet: Fleet, new_redfish_bmc: Callable[..., BMCSpec],
                                     store: SessionStore, clients: Callable[..., RedfishClient],
                                     connection: redis.Redis) -> None:
    bmc = new_redfish_bmc()
    before = created(redfish_fleet, bmc)
    assert clients(redfish_fleet, bmc, store, redfish_auth_type="basic").get_power() == "off"
    assert created(redfish_fleet, bmc) == before
    assert not connection.exists(stored_key(store, redfish_fleet, bmc))
    # auto: a session, shared like any other
    autos = [clients(redfish_fleet, bmc, store, redfish_auth_type="auto") for _ in range(2)]
    assert [client.get_power() for client in autos] == ["off", "off"]
    assert created(redfish_fleet, bmc) - before == 1 and connection.exists(stored_key(store, redfish_fleet, bmc))
