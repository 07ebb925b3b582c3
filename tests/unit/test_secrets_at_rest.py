"""Secrets at rest (issue 13, item 4): BMC passwords and webhook signing secrets
never stored in plain text, a key rotation, the migration of plain rows, and
private files.

"Stored" is read the way an attacker with a copy of the database would: the
bytes of the SQLite file and its WAL (``strings conductor.sqlite``), or, on
PostgreSQL, the text of the rows.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.fernet import Fernet, InvalidToken

from conductor import database, datadir, sealing, secretbox
from conductor.callbacks import secrets as signing_secrets
from conductor.cli import main
from conductor.context import Context
from conductor.drivers import ipmi
from conductor.exceptions import SecretUnreadable
from conductor.models import CallbackSecret, Node, utcnow
from conductor.service import nodes as node_service
from conductor.settings import Settings

PASSWORD = "Xq7-create-pw"
NEW_PASSWORD = "Zk4-update-pw"


def stored_text(ctx: Context) -> str:
    """Everything the database holds, as an attacker reading it would see it."""
    url = ctx.db.engine.url
    if url.get_backend_name() == "sqlite":
        path = Path(str(url.database))
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        return "".join(f.read_bytes().decode("latin-1") for f in files if f.exists())
    with ctx.db.engine.connect() as conn:
        return "\n".join(conn.exec_driver_sql(
            "SELECT row_to_json(n)::text FROM nodes n "
            "UNION ALL SELECT row_to_json(c)::text FROM callback_secrets c"
        ).scalars())


def make_ipmi_node(client, name: str = "bmc1", password: str = PASSWORD) -> dict:  # type: ignore[no-untyped-def]
    response = client.post("/v1/nodes", json={"name": name, "driver": "ipmi", "driver_info": {
        "ipmi_address": "127.0.0.1", "ipmi_port": 6230, "ipmi_username": "admin", "ipmi_password": password}})
    assert response.status_code == 201, response.json
    return response.json  # type: ignore[no-any-return]


def stored_info(ctx: Context, name: str) -> dict:  # type: ignore[type-arg]
    with ctx.db.session() as session:
        return dict(node_service.find(session, name).driver_info)


def cli(settings: Settings, *args: str):  # type: ignore[no-untyped-def]
    env = {"CONDUCTOR_DATA_DIR": str(settings.data_dir), "DATABASE_URL": settings.sqlalchemy_url,
           "CONDUCTOR_SECRET_KEY": settings.secret_key, "CONDUCTOR_CONFIG": None}
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_bmc_passwords_are_not_stored_in_plain_text(client, ctx) -> None:
    node = make_ipmi_node(client)
    assert node["driver_info"]["ipmi_password"] == "******"
    assert PASSWORD not in stored_text(ctx)
    patched = client.patch("/v1/nodes/bmc1", json={"driver_info": {"ipmi_password": NEW_PASSWORD}})
    assert patched.status_code == 200 and patched.json["driver_info"]["ipmi_password"] == "******"
    # Another change keeps the sealed password (sent back masked, or not at all).
    assert client.patch("/v1/nodes/bmc1", json={"driver_info": {"ipmi_port": 6231, "ipmi_password": "******"}}
                        ).status_code == 200
    text = stored_text(ctx)
    assert PASSWORD not in text and NEW_PASSWORD not in text
    for body in (client.get("/v1/nodes/bmc1").get_data(as_text=True), client.get("/v1/nodes").get_data(as_text=True)):
        assert NEW_PASSWORD not in body and secretbox.PREFIX not in body
    info = stored_info(ctx, "bmc1")
    assert info["ipmi_password"].startswith(secretbox.PREFIX) and info["ipmi_port"] == 6231
    # The driver gets the password itself, only where it logs in.
    creds = ipmi.credentials(secretbox.for_settings(ctx.settings).open_info(info))
    assert creds.password == NEW_PASSWORD and NEW_PASSWORD not in repr(creds)


def test_a_secret_that_looks_sealed_is_refused(client) -> None:
    response = client.post("/v1/nodes", json={"name": "x", "driver": "ipmi", "driver_info": {
        "ipmi_address": "127.0.0.1", "ipmi_password": "fernet:gAAAA"}})
    assert response.status_code == 400
    assert response.json["errors"] == {"driver_info.ipmi_password": "must not start with fernet:"}


def test_webhook_signing_secrets_are_not_stored_in_plain_text(client, ctx) -> None:
    created = client.post("/v1/tokens", json={"role": "operator", "name": "hooks"})
    assert created.status_code == 201, created.json
    signing = created.json["signing_secret"]
    subscription = client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
    assert subscription.status_code == 201, subscription.json
    rotated = client.post("/v1/callbacks/secret/rotate").json["secret"]
    text = stored_text(ctx)
    for secret in (signing, rotated):
        assert secret.startswith("whsec_") and secret not in text
    with ctx.db.session() as session:
        assert signing_secrets.signing_secrets(session, created.json["id"]) == [signing]
        admin = next(t["id"] for t in client.get("/v1/tokens").json["tokens"] if t["name"] == "tests")
        assert signing_secrets.signing_secrets(session, admin) == [rotated]
        # The deployment's own secret, created on first need, is sealed too.
        deployment = signing_secrets.signing_secrets(session, None)
    assert deployment and all(s not in stored_text(ctx) for s in deployment)
    # The API still shows the same fingerprint (computed from the opened secret).
    assert client.get("/v1/callbacks/secret").json["fingerprint"] == signing_secrets.signing.fingerprint(rotated)


def test_secrets_never_reach_the_logs(client, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    make_ipmi_node(client)
    client.patch("/v1/nodes/bmc1", json={"driver_info": {"ipmi_password": NEW_PASSWORD}})
    # An invalid password is refused without being echoed.
    too_long = "L0ng-" + "p" * 30
    refused = client.patch("/v1/nodes/bmc1", json={"driver_info": {"ipmi_password": too_long}})
    assert refused.status_code == 400 and too_long not in refused.get_data(as_text=True)
    signing = client.post("/v1/tokens", json={"role": "operator"}).json["signing_secret"]
    client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
    rotated = client.post("/v1/callbacks/secret/rotate").json["secret"]
    for secret in (PASSWORD, NEW_PASSWORD, too_long, signing, rotated):
        assert secret not in caplog.text


def _rows(ctx: Context) -> tuple[str, list[str]]:
    with ctx.db.session() as session:
        password = session.scalars(sa.select(Node)).one().driver_info["ipmi_password"]
        signing = [v for row in session.scalars(sa.select(CallbackSecret))
                   for v in (row.secret, row.previous_secret) if v]
    return password, signing


def test_rotate_key_reencrypts_every_row_and_drops_the_old_key(client, ctx, settings) -> None:
    make_ipmi_node(client)
    signing = client.post("/v1/tokens", json={"role": "operator"}).json["signing_secret"]
    client.post("/v1/callbacks/secret/rotate")
    client.post("/v1/callbacks/secret/rotate")  # a previous secret too
    old_password, old_signing = _rows(ctx)
    old_keys = secretbox.parse_keys(settings.secret_key_file.read_text())
    assert len(old_keys) == 1 and len(old_signing) >= 3
    # Another process, which read the key file before the rotation.
    other = secretbox.SecretBox(key_file=secretbox.KeyFile(settings.secret_key_file))
    assert other.open(old_password) == PASSWORD

    result = cli(settings, "secrets", "rotate-key")
    assert "dropped 1 old key" in result.output

    new_keys = secretbox.parse_keys(settings.secret_key_file.read_text())
    assert len(new_keys) == 1 and new_keys != old_keys
    assert stat.S_IMODE(settings.secret_key_file.stat().st_mode) == 0o600
    new_password, new_signing = _rows(ctx)
    text = stored_text(ctx)
    for old in [old_password, *old_signing]:
        assert old not in text
    old_fernet = Fernet(old_keys[0].encode())
    current = Fernet(new_keys[0].encode())
    for value in [new_password, *new_signing]:
        assert secretbox.is_sealed(value)
        current.decrypt(value[len(secretbox.PREFIX):].encode())
        with pytest.raises(InvalidToken):
            old_fernet.decrypt(value[len(secretbox.PREFIX):].encode())
    # A running process reads the rotated key file by itself, for opening and sealing.
    assert other.open(new_password) == PASSWORD
    assert current.decrypt(other.seal("x")[len(secretbox.PREFIX):].encode()) == b"x"
    with ctx.db.session() as session:
        assert signing_secrets.signing_secrets(session, client.get("/v1/tokens").json["tokens"][-1]["id"]) == [signing]


def test_a_rotation_interrupted_after_the_new_key_is_written_loses_nothing(client, ctx, settings) -> None:
    make_ipmi_node(client)
    key_file = secretbox.KeyFile(settings.secret_key_file)
    old = key_file.read(create=False)
    # The crash point: the new key is current, no row re-encrypted yet.
    key_file.write([secretbox.new_key(), *old])
    restarted = secretbox.SecretBox(key_file=secretbox.KeyFile(settings.secret_key_file), create=False)
    password, _signing = _rows(ctx)
    assert restarted.open(password) == PASSWORD
    # Writes meanwhile use the new key, and still open.
    client.patch("/v1/nodes/bmc1", json={"driver_info": {"ipmi_password": NEW_PASSWORD}})
    assert restarted.open(_rows(ctx)[0]) == NEW_PASSWORD
    # Running the rotation again finishes the job.
    cli(settings, "secrets", "rotate-key")
    final = secretbox.SecretBox(key_file=secretbox.KeyFile(settings.secret_key_file), create=False)
    assert len(final.keys()) == 1 and final.open(_rows(ctx)[0]) == NEW_PASSWORD


def test_keys_from_the_settings_form_a_ring(client, ctx, settings) -> None:
    make_ipmi_node(client)
    sealed = _rows(ctx)[0]
    lost = secretbox.SecretBox(keys=[secretbox.new_key()])
    with pytest.raises(SecretUnreadable):
        lost.open(sealed)
    old = secretbox.parse_keys(settings.secret_key_file.read_text())[0]
    ring = settings.replace(secret_key=f"{secretbox.new_key()},{old}")
    box = secretbox.for_settings(ring)
    assert box.open(sealed) == PASSWORD
    assert not box.current_key_seals(sealed)
    cli(ring, "secrets", "rotate-key")
    assert box.current_key_seals(_rows(ctx)[0]) and box.open(_rows(ctx)[0]) == PASSWORD


def _plain_database(tmp_path: Path) -> str:
    """A database at revision 0005 (before sealing) holding plain secrets."""
    url = f"sqlite:///{tmp_path / 'conductor.sqlite'}"
    database.upgrade(url, "0005")
    engine = database.make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO nodes (uuid, name, driver, driver_info, driver_internal_info, properties, provision_state, "
            "maintenance, power_sync_failures, created_at, updated_at) VALUES ('00000000-0000-0000-0000-000000000001', "
            "'old', 'ipmi', :info, '{}', '{}', 'enroll', 0, 0, "
            "'2026-12-01 00:00:00.000000', '2026-12-01 00:00:00.000000')"
        ), {"info": json.dumps({"ipmi_address": "127.0.0.1", "ipmi_password": PASSWORD})})
        conn.execute(sa.text(
            "INSERT INTO callback_secrets (client, secret, previous_secret, created_at, rotated_at) "
            "VALUES ('', 'whsec_plainsigningsecret', NULL, '2026-12-01 00:00:00.000000', '2026-12-01 00:00:00.000000')"
        ))
    engine.dispose()
    return url


def _plain_settings(tmp_path: Path, url: str) -> Settings:
    return Settings(data_dir=tmp_path, database_url=url)


def test_the_migration_seals_plain_rows(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CONDUCTOR_SECRET_KEY", raising=False)
    url = _plain_database(tmp_path)
    settings = _plain_settings(tmp_path, url)
    datadir.ensure_data_dir(settings)  # what `conductor up` does before migrating: the key
    database.upgrade(url)
    db = database.Database.from_settings(settings)
    try:
        with db.session() as session:
            info = session.scalars(sa.select(Node)).one().driver_info
            row = session.get(CallbackSecret, "")
            assert row is not None and secretbox.is_sealed(row.secret) and secretbox.is_sealed(info["ipmi_password"])
            assert secretbox.of(session).open(info["ipmi_password"]) == PASSWORD
            assert signing_secrets.signing_secrets(session, None) == ["whsec_plainsigningsecret"]
    finally:
        db.dispose()


def test_a_plain_row_left_behind_is_read_and_sealed_later(tmp_path, monkeypatch) -> None:
    """No key found at migration time: the plain values still work, and get sealed."""
    monkeypatch.delenv("CONDUCTOR_SECRET_KEY", raising=False)
    url = _plain_database(tmp_path)
    database.upgrade(url)  # no key file yet: nothing sealed
    settings = _plain_settings(tmp_path, url)
    db = database.Database.from_settings(settings)
    try:
        with db.session() as session:
            info = session.scalars(sa.select(Node)).one().driver_info
            assert info["ipmi_password"] == PASSWORD
            assert ipmi.credentials(secretbox.of(session).open_info(info)).password == PASSWORD
            assert signing_secrets.signing_secrets(session, None) == ["whsec_plainsigningsecret"]
            # The next write of driver_info seals what it keeps.
            node_service.patch(session, "old", {"driver_info": {"ipmi_port": 6231}})
            assert secretbox.is_sealed(session.scalars(sa.select(Node)).one().driver_info["ipmi_password"])
    finally:
        db.dispose()
    # `conductor secrets seal` seals the rest and leaves no plain copy in the file.
    cli(settings, "secrets", "seal")
    text = Path(tmp_path / "conductor.sqlite").read_bytes().decode("latin-1")
    assert "whsec_plainsigningsecret" not in text and PASSWORD not in text


def test_the_data_dir_database_and_key_are_private(tmp_path) -> None:
    old_umask = os.umask(0o022)
    try:
        settings = Settings(data_dir=tmp_path / "new" / "data")
        datadir.ensure_data_dir(settings)
        database.upgrade(settings.sqlalchemy_url)
        db = database.Database.from_settings(settings)
        with db.session() as session:  # a write: SQLite creates its WAL and SHM files
            node_service.create(session, {"name": "n", "driver": "fake"})
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in settings.data_dir.iterdir()}
        db.dispose()
        # `conductor db upgrade` on a new data dir makes it private too.
        bare = tmp_path / "bare" / "conductor.sqlite"
        database.upgrade(f"sqlite:///{bare}")
        # An older data dir, made with the umask, is tightened.
        old = Settings(data_dir=tmp_path / "old")
        old.data_dir.mkdir(mode=0o755)
        (old.data_dir / "conductor.sqlite").touch(mode=0o644)
        datadir.ensure_data_dir(old)
        database.make_engine(old.sqlalchemy_url).dispose()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    assert files["secret.key"] == 0o600 and files["conductor.sqlite"] == 0o600
    assert files.get("conductor.sqlite-wal") == 0o600 and files.get("conductor.sqlite-shm") == 0o600
    assert stat.S_IMODE(bare.parent.stat().st_mode) == 0o700 and stat.S_IMODE(bare.stat().st_mode) == 0o600
    assert stat.S_IMODE(old.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((old.data_dir / "conductor.sqlite").stat().st_mode) == 0o600


def test_a_lost_key_fails_clearly_and_setting_the_secrets_again_recovers(client, ctx, settings) -> None:
    make_ipmi_node(client)
    client.post("/v1/callbacks/secret/rotate")
    secretbox.KeyFile(settings.secret_key_file).write([secretbox.new_key()])  # the old key is gone
    with ctx.db.session() as session:
        info = node_service.find(session, "bmc1").driver_info
    # The driver refuses before talking to the BMC, with an error for the operator.
    with pytest.raises(SecretUnreadable, match="cannot be decrypted"):
        ipmi.call(ctx, info, lambda bmc: bmc.credentials, command=False)
    client.patch("/v1/nodes/bmc1", json={"driver_info": {"ipmi_password": NEW_PASSWORD}})
    with ctx.db.session() as session:
        info = node_service.find(session, "bmc1").driver_info
    assert ipmi.call(ctx, info, lambda bmc: bmc.credentials, command=False).password == NEW_PASSWORD
    # A signing secret: rotating gives a new one, and the unreadable one stops signing.
    rotated = client.post("/v1/callbacks/secret/rotate")
    assert rotated.status_code == 201 and rotated.json["previous_fingerprint"] is None
    admin = next(t["id"] for t in client.get("/v1/tokens").json["tokens"] if t["name"] == "tests")
    with ctx.db.session() as session:
        assert signing_secrets.signing_secrets(session, admin) == [rotated.json["secret"]]


class NodeWrittenMeanwhile:
    """A step's write to the node (a new ``updated_at``) lands between a rotation
    batch's read and its update, ``times`` times (None: always)."""

    def __init__(self, engine: sa.Engine, times: int | None) -> None:
        self.engine, self.left = engine, times

    def __enter__(self) -> NodeWrittenMeanwhile:
        sa.event.listen(self.engine, "before_cursor_execute", self._hook)
        return self

    def __exit__(self, *_exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._hook)

    def _hook(self, conn: sa.Connection, _cursor: object, statement: str, *_args: object) -> None:
        if not statement.startswith("UPDATE nodes SET driver_info") or self.left == 0:
            return
        if self.left is not None:
            self.left -= 1
        conn.execute(sa.update(Node).values(updated_at=utcnow()))


def _rotate(ctx: Context, settings: Settings) -> secretbox.SecretBox:
    box = secretbox.SecretBox(key_file=secretbox.KeyFile(settings.secret_key_file), create=False)
    sealing.rotate_key_file(sealing.engine_batches(ctx.db.engine), box)
    return secretbox.SecretBox(key_file=secretbox.KeyFile(settings.secret_key_file), create=False)


def test_a_rotation_racing_a_node_write_keeps_every_key_a_row_needs(client, ctx, settings) -> None:
    make_ipmi_node(client)
    # Both passes lose the race for the node (each before the old key is dropped).
    with NodeWrittenMeanwhile(ctx.db.engine, times=2):
        final = _rotate(ctx, settings)
    assert len(final.keys()) == 1
    assert final.open(_rows(ctx)[0]) == PASSWORD


def test_a_rotation_that_never_catches_a_node_keeps_the_old_key(client, ctx, settings) -> None:
    make_ipmi_node(client)
    with NodeWrittenMeanwhile(ctx.db.engine, times=None), pytest.raises(RuntimeError, match="old keys are kept"):
        _rotate(ctx, settings)
    kept = secretbox.SecretBox(key_file=secretbox.KeyFile(settings.secret_key_file), create=False)
    assert kept.open(_rows(ctx)[0]) == PASSWORD
    # Once the node is left alone, the rotation finishes.
    assert len(_rotate(ctx, settings).keys()) == 1


def test_the_migration_leaves_no_plain_copy_whatever_sqlite_s_build(tmp_path, monkeypatch) -> None:
    # Debian builds SQLite with SECURE_DELETE; others leave deleted content
    # in the file: every connection here runs without it.
    def no_secure_delete(dbapi_connection: object, _record: object) -> None:
        dbapi_connection.execute("PRAGMA secure_delete = OFF")  # type: ignore[attr-defined]

    monkeypatch.delenv("CONDUCTOR_SECRET_KEY", raising=False)
    sa.event.listen(sa.Engine, "connect", no_secure_delete)
    try:
        url = _plain_database(tmp_path)
        datadir.ensure_data_dir(_plain_settings(tmp_path, url))
        database.upgrade(url)
    finally:
        sa.event.remove(sa.Engine, "connect", no_secure_delete)
    path = tmp_path / "conductor.sqlite"
    text = "".join(f.read_bytes().decode("latin-1") for f in (path, path.with_name(path.name + "-wal")) if f.exists())
    assert "whsec_plainsigningsecret" not in text and PASSWORD not in text
