"""States, power, provisioning, maintenance, boot device, validation and history through the Ironic API.

State changes are accepted by the same service as /v1's and run here by the
conductor's own step code (``drain``), so the whole path is real but for
the RQ loop.
"""

from __future__ import annotations

from tests.conftest import drain
from tests.unit.api.ironic.conftest import IMAGE, fault


def _request(client, response) -> dict:  # type: ignore[no-untyped-def]
    """The request a 202 was accepted as (our API, by the id in the answer's header)."""
    assert response.status_code == 202, fault(response)
    request_id = response.headers["X-Conductor-Request-Id"]
    assert response.headers["X-OpenStack-Request-Id"] == request_id
    return dict(client.get(f"/v1/requests/{request_id}").get_json())


def test_a_state_change_is_ironics_202(ironic, client) -> None:
    ironic.create(name="n1")
    response = ironic.put("/nodes/n1/states/provision", {"target": "manage"})
    assert response.status_code == 202
    assert response.get_data() == b"" and "Content-Type" not in response.headers
    assert response.headers["Location"] == "http://localhost/baremetal/v1/nodes/n1/states"
    request = _request(client, response)
    assert (request["kind"], request["target"], request["state"]) == ("provision", "manage", "queued")
    states = ironic.get("/nodes/n1/states").get_json()
    assert (states["provision_state"], states["target_provision_state"]) == ("enroll", "manageable")
    assert set(states) == {"console_enabled", "last_error", "power_state", "provision_state", "target_power_state",
                           "target_provision_state", "provision_updated_at", "raid_config", "target_raid_config",
                           "boot_mode", "secure_boot"}
    # The same request again is given back (202, same id), as /v1 does; another is 409, a busy node.
    again = ironic.put("/nodes/n1/states/provision", {"target": "manage"})
    assert again.headers["X-Conductor-Request-Id"] == request["id"]
    busy = ironic.put("/nodes/n1/states/power", {"target": "power on"})
    assert busy.status_code == 409 and "transition in progress" in fault(busy)["faultstring"]
    assert busy.headers["X-Conductor-Error-Code"] == "transition_in_progress"


def test_provisioning_end_to_end(ironic, client, conductor_ctx) -> None:
    node = ironic.create(name="n1", instance_info=IMAGE)
    for verb, state in (("manage", "manageable"), ("provide", "available"), ("active", "active")):
        _request(client, ironic.put("/nodes/n1/states/provision", {"target": verb}))
        drain(conductor_ctx)
        assert ironic.get("/nodes/n1/states").get_json()["provision_state"] == state
    deployed = _request(client, ironic.put("/nodes/n1/states/provision",
                                           {"target": "rebuild", "configdrive": {"user_data": "#!/bin/sh"}}))
    # The image comes from instance_info, as in Ironic; the config drive from the request.
    assert deployed["params"]["image_source"] == IMAGE["image_source"]
    assert deployed["params"]["configdrive"].endswith("bytes>")
    drain(conductor_ctx)
    instance = "11111111-2222-3333-4444-555555555555"
    ironic.patch("/nodes/n1", [{"op": "add", "path": "/instance_uuid", "value": instance}])
    _request(client, ironic.put("/nodes/n1/states/provision", {"target": "undeploy"}))
    drain(conductor_ctx)
    shown = ironic.get(f"/nodes/{node['uuid']}").get_json()
    # An undeploy ends the instance: both go, as in Ironic.
    assert (shown["provision_state"], shown["instance_info"], shown["instance_uuid"]) == ("available", {}, None)


def test_provision_refusals(ironic) -> None:
    node = ironic.create(name="n1")
    invalid = ironic.put("/nodes/n1/states/provision", {"target": "provide"})
    assert invalid.status_code == 400 and "not allowed in provision state enroll" in fault(invalid)["faultstring"]
    unknown = ironic.put("/nodes/n1/states/provision", {"target": "rescue"})
    assert unknown.status_code == 400 and "not supported by this conductor" in fault(unknown)["faultstring"]
    # Verbs newer than the version spoken: 406.
    assert ironic.put(f"/nodes/{node['uuid']}/states/provision", {"target": "manage"}, version="1.3").status_code == 406
    assert ironic.put("/nodes/n1/states/provision", {"target": "deploy"}, version="1.72").status_code == 406
    no_image = ironic.put("/nodes/n1/states/provision", {"target": "active"})
    assert no_image.status_code == 400  # (not allowed in enroll: said before the image is missing)
    for body, says in (({"target": "manage", "clean_steps": []}, '"clean_steps" is only valid'),
                       ({"target": "manage", "rescue_password": "x"}, '"rescue_password" is only valid'),
                       ({"target": "manage", "configdrive": "abc"}, "Config drive can only be provided"),
                       ({"target": "manage", "spin": True}, "Unknown provision argument(s): spin")):
        response = ironic.put("/nodes/n1/states/provision", body)
        assert response.status_code == 400 and says in fault(response)["faultstring"], body


