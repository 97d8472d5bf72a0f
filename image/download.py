"""Streaming an image over http(s), verifying its checksum on the way.

:func:`download` tries ``image_info["urls"]`` in order. Per URL it retries connection
errors, timeouts and 5xx answers with exponential backoff; a 4xx moves on to the next
URL at once. An interrupted transfer resumes with ``Range: bytes=N-`` when the server
advertised ``Accept-Ranges: bytes``; otherwise (or when the server answers a range
request with 200) the download restarts from byte zero and the sink is told to reset.
TLS is always verified (optionally against a CA bundle); redirects are followed by hand
so every hop is checked against the allowlist.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from image.checksum import (
    ChecksumURL,
    Verifier,
    expected_checksum,
    parse_checksum_file,
)
from image.errors import ImageError
from image.pipeline import Stage
from wire.tls import client_context

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
BLOCK = 8 << 20
MAX_REDIRECTS = 5
MAX_CHECKSUM_FILE = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadError(ImageError):
    """The image could not be fetched from any of its URLs."""


class Sink(Protocol):
    async def write(self, chunk: bytes | bytearray) -> None: ...

    async def reset(self) -> None: ...


@dataclass
class Progress:
    """What a running download has done so far (read it from another task)."""

    downloaded: int = 0
    total: int | None = None
    url: str | None = None
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def rate(self) -> float:
        """Bytes per second since the download started."""
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.downloaded / elapsed if elapsed > 0 else 0.0


class _Retry(Exception):
    """A failure worth another attempt at the same URL."""


class _NextURL(Exception):
    """A failure no retry of the same URL will fix (4xx, bad answer)."""


def proxy_for(url: str, proxies: Mapping[str, str] | None, no_proxy: str | None) -> str | None:
    """The proxy for ``url`` from ``{"http": ..., "https": ...}``, unless ``no_proxy`` (host
    suffixes, comma separated, ``*`` for all) exempts its host."""
    if not proxies:
        return None
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme)
    if not proxy:
        return None
    host = (parts.hostname or "").lower().rstrip(".")
    for entry in (no_proxy or "").split(","):
        suffix = entry.strip().lower()
        if not suffix:
            continue
        if suffix == "*":
            return None
        suffix = suffix.split(":", 1)[0].lstrip("*").lstrip(".").rstrip(".")
        if suffix and (host == suffix or host.endswith("." + suffix)):
            return None
    return proxy


def allowed(url: str, prefixes: Sequence[str] | None) -> bool:
    """``url`` starts with one of ``prefixes`` (all allowed when None). A prefix without a
    trailing slash still only matches at a path boundary: ``https://a.example`` does not
    allow ``https://a.example.evil.org/``."""
    if prefixes is None:
        return True
    for prefix in prefixes:
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            if prefix.endswith("/") or not rest or rest[0] in "/?#":
                return True
    return False


def _check_url(url: str, prefixes: Sequence[str] | None) -> None:
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise DownloadError(f"{url}: only http and https URLs are supported")
    if not allowed(url, prefixes):
        raise DownloadError(
            f"{url}: not under an allowed image URL prefix ({', '.join(prefixes or ())})"
        )


