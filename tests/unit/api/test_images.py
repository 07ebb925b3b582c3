"""``/v1/images``: list, show, delete, download (Range); the agents' signed downloads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from conductor.api import schemas
from conductor.context import Context
from conductor.images import registry, tickets
from tests.conftest import bearer, drain, make_token
from tests.unit.engine.test_pxe import agent, boot_config, heartbeat, make_node, put, states, to_available

BODY = os.urandom(100_000)


@pytest.fixture
def image(ctx: Context, settings, tmp_path: Path) -> dict:  # type: ignore[no-untyped-def]
    source = tmp_path / "source.img"
    source.write_bytes(BODY)
    with ctx.db.session() as session:
        return schemas.Image().dump(registry.add(session, settings.images_path, "img", source))


def test_list_show_delete(client, anonymous, ctx, image, settings) -> None:  # type: ignore[no-untyped-def]
    listed = client.get("/v1/images").json
    assert [i["name"] for i in listed["images"]] == ["img"] and listed["next"] is None
    shown = client.get("/v1/images/img").json
    assert shown["sha256"] == hashlib.sha256(BODY).hexdigest() and shown["size"] == len(BODY)
    assert shown["compression"] == "none" and shown["image_size"] == len(BODY)
    assert anonymous.get("/v1/images").status_code == 401
    reader = bearer(make_token(ctx, "reader"))
    assert client.get("/v1/images/img", headers=reader).status_code == 200
    assert client.delete("/v1/images/img", headers=reader).status_code == 403
    missing = client.get("/v1/images/nope")
    assert missing.status_code == 404 and missing.json["code"] == "image_not_found"
    assert client.delete("/v1/images/img").status_code == 204
    assert client.get("/v1/images/img").status_code == 404
    assert list(settings.images_path.iterdir()) == []


def test_download_streams_with_ranges(client, anonymous, image) -> None:  # type: ignore[no-untyped-def]
    full = client.get("/v1/images/img/content")
    assert full.status_code == 200 and full.data == BODY
    assert full.headers["Content-Length"] == str(len(BODY)) and full.headers["Accept-Ranges"] == "bytes"
    part = client.get("/v1/images/img/content", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.data == BODY[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(BODY)}"
    tail = client.get("/v1/images/img/content", headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.data == BODY[-5:]
    beyond = client.get("/v1/images/img/content", headers={"Range": f"bytes={len(BODY) + 10}-"})
    assert beyond.status_code == 416
    assert anonymous.get("/v1/images/img/content").status_code == 401


def test_agents_download_with_the_signed_url_of_their_command(client, anonymous, conductor_ctx, settings,
                                                              image) -> None:  # type: ignore[no-untyped-def]
    make_node(client)
    make_node(client, "n2")
    to_available(client, anonymous, settings, conductor_ctx)
    put(client, "active", image_source="img")
    drain(conductor_ctx)
    token = boot_config(settings, client)["token"]
    params = heartbeat(anonymous, "n1", token).json["command"]["params"]
    path = params["image_source"].removeprefix(settings.agent_url)
    assert path.startswith(tickets.PREFIX)
    got = anonymous.get(path)  # no bearer token: the URL is the proof
    assert got.status_code == 200 and got.data == BODY
    assert hashlib.sha256(got.data).hexdigest() == params["image_checksum"]
    ranged = anonymous.get(path, headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206 and ranged.data == BODY[:100]
    # Altered, forged and foreign tickets are refused.
    payload, signature = path.removeprefix(tickets.PREFIX).split(".")
    n2 = client.get("/v1/nodes/n2").json["uuid"]
    forged = [
        payload + "." + signature[:-2] + ("AB" if signature.endswith("AA") else "AA"),  # (always altered)
        "x" + payload + "." + signature,
        "garbage",
        tickets.issue(settings, n2, settings.images_path / "whatever", 60),  # valid, but n2 is not deploying
        tickets.issue(settings, client.get("/v1/nodes/n1").json["uuid"], Path("/etc/passwd"), -1),  # expired
    ]
    for ticket in forged:
        refused = anonymous.get(tickets.PREFIX + ticket)
        assert refused.status_code == 401 and refused.json["code"] == "invalid_image_ticket", ticket
        assert "WWW-Authenticate" not in refused.headers
    # The URL dies with the command, like the agent token.
    agent_done = heartbeat(anonymous, "n1", token, command_result={
        "id": heartbeat(anonymous, "n1", token).json["command"]["id"], "status": "succeeded"})
    assert agent_done.status_code == 200
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "active"
    late = anonymous.get(path)
    assert late.status_code == 401 and late.json["code"] == "invalid_image_ticket"


def test_an_image_being_deployed_cannot_be_deleted(client, anonymous, conductor_ctx, settings, image) -> None:  # type: ignore[no-untyped-def]
    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)
    request_id = put(client, "active", image_source="img")
    drain(conductor_ctx)
    refused = client.delete("/v1/images/img")
    assert refused.status_code == 409 and refused.json["code"] == "image_in_use"
    assert refused.json["request_ids"] == [request_id]
    agent(anonymous, settings, client)
    drain(conductor_ctx)
    assert client.delete("/v1/images/img").status_code == 204


def test_cli_image_add_registers_on_the_conductor_host(ctx, settings, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from conductor.cli import main

    monkeypatch.setenv("DATABASE_URL", settings.sqlalchemy_url)
    source = tmp_path / "disk.raw"
    source.write_bytes(BODY)
    runner = CliRunner()
    added = runner.invoke(main, ["--json", "image", "add", "disk", str(source), "--data-dir", str(settings.data_dir),
                                 "--checksum", hashlib.sha256(BODY).hexdigest()])
    assert added.exit_code == 0, added.output
    assert '"sha256": "' + hashlib.sha256(BODY).hexdigest() in added.output
    with ctx.db.session() as session:
        assert registry.path_of(settings.images_path, registry.get(session, "disk")).read_bytes() == BODY
    refused = runner.invoke(main, ["image", "add", "other", str(source), "--data-dir", str(settings.data_dir),
                                   "--checksum", "0" * 64])
    assert refused.exit_code == 1 and "Checksum mismatch" in refused.output
    taken = runner.invoke(main, ["image", "add", "disk", str(source), "--data-dir", str(settings.data_dir)])
    assert taken.exit_code == 1 and "already registered" in taken.output


def test_under_gunicorn_downloads_prove_the_worker_alive(client, image, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """gunicorn kills a sync worker silent for its timeout: a long download proves progress instead."""
    from conductor.api import images as image_api

    proofs: list[float] = []
    monkeypatch.setattr(image_api, "_notify", lambda: proofs.append(1.0))
    monkeypatch.setattr(image_api, "_PIECE", 10_000)
    monkeypatch.setattr(image_api, "_PROOF_INTERVAL", 0.0)
    full = client.get("/v1/images/img/content")
    assert full.status_code == 200 and full.data == BODY and full.headers["Content-Length"] == str(len(BODY))
    assert len(proofs) == 10  # one per piece the client took
    part = client.get("/v1/images/img/content", headers={"Range": "bytes=5-99999"})
    assert part.status_code == 206 and part.data == BODY[5:]
    assert client.head("/v1/images/img/content").status_code == 200