def test_a_deploy_needs_an_image_in_instance_info(ironic, client, conductor_ctx) -> None:
    ironic.create(name="n1")
    for verb in ("manage", "provide"):
        _request(client, ironic.put("/nodes/n1/states/provision", {"target": verb}))
        drain(conductor_ctx)
    missing = ironic.put("/nodes/n1/states/provision", {"target": "active"})
    assert missing.status_code == 400 and "instance_info is missing image_source" in fault(missing)["faultstring"]
    assert ironic.get("/nodes/n1/validate").get_json()["deploy"]["result"] is False
    ironic.patch("/nodes/n1", [{"op": "add", "path": "/instance_info",
                                "value": {"image_source": IMAGE["image_source"], "image_os_hash_algo": "sha256",
                                          "image_os_hash_value": "d" * 64}}])
    assert ironic.get("/nodes/n1/validate").get_json()["deploy"] == {"result": True}
    request = _request(client, ironic.put("/nodes/n1/states/provision", {"target": "deploy"}))
    assert request["params"]["image_checksum"] == "d" * 64


def test_manual_cleaning_takes_ironics_erase_steps(ironic, client, conductor_ctx) -> None:
    ironic.create(name="n1")
    _request(client, ironic.put("/nodes/n1/states/provision", {"target": "manage"}))
    drain(conductor_ctx)
    assert "clean_steps" in fault(ironic.put("/nodes/n1/states/provision", {"target": "clean"}))["faultstring"]
    bad = ironic.put("/nodes/n1/states/provision",
                     {"target": "clean", "clean_steps": [{"interface": "bios", "step": "apply_configuration"}]})
    assert bad.status_code == 400 and "deploy.erase_devices" in fault(bad)["faultstring"]
    steps = [{"interface": "deploy", "step": "erase_devices_metadata"},
             {"interface": "deploy", "step": "erase_devices"}]
    request = _request(client, ironic.put("/nodes/n1/states/provision", {"target": "clean", "clean_steps": steps}))
    assert request["params"] == {"erase": "full"}


def test_power(ironic, client, conductor_ctx) -> None:
    ironic.create(name="n1")
    request = _request(client, ironic.put("/nodes/n1/states/power", {"target": "power on"}))
    assert (request["kind"], request["target"]) == ("power", "power on")
    drain(conductor_ctx)
    assert ironic.get("/nodes/n1/states").get_json()["power_state"] == "power on"
    _request(client, ironic.put("/nodes/n1/states/power", {"target": "soft power off"}))
    drain(conductor_ctx)
    assert ironic.get("/nodes/n1/states").get_json()["power_state"] == "power off"
    assert ironic.put("/nodes/n1/states/power", {"target": "soft power off"}, version="1.26").status_code == 406
    unknown = ironic.put("/nodes/n1/states/power", {"target": "soft rebooting"})
    assert unknown.status_code == 400 and "power targets here" in fault(unknown)["faultstring"]
    assert ironic.put("/nodes/n1/states/power", {"target": "power on", "timeout": 10}).status_code == 400


def test_maintenance(ironic) -> None:
    ironic.create(name="n1")
    response = ironic.put("/nodes/n1/maintenance", {"reason": "fan noise"})
    assert response.status_code == 202 and response.get_data() == b""
    shown = ironic.get("/nodes/n1").get_json()
    assert (shown["maintenance"], shown["maintenance_reason"]) == (True, "fan noise")
    assert ironic.delete("/nodes/n1/maintenance").status_code == 202
    shown = ironic.get("/nodes/n1").get_json()
    assert (shown["maintenance"], shown["maintenance_reason"]) == (False, None)


def test_boot_device(ironic, client, conductor_ctx) -> None:
    ironic.create(name="n1")
    assert ironic.get("/nodes/n1/management/boot_device").get_json() == {"boot_device": None, "persistent": None}
    assert ironic.get("/nodes/n1/management/boot_device/supported").get_json() == {
        "supported_boot_devices": ["pxe", "disk", "cdrom", "bios"]}
    request = _request(client, ironic.put("/nodes/n1/management/boot_device",
                                          {"boot_device": "pxe", "persistent": True}))
    assert (request["kind"], request["target"]) == ("management", "pxe")
    drain(conductor_ctx)
    assert ironic.get("/nodes/n1/management/boot_device").get_json() == {"boot_device": "pxe", "persistent": True}
    assert ironic.put("/nodes/n1/management/boot_device", {"boot_device": "floppy"}).status_code == 400