def _auth(image_info: Mapping[str, Any]) -> dict[str, str]:
    """The Authorization header the image server wants, if any."""
    strategy = image_info.get("image_server_auth_strategy")
    raw = image_info.get("image_request_authorization")
    headers = {"Authorization": str(raw)} if raw else {}
    if strategy in (None, "", "noauth"):
        return headers
    if strategy != "http_basic":
        raise DownloadError(f"unsupported image_server_auth_strategy {strategy!r}")
    user, password = image_info.get("image_server_user"), image_info.get("image_server_password")
    if not user or password is None:
        raise DownloadError(
            "image_server_auth_strategy http_basic needs image_server_user and "
            "image_server_password"
        )
    if headers:
        raise DownloadError(
            "image_request_authorization and http_basic authentication both set: give one"
        )
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class _Fetcher:
    """One session and the options every request of a download shares."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        image_info: Mapping[str, Any],
        allowed_prefixes: Sequence[str] | None,
        retries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        self.session = session
        self.headers = _auth(image_info)
        self.proxies = image_info.get("proxies") or None
        self.no_proxy = image_info.get("no_proxy")
        self.prefixes = allowed_prefixes
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff

    async def open(self, url: str, extra: Mapping[str, str]) -> aiohttp.ClientResponse:
        """GET ``url``, following redirects (each hop allowlisted, credentials kept to the
        original origin). 4xx raises :class:`_NextURL`, 5xx and network errors :class:`_Retry`."""
        origin = URL(url).origin()
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            _check_url(current, self.prefixes)
            same_origin = URL(current).origin() == origin
            # The checksum is over the image's bytes as stored: no transfer compression.
            headers = {"Accept-Encoding": "identity", **extra}
            if same_origin:
                headers.update(self.headers)
            try:
                response = await self.session.get(
                    current,
                    headers=headers,
                    proxy=proxy_for(current, self.proxies, self.no_proxy),
                    allow_redirects=False,
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                raise _Retry(_describe(error)) from error
            if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                location = response.headers["Location"]
                response.release()
                current = str(URL(current).join(URL(location)))
                continue
            if 500 <= response.status < 600:
                response.release()
                raise _Retry(f"HTTP {response.status} {response.reason}")
            if response.status >= 300:
                response.release()
                raise _NextURL(f"HTTP {response.status} {response.reason}")
            encoding = response.headers.get("Content-Encoding", "identity").lower()
            if encoding != "identity":
                response.release()
                raise _NextURL(f"answered with Content-Encoding {encoding} despite identity")
            return response
        raise _NextURL(f"more than {MAX_REDIRECTS} redirects")

    async def sleep(self, attempt: int) -> None:
        await asyncio.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))

    async def fetch_text(self, url: str, limit: int = MAX_CHECKSUM_FILE) -> str:
        body = await self.fetch_bytes(url, limit, "checksum file")
        return body.decode("utf-8", errors="replace")

    async def fetch_bytes(self, url: str, limit: int, what: str) -> bytes:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.open(url, {})
                async with response:
                    body = await response.content.read(limit + 1)
            except _NextURL as error:
                raise DownloadError(f"{url}: {error}") from error
            except (TimeoutError, _Retry, aiohttp.ClientError) as error:
                if attempt > self.retries:
                    raise DownloadError(
                        f"{url}: failed after {attempt} attempts: {_describe(error)}"
                    ) from error
                await self.sleep(attempt)
                continue
            if len(body) > limit:
                raise DownloadError(f"{url}: {what} larger than {limit} bytes")
            return body


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    if isinstance(error, _Retry):
        return str(error)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def fetch_small(
    url: str,
    limit: int,
    what: str,
    *,
    image_info: Mapping[str, Any] | None = None,
    cafile: Path | str | None = None,
    allowed_prefixes: Sequence[str] | None = None,
    retries: int = 3,
    backoff: float = 1.0,
) -> bytes:
    """A small file (a configdrive) with the image's TLS, proxy, auth and allowlist rules."""
    _check_url(url, allowed_prefixes)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=60.0)
    connector = aiohttp.TCPConnector(ssl=client_context(cafile=cafile))
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
    ) as session:
        fetcher = _Fetcher(session, image_info or {}, allowed_prefixes, retries, backoff, 30.0)
        return await fetcher.fetch_bytes(url, limit, what)


async def download(
    image_info: Mapping[str, Any],
    sink: Sink,
    *,
    progress: Progress | None = None,
    allow_md5: bool = False,
    cafile: Path | str | None = None,
    allowed_prefixes: Sequence[str] | None = None,
    connect_timeout: float = 30.0,
    read_timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    chunk_size: int = CHUNK_SIZE,
) -> str:
    """Stream the image into ``sink``; return its hex digest once verified.

    ``retries`` is the number of extra attempts per URL after a connection error, timeout
    or 5xx (attempts that received bytes do not count against it). Raises
    :class:`~image.checksum.ChecksumMismatch`, :class:`~image.checksum.ChecksumError`
    or :class:`DownloadError`.
    """
    urls = image_info.get("urls")
    if not urls or not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise DownloadError(f"image_info urls must be a non-empty list of URLs, not {urls!r}")
    wanted = expected_checksum(image_info, allow_md5=allow_md5)
    checked = [*urls, wanted.url] if isinstance(wanted, ChecksumURL) else urls
    for url in checked:  # refuse before any connection is made
        _check_url(url, allowed_prefixes)
    progress = progress if progress is not None else Progress()
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout, sock_read=read_timeout
    )
    connector = aiohttp.TCPConnector(ssl=client_context(cafile=cafile))
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        trust_env=False,
        auto_decompress=False,
        read_bufsize=chunk_size,  # fewer, larger chunks for the hashing and writing threads
    ) as session:
        fetcher = _Fetcher(session, image_info, allowed_prefixes, retries, backoff, max_backoff)
        if isinstance(wanted, ChecksumURL):
            text = await fetcher.fetch_text(wanted.url)
            expected = parse_checksum_file(
                text, urls[0], checksum_url=wanted.url, allow_md5=allow_md5
            )
        else:
            expected = wanted
        state = _State(sink, Verifier(expected), progress)
        failures: list[str] = []
        try:
            for url in urls:
                try:
                    await _download_one(fetcher, url, state, chunk_size)
                except DownloadError as error:
                    failures.append(str(error))
                    log.warning("image download failed: %s", error)
                    continue
                progress.finished = time.monotonic()
                return await state.finish()
        finally:
            state.close()
    raise DownloadError("image download failed from every URL: " + "; ".join(failures))


