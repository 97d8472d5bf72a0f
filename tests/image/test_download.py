"""image.download against a real aiohttp server on 127.0.0.1 that misbehaves on demand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from image.checksum import ChecksumError, ChecksumMismatch
from image.download import DownloadError, Progress, allowed, download, proxy_for

DATA = bytes(range(256)) * 1024  # 256 KiB
SHA256 = hashlib.sha256(DATA).hexdigest()
SHA512 = hashlib.sha512(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
FAST = {"retries": 2, "backoff": 0.01, "connect_timeout": 2.0, "read_timeout": 2.0}


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.resets = 0

    async def write(self, chunk: bytes) -> None:
        self.data += chunk

    async def reset(self) -> None:
        self.data.clear()
        self.resets += 1


@dataclass
class Image:
    """The server's behaviour for /disk.img and what it saw."""

    data: bytes = DATA
    ranges: bool = True  # advertise and honour Range
    ignore_range: bool = False  # advertise ranges but answer 200 anyway
    drop_after: int | None = None  # close the connection after this many body bytes, once
    fail: list[int] = field(default_factory=list)  # statuses to answer first, in order
    stall: float = 0.0  # sleep this long after the headers, once
    requests: list[dict[str, str]] = field(default_factory=list)


async def serve_image(request: web.Request, image: Image) -> web.StreamResponse:
    image.requests.append(dict(request.headers))
    if image.fail:
        return web.Response(status=image.fail.pop(0), text="no")
    data, status = image.data, 200
    headers = {"Accept-Ranges": "bytes"} if image.ranges else {}
    wanted = request.headers.get("Range")
    if wanted and image.ranges and not image.ignore_range:
        start = int(wanted.removeprefix("bytes=").rstrip("-"))
        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        data, status = data[start:], 206
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(data)
    await response.prepare(request)
    if image.stall:
        stall, image.stall = image.stall, 0.0
        await asyncio.sleep(stall)
    if image.drop_after is not None:
        await response.write(data[: image.drop_after])
        image.drop_after = None
        assert request.transport is not None
        request.transport.close()
        return response
    await response.write(data)
    await response.write_eof()
    return response


Server = Callable[..., Awaitable[str]]


@pytest.fixture
async def server(aiohttp_server: Any) -> Callable[[web.Application], Awaitable[str]]:
    async def start(app: web.Application) -> str:
        running = await aiohttp_server(app, host="127.0.0.1")
        return f"http://127.0.0.1:{running.port}"

    return start


