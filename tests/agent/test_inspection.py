"""Inspection call-home against a fake ironic on loopback: the exact body, TLS, retries,
the lookup that follows, and no connection at all without an ironic URL."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl

import pytest
from aiohttp import web

from agent import inspection
from agent.config import Config
from agent.daemon import banner, live_inventory
from agent.inspection import inspection_data, wait_for_dhcp
from agent.tls import load_identity
from tests.agent.conftest import FakeInventory, start

NODE_UUID = "7d1f0c2e-5b3a-4e8d-9f6a-1c2b3d4e5f60"
MAC = "52:54:00:7a:c0:01"
GIB = 1024**3
TLVS = [[1, "04525400aabbcc"], [2, "0545746831"], [5, "737769746368"]]


def disk(name: str, size: int) -> dict:
    return {
        "name": name,
        "model": "QEMU HARDDISK",
        "size": size,
        "rotational": False,
        "serial": f"serial-{name[-3:]}",
        "wwn": None,
        "wwn_with_extension": None,
        "wwn_vendor_extension": None,
        "vendor": "ATA",
        "hctl": None,
        "by_path": None,
        "logical_sectors": 512,
        "physical_sectors": 512,
        "tran": "sata",
    }


class MachineInventory(FakeInventory):
    """A small machine: one NIC with a MAC (and LLDP when asked), one without, two disks."""

    lldp: list | None = None

    def __call__(self):
        self.calls += 1
        return {
            "interfaces": [
                {
                    "name": "eth0",
                    "mac_address": MAC,
                    "ipv4_address": "192.0.2.10",
                    "lldp": self.lldp,
                },
                {"name": "ib0", "mac_address": None, "ipv4_address": None, "lldp": None},
            ],
            "disks": [
                disk("/dev/sda", 100 * GIB),
                disk("/dev/sdb", 8 * GIB),
                disk("/dev/sdc", GIB),
            ],
            "cpu": {"architecture": "x86_64", "count": 2},
            "memory": {"total": 2 * GIB, "physical_mb": 2048},
            "boot": {"current_boot_mode": "uefi", "pxe_interface": MAC},
            "bmc_address": None,
            "bmc_v6address": None,
            "hostname": "node-1",
        }


class FakeIronic:
    """``POST /v1/continue_inspection`` (answers from ``statuses``, then 202) and lookup."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.statuses = list(statuses)
        self.posts: list[dict] = []
        self.headers: list[dict] = []
        self.lookups: list[dict] = []
        self.got_lookup = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v1/continue_inspection", self.continue_inspection)
        self.app.router.add_get("/v1/lookup", self.lookup)

    async def continue_inspection(self, request: web.Request) -> web.Response:
        self.posts.append(await request.json())
        self.headers.append(dict(request.headers))
        if self.statuses:
            status = self.statuses.pop(0)
            return web.json_response({"error_message": f"status {status}"}, status=status)
        # ironic's answer in its base API version (no version header was sent)
        return web.json_response({"uuid": NODE_UUID}, status=202)

    async def lookup(self, request: web.Request) -> web.Response:
        self.lookups.append(dict(request.query))
        self.got_lookup.set()
        return web.json_response({"error_message": "not yet"}, status=404)


@pytest.fixture
def no_logs(monkeypatch):
    """The logs collector's archive, small and known (the real one runs ip, lsblk, ...)."""
    from agent.extensions import log

    monkeypatch.setattr(log, "collect_archive", lambda: b"LOG-ARCHIVE")


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(inspection, "DHCP_POLL", 0.01)


def no_dhcp_wait(**overrides):
    return {"inspection_dhcp_wait_timeout": 0.0, "lookup_interval": 0.02, **overrides}


async def serve(aiohttp_server, fake: FakeIronic, ssl_context=None) -> str:
    server = await aiohttp_server(fake.app, host="127.0.0.1", ssl=ssl_context)
    scheme = "https" if ssl_context else "http"
    return f"{scheme}://127.0.0.1:{server.port}/v1/continue_inspection"


async def run_inspection(tmp_path, url, inventory=None, **overrides):
    run = await start(
        tmp_path / "state",
        inventory=inventory or MachineInventory(),
        agent_token=None,
        inspection_urls=(url,) if isinstance(url, str) else url,
        **no_dhcp_wait(**overrides),
    )
    return run


