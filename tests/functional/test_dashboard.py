"""The dashboard (``/ui``) in a real browser: Debian's Chromium driven by Playwright, against ``conductor up``.

Skipped, saying why, without the ``chromium`` package or the ``playwright``
module (test extras).  Screenshots are saved in each test's tmp dir.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conductor.demo import register_image
from tests.conftest import Service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")

NODES = 20
#: Each fake step takes this long: long enough for every state to be drawn.
FAKE_DELAY = 0.2
WAIT_MS = 60_000


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        # Playwright's own browser download cannot work here: the system's Chromium.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def service(service_factory: Any) -> Service:
    return service_factory()


def open_page(browser: Any, service: Service, errors: list[str]) -> Any:
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(service.url + "/ui/")
    return page


def sign_in(page: Any, secret: str) -> None:
    page.fill("#token", secret)
    page.click("#sign-in")


def count_is(page: Any, kind: str, state: str, count: int) -> None:
    """Wait until the fleet's ``kind`` (provision, power) counts show ``count`` nodes in ``state``."""
    page.wait_for_function(
        "([kind, state, count]) => { const chip = document.querySelector("
        "`#${kind}-counts [data-state=\"${state}\"]`); return chip && chip.dataset.count === String(count); }",
        arg=[kind, state, count])


def enrol(service: Service, count: int) -> list[str]:
    names = [f"n{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        response = service.http.post(f"{service.url}/v1/nodes", timeout=10, json={
            "name": name, "driver": "fake", "driver_info": {"fake_delay": FAKE_DELAY},
            "ports": [f"52:54:00:12:34:{i:02x}"]})
        assert response.status_code == 201, response.text
    return names


def all_to(service: Service, names: list[str], target: str, **params: Any) -> None:
    for name in names:
        response = service.http.put(f"{service.url}/v1/nodes/{name}/states/provision", timeout=10,
                                    json={"target": target, **params})
        assert response.status_code == 202, response.text


def test_an_admin_watches_a_deploy_live_acts_on_a_node_and_changes_the_throttle(
        browser: Any, service: Service, tmp_path: Path) -> None:
    names = enrol(service, NODES)
    register_image(service.settings, "img")
    errors: list[str] = []
    page = open_page(browser, service, errors)
    sign_in(page, service.admin_token)
    page.wait_for_selector("#live.is-live")
    count_is(page, "provision", "enroll", NODES)
    assert page.locator("#fleet-rows .row").count() == NODES
    assert page.text_content("#role") == "admin"
    # Every provision state the counts show from now on, however briefly.
    page.evaluate("""() => {
        window.seenStates = new Set();
        const note = () => document.querySelectorAll('#provision-counts [data-state]')
            .forEach((chip) => window.seenStates.add(chip.dataset.state));
        new MutationObserver(note).observe(document.querySelector('#provision-counts'),
                                           {childList: true, subtree: true});
    }""")

    all_to(service, names, "manage")
    count_is(page, "provision", "manageable", NODES)
    count_is(page, "power", "power off", NODES)
    all_to(service, names, "provide")
    count_is(page, "provision", "available", NODES)
    # The deploy: 19 nodes through the API, one from its page.
    all_to(service, names[1:], "active", image_source="img")
    page.wait_for_function("() => window.seenStates.has('deploying')")
    page.screenshot(path=str(tmp_path / "fleet-deploying.png"), full_page=True)
    page.click(f"#fleet-rows a:text-is('{names[0]}')")
    page.wait_for_selector("#node-actions")
    page.fill("#deploy-image", "img")
    page.click("#act-deploy")
    page.wait_for_selector("#action-log li.succeeded")
    assert "deploy" in page.text_content("#action-log li.succeeded .what")
    page.wait_for_selector("#node-states [data-field='provision state'] .st-active")
    page.wait_for_function("() => document.querySelector('#node-history').textContent.includes('deploying -> active')")
    assert "52:54:00:12:34:00" in page.text_content("#node-ports")
    # A refusal is shown as the API said it: the node is active, "manage" is not a way out.
    page.click("#act-manage")
    page.wait_for_selector("#action-log li.failed")
    assert "400 invalid_transition" in page.text_content("#action-log li.failed")
    page.screenshot(path=str(tmp_path / "node.png"), full_page=True)
    page.click("text=\u2190 fleet")
    count_is(page, "provision", "active", NODES)
    seen = set(page.evaluate("() => [...window.seenStates]"))
    assert {"manageable", "cleaning", "available", "deploying", "active"} <= seen, seen
    # All of it live: the page was loaded once.
    assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
    assert page.evaluate("() => window.seenStates instanceof Set")

    # The throttle form: a bad value is refused with the API's words, a good one applied.
    page.fill("#throttle-write_burst", "0")
    page.click("#throttle-save")
    page.wait_for_selector("#throttle-message.error")
    assert "write_burst" in page.text_content("#throttle-message")
    page.fill("#throttle-write_burst", "321")
    page.click("#throttle-save")
    page.wait_for_selector("#throttle-message.ok")
    assert service.http.get(f"{service.url}/v1/throttle", timeout=10).json()["write_burst"] == 321
    # Another admin's change reaches the form through the stream.
    service.http.patch(f"{service.url}/v1/throttle", json={"read_burst": 777}, timeout=10)
    page.wait_for_function("() => document.querySelector('#throttle-read_burst').value === '777'")
    page.wait_for_function("() => Number(document.querySelector('#stat-conductors').textContent) >= 1")
    page.screenshot(path=str(tmp_path / "fleet.png"), full_page=True)
    assert errors == []


