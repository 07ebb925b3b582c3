"""The event stream and long polls against `conductor up`: real gunicorn, workers, Redis and database."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conductor.settings import load
from tests.conftest import Service, bearer, fresh_database
from tests.sse_helpers import Frame, Stream

#: Heartbeats every half second; at most 40 events kept (so that an early id
#: gets too old quickly); a stream may buffer 100 events for its client.
ENV = {"CONDUCTOR_EVENT_HEARTBEAT": "0.5", "CONDUCTOR_EVENT_MAX_LENGTH": "40",
       "CONDUCTOR_EVENT_STREAM_BUFFER": "100"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
            request: pytest.FixtureRequest) -> Iterator[Service]:
    """One `conductor up` for the module (each test uses nodes of its own)."""
    data_dir = tmp_path_factory.mktemp("events")
    settings = load({"data_dir": data_dir, "database_url": fresh_database(request, data_dir),
                     "redis_url": redis_url, "redis_namespace": f"t{uuid.uuid4().hex[:12]}"}, env={})
    running = Service(settings, env=ENV).start()
    # Write budgets out of the way: a test sends 400 PATCHes as fast as it can, which on a quick
    # machine passes the default 50/s per client (seen in CI as a 503 rate_limited).
    budgets = {"write_rate": 100000, "write_burst": 100000, "client_write_rate": 100000, "client_write_burst": 100000}
    response = running.http.patch(f"{running.url}/v1/throttle", json=budgets, timeout=10)
    assert response.status_code == 200, response.text
    yield running
    running.stop()


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
        # Connected: the first heartbeat comes after the hub took the stream on.
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


def maintenance(service: Service, name: str, on: bool) -> None:
    response = service.http.patch(f"{service.url}/v1/nodes/{name}", json={"maintenance": on}, timeout=10)
    assert response.status_code == 200, response.text


def of_request(frames: list[Frame], request_id: str) -> list[Frame]:
    return [f for f in frames if (f.data["data"].get("request") or {}).get("id") == request_id]


def finished(request_id: str) -> Callable[[list[Frame]], bool]:
    return lambda frames: any(f.event == "request.finished" and f.data["data"]["request"]["id"] == request_id
                              for f in frames)


def test_a_stream_follows_a_power_request_in_order(service: Service, streams: list[Stream]) -> None:
    uuid = enrol(service, "n1")
    enrol(service, "n2")
    everything = open_stream(service, streams)
    mine = open_stream(service, streams, node="n1")
    ends = open_stream(service, streams, type="request.finished", node="n1")
    other = open_stream(service, streams, node="n2", type="node.*")
    request_id = power(service, "n1")
    everything.wait_for(finished(request_id), what="request.finished")
    mine.wait_for(finished(request_id), what="request.finished on the node stream")
    ends.wait_for(finished(request_id), what="request.finished on the type stream")

    frames = of_request(everything.events(), request_id)
    # The fake BMC is first read (off: it was unknown), then turned on.
    assert [f.event for f in frames] == ["request.queued", "request.running", "node.power_state.changed",
                                         "node.power_state.changed", "request.finished"]
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


def test_a_stream_resumes_after_its_last_event_id_and_says_when_it_cannot(
        service: Service, streams: list[Stream]) -> None:
    enrol(service, "r1")
    first = open_stream(service, streams, node="r1")
    on = power(service, "r1")
    first.wait_for(finished(on))
    seen = first.events()
    first.close()
    off = power(service, "r1", "power off")  # while nobody watches
    assert service.wait_request(off)["state"] == "succeeded"

    resumed = open_stream(service, streams, headers={"Last-Event-ID": seen[-1].id}, node="r1")
    resumed.wait_for(finished(off))
    missed = resumed.events()
    assert [f.event for f in missed] == ["request.queued", "request.running", "node.power_state.changed",
                                         "request.finished"]
    assert all(f.data["data"]["request"]["id"] == off for f in missed if f.event.startswith("request."))
    assert missed[0].key > seen[-1].key and [f.key for f in missed] == sorted(f.key for f in missed)
    assert not [f for f in resumed.frames if f.event.startswith("stream.")]
    again = power(service, "r1")  # live, after the catch-up, on the same stream
    resumed.wait_for(finished(again))

    # 40 events are kept at most: the first ones go (trimming runs at most once a second).
    for i in range(41):
        maintenance(service, "r1", i % 2 == 0)
    time.sleep(1.1)
    maintenance(service, "r1", False)
    stale = open_stream(service, streams, headers={"Last-Event-ID": seen[0].id}, node="r1")
    reset = stale.wait_for(lambda frames: frames and frames[0], what="the first frame")
    assert reset.event == "stream.reset" and reset.id is None
    assert reset.data["data"]["reason"] == "too_old" and reset.data["data"]["last_event_id"] == seen[0].id
    later = power(service, "r1", "power off")
    stale.wait_for(finished(later), what="live events after the reset")
    assert {f.data["data"]["request"]["id"] for f in stale.events("request.")} == {later}


def test_refusals_over_http(service: Service, streams: list[Stream]) -> None:
    no_token = open_stream(service, streams, headers={"Authorization": ""})
    assert (no_token.status, no_token.error["code"]) == (401, "unauthorized")
    bad_token = open_stream(service, streams, headers=bearer("cdt_wrong"))
    assert (bad_token.status, bad_token.error["code"]) == (401, "unauthorized")
    bad_type = open_stream(service, streams, type="node.nothing")
    assert (bad_type.status, bad_type.error["code"]) == (400, "invalid_event_filter")
    bad_node = open_stream(service, streams, node="ghost")
    assert (bad_node.status, bad_node.error["errors"]) == (400, {"node": "unknown: ghost"})
    bad_id = open_stream(service, streams, headers={"Last-Event-ID": "42"})
    assert (bad_id.status, bad_id.error["code"]) == (400, "invalid_event_filter")
    # A reader's token is enough.
    token = json.loads(service.cli("--json", "token", "create", "--role", "reader").stdout)["token"]
    assert open_stream(service, streams, headers=bearer(token)).status == 200


def _raw_stream(service: Service, path: str) -> socket.socket:
    """An HTTP/1.0 stream (no chunked encoding) whose client reads the head, then nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", service.port))
    sock.sendall(f"GET {path} HTTP/1.0\r\nAuthorization: Bearer {service.admin_token}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.split(b" ", 2)[1] == b"200", head
    return sock


def _parse(raw: bytes) -> list[tuple[str, dict]]:
    frames = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        if "data" in fields:
            frames.append((fields.get("event", "message"), json.loads(fields["data"])))
    return frames


def _dropped(service: Service) -> float:
    found = re.search(r'^conductor_event_streams_dropped_total\{reason="slow_consumer"\} (\S+)$',
                      service.http.get(f"{service.url}/metrics/fleet", timeout=10).text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_never_reads_is_dropped_and_holds_up_nobody(service: Service, streams: list[Stream]) -> None:
    enrol(service, "s1")
    dropped_before = _dropped(service)
    slow = _raw_stream(service, "/v1/events?node=s1")
    try:
        fast = open_stream(service, streams, node="s1")
        total = 400
        for i in range(total):
            maintenance(service, "s1", i % 2 == 0)
        fast.wait_for(lambda frames: len([f for f in frames if f.event == "node.maintenance"]) >= total,
                      what=f"{total} maintenance events")
        got = fast.events("node.maintenance")
        assert [f.data["data"]["node"]["maintenance"] for f in got] == [i % 2 == 0 for i in range(total)]
        assert [f.key for f in got] == sorted(f.key for f in got)
        assert not [f for f in fast.frames if f.event == "stream.closed"]
        deadline = time.monotonic() + 10
        while _dropped(service) < dropped_before + 1:
            assert time.monotonic() < deadline, "the slow stream was not dropped"
            time.sleep(0.1)
        # Now it reads: what the kernel held, then why it was dropped, then the end.
        slow.settimeout(20)
        raw = b""
        while chunk := slow.recv(65536):
            raw += chunk
    finally:
        slow.close()
    frames = _parse(raw)
    assert frames[-1][0] == "stream.closed" and frames[-1][1]["data"]["reason"] == "slow_consumer"
    received = [data["id"] for kind, data in frames if kind == "node.maintenance"]
    assert 0 < len(received) < total
    assert received == [f.id for f in got[:len(received)]]  # in order, none skipped before the drop


def test_a_long_poll_answers_when_the_request_ends_or_when_the_wait_is_over(service: Service) -> None:
    enrol(service, "quick", fake_delay=1)
    enrol(service, "slow", fake_delay=8)
    request_id = power(service, "quick")
    began = time.monotonic()
    answer = service.http.get(f"{service.url}/v1/requests/{request_id}", params={"wait": 30}, timeout=40).json()
    took = time.monotonic() - began
    assert answer["state"] == "succeeded" and took < 20  # as it ended, not after 30 s

    request_id = power(service, "slow")
    began = time.monotonic()
    answer = service.http.get(f"{service.url}/v1/requests/{request_id}", params={"wait": 1}, timeout=40).json()
    took = time.monotonic() - began
    assert answer["state"] in ("queued", "running") and took >= 1  # its current state, once the wait is over
    too_long = service.http.get(f"{service.url}/v1/requests/{request_id}", params={"wait": 61}, timeout=10)
    assert (too_long.status_code, too_long.json()["errors"]) == (400, {"wait": "at most 60"})


def test_the_cli_waits_by_long_polling_and_watches_the_stream(service: Service) -> None:
    enrol(service, "c1", fake_delay=1)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "conductor", "--url", service.url, "--json", "watch", "--node", "c1",
         "--type", "request.*", "--count", "3"],
        env=service.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stderr is not None
        assert "following" in watcher.stderr.readline()
        done = json.loads(service.cli("--json", "node", "power", "on", "c1", "--wait").stdout)
        assert done["state"] == "succeeded"
        out, _err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
        watcher.wait()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in lines] == ["request.queued", "request.running", "request.finished"]
    assert {e["data"]["request"]["id"] for e in lines} == {done["id"]}