async def finish(run) -> None:
    await run.client.close()
    await run.server.stop()


# -- the body ----------------------------------------------------------------------------
def test_inspection_data_is_what_ironic_hooks_read():
    inventory = MachineInventory()()
    data = inspection_data(inventory, ("default", "logs"), logs="TG9ncw==")
    assert data == {
        "inventory": {**inventory, "interfaces": [inventory["interfaces"][0]]},
        "root_disk": disk("/dev/sdb", 8 * GIB),  # the smallest of 4 GiB or more
        "boot_interface": MAC,
        "configuration": {
            "collectors": ["default", "logs"],
            "managers": [{"name": "TacetHardwareManager", "version": "1.0"}],
        },
        "logs": "TG9ncw==",
        "error": None,
    }


# What ironic's continue_inspection accepts at least (its request validation, restated):
# an inventory object whose interfaces are a non-empty array of objects with a string MAC.
IRONIC_MINIMUM = {
    "type": "object",
    "required": ["inventory"],
    "properties": {
        "inventory": {
            "type": "object",
            "required": ["interfaces"],
            "properties": {
                "bmc_address": {"type": ["string", "null"]},
                "bmc_v6address": {"type": ["string", "null"]},
                "interfaces": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["mac_address"],
                        "properties": {"mac_address": {"type": "string"}},
                    },
                },
            },
        }
    },
}


def test_inspection_data_passes_ironic_request_validation():
    import jsonschema

    inventory = MachineInventory()()
    with pytest.raises(jsonschema.ValidationError):  # the raw inventory has a null MAC
        jsonschema.validate({"inventory": inventory}, IRONIC_MINIMUM)
    jsonschema.validate(inspection_data(inventory, ("default", "logs")), IRONIC_MINIMUM)


def test_lldp_collector_adds_lldp_raw_per_interface():
    machine = MachineInventory()
    machine.lldp = TLVS
    data = inspection_data(machine(), ("default", "lldp"))
    assert data["lldp_raw"] == {"eth0": TLVS}
    assert data["inventory"]["interfaces"][0]["lldp"] == TLVS
    assert "logs" not in data


def test_unsupported_collector_is_reported_as_the_ramdisk_error():
    data = inspection_data(MachineInventory()(), ("default", "numa-topology", "extra-hardware"))
    assert data["error"] == (
        "inspection collector(s) numa-topology, extra-hardware not supported by this agent "
        "(supported: default, logs, lldp, pci-devices)"
    )


async def test_pci_devices_collector_posts_pci_devices(
    tmp_path, aiohttp_server, no_logs, monkeypatch
):
    sysfs = tmp_path / "sys"
    device = sysfs / "bus/pci/devices/0000:00:03.0"
    device.mkdir(parents=True)
    for name, value in (("vendor", "0x1af4"), ("device", "0x1000"), ("class", "0x020000")):
        (device / name).write_text(value + "\n")
    monkeypatch.setattr(inspection, "SYSFS", sysfs)
    fake = FakeIronic()
    url = await serve(aiohttp_server, fake)
    run = await run_inspection(tmp_path, url, inspection_collectors=("default", "pci-devices"))
    try:
        await asyncio.wait_for(run.server.ironic, 15)
        posted = fake.posts[0]
        assert posted["pci_devices"] == [
            {
                "vendor_id": "1af4",
                "product_id": "1000",
                "class": "020000",
                "revision": None,
                "bus": "0000:00:03.0",
                "numa_node_id": None,
            }
        ]
        assert posted["error"] is None and "logs" not in posted
    finally:
        await finish(run)


def test_no_disk_big_enough_sends_no_root_disk():
    inventory = {**MachineInventory()(), "disks": [disk("/dev/sdc", GIB)]}
    assert "root_disk" not in inspection_data(inventory, ("default",))


