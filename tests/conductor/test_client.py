"""The client library against real agents over TLS on loopback: every command, every error."""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import socket
import ssl
import tarfile

import pytest
from aiohttp import web

from agent.tls import load_identity, server_context
from conductor.client import (
    AgentClient,
    Busy,
    CommandFailed,
    Options,
    Pool,
    ProtocolError,
    Rejected,
    Trust,
    Unauthenticated,
    Unreachable,
    Untrusted,
    parse_address,
    parse_pin,
)
from conductor.tls import conductor_context
from tests.conductor.conftest import IMAGE, TOKEN


def sha256_of(pem: str) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


@pytest.fixture
async def ca_node(start_node, test_pki):
    return await start_node(cert_file=test_pki.node_cert, key_file=test_pki.node_key)


def ca_client(node, test_pki, token=TOKEN, **options) -> AgentClient:
    return AgentClient(node.address, Options(Trust(cafile=test_pki.ca_pem), token, **options))


def test_addresses_and_pins():
    assert parse_address("node-1") == ("node-1", 9999)
    assert parse_address("10.0.0.5:8443") == ("10.0.0.5", 8443)
    assert parse_address("[fd00::5]:9999") == ("fd00::5", 9999)
    assert parse_address("fd00::5") == ("fd00::5", 9999)
    for bad in ("host:0", "host:x", "[fd00::5", ":99"):
        with pytest.raises(ValueError):
            parse_address(bad)
    digest = "ab" * 32
    assert parse_pin(f"sha256:{digest.upper()}") == digest
    assert parse_pin("SHA256:" + ":".join("ab" for _ in range(32))) == digest
    for bad in ("ab" * 32, "sha1:" + "ab" * 20, "sha256:abc"):
        with pytest.raises(ValueError):
            parse_pin(bad)


def test_a_way_to_verify_is_required(test_pki):
    with pytest.raises(ValueError, match="no way to verify"):
        AgentClient("127.0.0.1", Options(Trust()))
    with pytest.raises(ValueError, match="choose one"):
        AgentClient("127.0.0.1", Options(Trust(cafile=test_pki.ca_pem, pin="ab" * 32)))
    assert AgentClient("h", Options(Trust(), token="t")).mode == "binding"
    assert AgentClient("h", Options(Trust(cafile=test_pki.ca_pem))).mode == "ca"
    assert AgentClient("h", Options(Trust(cafile=test_pki.node_cert))).mode == "pinned-certificate"


async def test_ca_mode_status_inventory_and_node_info(ca_node, test_pki):
    async with ca_client(ca_node, test_pki) as client:
        status = await client.status()
        assert status.version and status.mode == "passive" and status.node_uuid is None
        assert status.certificate_fingerprint == ca_node.agent.identity.fingerprint
        inventory = await client.get_hardware_info()
        assert inventory.disk_serials == {"TEST0001"}
        assert inventory.raw["hostname"] == "node-1"
        refreshed = await client.get_hardware_info(refresh=True)
        assert refreshed.raw["calls"] > inventory.raw["calls"]
        node_info = {"node": {"uuid": "u-1", "properties": {}}, "config": {}}
        assert (await client.set_node_info(node_info))["node"]["uuid"] == "u-1"
        assert (await client.get_node_info())["node"]["uuid"] == "u-1"
        assert (await client.status()).node_uuid == "u-1"
        clean = await client.get_clean_steps()
        names = {s["step"] for s in clean["clean_steps"]["TacetHardwareManager"]}
        assert "erase_devices_metadata" in names
        assert clean["hardware_manager_version"] == {"TacetHardwareManager": "1.0"}
        deploy = await client.get_deploy_steps()
        steps = deploy["deploy_steps"]["TacetHardwareManager"]
        assert "write_image" in [s["step"] for s in steps]
        history = await client.list_commands()
        assert [r.command_name for r in history][:2] == ["get_hardware_info", "get_hardware_info"]
        one = await client.get_command(history[0].id)
        assert one.status == "SUCCEEDED" and one.id == history[0].id
        await client.sync()


