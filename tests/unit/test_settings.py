"""Settings: defaults, file, environment, overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from conductor.exceptions import InvalidInput
from conductor.settings import Settings, default_data_dir, load


def test_defaults_need_no_configuration(tmp_path: Path) -> None:
    settings = load(env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert settings.data_dir == tmp_path / "xdg" / "conductor"
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path / 'xdg' / 'conductor' / 'conductor.sqlite'}"
    assert settings.redis_url == ""
    assert settings.api_port == 6385


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "conductor.toml").write_text('api_port = 7000\nworkers = 3\nlog_level = "DEBUG"\n')
    env = {"CONDUCTOR_DATA_DIR": str(tmp_path), "CONDUCTOR_WORKERS": "4",
           "DATABASE_URL": "postgresql+psycopg://db/x", "REDIS_URL": "redis://r:6379/1"}
    settings = load({"api_port": 7100}, env=env)
    assert (settings.api_port, settings.workers, settings.log_level) == (7100, 4, "DEBUG")
    assert settings.sqlalchemy_url == "postgresql+psycopg://db/x"
    assert settings.redis_url == "redis://r:6379/1"


def test_explicit_config_file(tmp_path: Path) -> None:
    config = tmp_path / "other.toml"
    config.write_text("automated_clean = false\nheartbeat_timeout = 12.5\n")
    settings = load(env={"CONDUCTOR_CONFIG": str(config), "CONDUCTOR_DATA_DIR": str(tmp_path)})
    assert settings.automated_clean is False and settings.heartbeat_timeout == 12.5


@pytest.mark.parametrize(("key", "value"), [("CONDUCTOR_WORKERS", "many"), ("CONDUCTOR_AUTOMATED_CLEAN", "maybe")])
def test_bad_values_are_clear_errors(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        load(env={key: value, "CONDUCTOR_DATA_DIR": str(tmp_path)})
    assert key.removeprefix("CONDUCTOR_").lower() in info.value.message


def test_unknown_file_key_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "conductor.toml").write_text("wrokers = 2\n")
    with pytest.raises(InvalidInput, match="wrokers"):
        load(env={"CONDUCTOR_DATA_DIR": str(tmp_path)})


def test_settings_are_frozen_and_replace_coerces(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(AttributeError):
        settings.workers = 2  # type: ignore[misc]
    assert settings.replace(workers="2").workers == 2


def test_data_dir_env_overrides_xdg(tmp_path: Path) -> None:
    assert default_data_dir({"CONDUCTOR_DATA_DIR": str(tmp_path), "XDG_DATA_HOME": "/x"}) == tmp_path
