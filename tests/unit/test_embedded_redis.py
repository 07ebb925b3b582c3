"""The embedded Redis: starts, persists, stops, never leaks."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from conductor.embedded_redis import EmbeddedRedis, is_running, socket_path


def test_start_persist_stop(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert is_running(tmp_path)
        pid = server.pid
    finally:
        server.stop()
    assert pid is not None
    assert not is_running(tmp_path)
    try:
        os.kill(pid, 0)
        raise AssertionError("redis-server still running")
    except ProcessLookupError:
        pass
    with EmbeddedRedis(tmp_path) as again:  # the data survived the restart
        assert redis.Redis.from_url(again.url).get("k") == b"v"


def test_long_data_dir_gets_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    assert len(str(socket_path(deep))) <= 107
    with EmbeddedRedis(deep) as server:
        assert redis.Redis.from_url(server.url).ping()
