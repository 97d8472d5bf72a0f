"""The command API over real TLS on loopback, client pinned to the agent's certificate."""

from __future__ import annotations

import asyncio

import aiohttp

from agent.commands import Param
from tests.agent.conftest import TOKEN, start


async def test_root_v1_and_status_need_no_token(running):
    status, root = await running.get("/", token=None)
    assert status == 200
    assert root["default_version"]["id"] == "v1"
    status, v1 = await running.get("/v1/", token=None)
    assert status == 200 and v1["id"] == "v1"
    status, body = await running.get("/v1/status", token=None)
    assert status == 200
    assert {"started_at", "version", "mode", "node_uuid", "certificate_fingerprint"} <= set(body)
    assert body["mode"] == "passive"
    assert body["certificate_fingerprint"] == running.agent.identity.fingerprint


async def test_redirects_to_the_slash_form(running):
    for path, _target in (("/v1", "/v1/"), ("/v1/commands", "/v1/commands/")):
        status, _ = await running.get(path, token=None)
        assert status == 308
    async with running.client.post(f"{running.base}/v1/commands", allow_redirects=False) as r:
        assert r.status == 308
        assert r.headers["Location"].startswith("/v1/commands/")


async def test_sync_command_result_shape(running):
    status, result = await running.post({"name": "poll.get_hardware_info", "params": {}})
    assert status == 200
    assert set(result) == {
        "id",
        "command_name",
        "command_status",
        "command_error",
        "command_result",
    }
    assert result["command_name"] == "get_hardware_info"
    assert result["command_status"] == "SUCCEEDED"
    assert result["command_result"]["hostname"] == "node-1"
    status, listing = await running.get("/v1/commands/")
    assert [r["id"] for r in listing["commands"]] == [result["id"]]
    status, single = await running.get(f"/v1/commands/{result['id']}")
    assert single == result


