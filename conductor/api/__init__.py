"""The REST API (Flask + flask-smorest); OpenAPI at ``/openapi.json``, Swagger UI at ``/docs``."""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from conductor import __version__, bootstrap, logs
from conductor.api import (
    admission,
    boot,
    callbacks,
    conductors,
    contract,
    docs,
    errors,
    events,
    http_metrics,
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


class _Flask(Flask):
    """Flask, asking once per function whether it is a coroutine, not on every call.

    Flask asks ``inspect.iscoroutinefunction`` of every hook and view it
    runs (about ten a call here, 5 % of a poll of a node's states); the
    answer never changes for a function.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        known = self._sync.get(func)
        if known is None:
            # Bound methods compare equal to each other: one entry per method, not per call.
            known = self._sync[func] = self.async_to_sync(func) if inspect.iscoroutinefunction(func) else func
        return known


def _bind_node() -> None:
    """Log lines of a call under ``/nodes/<ident>`` name that node (``node`` in JSON logs)."""
    rule = request.url_rule.rule if request.url_rule is not None else ""
    logs.bind_node((request.view_args or {}).get("ident") if "/nodes/<ident>" in rule else None)


def create_app(settings: Settings | None = None, ctx: Context | None = None) -> Flask:
    """The API application for ``settings`` (loaded from the environment if None)."""
    if ctx is None:
        ctx = bootstrap.build_context(settings or load())
    check_auth_settings(ctx.settings)
    app = _Flask("conductor")
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
    # This host's HTTP latency (GET /metrics); its clock starts before every other hook.
    http = http_metrics.HttpMetrics.of_this_process()
    http.install(app)
    app.before_request(_bind_node)
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
    hops = ctx.settings.proxy_trusted_hops
    if hops > 0:
        # Behind that many reverse proxies: the client's address (per-address
        # budgets), scheme and host (URLs the API writes) come from X-Forwarded-*.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        body, content_type = http.render()
        return Response(body, content_type=content_type)

    @app.get("/metrics/fleet")
    def prometheus_fleet_metrics() -> Response:
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