async def image_server(server: Any, image: Image, extra: dict[str, str] | None = None) -> str:
    app = web.Application()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await serve_image(request, image)

    def static(text: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(_request: web.Request) -> web.Response:
            return web.Response(text=text)

        return handle

    app.router.add_get("/disk.img", handle)
    app.router.add_get("/other/disk.img", handle)
    for path, text in (extra or {}).items():
        app.router.add_get(path, static(text))
    return str(await server(app))


def info(url: str, **fields: Any) -> dict[str, Any]:
    if "checksum" not in fields and "os_hash_algo" not in fields:
        fields["checksum"] = SHA256
    return {"id": "img", "urls": [url], **fields}


async def test_sha256_happy_path_with_progress(server: Any) -> None:
    image = Image()
    base = await image_server(server, image)
    sink, progress = Sink(), Progress()
    digest = await download(
        info(f"{base}/disk.img", os_hash_algo="sha256", os_hash_value=SHA256),
        sink,
        progress=progress,
        chunk_size=4096,
        **FAST,
    )
    assert digest == SHA256 and bytes(sink.data) == DATA
    assert (progress.downloaded, progress.total, progress.restarts) == (len(DATA), len(DATA), 0)
    assert progress.rate > 0 and progress.url == f"{base}/disk.img"
    assert len(image.requests) == 1 and "Range" not in image.requests[0]


@pytest.mark.parametrize(
    "checksum",
    [
        {"os_hash_algo": "sha512", "os_hash_value": SHA512},
        {"checksum": SHA512},
        {"checksum": hashlib.sha384(DATA).hexdigest()},
    ],
)
async def test_other_algorithms(server: Any, checksum: dict[str, str]) -> None:
    base = await image_server(server, Image())
    sink = Sink()
    digest = await download(info(f"{base}/disk.img", **checksum), sink, **FAST)
    assert digest in checksum.values()
    assert bytes(sink.data) == DATA


async def test_checksum_file_url(server: Any) -> None:
    sums = f"{hashlib.sha256(b'x').hexdigest()}  other.img\n{SHA256} *disk.img\n"
    base = await image_server(server, Image(), {"/SHA256SUMS": sums})
    sink = Sink()
    digest = await download(info(f"{base}/disk.img", checksum=f"{base}/SHA256SUMS"), sink, **FAST)
    assert digest == SHA256 and bytes(sink.data) == DATA


async def test_checksum_file_without_the_image(server: Any) -> None:
    image = Image()
    base = await image_server(server, image, {"/SHA256SUMS": f"{SHA256}  other.img\n"})
    with pytest.raises(ChecksumError, match=r"SHA256SUMS: no checksum listed for 'disk.img'"):
        await download(info(f"{base}/disk.img", checksum=f"{base}/SHA256SUMS"), Sink(), **FAST)
    assert image.requests == []  # the image itself was never fetched


async def test_md5_refused_unless_allowed(server: Any) -> None:
    image = Image()
    base = await image_server(server, image)
    with pytest.raises(ChecksumError, match="md5 checksums are refused"):
        await download(info(f"{base}/disk.img", checksum=MD5), Sink(), **FAST)
    assert image.requests == []
    digest = await download(info(f"{base}/disk.img", checksum=MD5), Sink(), allow_md5=True, **FAST)
    assert digest == MD5


async def test_mismatch_names_both_digests(server: Any) -> None:
    wrong = hashlib.sha256(b"another image").hexdigest()
    base = await image_server(server, Image())
    with pytest.raises(ChecksumMismatch) as caught:
        await download(info(f"{base}/disk.img", checksum=wrong), Sink(), **FAST)
    assert wrong in str(caught.value) and SHA256 in str(caught.value)


async def test_5xx_retried(server: Any) -> None:
    image = Image(fail=[503, 500])
    base = await image_server(server, image)
    sink = Sink()
    assert await download(info(f"{base}/disk.img"), sink, **FAST) == SHA256
    assert len(image.requests) == 3 and bytes(sink.data) == DATA


async def test_5xx_until_retries_run_out(server: Any) -> None:
    image = Image(fail=[502, 502, 502, 502])
    base = await image_server(server, image)
    with pytest.raises(DownloadError, match="failed after 3 attempts: HTTP 502"):
        await download(info(f"{base}/disk.img"), Sink(), **FAST)
    assert len(image.requests) == 3


async def test_404_moves_to_next_url(server: Any) -> None:
    first, second = Image(fail=[404]), Image()
    one = await image_server(server, first)
    two = await image_server(server, second)
    sink = Sink()
    image_info = {"urls": [f"{one}/disk.img", f"{two}/other/disk.img"], "checksum": SHA256}
    assert await download(image_info, sink, **FAST) == SHA256
    assert (len(first.requests), len(second.requests)) == (1, 1)
    assert bytes(sink.data) == DATA


async def test_4xx_not_retried(server: Any) -> None:
    image = Image(fail=[403, 403, 403])
    base = await image_server(server, image)
    with pytest.raises(DownloadError, match=r"disk.img: HTTP 403"):
        await download(info(f"{base}/disk.img"), Sink(), **FAST)
    assert len(image.requests) == 1


async def test_resume_with_range(server: Any) -> None:
    image = Image(drop_after=100_000)
    base = await image_server(server, image)
    sink, progress = Sink(), Progress()
    digest = await download(
        info(f"{base}/disk.img"), sink, progress=progress, chunk_size=8192, **FAST
    )
    assert digest == SHA256 and bytes(sink.data) == DATA
    ranges = [r["Range"] for r in image.requests if "Range" in r]
    assert len(image.requests) == 2 and len(ranges) == 1
    assert ranges[0].startswith("bytes=") and ranges[0] != "bytes=0-"
    assert sink.resets == 0 and progress.restarts == 0


async def test_restart_without_range_support(server: Any) -> None:
    image = Image(drop_after=100_000, ranges=False)
    base = await image_server(server, image)
    sink, progress = Sink(), Progress()
    digest = await download(info(f"{base}/disk.img"), sink, progress=progress, **FAST)
    assert digest == SHA256 and bytes(sink.data) == DATA
    assert len(image.requests) == 2 and not any("Range" in r for r in image.requests)
    assert sink.resets == 1 and progress.restarts == 1


async def test_range_answered_with_200_restarts(server: Any) -> None:
    image = Image(drop_after=100_000, ignore_range=True)
    base = await image_server(server, image)
    sink = Sink()
    assert await download(info(f"{base}/disk.img"), sink, **FAST) == SHA256
    assert "Range" in image.requests[1] and sink.resets == 1 and bytes(sink.data) == DATA


async def test_read_timeout_retried(server: Any) -> None:
    image = Image(stall=1.0)
    base = await image_server(server, image)
    options = {**FAST, "read_timeout": 0.2}
    assert await download(info(f"{base}/disk.img"), Sink(), **options) == SHA256
    assert len(image.requests) == 2


async def test_basic_auth(server: Any) -> None:
    image = Image()
    base = await image_server(server, image)
    image_info = info(
        f"{base}/disk.img",
        checksum=SHA256,
        image_server_auth_strategy="http_basic",
        image_server_user="alice",
        image_server_password="s3cret",
    )
    await download(image_info, Sink(), **FAST)
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert image.requests[0]["Authorization"] == expected


async def test_basic_auth_needs_credentials() -> None:
    image_info = info("http://127.0.0.1:9/disk.img", image_server_auth_strategy="http_basic")
    with pytest.raises(DownloadError, match="needs image_server_user"):
        await download(image_info, Sink(), **FAST)


async def test_authorization_header(server: Any) -> None:
    image = Image()
    base = await image_server(server, image)
    image_info = info(f"{base}/disk.img", image_request_authorization="Bearer tok-123")
    await download(image_info, Sink(), **FAST)
    assert image.requests[0]["Authorization"] == "Bearer tok-123"


async def test_allowlist_refusal_makes_no_request(server: Any) -> None:
    image = Image()
    base = await image_server(server, image)
    with pytest.raises(DownloadError, match=r"not under an allowed image URL prefix"):
        await download(
            info(f"{base}/disk.img"), Sink(), allowed_prefixes=["https://images.example/"], **FAST
        )
    assert image.requests == []
    assert await download(info(f"{base}/disk.img"), Sink(), allowed_prefixes=[base], **FAST)


async def test_allowlist_covers_checksum_url(server: Any) -> None:
    image = Image()
    base = await image_server(server, image, {"/SUMS": f"{SHA256}  disk.img\n"})
    with pytest.raises(DownloadError, match=re.escape("https://sums.example/SUMS: not under")):
        await download(
            info(f"{base}/disk.img", checksum="https://sums.example/SUMS"),
            Sink(),
            allowed_prefixes=[base],
            **FAST,
        )
    assert image.requests == []


def test_allowed_prefix_boundary() -> None:
    assert allowed("https://a.example/x.img", ["https://a.example"])
    assert not allowed("https://a.example.evil.org/x.img", ["https://a.example"])
    assert not allowed("https://a.example:8443/x.img", ["https://a.example"])
    assert (
        allowed("https://a.example/images/x", ["https://b.example/", "https://a.example/im"])
        is False
    )
    assert allowed("https://a.example/images/x", ["https://a.example/images/"])


async def test_connection_refused_after_retries() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=r"failed after 3 attempts: ClientConnectorError"):
        await download(info(f"http://127.0.0.1:{port}/disk.img"), Sink(), **FAST)


