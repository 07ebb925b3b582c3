"""Nodes through the Ironic-compatible API: create, list, show, JSON Patch, delete, by version."""

from __future__ import annotations

import pytest

from tests.unit.api.ironic.conftest import IMAGE, fault


def test_create_maps_the_hardware_type_and_keeps_ironics_fields(ironic, client) -> None:
    node = ironic.create(name="n1", driver_info={"fake_delay": 1}, properties={"cpus": 8},
                         instance_info=IMAGE, extra={"rack": "r4"}, resource_class="gold",
                         description="first", uuid="6f6a1a8e-8bd9-4c1b-9f4e-7f8f4a0b9c01")
    assert node["uuid"] == "6f6a1a8e-8bd9-4c1b-9f4e-7f8f4a0b9c01"
    assert (node["driver"], node["provision_state"], node["power_state"]) == ("fake-hardware", "enroll", None)
    assert (node["properties"], node["extra"], node["resource_class"]) == ({"cpus": 8}, {"rack": "r4"}, "gold")
    assert node["instance_info"] == IMAGE and node["description"] == "first"
    assert node["links"][0]["href"] == f"http://localhost/baremetal/v1/nodes/{node['uuid']}"
    assert node["states"][0]["href"].endswith(f"/nodes/{node['uuid']}/states")
    # Fields we keep no data for show what a node that never used them shows.
    assert (node["console_enabled"], node["traits"], node["owner"], node["conductor_group"]) == (False, [], None, "")
    assert (node["power_interface"], node["deploy_interface"], node["boot_interface"]) == ("fake", "fake", "fake")
    # The same node, in our own API: driver fake.
    assert client.get("/v1/nodes/n1").get_json()["driver"] == "fake"


def test_create_refusals(ironic) -> None:
    unknown = ironic.post("/nodes", {"driver": "idrac"})
    assert unknown.status_code == 400
    assert "drivers served: fake-hardware, ipmi, redfish" in fault(unknown)["faultstring"]
    assert ironic.post("/nodes", {"driver": "fake-hardware", "chassis_uuid": "x", "bogus": 1}).status_code == 400
    kept = ironic.post("/nodes", {"driver": "fake-hardware", "owner": "project-a"})
    assert kept.status_code == 400 and "this conductor keeps it None" in fault(kept)["faultstring"]
    # Ironic's constants given with the value we keep are fine.
    assert ironic.post("/nodes", {"driver": "fake-hardware", "conductor_group": "", "console_enabled": False,
                                  "power_interface": "fake"}).status_code == 201
    # A field newer than the version spoken is 406, as in Ironic.
    assert ironic.post("/nodes", {"driver": "fake-hardware", "resource_class": "x"}, version="1.20").status_code == 406
    # Before 1.11 Ironic made nodes available at once; here they start in enroll, so: 406.
    early = ironic.post("/nodes", {"driver": "fake-hardware"}, version="1.10")
    assert early.status_code == 406 and "1.11" in fault(early)["faultstring"]
    taken = ironic.post("/nodes", {"driver": "fake-hardware", "name": "twin"})
    assert taken.status_code == 201
    assert ironic.post("/nodes", {"driver": "fake-hardware", "name": "twin"}).status_code == 409
    assert ironic.post("/nodes", {"driver": "ipmi"}).status_code == 400  # (ipmi_address is required)


def test_show_by_uuid_name_and_fields(ironic) -> None:
    node = ironic.create(name="n1")
    assert ironic.get(f"/nodes/{node['uuid']}").get_json()["name"] == "n1"
    assert ironic.get("/nodes/n1.json").get_json()["uuid"] == node["uuid"]  # (before 1.91, as Ironic)
    some = ironic.get("/nodes/n1?fields=uuid,provision_state").get_json()
    assert set(some) == {"uuid", "provision_state", "links"}
    assert ironic.get("/nodes/n1?fields=nope").status_code == 400
    assert ironic.get("/nodes/n1?fields=uuid", version="1.7").status_code == 406
    # Fields newer than the version spoken are not shown.
    old = ironic.get(f"/nodes/{node['uuid']}", version="1.4").get_json()
    assert "name" not in old and "driver_internal_info" in old and "resource_class" not in old
    assert ironic.get("/nodes/n1", version="1.4").status_code == 400  # (a name before 1.5)


