"""The request id on log lines, from the API's acceptance through the worker's steps."""

from __future__ import annotations

import logging

import pytest

from conductor import logs
from tests.conftest import drain


@pytest.fixture
def lines():  # type: ignore[no-untyped-def]
    captured: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(self.format(record))

    handler = Collect()
    handler.setFormatter(logging.Formatter(logs.FORMAT))
    handler.addFilter(logs.RequestIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield captured
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_lines_about_a_request_carry_its_id_in_api_and_worker(client, conductor_ctx, lines) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    request_id = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json["id"]
    accepted = [line for line in lines if "Accepted power request" in line]
    assert accepted and accepted[0].endswith(f"request_id={request_id}")
    lines.clear()
    drain(conductor_ctx)
    succeeded = [line for line in lines if "succeeded" in line]
    assert succeeded and all(line.endswith(f"request_id={request_id}") for line in succeeded)
    # Between requests nothing is bound.
    client.get("/v1/nodes")
    assert logs.current_request_id() is None


def test_no_tag_without_a_request(lines) -> None:
    logging.getLogger("conductor.test").warning("plain")
    assert lines[-1].endswith("conductor.test: plain")
