"""The WSGI entry point (``conductor.wsgi:app`` for any WSGI server).

Settings come from the environment and the config file, as for every
conductor process.

The application enforces the body limit (413, also for chunked bodies when
the server sets ``wsgi.input_terminated``) and refuses non-finite JSON
numbers itself. The request line and header limits (414, 431) are the
server's: ``conductor api`` / ``conductor up`` run gunicorn with those of
:mod:`conductor.api.limits` and answer them with our JSON error; another
server answers with its own limits and error pages (Werkzeug's development
server, for one, allows 64 KiB lines and answers in HTML).
"""

from __future__ import annotations

from conductor.api import create_app

app = create_app()
