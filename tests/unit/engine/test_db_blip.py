"""A database blip (connection lost, backend terminated, SQLite locked) loses nothing.

The errors are real: on SQLite the driver's own ``sqlite3.OperationalError``
("database is locked") is raised from the statement's execution path; on
PostgreSQL (``TEST_DATABASE_URL``) the test terminates the backend of the
very connection about to run the statement (``pg_terminate_backend``), so
psycopg fails it as it would in production.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from rq.timeouts import JobTimeoutException
from sqlalchemy import event

from conductor import database
from conductor.bootstrap import build_context
from conductor.engine import conductors, jobs, runner, sweeper
from conductor.fsm.states import RequestKind
from conductor.models import Node, Request, utcnow
from tests.conftest import bearer, drain, make_token

# The claim of a step (engine/task.py _CLAIM).
CLAIM = r"^UPDATE requests SET state="
# The step's release (with the node's other changes: core/steps.py), and its undo.
STEP_FENCE = r"^UPDATE nodes SET (\w+=\S+, )*reservation=.* WHERE nodes\.id = \S+ AND nodes\.reservation = "
# runner._unclaim.
UNCLAIM = r"^UPDATE requests SET conductor=.* WHERE requests\.id = \S+ AND requests\.conductor = "
# runner.fail_request.
FAIL_FENCE = r"^UPDATE requests SET updated_at=.* WHERE requests\.id = \S+ AND requests\.state IN"


class Blip:
    """Break the statements matching ``pattern`` (``times`` of them; None: all) with a real driver error."""

    def __init__(self, engine: sa.Engine, pattern: str, times: int | None = 1) -> None:
        self.engine = engine
        self.pattern = re.compile(pattern)
        self.left = times
        self.fired = 0
        self._admin = sa.create_engine(engine.url) if engine.dialect.name == "postgresql" else None

    def __enter__(self) -> Blip:
        event.listen(self.engine, "before_cursor_execute", self._hook)
        return self

    def __exit__(self, *_exc: Any) -> None:
        event.remove(self.engine, "before_cursor_execute", self._hook)
        if self._admin is not None:
            self._admin.dispose()

    def _hook(self, conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if not self.pattern.search(statement) or self.left == 0:
            return
        if self.left is not None:
            self.left -= 1
        self.fired += 1
        if self._admin is None:
            raise sqlite3.OperationalError("database is locked")
        pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with self._admin.connect() as admin:
            # Waits until the backend is gone: the statement then meets a dead connection.
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})


@pytest.fixture
def node(client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    assert client.post("/v1/nodes", json={"name": "n1", "driver": "fake"}).status_code == 201
    yield "n1"


def _power_on(client) -> str:  # type: ignore[no-untyped-def]
    response = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    assert response.status_code == 202, response.json
    return str(response.json["id"])


def _request(ctx, request_id: str) -> Request:  # type: ignore[no-untyped-def]
    with ctx.db.session() as session:
        request = session.get(Request, request_id)
        assert request is not None
        return request


def test_a_step_whose_claim_breaks_runs_again_and_succeeds(client, node, conductor_ctx) -> None:
    request_id = _power_on(client)
    conductor_ctx.queue.queue.empty()  # a worker took the request's job
    with Blip(conductor_ctx.db.engine, CLAIM) as blip:
        runner.run_step(conductor_ctx, request_id)
    assert blip.fired == 1
    # Done, or sleeping in a timer: never left with neither.
    assert _request(conductor_ctx, request_id).state == "succeeded" or conductor_ctx.queue.pending([request_id])
    drain(conductor_ctx)
    request = _request(conductor_ctx, request_id)
    assert (request.state, request.error) == ("succeeded", None)


def test_a_step_whose_commit_and_release_break_takes_its_own_claim_and_reservation_again(
    client, node, conductor_ctx
) -> None:
    request_id = _power_on(client)
    # The step's recording fails, then so does giving the node back: the
    # retry finds the claim and the reservation still held by itself.
    with Blip(conductor_ctx.db.engine, STEP_FENCE, times=2) as blip:
        runner.run_step(conductor_ctx, request_id)
    assert blip.fired == 2
    drain(conductor_ctx)
    request = _request(conductor_ctx, request_id)
    assert (request.state, request.error) == ("succeeded", None)
    assert client.get("/v1/nodes/n1").json["reservation"] is None


def test_a_popped_timer_is_armed_again_while_the_database_stays_away(
    client, node, conductor_ctx, monkeypatch
) -> None:
    request_id = _power_on(client)
    queue = conductor_ctx.queue
    queue.queue.empty()
    # The request sleeps in a timer that falls due; a conductor pumps it into
    # a batch job (the "pumped" mark keeps the sweep away), and the job's
    # claim keeps failing.
    queue.schedule(request_id, 0)
    assert queue.pump_timers() == 1
    assert conductor_ctx.redis.zscore(queue.timers_key, request_id) is None
    monkeypatch.setattr(jobs, "_context", conductor_ctx)
    with Blip(conductor_ctx.db.engine, CLAIM, times=None) as blip:
        jobs.run_steps([request_id])
    assert blip.fired == database.RETRY_ATTEMPTS
    request = _request(conductor_ctx, request_id)
    assert request.state == "queued" and request.conductor is None  # not failed, not held
    assert conductor_ctx.redis.zscore(queue.timers_key, request_id) is not None  # armed again
    queue.queue.empty()
    drain(conductor_ctx)
    assert _request(conductor_ctx, request_id).state == "succeeded"


def _claim_left_since(client, conductor_ctx, seconds: float) -> str:  # type: ignore[no-untyped-def]
    """A power request running in this conductor for ``seconds``: its claim and reservation, no job or timer."""
    request_id = _power_on(client)
    conductor_ctx.queue.queue.empty()
    since = utcnow() - dt.timedelta(seconds=seconds)
    with conductor_ctx.db.begin() as session:
        session.execute(sa.update(Request).where(Request.id == request_id).values(
            state="running", conductor=conductor_ctx.name, updated_at=since))
        session.execute(sa.update(Node).values(reservation=conductor_ctx.name, updated_at=since))
    return request_id


def test_a_claim_left_by_a_live_conductor_is_released_by_the_sweep(client, node, conductor_ctx) -> None:
    # What a step leaves when the database stayed away longer than all its
    # retries: the claim and the node's reservation, and no timer.
    request_id = _claim_left_since(client, conductor_ctx, sweeper.claim_lifetime(conductor_ctx.settings) + 60)
    assert sweeper.sweep(conductor_ctx)["unclaimed"] == 1
    request = _request(conductor_ctx, request_id)
    assert request.state == "running" and request.conductor is None
    assert conductor_ctx.redis.zscore(conductor_ctx.queue.timers_key, request_id) is not None
    drain(conductor_ctx)
    assert _request(conductor_ctx, request_id).state == "succeeded"


def test_a_claim_of_a_step_still_running_in_a_batch_job_is_kept_by_the_sweep(client, node, conductor_ctx) -> None:
    # A batch job's RQ timeout is job_timeout per step: its step may hold the
    # claim longer than job_timeout (+ requeue_after) and still be running.
    settings = conductor_ctx.settings
    request_id = _claim_left_since(client, conductor_ctx, settings.job_timeout + settings.requeue_after + 60)
    assert sweeper.sweep(conductor_ctx)["unclaimed"] == 0
    assert _request(conductor_ctx, request_id).conductor == conductor_ctx.name
    assert client.get("/v1/nodes/n1").json["reservation"] == conductor_ctx.name


def test_a_timer_that_fires_while_the_claim_is_given_back_is_set_again(
    client, node, conductor_ctx, settings, monkeypatch
) -> None:
    request_id = _power_on(client)
    conductor_ctx.queue.queue.empty()
    monkeypatch.setattr(runner, "DATABASE_RETRY_DELAY", 0)
    other = build_context(settings)  # a second worker (conductor) of the deployment
    other.name = conductors.register(other).name
    skipped = []

    def other_worker_pumps_the_timer(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        # While this conductor gives its claim back, the timer it set falls
        # due: the other worker pops it and (the claim not yet given back)
        # skips the step.
        if not re.search(UNCLAIM, statement) or skipped:
            return
        assert other.queue.pump_timers() == 1
        runner.run_step(other, request_id)
        skipped.append(_request(other, request_id).conductor)
        other.queue.queue.empty()

    event.listen(conductor_ctx.db.engine, "before_cursor_execute", other_worker_pumps_the_timer)
    try:
        # The step's recording keeps failing: the request goes back to sleep.
        with Blip(conductor_ctx.db.engine, STEP_FENCE, times=None) as blip:
            runner.run_step(conductor_ctx, request_id)
    finally:
        event.remove(conductor_ctx.db.engine, "before_cursor_execute", other_worker_pumps_the_timer)
        other.close()
    assert blip.fired >= database.RETRY_ATTEMPTS
    assert skipped == [conductor_ctx.name]  # the other worker found the claim still ours
    request = _request(conductor_ctx, request_id)
    assert request.state == "running" and request.conductor is None
    assert conductor_ctx.redis.zscore(conductor_ctx.queue.timers_key, request_id) is not None  # armed again
    drain(conductor_ctx)
    assert _request(conductor_ctx, request_id).state == "succeeded"


def test_a_job_timeout_whose_failing_breaks_ends_the_step_once(client, node, conductor_ctx, monkeypatch) -> None:
    request_id = _power_on(client)
    conductor_ctx.queue.queue.empty()
    calls = []

    def hung(_task):  # type: ignore[no-untyped-def]
        calls.append(1)
        raise JobTimeoutException("Task exceeded maximum timeout value")  # RQ's alarm, mid-step

    monkeypatch.setitem(runner._WORKFLOWS, RequestKind.POWER, (hung, runner._WORKFLOWS[RequestKind.POWER][1]))
    with Blip(conductor_ctx.db.engine, FAIL_FENCE) as blip, pytest.raises(JobTimeoutException):
        runner.run_step(conductor_ctx, request_id)
    assert blip.fired == 1
    assert len(calls) == 1  # the hung step is not run again without RQ's alarm
    request = _request(conductor_ctx, request_id)
    assert request.state == "failed" and "job timeout" in request.error
    assert client.get("/v1/nodes/n1").json["reservation"] is None


def test_a_read_that_breaks_is_answered_after_a_retry(client, node, ctx) -> None:
    with Blip(ctx.db.engine, r"FROM nodes\b") as blip:
        response = client.get("/v1/nodes/n1/states")
    assert blip.fired == 1
    assert response.status_code == 200, response.json


def test_an_authentication_that_breaks_is_retried(anonymous, node, ctx) -> None:
    secret = make_token(ctx, "reader")  # not cached yet: looked up in the database
    with Blip(ctx.db.engine, r"FROM api_tokens\b") as blip:
        response = anonymous.get("/v1/nodes/n1/states", headers=bearer(secret))
    assert blip.fired == 1
    assert response.status_code == 200, response.json


def test_a_submission_whose_transaction_breaks_is_accepted_once(client, node, ctx) -> None:
    with Blip(ctx.db.engine, r"^INSERT INTO requests\b") as blip:
        request_id = _power_on(client)
    assert blip.fired == 1
    listed = client.get("/v1/requests", query_string={"node": "n1"}).json["requests"]
    assert [r["id"] for r in listed] == [request_id]


def test_the_api_answers_503_database_unavailable_when_the_database_stays_away(client, node, ctx) -> None:
    with Blip(ctx.db.engine, r"FROM nodes\b", times=None) as blip:
        response = client.get("/v1/nodes/n1/states")
    assert blip.fired == database.RETRY_ATTEMPTS
    assert response.status_code == 503
    assert response.json["code"] == "database_unavailable"
    assert int(response.headers["Retry-After"]) > 0


def test_permanent_database_errors_are_not_retried(client, node, ctx) -> None:
    def broken(*_args: Any) -> None:
        raise sqlite3.OperationalError("no such table: nodes")

    event.listen(ctx.db.engine, "before_cursor_execute", broken)
    try:
        response = client.get("/v1/nodes/n1/states")
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", broken)
    assert response.status_code == 500
    assert response.json["code"] == "internal_error"


@pytest.mark.parametrize(
    ("orig", "transient"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("no such table: nodes"), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed: nodes.name"), False),
        (psycopg.errors.SerializationFailure(), True),
        (psycopg.errors.DeadlockDetected(), True),
        (psycopg.errors.AdminShutdown(), True),
        (psycopg.errors.ConnectionFailure(), True),
        (psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"), True),
        (psycopg.errors.UniqueViolation(), False),
        (psycopg.errors.QueryCanceled(), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_transient_errors_are_told_apart(orig: Exception, transient: bool) -> None:
    base = sqlite3.Error if isinstance(orig, sqlite3.Error) else psycopg.Error
    error = sa.exc.DBAPIError.instance("SELECT 1", {}, orig, base)
    assert database.is_transient(error) is transient


def test_a_step_that_escapes_its_runner_gets_its_timer_back_and_the_batch_goes_on(
    client, node, conductor_ctx, monkeypatch
) -> None:
    first = _power_on(client)
    assert client.post("/v1/nodes", json={"name": "n2", "driver": "fake"}).status_code == 201
    second = client.put("/v1/nodes/n2/states/power", json={"target": "power on"}).json["id"]
    conductor_ctx.queue.queue.empty()
    real_run_step = runner.run_step

    def crash_first(ctx, request_id):  # type: ignore[no-untyped-def]
        if request_id == first:
            raise RuntimeError("a bug outside every handled way out")
        real_run_step(ctx, request_id)

    monkeypatch.setattr(runner, "run_step", crash_first)
    monkeypatch.setattr(jobs, "_context", conductor_ctx)
    jobs.run_steps([first, second])
    monkeypatch.undo()
    assert conductor_ctx.redis.zscore(conductor_ctx.queue.timers_key, first) is not None
    assert _request(conductor_ctx, second).state != "queued"  # the batch went on
    drain(conductor_ctx)
    assert {_request(conductor_ctx, r).state for r in (first, second)} == {"succeeded"}


def test_timers_popped_but_not_enqueued_are_given_back(ctx, monkeypatch) -> None:
    import redis

    queue = ctx.queue
    queue.schedule("req-a", 0)
    queue.schedule("req-b", 0)

    def unreachable(_ids):  # type: ignore[no-untyped-def]
        raise redis.ConnectionError("Redis went away between the pop and the enqueue")

    monkeypatch.setattr(queue, "enqueue_batch", unreachable)
    with pytest.raises(redis.ConnectionError):
        queue.pump_timers()
    assert ctx.redis.zscore(queue.timers_key, "req-a") is not None
    assert ctx.redis.zscore(queue.timers_key, "req-b") is not None
    assert ctx.redis.zscore(queue.pumped_key, "req-a") is None  # the sweep is not kept away