def test_old_versions_name_two_states_their_way(ironic, ctx) -> None:
    node = ironic.create(name="n1")
    with ctx.db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE nodes SET provision_state = 'available'")
    assert ironic.get(f"/nodes/{node['uuid']}", version="1.1").get_json()["provision_state"] is None
    assert ironic.get(f"/nodes/{node['uuid']}", version="1.2").get_json()["provision_state"] == "available"
    with ctx.db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE nodes SET provision_state = 'inspect wait'")
    assert ironic.get("/nodes/n1", version="1.38").get_json()["provision_state"] == "inspecting"
    assert ironic.get("/nodes/n1/states", version="1.39").get_json()["provision_state"] == "inspect wait"


def test_list_default_fields_detail_and_filters(ironic, ctx) -> None:
    a = ironic.create(name="a", resource_class="gold", instance_uuid="11111111-2222-3333-4444-555555555555")
    ironic.create(name="b", resource_class="silver", maintenance=True)
    listed = ironic.get("/nodes").get_json()["nodes"]
    assert [set(n) for n in listed] == [{"uuid", "name", "instance_uuid", "maintenance", "power_state",
                                         "provision_state", "links"}] * 2
    assert "next" not in ironic.get("/nodes").get_json()
    detailed = ironic.get("/nodes/detail").get_json()["nodes"]
    assert detailed[0]["driver"] == "fake-hardware" and "properties" in detailed[0]
    assert ironic.get("/nodes?detail=true").get_json()["nodes"] == detailed
    assert ironic.get("/nodes?detail=true&fields=uuid").status_code == 400

    def names(query: str) -> list[str]:
        response = ironic.get(f"/nodes?{query}")
        assert response.status_code == 200, fault(response)
        return [n["name"] for n in response.get_json()["nodes"]]

    assert names("resource_class=gold") == ["a"]
    assert names("maintenance=true") == ["b"]
    assert names("associated=True") == ["a"] and names("associated=false") == ["b"]
    assert names(f"instance_uuid={a['instance_uuid']}") == ["a"]
    assert names("driver=fake-hardware") == ["a", "b"] and names("driver=fake") == []
    assert names("provision_state=enroll") == ["a", "b"] and names("provision_state=active") == []
    assert names("owner=someone") == [] and names("conductor_group=") == ["a", "b"]
    assert ironic.get("/nodes?provision_state=sleeping").status_code == 400
    assert ironic.get("/nodes?provision_state=enroll", version="1.8").status_code == 406
    assert ironic.get("/nodes?driver=fake-hardware", version="1.15").status_code == 406
    with ctx.db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE nodes SET description = 'rack 4, slot 2' WHERE name = 'b'")
    assert names("description_contains=slot") == ["b"]


def test_pages_follow_next_links_in_any_order(ironic) -> None:
    for name in ("c", "a", "d", "b", "e"):
        ironic.create(name=name)

    def walk(query: str) -> list[str]:
        seen, url = [], f"/nodes?{query}"
        while url:
            body = ironic.get(url).get_json()
            seen += [n["name"] for n in body["nodes"]]
            url = body.get("next", "").replace("http://localhost/baremetal/v1", "")
        return seen

    assert walk("limit=2") == ["c", "a", "d", "b", "e"]
    assert walk("limit=2&sort_key=name") == ["a", "b", "c", "d", "e"]
    assert walk("limit=2&sort_key=name&sort_dir=desc&fields=name") == ["e", "d", "c", "b", "a"]
    assert walk("limit=3&sort_key=provision_state&detail=true") == ["c", "a", "d", "b", "e"]
    assert ironic.get("/nodes?limit=0").status_code == 400
    assert ironic.get("/nodes?sort_dir=up").status_code == 400
    assert ironic.get("/nodes?sort_key=properties").status_code == 400
    assert ironic.get("/nodes?marker=nope").status_code == 404