# -- posting -----------------------------------------------------------------------------
async def test_posts_exactly_the_data_once_and_keeps_serving(
    tmp_path, aiohttp_server, no_logs, capsys
):
    fake = FakeIronic()
    url = await serve(aiohttp_server, fake)
    run = await run_inspection(tmp_path, url, global_request_id="req-42")
    try:
        await asyncio.wait_for(run.server.ironic, 15)
        assert run.server.ironic.exception() is None
        assert len(fake.posts) == 1
        inventory = MachineInventory()()
        assert fake.posts[0] == {
            "inventory": {**inventory, "interfaces": [inventory["interfaces"][0]]},
            "root_disk": disk("/dev/sdb", 8 * GIB),
            "boot_interface": MAC,
            "configuration": {
                "collectors": ["default", "logs"],
                "managers": [{"name": "TacetHardwareManager", "version": "1.0"}],
            },
            "logs": base64.b64encode(b"LOG-ARCHIVE").decode(),
            "error": None,
        }
        headers = fake.headers[0]
        assert headers["Content-Type"] == "application/json"
        assert headers["X-OpenStack-Request-ID"] == "req-42"
        # as IPA: no API version, so ironic answers in its base version ({"uuid": ...})
        assert "X-OpenStack-Ironic-API-Version" not in headers
        assert f"inspection data accepted (node {NODE_UUID})" in capsys.readouterr().out
        # no lookup without an API URL; the listener still answers
        status, _ = await run.get("/v1/status", token=None)
        assert status == 200 and run.agent.config.mode == "inspection"
    finally:
        await finish(run)


async def test_retries_409_and_5xx_then_succeeds(tmp_path, aiohttp_server, no_logs):
    fake = FakeIronic(statuses=(503, 409, 500))
    url = await serve(aiohttp_server, fake)
    run = await run_inspection(tmp_path, url)
    try:
        await asyncio.wait_for(run.server.ironic, 15)
        assert len(fake.posts) == 4
        assert fake.posts[0] == fake.posts[3]
    finally:
        await finish(run)


async def test_a_refusal_is_not_retried(tmp_path, aiohttp_server, no_logs, capsys):
    fake = FakeIronic(statuses=(400, 400))
    url = await serve(aiohttp_server, fake)
    run = await run_inspection(tmp_path, url)
    try:
        await asyncio.wait_for(run.server.ironic, 15)
        assert len(fake.posts) == 1
        assert "inspection FAILED" in capsys.readouterr().out
        status, _ = await run.get("/v1/status", token=None)
        assert status == 200  # the agent keeps serving, as IPA does
    finally:
        await finish(run)


async def test_unreachable_url_fails_over_to_the_next(tmp_path, aiohttp_server, no_logs):
    fake = FakeIronic()
    url = await serve(aiohttp_server, fake)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/continue_inspection"
    run = await run_inspection(tmp_path, (dead, url))
    try:
        await asyncio.wait_for(run.server.ironic, 15)
        assert len(fake.posts) == 1
    finally:
        await finish(run)


async def test_gives_up_after_the_lookup_timeout(tmp_path, aiohttp_server, no_logs, capsys):
    fake = FakeIronic(statuses=(503,) * 1000)
    url = await serve(aiohttp_server, fake)
    run = await run_inspection(tmp_path, url, lookup_timeout=0.3)
    try:
        await asyncio.wait_for(run.server.ironic, 15)
        assert len(fake.posts) >= 2
        assert "no answer within 0.3s" in capsys.readouterr().out
    finally:
        await finish(run)


async def test_lookup_follows_with_the_node_uuid_ironic_answered(tmp_path, aiohttp_server, no_logs):
    fake = FakeIronic()
    url = await serve(aiohttp_server, fake)
    api = url.removesuffix("/v1/continue_inspection")
    run = await run_inspection(tmp_path, url, api_urls=(api,))
    try:
        await asyncio.wait_for(fake.got_lookup.wait(), 15)
        assert len(fake.posts) == 1
        assert fake.lookups[0] == {"addresses": MAC, "node_uuid": NODE_UUID}
        assert run.agent.config.mode == "active"
    finally:
        await finish(run)


async def test_lookup_follows_a_failed_inspection_too(tmp_path, aiohttp_server, no_logs):
    fake = FakeIronic(statuses=(404,))
    url = await serve(aiohttp_server, fake)
    api = url.removesuffix("/v1/continue_inspection")
    run = await run_inspection(tmp_path, url, api_urls=(api,))
    try:
        await asyncio.wait_for(fake.got_lookup.wait(), 15)
        assert fake.lookups[0] == {"addresses": MAC}
    finally:
        await finish(run)


