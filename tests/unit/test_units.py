"""``conductor install-units``: the systemd units written, parsed back, and checked by systemd when it is here."""

from __future__ import annotations

import configparser
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from conductor.cli import main


def parse(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(path.read_text())
    return unit


def install(tmp_path: Path, *args: str) -> Path:
    units = tmp_path / "units"
    result = CliRunner().invoke(main, ["install-units", "--prefix", str(units), "--env-file",
                                       str(tmp_path / "conductor.env"), "--data-dir", str(tmp_path / "data"), *args])
    assert result.exit_code == 0, result.output
    return units


def test_the_units_of_a_host_run_each_process_under_systemd(tmp_path: Path) -> None:
    units = install(tmp_path, "--workers", "3", "--callback-workers", "1")
    assert sorted(p.name for p in units.iterdir()) == [
        "conductor-api.service", "conductor-callback-worker@.service", "conductor-db-upgrade.service",
        "conductor-worker@.service", "conductor.target"]
    target = parse(units / "conductor.target")
    assert target["Unit"]["Wants"].split() == [
        "conductor-api.service", "conductor-worker@1.service", "conductor-worker@2.service",
        "conductor-worker@3.service", "conductor-callback-worker@1.service"]
    assert target["Install"]["WantedBy"] == "multi-user.target"
    for name, command in (("conductor-api.service", "conductor api"),
                          ("conductor-worker@.service", "conductor worker --workers 1"),
                          ("conductor-callback-worker@.service", "conductor callback-worker --workers 1")):
        service = parse(units / name)["Service"]
        assert service["ExecStart"].endswith(f"-m {command}")
        assert Path(service["ExecStart"].split()[0]).exists()
        assert service["EnvironmentFile"] == str(tmp_path / "conductor.env")
        assert service["Restart"] == "on-failure" and service["KillMode"] == "control-group"
        assert service["User"] == "conductor" and service["StateDirectory"] == "conductor"
        assert parse(units / name)["Install"]["WantedBy"] == "conductor.target"
    # A worker may finish its step (job_timeout, 120 s) before systemd kills it.
    assert int(parse(units / "conductor-worker@.service")["Service"]["TimeoutStopSec"]) > 120
    upgrade = parse(units / "conductor-db-upgrade.service")
    assert upgrade["Service"]["Type"] == "oneshot" and "Install" not in upgrade
    # The environment file is a template, private, and never overwritten.
    env = tmp_path / "conductor.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600 and "DATABASE_URL" in env.read_text()
    env.write_text("DATABASE_URL=postgresql+psycopg://c@db/c\n")
    install(tmp_path)
    assert env.read_text() == "DATABASE_URL=postgresql+psycopg://c@db/c\n"


def test_roles_per_host_and_user_units(tmp_path: Path) -> None:
    units = install(tmp_path, "--user", "--no-api", "--workers", "2", "--callback-workers", "0")
    assert not (units / "conductor-api.service").exists()
    assert not (units / "conductor-callback-worker@.service").exists()
    target = parse(units / "conductor.target")
    assert target["Unit"]["Wants"].split() == ["conductor-worker@1.service", "conductor-worker@2.service"]
    assert target["Install"]["WantedBy"] == "default.target"
    assert "User" not in parse(units / "conductor-worker@.service")["Service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_finds_nothing_wrong_in_them(tmp_path: Path) -> None:
    units = install(tmp_path)
    files = sorted(str(p) for p in units.iterdir())
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *files], capture_output=True, text=True,
                            timeout=60, cwd=units)
    # systemd-analyze exits 0 on unknown keys and bad values too, with a warning: none is allowed.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr
