"""`conductor demo --exit`: the scripted tour over simulated BMCs and agents ends as designed."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import free_port


def test_demo_runs_its_script_and_exits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "conductor", "demo", "--exit", "--data-dir", str(tmp_path / "demo"),
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("Summary: "))
    summary = json.loads(line.removeprefix("Summary: "))
    # 20 nodes: all deployed but one (aborted in wait call-back), 5 undeployed again.
    assert summary["nodes"] == 20
    assert summary["states"] == {"active": 14, "available": 5, "deploy failed": 1}
    assert "/docs" in result.stdout
    # The dashboard, and the file holding the token to sign in with (the secret itself is not printed).
    dashboard = next(line for line in result.stdout.splitlines() if line.startswith("Dashboard "))
    assert "/ui/" in dashboard and f"cat {tmp_path / 'demo' / 'admin.token'}" in dashboard
    assert (tmp_path / "demo" / "admin.token").read_text().strip() not in result.stdout
    logs = "".join(p.read_text() for p in (tmp_path / "demo" / "logs").glob("*.log"))
    assert "Traceback" not in logs
