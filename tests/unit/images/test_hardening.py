"""What a deploy's image may not do: be swapped after preparation, hang, be zstd, leak a signed URL.

Deploys go through the pxe deploy interface and the real API (as in
test_deploy_images.py); the test plays the agent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conductor.bootstrap import build_context
from conductor.engine import conductors
from conductor.images import cache, registry, sources, tickets
from tests.conftest import drain
from tests.unit.engine.test_pxe import boot_config, make_node, put, states, to_available
from tests.unit.images.test_deploy_images import RAW, command_of, sha

ZSTD = b"\x28\xb5\x2f\xfd" + os.urandom(4096)


def _deployed_file(client, anonymous, conductor_ctx, settings, path: Path) -> str:  # type: ignore[no-untyped-def]
    """Deploy ``path`` as a file:// image; the agent's download path (under the API)."""
    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)
    put(client, "active", image_source=path.as_uri())
    drain(conductor_ctx)
    url: str = command_of(client, anonymous, settings)["params"]["image_source"]
    return url.removeprefix(settings.agent_url)


def test_a_file_swapped_for_a_symlink_after_preparation_is_not_served(client, anonymous, conductor_ctx, settings,
                                                                      image_files: Path) -> None:  # type: ignore[no-untyped-def]
    path = image_files / "disk.raw"
    path.write_bytes(RAW)
    url = _deployed_file(client, anonymous, conductor_ctx, settings, path)
    ranged = anonymous.get(url, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.data == RAW[10:20]
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(RAW)}"
    secret = settings.data_dir / "secret.key"  # the key tickets are signed with
    key = secret.read_bytes()
    path.unlink()
    path.symlink_to(secret)
    served = anonymous.get(url)
    assert served.status_code == 404 and key not in served.data
    assert anonymous.get(url, headers={"Range": "bytes=0-3"}).status_code == 404


def test_a_file_replaced_after_preparation_is_not_served(client, anonymous, conductor_ctx, settings,
                                                         image_files: Path) -> None:  # type: ignore[no-untyped-def]
    path = image_files / "disk.raw"
    path.write_bytes(RAW)
    url = _deployed_file(client, anonymous, conductor_ctx, settings, path)
    assert anonymous.get(url).data == RAW
    other = image_files / "other.raw"
    other.write_bytes(b"x" * len(RAW))
    os.replace(other, path)  # a regular file, same size, another inode
    served = anonymous.get(url)
    assert served.status_code == 404 and "replaced" in served.json["message"]


def test_a_registered_image_replaced_by_a_symlink_is_not_served(client, settings, tmp_path: Path,
                                                                ctx) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "source.img"
    source.write_bytes(RAW)
    with ctx.db.session() as session:
        image = registry.add(session, settings.images_path, "img", source)
        stored = registry.path_of(settings.images_path, image)
    assert client.get("/v1/images/img/content").data == RAW
    target = tmp_path / "elsewhere.bin"
    target.write_bytes(b"not the image")
    stored.unlink()
    stored.symlink_to(target)
    served = client.get("/v1/images/img/content")
    assert served.status_code == 404 and b"not the image" not in served.data


def test_a_nul_in_a_file_url_is_refused_with_400(client) -> None:  # type: ignore[no-untyped-def]
    make_node(client)
    assert client.put("/v1/nodes/n1/states/provision", json={"target": "manage"}).status_code == 202
    response = client.put("/v1/nodes/n1/states/provision",
                          json={"target": "active", "image_source": "file:///srv/images/a%00b"})
    assert response.status_code == 400 and response.json["code"] == "validation_error"
    assert "NUL" in response.json["errors"]["image_source"]


def test_file_refusal_of_a_nul_byte(settings) -> None:  # type: ignore[no-untyped-def]
    assert "NUL" in (sources.file_refusal(settings, Path("/srv/images/a\0b")) or "")