def test_validate(ironic) -> None:
    ironic.create(name="n1", instance_info=IMAGE)
    results = ironic.get("/nodes/n1/validate").get_json()
    assert {k: v["result"] for k, v in results.items()} == {
        "bios": None, "boot": True, "console": None, "deploy": True, "inspect": True, "management": True,
        "network": True, "power": True, "raid": None, "rescue": None, "storage": True}


def test_history(ironic, client, conductor_ctx) -> None:
    ironic.create(name="n1")
    _request(client, ironic.put("/nodes/n1/states/provision", {"target": "manage"}))
    drain(conductor_ctx)
    entries = ironic.get("/nodes/n1/history").get_json()["history"]
    assert entries[0]["event"] == "Node enrolled with driver fake."
    assert set(entries[0]) == {"uuid", "created_at", "severity", "event", "links"}
    assert any("enroll -> verifying" in e["event"] for e in entries)
    page = ironic.get("/nodes/n1/history?limit=2").get_json()
    assert [e["uuid"] for e in page["history"]] == [e["uuid"] for e in entries[:2]]
    rest = ironic.get(page["next"].replace("http://localhost/baremetal/v1", "")).get_json()["history"]
    assert [e["uuid"] for e in rest] == [e["uuid"] for e in entries[2:4]]
    one = ironic.get(f"/nodes/n1/history/{entries[1]['uuid']}").get_json()
    assert one["event_type"] == "request.accepted" and one["severity"] == "INFO"
    assert ironic.get("/nodes/n1/history/00000000-0000-0000-0000-0000000003e7").status_code == 404
    assert ironic.get("/nodes/n1/history", version="1.77").status_code == 404


def test_throttling_is_503_with_retry_after_in_ironics_envelope(ironic, ctx) -> None:
    from conductor.throttle import settings as throttle_settings

    for name in ("n1", "n2", "n3"):
        ironic.create(name=name)
    throttle_settings.update(ctx, {"max_queue_depth": 2})
    assert [ironic.put(f"/nodes/{n}/states/power", {"target": "power on"}).status_code
            for n in ("n1", "n2")] == [202, 202]
    refused = ironic.put("/nodes/n3/states/power", {"target": "power on"})
    assert refused.status_code == 503 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "The work queue is full" in fault(refused)["faultstring"]
    assert fault(refused)["faultcode"] == "Server"
    assert refused.headers["X-Conductor-Error-Code"] == "queue_full"
    throttle_settings.update(ctx, {"read_rate": 0.01, "read_burst": 1})
    ironic.get("/nodes")
    limited = ironic.get("/nodes")
    assert limited.status_code == 503 and limited.headers["Retry-After"]
    assert "Too many requests" in fault(limited)["faultstring"]


def test_inspect_waits_for_its_agent_and_abort_ends_the_wait(ironic, client, conductor_ctx) -> None:
    """``inspect`` boots the agent (the node waits in ``inspect wait``); ``abort`` ends it in ``inspect failed``."""
    ironic.create(name="n1", deploy_interface="pxe")
    _request(client, ironic.put("/nodes/n1/states/provision", {"target": "manage"}))
    drain(conductor_ctx)
    inspect = _request(client, ironic.put("/nodes/n1/states/provision", {"target": "inspect"}))
    assert inspect["target"] == "inspect"
    drain(conductor_ctx)
    assert ironic.get("/nodes/n1/states").get_json()["provision_state"] == "inspect wait"
    aborted = ironic.put("/nodes/n1/states/provision", {"target": "abort"})
    assert aborted.status_code == 202, fault(aborted)
    drain(conductor_ctx)
    states = ironic.get("/nodes/n1/states").get_json()
    assert states["provision_state"] == "inspect failed" and "Aborted in inspect wait" in states["last_error"]
    assert client.get(f"/v1/requests/{inspect['id']}").get_json()["state"] == "cancelled"
    # The failed node can go on, as in Ironic: back to manageable.
    _request(client, ironic.put("/nodes/n1/states/provision", {"target": "manage"}))
    drain(conductor_ctx)
    assert ironic.get("/nodes/n1/states").get_json()["provision_state"] == "manageable"
