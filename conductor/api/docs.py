"""``/docs``: Swagger UI over ``/openapi.json``, served from the package (no CDN).

The files of swagger-ui-dist (:data:`SWAGGER_UI_VERSION`, vendored
unmodified in ``conductor/api/docs_files`` with their licence) and a page
and start script of our own, all served without a token (they hold no
data; the description is public too) under a same-origin
Content-Security-Policy: nothing is loaded from, or sent to, elsewhere.
The calls made with "Try it out" carry the token given to "Authorize".
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response

from conductor.api.ui import packaged_file

FILES = Path(__file__).with_name("docs_files")
SWAGGER_UI_VERSION = "5.36.0"
#: Where the files are (flask-smorest's OPENAPI_SWAGGER_UI_URL).
STATIC_URL = "/docs/static/"

blp = Blueprint("docs", __name__, url_prefix="/docs/static")

#: This origin only; Swagger UI sets inline styles, and draws icons as data: images.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
          "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@blp.get("/<path:name>")
def asset(name: str) -> Response:
    """A file of Swagger UI (404 for anything else)."""
    return serve(name)


def page() -> Response:
    """The ``/docs`` page."""
    return serve("index.html")


def serve(name: str) -> Response:
    return packaged_file(FILES, name, POLICY)
