"""The CLI as scripts use it, against a real `conductor up`: token discovery, formats, exit statuses,
--wait's output, bulk actions under the throttle, --wait-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conductor.auth import tokenfile
from conductor.throttle import settings as throttle_settings


def run(service, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """The CLI, off a terminal (stdout and stderr are pipes), as a script runs it."""
    return subprocess.run([sys.executable, "-m", "conductor", *args], env=env or service.env,
                          capture_output=True, text=True, timeout=120)


def test_formats_exit_statuses_and_token_discovery(service_factory, tmp_path) -> None:
    service = service_factory()
    service.cli("node", "create", "--driver", "fake", "--name", "n1", "-i", "fake_delay=0.3")
    service.cli("node", "create", "--driver", "fake", "--name", "bad", "-i", "fake_fail=no BMC")
    service.cli("node", "create", "--driver", "fake", "--name", "slow", "-i", "fake_hang=3")
    shown = json.loads(service.cli("node", "show", "n1", "--json").stdout)
    assert shown["name"] == "n1" and shown["provision_state"] == "enroll"
    assert service.cli("node", "show", "n1", "-f", "value", "-c", "provision_state").stdout == "enroll\n"
    listed = yaml.safe_load(service.cli("node", "list", "-f", "yaml", "-c", "name", "-c", "driver").stdout)
    assert listed == [{"name": n, "driver": "fake"} for n in ("n1", "bad", "slow")]
    assert service.cli("--format", "value", "node", "list", "-c", "name").stdout.split() == ["n1", "bad", "slow"]

    # --wait off a terminal: each change once on stderr, the finished request on stdout.
    managed = run(service, "node", "manage", "n1", "--wait")
    assert managed.returncode == 0, managed.stderr
    lines = managed.stderr.splitlines()
    assert len(lines) == len(set(lines)) >= 2 and lines[-1].split(": ")[1].startswith("succeeded")
    finished = dict(line.split(None, 1) for line in managed.stdout.splitlines() if " " in line.strip())
    assert finished["state"] == "succeeded" and finished["target"] == "manage" and finished["finished_at"]
    as_json = json.loads(run(service, "node", "power", "on", "n1", "--wait", "-f", "json").stdout)
    assert as_json["state"] == "succeeded" and as_json["kind"] == "power"

    failed = run(service, "node", "manage", "bad", "--wait")
    assert failed.returncode == 1 and "no BMC" in failed.stderr
    assert "failed" in failed.stdout  # the finished request is printed all the same
    timed_out = run(service, "node", "manage", "slow", "--wait", "--timeout", "0.5")
    assert timed_out.returncode == 2 and "when --timeout passed; it goes on" in timed_out.stderr
    invalid = run(service, "node", "deploy", "n1", "--image", "http://x/y.img", "--checksum", "0" * 64)
    assert invalid.returncode == 3 and "invalid_transition" in invalid.stderr
    missing = run(service, "node", "show", "nope")
    assert missing.returncode == 3 and "node_not_found" in missing.stderr
    assert run(service, "node", "show", "n1", "-c", "nope").returncode == 64

    # Token discovery: any local `conductor up` is found by its URL alone.
    registry = tokenfile.registry_path()
    assert registry.stat().st_mode & 0o777 == 0o600
    # A shell that knows nothing of the data directory: the URL is enough.
    env = {k: v for k, v in os.environ.items() if k not in ("CONDUCTOR_DATA_DIR", "CONDUCTOR_URL", "CONDUCTOR_TOKEN")}
    env["CONDUCTOR_DATA_DIR"] = str(tmp_path / "another")  # the default data directory is not this service's
    found = run(service, "--url", service.url, "node", "list", "-f", "value", "-c", "name", env=env)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["n1", "bad", "slow"]
    # A wrong token is refused with a hint that says how to get one that works.
    refused = run(service, "--url", service.url, "--token", "cdt_wrong", "node", "list", env=env)
    assert refused.returncode == 3
    assert "was refused" in refused.stderr and "conductor token create --role operator" in refused.stderr
    service.stop()
    assert tokenfile.registered_token_file(service.url) is None  # its entry left with it
    gone = run(service, "--url", service.url, "node", "list", env=env)
    assert gone.returncode == 4 and "Cannot reach" in gone.stderr


def test_bulk_actions_under_the_throttle_and_wait_free(service_factory) -> None:
    service = service_factory(workers=2)
    names = [f"b{i}" for i in range(4)]
    for name in names:
        created = service.http.post(f"{service.url}/v1/nodes", timeout=10, json={
            "name": name, "driver": "fake", "driver_info": {"fake_delay": 0.1}})
        assert created.status_code == 201
    managed = run(service, "node", "manage", "--filter", "provision_state=enroll", "--wait")
    assert managed.returncode == 0, managed.stderr
    assert "manage: 4 succeeded" in managed.stderr
    assert json.loads(service.cli("node", "list", "-f", "json", "-c", "provision_state").stdout) == \
        [{"provision_state": "manageable"}] * 4

    # Over a client budget of 1 write a second, every node is still powered on: each 503 is
    # retried after its Retry-After, and said so.
    service.cli("throttle", "set", "client_write_rate=1", "client_write_burst=1")
    time.sleep(throttle_settings.LOCAL_TTL + 0.1)  # (until every API process applies it)
    powered = run(service, "node", "power", "on", "--all", "--wait", "--concurrency", "3", "-f", "json")
    assert powered.returncode == 0, powered.stderr
    assert "503 rate_limited; retrying in" in powered.stderr
    rows = json.loads(powered.stdout)
    assert sorted(r["node"] for r in rows) == names and {r["state"] for r in rows} == {"succeeded"}
    # With no time allowed for retries, what the throttle refuses is reported, and the exit is 3.
    hurried = run(service, "--max-retry-wait", "0", "node", "power", "off", *names)
    assert hurried.returncode == 3 and "rate_limited" in hurried.stdout and "refused" in hurried.stderr
    service.cli("throttle", "set", "client_write_rate=50", "client_write_burst=100")

    # A failure among several: exit 1, a summary, and a row per node (one unknown: refused).
    service.cli("node", "set", "b3", "-i", "fake_fail=fan")
    mixed = run(service, "node", "reboot", "b2", "b3", "nope", "--wait")
    assert mixed.returncode == 1
    assert "reboot: 1 failed, 1 refused, 1 succeeded" in mixed.stderr
    assert "b3: failed: fake driver: power power off failed: fan" in mixed.stderr

    # --wait-free: a busy node is waited for instead of refused.
    # (long enough for the CLI to start and find the node busy on a loaded machine)
    service.cli("node", "set", "b0", "-i", "fake_hang=12")
    busy = service.http.put(f"{service.url}/v1/nodes/b0/states/power", json={"target": "power off"}, timeout=10)
    refused = service.http.put(f"{service.url}/v1/nodes/b0/states/power", json={"target": "power on"}, timeout=10)
    assert refused.status_code == 409 and refused.json()["code"] == "transition_in_progress"
    waited = run(service, "node", "power", "on", "b0", "--wait-free", "--wait")
    assert waited.returncode == 0, waited.stderr
    assert f"b0: busy with {busy.json()['id']}; waiting for it to finish (--wait-free)" in waited.stderr
    assert service.wait_request(busy.json()["id"])["state"] == "succeeded"


def test_completion_script_from_the_installed_command(tmp_path: Path) -> None:
    """What the README tells a user to put in ~/.bashrc produces a script bash accepts."""
    env = dict(os.environ, _CONDUCTOR_COMPLETE="bash_source")
    script = subprocess.run([sys.executable, "-c", "from conductor.cli import main; main(prog_name='conductor')"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "_conductor_completion" in script.stdout
    (tmp_path / "completion.bash").write_text(script.stdout)
    checked = subprocess.run(["bash", "-n", str(tmp_path / "completion.bash")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