def test_proxy_for() -> None:
    proxies = {"http": "http://proxy:3128", "https": "http://sproxy:3128"}
    assert proxy_for("http://img.example/x", proxies, None) == "http://proxy:3128"
    assert proxy_for("https://img.example/x", proxies, "") == "http://sproxy:3128"
    assert proxy_for("https://img.example/x", proxies, "other.org, example") is None
    assert proxy_for("https://img.example/x", proxies, ".img.example") is None
    assert proxy_for("https://notimg.example/x", proxies, "img.example") == "http://sproxy:3128"
    assert proxy_for("https://img.example/x", proxies, "*") is None
    assert proxy_for("https://img.example/x", {"http": "http://proxy:3128"}, None) is None
    assert proxy_for("https://img.example/x", None, None) is None


async def test_download_through_proxy(server: Any) -> None:
    image = Image()
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.StreamResponse:
        seen.append(str(request.url))
        return await serve_image(request, image)

    app = web.Application()
    app.router.add_get("/{tail:.*}", proxy)
    base = await server(app)
    image_info = info("http://images.invalid/disk.img", proxies={"http": base})
    assert await download(image_info, Sink(), **FAST) == SHA256
    assert seen == ["http://images.invalid/disk.img"]


async def test_allowlist_refuses_whole_image_info(server: Any) -> None:
    image = Image()
    base = await image_server(server, image)
    image_info = {"urls": [f"{base}/disk.img", "http://elsewhere.example/disk.img"]}
    with pytest.raises(DownloadError, match=r"elsewhere\.example/disk\.img: not under"):
        await download({**image_info, "checksum": SHA256}, Sink(), allowed_prefixes=[base], **FAST)
    assert image.requests == []


async def redirector(server: Any, target: str) -> str:
    async def handle(_request: web.Request) -> web.Response:
        raise web.HTTPFound(target)

    app = web.Application()
    app.router.add_get("/disk.img", handle)
    return str(await server(app))


async def test_redirect_drops_credentials_across_origins(server: Any) -> None:
    image = Image()
    target = await image_server(server, image)
    start = await redirector(server, f"{target}/disk.img")
    image_info = info(f"{start}/disk.img", image_request_authorization="Bearer tok")
    assert await download(image_info, Sink(), **FAST) == SHA256
    assert len(image.requests) == 1 and "Authorization" not in image.requests[0]


async def test_redirect_outside_allowlist_refused(server: Any) -> None:
    image = Image()
    target = await image_server(server, image)
    start = await redirector(server, f"{target}/disk.img")
    with pytest.raises(DownloadError, match=re.escape(f"{target}/disk.img: not under")):
        await download(info(f"{start}/disk.img"), Sink(), allowed_prefixes=[start], **FAST)
    assert image.requests == []
