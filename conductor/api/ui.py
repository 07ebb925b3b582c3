"""``/ui``: the operator dashboard, a static page that calls this API with the operator's token.

The page and its scripts are files shipped in the package
(``conductor/api/ui_files``: plain ES modules, no build step, nothing
loaded from elsewhere), served without a token: they hold no data.  The
page asks for a token once and keeps it in the tab's ``sessionStorage``;
every call, the event stream included (read with ``fetch``, not
``EventSource``, which cannot send a header), carries it as a bearer
token, never in a URL.  What the page shows and offers follows the
token's role (``GET /v1/tokens/self``), and the API refuses what the role
does not allow anyway.  README.md, "Dashboard", is the operator's guide.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

FILES = Path(__file__).with_name("ui_files")

blp = Blueprint("ui", __name__, url_prefix="/ui")

#: Only this origin's scripts, styles and connections: injected markup can run nothing.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@blp.get("")
def bare() -> BaseResponse:
    """To ``/ui/``: the page's files are named relative to it."""
    return redirect("/ui/", 308)


@blp.get("/")
def index() -> Response:
    """The dashboard page."""
    return _file("index.html")


@blp.get("/<path:name>")
def asset(name: str) -> Response:
    """A script, style sheet or icon of the page (404 for anything else)."""
    return _file(name)


def _file(name: str) -> Response:
    return packaged_file(FILES, name, POLICY)


def packaged_file(directory: Path, name: str, policy: str) -> Response:
    """A file of a page shipped in the package (the dashboard's, the API docs'), under ``policy`` (CSP)."""
    # send_from_directory refuses paths leaving the directory (404); max_age=0
    # plus its ETag: a browser revalidates, so an upgrade shows at the next load.
    response = send_from_directory(directory, name, max_age=0)
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
