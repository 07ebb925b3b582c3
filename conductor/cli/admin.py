"""``conductor token ...``, ``conductor throttle ...`` and ``conductor secrets ...``: the admin's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from conductor.cli.base import Obj, pass_obj
from conductor.cli.server import _data_dir, _settings

# Imports inside functions: most commands are thin API clients, so each command
# imports the server side it needs (settings, database, Flask, RQ, workers) when
# it runs; `conductor --help` and the client commands stay quick to start.

TOKEN_COLUMNS = ["id", "name", "role", "created_at", "revoked_at"]
THROTTLE_KEYS = [
    "write_rate", "write_burst", "client_write_rate", "client_write_burst", "read_rate",
    "read_burst", "max_queue_depth", "bmc_min_interval", "worker_concurrency",
]


@click.group()
def token() -> None:
    """API tokens: create, list, revoke (admin)."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["reader", "operator", "admin"]))
@click.option("--name", help="What the token is for (shown in `token list`).")
@click.option("--direct", is_flag=True,
              help="Write into the database the settings name instead of calling the API "
                   "(to make the first admin token of a multi-host deployment).")
@pass_obj
def create(obj: Obj, role: str, name: str | None, direct: bool) -> None:
    """Create a token; its secret is printed once and never shown again."""
    if direct:
        created = _create_direct(role, name)
    else:
        created = obj.client.call("POST", "/v1/tokens", json={"role": role, "name": name})
    if obj.out.machine:
        obj.out.item(created)
        return
    click.echo(created["token"])
    click.echo(f"Token {created['id']} ({created['role']}); the secret above is shown only now.", err=True)
    click.echo(f"Callback signing secret: {created['signing_secret']} (shown only now).", err=True)


def _create_direct(role: str, name: str | None) -> dict[str, Any]:
    from conductor.api import schemas
    from conductor.auth import tokens
    from conductor.database import Database
    from conductor.exceptions import InvalidInput
    from conductor.settings import load

    try:
        settings = load()
        db = Database.from_settings(settings)
        try:
            with db.session() as session:
                issued = tokens.issue(session, role, name)
                session.commit()
                # What POST /v1/tokens answers.
                created: dict[str, Any] = schemas.TokenCreated().dump(issued)
                return created
        finally:
            db.dispose()
    except InvalidInput as exc:
        raise click.ClickException(exc.message) from None


@token.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
@pass_obj
def list_tokens(obj: Obj, include_revoked: bool) -> None:
    """List tokens (never their secrets)."""
    params = {"all": "true"} if include_revoked else {}
    body = obj.client.call("GET", "/v1/tokens", params=params)
    obj.out.table(body["tokens"], TOKEN_COLUMNS, raw=body["tokens"])


@token.command("revoke")
@click.argument("token_id", metavar="TOKEN_ID")
@pass_obj
def revoke(obj: Obj, token_id: str) -> None:
    """Revoke a token; refused everywhere within a second."""
    obj.out.item(obj.client.call("DELETE", f"/v1/tokens/{token_id}"), TOKEN_COLUMNS)


@click.group()
def throttle() -> None:
    """Rate limits, queue depth, BMC pacing, worker concurrency (admin)."""


@throttle.command("show")
@pass_obj
def show(obj: Obj) -> None:
    """Show the throttle settings in force."""
    obj.out.item(obj.client.call("GET", "/v1/throttle"), THROTTLE_KEYS)


@throttle.command("set")
@click.argument("pairs", nargs=-1, required=True, metavar="KNOB=VALUE...")
@pass_obj
def set_knobs(obj: Obj, pairs: tuple[str, ...]) -> None:
    """Change knobs, e.g. `throttle set write_rate=20 max_queue_depth=500`; 0 means no limit."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        knob, sep, raw = pair.partition("=")
        if not sep or not knob:
            raise click.BadParameter(f"expected KNOB=VALUE, got {pair!r}", param_hint="KNOB=VALUE")
        try:
            changes[knob] = json.loads(raw)
        except ValueError:
            changes[knob] = raw
    obj.out.item(obj.client.call("PATCH", "/v1/throttle", json=changes), THROTTLE_KEYS)


@click.group()
def secrets() -> None:
    """Secrets at rest (BMC passwords, signing secrets): run on a server host, with its settings."""


def _sealing_target(data_dir: Path | None) -> tuple[Any, Any, Any]:
    """The settings, an engine and the secret box of this host; refuses an old schema."""
    from conductor import database, secretbox
    from conductor.exceptions import NoSecretKey

    settings = _settings(data_dir=data_dir)
    url = settings.sqlalchemy_url
    if database.current_revision(url) != database.head_revision():
        raise click.ClickException("The schema is not up to date: run `conductor db upgrade` first.")
    try:
        box = secretbox.for_settings(settings)
        box.keys()
    except NoSecretKey as exc:
        raise click.ClickException(exc.message) from None
    return settings, database.make_engine(url), box


@secrets.command("rotate-key")
@_data_dir
def rotate_key(data_dir: Path | None) -> None:
    """Generate a new key, re-encrypt every secret with it, then drop the old key.

    Safe to run while the service runs, and to run again after a crash: the
    old key stays in the key file until no row needs it.  With keys from the
    setting secret_key, re-encrypts under its first key (see the README).
    """
    from conductor import sealing

    settings, engine, box = _sealing_target(data_dir)
    try:
        connect = sealing.engine_batches(engine)
        if settings.secret_key:
            changed = sealing.reseal_until_current(connect, box)
            sealing.scrub(engine)
            click.echo(f"Re-encrypted {changed} rows under the first key of secret_key; "
                       "the other keys may now be removed from secret_key on every host.")
            return
        changed, dropped = sealing.rotate_key_file(connect, box)
        sealing.scrub(engine)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"New key in {settings.secret_key_file}; re-encrypted {changed} rows; dropped {dropped} old key(s).")


@secrets.command("seal")
@_data_dir
def seal(data_dir: Path | None) -> None:
    """Seal secrets still stored in plain text (left by a migration that found no key).

    On SQLite the file is then rebuilt (VACUUM) so that no plain copy lingers.
    """
    from conductor import sealing

    _unused, engine, box = _sealing_target(data_dir)
    try:
        changed = sealing.seal_rows(sealing.engine_batches(engine), box, plain_only=True)
        sealing.scrub(engine)
    finally:
        engine.dispose()
    click.echo(f"Sealed the secrets of {changed} rows.")


@secrets.command("new-key")
def new_key() -> None:
    """Print a new key, for the setting secret_key (CONDUCTOR_SECRET_KEY) of a multi-host deployment."""
    from conductor import secretbox

    click.echo(secretbox.new_key())
