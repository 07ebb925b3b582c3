"""Registering images: a private copy, its checksum and compression; refusals leave nothing."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from conductor.api import schemas
from conductor.context import Context
from conductor.exceptions import ImageInUse, ImageNameInUse, ImageNotFound, InvalidInput
from conductor.images import localsums, registry
from conductor.models import Node, Request


def test_add_copies_and_describes_the_file(ctx: Context, tmp_path: Path) -> None:
    raw = os.urandom(50_000) + b"\x00" * 1_000_000
    source = tmp_path / "disk.img.gz"
    source.write_bytes(gzip.compress(raw))
    images_dir = tmp_path / "images"
    with ctx.db.session() as session:
        image = registry.add(session, images_dir, "debian-12", source,
                             checksum="sha256:" + hashlib.sha256(source.read_bytes()).hexdigest().upper())
        shown = schemas.Image().dump(image)
    assert shown["compression"] == "gzip" and shown["image_size"] == len(raw)
    assert shown["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    stored = images_dir / image.file_name
    assert stored.read_bytes() == source.read_bytes() and stored.stat().st_mode & 0o777 == 0o600
    # The copy is the conductor's own: changing the original changes nothing.
    source.write_bytes(b"something else")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == shown["sha256"]
    assert sorted(p.name for p in images_dir.iterdir()) == [image.file_name]


@pytest.mark.parametrize(("name", "content", "checksum", "error"), [
    ("bad name", b"x" * 10, None, "Invalid image name"),
    ("ok", b"", None, "is empty"),
    ("ok", b"x" * 10, "0" * 64, "Checksum mismatch"),
    ("ok", b"x" * 10, "nothex", "SHA-256"),
    ("ok", gzip.compress(b"x" * 100_000)[:-20], None, "damaged"),
])
def test_refusals_register_and_leave_nothing(ctx: Context, tmp_path: Path, name, content, checksum, error) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "f"
    source.write_bytes(content)
    with ctx.db.session() as session, pytest.raises(InvalidInput, match=error):
        registry.add(session, tmp_path / "images", name, source, checksum)
    with ctx.db.session() as session:
        assert registry.list_images(session, limit=10) == []
    assert not (tmp_path / "images").exists() or list((tmp_path / "images").iterdir()) == []


def test_names_are_unique_and_deletion_waits_for_deploys(ctx: Context, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"image")
    images_dir = tmp_path / "images"
    with ctx.db.session() as session:
        image = registry.add(session, images_dir, "img", source)
        with pytest.raises(ImageNameInUse):
            registry.add(session, images_dir, "img", source)
        node = Node(uuid="00000000-0000-0000-0000-000000000001", driver="fake", provision_state="wait call-back")
        session.add(node)
        session.flush()
        session.add(Request(node_id=node.id, node_uuid=node.uuid, kind="provision", target="active",
                            state="waiting", params={"image_source": "img"}))
        session.commit()
        with pytest.raises(ImageInUse) as busy:
            registry.delete(session, images_dir, "img")
        assert busy.value.details["request_ids"]
        session.execute(Request.__table__.update().values(state="succeeded"))
        session.commit()
        registry.delete(session, images_dir, "img")
        with pytest.raises(ImageNotFound):
            registry.get(session, "img")
    assert not (images_dir / image.file_name).exists()


def test_local_checksums_are_remembered_per_version_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"one")
    first = localsums.compute(tmp_path / "sums", path)
    assert first.sha256 == hashlib.sha256(b"one").hexdigest() and first.size == 3
    assert localsums.compute(tmp_path / "sums", path) == first
    assert len(list((tmp_path / "sums").glob("*.json"))) == 1
    path.write_bytes(b"two!")  # changed in place: read again
    assert localsums.compute(tmp_path / "sums", path).sha256 == hashlib.sha256(b"two!").hexdigest()
    missing = localsums.poll(tmp_path / "sums", tmp_path / "nope.raw", 0.0)
    assert "cannot be read" in missing.error  # type: ignore[union-attr]
