"""``conductor image ...``: images registered by name.

``image add`` runs on the conductor host against its data directory (like
``conductor secrets``): it copies the file into the image directory, which
is where the API serves it from, and writes the database directly; a
multi-GB upload through the API would hold an API worker for minutes for
nothing the host cannot do locally.  ``list``, ``show`` and ``delete`` are
API clients like every other command.
"""

from __future__ import annotations

from pathlib import Path

import click

from conductor.cli.base import Obj, pass_obj
from conductor.cli.server import _data_dir, _settings

# Imports inside functions: most commands are thin API clients, so each command
# imports the server side it needs (settings, database, Flask, RQ, workers) when
# it runs; `conductor --help` and the client commands stay quick to start.

IMAGE_KEYS = ["name", "sha256", "size", "compression", "image_size", "source", "created_at"]
LIST_COLUMNS = ["name", "compression", "size", "image_size", "sha256", "created_at"]


@click.group()
def image() -> None:
    """Images: register a file by name, list, show, delete."""


@image.command("add")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--checksum", help="The file's expected SHA-256 (64 hex digits, sha256: prefix allowed).")
@_data_dir
@pass_obj
def add(obj: Obj, name: str, file: Path, checksum: str | None, data_dir: Path | None) -> None:
    """Copy FILE into the image directory as image NAME (on the conductor host).

    Computes its SHA-256, compression (gzip, xz, zstd or none, from its
    first bytes) and decompressed size; with --checksum, refuses a file
    that does not match.
    """
    from conductor import database
    from conductor.api import schemas
    from conductor.database import Database
    from conductor.exceptions import ConductorError
    from conductor.images import registry

    settings = _settings(data_dir=data_dir)
    if database.current_revision(settings.sqlalchemy_url) != database.head_revision():
        raise click.ClickException("The schema is not up to date: run `conductor db upgrade` first.")
    db = Database.from_settings(settings)
    try:
        with db.session() as session:
            added = schemas.Image().dump(registry.add(session, settings.images_path, name, file, checksum))
    except ConductorError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        db.dispose()
    obj.out.item(added, IMAGE_KEYS)
    if added["compression"] == "zstd":
        click.echo("note: the agent ramdisk decompresses gzip and xz; deploys of this zstd image will fail "
                   "until it can (decompress it with `zstd -d`, or recompress with xz).", err=True)


@image.command("list")
@pass_obj
def list_images(obj: Obj) -> None:
    """List registered images."""
    obj.out.table(obj.client.every("/v1/images", "images", {}), LIST_COLUMNS)


@image.command("show")
@click.argument("name")
@pass_obj
def show(obj: Obj, name: str) -> None:
    """Show an image."""
    obj.out.item(obj.client.call("GET", f"/v1/images/{name}"), IMAGE_KEYS)


@image.command("delete")
@click.argument("name")
@pass_obj
def delete(obj: Obj, name: str) -> None:
    """Unregister an image and remove its file (refused while a request deploys it)."""
    obj.client.call("DELETE", f"/v1/images/{name}")
    click.echo(f"Deleted image {name}.", err=obj.out.machine)
