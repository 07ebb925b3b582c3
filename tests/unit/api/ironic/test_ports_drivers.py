"""Ports, drivers (hardware types) and conductors through the Ironic-compatible API."""

from __future__ import annotations

from conductor.engine import conductors
from tests.unit.api.ironic.conftest import fault


def test_ports(ironic, client) -> None:
    node = ironic.create(name="n1")
    other = ironic.create(name="n2")
    created = ironic.post("/ports", {"address": "52-54-00-AB-CD-01", "node_uuid": node["uuid"], "pxe_enabled": True,
                                     "extra": {}, "uuid": "0c7d4f5e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"})
    assert created.status_code == 201, fault(created)
    port = created.get_json()
    assert (port["uuid"], port["address"], port["node_uuid"]) == ("0c7d4f5e-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
                                                                  "52:54:00:ab:cd:01", node["uuid"])
    assert (port["pxe_enabled"], port["local_link_connection"], port["portgroup_uuid"]) == (True, {}, None)
    assert created.headers["Location"].endswith(f"/ports/{port['uuid']}")
    ironic.post("/ports", {"address": "52:54:00:ab:cd:02", "node_uuid": other["uuid"]})
    # The same port in our own API.
    assert client.get(f"/v1/ports/{port['uuid']}").get_json()["address"] == "52:54:00:ab:cd:01"

    assert [p["address"] for p in ironic.get("/ports").get_json()["ports"]] == ["52:54:00:ab:cd:01",
                                                                                "52:54:00:ab:cd:02"]
    assert set(ironic.get("/ports").get_json()["ports"][0]) == {"uuid", "address", "links"}
    assert [p["address"] for p in ironic.get("/ports?node=n2").get_json()["ports"]] == ["52:54:00:ab:cd:02"]
    assert [p["address"] for p in ironic.get("/nodes/n1/ports").get_json()["ports"]] == ["52:54:00:ab:cd:01"]
    assert ironic.get("/nodes/n1/ports/detail").get_json()["ports"][0]["node_uuid"] == node["uuid"]
    (by_mac,) = ironic.get("/ports?address=52:54:00:ab:cd:02&detail=true").get_json()["ports"]
    assert by_mac["node_uuid"] == other["uuid"]
    assert "physical_network" not in ironic.get(f"/ports/{port['uuid']}", version="1.33").get_json()
    page = ironic.get("/ports?limit=1&sort_key=address&sort_dir=desc").get_json()
    assert [p["address"] for p in page["ports"]] == ["52:54:00:ab:cd:02"] and "marker=" in page["next"]

    in_use = ironic.post("/ports", {"address": "52:54:00:ab:cd:01", "node_uuid": other["uuid"]})
    assert in_use.status_code == 409
    no_node = ironic.post("/ports", {"address": "52:54:00:ab:cd:03", "node_uuid": "nope"})
    assert no_node.status_code == 400  # (Ironic: the node is an argument, not the resource)
    kept = ironic.post("/ports", {"address": "52:54:00:ab:cd:04", "node_uuid": node["uuid"], "pxe_enabled": False})
    assert kept.status_code == 400 and "this conductor keeps it True" in fault(kept)["faultstring"]
    unchanged = ironic.patch(f"/ports/{port['uuid']}", [{"op": "replace", "path": "/extra", "value": {}}])
    assert unchanged.status_code == 200
    moved = ironic.patch(f"/ports/{port['uuid']}",
                         [{"op": "replace", "path": "/address", "value": "52:54:00:00:00:09"}])
    assert moved.status_code == 400 and "delete it and create another" in fault(moved)["faultstring"]
    assert ironic.delete(f"/ports/{port['uuid']}").status_code == 204
    assert ironic.get(f"/ports/{port['uuid']}").status_code == 404


def test_drivers(ironic, ctx) -> None:
    conductors.register(ctx)
    listed = ironic.get("/drivers").get_json()["drivers"]
    assert [d["name"] for d in listed] == ["fake-hardware", "ipmi", "redfish"]
    assert listed[0]["hosts"] and listed[0]["type"] == "dynamic"
    assert "default_power_interface" not in listed[0]
    detail = ironic.get("/drivers?detail=true").get_json()["drivers"][1]
    assert (detail["default_power_interface"], detail["default_deploy_interface"]) == ("ipmitool", "pxe")
    assert ironic.get("/drivers/fake-hardware").get_json()["enabled_deploy_interfaces"] == ["fake", "pxe"]
    redfish = ironic.get("/drivers/redfish").get_json()
    assert (redfish["default_power_interface"], redfish["default_inspect_interface"]) == ("redfish", "redfish")
    assert redfish["enabled_inspect_interfaces"] == ["agent", "fake", "redfish"]
    assert ironic.get("/drivers/fake").status_code == 404
    properties = ironic.get("/drivers/ipmi/properties").get_json()
    assert properties["ipmi_address"].endswith("Required.") and "ipmi_password" in properties
    assert ironic.get("/drivers?fields=name", version="1.76").status_code == 406
    assert list(ironic.get("/drivers?fields=name").get_json()["drivers"][0]) == ["name", "links"]
    assert "type" not in ironic.get("/drivers", version="1.29").get_json()["drivers"][0]


def test_conductors(ironic, ctx) -> None:
    name = conductors.register(ctx).name
    listed = ironic.get("/conductors").get_json()["conductors"]
    assert [(c["hostname"], c["alive"], c["conductor_group"]) for c in listed] == [(name, True, "")]
    assert set(listed[0]) == {"hostname", "conductor_group", "alive", "links"}
    shown = ironic.get(f"/conductors/{name}").get_json()
    assert shown["drivers"] == ["fake-hardware", "ipmi", "redfish"] and shown["created_at"]
    assert ironic.get("/conductors/nobody").status_code == 404
    assert ironic.get("/conductors", version="1.48").status_code == 404
