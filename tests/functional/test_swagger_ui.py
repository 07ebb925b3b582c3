"""Swagger UI (``/docs``) in a real browser: Debian's Chromium driven by Playwright, against a running API.

It must draw every operation from the package's own files, under the
page's Content-Security-Policy, with nothing asked of another origin, and
"Try it out" must reach the API with the token given to "Authorize".
Skipped, saying why, without the ``chromium`` package or the ``playwright``
module (test extras).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")

WAIT_MS = 60_000


def test_swagger_ui_draws_every_operation_offline_and_tries_one(service_factory: Any, tmp_path: Path) -> None:
    service = service_factory(workers=1, api_workers=1)
    spec = service.http.get(f"{service.url}/openapi.json", timeout=10).json()
    operations = sum(1 for item in spec["paths"].values() for m in item if m in ("get", "put", "post", "patch",
                                                                               "delete"))
    origin = urlsplit(service.url).netloc
    elsewhere: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.set_default_timeout(WAIT_MS)
            page.on("request", lambda r: None if urlsplit(r.url).netloc in (origin, "")
                    or r.url.startswith("data:") else elsewhere.append(r.url))
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(service.url + "/docs")
            # A function, not an expression: Playwright polls an expression
            # with eval(), which the page's CSP (script-src 'self') refuses.
            page.wait_for_function("(n) => document.querySelectorAll('.opblock').length >= n",
                                   arg=operations)
            assert page.locator(".opblock").count() == operations
            page.screenshot(path=str(tmp_path / "docs.png"))
            # Authorize with the admin token, then try GET /v1/tokens/self.
            page.click("button.authorize")
            page.fill(".auth-container input[type=text], .auth-container input:not([type])",
                      service.admin_token)
            page.click(".auth-container button.authorize")
            page.click("button.btn-done")
            page.click("#operations-tokens-showOwnToken .opblock-summary")
            page.click("#operations-tokens-showOwnToken button.try-out__btn")
            page.click("#operations-tokens-showOwnToken button.execute")
            body = page.locator("#operations-tokens-showOwnToken .live-responses-table .response-col_description pre")
            body.first.wait_for()
            assert '"role": "admin"' in body.first.inner_text()
        finally:
            browser.close()
    assert not elsewhere, elsewhere
    # (A missing source map is a note of the developer tools, not an error of the page.)
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
