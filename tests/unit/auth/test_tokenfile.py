"""The local admin token file and which URLs it is sent to."""

from __future__ import annotations

import json
from pathlib import Path

from conductor.auth import tokenfile
from conductor.cli.client import Credentials, find_token, resolve_token, unauthorized_hint


def serve(data_dir: Path, url: str, secret: str = "cdt_local") -> None:
    tokenfile.write_secret(data_dir / "admin.token", secret)
    (data_dir / "api.url").write_text(url + "\n")


def test_written_owner_only(tmp_path) -> None:
    tokenfile.write_secret(tmp_path / "admin.token", "cdt_x")
    assert (tmp_path / "admin.token").stat().st_mode & 0o777 == 0o600
    assert tokenfile.read_secret(tmp_path / "admin.token") == "cdt_x"
    assert tokenfile.read_secret(tmp_path / "missing") is None


def test_sent_only_to_the_url_conductor_up_serves(tmp_path) -> None:
    serve(tmp_path, "http://127.0.0.1:6385")
    for same in ("http://127.0.0.1:6385", "http://localhost:6385/", "http://127.0.0.1:6385/v1"):
        assert tokenfile.local_token_for(same, tmp_path) == "cdt_local", same
    for other in ("http://127.0.0.1:6386", "https://127.0.0.1:6385", "http://10.0.0.1:6385", "http://evil:6385"):
        assert tokenfile.local_token_for(other, tmp_path) is None, other


def test_a_server_on_every_address_is_local_too(tmp_path) -> None:
    serve(tmp_path, "http://0.0.0.0:6385")
    assert tokenfile.local_token_for("http://127.0.0.1:6385", tmp_path) == "cdt_local"


def test_no_service_recorded_means_no_token(tmp_path) -> None:
    tokenfile.write_secret(tmp_path / "admin.token", "cdt_local")
    assert tokenfile.local_token_for("http://127.0.0.1:6385", tmp_path) is None


def test_an_explicit_token_wins(tmp_path, monkeypatch) -> None:
    serve(tmp_path, "http://127.0.0.1:6385")
    monkeypatch.setenv("CONDUCTOR_DATA_DIR", str(tmp_path))
    assert resolve_token("http://127.0.0.1:6385", None) == "cdt_local"
    assert resolve_token("http://127.0.0.1:6385", "cdt_mine") == "cdt_mine"
    assert resolve_token("http://127.0.0.1:9999", None) is None


def test_the_registry_finds_the_token_of_any_data_directory(tmp_path, monkeypatch) -> None:
    registry = tmp_path / "config" / "conductor" / tokenfile.REGISTRY_NAME
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("CONDUCTOR_DATA_DIR", str(tmp_path / "default"))  # not where the service runs
    assert tokenfile.registry_path() == registry
    elsewhere = tmp_path / "elsewhere"
    serve(elsewhere, "http://127.0.0.1:6500", "cdt_elsewhere")
    assert resolve_token("http://127.0.0.1:6500", None) is None
    tokenfile.register("http://127.0.0.1:6500", elsewhere / "admin.token")
    assert registry.stat().st_mode & 0o777 == 0o600 and registry.parent.stat().st_mode & 0o777 == 0o700
    assert "cdt_" not in registry.read_text()  # paths only, never a secret
    assert resolve_token("http://localhost:6500", None) == "cdt_elsewhere"
    found = find_token("http://127.0.0.1:6500", None)
    assert found.source == "local" and found.token_file == (elsewhere / "admin.token").resolve()
    assert resolve_token("http://127.0.0.1:6501", None) is None


def test_a_stale_entry_is_ignored_and_only_its_owner_removes_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("CONDUCTOR_DATA_DIR", raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    serve(first, "http://127.0.0.1:6500", "cdt_first")
    tokenfile.register("http://127.0.0.1:6500", first / "admin.token")
    # The first data directory is now served on another port: its old entry is stale.
    (first / "api.url").write_text("http://127.0.0.1:6600\n")
    assert tokenfile.registered_token_file("http://127.0.0.1:6500") is None
    # A second service takes the URL over; the first one stopping leaves it alone.
    serve(second, "http://127.0.0.1:6500", "cdt_second")
    tokenfile.register("http://127.0.0.1:6500", second / "admin.token")
    tokenfile.unregister("http://127.0.0.1:6500", first / "admin.token")
    assert resolve_token("http://127.0.0.1:6500", None) == "cdt_second"
    tokenfile.unregister("http://127.0.0.1:6500", second / "admin.token")
    assert resolve_token("http://127.0.0.1:6500", None) is None


def test_a_damaged_registry_is_no_registry(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    tokenfile.registry_path().parent.mkdir(parents=True)
    for content in ("not json", "[]", '{"services": [{"url": 1}]}'):
        tokenfile.registry_path().write_text(content)
        assert tokenfile.registered_token_file("http://127.0.0.1:6385") is None
    tokenfile.register("http://127.0.0.1:6385", tmp_path / "d" / "admin.token")  # rewritten whole
    assert json.loads(tokenfile.registry_path().read_text())["services"][0]["url"] == "http://127.0.0.1:6385"


def test_the_401_hint_says_how_to_get_a_token_that_works() -> None:
    assert "No token was sent" in unauthorized_hint(Credentials(None, "none"))
    assert "--token or CONDUCTOR_TOKEN) was refused" in unauthorized_hint(Credentials("x", "given"))
    local = unauthorized_hint(Credentials("x", "local", Path("/d/admin.token")))
    assert "/d/admin.token was refused" in local
    for hint in (local, unauthorized_hint(Credentials(None, "none"))):
        assert "conductor token create --role operator" in hint and "--direct" in hint
