"""The dashboard's files (``/ui``), and the two endpoints it needs: ``/v1/tokens/self``, ``/v1/stats``.

What the page does in a browser is tests/functional/test_dashboard.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from conductor.api import ui
from conductor.metrics import ACCEPTED, REJECTED
from conductor.throttle.drain import DrainMeter
from tests.conftest import bearer, drain, make_token


def test_the_page_is_served_without_a_token_under_a_strict_policy(anonymous) -> None:
    assert anonymous.get("/ui").status_code == 308 and anonymous.get("/ui").headers["Location"] == "/ui/"
    page = anonymous.get("/ui/")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["Referrer-Policy"] == "no-referrer"
    script = anonymous.get("/ui/main.js")
    # A module script is refused by browsers unless served as JavaScript.
    assert script.status_code == 200 and "javascript" in script.content_type


def test_nothing_outside_the_files_is_served(anonymous) -> None:
    for path in ("/ui/nope.js", "/ui/../ui.py", "/ui/%2e%2e/ui.py", "/ui/..%2fui.py"):
        response = anonymous.get(path)
        assert response.status_code == 404, path
        assert b"send_from_directory" not in response.data


def test_every_file_the_page_names_is_shipped_and_nothing_is_fetched_from_elsewhere() -> None:
    files = {p.name for p in ui.FILES.iterdir()}
    html = (ui.FILES / "index.html").read_text()
    named = set(re.findall(r'(?:href|src)="([^"#]+)"', html)) - {"/docs"}
    assert named and named <= files, named - files
    for script in ui.FILES.glob("*.js"):
        text = script.read_text()
        imports = set(re.findall(r'from "\./([^"]+)"', text))
        assert imports <= files, (script.name, imports - files)
        # No CDN, no absolute URL but the API's own paths.
        assert not re.search(r"https?://", text), script.name
    # setup.py ships "ui_files/*": a subdirectory would be left out of a wheel.
    assert all(p.is_file() for p in ui.FILES.iterdir())
    assert '"conductor.api": ["ui_files/*", "docs_files/*"]' in (Path(__file__).parents[3] / "setup.py").read_text()


def test_self_names_the_callers_token_and_role(client, ctx, anonymous) -> None:
    me = client.get("/v1/tokens/self")
    assert me.status_code == 200
    assert me.json["role"] == "admin" and me.json["name"] == "tests" and me.json["token_id"].startswith("tok-")
    assert me.json["client"] == me.json["token_id"]
    reader = anonymous.get("/v1/tokens/self", headers=bearer(make_token(ctx, "reader", "eyes")))
    assert reader.status_code == 200 and reader.json["role"] == "reader" and reader.json["name"] == "eyes"
    assert "cdt_" not in reader.get_data(as_text=True)
    assert anonymous.get("/v1/tokens/self").status_code == 401
    # Not a token id: DELETE of "self" is an unknown token, not a way to revoke one's own.
    assert client.delete("/v1/tokens/self").json["code"] == "token_not_found"


def test_stats_count_admissions_and_show_the_queue(client, ctx, conductor_ctx, anonymous) -> None:
    for name in ("n1", "n2"):
        client.post("/v1/nodes", json={"name": name, "driver": "fake"})
    empty = client.get("/v1/stats").json
    assert empty["queue_depth"] == 0 and empty["accepted"] == {} and empty["rejected"] == {}
    assert empty["requests_active"] == {"queued": 0, "running": 0, "waiting": 0}
    assert empty["conductors_alive"] == 1 and empty["at"].endswith("+00:00")
    client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    client.put("/v1/nodes/n2/states/power", json={"target": "power on"})
    client.put("/v1/nodes/n1/states/power", json={"target": "power off"})  # 409 transition_in_progress
    client.put("/v1/nodes/n2/states/provision", json={"target": "active"})  # 400: no image_source
    reader = anonymous.get("/v1/stats", headers=bearer(make_token(ctx, "reader")))
    assert reader.status_code == 200
    stats = reader.json
    assert stats["queue_depth"] == 2 and stats["requests_active"]["queued"] == 2
    assert stats["accepted"] == {"power": 2}
    assert stats["rejected"] == {"transition_in_progress": 1, "validation_error": 1}
    # (The jobs are run here, not taken from the queue by a worker: no drain measured.)
    drain(conductor_ctx)
    DrainMeter(ctx.redis, ctx.settings.redis_namespace).record(5)
    after = client.get("/v1/stats").json
    assert after["requests_active"] == {"queued": 0, "running": 0, "waiting": 0}
    assert after["drain_rate"] > 0 and after["at"] > stats["at"]
    # The same counters as /metrics/fleet.
    text = client.get("/metrics/fleet").get_data(as_text=True)
    assert f'{ACCEPTED}_total{{kind="power"}} 2.0' in text
    assert f'{REJECTED}_total{{reason="transition_in_progress"}} 1.0' in text
