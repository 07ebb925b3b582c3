"""The event stream and long polls against `conductor up`: real gunicorn, workers, Redis and database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Service
from tests.sse_helpers import Frame, Stream

FAST = {"CONDUCTOR_EVENT_HEARTBEAT": "0.5"}


@pytest.fixture
def service(service_factory: Any) -> Service:
    return service_factory(env=FAST)


@pytest.fixture
def streams() -> Iterator[list[Stream]]:
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        stream.close()


def open_stream(service: Service, streams: list[Stream], headers: dict[str, str] | None = None,
                **params: Any) -> Stream:
    stream = Stream(service.url + "/v1/events", {**service.auth_headers, **(headers or {})}, params or None)
    streams.append(stream)
    if stream.status == 200:
        # Connected: the heartbeat comes after the hub took the stream on.
        stream.wait_for(lambda _f: stream.comments >= 1, what="connected")
    return stream


def enrol(service: Service, name: str, **driver_info: Any) -> str:
    response = service.http.post(f"{service.url}/v1/nodes", timeout=10,
                                 json={"name": name, "driver": "fake", "driver_info": driver_info})
    assert response.status_code == 201, response.text
    return str(response.json()["uuid"])


def power(service: Service, name: str, target: str = "power on") -> str:
    response = service.http.put(f"{service.url}/v1/nodes/{name}/states/power", json={"target": target}, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def of_request(frames: list[Frame], request_id: str) -> list[Frame]:
    return [f for f in frames if (f.data["data"].get("request") or {}).get("id") == request_id]


def finished(request_id: str):  # type: ignore[no-untyped-def]
    return lambda frames: any(f.event == "request.finished" and f.data["data"]["request"]["id"] == request_id
                              for f in frames)


def test_a_stream_follows_a_power_request_in_order(service: Service, streams: list[Stream]) -> None:
    uuid = enrol(service, "n1")
    enrol(service, "n2")
    everything = open_stream(service, streams)
    mine = open_stream(service, streams, node="n1")
    ends = open_stream(service, streams, type="request.finished")
    other = open_stream(service, streams, node="n2", type="node.*")
    request_id = power(service, "n1")
    everything.wait_for(finished(request_id), what="request.finished")
    mine.wait_for(finished(request_id), what="request.finished on the node stream")
    ends.wait_for(finished(request_id), what="request.finished on the type stream")

    types = [f.event for f in of_request(everything.events(), request_id)]
    # The fake BMC is first read (off: it was unknown), then turned on.
    assert types == ["request.queued", "request.running", "node.power_state.changed", "node.power_state.changed",
                     "request.finished"]
    frames = of_request(everything.events(), request_id)
    assert [f.key for f in frames] == sorted(f.key for f in frames)
    for frame in frames:
        assert frame.data["id"] == frame.id and frame.data["type"] == frame.event
        assert frame.data["committed_at"].endswith("Z") and frame.data["data"]["node"]["uuid"] == uuid
    assert frames[0].data["data"]["request"]["state"] == "queued"
    assert frames[0].data["data"]["node"]["target_power_state"] == "power on"
    assert [f.data["data"]["previous"] for f in frames[2:4]] == [{"power_state": None},
                                                                 {"power_state": "power off"}]
    assert frames[3].data["data"]["node"]["power_state"] == "power on"
    assert frames[-1].data["data"]["request"]["state"] == "succeeded"
    # The filters: the node's stream has exactly these; the type stream the end only; n2's nothing.
    assert [f.id for f in mine.events()] == [f.id for f in frames]
    assert [f.event for f in ends.events()] == ["request.finished"]
    time.sleep(0.5)
    assert other.events() == []
