"""``/v1/images``: registered images, and the image downloads of agents.

Images are added on the conductor host with ``conductor image add NAME
FILE`` (not over HTTP: see docs/images.md); the API lists, shows, serves
and deletes them.  ``GET /v1/images/content/<ticket>`` is how an agent
downloads the image of its deploy: no bearer token, the signed URL is the
proof (:mod:`conductor.images.tickets`), valid only while the node's
agent command carries it.  Both downloads stream the file from disk with
``Content-Length`` and ``Range`` support (gunicorn sends it with
``sendfile``); no file is ever read into memory.  Each is opened once,
without following a symbolic link, checked (a regular file; for an agent,
the very file its deploy prepared: same device, inode, size and
modification time, still where ``image_file_dirs`` allows) and served
from that open file.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from flask import Response, request
from flask.views import MethodView
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wsgi import wrap_file

from conductor.api import schemas
from conductor.api.common import Blueprint, close_session, context, next_link, session
from conductor.core import agent as protocol
from conductor.exceptions import InvalidImageTicket, NodeNotFound, NotFound
from conductor.images import registry, sources, tickets
from conductor.models import Image
from conductor.service import nodes

blp = Blueprint("images", __name__, url_prefix="/v1/images",
                description="Images: registered by name; served to agents")


#: Under gunicorn, the serving worker's ``notify`` (set after fork by
#: :mod:`conductor.gunicorn_app`).  A sync worker that does not call it for
#: gunicorn's worker timeout (60 s) is killed, and a multi-GB download over a
#: real network takes longer than that: such downloads are then sent in 1 MiB
#: pieces, the worker proving itself alive after each piece the client took.
#: A client that stops reading proves nothing, and its worker is killed after
#: the timeout as before.
_notify: Callable[[], None] | None = None
_PIECE = 1024 * 1024
#: Least time between two proofs.
_PROOF_INTERVAL = 1.0


def prove_alive_with(notify: Callable[[], None]) -> None:
    """Have image downloads call ``notify`` (a gunicorn worker's) while they make progress."""
    global _notify  # one per process, set once after fork
    _notify = notify


def _pieces(handle: BinaryIO) -> Iterator[bytes]:
    while piece := handle.read(_PIECE):
        yield piece


def _proving_progress(pieces: Iterable[bytes], notify: Callable[[], None],
                      close: Callable[[], None]) -> Iterator[bytes]:
    last = time.monotonic()
    try:
        for piece in pieces:
            yield piece  # returns once the server has written it
            if time.monotonic() - last >= _PROOF_INTERVAL:
                notify()
                last = time.monotonic()
    finally:
        close()


def _open(path: Path, identity: tuple[int, int, int, int] | None) -> tuple[BinaryIO, os.stat_result]:
    """``path`` opened without following a symbolic link, and what ``fstat`` says of it.

    The download is served from this open file, never by name again: a
    file swapped after these checks (for a link to a key, say) is not
    what is sent.

    :raises NotFound: gone, not a regular file, or not the file ``identity`` names.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        # ELOOP (a symbolic link), ENOENT, EACCES...: all the same to the agent.
        raise NotFound("The image file is gone (the image was deleted, evicted or replaced).") from None
    handle = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (identity is not None and tickets.identity_of(st) != identity):
        handle.close()
        raise NotFound("The image file was replaced after the deploy prepared it; deploy again.")
    return handle, st


def _serve(path: Path, identity: tuple[int, int, int, int] | None = None) -> Response:
    """``path`` streamed with Content-Length, Range (206, 416) and conditional GETs, from one open file."""
    handle, st = _open(path, identity)
    close_session()  # a long download must not hold a database connection
    response = Response(wrap_file(request.environ, handle), mimetype="application/octet-stream",
                        direct_passthrough=True)
    response.content_length = st.st_size
    response.last_modified = datetime.fromtimestamp(st.st_mtime, UTC)
    response.cache_control.no_cache = True
    response.cache_control.max_age = 0
    response.set_etag(f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}")
    try:
        # make_conditional answers the same object, typed as Werkzeug's base Response.
        response.make_conditional(request.environ, accept_ranges=True, complete_length=st.st_size)
    except RequestedRangeNotSatisfiable:
        handle.close()
        raise
    response.headers["Accept-Ranges"] = "bytes"
    notify = _notify
    if notify is not None and request.method != "HEAD" and response.status_code in (200, 206):
        # Without it: gunicorn's sendfile(2) of the whole file, which cannot
        # prove anything while it runs.
        wrapped = response.response
        file = getattr(wrapped, "filelike", None) or getattr(wrapped, "file", None)
        pieces = (_pieces(file) if response.status_code == 200 and file is not None
                  else cast("Iterable[bytes]", wrapped))
        response.response = _proving_progress(pieces, notify, getattr(wrapped, "close", lambda: None))
    return response


@blp.route("")
class Images(MethodView):
    @blp.arguments(schemas.Page, location="query")
    @blp.response(200, schemas.ImageList)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List registered images by name."""
        items = registry.list_images(session(), limit=args["limit"], marker=args["marker"])
        return {"images": items, "next": next_link(items, args["limit"], items[-1].name if items else None)}


@blp.route("/<name>")
class ImageItem(MethodView):
    @blp.response(200, schemas.Image)
    def get(self, name: str) -> Image:
        """Show an image."""
        return registry.get(session(), name)

    @blp.response(204)
    def delete(self, name: str) -> None:
        """Unregister an image and remove its file; 409 ``image_in_use`` while a request deploys it."""
        registry.delete(session(), context().settings.images_path, name)


@blp.route("/<name>/content")
class ImageContent(MethodView):
    @blp.doc(responses={"200": {"description": "The image file", "content": {"application/octet-stream": {}}},
                        "206": {"description": "A byte range", "content": {"application/octet-stream": {}}},
                        "416": {"description": "The range is not satisfiable"}})
    def get(self, name: str) -> Response:
        """Download a registered image (streamed; Range supported)."""
        image = registry.get(session(), name)
        return _serve(registry.path_of(context().settings.images_path, image))


@blp.route("/content/<ticket>")
class AgentImageContent(MethodView):
    @blp.doc(security=[], responses={"200": {"description": "The image file",
                                             "content": {"application/octet-stream": {}}},
                                     "206": {"description": "A byte range",
                                             "content": {"application/octet-stream": {}}},
                                     "401": {"description": "Forged, altered or expired ticket, or the agent is not "
                                                            "writing this image now"}})
    def get(self, ticket: str) -> Response:
        """An agent downloads its deploy's image (the signed URL of its ``write_image`` command; no token)."""
        ctx = context()
        granted = tickets.verify(ctx.settings, ticket)
        try:
            node = nodes.find(session(), granted.node)
        except NodeNotFound:
            raise InvalidImageTicket("This image URL is not valid for any node.") from None
        command = protocol.command(node) or {}
        source = str((command.get("params") or {}).get("image_source") or "")
        if command.get("name") != "write_image" or not source.endswith(tickets.PREFIX + ticket):
            raise InvalidImageTicket(
                f"This image URL is no longer valid: node {node.uuid}'s agent is not writing this image now."
            )
        refused = sources.served_refusal(ctx.settings, granted.path)
        if refused is not None:
            raise NotFound(f"This image cannot be served: {refused}; deploy again.")
        return _serve(granted.path, granted.identity)
