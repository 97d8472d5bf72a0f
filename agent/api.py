"""The HTTP API (docs/protocol.md, "Routes"): routes, error bodies, authentication middleware."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion10, HttpVersion11, web

from wire.protocol import UNAUTHENTICATED_COMMANDS
from wire.protocol import fault as wire_fault

from .bodies import body_deadline
from .commands import CommandError, CommandResult
from .core import Agent
from .malformed import MalformedRequests

LOG = logging.getLogger(__name__)
AGENT_KEY = web.AppKey("agent", Agent)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKEN_INVALID = "401 Unauthorized: Token invalid."


def fault(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """ironic's error body; it crashes on an error without ``faultstring``."""
    return web.json_response(wire_fault(status, message), status=status, headers=headers)


def peer(request: web.Request) -> str:
    return request.remote or "unknown"


@web.middleware
async def version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only HTTP/1.0 and 1.1 are served. aiohttp's parser takes an HTTP/0.9 request line
    (no version) and HTTP/2.0 in an HTTP/1 request line, and would answer in that version
    (``HTTP/0.9 200``, which no HTTP/0.9 client can read). No answer can be given in a
    version the client does not speak, so the connection is closed unanswered."""
    if request.version in (HttpVersion10, HttpVersion11):
        return await handler(request)
    agent = request.app[AGENT_KEY]
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    agent.guard.refuse(peer(request), "request", f"{version} is not served", hold_off=False)
    if request.transport is not None:
        request.transport.close()
    raise web.HTTPBadRequest()  # never sent: the connection is closed


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as a JSON fault; nothing escapes as a bare 500 page."""
    try:
        return await handler(request)
    except CommandError as exc:
        return fault(exc.code, exc.message)
    except web.HTTPRedirection:
        raise
    except web.HTTPException as exc:
        if exc.status == 413:
            limit = request.app[AGENT_KEY].config.max_body_bytes
            message = f"Request body too large (limit {limit} bytes)"
        else:
            message = (
                exc.reason if exc.text is None or exc.text.startswith(str(exc.status)) else exc.text
            )
        return fault(
            exc.status,
            message,
            headers={k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")},
        )
    except ConnectionResetError:  # the client left mid-request: no one to answer
        LOG.info(
            "connection from %s lost during %s %s", peer(request), request.method, request.path
        )
        return fault(400, "Connection lost")
    except Exception:
        LOG.exception("unexpected error serving %s %s", request.method, request.path)
        return fault(500, "Internal error; see the agent log")


def presented_token(request: web.Request) -> str | None:
    token = request.query.get("agent_token")
    if token:
        return token
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def authorize(request: web.Request, command_name: str | None) -> None:
    """The one authentication check for /v1/commands*; raises a 401 fault when refused.

    ``command_name`` is the command a POST asks for (None for reading results).
    """
    agent = request.app[AGENT_KEY]
    if agent.config.client_ca_file is not None and has_client_certificate(request):
        return  # the handshake verified it against the client CA (and the allowlist)
    if agent.has_token:
        if agent.token_matches(presented_token(request)):
            return
        reason = "wrong token" if presented_token(request) else "no token"
    elif command_name in UNAUTHENTICATED_COMMANDS:
        return
    else:
        reason = "agent has no token yet; only inventory and set_node_info are served"
    agent.guard.refuse(peer(request), "token", f"{request.method} {request.path}: {reason}")
    raise CommandError(TOKEN_INVALID, code=401)


def has_client_certificate(request: web.Request) -> bool:
    transport = request.transport
    return bool(transport is not None and transport.get_extra_info("peercert"))


@web.middleware
async def throttle_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A peer with repeated failures waits before it may use /v1/commands again."""
    if request.method in ("GET", "POST") and request.path.startswith("/v1/commands/"):
        guard = request.app[AGENT_KEY].guard
        wait = guard.retry_after(peer(request))
        if wait > 0:
            guard.throttled(peer(request))
            return fault(
                429,
                "Too many failed attempts; retry later",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
    return await handler(request)


async def root(request: web.Request) -> web.Response:
    v1 = version_entry(request)
    return web.json_response(
        {
            "name": "Tacet agent",
            "description": "Tacet passive-mode provisioning agent (ironic-python-agent API)",
            "versions": [v1],
            "default_version": v1,
        }
    )


def version_entry(request: web.Request) -> dict[str, Any]:
    return {
        "id": "v1",
        "links": [{"href": str(request.url.with_path("/v1/").with_query(None)), "rel": "self"}],
    }


async def v1(request: web.Request) -> web.Response:
    base = request.url.with_query(None)
    return web.json_response(
        {
            "id": "v1",
            "links": [{"href": str(base.with_path("/v1/")), "rel": "self"}],
            "media_types": [
                {
                    "base": "application/json",
                    "type": "application/vnd.openstack.ironic-python-agent.v1+json",
                }
            ],
            "commands": [{"href": str(base.with_path("/v1/commands/")), "rel": "self"}],
            "status": [{"href": str(base.with_path("/v1/status")), "rel": "self"}],
        }
    )


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT_KEY].status())


async def list_commands(request: web.Request) -> web.Response:
    await authorize(request, None)
    return web.json_response({"commands": request.app[AGENT_KEY].executor.history()})


INVENTORY_PLACEHOLDER = "\x00tacet-inventory\x00"  # json.dumps writes it as \u0000...


def result_response(agent: Agent, result: CommandResult) -> web.Response:
    """A command result as JSON; a cached inventory in it is spliced in as already encoded
    text (see ``InventoryCache.json_text``): the same bytes ``json.dumps`` would give."""
    record = result.serialize()
    cached = agent.inventory.json_text(record["command_result"])
    if cached is None:
        return web.json_response(record)
    record["command_result"] = INVENTORY_PLACEHOLDER
    text = json.dumps(record).replace(json.dumps(INVENTORY_PLACEHOLDER), cached, 1)
    return web.Response(text=text, content_type="application/json")


def wants_wait(request: web.Request) -> bool:
    return request.query.get("wait", "false").lower() in ("true", "1", "yes")


async def get_command(request: web.Request) -> web.Response:
    await authorize(request, None)
    agent = request.app[AGENT_KEY]
    result = agent.executor.get(request.match_info["result_id"])
    if wants_wait(request):
        await result.done.wait()
    return result_response(agent, result)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_STRICT = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(value: Any) -> None:
    """Refuse a lone surrogate (``"\\ud800"``) anywhere in parsed JSON, keys included.

    JSON's escapes can spell one, but no UTF-8 text can: stored, echoed in /v1/status or
    written to the state file, it would fail there instead of here. Raises ValueError.
    """
    pending = [value]
    while pending:  # a loop, not recursion: nesting depth is the client's choice
        item = pending.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                raise ValueError(
                    f"a string holds U+{ord(found.group()):04X}, a lone surrogate, "
                    "which is not valid Unicode"
                )
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def parse_body(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity (they would be echoed back as invalid JSON) and only
    valid Unicode text (no lone surrogates, neither encoded nor escaped).

    ``json.loads`` with these hooks would build a decoder per request; this is its body."""
    raw = raw or b"null"
    body = _STRICT.decode(raw.decode(json.detect_encoding(raw)))
    check_unicode(body)
    return body


async def run_command(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:  # e.g. a corrupt gzip body
        await authorize(request, None)
        reason = " ".join(str(exc).split())
        raise CommandError(f"Invalid request body: {reason}", code=400) from None
    try:
        body = parse_body(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and over-long integers.
        await authorize(request, None)
        raise CommandError(f"Invalid JSON body: {exc}", code=400) from None
    name = body.get("name") if isinstance(body, dict) else None
    await authorize(request, name if isinstance(name, str) else None)
    if not isinstance(body, dict):
        raise CommandError("Request body must be a JSON object with name and params", code=400)
    if "name" not in body:
        raise CommandError("Missing command name", code=400)
    unclaimed = not agent.has_token and agent.config.client_ca_file is None
    result = await agent.executor.execute(name, body.get("params"))
    if unclaimed and agent.has_token:
        agent.record_claim(peer(request))
    if wants_wait(request):
        await result.done.wait()
    return result_response(agent, result)


def redirect(target: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        # Keep the query: a client following the redirect must not lose agent_token or wait.
        query = request.rel_url.raw_query_string
        raise web.HTTPPermanentRedirect(location=f"{target}?{query}" if query else target)

    return handler


async def not_found(request: web.Request) -> web.Response:
    return fault(404, f"The resource could not be found: {request.path}")


def create_app(agent: Agent) -> web.Application:
    app = web.Application(
        middlewares=[
            version_middleware,
            errors_middleware,
            body_deadline(agent.config.body_timeout, agent.guard),
            throttle_middleware,
        ],
        client_max_size=agent.config.max_body_bytes,
        # aiohttp answers unparsable requests itself; this logger handles them instead
        # (agent/malformed.py). Serve through malformed.connections() for the answer.
        handler_args={"logger": MalformedRequests(agent.guard)},
    )
    app[AGENT_KEY] = agent
    app.router.add_get("/", root)
    app.router.add_get("/v1", redirect("/v1/"))
    app.router.add_get("/v1/", v1)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/status/", redirect("/v1/status"))
    app.router.add_route("*", "/v1/commands", redirect("/v1/commands/"))
    app.router.add_get("/v1/commands/", list_commands)
    app.router.add_post("/v1/commands/", run_command)
    app.router.add_get("/v1/commands/{result_id}", get_command)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
