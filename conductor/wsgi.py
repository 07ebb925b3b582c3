"""The WSGI entry point (``conductor.wsgi:app`` for any WSGI server).

Settings come from the environment and the config file, as for every
conductor process.
"""

from __future__ import annotations

from conductor.api import create_app

app = create_app()
