"""The REST API (Flask + flask-smorest); OpenAPI at ``/openapi.json``, Swagger UI at ``/docs``."""

from __future__ import annotations

from flask import Flask

from conductor import __version__
from conductor.api import callbacks, conductors, errors, nodes, requests, subscriptions
from conductor.api.common import close_session
from conductor.callbacks import destinations
from conductor.context import Context
from conductor.settings import Settings, load


def create_app(settings: Settings | None = None, ctx: Context | None = None) -> Flask:
    """The API application for ``settings`` (loaded from the environment if None)."""
    if ctx is None:
        ctx = Context.build(settings or load())
    app = Flask("conductor")
    app.config.update(
        API_TITLE="Bare-metal conductor",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        MAX_CONTENT_LENGTH=1 << 20,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["conductor"] = ctx
    # Fail at start, not on the first callback, on malformed callback lists.
    destinations.Policy.from_settings(ctx.settings)
    api = errors.ConductorApi(app)
    errors.register(app)
    for module in (nodes, requests, conductors, subscriptions, callbacks):
        api.register_blueprint(module.blp)
    app.teardown_appcontext(close_session)

    @app.get("/")
    def root() -> dict[str, object]:
        return {
            "name": "conductor",
            "version": __version__,
            "api": "/v1",
            "openapi": "/openapi.json",
            "docs": "/docs",
        }

    return app
