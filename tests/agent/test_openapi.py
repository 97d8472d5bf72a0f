"""docs/openapi.yaml is kept true: real answers of the agent (over TLS) against the document."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from yarl import URL

from agent.commands import Param
from tests.agent.conftest import TOKEN, Running
from tests.agent.openapi_doc import FALLBACK, METHODS, load, walk

DOC = load()
NO_BODY = object()


# -- the document itself ------------------------------------------------------------------
def test_document_is_openapi_31_and_every_ref_resolves():
    doc = DOC.doc
    assert doc["openapi"].startswith("3.1.")
    assert {"info", "paths", "components"} <= set(doc)
    refs = [v["$ref"] for v in walk(doc) if isinstance(v, dict) and "$ref" in v]
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        DOC.resolve(ref)  # raises when it does not resolve
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    operation_ids = [op["operationId"] for _, _, op in DOC.operations() if "operationId" in op]
    assert len(operation_ids) == len(set(operation_ids))
    schemes = set(doc["components"]["securitySchemes"])
    for _, _, operation in DOC.operations():
        assert operation["responses"], operation
        for requirement in operation.get("security", []):
            assert set(requirement) <= schemes


def test_every_router_route_is_documented_and_vice_versa(running):
    """aiohttp's router and the document list the same (path, method) pairs."""
    routes: set[tuple[str, str]] = set()
    fallback: set[tuple[str, str]] = set()
    assert running.server.runner is not None
    for route in running.server.runner.app.router.routes():
        path = route.resource.canonical
        methods = METHODS if route.method == "*" else (route.method.lower(),)
        if path == "/{tail}":  # the catch-all: aiohttp's canonical form of /{tail:.*}
            fallback |= {(path, route.method)}
            continue
        routes |= {(path, method) for method in methods}
    documented = {(template, method) for template, method, _ in DOC.operations()}
    assert routes == documented
    assert fallback == {("/{tail}", "*")}
    assert DOC.doc[FALLBACK]["route"] == "/{tail:.*}"
    assert DOC.doc[FALLBACK]["methods"] == ["*"]


def test_documented_commands_are_exactly_the_registry(running):
    operation = DOC.doc["paths"]["/v1/commands/"]["post"]
    documented = operation["x-tacet-commands"]
    registry = running.agent.registry.commands
    served = {
        f"{ext}.{name}": command
        for ext, names in registry.items()
        for name, command in names.items()
    }
    assert set(documented) == set(served)
    json_types = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }
    for full_name, command in served.items():
        spec = documented[full_name]
        assert spec["kind"] == ("async" if command.is_async else "sync"), full_name
        assert set(spec["params"]) == set(command.params), full_name
        for name, param in command.params.items():
            doc_param = spec["params"][name]
            assert doc_param["required"] == param.required, (full_name, name)
            types = {json_types[t] for t in param.types}
            if param.nullable and not param.required:
                types.add("null")
            doc_types = doc_param["schema"]["type"]
            assert set([doc_types] if isinstance(doc_types, str) else doc_types) == types
        assert f"`{full_name}`" in operation["description"], full_name


# -- real answers ---------------------------------------------------------------------------
@dataclass
class Case:
    """One request; ``template`` and ``status`` say which documented response it exercises."""

    id: str
    method: str
    template: str
    status: int
    path: str = ""  # default: the template, with {result_id} from prepare()
    query: dict[str, str] = field(default_factory=dict)
    token: str | None = TOKEN
    body: Any = NO_BODY
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Running, pytest.MonkeyPatch], Awaitable[dict[str, str]]] | None = None
    expect: Callable[[Any, dict[str, str]], None] | None = None


async def a_result(run: Running, _mp: pytest.MonkeyPatch) -> dict[str, str]:
    _, result = await run.post({"name": "standby.sync"})
    return {"result_id": result["id"]}


async def busy(run: Running, _mp: pytest.MonkeyPatch) -> dict[str, str]:
    async def slow() -> None:
        await asyncio.Event().wait()  # cancelled when the fixture stops the agent

    run.agent.registry.add("test", "slow", slow, is_async=True)
    status, result = await run.post({"name": "test.slow"})
    assert status == 200 and result["command_status"] == "RUNNING"
    return {}


