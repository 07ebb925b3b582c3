"""Heartbeat budgets: an agent's accepted token is checked before others' guesses are counted against it.

Budgets are made small (and slow to refill) so that floods are a handful
of calls; the buckets are the real ones in Redis.
"""

from __future__ import annotations

import pytest

from conductor.api import admission
from tests.conftest import drain
from tests.unit.engine.test_pxe import boot_config, heartbeat, make_node, put

BURST = 5


@pytest.fixture
def small_budgets(monkeypatch):  # type: ignore[no-untyped-def]
    for name in ("ADDRESS", "ALL"):
        monkeypatch.setattr(admission, f"HEARTBEAT_{name}_RATE", 0.001)
        monkeypatch.setattr(admission, f"HEARTBEAT_{name}_BURST", BURST)


@pytest.fixture
def waiting_agent(client, conductor_ctx, settings) -> str:  # type: ignore[no-untyped-def]
    """n1 in ``clean wait``; returns its agent's token."""
    make_node(client)
    make_node(client, "n2")
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "clean")
    drain(conductor_ctx)
    return boot_config(settings, client)["token"]  # type: ignore[no-any-return]


def flood(anonymous, node="n2"):  # type: ignore[no-untyped-def]
    """Wrong tokens from this address until the address budget refuses; returns the refusal."""
    for attempt in range(BURST + 1):
        response = heartbeat(anonymous, node, f"guess-{attempt}")
        if response.status_code == 503:
            return response
        assert response.json["code"] == "invalid_agent_token"
    raise AssertionError("the flood was never refused")


def test_guesses_do_not_starve_an_agent_already_heard(small_budgets, waiting_agent, anonymous) -> None:
    assert heartbeat(anonymous, "n1", waiting_agent).status_code == 200
    refused = flood(anonymous)
    assert refused.json["code"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
    # The guesses (same address, any node) are refused before any look-up...
    assert heartbeat(anonymous, "n1", "another-guess").status_code == 503
    # ...but the agent whose token was accepted is still heard.
    for _ in range(3):
        answer = heartbeat(anonymous, "n1", waiting_agent)
        assert answer.status_code == 200, answer.json
        assert answer.json["command"]["name"] == "erase_disks"


def test_a_heartbeat_without_a_token_is_401_not_counted(small_budgets, waiting_agent, anonymous) -> None:
    flood(anonymous)
    for _ in range(BURST + 1):
        response = anonymous.post("/v1/nodes/n1/heartbeat", json={})
        assert response.status_code == 401 and response.json["code"] == "invalid_agent_token"


def test_an_accepted_token_is_still_checked_every_time(waiting_agent, client, anonymous, conductor_ctx) -> None:
    assert heartbeat(anonymous, "n1", waiting_agent).status_code == 200
    # Abort: the token is revoked; remembered by the budgets, it grants nothing.
    assert client.put("/v1/nodes/n1/states/provision", json={"target": "abort"}).status_code in (200, 202)
    drain(conductor_ctx)
    late = heartbeat(anonymous, "n1", waiting_agent)
    assert late.status_code == 401 and late.json["code"] == "invalid_agent_token"
