"""The conductor reaches agents by IPv6 address literals, verified through the
certificate's IP SAN: address forms, the Host header and SNI on the wire, and real agents
listening on ``::1`` (the only IPv6 address these tests use)."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from conductor import pki
from conductor.client import AgentClient, Options, Pool, Trust, Untrusted, parse_address
from conductor.fleet import agent_address
from conductor.http import ResponseReader
from conductor.tls import conductor_context
from tests.conductor.conftest import IMAGE, TOKEN, Pki
from tests.conductor.test_cli import fleet_toml, tacet
from tests.conductor.test_fleet import NodeInventory, mac
from tests.conductor.test_pki import assert_one_line_error, run_cli

LOOPBACK_ZONE = socket.if_nametoindex("lo")  # getaddrinfo takes a name only for fe80::/10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[::1]:9998", ("::1", 9998)),
        ("[::1]", ("::1", 9999)),
        ("::1", ("::1", 9999)),  # bare: the whole text is the address
        ("::1:9998", ("::1:9998", 9999)),  # so a port needs the brackets
        ("[0:0:0:0:0:0:0:1]:9998", ("::1", 9998)),  # compressed
        ("[FD00::5]:9998", ("fd00::5", 9998)),
        ("[fe80::1%eth0]:9998", ("fe80::1%eth0", 9998)),
        ("fe80::1%eth0", ("fe80::1%eth0", 9999)),
        ("[fe80::1%2]", ("fe80::1%2", 9999)),
        (" 10.0.0.5:8443 ", ("10.0.0.5", 8443)),
        ("node-1", ("node-1", 9999)),
    ],
)
def test_address_forms(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[::1]x", "expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"),
        ("[::1]:", "expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"),
        ("[::1", "expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"),
        ("::1]", "expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"),
        ("[]:9998", "expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"),
        ("[node-1]:9998", "expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"),
        ("[10.0.0.5]:9998", "an ipv4 address cannot be in brackets"),
        ("user@[::1]:9998", "expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"),
        ("[::1]:9998/v1", "expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"),
        ("[::1]:0", "port must be 1-65535"),
        ("[::1]:65536", "port must be 1-65535"),
        ("[::1]:+1", "port must be 1-65535"),
        ("1.2.3.4:5:6", "port must be 1-65535"),
        ("[fe80::1%]:9998", "expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"),
        ("[fe80::1%eth 0]:9998", "the zone after % must be an interface name or index"),
        ("fe80::1%\x1b[31m", "the zone after % must be an interface name or index"),
        (":9998", "no host"),
    ],
)
def test_bad_addresses_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError) as refused:
        parse_address(text)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(ValueError):
        agent_address(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "[::1]x"], "expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"),
        (["status", "[::1]:0"], "port must be 1-65535"),
        (["inventory", "[fe80::1%eth 0]"], "the zone after % must be an interface name"),
    ],
)
def test_bad_addresses_on_the_command_line(argv, message, capsys):
    status, out, err = run_cli(capsys, *argv, "--trust-on-first-use")
    assert_one_line_error(status, out, err, message)
    assert err.startswith("tacet: error: HOST: ")


def test_the_host_header_brackets_the_address_and_drops_the_zone():
    """RFC 7230 writes an IPv6 host in brackets; a zone means something only here
    (RFC 6874): the agent sees the address it has."""
    trust = Options(Trust(trust_on_first_use=True))
    for address, host_header in [
        ("[::1]:9998", "[::1]:9998"),
        ("::1", "[::1]:9999"),
        (f"[::1%{LOOPBACK_ZONE}]:9998", "[::1]:9998"),
        ("[fe80::1%eth0]:9998", "[fe80::1]:9998"),
        ("127.0.0.1:9998", "127.0.0.1:9998"),
    ]:
        client = AgentClient(address, trust)
        headers, _ = client._request("GET", "/v1/status", None, token=False)
        assert ("Host", host_header) in headers
        request = ResponseReader("GET", "/v1/status", headers).request
        assert f"\r\nhost: {host_header}\r\n".encode() in request.lower()


# -- on the wire: a TLS server on ::1 that records what the conductor sends --------------
@pytest.fixture(scope="module")
def v6_pki(tmp_path_factory) -> Pki:
    """A CA, a client, a node certificate naming ::1 and one naming only 127.0.0.1."""
    base = tmp_path_factory.mktemp("v6-pki")
    pki.init_ca(base)
    pki.write_profile(base)  # for --pki: the CA, and the nodes' tokens
    client = pki.issue_client(base, "conductor")
    for name, ips in (("v6-node", ["::1", "127.0.0.1"]), ("v4-node", ["127.0.0.1"])):
        bundle = pki.node_bundle(base, name, ips, token=TOKEN)
        pki.save_node(base, bundle)
        (base / f"{name}-cert.pem").write_bytes(bundle.cert_pem)
        (base / f"{name}-key.pem").write_bytes(bundle.key_pem)
        (base / f"{name}-key.pem").chmod(0o600)
    return Pki(
        base,
        base / "v6-node-cert.pem",
        base / "v6-node-key.pem",
        client.cert_path,
        client.key_path,
    )


class Recorder:
    """What a TLS server saw of each connection: the SNI (None when none) and the request."""

    def __init__(self) -> None:
        self.names: list[str | None] = []
        self.requests: list[bytes] = []


async def recording_server(cert: Path, key: Path, recorder: Recorder) -> asyncio.Server:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _object, name, _context: recorder.names.append(name)
    body = json.dumps({"started_at": 0, "version": "1", "mode": "passive"}).encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        recorder.requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "::1", 0, ssl=context)


async def test_no_sni_for_an_ip_address_and_the_ip_san_is_checked(v6_pki):
    """Over the MemoryBIO connection: Python's ssl sends no SNI for an IP address (RFC 6066
    allows only host names) and matches it against the IP SANs; a zone is taken off
    first, or it would be sent as a name and matched against the DNS names."""
    recorder = Recorder()
    server = await recording_server(v6_pki.node_cert, v6_pki.node_key, recorder)
    port = server.sockets[0].getsockname()[1]
    pool = Pool()
    try:
        for address in (f"[::1]:{port}", f"[::1%{LOOPBACK_ZONE}]:{port}"):
            client = AgentClient(address, Options(Trust(cafile=v6_pki.ca_pem)), pool=pool)
            assert (await client.status()).version == "1"
        assert recorder.names == [None, None]
        assert [r.split(b"\r\n")[1].lower() for r in recorder.requests] == [
            f"host: [::1]:{port}".encode()
        ] * 2
        # The recorder does see a name when one is sent: the certificate's DNS name.
        context = conductor_context(cafile=v6_pki.ca_pem)
        connection = await pool.connect(context, "::1", port, 5.0, server_hostname="v6-node")
        connection.close()
        assert recorder.names[-1] == "v6-node"
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


# -- real agents on ::1 --------------------------------------------------------------------
@pytest.fixture
def v6_node(start_node, v6_pki, tmp_path):
    async def start(cert: str = "v6-node", **overrides):
        inventory = NodeInventory(tmp_path / "unused", mac(6), "SER6")
        node = await start_node(
            cert,
            inventory=inventory,
            listen_host="::1",
            cert_file=v6_pki.ca / f"{cert}-cert.pem",
            key_file=v6_pki.ca / f"{cert}-key.pem",
            **overrides,
        )
        inventory.path = node.disk
        node.v6 = f"[::1]:{node.server.port}"
        return node

    return start


async def test_ca_verification_through_the_ip_san(v6_node, v6_pki):
    node = await v6_node()
    zoned = f"[::1%{LOOPBACK_ZONE}]:{node.server.port}"
    for address in (node.v6, zoned):
        async with AgentClient(address, Options(Trust(cafile=v6_pki.ca_pem), TOKEN)) as client:
            assert (await client.status()).mode == "passive"
            assert (await client.get_hardware_info()).system_serial == "SER6"
    assert client.address == zoned  # shown with the zone the operator gave


async def test_a_certificate_without_the_address_is_refused(v6_node, v6_pki):
    node = await v6_node("v4-node")
    options = Options(Trust(cafile=v6_pki.ca_pem), TOKEN, retries=0)
    async with AgentClient(node.v6, options) as client:
        with pytest.raises(Untrusted, match="IP address mismatch"):
            await client.status()


@pytest.mark.parametrize("mode", ["pin", "binding", "tofu", "pinned-certificate"])
async def test_other_trust_modes_over_ipv6(v6_node, v6_pki, mode):
    """These read the certificate with a probe connection first (asyncio's TLS, not the
    pool's): the same address forms, the same server name."""
    node = await v6_node()
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(node.agent.identity.cert_pem)).hexdigest()
    trust = {
        "pin": Trust(pin=digest),
        "binding": Trust(),
        "tofu": Trust(trust_on_first_use=True),
        "pinned-certificate": Trust(cafile=v6_pki.node_cert),
    }[mode]
    for address in (node.v6, f"[::1%{LOOPBACK_ZONE}]:{node.server.port}"):
        async with AgentClient(address, Options(trust, TOKEN)) as client:
            assert client.mode == mode
            assert (await client.get_hardware_info()).system_serial == "SER6"
    wrong = Trust(pin="0" * 64)
    async with AgentClient(node.v6, Options(wrong, TOKEN, retries=0)) as client:
        with pytest.raises(Untrusted, match="does not match the pin"):
            await client.status()