async def test_power_and_logs(ca_node, test_pki):
    async with ca_client(ca_node, test_pki) as client:
        result = await client.power_off()
        done = await client.wait(result, interval=0.05)
        assert done.status == "SUCCEEDED"
        await client.wait(await client.run_image(), interval=0.05)
        assert ca_node.power.calls == ["power_off", "reboot"]
        archive = await client.collect_system_logs()
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            assert "tacet-agent.log" in tar.getnames()


async def test_write_image_prepare_image_and_partition_uuids(ca_node, test_pki, image_server):
    async with ca_client(ca_node, test_pki) as client:
        empty = await client.get_partition_uuids()  # nothing written yet: {} as in IPA
        assert (empty.root_uuid, empty.efi_system_partition_uuid, empty.partitions) == (
            None,
            None,
            {},
        )
        seen = []
        result = await client.write_image(image_server.info())
        done = await client.wait(result, interval=0.05, on_poll=seen.append)
        assert done.command_result["deploy_result"]["result"].startswith("image (img-1) written")
        assert seen[-1].status == "SUCCEEDED"
        uuids = await client.get_partition_uuids()
        assert uuids.root_uuid and uuids.efi_system_partition_uuid
        assert len(uuids.partitions) == 2
        result = await client.prepare_image(image_server.info(image_id="img-2"))
        done = await client.wait(result, interval=0.05)
        assert "img-2" in done.command_result["result"]
    with open(ca_node.disk, "rb") as handle:
        assert handle.read(len(IMAGE)) == IMAGE


async def test_failed_command_carries_the_agents_error(ca_node, test_pki, image_server):
    async with ca_client(ca_node, test_pki) as client:
        result = await client.prepare_image(image_server.info(digest="0" * 64))
        with pytest.raises(CommandFailed) as failed:
            await client.wait(result, interval=0.05)
        error = failed.value.command_error
        assert error["code"] == 400 and "checksum" in error["message"].lower()
        assert failed.value.exit_code == 1


async def test_erase_devices_metadata(ca_node, test_pki, image_server):
    async with ca_client(ca_node, test_pki) as client:
        await client.wait(await client.write_image(image_server.info()), interval=0.05)
        result = await client.erase_devices_metadata()
        done = await client.wait(result, interval=0.05)
        assert done.command_result["clean_result"]["erased"] == {str(ca_node.disk): "metadata"}
        # an unknown step is the agent's refusal, reported with its error
        bogus = await client.run(
            "clean.execute_clean_step", {"step": {"step": "nope", "interface": "deploy"}}
        )
        with pytest.raises(CommandFailed) as refused:
            await client.wait(bogus, interval=0.05)
        assert refused.value.command_error["code"] == 400
        assert "unknown clean step" in refused.value.command_error["message"]
    with open(ca_node.disk, "rb") as handle:
        head = handle.read(len(IMAGE))
    assert head != IMAGE and b"EFI PART" not in head[:8192]  # the partition table is gone


async def test_rejected_requests(ca_node, test_pki):
    async with ca_client(ca_node, test_pki) as client:
        with pytest.raises(Rejected) as unknown:
            await client.run("nosuch.command")
        assert unknown.value.status == 404
        with pytest.raises(Rejected) as invalid:
            await client.run("poll.set_node_info", {"bogus": 1})
        assert invalid.value.status == 400 and "bogus" in str(invalid.value)
        with pytest.raises(Rejected) as missing:
            await client.get_command("no-such-id")
        assert missing.value.status == 404


async def test_busy(ca_node, test_pki, image_server):
    image_server.hold = True
    async with ca_client(ca_node, test_pki) as client:
        running = await client.write_image(image_server.info())
        assert running.running
        with pytest.raises(Busy) as busy:
            await client.sync()
        assert "busy" in str(busy.value).lower() and busy.value.exit_code == 5
        image_server.release.set()
        await client.wait(running, interval=0.05)