# -- TLS ---------------------------------------------------------------------------------
@pytest.fixture
def ironic_tls(tmp_path):
    """A certificate for 127.0.0.1 (its own CA) and the server context that serves it."""
    (tmp_path / "ironic").mkdir()
    identity = load_identity(tmp_path / "ironic", [ipaddress.ip_address("127.0.0.1")])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(identity.cert_path, identity.key_path)
    return identity, context


async def test_tls_verified_against_the_configured_ca(
    tmp_path, aiohttp_server, ironic_tls, no_logs
):
    identity, context = ironic_tls
    fake = FakeIronic()
    url = await serve(aiohttp_server, fake, context)
    run = await run_inspection(tmp_path, url, api_ca_file=identity.cert_path)
    try:
        await asyncio.wait_for(run.server.ironic, 15)
        assert len(fake.posts) == 1
    finally:
        await finish(run)


async def test_untrusted_certificate_sends_nothing(
    tmp_path, aiohttp_server, ironic_tls, no_logs, capsys
):
    _, context = ironic_tls
    fake = FakeIronic()
    url = await serve(aiohttp_server, fake, context)
    run = await run_inspection(tmp_path, url)  # system CAs only: this one is unknown
    try:
        await asyncio.wait_for(run.server.ironic, 15)
        assert fake.posts == []
        assert "certificate not trusted" in capsys.readouterr().out
    finally:
        await finish(run)


async def test_insecure_skips_verification_with_a_warning(
    tmp_path, aiohttp_server, ironic_tls, no_logs, caplog
):
    _, context = ironic_tls
    fake = FakeIronic()
    url = await serve(aiohttp_server, fake, context)
    run = await run_inspection(tmp_path, url, insecure=True)
    try:
        await asyncio.wait_for(run.server.ironic, 15)
        assert len(fake.posts) == 1
        assert "NOT verified" in caplog.text
    finally:
        await finish(run)


# -- passive mode: not one outbound connection --------------------------------------------
@pytest.fixture
def connects(monkeypatch):
    """Every address a socket of this process connects to while the test runs.

    Scoped to the test (a patched ``socket.socket.connect``), unlike an audit hook,
    which could never be removed and would slow every later test.
    """
    seen: list = []
    for name in ("connect", "connect_ex"):
        original = getattr(socket.socket, name)

        def watched(self, address, _original=original):
            seen.append(address)
            return _original(self, address)

        monkeypatch.setattr(socket.socket, name, watched)
    return seen


async def exercise(run) -> None:
    await asyncio.sleep(0.8)  # the warm-up inventory, and any call-home, would start
    for name in ("poll.get_hardware_info", "log.collect_system_logs", "standby.sync"):
        await run.post({"name": name})


async def test_passive_mode_connects_nowhere(tmp_path, connects, no_logs):
    run = await start(tmp_path / "state", inventory=MachineInventory(), collect_lldp=True)
    own = ("127.0.0.1", run.server.port)
    try:
        await exercise(run)
        assert run.server.ironic is None
    finally:
        await finish(run)
    assert connects, "the test client's own connections were not seen"
    assert [address for address in connects if tuple(address[:2]) != own] == []


async def test_inspection_mode_is_seen_connecting(tmp_path, aiohttp_server, connects, no_logs):
    """The counterpart: the same watch does see the call-home when one is configured."""
    fake = FakeIronic()
    url = await serve(aiohttp_server, fake)
    run = await run_inspection(tmp_path, url)
    try:
        await asyncio.wait_for(run.server.ironic, 15)
    finally:
        await finish(run)
    port = int(url.split(":")[2].split("/")[0])
    assert ("127.0.0.1", port) in [tuple(address[:2]) for address in connects]


def test_banner_names_every_url_the_agent_connects_to(tmp_path):
    class Sock:
        def getsockname(self):
            return ("::", 9999, 0, 0)

    identity = load_identity(tmp_path, [])

    class Agent:
        def __init__(self, config):
            self.config, self.identity = config, identity

    passive = banner(Agent(Config()), Sock())
    assert "mode=passive certificate-sha256=" in passive
    assert passive.endswith(identity.fingerprint)
    callback = "https://192.0.2.1:6385/v1/continue_inspection"
    line = banner(Agent(Config(inspection_urls=(callback,))), Sock())
    assert "mode=inspection certificate-sha256=" in line
    assert line.endswith(f" inspection={callback}")
    both = Config(inspection_urls=(callback,), api_urls=("https://192.0.2.1:6385",))
    assert banner(Agent(both), Sock()).endswith(
        f" inspection={callback} lookup=https://192.0.2.1:6385"
    )