async def test_inventory_result_bytes_as_json_dumps_gives_them(running):
    """The cached inventory text is spliced into each result: same bytes as encoding the
    whole record, and every command keeps its own id."""
    import json

    bodies = []
    for _ in range(2):
        async with running.client.post(
            f"{running.base}/v1/commands/",
            json={"name": "poll.get_hardware_info"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
            bodies.append(await response.read())
    records = [json.loads(body) for body in bodies]
    assert records[0]["id"] != records[1]["id"]
    for body, record in zip(bodies, records, strict=True):
        assert body == json.dumps(record).encode()
        assert record["command_result"] == running.agent.inventory.value
    status, single = await running.get(f"/v1/commands/{records[0]['id']}")
    assert status == 200
    assert single == records[0]


async def test_inventory_is_cached_until_refresh(running):
    _, first = await running.post({"name": "poll.get_hardware_info"})
    _, second = await running.post({"name": "poll.get_hardware_info"})
    assert first["command_result"]["calls"] == second["command_result"]["calls"]
    _, third = await running.post({"name": "poll.get_hardware_info", "params": {"refresh": True}})
    assert third["command_result"]["calls"] == first["command_result"]["calls"] + 1


async def test_token_in_query_or_bearer_header(running):
    status, _ = await running.post({"name": "standby.sync"}, token=None)
    assert status == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with running.client.post(
        f"{running.base}/v1/commands/", json={"name": "standby.sync"}, headers=headers
    ) as response:
        assert response.status == 200
        assert (await response.json())["command_status"] == "SUCCEEDED"


async def test_wrong_or_missing_token_is_401_with_fault_body(running):
    for token in (None, "wrong"):
        status, body = await running.post({"name": "standby.sync"}, token=token)
        assert status == 401
        assert body == {"faultcode": "Client", "faultstring": "401 Unauthorized: Token invalid."}
        status, body = await running.get("/v1/commands/", token=token)
        assert status == 401 and "faultstring" in body
    assert running.agent.guard.summary() == {"token": 4}


async def test_bad_requests_get_documented_codes_and_agent_keeps_serving(running):
    cases = [
        (None, b"{not json", 400),
        ({"params": {}}, None, 400),  # missing name
        ({"name": "nodot"}, None, 400),
        ({"name": "nosuch.command"}, None, 404),  # unknown extension
        ({"name": "poll.nosuch"}, None, 400),  # unknown command of a known extension
        ({"name": "poll.get_hardware_info", "params": {"refresh": "yes"}}, None, 400),
        ({"name": "poll.get_hardware_info", "params": {"bogus": 1}}, None, 400),
        ({"name": "poll.get_hardware_info", "params": [1, 2]}, None, 400),
        ({"name": 42}, None, 400),
        ([1, 2, 3], None, 400),
    ]
    for body, raw, code in cases:
        status, fault = await running.post(body, raw=raw)
        assert status == code, (body, raw, fault)
        assert fault["faultcode"] == "Client" and fault["faultstring"]
    status, fault = await running.post({"name": "poll.get_hardware_info", "params": {"refresh": 1}})
    assert status == 400 and fault["faultstring"].startswith("Invalid command parameters: ")
    status, fault = await running.get("/v1/commands/no-such-id")
    assert status == 404 and fault["faultstring"]
    status, fault = await running.get("/no/such/route", token=None)
    assert status == 404 and fault["faultstring"]
    status, _ = await running.get("/v1/status", token=None)
    assert status == 200


async def test_oversized_body_is_413(running):
    raw = b'{"name": "poll.get_hardware_info", "params": {"x": "' + b"a" * (1024 * 1024) + b'"}}'
    status, fault = await running.post(None, raw=raw)
    assert status == 413
    assert "too large" in fault["faultstring"]
    status, _ = await running.get("/v1/status", token=None)
    assert status == 200


async def test_exception_inside_a_command_becomes_command_error(running):
    async def explode(value: int = 0) -> None:
        raise TypeError(f"cannot handle {value}")

    running.agent.registry.add("test", "explode", explode, params={"value": Param((int,))})
    status, result = await running.post({"name": "test.explode", "params": {"value": 3}})
    assert status == 200
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["type"] == "TypeError"
    assert result["command_error"]["message"] == "cannot handle 3"
    status, listing = await running.get("/v1/commands/")
    assert status == 200 and listing["commands"][-1]["command_status"] == "FAILED"


async def test_async_command_busy_rule_and_wait(running):
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "done"

    running.agent.registry.add("test", "slow", slow, is_async=True)
    status, result = await running.post({"name": "test.slow"})
    assert status == 200 and result["command_status"] == "RUNNING"
    status, fault = await running.post({"name": "standby.sync"})
    assert status == 409 and "Agent is busy" in fault["faultstring"]
    waiter = asyncio.create_task(running.get(f"/v1/commands/{result['id']}", wait="true"))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    release.set()
    status, finished = await waiter
    assert finished["command_status"] == "SUCCEEDED"
    assert finished["command_result"] == {"result": "slow: done"}
    status, _ = await running.post({"name": "standby.sync"})
    assert status == 200


async def test_history_is_bounded_but_keeps_order(tmp_path):
    run = await start(tmp_path / "state", command_history=3)
    try:
        ids = []
        for _ in range(5):
            _, result = await run.post({"name": "standby.sync"})
            ids.append(result["id"])
        _, listing = await run.get("/v1/commands/")
        assert [r["id"] for r in listing["commands"]] == ids[-3:]
    finally:
        await run.client.close()
        await run.server.stop()


async def test_power_commands_use_the_backend(running):
    _, result = await running.post({"name": "standby.power_off"}, wait=True)
    assert result["command_status"] == "SUCCEEDED"
    assert running.power.calls == ["power_off"]
    _, result = await running.post({"name": "standby.run_image"}, wait=True)
    assert running.power.calls == ["power_off", "reboot"]


async def test_steps_advertise_only_what_is_implemented(running):
    _, clean = await running.post(
        {"name": "clean.get_clean_steps", "params": {"node": {}, "ports": []}}
    )
    cleaning = clean["command_result"]["clean_steps"]["TacetHardwareManager"]
    assert [(s["step"], s["priority"]) for s in cleaning] == [
        ("erase_devices_metadata", 99),
        ("erase_devices", 10),
    ]
    assert "execute_clean_step" in running.agent.registry.commands["clean"]
    _, deploy = await running.post(
        {"name": "deploy.get_deploy_steps", "params": {"node": {}, "ports": []}}
    )
    steps = deploy["command_result"]["deploy_steps"]["TacetHardwareManager"]
    assert [s["step"] for s in steps] == [
        "write_image",
        "erase_devices_metadata",
        "erase_devices",
    ]
    assert all(s["priority"] == 0 for s in steps)
    assert all({"step", "priority", "interface"} <= set(s) for s in steps)
    assert set(deploy["command_result"]["hardware_manager_version"]) == {"TacetHardwareManager"}
    assert "execute_deploy_step" in running.agent.registry.commands["deploy"]


async def test_service_steps_as_ironic_reads_them(running):
    """ironic's servicing: service.get_service_steps, then service.execute_service_step."""
    _, listed = await running.post(
        {"name": "service.get_service_steps", "params": {"node": {}, "ports": []}}
    )
    result = listed["command_result"]
    assert [s["step"] for s in result["service_steps"]["TacetHardwareManager"]] == ["write_image"]
    assert all(
        {"step", "priority", "interface"} <= set(s)
        for s in result["service_steps"]["TacetHardwareManager"]
    )
    assert result["hardware_manager_version"] == {"TacetHardwareManager": "1.0"}
    version = result["hardware_manager_version"]

    async def service(step: dict, service_version: dict = version) -> dict:
        params = {"step": step, "node": {}, "ports": [], "service_version": service_version}
        _, done = await running.post(
            {"name": "service.execute_service_step", "params": params}, wait=True
        )
        return done

    erase = {"step": "erase_devices", "interface": "deploy", "priority": 0, "args": {}}
    done = await service(erase)  # disks are never erased in servicing
    assert done["command_status"] == "FAILED" and done["command_error"]["code"] == 400
    assert "unknown service step 'erase_devices'" in done["command_error"]["message"]
    image = {"urls": ["http://127.0.0.1:9/img"], "os_hash_algo": "sha256"}
    image["os_hash_value"] = "0" * 64
    write = {"step": "write_image", "interface": "deploy", "priority": 0}
    done = await service({**write, "args": {"image_info": image}}, {"Other": "2"})
    assert done["command_status"] == "CLEAN_VERSION_MISMATCH"
    done = await service({**write, "args": {"image_info": image}})
    # it reached write_image: the test machine has no disk to write to
    assert done["command_status"] == "FAILED" and done["command_error"]["code"] == 409
    assert "no disk of at least 4 GiB" in done["command_error"]["message"]
    assert done["command_name"] == "execute_service_step"
    # an image_info that cannot work is refused on the POST, as for deploy steps
    bad = {**write, "args": {"image_info": {"urls": []}}}
    code, refused = await running.post(
        {"name": "service.execute_service_step", "params": {"step": bad}}
    )
    assert code == 400 and "urls" in refused["faultstring"]


# Every command ironic's agent client sends (docs/ironic.md, "Commands ironic sends").
IRONIC_HANDLED = [
    "clean.get_clean_steps",
    "clean.execute_clean_step",
    "deploy.get_deploy_steps",
    "deploy.execute_deploy_step",
    "service.get_service_steps",
    "service.execute_service_step",
    "standby.get_partition_uuids",
    "standby.sync",
    "standby.power_off",
    "standby.run_image",
    "log.collect_system_logs",
    "image.install_bootloader",
]
IRONIC_REFUSED = ["rescue.finalize_rescue", "system.lockdown"]


async def test_ironic_commands_are_served_or_refused_as_documented(running):
    for name in IRONIC_HANDLED:
        assert running.agent.registry.find(name).name == name.split(".")[1]
    for name in IRONIC_REFUSED:
        extension = name.split(".")[0]
        code, fault = await running.post({"name": name, "params": {}})
        assert (code, fault) == (
            404,
            {"faultcode": "Client", "faultstring": f"Extension {extension} not found"},
        )
    code, fault = await running.post({"name": "standby.cache_image", "params": {}})
    assert code == 400
    assert fault["faultstring"] == "Unknown command cache_image of extension standby"


async def test_collect_system_logs_is_a_tar_gz(running):
    import base64
    import io
    import tarfile

    _, result = await running.post({"name": "log.collect_system_logs"})
    data = base64.b64decode(result["command_result"]["system_logs"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        names = archive.getnames()
    assert {"dmesg.txt", "ip-addr.txt", "lsblk.txt", "tacet-agent.log"} <= set(names)


async def test_client_without_the_agent_certificate_is_refused(running):
    async with aiohttp.ClientSession() as default_client:
        try:
            await default_client.get(f"{running.base}/v1/status")
        except aiohttp.ClientConnectorCertificateError:
            pass
        else:
            raise AssertionError("a self-signed agent certificate must not verify by default")
