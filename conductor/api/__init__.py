"""The REST API (Flask + flask-smorest); OpenAPI at ``/openapi.json``, Swagger UI at ``/docs``."""

from __future__ import annotations

import ipaddress

from flask import Flask, Response

from conductor import __version__, bootstrap
from conductor.api import (
    admission,
    boot,
    callbacks,
    conductors,
    contract,
    docs,
    errors,
    events,
    images,
    ironic,
    limits,
    nodes,
    ports,
    requests,
    stats,
    strict_json,
    subscriptions,
    throttle,
    tokens,
    ui,
)
from conductor.api import metrics as api_metrics
from conductor.api.common import close_session
from conductor.callbacks import destinations
from conductor.context import Context
from conductor.exceptions import InvalidInput
from conductor.settings import Settings, load


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is only reachable from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth_settings(settings: Settings) -> None:
    """Refuse to serve without authentication anywhere but on loopback.

    :raises InvalidInput: ``auth_enabled`` is off and ``api_host`` is not loopback.
    """
    if not settings.auth_enabled and not is_loopback(settings.api_host):
        raise InvalidInput(
            f"auth_enabled = false is only allowed while the API binds to loopback, "
            f"not {settings.api_host!r}.",
            errors={"auth_enabled": "only with a loopback api_host"},
        )


def create_app(settings: Settings | None = None, ctx: Context | None = None) -> Flask:
    """The API application for ``settings`` (loaded from the environment if None)."""
    if ctx is None:
        ctx = bootstrap.build_context(settings or load())
    check_auth_settings(ctx.settings)
    app = Flask("conductor")
    app.config.update(
        API_TITLE="Bare-metal conductor",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        # Served from the package (conductor/api/docs.py), not from a CDN.
        OPENAPI_SWAGGER_UI_URL=docs.STATIC_URL,
        MAX_CONTENT_LENGTH=limits.MAX_BODY,
        # Swagger UI's "Authorize" button takes a bearer token.
        API_SPEC_OPTIONS={
            "security": [{"bearerAuth": []}],
            "components": {"securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "agentToken": {"type": "apiKey", "in": "header", "name": "X-Agent-Token"},
            }},
        },
    )
    # Finite numbers only, in and out (PostgreSQL refuses NaN; it is not JSON).
    app.json = strict_json.StrictJSONProvider(app)
    app.extensions["conductor"] = ctx
    # Fail at start, not on the first callback, on malformed callback lists.
    destinations.Policy.from_settings(ctx.settings)
    api = errors.ConductorApi(app, spec_kwargs={"extra_plugins": [contract.ContractPlugin()]})
    # First: nothing may read a chunked body before its size is checked.
    app.before_request(limits.refuse_oversized_body)
    errors.register(app)
    # Before admission: its answers' envelope must be rewritten after admission looked at them.
    ironic.install(app)
    admission.install(app)
    events.install(app, ctx)
    for module in (nodes, ports, boot, requests, conductors, throttle, tokens, subscriptions, callbacks, images,
                   events, stats):
        api.register_blueprint(module.blp)
    # A plain Flask blueprint: the dashboard's files are not part of the API's description.
    app.register_blueprint(ui.blp)
    app.register_blueprint(docs.blp)
    app.teardown_appcontext(close_session)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        body, content_type = api_metrics.render(ctx)
        return Response(body, content_type=content_type)

    @app.get("/")
    def root() -> dict[str, object]:
        return {
            "name": "conductor",
            "version": __version__,
            "api": "/v1",
            "openapi": "/openapi.json",
            "docs": "/docs",
            "dashboard": "/ui",
        }

    return app
