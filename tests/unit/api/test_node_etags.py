"""ETag on a node, and If-Match on its writes: a stale version is refused (412) and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import drain


def create(client: Any, name: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/nodes", json={"driver": "fake", "name": name, **fields})
    assert response.status_code == 201, response.json
    return dict(response.json)


def test_get_and_patch_answer_with_the_nodes_etag(client) -> None:
    node = create(client, "e1")
    first = client.get("/v1/nodes/e1")
    assert first.headers["ETag"] == f'"{node["uuid"]}-1"'
    assert client.get(f"/v1/nodes/{node['uuid']}").headers["ETag"] == first.headers["ETag"]
    patched = client.patch("/v1/nodes/e1", json={"properties": {"rack": "r1"}})
    assert patched.status_code == 200
    assert patched.headers["ETag"] == f'"{node["uuid"]}-2"'
    assert client.get("/v1/nodes/e1").headers["ETag"] == patched.headers["ETag"]


def test_a_stale_if_match_is_refused_and_the_node_is_unchanged(client) -> None:
    create(client, "e2", properties={"cpus": 4})
    stale = client.get("/v1/nodes/e2").headers["ETag"]
    current = client.patch("/v1/nodes/e2", json={"properties": {"cpus": 8}}, headers={"If-Match": stale})
    assert current.status_code == 200  # the version read is still the node's: the write is done
    lost = client.patch("/v1/nodes/e2", json={"properties": {"cpus": 2}, "name": "renamed"},
                        headers={"If-Match": stale})
    assert lost.status_code == 412
    assert lost.json["code"] == "precondition_failed"
    assert lost.json["etag"] == current.headers["ETag"]
    after = client.get("/v1/nodes/e2")
    assert after.json["properties"] == {"cpus": 8} and after.json["name"] == "e2"
    assert after.headers["ETag"] == current.headers["ETag"]
    # The current version, one of several tags, or any version (*) all pass.
    assert client.patch("/v1/nodes/e2", json={"properties": {"a": 1}},
                        headers={"If-Match": f'"nope", {current.headers["ETag"]}'}).status_code == 200
    assert client.patch("/v1/nodes/e2", json={"properties": {"b": 2}}, headers={"If-Match": "*"}).status_code == 200


def test_a_write_by_a_conductor_changes_the_etag(client, conductor_ctx) -> None:
    create(client, "e3")
    before = client.get("/v1/nodes/e3").headers["ETag"]
    assert client.put("/v1/nodes/e3/states/power", json={"target": "power on"}).status_code == 202
    drain(conductor_ctx)
    assert client.get("/v1/nodes/e3").json["power_state"] == "power on"
    refused = client.patch("/v1/nodes/e3", json={"maintenance": True}, headers={"If-Match": before})
    assert refused.status_code == 412
    assert client.get("/v1/nodes/e3").json["maintenance"] is False


def test_without_if_match_a_patch_is_unconditional(client) -> None:
    create(client, "e4")
    client.patch("/v1/nodes/e4", json={"properties": {"a": 1}})
    assert client.patch("/v1/nodes/e4", json={"properties": {"a": 2}}).json["properties"] == {"a": 2}


@pytest.mark.parametrize(("header", "status"), [("W/\"{tag}\"", 412), ("", 400), ("{tag}", 200)])
def test_weak_empty_and_unquoted_tags(client, header, status) -> None:
    node = create(client, "e5")
    tag = f"{node['uuid']}-1"
    response = client.patch("/v1/nodes/e5", json={"properties": {"a": 1}}, headers={"If-Match": header.format(tag=tag)})
    assert response.status_code == status, response.json  # a weak tag never matches a write (RFC 9110)


def test_a_rival_write_between_our_read_and_write_is_not_overwritten(client, ctx, monkeypatch) -> None:
    from conductor.service import nodes as node_service

    create(client, "e6")
    tag = client.get("/v1/nodes/e6").headers["ETag"]
    real_apply, real_patch = node_service._apply_patch, node_service.patch
    raced: list[bool] = []

    def apply_after_a_rival(session, node, values, changes):  # type: ignore[no-untyped-def]
        if not raced:
            raced.append(True)  # another client's PATCH lands after our If-Match was checked
            with ctx.db.session() as other:
                real_patch(other, "e6", {"maintenance_reason": "theirs"})
        return real_apply(session, node, values, changes)

    monkeypatch.setattr(node_service, "_apply_patch", apply_after_a_rival)
    response = client.patch("/v1/nodes/e6", json={"maintenance_reason": "ours"}, headers={"If-Match": tag})
    assert response.status_code == 412
    assert client.get("/v1/nodes/e6").json["maintenance_reason"] == "theirs"


def test_delete_honours_if_match(client) -> None:
    create(client, "e7")
    stale = client.get("/v1/nodes/e7").headers["ETag"]
    client.patch("/v1/nodes/e7", json={"properties": {"a": 1}})
    refused = client.delete("/v1/nodes/e7", headers={"If-Match": stale})
    assert refused.status_code == 412 and refused.json["code"] == "precondition_failed"
    assert client.get("/v1/nodes/e7").status_code == 200
    current = client.get("/v1/nodes/e7").headers["ETag"]
    assert client.delete("/v1/nodes/e7", headers={"If-Match": current}).status_code == 204
    assert client.delete("/v1/nodes/e7", headers={"If-Match": current}).status_code == 404


def test_a_node_enrolled_again_under_the_same_name_does_not_match_the_old_tag(client) -> None:
    create(client, "e8")
    old = client.get("/v1/nodes/e8").headers["ETag"]
    assert client.delete("/v1/nodes/e8").status_code == 204
    create(client, "e8")
    assert client.patch("/v1/nodes/e8", json={"properties": {"a": 1}}, headers={"If-Match": old}).status_code == 412


def test_the_contract_documents_etag_and_if_match(client) -> None:
    spec = client.get("/openapi.json").json
    item = spec["paths"]["/v1/nodes/{ident}"]
    assert "ETag" in item["get"]["responses"]["200"]["headers"]
    assert "ETag" in item["patch"]["responses"]["200"]["headers"]
    for method in ("patch", "delete"):
        assert "412" in item[method]["responses"]
        assert any(p["name"] == "If-Match" and p["in"] == "header" for p in item[method]["parameters"])
