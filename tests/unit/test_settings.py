"""Settings: defaults, file, environment, overrides, errors, groups, renamed settings."""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from conductor.cli import main
from conductor.exceptions import InvalidInput
from conductor.settings import RENAMED, Group, Settings, default_data_dir, load


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


# --- groups --------------------------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def test_groups_cover_every_field_exactly_once() -> None:
    names = [name for group in Group for name in Settings.group(group)]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(Settings))
    assert len(names) == len(set(names))
    assert Settings.group("webhooks") == tuple(n for n in names if n.startswith("callback_"))


def test_an_unknown_group_is_an_error() -> None:
    with pytest.raises(ValueError):
        Settings.group("callbacks")


def test_grouped_shows_values_by_group_and_masks_secrets(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://u:pw@db/x", api_port=7000)
    shown = settings.grouped()
    assert list(shown) == list(Group)
    assert shown[Group.API]["api_port"] == 7000
    assert shown[Group.STORAGE]["database_url"] == "******"
    assert shown[Group.STORAGE]["redis_url"] == ""  # unset: nothing to hide
    assert settings.grouped(show_secrets=True)[Group.STORAGE]["database_url"].endswith("@db/x")


def test_the_readme_tables_follow_the_groups() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Configuration"):text.index("\n## ", text.index("## Configuration") + 1)]
    documented: dict[str, list[str]] = {}
    group = None
    for line in section.splitlines():
        label = re.match(r"\*\*(\w+)\*\*", line)
        if label:
            group = label.group(1)
            documented[group] = []
        elif group and line.startswith("| `"):
            documented[group] += re.findall(r"`(\w+)`", line.split("|")[1])
    assert documented == {g.value: list(Settings.group(g)) for g in Group}


# --- settings renamed: "callback" is for webhooks, the deploy waits on its agent ----------

RENAMES = sorted(RENAMED.items())


def test_the_agent_waits_were_renamed() -> None:
    assert RENAMED == {"deploy_callback_timeout": "deploy_agent_timeout",
                       "clean_callback_timeout": "clean_agent_timeout",
                       "inspect_callback_timeout": "inspect_agent_timeout"}


@pytest.mark.parametrize(("old", "new"), RENAMES)
def test_an_old_environment_variable_works_and_warns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, old: str, new: str) -> None:
    with caplog.at_level(logging.WARNING, logger="conductor.settings"):
        settings = load(env={f"CONDUCTOR_{old.upper()}": "42", "CONDUCTOR_DATA_DIR": str(tmp_path)})
    assert getattr(settings, new) == 42.0
    assert f"CONDUCTOR_{old.upper()} is deprecated" in caplog.text and f"CONDUCTOR_{new.upper()}" in caplog.text


@pytest.mark.parametrize(("old", "new"), RENAMES)
def test_an_old_file_key_works_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture, old: str, new: str) -> None:
    (tmp_path / "conductor.toml").write_text(f"{old} = 42\n")
    with caplog.at_level(logging.WARNING, logger="conductor.settings"):
        settings = load(env={"CONDUCTOR_DATA_DIR": str(tmp_path)})
    assert getattr(settings, new) == 42.0
    assert f"{old} (in {tmp_path / 'conductor.toml'}) is deprecated" in caplog.text


@pytest.mark.parametrize(("old", "new"), RENAMES)
def test_an_old_keyword_works_and_warns(tmp_path: Path, old: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*use {new}") as caught:
        loaded = load({old: 42}, env={"CONDUCTOR_DATA_DIR": str(tmp_path)})
    assert getattr(loaded, new) == 42.0
    assert caught[0].filename == __file__  # pointing at the caller
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*use {new}") as caught:
        replaced = Settings(data_dir=tmp_path).replace(**{old: "7"})
    assert getattr(replaced, new) == 7.0
    assert caught[0].filename == __file__


@pytest.mark.parametrize(("old", "new"), RENAMES)
def test_an_old_attribute_reads_the_new_setting_and_warns(tmp_path: Path, old: str, new: str) -> None:
    settings = Settings(data_dir=tmp_path).replace(**{new: 5})
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*use {new}"):
        assert getattr(settings, old) == 5.0


def test_the_new_names_work_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "conductor.toml").write_text("clean_agent_timeout = 3\n")
    env = {"CONDUCTOR_DEPLOY_AGENT_TIMEOUT": "1", "CONDUCTOR_DATA_DIR": str(tmp_path)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings = load({"inspect_agent_timeout": 2}, env=env).replace(wait_check_interval=0.5)
    assert (settings.deploy_agent_timeout, settings.inspect_agent_timeout, settings.clean_agent_timeout) == (1, 2, 3)
    assert "deprecated" not in caplog.text


def test_given_both_names_the_new_one_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = {"CONDUCTOR_DEPLOY_CALLBACK_TIMEOUT": "1", "CONDUCTOR_DEPLOY_AGENT_TIMEOUT": "2",
           "CONDUCTOR_DATA_DIR": str(tmp_path)}
    with caplog.at_level(logging.WARNING, logger="conductor.settings"):
        assert load(env=env).deploy_agent_timeout == 2.0
    assert "CONDUCTOR_DEPLOY_CALLBACK_TIMEOUT is deprecated and ignored" in caplog.text


def test_an_old_name_keeps_its_source_precedence(tmp_path: Path) -> None:
    (tmp_path / "conductor.toml").write_text("deploy_agent_timeout = 3\n")
    env = {"CONDUCTOR_DEPLOY_CALLBACK_TIMEOUT": "1", "CONDUCTOR_DATA_DIR": str(tmp_path)}
    assert load(env=env).deploy_agent_timeout == 1.0  # the environment still beats the file


# --- conductor settings --------------------------------------------------------------------


def test_conductor_settings_prints_every_group_as_a_config_file(tmp_path: Path) -> None:
    env = {"CONDUCTOR_DATA_DIR": str(tmp_path), "CONDUCTOR_API_PORT": "7001", "CONDUCTOR_AUTOMATED_CLEAN": "no",
           "DATABASE_URL": "postgresql+psycopg://u:pw@db/x", "CONDUCTOR_CONFIG": ""}
    hidden = CliRunner().invoke(main, ["settings"], env=env)
    assert hidden.exit_code == 0, hidden.output
    assert "pw" not in hidden.output and "# database_url = (set; --show-secrets prints it)" in hidden.output
    assert [line[2:] for line in hidden.output.splitlines() if line[2:] in set(Group)] == list(Group)
    shown = CliRunner().invoke(main, ["settings", "--show-secrets"], env=env)
    # What it prints, read back as a config file, is the same settings.
    assert load(tomllib.loads(shown.output), env={}) == load(env=env)


def test_conductor_settings_of_one_group(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["settings", "--group", "webhooks", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert set(tomllib.loads(result.output)) == set(Settings.group("webhooks"))
    wrong = CliRunner().invoke(main, ["settings", "--group", "callbacks"])
    assert wrong.exit_code == 64 and "webhooks" in wrong.output
