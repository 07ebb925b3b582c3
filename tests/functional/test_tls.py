"""HTTPS: the API served with a certificate (and optionally asking for client certificates), the CLI's
trust in it, and the refusal to send a token in clear text off the machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conductor.cli import exits
from conductor.cli.client import Client, PlainHttpRefused, Untrusted
from conductor.context import Context
from conductor.settings import Settings
from tests.conftest import free_port, make_token
from tests.tls_helpers import Pki, make_pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    return make_pki(directory)


class HttpsApi:
    """``conductor api`` in a subprocess, with the TLS settings given in its environment."""

    def __init__(self, settings: Settings, tls_env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.env = {
            **os.environ, "CONDUCTOR_DATA_DIR": str(settings.data_dir), "DATABASE_URL": settings.sqlalchemy_url,
            "REDIS_URL": settings.redis_url, "CONDUCTOR_REDIS_NAMESPACE": settings.redis_namespace, **tls_env,
        }
        self.log = settings.data_dir / "api.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conductor", "api", "--port", str(self.port), "--api-workers", "1"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_listening(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the API did not listen: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def https_api(settings: Settings, pki: Pki) -> Iterator[HttpsApi]:
    api = HttpsApi(settings, {"CONDUCTOR_TLS_CERT_FILE": str(pki.server_cert),
                              "CONDUCTOR_TLS_KEY_FILE": str(pki.server_key)})
    try:
        api.wait_listening()
        yield api
    finally:
        api.stop()


def cli(api: HttpsApi, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in api.env.items() if not k.startswith("CONDUCTOR_TLS")}
    return subprocess.run([sys.executable, "-m", "conductor", "--url", api.url, *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_api_serves_https_and_the_cli_trusts_only_the_ca_it_is_given(
        https_api: HttpsApi, pki: Pki, ctx: Context, tmp_path: Path) -> None:
    token = make_token(ctx, "admin")
    answer = requests.get(f"{https_api.url}/v1/nodes", headers={"Authorization": f"Bearer {token}"},
                          verify=str(pki.ca), timeout=10)
    assert answer.status_code == 200 and answer.json()["nodes"] == []
    # Plain HTTP on the same port is not served.
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{https_api.port}/", timeout=5)

    listed = cli(https_api, "--token", token, "--ca-cert", str(pki.ca), "node", "list", "-f", "json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "[]"
    # CONDUCTOR_CA_CERT, and the option after the subcommand.
    again = cli(https_api, "node", "list", "--token", token, "--ca-cert", str(pki.ca))
    assert again.returncode == 0, again.stderr

    untrusted = cli(https_api, "--token", token, "node", "list")
    assert untrusted.returncode == exits.UNREACHABLE
    assert "is not trusted" in untrusted.stderr and "--ca-cert" in untrusted.stderr

    # Another CA's bundle does not make the certificate trusted either.
    other = tmp_path / "other"
    other.mkdir()
    stranger = make_pki(other, "another CA")
    refused = cli(https_api, "--token", token, "--ca-cert", str(stranger.ca), "node", "list")
    assert refused.returncode == exits.UNREACHABLE and "is not trusted" in refused.stderr
    missing = cli(https_api, "--token", token, "--ca-cert", str(tmp_path / "nope.pem"), "node", "list")
    assert missing.returncode == exits.UNREACHABLE and "nope.pem" in missing.stderr

    with pytest.raises(Untrusted, match="is not trusted"):
        Client(https_api.url, token=token).call("GET", "/v1/nodes")


def test_with_a_client_ca_a_client_without_a_certificate_is_refused(settings: Settings, pki: Pki,
                                                                     ctx: Context) -> None:
    api = HttpsApi(settings, {"CONDUCTOR_TLS_CERT_FILE": str(pki.server_cert),
                              "CONDUCTOR_TLS_KEY_FILE": str(pki.server_key),
                              "CONDUCTOR_TLS_CLIENT_CA_FILE": str(pki.ca)})
    try:
        api.wait_listening()
        token = make_token(ctx, "admin")
        headers = {"Authorization": f"Bearer {token}"}
        answer = requests.get(f"{api.url}/v1/nodes", headers=headers, verify=str(pki.ca), timeout=10,
                              cert=(str(pki.client_cert), str(pki.client_key)))
        assert answer.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{api.url}/v1/nodes", headers=headers, verify=str(pki.ca), timeout=10)
    finally:
        api.stop()


def test_the_api_refuses_to_start_on_tls_settings_that_cannot_work(settings: Settings, pki: Pki) -> None:
    env = {**os.environ, "CONDUCTOR_DATA_DIR": str(settings.data_dir), "DATABASE_URL": settings.sqlalchemy_url,
           "REDIS_URL": settings.redis_url}
    cases = [
        ({"CONDUCTOR_TLS_CERT_FILE": str(pki.server_cert)}, "tls_key_file together"),
        ({"CONDUCTOR_TLS_CLIENT_CA_FILE": str(pki.ca)}, "needs tls_cert_file"),
        # The client's key does not match the server's certificate.
        ({"CONDUCTOR_TLS_CERT_FILE": str(pki.server_cert), "CONDUCTOR_TLS_KEY_FILE": str(pki.client_key)},
         "Cannot use tls_cert_file"),
    ]
    for tls_env, said in cases:
        result = subprocess.run([sys.executable, "-m", "conductor", "api", "--port", str(free_port())],
                                env={**env, **tls_env}, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and said in result.stderr, (tls_env, result.stderr)


def test_a_token_is_not_sent_over_plain_http_to_another_host() -> None:
    with pytest.raises(PlainHttpRefused, match="plain HTTP"):
        Client("http://192.0.2.10:6385", token="cdt_secret").call("GET", "/v1/nodes")
    # Loopback, https, no token, or the operator's explicit choice: allowed.
    for client in (Client("http://127.0.0.1:6385", token="cdt_secret"),
                   Client("http://[::1]:6385", token="cdt_secret"),
                   Client("http://localhost:6385", token="cdt_secret"),
                   Client("https://192.0.2.10:6385", token="cdt_secret"),
                   Client("http://192.0.2.10:6385"),
                   Client("http://192.0.2.10:6385", token="cdt_secret", allow_plain_http=True)):
        client.check_transport()


def test_conductor_up_serves_mutual_tls_and_its_cli_finds_the_local_token(settings: Settings, pki: Pki) -> None:
    port = free_port()
    env = {**os.environ, "CONDUCTOR_DATA_DIR": str(settings.data_dir), "DATABASE_URL": settings.sqlalchemy_url,
           "REDIS_URL": settings.redis_url, "CONDUCTOR_REDIS_NAMESPACE": settings.redis_namespace,
           "CONDUCTOR_TLS_CERT_FILE": str(pki.server_cert), "CONDUCTOR_TLS_KEY_FILE": str(pki.server_key),
           "CONDUCTOR_TLS_CLIENT_CA_FILE": str(pki.ca)}
    log = settings.data_dir / "up.log"
    with open(log, "ab") as out:
        up = subprocess.Popen([sys.executable, "-m", "conductor", "up", "--port", str(port), "--workers", "1",
                               "--api-workers", "1", "--callback-workers", "0"],
                              env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while f"Conductor API   {url}" not in log.read_text():
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert (settings.data_dir / "api.url").read_text().strip() == url
        client_env = {k: v for k, v in env.items() if not k.startswith("CONDUCTOR_TLS")}

        def conductor(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "conductor", "--url", url, "--ca-cert", str(pki.ca), *args],
                                  env=client_env, capture_output=True, text=True, timeout=60)

        listed = conductor("node", "list", "-f", "json", "--client-cert", str(pki.client_cert),
                           "--client-key", str(pki.client_key))
        assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stderr
        refused = conductor("node", "list")
        assert refused.returncode == exits.UNREACHABLE and "--client-cert" in refused.stderr, refused.stderr
    finally:
        up.terminate()
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