def test_a_reader_sees_everything_but_no_action_and_the_api_refuses_them(
        browser: Any, service: Service, tmp_path: Path) -> None:
    enrol(service, 2)
    created = service.http.post(f"{service.url}/v1/tokens", json={"role": "reader", "name": "eyes"}, timeout=10)
    reader = created.json()["token"]
    errors: list[str] = []
    page = open_page(browser, service, errors)
    sign_in(page, "cdt_not-a-token")
    page.wait_for_selector("#login-message:text('unknown or revoked')")
    sign_in(page, reader)
    page.wait_for_selector("#live.is-live")
    count_is(page, "provision", "enroll", 2)
    assert page.text_content("#role") == "reader"
    assert page.locator("#throttle-form").count() == 0
    # The token is in the tab's session storage, never in the address.
    assert reader not in page.url and page.evaluate("() => sessionStorage.getItem('conductor.token')") == reader
    page.click("#fleet-rows a:text-is('n00')")
    page.wait_for_selector("#node-states [data-field='provision state'] .st-enroll")
    page.wait_for_selector("#node-history tr")
    assert page.locator("#node-actions").count() == 0 and page.locator("button[id^=act-]").count() == 0
    page.screenshot(path=str(tmp_path / "node-reader.png"), full_page=True)
    # What the buttons would do, done by hand with the reader's token: refused.
    refused = page.evaluate("""async () => {
        const token = sessionStorage.getItem('conductor.token');
        const call = (method, path, body) => fetch(path, {method, body: JSON.stringify(body),
            headers: {Authorization: `Bearer ${token}`, 'Content-Type': 'application/json'}})
            .then(async (r) => [r.status, (await r.json()).code]);
        return [await call('PUT', '/v1/nodes/n00/states/power', {target: 'power on'}),
                await call('PUT', '/v1/nodes/n00/states/provision', {target: 'manage'}),
                await call('PATCH', '/v1/nodes/n00', {maintenance: true}),
                await call('PATCH', '/v1/throttle', {write_burst: 5})];
    }""")
    assert refused == [[403, "forbidden"]] * 4
    # A revoked token ends the session: back to the sign-in form, with the reason.
    token_id = created.json()["id"]
    assert service.http.delete(f"{service.url}/v1/tokens/{token_id}", timeout=10).status_code == 200
    page.click("text=\u2190 fleet")
    page.wait_for_selector("#login-message:text('unknown or revoked')")
    assert page.evaluate("() => sessionStorage.getItem('conductor.token')") is None
    assert errors == []


def test_the_page_catches_up_with_what_happened_while_the_api_was_down(
        browser: Any, service: Service, tmp_path: Path) -> None:
    """The API restarts under an open page: the page resumes its stream after its last event, no reload."""
    names = enrol(service, 2)
    errors: list[str] = []
    page = open_page(browser, service, errors)
    # Every connection the page makes to the stream, with the id it resumes after; while `hold` is
    # set, the page cannot reach the stream (the changes below happen while it is blind).
    connections: list[str | None] = []
    hold = {"on": False}

    def to_the_stream(route: Any) -> None:
        connections.append(route.request.headers.get("last-event-id"))
        if hold["on"]:
            route.abort()
        else:
            route.continue_()

    page.route("**/v1/events*", to_the_stream)
    sign_in(page, service.admin_token)
    page.wait_for_selector("#live.is-live")
    count_is(page, "provision", "enroll", 2)
    # One event, so that the page has an id to resume after.
    assert service.http.patch(f"{service.url}/v1/nodes/{names[0]}", json={"maintenance": True},
                              timeout=10).status_code == 200
    page.wait_for_selector("#fleet-rows .st-maintenance")
    assert connections == [None]

    hold["on"] = True
    service.stop()  # the stream ends (the API stops), the page says it is not live
    page.wait_for_selector("#live.is-down")
    service.start()
    requests = [service.http.put(f"{service.url}/v1/nodes/{name}/states/provision", json={"target": "manage"},
                                 timeout=10).json()["id"] for name in names]
    assert [service.wait_request(r)["state"] for r in requests] == ["succeeded"] * 2
    assert service.http.patch(f"{service.url}/v1/nodes/{names[0]}", json={"maintenance": False},
                              timeout=10).status_code == 200
    page.screenshot(path=str(tmp_path / "not-live.png"), full_page=True)
    assert page.locator("#fleet-rows .st-maintenance").count() == 1  # blind: nothing changed on the page

    hold["on"] = False
    page.wait_for_selector("#live.is-live")
    count_is(page, "provision", "manageable", 2)
    count_is(page, "power", "power off", 2)
    page.wait_for_function("() => !document.querySelector('#fleet-rows .st-maintenance')")
    # It resumed after its last event (the server replayed what it missed) and loaded nothing again.
    resumed = [last for last in connections[1:] if last]
    assert resumed and len(set(resumed)) == 1, connections
    assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1
    page.screenshot(path=str(tmp_path / "caught-up.png"), full_page=True)
    assert errors == []
