"""Images registered by name: ``conductor image add NAME FILE``.

Adding copies the file into the image directory (setting ``image_dir``,
default ``<data dir>/images``) in one pass that also computes its SHA-256,
compression and decompressed size; the copy is the conductor's own, so
changing, moving or deleting the original changes nothing.  A given
``checksum`` must match, else nothing is registered.  The stored file is
named ``<name>.<first 16 hex digits of its sha256>``: a name deleted and
added again with other content never serves the old content under a URL
issued for the new one (or the reverse).

Deleting an image a request in progress deploys (queued, running or
waiting) is refused (409 ``image_in_use``).  A deploy accepted after the
check finds the image gone and fails with a clear error; an agent already
downloading keeps its open file to the end.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conductor.exceptions import ImageInUse, ImageNameInUse, ImageNotFound, InvalidInput
from conductor.fsm.states import ACTIVE_REQUEST_STATES, RequestKind
from conductor.images import formats
from conductor.models import Image, Request

#: An image name: what ``image_source`` holds when it is not a URL.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")
NAME_RULE = "an image name is letters, digits and . _ : - (at most 255), starting with a letter or digit"
_SHA256 = re.compile(r"^(sha256:)?[0-9a-fA-F]{64}$")


def check_checksum(value: Any) -> str:
    """``value`` as 64 lower-case hex digits (a ``sha256:`` prefix is allowed).

    :raises InvalidInput: not a SHA-256.
    """
    if not isinstance(value, str) or not _SHA256.match(value):
        raise InvalidInput("A checksum is a SHA-256: 64 hex digits, optionally prefixed sha256:.",
                           errors={"checksum": "expected 64 hex digits"})
    return value.removeprefix("sha256:").lower()


def path_of(images_dir: Path, image: Image) -> Path:
    """Where ``image``'s file is."""
    return Path(images_dir) / image.file_name


def add(session: Session, images_dir: Path, name: str, source: Path, checksum: str | None = None) -> Image:
    """Copy ``source`` in as image ``name`` and commit.

    :raises InvalidInput: a bad name or checksum, an unreadable, empty or damaged file, or a checksum mismatch.
    :raises ImageNameInUse: ``name`` is taken.
    """
    if not NAME.match(name or ""):
        raise InvalidInput(f"Invalid image name {name!r}: {NAME_RULE}.", errors={"name": NAME_RULE})
    want = check_checksum(checksum) if checksum is not None else None
    if session.scalars(sa.select(Image.id).where(Image.name == name)).first() is not None:
        raise ImageNameInUse(f"An image named {name} is already registered.", name=name)
    images_dir = Path(images_dir)
    images_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    part = images_dir / f".{name}.{os.getpid()}.part"
    try:
        digest = _copy(Path(source), part)
        if digest.size == 0:
            raise InvalidInput(f"The image file {source} is empty.", errors={"file": "empty"})
        if want is not None and digest.sha256 != want:
            raise InvalidInput(f"Checksum mismatch for {source}: expected sha256 {want}, the file has "
                               f"{digest.sha256}; nothing was registered.", errors={"checksum": "mismatch"})
        try:
            compression, image_size = digest.finish()
        except formats.CorruptImage as exc:
            raise InvalidInput(f"The image file {source} is damaged: {exc}.", errors={"file": str(exc)}) from None
        image = Image(name=name, sha256=digest.sha256, size=digest.size, compression=compression,
                      image_size=image_size, file_name=f"{name}.{digest.sha256[:16]}",
                      source=str(Path(source).resolve()))
        os.replace(part, path_of(images_dir, image))
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    session.add(image)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        # A concurrent add of this name won.  Its file has this very name
        # when it has this content: then it is the winner's, not ours to remove.
        winner = session.scalars(sa.select(Image.file_name).where(Image.name == name)).first()
        if winner != image.file_name:
            with contextlib.suppress(FileNotFoundError):
                path_of(images_dir, image).unlink()
        raise ImageNameInUse(f"An image named {name} is already registered.", name=name) from None
    return image


def _copy(source: Path, target: Path) -> formats.Digest:
    """Copy ``source`` to ``target`` (mode 0600), digesting it on the way."""
    digest = formats.Digest()
    try:
        with open(source, "rb") as src:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(formats.CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
    except OSError as exc:
        raise InvalidInput(f"Cannot copy the image file {source}: {exc.strerror or exc}.",
                           errors={"file": str(exc.strerror or exc)}) from None
    return digest


def get(session: Session, name: str) -> Image:
    """The image registered as ``name``.

    :raises ImageNotFound: none is.
    """
    image = session.scalars(sa.select(Image).where(Image.name == name)).one_or_none()
    if image is None:
        raise ImageNotFound(f"No image is registered as {name!r}.", image=name)
    return image


def exists(session: Session, name: str) -> bool:
    """Whether an image is registered as ``name``."""
    return session.scalars(sa.select(Image.id).where(Image.name == name)).first() is not None


def list_images(session: Session, *, limit: int, marker: str | None = None) -> list[Image]:
    """Up to ``limit`` images in name order, after image ``marker``."""
    query = sa.select(Image)
    if marker:
        query = query.where(Image.name > marker)
    return list(session.scalars(query.order_by(Image.name).limit(limit)))


def users(session: Session, name: str) -> list[str]:
    """The ids of the requests in progress that deploy image ``name``."""
    rows = session.execute(
        sa.select(Request.id, Request.params).where(
            Request.kind == RequestKind.PROVISION, Request.state.in_([str(s) for s in ACTIVE_REQUEST_STATES])
        )
    )
    return [rid for rid, params in rows if (params or {}).get("image_source") == name]


def delete(session: Session, images_dir: Path, name: str) -> None:
    """Unregister image ``name``, remove its file, and commit.

    :raises ImageNotFound: no such image.
    :raises ImageInUse: a request in progress deploys it.
    """
    image = get(session, name)
    busy = users(session, name)
    if busy:
        raise ImageInUse(f"Image {name} is being deployed by {len(busy)} request(s) in progress "
                         f"({', '.join(busy[:5])}); delete it when they end.", request_ids=busy)
    path = path_of(images_dir, image)
    session.delete(image)
    session.commit()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
