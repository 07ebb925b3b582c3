"""`conductor up`'s life: its tree dies with it, one per data dir, its own API, workers' names kept."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from conductor.procs import ProcessRecord
from tests import processes
from tests.conftest import Service, free_port


def up(service, port: int) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """Run another `conductor up` with ``service``'s settings on ``port``; it is expected to refuse."""
    argv = [sys.executable, "-m", "conductor", "up", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(argv, env=service.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def kill_supervisor(service, api_processes: int = 0) -> list[ProcessRecord]:  # type: ignore[no-untyped-def]
    """SIGKILL `conductor up` alone; returns the processes it had started.

    ``up`` is ready once the API answers, which one gunicorn worker can do
    while its master is still forking the next (it waits up to 0.1 s
    between forks): first wait for ``api_processes`` API processes.
    """
    deadline = time.monotonic() + 10
    while sum("conductor api" in r.name for r in service.tree()) < api_processes and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = service.tree()[1:]
    service.proc.send_signal(signal.SIGKILL)
    service.proc.wait()
    return tree


def test_killing_the_supervisor_takes_its_whole_tree_down(service_factory) -> None:
    # Embedded Redis (no REDIS_URL): it must go too.
    service = service_factory(workers=2, env={"REDIS_URL": ""})
    tree = kill_supervisor(service, api_processes=3)
    commands = [r.name for r in tree]
    assert sum("redis-server" in c for c in commands) == 1, commands
    assert sum("conductor api" in c for c in commands) == 3, commands  # gunicorn's master and 2 workers
    assert sum("conductor worker" in c for c in commands) == 2, commands
    assert sum("conductor callback-worker" in c for c in commands) == 1, commands
    left = processes.wait_gone(tree, 60)
    processes.kill(left)
    assert not left, f"still running after the supervisor's SIGKILL: {processes.describe(left)}"


def test_the_api_workers_die_with_their_master(service_factory) -> None:
    service = service_factory(api_workers=2)
    (api,) = [r for r in service.tree() if r.name.startswith(f"{sys.executable} -m conductor api")
              and processes.descendants(r.pid)]
    deadline = time.monotonic() + 10  # the master may still be forking its second worker
    while len(workers := processes.descendants(api.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2, workers
    os.kill(api.pid, signal.SIGKILL)  # the supervisor reaps it and starts another
    left = processes.wait_gone(workers, 60)
    processes.kill(left)
    assert not left, f"gunicorn workers outlived their master: {processes.describe(left)}"


def test_a_second_up_on_a_data_dir_in_use_refuses_and_starts_once_the_holder_is_dead(service_factory) -> None:
    first = service_factory()
    refused = up(first, free_port())
    assert refused.returncode == 1
    assert f"The data directory {first.settings.data_dir} is in use by another `conductor up` " \
           f"(pid {first.proc.pid})" in refused.stderr
    assert first.http.get(f"{first.url}/v1/nodes", timeout=10).status_code == 200  # untouched
    old_workers = {c["pid"] for c in first.http.get(f"{first.url}/v1/conductors", timeout=10).json()["conductors"]}

    processes.wait_gone(kill_supervisor(first), 60)
    second = service_factory()
    conductors = second.http.get(f"{second.url}/v1/conductors", timeout=10).json()["conductors"]
    # The new worker took the dead one's name back: one conductor, not two.
    assert len(conductors) == 1 and conductors[0]["alive"], conductors
    assert conductors[0]["pid"] not in old_workers


def test_a_new_up_stops_the_recorded_orphans_of_a_killed_one_and_nothing_else(settings, service_factory) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    orphan = subprocess.Popen(sleeper, start_new_session=True)
    bystander = subprocess.Popen(sleeper, start_new_session=True)
    try:
        records = [ProcessRecord.of("worker-0", orphan.pid), ProcessRecord.of("api", bystander.pid)]
        assert records[0] and records[1]
        # The bystander reuses a recorded pid: its start time is not the recorded one.
        stale = ProcessRecord(records[1].name, records[1].pid, records[1].started - 1, records[1].boot)
        (settings.data_dir / "conductor.pids").write_text(json.dumps([vars(records[0]), vars(stale)]))
        service_factory()
        assert orphan.wait(60) == -signal.SIGTERM
        assert bystander.poll() is None
        assert f"Stopped worker-0 (pid {orphan.pid}), left running by a `conductor up` that was killed" \
            in (settings.data_dir / "up.log").read_text()
    finally:
        for proc in (orphan, bystander):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_a_foreign_listener_on_the_port_is_a_clear_error(settings) -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        refused = up(Service(settings), port)
    assert refused.returncode == 1
    assert f"Port {port} on 127.0.0.1 is in use by another process (not this conductor)" in refused.stderr


def test_a_restarted_worker_takes_back_its_name_and_fails_what_its_previous_life_left(service_factory) -> None:
    # Heartbeats so slow that neither the sweep nor the "missed heartbeats"
    # rule can be what frees the name or fails the request here.
    service = service_factory(env={"CONDUCTOR_HEARTBEAT_INTERVAL": "60", "CONDUCTOR_HEARTBEAT_TIMEOUT": "600"})
    http, url = service.http, service.url
    http.post(f"{url}/v1/nodes", json={"name": "victim", "driver": "fake", "driver_info": {"fake_hang": 60}},
              timeout=10)
    response = http.put(f"{url}/v1/nodes/victim/states/provision", json={"target": "manage"}, timeout=10)
    request_id = response.json()["id"]
    deadline = time.monotonic() + 30
    while (holder := http.get(f"{url}/v1/requests/{request_id}", timeout=5).json()["conductor"]) is None:
        assert time.monotonic() < deadline, "no conductor took the request"
        time.sleep(0.05)
    (before,) = http.get(f"{url}/v1/conductors", timeout=5).json()["conductors"]
    assert before["name"] == holder
    os.kill(before["pid"], signal.SIGKILL)

    finished = service.wait_request(request_id, timeout=90)  # the supervisor restarts the worker
    assert finished["state"] == "failed"
    assert f"Conductor {holder} stopped" in finished["error"]
    (after,) = requests.get(f"{url}/v1/conductors", headers=service.auth_headers, timeout=5).json()["conductors"]
    assert after["name"] == holder and after["pid"] != before["pid"] and after["alive"]


def test_a_stopped_child_s_group_is_killed_before_the_child_is_reaped(tmp_path, monkeypatch) -> None:
    """Killing the group of a reaped child could hit an unrelated group that got its pid since."""
    from conductor.supervisor import Child

    sleeper = "import time; time.sleep(600)"
    spawn = f"import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', {sleeper!r}]).pid)"
    child = Child("leaver", [sys.executable, "-c", spawn], tmp_path / "leaver.log", env=dict(os.environ))
    seen = []
    real_killpg = os.killpg

    def killpg(pgid: int, signum: int) -> None:
        stat = Path(f"/proc/{pgid}/stat").read_text() if os.path.exists(f"/proc/{pgid}/stat") else ""
        left = ProcessRecord.of("left behind", int(child.log.read_text()))
        seen.append((pgid, stat[stat.rindex(")") + 2:].split()[0] if stat else "reaped", left))
        real_killpg(pgid, signum)

    monkeypatch.setattr(os, "killpg", killpg)
    child.start()
    child.wait_or_kill(time.monotonic() + 60)  # it exits at once, leaving its own child in its group
    ((pgid, state, left),) = seen
    assert pgid == child.proc.pid and child.proc.returncode == 0
    assert state == "Z"  # still a zombie: its pid (the group's id) was ours to use
    assert left is not None and not processes.wait_gone([left], 30)