class _State:
    """Bytes accepted so far, shared by every URL of one download.

    Network chunks (about half a MiB) are gathered into blocks of ``block`` bytes before
    they go to the hashing thread and the sink: few, large hand-offs keep the threads
    from queueing for the GIL after every chunk.
    """

    def __init__(
        self, sink: Sink, verifier: Verifier, progress: Progress, block: int = BLOCK
    ) -> None:
        self.sink = sink
        self.verifier = verifier
        self.progress = progress
        self.block = block
        self.hasher = Stage(verifier.update, "hash")
        self.pending = bytearray()
        self.offset = 0

    async def restart(self) -> None:
        await self.hasher.discard()
        self.pending = bytearray()
        if self.offset:
            await self.sink.reset()
            self.progress.restarts += 1
        self.verifier.reset()
        self.offset = 0
        self.progress.downloaded = 0

    async def accept(self, chunk: bytes) -> None:
        self.pending += chunk
        self.offset += len(chunk)
        self.progress.downloaded = self.offset
        if len(self.pending) >= self.block:
            await self._hand_on()

    async def _hand_on(self) -> None:
        block, self.pending = self.pending, bytearray()  # never touched again here
        await self.hasher.put(block)
        await self.sink.write(block)

    async def finish(self) -> str:
        if self.pending:
            await self._hand_on()
        await self.hasher.drain()
        return self.verifier.finish()

    def close(self) -> None:
        self.hasher.close()


async def _download_one(fetcher: _Fetcher, url: str, state: _State, chunk_size: int) -> None:
    await state.restart()  # a previous URL may have left a partial image
    state.progress.url = url
    state.progress.total = None
    ranges = False
    attempt = 0
    while True:
        resuming = state.offset > 0 and ranges
        if state.offset > 0 and not ranges:
            await state.restart()
        extra = {"Range": f"bytes={state.offset}-"} if resuming else {}
        before = state.offset
        try:
            response = await fetcher.open(url, extra)
            async with response:
                if resuming and response.status == 206:
                    if not _range_starts_at(response, state.offset):
                        ranges = False  # do not trust this server's ranges again
                        raise _Retry(
                            f"206 with Content-Range {response.headers.get('Content-Range')!r}"
                            f", expected bytes {state.offset}-"
                        )
                elif response.status == 200:
                    if state.offset:
                        log.info("%s: range request answered with 200, restarting", url)
                        await state.restart()
                    ranges = response.headers.get("Accept-Ranges", "").lower() == "bytes"
                    if response.content_length is not None:
                        state.progress.total = response.content_length
                else:
                    raise _NextURL(f"unexpected HTTP {response.status} {response.reason}")
                async for chunk in response.content.iter_chunked(chunk_size):
                    await state.accept(chunk)
                total = state.progress.total
                if total is not None and state.offset != total:
                    raise _Retry(f"body ended after {state.offset} of {total} bytes")
            return
        except _NextURL as error:
            raise DownloadError(f"{url}: {error}") from error
        except (TimeoutError, _Retry, aiohttp.ClientError) as error:
            if state.offset > before:
                attempt = 0  # progress was made: the retry budget starts over
            attempt += 1
            if attempt > fetcher.retries:
                raise DownloadError(
                    f"{url}: failed after {attempt} attempts: {_describe(error)}"
                ) from error
            log.info("%s: attempt %d failed (%s), retrying", url, attempt, _describe(error))
            await fetcher.sleep(attempt)


def _range_starts_at(response: aiohttp.ClientResponse, offset: int) -> bool:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
    return match is not None and int(match.group(1)) == offset