def test_a_zstd_image_fails_before_the_node_is_touched(client, anonymous, conductor_ctx, settings,
                                                       image_files: Path) -> None:  # type: ignore[no-untyped-def]
    path = image_files / "disk.raw.zst"
    path.write_bytes(ZSTD)
    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)
    put(client, "active", image_source=path.as_uri())
    drain(conductor_ctx)
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "deploy failed"
    assert "zstd-compressed, which the agent cannot decompress" in node["last_error"]
    assert boot_config(settings, client) is None  # no agent was booted


def test_a_preparation_that_never_ends_fails_the_deploy(client, anonymous, settings, image_server) -> None:  # type: ignore[no-untyped-def]
    slow = build_context(settings.replace(image_prepare_timeout=0.5))
    slow.name = conductors.register(slow).name
    try:
        make_node(client)
        to_available(client, anonymous, settings, slow)
        image_server.pace = 0.3  # a piece every 0.3 s: never silent for image_download_timeout
        url = image_server.add("/trickle.img", RAW)
        put(client, "active", image_source=url, image_checksum=sha(RAW))
        drain(slow)
        node = client.get("/v1/nodes/n1").json
        assert states(client)["provision_state"] == "deploy failed"
        assert f"The image {url} was not ready after 0.5 s (image_prepare_timeout" in node["last_error"]
        assert boot_config(settings, client) is None
    finally:
        image_server.pace = 0.0
        slow.close()


@pytest.mark.parametrize("query", ["X-Amz-Signature=SECRET&X-Amz-Credential=AK", "sig=SECRET", "token=SECRET",
                                   "Signature=SECRET&Expires=1"])
def test_shown_masks_query_strings_and_passwords(query: str) -> None:
    shown = cache.shown(f"https://user:pw@images.example:8443/disk.img?{query}")
    assert shown == "https://user:******@images.example:8443/disk.img?******"
    assert cache.shown("https://images.example/disk.img") == "https://images.example/disk.img"


def test_a_signed_url_never_reaches_last_error_history_or_params(client, anonymous, conductor_ctx, settings,
                                                                 image_server) -> None:  # type: ignore[no-untyped-def]
    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)
    url = image_server.url + "/missing.img?X-Amz-Signature=SECRET"
    request_id = put(client, "active", image_source=url, image_checksum=sha(RAW))
    drain(conductor_ctx)
    node = client.get("/v1/nodes/n1").json
    assert "downloading " + image_server.url + "/missing.img?****** failed: HTTP 404" in node["last_error"]
    request = client.get(f"/v1/requests/{request_id}").json
    assert request["params"]["image_source"] == image_server.url + "/missing.img?******"
    history = client.get("/v1/nodes/n1/history").json
    assert "SECRET" not in str(node) + str(request) + str(history)


def test_a_cached_entry_is_pinned_before_it_is_looked_up(settings, ctx, image_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url = image_server.add("/disk.img", RAW)
    small = settings.replace(image_cache_size=len(RAW) / cache.GIB)
    images = cache.ImageCache.from_settings(small)
    images.fetch(url, sha(RAW))
    polled = cache.ImageCache.poll

    def poll_then_evict(self, *args):  # type: ignore[no-untyped-def]
        found = polled(self, *args)
        self.evict(incoming=self.max_bytes)  # another deploy's download makes room just then
        return found

    monkeypatch.setattr(cache.ImageCache, "poll", poll_then_evict)
    with ctx.db.session() as session:
        params = sources.prepare(small, session, url, sha(RAW), node="n-uuid", owner="req-1", since=0.0)
    assert isinstance(params, dict) and params["image_checksum"] == sha(RAW)
    assert (images.root / sha(RAW)).is_file()  # still there to be served


def test_a_ticket_carries_the_identity_of_its_file(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "f"
    path.write_bytes(b"x")
    identity = tickets.identity_of(path.stat())
    granted = tickets.verify(settings, tickets.issue(settings, "n", path, 60.0, identity))
    assert granted.identity == identity and granted.path == path
    assert tickets.verify(settings, tickets.issue(settings, "n", path, 60.0)).identity is None