async def test_wrong_or_missing_token_is_unauthenticated(ca_node, test_pki):
    for token in ("wrong-token", None):
        async with ca_client(ca_node, test_pki, token=token) as client:
            with pytest.raises(Unauthenticated) as refused:
                await client.list_commands()
            assert "Token invalid" in str(refused.value) and refused.value.exit_code == 4
            assert (await client.status()).version  # status needs no token


async def test_mutual_tls(start_node, test_pki):
    node = await start_node(
        cert_file=test_pki.node_cert,
        key_file=test_pki.node_key,
        client_ca_file=test_pki.ca_pem,
        agent_token=None,
    )
    trust = Trust(
        cafile=test_pki.ca_pem, certfile=test_pki.client_cert, keyfile=test_pki.client_key
    )
    async with AgentClient(node.address, Options(trust)) as client:
        assert (await client.get_hardware_info()).disk_serials == {"TEST0001"}
    async with AgentClient(node.address, Options(Trust(cafile=test_pki.ca_pem), retries=0)) as c:
        with pytest.raises((Unauthenticated, Unreachable)):  # refused in the handshake
            await c.get_hardware_info()
    assert node.agent.executor.history()[-1]["command_name"] == "get_hardware_info"
    assert len(node.agent.executor.history()) == 1


async def test_untrusted_ca_sends_nothing(start_node, test_pki, tmp_path):
    from conductor import pki

    pki.init_ca(tmp_path / "other")
    node = await start_node(cert_file=test_pki.node_cert, key_file=test_pki.node_key)
    options = Options(Trust(cafile=tmp_path / "other" / "ca.pem"), TOKEN)
    async with AgentClient(node.address, options) as client:
        with pytest.raises(Untrusted) as untrusted:
            await client.list_commands()
        assert untrusted.value.exit_code == 4
    assert node.agent.guard.summary().get("token", 0) == 0


async def test_pinned_agent_certificate_as_cafile(start_node, tmp_path):
    node = await start_node()  # the agent's own generated certificate
    cert = tmp_path / "agent.pem"
    cert.write_text(node.agent.identity.cert_pem)
    async with AgentClient(node.address, Options(Trust(cafile=cert), TOKEN)) as client:
        assert client.mode == "pinned-certificate"
        assert len(await client.list_commands()) == 0


async def test_pinned_agents_share_one_context_and_a_wrong_certificate_gets_nothing(
    start_node, tmp_path
):
    """Every agent trusted by its exact certificate goes through one shared context; the
    certificate is compared on each connection, resumed ones included, before the
    request (and its token) is written."""
    first, second = await start_node("first"), await start_node("second")
    pems = {}
    for name, node in (("first", first), ("second", second)):
        pems[node] = tmp_path / f"{name}.pem"
        pems[node].write_text(node.agent.identity.cert_pem)
    pool = Pool(max_kept_alive=0)  # a connection per request: the later ones resume
    clients = [
        AgentClient(node.address, Options(Trust(cafile=pems[node]), TOKEN), pool=pool)
        for node in (first, second)
    ]
    try:
        for client in clients:
            for _ in range(3):
                await client.list_commands()
        shared = {client.context.context for client in clients}
        assert len(shared) == 1
        assert shared.pop().resumed >= 4
        # the second agent's certificate pinned for the first agent's address: the
        # session the shared context offers there resumes, and is refused all the same
        impostor = AgentClient(first.address, Options(Trust(cafile=pems[second]), TOKEN), pool=pool)
        with pytest.raises(Untrusted, match="not the pinned certificate"):
            await impostor.list_commands()
        assert impostor.context.context.session_for("127.0.0.1") is not None
    finally:
        await pool.close()
    assert first.agent.guard.summary().get("token", 0) == 0


