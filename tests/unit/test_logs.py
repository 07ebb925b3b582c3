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


# --- formats, files, secrets ---------------------------------------------------------------

@pytest.fixture
def restore_logging():  # type: ignore[no-untyped-def]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def read_json_lines(path) -> list[dict]:  # type: ignore[no-untyped-def]
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_lines_name_the_request_and_the_node(client, conductor_ctx, tmp_path, restore_logging) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "conductor.log"
    logs.setup("DEBUG", log, "json")
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    request_id = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json["id"]
    lines = read_json_lines(log)
    accepted = [line for line in lines if "Accepted power request" in line["message"]]
    assert accepted, lines
    line = accepted[0]
    assert line["request_id"] == request_id and line["node"] == "n1"
    assert line["level"] == "INFO" and line["logger"].startswith("conductor.")
    assert line["time"].endswith("+00:00") and isinstance(line["pid"], int)
    # The worker's lines about the step name the node too, and none after it.
    drain(conductor_ctx)
    succeeded = [line for line in read_json_lines(log) if line["message"] == f"Request {request_id} succeeded"]
    assert succeeded and succeeded[0]["node"] == "n1" and succeeded[0]["request_id"] == request_id
    assert logs._NODE.get() is None
    # A call about no node names none.
    client.get("/v1/requests")
    logging.getLogger("conductor.test").info("after")
    assert "node" not in read_json_lines(log)[-1] and "request_id" not in read_json_lines(log)[-1]


def test_secrets_are_masked_in_both_formats(tmp_path, restore_logging) -> None:  # type: ignore[no-untyped-def]
    said = ("connecting to postgresql+psycopg://conductor:pg-pass@db/c with %s, headers %s, driver_info %s",
            "cdt_Zm9vYmFyYmF6", {"Authorization": "Bearer cdt_abc", "X-Agent-Token": "agent-tok"},
            {"ipmi_password": "bmc-pass", "ipmi_username": "admin"})
    for fmt in logs.FORMATS:
        log = tmp_path / f"{fmt}.log"
        logs.setup("INFO", log, fmt)
        logging.getLogger("conductor.test").warning(*said)
        try:
            raise RuntimeError("redis://:redis-pass@host:6379/0 refused")
        except RuntimeError:
            logging.getLogger("conductor.test").exception("failed")
        text = log.read_text()
        for secret in ("pg-pass", "Zm9vYmFyYmF6", "cdt_abc", "agent-tok", "bmc-pass", "redis-pass"):
            assert secret not in text, (fmt, text)
        assert "admin" in text and "db/c" in text and "******" in text
        # A logger whose name ends like a secret's key does not mask the message after it.
        logging.getLogger("conductor.auth.tokens").info("Created admin token tok-1 (ops)")
        assert "Created admin token tok-1 (ops)" in log.read_text()
    assert "RuntimeError" in read_json_lines(tmp_path / "json.log")[-2]["exception"]


def test_the_log_file_is_reopened_when_logrotate_moves_it(tmp_path, restore_logging) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "conductor.log"
    logs.setup("INFO", log, "json")
    logging.getLogger("conductor.test").info("before")
    log.rename(tmp_path / "conductor.log.1")
    logging.getLogger("conductor.test").info("after")
    assert [line["message"] for line in read_json_lines(tmp_path / "conductor.log.1")] == ["before"]
    assert [line["message"] for line in read_json_lines(log)] == ["after"]


def test_an_unknown_format_is_refused_before_anything_starts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from conductor.cli import main

    result = CliRunner().invoke(main, ["settings", "--data-dir", str(tmp_path)], env={"CONDUCTOR_LOG_FORMAT": "xml"})
    assert result.exit_code != 0 and "log_format must be one of text, json" in result.output
    with pytest.raises(ValueError):
        logs.setup("INFO", None, "xml")


def test_gunicorns_own_lines_go_through_the_same_handler() -> None:
    from gunicorn.config import Config

    from conductor.gunicorn_app import _RootLogger

    logger = _RootLogger(Config())
    assert logger.error_log.propagate and not logger.error_log.handlers