async def test_the_command_line_over_ipv6(v6_node, v6_pki):
    good, bad = await v6_node(), await v6_node("v4-node")
    ca = ["--cafile", str(v6_pki.ca_pem), "--retries", "0"]
    code, out, err = await tacet("status", good.v6, *ca)
    assert code == 0, err
    assert good.agent.identity.fingerprint in out
    # --pki finds the token of the node whose certificate names ::1, with or without a zone
    zoned = f"[::1%{LOOPBACK_ZONE}]:{good.server.port}"
    code, out, err = await tacet("inventory", zoned, "--pki", str(v6_pki.ca), "--retries", "0")
    assert code == 0, err
    assert "SER6" in out
    code, _, err = await tacet("status", bad.v6, *ca)
    assert code == 4, err
    assert err.count("\n") == 1 and "IP address mismatch" in err
    assert f"[::1]:{bad.server.port}" in err


async def test_provision_over_ipv6(v6_node, v6_pki, image_server, tmp_path):
    good, bad = await v6_node(), await v6_node("v4-node")
    image = {
        "url": f"{image_server.base}/disk.img",
        "checksum": "sha256:" + hashlib.sha256(IMAGE).hexdigest(),
    }
    nodes = [
        {"name": "good", "address": good.v6, "macs": [mac(6)]},
        {"name": "wrong-cert", "address": "::1", "port": bad.server.port},
    ]
    fleet = fleet_toml(tmp_path / "fleet.toml", v6_pki, nodes, image)
    code, out, err = await tacet("provision", str(fleet))
    assert code == 1, err  # one done, one failed
    assert "1 done, 1 failed" in out
    results = json.loads((tmp_path / "fleet.results.json").read_text())["nodes"]
    assert results["good"]["state"] == "done", results
    assert results["good"]["address"] == good.v6
    assert results["wrong-cert"]["state"] == "failed", results
    assert "IP address mismatch" in results["wrong-cert"]["reason"]
    assert good.power.calls == ["power_off"] and bad.power.calls == []
    with open(good.disk, "rb") as disk:
        assert disk.read(len(IMAGE)) == IMAGE


def test_node_certificates_name_ipv6_addresses(v6_pki):
    cert = x509.load_pem_x509_certificate(v6_pki.node_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "::1" in {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert pki.node_token_file(v6_pki.ca, "::1") == pki.node_token_file(v6_pki.ca, "::1%lo")
    assert pki.node_token_file(v6_pki.ca, "::1") is not None


async def test_a_generated_certificate_names_ipv6_and_verifies(start_node):
    """An agent without a configured certificate makes one whose IP SANs carry its IPv6
    addresses: the conductor can check it by address, as with a CA's certificate."""
    node = await start_node("generated", listen_host="::1")
    identity = node.agent.identity
    assert identity.generated
    cert = x509.load_pem_x509_certificate(identity.cert_pem.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    addresses = names.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("::1") in addresses
    assert not any(a.is_link_local for a in addresses)
    pool = Pool()
    try:
        context = conductor_context(cafile=identity.cert_path)  # the name is checked
        assert context.check_hostname
        connection = await pool.connect(context, "::1", node.server.port, 5.0)
        connection.close()
    finally:
        await pool.close()
