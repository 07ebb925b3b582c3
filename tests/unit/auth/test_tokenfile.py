"""The local admin token file and which URLs it is sent to."""

from __future__ import annotations

from pathlib import Path

from conductor.auth import tokenfile
from conductor.cli.client import resolve_token


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