def test_json_patch(ironic, client) -> None:
    ironic.create(name="n1", driver_info={"fake_delay": 1}, properties={"cpus": 4, "disks": ["sda"]})
    response = ironic.patch("/nodes/n1", [
        {"op": "add", "path": "/properties/memory_mb", "value": 4096},
        {"op": "remove", "path": "/properties/cpus"},
        {"op": "add", "path": "/properties/disks/-", "value": "sdb"},
        {"op": "replace", "path": "/driver_info/fake_delay", "value": 2},
        {"op": "add", "path": "/instance_info/image_source", "value": IMAGE["image_source"]},
        {"op": "copy", "from": "/instance_info/image_source", "path": "/extra/image"},
        {"op": "test", "path": "/extra/image", "value": IMAGE["image_source"]},
        {"op": "replace", "path": "/name", "value": "n2"},
        {"op": "add", "path": "/resource_class", "value": "gold"},
    ])
    assert response.status_code == 200, fault(response)
    node = response.get_json()
    assert node["properties"] == {"memory_mb": 4096, "disks": ["sda", "sdb"]}
    assert node["driver_info"] == {"fake_delay": 2}
    assert node["instance_info"] == {"image_source": IMAGE["image_source"]}
    assert (node["name"], node["resource_class"], node["extra"]) == ("n2", "gold", {"image": IMAGE["image_source"]})
    assert client.get("/v1/nodes/n2").get_json()["properties"] == node["properties"]
    # Removing the field clears it; a failed test changes nothing.
    assert ironic.patch("/nodes/n2", [{"op": "remove", "path": "/resource_class"}]).get_json()["resource_class"] is None
    failed = ironic.patch("/nodes/n2", [{"op": "replace", "path": "/name", "value": "n3"},
                                        {"op": "test", "path": "/name", "value": "zzz"}])
    assert failed.status_code == 400 and "Couldn't apply patch" in fault(failed)["faultstring"]
    assert ironic.get("/nodes/n2").status_code == 200


@pytest.mark.parametrize("operations, says", [
    ([{"op": "replace", "path": "/provision_state", "value": "active"}], "Cannot patch /provision_state"),
    ([{"op": "add", "path": "/color", "value": "red"}], "Cannot patch /color"),
    ([{"op": "remove", "path": "/extra/nothing"}], "Couldn't apply patch"),
    ([{"op": "replace", "path": "/owner", "value": "team"}], "this conductor keeps it None"),
    ([{"op": "replace", "path": "/power_interface", "value": "ipmitool"}], "this conductor keeps it 'fake'"),
    ([{"op": "jump", "path": "/name"}], "A JSON Patch is a list of operations"),
    ({"name": "merge patches are /v1's"}, "A JSON Patch is a list of operations"),
    ([{"op": "replace", "path": "/driver", "value": "idrac"}], "drivers served"),
])
def test_json_patch_refusals(ironic, operations, says) -> None:
    ironic.create(name="n1")
    response = ironic.patch("/nodes/n1", operations)
    assert response.status_code == 400
    assert says in fault(response)["faultstring"]


def test_json_patch_secrets_stay_sealed_and_masked(ironic, ctx) -> None:
    node = ironic.create(driver="ipmi", name="r1",
                         driver_info={"ipmi_address": "10.0.0.7", "ipmi_username": "admin", "ipmi_password": "s3cret"})
    assert node["driver_info"]["ipmi_password"] == "******"
    patched = ironic.patch("/nodes/r1", [{"op": "replace", "path": "/driver_info/ipmi_address", "value": "10.0.0.8"}])
    assert patched.get_json()["driver_info"] == {"ipmi_address": "10.0.0.8", "ipmi_username": "admin",
                                                 "ipmi_password": "******"}
    with ctx.db.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT driver_info FROM nodes").scalar()
    assert "s3cret" not in str(stored) and "fernet:" in str(stored)
    # A secret cannot be read out by the operations that read a value: copy, move, test.
    for op in ({"op": "copy", "from": "/driver_info/ipmi_password", "path": "/extra/leak"},
               {"op": "move", "from": "/driver_info/ipmi_password", "path": "/driver_info/ipmi_username"},
               {"op": "copy", "from": "/driver_info", "path": "/extra/all"},
               {"op": "test", "path": "/driver_info/ipmi_password", "value": "guess"},
               {"op": "copy", "from": "/instance_info/admin_pass", "path": "/extra/leak"}):
        refused = ironic.patch("/nodes/r1", [op])
        assert refused.status_code == 400, op
        assert "write-only" in fault(refused)["faultstring"] and "fernet" not in refused.get_data(as_text=True)
    shown = ironic.get("/nodes/r1").get_json()
    assert shown["extra"] == {} and shown["driver_info"]["ipmi_password"] == "******"
    assert shown["driver_info"]["ipmi_username"] == "admin"
    # Copying what is not secret still works.
    copied = ironic.patch("/nodes/r1", [{"op": "copy", "from": "/driver_info/ipmi_address", "path": "/extra/bmc"}])
    assert copied.status_code == 200 and copied.get_json()["extra"] == {"bmc": "10.0.0.8"}


