"""Deploys of every kind of image_source, through the pxe deploy interface and the real API.

The test plays the agent (as in tests/unit/engine/test_pxe.py); remote
images come from a real HTTP server on loopback.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

from conductor.bootstrap import build_context
from conductor.engine import conductors
from tests.conftest import drain
from tests.unit.engine.test_pxe import agent, boot_config, heartbeat, make_node, put, states, to_available

RAW = os.urandom(200_000) + b"\x00" * 800_000
PACKED = gzip.compress(RAW)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def command_of(client, anonymous, settings, node="n1"):  # type: ignore[no-untyped-def]
    return heartbeat(anonymous, node, boot_config(settings, client, node)["token"]).json["command"]


def cache_files(settings) -> list[str]:  # type: ignore[no-untyped-def]
    root = settings.image_cache_path
    # pins/: a deploy pins its entry before it looks it up (not an image file)
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.endswith((".lock", ".failed")) and p.name != "pins")


def test_a_remote_image_is_downloaded_once_and_served_to_every_agent(client, anonymous, conductor_ctx, settings,
                                                                     image_server) -> None:  # type: ignore[no-untyped-def]
    url = image_server.add("/disk.img.gz", PACKED)
    image_server.pace = 0.005
    for node in ("n1", "n2"):
        make_node(client, node)
        client.patch(f"/v1/nodes/{node}", json={"properties": {"root_device": {"serial": "S1"}}})
        to_available(client, anonymous, settings, conductor_ctx, node)
    put(client, "active", "n1", image_source=url, image_checksum="sha256:" + sha(PACKED))
    put(client, "active", "n2", image_source=url, image_checksum=sha(PACKED))
    drain(conductor_ctx)
    assert image_server.hits["/disk.img.gz"] == 1
    for node in ("n1", "n2"):
        assert states(client, node)["provision_state"] == "wait call-back"
        params = command_of(client, anonymous, settings, node)["params"]
        served = anonymous.get(params.pop("image_source").removeprefix(settings.agent_url))
        assert served.status_code == 200 and served.data == PACKED
        assert params == {"image_checksum": sha(PACKED), "image_compression": "gzip", "image_size": len(RAW),
                          "root_device": {"serial": "S1"}}
    assert cache_files(settings) == sorted([sha(PACKED), sha(PACKED) + ".json"])
    history = [e["message"] for e in client.get("/v1/nodes/n1/history?limit=50").json["history"]]
    assert "Step deploy 1/6: prepare image." in history


def test_a_checksum_mismatch_fails_the_deploy_before_the_node_is_touched(client, anonymous, conductor_ctx, settings,
                                                                         image_server) -> None:  # type: ignore[no-untyped-def]
    url = image_server.add("/disk.img.gz", PACKED)
    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)
    wrong = "ab" * 32
    request_id = put(client, "active", image_source=url, image_checksum=wrong)
    drain(conductor_ctx)
    request = client.get(f"/v1/requests/{request_id}").json
    node = client.get("/v1/nodes/n1").json
    assert request["state"] == "failed" and node["provision_state"] == "deploy failed"
    assert f"checksum mismatch for {url}: expected sha256 {wrong}, downloaded {sha(PACKED)}" in node["last_error"]
    assert boot_config(settings, client) is None
    assert cache_files(settings) == []  # nothing half-downloaded is kept, nothing is served
    # The node can leave the failed state.
    put(client, "active", image_source=url, image_checksum=sha(PACKED))
    drain(conductor_ctx)
    assert states(client)["provision_state"] == "wait call-back"


def test_source_errors_reach_last_error(client, anonymous, settings, image_server) -> None:  # type: ignore[no-untyped-def]
    quick = build_context(settings.replace(image_download_timeout=0.5))
    quick.name = conductors.register(quick).name
    try:
        make_node(client)
        make_node(client, "n2")
        to_available(client, anonymous, settings, quick)
        to_available(client, anonymous, settings, quick, "n2")
        image_server.add("/silent.img", RAW)
        image_server.silent = True
        put(client, "active", image_source=image_server.url + "/missing.img", image_checksum=sha(RAW))
        put(client, "active", "n2", image_source=image_server.url + "/silent.img", image_checksum=sha(RAW))
        drain(quick)
        missing = client.get("/v1/nodes/n1").json["last_error"]
        silent = client.get("/v1/nodes/n2").json["last_error"]
        assert f"downloading {image_server.url}/missing.img failed: HTTP 404 Not Found" in missing
        assert f"downloading {image_server.url}/silent.img timed out: no data for 0.5 s" in silent
        assert states(client)["provision_state"] == states(client, "n2")["provision_state"] == "deploy failed"
    finally:
        quick.close()


def test_without_the_cache_agents_download_from_the_source(client, anonymous, settings) -> None:  # type: ignore[no-untyped-def]
    uncached = build_context(settings.replace(image_cache_size=0))
    uncached.name = conductors.register(uncached).name
    try:
        make_node(client)
        to_available(client, anonymous, settings, uncached)
        url = "https://images.example/disk.img.gz"
        put(client, "active", image_source=url, image_checksum=sha(PACKED))
        drain(uncached)
        params = command_of(client, anonymous, settings)["params"]
        assert params == {"image_source": url, "image_checksum": sha(PACKED)}
    finally:
        uncached.close()


def test_a_local_file_is_served_with_its_computed_checksum(client, anonymous, conductor_ctx, settings,
                                                           image_files: Path) -> None:  # type: ignore[no-untyped-def]
    path = image_files / "disk image.raw"
    path.write_bytes(RAW)
    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)
    put(client, "active", image_source=path.as_uri())
    drain(conductor_ctx)
    params = command_of(client, anonymous, settings)["params"]
    served = anonymous.get(params.pop("image_source").removeprefix(settings.agent_url))
    assert served.data == RAW
    assert params == {"image_checksum": sha(RAW), "image_compression": "none", "image_size": len(RAW)}
    agent(anonymous, settings, client)
    drain(conductor_ctx)
    # A given checksum is checked; a file that is gone is a clear error.
    put(client, "rebuild", image_source=path.as_uri(), image_checksum="0" * 64)
    drain(conductor_ctx)
    assert "checksum mismatch" in client.get("/v1/nodes/n1").json["last_error"]
    put(client, "active", image_source=(image_files / "gone.raw").as_uri())
    drain(conductor_ctx)
    assert "gone.raw cannot be read" in client.get("/v1/nodes/n1").json["last_error"]


def test_an_image_larger_than_every_disk_fails_with_the_agents_words(client, anonymous, conductor_ctx,
                                                                      settings, image_files: Path) -> None:  # type: ignore[no-untyped-def]
    path = image_files / "big.raw"
    path.write_bytes(RAW)
    make_node(client)
    to_available(client, anonymous, settings, conductor_ctx)
    put(client, "active", image_source=path.as_uri())
    drain(conductor_ctx)
    said = f"no disk matches the root device hints and holds {len(RAW)} bytes (disks: vda 524288 )"
    agent(anonymous, settings, client, status="failed", error=said)
    drain(conductor_ctx)
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "deploy failed"
    assert node["last_error"] == f"The agent failed to write image: {said}"


def test_cleaning_erases_as_asked_or_as_configured(client, anonymous, conductor_ctx, settings) -> None:  # type: ignore[no-untyped-def]
    make_node(client)
    put(client, "manage")
    drain(conductor_ctx)
    put(client, "clean", erase="full")
    drain(conductor_ctx)
    assert agent(anonymous, settings, client)["params"] == {"erase": "full"}
    drain(conductor_ctx)
    put(client, "provide")
    drain(conductor_ctx)
    assert agent(anonymous, settings, client)["params"] == {"erase": settings.clean_erase} == {"erase": "metadata"}


def test_file_images_come_only_from_image_file_dirs(client, anonymous, conductor_ctx, settings, image_files: Path,
                                                    tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    make_node(client)
    outside = tmp_path_factory.mktemp("elsewhere") / "disk.raw"
    outside.write_bytes(RAW)
    secret = settings.data_dir / "admin.token"  # what the rule is for (the test's own data directory)
    secret.write_text("a secret")
    link = image_files / "key.raw"
    link.symlink_to(secret)  # a link from an allowed directory into the data directory
    for path, why in ((outside, "is not under the directories file:// images may come from"),
                      (secret, "in the conductor's data directory"),
                      (link, "in the conductor's data directory")):
        response = client.put("/v1/nodes/n1/states/provision", json={"target": "active",
                                                                     "image_source": path.as_uri()})
        assert response.status_code == 400 and why in response.json["errors"]["image_source"], response.json
    # Checked again when the image is prepared (a link may change after the request was accepted).
    to_available(client, anonymous, settings, conductor_ctx)
    good = image_files / "good.raw"
    good.write_bytes(RAW)
    swapped = image_files / "swapped.raw"
    swapped.symlink_to(good)
    put(client, "active", image_source=swapped.as_uri())
    swapped.unlink()
    swapped.symlink_to(secret)
    drain(conductor_ctx)
    node = client.get("/v1/nodes/n1").json
    assert node["provision_state"] == "deploy failed" and "data directory" in node["last_error"]