def test_a_pin_is_one_certificate_compared_whole_within_its_validity(test_pki):
    from conductor.tls import Pinned, pinning_context

    pem = test_pki.node_cert.read_text()
    pinned = Pinned.of(pinning_context(), pem)
    der = ssl.PEM_cert_to_DER_cert(pem)
    pinned.check(der)
    for served, message in ((None, "not the pinned"), (der[:-1] + b"x", "not the pinned")):
        with pytest.raises(ssl.SSLCertVerificationError, match=message):
            pinned.check(served)
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        pinned.check(der, now=pinned.not_after + 1)
    with pytest.raises(ssl.SSLCertVerificationError, match="not yet valid"):
        pinned.check(der, now=pinned.not_before - 1)
    with pytest.raises(ValueError, match="one certificate, not 2"):
        Pinned.of(pinning_context(), pem + test_pki.ca_pem.read_text())


async def test_fingerprint_pin(start_node):
    node = await start_node()
    right = sha256_of(node.agent.identity.cert_pem)
    async with AgentClient(node.address, Options(Trust(pin=right), TOKEN)) as client:
        await client.sync()
    async with AgentClient(node.address, Options(Trust(pin="00" * 32), TOKEN)) as client:
        with pytest.raises(Untrusted, match="does not match the pin"):
            await client.sync()
    assert [r["command_name"] for r in node.agent.executor.history()] == ["sync"]
    assert node.agent.guard.summary().get("token", 0) == 0


async def test_token_binding(start_node):
    node = await start_node()
    async with AgentClient(node.address, Options(Trust(), TOKEN)) as client:
        assert client.mode == "binding"
        await client.sync()
        assert client.seen_fingerprint == node.agent.identity.fingerprint
    async with AgentClient(node.address, Options(Trust(), "another-token")) as client:
        with pytest.raises(Untrusted, match="binding does not match"):
            await client.sync()
    assert node.agent.guard.summary().get("token", 0) == 0  # the wrong token was never sent


async def test_binding_needs_a_preshared_token(start_node):
    node = await start_node(agent_token=None)
    async with AgentClient(node.address, Options(Trust(), TOKEN)) as client:
        with pytest.raises(Untrusted, match="no token binding"):
            await client.status()


async def test_trust_on_first_use_records_what_it_saw(start_node):
    node = await start_node(agent_token=None)
    async with AgentClient(node.address, Options(Trust(trust_on_first_use=True))) as client:
        inventory = await client.get_hardware_info()
        assert inventory.disk_serials == {"TEST0001"}
        assert client.seen_fingerprint == node.agent.identity.fingerprint


async def test_closed_port_is_unreachable_after_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = Options(Trust(trust_on_first_use=True), retries=2, backoff=0.01)
    async with AgentClient(f"127.0.0.1:{port}", options) as client:
        with pytest.raises(Unreachable) as unreachable:
            await client.status()
        assert unreachable.value.exit_code == 3


async def test_retries_reach_an_agent_that_comes_up_late(start_node):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = Options(Trust(), TOKEN, retries=8, backoff=0.1)
    async with AgentClient(f"127.0.0.1:{port}", options) as client:
        status = asyncio.create_task(client.status())
        await asyncio.sleep(0.3)
        assert not status.done()
        await start_node(listen_port=port)
        assert (await status).version


@pytest.fixture
async def bad_server(tmp_path, aiohttp_server):
    """A TLS server that answers outside the protocol."""
    (tmp_path / "bad").mkdir()
    identity = load_identity(tmp_path / "bad", [ipaddress.ip_address("127.0.0.1")])

    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>")

    async def half_result(request: web.Request) -> web.Response:
        return web.json_response({"id": "x", "command_status": "SUCCEEDED"})

    async def no_fault(request: web.Request) -> web.Response:
        return web.json_response({"error": "nope"}, status=500)

    app = web.Application()
    app.router.add_get("/v1/status", not_json)
    app.router.add_post("/v1/commands/", half_result)
    app.router.add_get("/v1/commands/", no_fault)
    server = await aiohttp_server(app, host="127.0.0.1", ssl=server_context(identity))
    cert = tmp_path / "bad.pem"
    cert.write_text(identity.cert_pem)
    return AgentClient(f"127.0.0.1:{server.port}", Options(Trust(cafile=cert), TOKEN))


