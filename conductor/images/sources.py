"""What a deploy gives its agent for an ``image_source``.

The agent downloads from the conductor whatever the source (except remote
URLs with the cache off): a registered image, a ``file://`` image and a
cached remote image are all served at a signed URL (:mod:`.tickets`), with
the SHA-256 the agent verifies, the compression it must undo and the
decompressed size it picks a disk by.  Getting there may take a while (a
download, a checksum of a large local file): :func:`prepare` never blocks,
it answers :class:`~conductor.images.flight.Running` until the image is
ready (the deploy step polls).

Every failure is a :class:`~conductor.exceptions.DriverError` whose
message is the node's ``last_error``: an unknown or deleted image, an
unreadable file, an HTTP error or silence of the source, a checksum
mismatch.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from conductor.exceptions import DriverError, ImageNotFound
from conductor.images import cache, flight, formats, localsums, registry, tickets
from conductor.settings import Settings


def kind(image_source: str) -> str:
    """``http`` (http and https), ``file`` or ``name``."""
    if "://" not in image_source:
        return "name"
    scheme = urllib.parse.urlsplit(image_source).scheme
    return "file" if scheme == "file" else "http"


def file_refusal(settings: Settings, path: Path) -> str | None:
    """Why ``path`` may not be deployed as a ``file://`` image (None: it may).

    Only files under ``image_file_dirs`` are served, once symbolic links are
    resolved, and never one in the data directory (keys, tokens, the
    database): the agent writes whatever it is given to a machine that the
    one who asked for the deploy holds.
    """
    if "\0" in str(path):
        return "a path cannot hold a NUL byte"
    roots = [Path(os.path.realpath(Path(d.strip()).expanduser()))
             for d in settings.image_file_dirs.split(",") if d.strip()]
    real = Path(os.path.realpath(path))
    data_dir = Path(os.path.realpath(settings.data_dir))
    if real == data_dir or data_dir in real.parents:
        return f"{path} is in the conductor's data directory; register the image with `conductor image add` instead"
    if not any(real == root or root in real.parents for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "none: image_file_dirs is empty"
        return f"{path} is not under the directories file:// images may come from (image_file_dirs: {allowed})"
    return None


def shown(image_source: str) -> str:
    """``image_source`` as messages, logs and history show it (a URL's password and query masked)."""
    return image_source if kind(image_source) == "name" else cache.shown(image_source)


def served_refusal(settings: Settings, path: Path) -> str | None:
    """Why ``path`` (a ticket's) may not be served now (None: it may).

    A registered or cached image lives in the conductor's own directories;
    anything else is a ``file://`` image and must still pass
    :func:`file_refusal`.  The path was resolved when the ticket was
    issued, so it must still be its own resolution (no symbolic link put
    in its way since).
    """
    if "\0" in str(path) or Path(os.path.realpath(path)) != path:
        return f"{path} is no longer the file the deploy prepared"
    for own in (settings.images_path, settings.image_cache_path):
        if Path(os.path.realpath(own)) in path.parents:
            return None
    return file_refusal(settings, path)


def file_path(image_source: str) -> Path:
    """The path of a ``file://`` URL."""
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(image_source).path))


def prepare(settings: Settings, session: Session, image_source: str, checksum: str | None, *,
            node: str, owner: str, since: float) -> dict[str, Any] | flight.Running:
    """The agent's image params (``image_source``, ``image_checksum``, ``image_compression``,
    ``image_size``), or :class:`~conductor.images.flight.Running` while they are being prepared.

    :param node: the node's UUID (the URL is valid for its agent only).
    :param owner: the request deploying (it pins a cached image).
    :param since: when the deploy began preparing (failures of earlier attempts are not its own).
    :raises DriverError: the image cannot be had; the message says why.
    """
    want = checksum.removeprefix("sha256:").lower() if checksum else None
    found: Any
    source = kind(image_source)
    if source == "name":
        try:
            image = registry.get(session, image_source)
        except ImageNotFound:
            raise DriverError(f"Image {image_source} is not registered (deleted after the request was "
                              "accepted?); see `conductor image list`.") from None
        path = registry.path_of(settings.images_path, image)
        if not path.is_file():
            raise DriverError(f"The file of image {image_source} is missing ({path}); add the image again.")
        found = localsums.LocalImage(path, image.sha256, image.size, image.compression, image.image_size)
    elif source == "file":
        path = file_path(image_source)
        refused = file_refusal(settings, path)
        if refused is not None:
            raise DriverError(f"Refusing the image {image_source}: {refused}.")
        # The resolved path is what is served: a symbolic link changed later points nowhere new.
        found = localsums.poll(settings.image_cache_path / "local", Path(os.path.realpath(path)), since)
    elif settings.image_cache_size <= 0:
        # No cache: the agent downloads from the source and verifies the checksum itself.
        return {"image_source": image_source, "image_checksum": want}
    else:
        if want is None:
            raise DriverError(f"{shown(image_source)} has no image_checksum; remote images need one.")
        images = cache.ImageCache.from_settings(settings)
        # Pinned before it is looked up: an eviction between the two would
        # remove the entry this deploy is about to hand out.
        images.pin(want, owner)
        found = images.poll(image_source, want, since)
        if isinstance(found, cache.Entry):
            images.touch(want)
        elif isinstance(found, flight.Failed):
            images.unpin(want, owner)
    if isinstance(found, flight.Failed):
        raise DriverError(found.error)
    if isinstance(found, flight.Running):
        return found
    if want is not None and found.sha256 != want:
        raise DriverError(f"checksum mismatch for {shown(image_source)}: expected sha256 {want}, "
                          f"the image has {found.sha256}")
    if found.compression == formats.ZSTD:
        # The ramdisk's busybox decompresses gzip and xz only: refused here,
        # before the node is powered, rather than by the agent after a boot.
        raise DriverError(f"The image {shown(image_source)} is zstd-compressed, which the agent cannot "
                          "decompress; use it uncompressed, gzip or xz.")
    # The ticket names the resolved path and the file's identity: the
    # download serves that very file or nothing (see api/images.py).
    served = Path(os.path.realpath(found.path))
    identity = getattr(found, "identity", None)
    if identity is None:
        try:
            identity = tickets.identity_of(os.stat(served))
        except OSError as exc:
            raise DriverError(f"The file of image {shown(image_source)} cannot be read ({found.path}): "
                              f"{exc.strerror or exc}.") from None
    ticket = tickets.issue(settings, node, served, settings.deploy_agent_timeout + 3600.0, identity)
    params: dict[str, Any] = {
        "image_source": tickets.url(settings, ticket),
        "image_checksum": found.sha256,
        "image_compression": found.compression,
    }
    if found.image_size is not None:
        params["image_size"] = found.image_size
    return params