# -- DHCP wait ---------------------------------------------------------------------------
class Addresses:
    def __init__(self, *answers: dict) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


class StubAgent:
    def __init__(self, config: Config, inventory: dict) -> None:
        self.config = config
        self.value = inventory
        self.inventory = self

    async def get(self, refresh: bool = False) -> dict:
        return self.value


async def test_waits_for_the_pxe_interface_address(fast):
    addresses = Addresses({}, {"eth0": ()}, {"eth0": ("192.0.2.10",)})
    agent = StubAgent(Config(inspection_dhcp_wait_timeout=5), MachineInventory()())
    assert await wait_for_dhcp(agent, addresses) is True
    assert addresses.calls == 3


async def test_dhcp_wait_gives_up_at_its_timeout(fast):
    addresses = Addresses({"eth0": ()})
    agent = StubAgent(Config(inspection_dhcp_wait_timeout=0.1), MachineInventory()())
    assert await wait_for_dhcp(agent, addresses) is False
    assert addresses.calls >= 2


async def test_all_interfaces_waits_for_each_linked_one(fast):
    inventory = MachineInventory()()
    inventory["interfaces"].append({"name": "eth1", "mac_address": "52:54:00:7a:c0:02"})
    inventory["interfaces"].append({"name": "eth2", "has_carrier": False, "mac_address": "x"})
    addresses = Addresses(
        {"eth0": ("192.0.2.10",)}, {"eth0": ("a",), "eth1": ("b",), "ib0": ("c",)}
    )
    config = Config(inspection_dhcp_wait_timeout=5, inspection_dhcp_all_interfaces=True)
    assert await wait_for_dhcp(StubAgent(config, inventory), addresses) is True
    assert addresses.calls == 2  # eth2 has no link: not waited for


async def test_no_wait_without_a_pxe_interface_or_with_timeout_zero():
    inventory = {**MachineInventory()(), "boot": {"pxe_interface": None}}
    never = Addresses({})
    assert await wait_for_dhcp(StubAgent(Config(), inventory), never) is False
    assert await wait_for_dhcp(StubAgent(Config(inspection_dhcp_wait_timeout=0), inventory), never)
    assert never.calls == 0


# -- LLDP --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (Config(), None),
        (Config(collect_lldp=True, lldp_timeout=7.0), 7.0),
        (Config(inspection_urls=("http://192.0.2.1/v1/continue_inspection",)), None),
        (
            Config(
                inspection_urls=("http://192.0.2.1/v1/continue_inspection",),
                inspection_collectors=("default", "lldp"),
            ),
            30.0,
        ),
    ],
)
def test_lldp_setting_reaches_collect_inventory(monkeypatch, config, expected):
    import hardware.inventory
    import hardware.sources

    seen = {}

    class Collected:
        def to_dict(self):
            return {}

    def collect(sources, lldp_timeout=None, allow_loop_devices=False):
        seen["lldp_timeout"] = lldp_timeout
        return Collected()

    monkeypatch.setattr(hardware.inventory, "collect_inventory", collect)
    monkeypatch.setattr(hardware.sources, "live_sources", lambda cmdline=None: None)
    live_inventory(config)()
    assert seen == {"lldp_timeout": expected}


async def test_posted_inventory_carries_lldp(tmp_path, aiohttp_server, no_logs):
    machine = MachineInventory()
    machine.lldp = TLVS
    fake = FakeIronic()
    url = await serve(aiohttp_server, fake)
    run = await run_inspection(
        tmp_path,
        url,
        inventory=machine,
        collect_lldp=True,
        inspection_collectors=("default", "lldp"),
    )
    try:
        await asyncio.wait_for(run.server.ironic, 15)
        posted = fake.posts[0]
        assert posted["inventory"]["interfaces"][0]["lldp"] == TLVS
        assert posted["lldp_raw"] == {"eth0": TLVS}
        assert posted["configuration"]["collectors"] == ["default", "lldp"]
    finally:
        await finish(run)