async def test_protocol_errors(bad_server):
    async with bad_server as client:
        with pytest.raises(ProtocolError, match="not JSON"):
            await client.status()
        with pytest.raises(ProtocolError, match="lacks command_name"):
            await client.sync()
        with pytest.raises(ProtocolError, match="without a faultstring") as error:
            await client.list_commands()
        assert error.value.exit_code == 6


async def test_one_kept_alive_connection_for_many_requests(ca_node, test_pki):
    pool = Pool()
    client = AgentClient(ca_node.address, Options(Trust(cafile=test_pki.ca_pem), TOKEN), pool=pool)
    try:
        for _ in range(5):
            await client.status()
            await client.list_commands()
        assert pool.connections_made == 1 and len(pool.connections) == 1
    finally:
        await pool.close()


async def test_resuming_context_offers_the_last_session(test_pki):
    """A reconnect to the same server resumes the TLS session (abbreviated handshake)."""
    from agent.tls import Identity
    from conductor.http import ResponseReader
    from wire.certs import fingerprint

    pem = test_pki.node_cert.read_text()
    identity = Identity(test_pki.node_cert, test_pki.node_key, pem, fingerprint(pem), False)

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context(identity))
    port = server.sockets[0].getsockname()[1]
    context = conductor_context(cafile=test_pki.ca_pem)
    pool = Pool()
    reused = []
    held = None
    try:
        for _ in range(2):
            connection = await pool.connect(context, "127.0.0.1", port, 5.0)
            assert (await connection.exchange(ResponseReader())).body == b"{}"
            reused.append(connection.tls.session_reused)
            held = held if reused[-1] else context.session_for("127.0.0.1")
            connection.close()
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
    assert reused == [False, True]
    assert context.sessions_known() == 1
    # a resumed connection keeps the session held (re-reading it leaked memory)
    assert context.session_for("127.0.0.1") is held
    assert (context.handshakes, context.resumed) == (2, 1)


async def test_beyond_the_kept_alive_limit_sessions_are_resumed(ca_node, test_pki):
    pool = Pool(max_kept_alive=0)
    client = AgentClient(ca_node.address, Options(Trust(cafile=test_pki.ca_pem), TOKEN), pool=pool)
    assert not client.keep_alive
    try:
        for _ in range(3):
            await client.status()
        await client.sync()
    finally:
        await pool.close()
    assert pool.connections_made == 4  # a connection per request
    assert (client.context.handshakes, client.context.resumed) == (4, 3)  # full, then resumed
    # one slot per agent address, however many clients talk to it
    pool = Pool(max_kept_alive=1)
    options = Options(Trust(cafile=test_pki.ca_pem), TOKEN)
    first, again = (AgentClient(ca_node.address, options, pool=pool) for _ in range(2))
    other = AgentClient("127.0.0.2:9", options, pool=pool)
    assert first.keep_alive and again.keep_alive and not other.keep_alive


async def test_held_off_after_failures_is_unauthenticated(ca_node, test_pki):
    async with ca_client(ca_node, test_pki, token="wrong") as client:
        for _ in range(10):
            with pytest.raises(Unauthenticated, match="Token invalid"):
                await client.sync()
        with pytest.raises(Unauthenticated, match="held off") as held:
            await client.sync()
        assert "Retry-After" in str(held.value)


def test_tune_gc_for_polling_only_when_all_agents_keep_alive() -> None:
    import gc

    from conductor.client import tune_gc_for_polling

    before = gc.get_threshold()
    try:
        assert not tune_gc_for_polling(1001, max_kept_alive=1000, threshold=12_345)
        assert gc.get_threshold() == before
        assert tune_gc_for_polling(1000, max_kept_alive=1000, threshold=12_345)
        assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        gc.set_threshold(*before)