def broken(target: str) -> Callable[[Running, pytest.MonkeyPatch], Awaitable[dict[str, str]]]:
    """An injected defect, to see the documented 500 answer for real."""

    async def prepare(run: Running, mp: pytest.MonkeyPatch) -> dict[str, str]:
        owner = run.agent.executor if target != "status" else run.agent

        def explode(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("injected defect")

        mp.setattr(owner, target, explode)
        return {"result_id": "any"}

    return prepare


async def throttled(run: Running, _mp: pytest.MonkeyPatch) -> dict[str, str]:
    """Hold this client's address off, as repeated failures would."""
    for _ in range(run.agent.guard.max_failures):
        run.agent.guard.refuse("127.0.0.1", "token", "test: repeated failures")
    return {"result_id": "any"}


def location(expected: str) -> Callable[[Any, dict[str, str]], None]:
    def check(_body: Any, headers: dict[str, str]) -> None:
        assert headers["Location"] == expected

    return check


def result_status(expected: str) -> Callable[[Any, dict[str, str]], None]:
    def check(body: Any, _headers: dict[str, str]) -> None:
        assert body["command_status"] == expected, body

    return check


SYNC = {"name": "standby.sync"}
CASES = [
    Case("root", "GET", "/", 200, token=None),
    Case("root-head", "HEAD", "/", 200, token=None),
    Case("v1", "GET", "/v1/", 200, token=None),
    Case("v1-head", "HEAD", "/v1/", 200, token=None),
    Case("v1-redirect", "GET", "/v1", 308, token=None, expect=location("/v1/")),
    Case("v1-redirect-head", "HEAD", "/v1", 308, token=None),
    Case("status", "GET", "/v1/status", 200, token=None),
    Case("status-head", "HEAD", "/v1/status", 200, token=None),
    Case("status-500", "GET", "/v1/status", 500, token=None, prepare=broken("status")),
    Case("status-redirect", "GET", "/v1/status/", 308, token=None, expect=location("/v1/status")),
    Case("status-redirect-head", "HEAD", "/v1/status/", 308, token=None),
    *[Case(f"commands-redirect-{m}", m.upper(), "/v1/commands", 308, token=None) for m in METHODS],
    Case(
        "commands-redirect-keeps-query",
        "POST",
        "/v1/commands",
        308,
        query={"wait": "true"},
        body=SYNC,
        expect=location(f"/v1/commands/?wait=true&agent_token={TOKEN}"),
    ),
    Case("list", "GET", "/v1/commands/", 200, prepare=a_result),
    Case("list-head", "HEAD", "/v1/commands/", 200),
    Case("list-no-token", "GET", "/v1/commands/", 401, token=None),
    Case("list-wrong-token", "GET", "/v1/commands/", 401, token="wrong"),
    Case("list-head-no-token", "HEAD", "/v1/commands/", 401, token=None),
    Case("list-500", "GET", "/v1/commands/", 500, prepare=broken("history")),
    Case("post-sync", "POST", "/v1/commands/", 200, body=SYNC, expect=result_status("SUCCEEDED")),
    Case(
        "post-async-running",
        "POST",
        "/v1/commands/",
        200,
        body={"name": "standby.power_off"},
        expect=result_status("RUNNING"),
    ),
    Case(
        "post-async-wait",
        "POST",
        "/v1/commands/",
        200,
        query={"wait": "TRUE"},
        body={"name": "standby.run_image", "params": None},
        expect=result_status("SUCCEEDED"),
    ),
    Case(
        "post-failed-command",
        "POST",
        "/v1/commands/",
        200,
        body={"name": "poll.set_node_info", "params": {"node_info": {"node": []}}},
        expect=result_status("FAILED"),
    ),
    Case(
        "post-bearer",
        "POST",
        "/v1/commands/",
        200,
        token=None,
        headers={"Authorization": f"Bearer {TOKEN}"},
        body={"name": "clean.get_clean_steps", "params": {"node": {}, "ports": []}},
    ),
    Case("post-invalid-json", "POST", "/v1/commands/", 400, raw=b"{not json"),
    Case("post-nan", "POST", "/v1/commands/", 400, raw=b'{"name": "poll.get_node_info", "x": NaN}'),
    Case(
        "post-huge-number",
        "POST",
        "/v1/commands/",
        400,
        raw=b'{"name": "poll.set_node_info", "params": {"node_info": {"x": -1e999}}}',
    ),
    Case("post-long-integer", "POST", "/v1/commands/", 400, raw=b"1" * 5000),
    Case("post-deep-nesting", "POST", "/v1/commands/", 400, raw=b"[" * 100_000),
    Case("post-not-utf8", "POST", "/v1/commands/", 400, raw=b"\xff\xfe\xfd\x00garbage"),
    Case(
        "post-gzip-not-decoded",
        "POST",
        "/v1/commands/",
        400,
        raw=gzip.compress(b'{"name": "poll.get_hardware_info"}'),
        headers={"Content-Encoding": "gzip"},
    ),
    Case(
        "post-truncated-deflate",
        "POST",
        "/v1/commands/",
        400,
        raw=b"{}",
        headers={"Content-Encoding": "deflate"},
    ),
    Case(
        "post-brotli",
        "POST",
        "/v1/commands/",
        400,
        raw=b"xx",
        headers={"Content-Encoding": "br"},
    ),
    Case("post-empty-body", "POST", "/v1/commands/", 400, raw=b""),
    Case("post-not-object", "POST", "/v1/commands/", 400, body=[1, 2]),
    Case("post-no-name", "POST", "/v1/commands/", 400, body={"params": {}}),
    Case("post-name-not-string", "POST", "/v1/commands/", 400, body={"name": 42}),
    Case("post-no-dot", "POST", "/v1/commands/", 400, body={"name": "nodot"}),
    Case("post-unknown-command", "POST", "/v1/commands/", 400, body={"name": "poll.nosuch"}),
    Case(
        "post-params-not-object",
        "POST",
        "/v1/commands/",
        400,
        body={"name": "standby.sync", "params": [1]},
    ),
    Case(
        "post-wrong-param-type",
        "POST",
        "/v1/commands/",
        400,
        body={"name": "poll.get_hardware_info", "params": {"refresh": 1}},
    ),
    Case(
        "post-missing-param",
        "POST",
        "/v1/commands/",
        400,
        body={"name": "poll.set_node_info", "params": {}},
    ),
    Case("post-no-token", "POST", "/v1/commands/", 401, token=None, body=SYNC),
    Case(
        "post-wrong-bearer",
        "POST",
        "/v1/commands/",
        401,
        token=None,
        headers={"Authorization": "Bearer wrong"},
        body=SYNC,
    ),
    Case("post-invalid-json-no-token", "POST", "/v1/commands/", 401, token=None, raw=b"{"),
    Case("post-unknown-extension", "POST", "/v1/commands/", 404, body={"name": "nosuch.cmd"}),
    Case("post-busy", "POST", "/v1/commands/", 409, body=SYNC, prepare=busy),
    Case(
        "post-too-large",
        "POST",
        "/v1/commands/",
        413,
        raw=b'{"name": "standby.sync", "x": "' + b"a" * (1024 * 1024) + b'"}',
    ),
    Case("post-too-large-no-token", "POST", "/v1/commands/", 413, token=None, raw=b" " * 1048577),
    Case("post-500", "POST", "/v1/commands/", 500, body=SYNC, prepare=broken("execute")),
    Case("post-throttled", "POST", "/v1/commands/", 429, body=SYNC, prepare=throttled),
    Case("list-throttled", "GET", "/v1/commands/", 429, prepare=throttled),
    Case("get-throttled", "GET", "/v1/commands/{result_id}", 429, prepare=throttled),
    Case("get", "GET", "/v1/commands/{result_id}", 200, prepare=a_result),
    Case(
        "get-wait",
        "GET",
        "/v1/commands/{result_id}",
        200,
        query={"wait": "yes"},
        prepare=a_result,
        expect=result_status("SUCCEEDED"),
    ),
    Case("get-head", "HEAD", "/v1/commands/{result_id}", 200, prepare=a_result),
    Case("get-no-token", "GET", "/v1/commands/{result_id}", 401, token=None, prepare=a_result),
    Case("get-head-no-token", "HEAD", "/v1/commands/{result_id}", 401, token=None),
    Case("get-unknown", "GET", "/v1/commands/{result_id}", 404, path="/v1/commands/no-such-id"),
    Case("get-head-unknown", "HEAD", "/v1/commands/{result_id}", 404, path="/v1/commands/nope"),
    Case("get-500", "GET", "/v1/commands/{result_id}", 500, prepare=broken("get")),
    Case("unknown-route", "GET", FALLBACK, 404, path="/no/such/route", token=None),
    Case("unknown-route-nested", "GET", FALLBACK, 404, path="/v1/commands/a/b"),
    Case("wrong-method-status", "POST", FALLBACK, 404, path="/v1/status", body=SYNC),
    Case("wrong-method-commands", "DELETE", FALLBACK, 404, path="/v1/commands/"),
    Case("wrong-method-result", "PUT", FALLBACK, 404, path="/v1/commands/x"),
    Case("wrong-method-root", "PATCH", FALLBACK, 404, path="/", token=None),
]


def test_cases_exercise_every_documented_response():
    exercised = {
        (c.template, "*" if c.template == FALLBACK else c.method.lower(), c.status) for c in CASES
    }
    assert exercised == DOC.documented_responses()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_real_response_matches_the_document(running, monkeypatch, case):
    values = {"result_id": "no-such-id"}
    if case.prepare is not None:
        values.update(await case.prepare(running, monkeypatch))
    query = dict(case.query)
    if case.token is not None:
        query["agent_token"] = case.token
    kwargs: dict[str, Any] = {"headers": case.headers, "allow_redirects": False}
    if case.raw is not None:
        kwargs["data"] = case.raw
    elif case.body is not NO_BODY:
        kwargs["json"] = case.body
    path = case.path or case.template.format(**values)
    url = URL(running.base + path).with_query(query)
    async with running.client.request(case.method, url, **kwargs) as response:
        body = await response.read()
        headers = dict(response.headers)
        status = response.status
    assert status == case.status, (case.id, status, body[:300])
    # The request really went where the case says: the same routing the fuzz test relies on.
    assert DOC.route(case.method, URL(path).path_safe)[0] == case.template
    template = case.template
    value = DOC.check(case.method, template, status, headers, body)
    if case.expect is not None:
        case.expect(value, headers)
    monkeypatch.undo()
    status, _ = await running.get("/v1/status", token=None)
    assert status == 200


async def test_following_a_redirect_keeps_token_and_wait(running):
    url = f"{running.base}/v1/commands?agent_token={TOKEN}&wait=true"
    async with running.client.post(url, json={"name": "standby.power_off"}) as response:
        assert response.status == 200
        assert str(response.url).startswith(f"{running.base}/v1/commands/?")
        body = DOC.check(
            "POST", "/v1/commands/", 200, dict(response.headers), await response.read()
        )
    assert body["command_status"] == "SUCCEEDED"


async def test_history_of_mixed_results_matches_the_document(running):
    """Results of every kind (SUCCEEDED, FAILED with a command_error, RUNNING) in one list."""

    async def explode(value: int = 0) -> None:
        raise TypeError(f"cannot handle {value}")

    running.agent.registry.add("test", "explode", explode, params={"value": Param((int,))})
    for body in (
        {"name": "poll.get_hardware_info"},
        {"name": "poll.set_node_info", "params": {"node_info": {"node": {"uuid": "u-1"}}}},
        {"name": "poll.get_node_info"},
        {"name": "test.explode", "params": {"value": 2}},
        {"name": "deploy.get_deploy_steps"},
        {"name": "standby.power_off"},
    ):
        status, _ = await running.post(body)
        assert status == 200
    async with running.client.get(
        f"{running.base}/v1/commands/", params={"agent_token": TOKEN}
    ) as response:
        listing = DOC.check(
            "GET", "/v1/commands/", 200, dict(response.headers), await response.read()
        )
    statuses = [r["command_status"] for r in listing["commands"]]
    assert statuses[:5] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert listing["commands"][3]["command_error"]["type"] == "TypeError"
    async with running.client.get(f"{running.base}/v1/status") as response:
        status_body = DOC.check(
            "GET", "/v1/status", 200, dict(response.headers), await response.read()
        )
    assert status_body["node_uuid"] == "u-1"
