"""``proxy_trusted_hops``: X-Forwarded-* believed from that many proxies, and ignored by default."""

from __future__ import annotations

from flask import request

from conductor.api import create_app
from conductor.bootstrap import build_context
from conductor.settings import Settings
from tests.conftest import make_token

FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "bm.example.com", "X-Forwarded-Port": "443"}


def _seen(settings: Settings, headers: dict[str, str]) -> dict[str, str]:
    ctx = build_context(settings)
    try:
        app = create_app(ctx=ctx)
        app.add_url_rule("/_seen", "seen", lambda: {"addr": request.remote_addr, "url": request.url_root})
        token = {"Authorization": f"Bearer {make_token(ctx, 'reader')}"}
        return app.test_client().get("/_seen", headers={**headers, **token},
                                     environ_base={"REMOTE_ADDR": "10.0.0.2"}).json
    finally:
        ctx.close()


def test_forwarded_headers_are_ignored_unless_proxies_are_trusted(settings: Settings) -> None:
    assert _seen(settings, FORWARDED) == {"addr": "10.0.0.2", "url": "http://localhost/"}


def test_one_trusted_hop_takes_the_client_address_and_url_from_the_proxy(settings: Settings) -> None:
    behind = settings.replace(proxy_trusted_hops=1)
    assert _seen(behind, FORWARDED) == {"addr": "203.0.113.7", "url": "https://bm.example.com/"}
    # A client's own X-Forwarded-For before the proxy's entry is not believed.
    spoofed = {**FORWARDED, "X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    assert _seen(behind, spoofed)["addr"] == "203.0.113.7"