def test_instance_info_secrets_are_masked_as_ironic_masks_them(ironic) -> None:
    ironic.create(name="n1", instance_info={"admin_pass": "a", "root_password": "b", "auth_token": "c",
                                            "image_source": "http://images.example/x.img"})
    shown = ironic.get("/nodes/n1").get_json()["instance_info"]
    assert shown == {"admin_pass": "******", "root_password": "******", "auth_token": "******",
                     "image_source": "http://images.example/x.img"}


def test_an_instance_belongs_to_one_node(ironic) -> None:
    instance = "11111111-2222-3333-4444-555555555555"
    ironic.create(name="a", instance_uuid=instance)
    ironic.create(name="b")
    taken = ironic.patch("/nodes/b", [{"op": "add", "path": "/instance_uuid", "value": instance}])
    assert taken.status_code == 409 and "already associated" in fault(taken)["faultstring"]
    assert ironic.post("/nodes", {"driver": "fake-hardware", "instance_uuid": instance}).status_code == 409


def test_delete(ironic) -> None:
    ironic.create(name="n1")
    response = ironic.delete("/nodes/n1")
    assert response.status_code == 204 and response.get_data() == b""
    assert ironic.get("/nodes/n1").status_code == 404
    assert ironic.delete("/nodes/n1").status_code == 404


def test_traits_and_vifs_are_empty(ironic) -> None:
    ironic.create(name="n1")
    assert ironic.get("/nodes/n1/traits").get_json() == {"traits": []}
    assert ironic.get("/nodes/n1/vifs").get_json() == {"vifs": []}
    assert ironic.get("/nodes/n1/traits", version="1.36").status_code == 404


def test_the_deploy_interface_is_a_node_field(ironic) -> None:
    node = ironic.create(name="n1", deploy_interface="pxe")
    assert (node["deploy_interface"], node["boot_interface"], node["inspect_interface"]) == ("pxe", "ipxe", "agent")
    patched = ironic.patch("/nodes/n1", [{"op": "replace", "path": "/deploy_interface", "value": "fake"}])
    assert (patched.get_json()["deploy_interface"], patched.get_json()["boot_interface"]) == ("fake", "fake")
    refused = ironic.patch("/nodes/n1", [{"op": "replace", "path": "/deploy_interface", "value": "direct"}])
    assert refused.status_code == 400 and "deploy_interface" in fault(refused)["faultstring"]


def test_a_redfish_node_and_its_inspect_interface(ironic) -> None:
    node = ironic.create(driver="redfish", name="r1",
                         driver_info={"redfish_address": "https://10.0.0.9", "redfish_password": "pw"})
    assert (node["driver"], node["power_interface"], node["inspect_interface"]) == ("redfish", "redfish", "redfish")
    assert (node["deploy_interface"], node["boot_interface"]) == ("pxe", "ipxe")
    assert node["driver_info"] == {"redfish_address": "https://10.0.0.9", "redfish_password": "******"}
    patched = ironic.patch("/nodes/r1", [{"op": "replace", "path": "/inspect_interface", "value": "agent"}])
    assert patched.get_json()["inspect_interface"] == "agent"
    assert patched.get_json()["driver_info"]["inspect_interface"] == "agent"
    # A driver without a choice of inspect interface: the one it has is accepted, another is not.
    assert ironic.post("/nodes", {"driver": "fake-hardware", "inspect_interface": "fake"}).status_code == 201
    assert ironic.post("/nodes", {"driver": "fake-hardware", "inspect_interface": "redfish"}).status_code == 400
