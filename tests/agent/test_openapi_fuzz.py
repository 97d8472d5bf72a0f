"""A bounded property-based fuzz run against the running agent over TLS.

Hypothesis makes requests (command bodies, arbitrary JSON, garbage and compressed bytes, odd
query strings, paths and methods) with a valid token, mostly. Every answer must be below 500,
be one that docs/openapi.yaml documents for the route it hit, with a body matching the
documented schema, and the agent must keep answering /v1/status.

Side effects are kept cheap and bounded: ``os.sync`` is a no-op during the run and
``log.collect_system_logs`` runs no external commands. An async command
(``standby.power_off``/``run_image``, RecordingPower backend) makes the next command answer
409 until it has finished: that is the documented busy rule, not a failure.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

import agent.extensions.log as log_extension
from tests.agent.conftest import TOKEN, Running
from tests.agent.openapi_doc import load

DOC = load()
COMMANDS = DOC.doc["paths"]["/v1/commands/"]["post"]["x-tacet-commands"]
# prepare_image would download from whatever URL the fuzzer invents; the agent's
# FakeInventory has no disk so it stops before that, but keep the rule explicit: the fuzz
# never makes the agent reach an address outside this machine.
NAMES = sorted(
    name for name in COMMANDS if name not in ("standby.prepare_image", "deploy.execute_deploy_step")
)
EXTENSIONS = sorted({name.partition(".")[0] for name in NAMES})
PARAM_NAMES = sorted({p for spec in COMMANDS.values() for p in spec["params"]})

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.one_of(
    st.sampled_from(NAMES),
    st.text(max_size=20).filter(lambda s: "." not in s),  # no dot
    st.builds(
        "{}.{}".format,
        st.sampled_from(EXTENSIONS) | st.text(max_size=8),
        st.text(max_size=12),
    ),
    json_values,  # not a string at all
)
node_infos = st.fixed_dictionaries(
    {},
    optional={
        "node": json_values | st.fixed_dictionaries({}, optional={"uuid": json_values}),
        "config": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "agent_token": st.sampled_from([TOKEN, "", "******", "fuzz-token-2"]) | json_values,
                "heartbeat_timeout": json_values,
                "tls_min_version": st.sampled_from(["1.2", "1.3", "1.1"]) | json_values,
            },
        ),
    },
)
params = st.one_of(
    st.none(),
    json_values,  # mostly not an object
    st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=8), json_values, max_size=3),
    st.fixed_dictionaries({"node_info": node_infos}),
)
command_bodies = st.fixed_dictionaries(
    {}, optional={"name": names, "params": params, "extra": json_values}
)
ODD_BODIES = [
    b"",
    b"NaN",
    b"[-Infinity]",
    b'{"name": "poll.set_node_info", "params": {"node_info": {"x": 1e999}}}',
    b"1" * 5000,
    b"[" * 5000,
    b'{"name": "poll.get_node_info"' * 3,
    b"\xef\xbb\xbf{}",
    "{}".encode("utf-16"),
    b"\x00\x00\x00{",
]
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from(ODD_BODIES),
    command_bodies.map(lambda body: json.dumps(body).encode()),
    json_values.map(lambda value: json.dumps(value).encode("utf-16")),
)
ENCODERS = {"gzip": gzip.compress, "deflate": zlib.compress}
segments = st.sampled_from(["v1", "commands", "status", "", ".", ".."]) | st.text(max_size=10)
paths = st.sampled_from(
    ["/", "/v1", "/v1/", "/v1/status", "/v1/status/", "/v1/commands", "/v1/commands/"]
) | st.lists(segments, max_size=4).map(lambda parts: "/" + "/".join(parts))
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


@dataclass
class Fuzz:
    run: Running
    token: str = TOKEN
    ids: list[str] = field(default_factory=list)
    examples: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


@pytest.fixture
async def fuzz(running, monkeypatch):
    state = Fuzz(running)
    # Wrong tokens are part of the fuzz; holding the fuzzer off (429) would end the run.
    running.agent.guard.max_failures = 10**9
    monkeypatch.setattr(os, "sync", lambda: None)
    monkeypatch.setattr(
        log_extension, "collect_archive", functools.partial(log_extension.collect_archive, {})
    )
    set_token = running.agent.set_token

    def spy(token: str) -> None:  # poll.set_node_info may hand the agent a new token
        set_token(token)
        state.token = token

    monkeypatch.setattr(running.agent, "set_token", spy)
    yield state
    print(f"fuzz: {state.examples} requests, statuses {dict(sorted(state.statuses.items()))}")


async def send(state: Fuzz, method: str, url: URL, **kwargs: Any) -> tuple[int, Any]:
    """One request; asserts the answer is documented for the route it hit."""
    async with state.run.client.request(method, url, allow_redirects=False, **kwargs) as response:
        body = await response.read()
        status, headers, sent = response.status, dict(response.headers), response.url
    assert status < 500, (method, str(url), status, body[:300])
    template, operation = DOC.route(method, sent.path_safe)
    value = DOC.check(operation, template, status, headers, body)
    state.statuses[status] = state.statuses.get(status, 0) + 1
    return status, value


@st.composite
def requests(draw: st.DrawFn, state: Fuzz) -> tuple[str, URL, dict[str, Any]]:
    kind = draw(st.sampled_from(["command", "command", "command", "raw", "path", "result"]))
    method, path, body = "POST", "/v1/commands/", None
    if kind == "command":
        body = json.dumps(draw(command_bodies)).encode()
    elif kind == "raw":
        body = draw(raw_bodies)
    elif kind == "path":
        method, path = draw(st.sampled_from(METHODS)), draw(paths)
        if method in ("POST", "PUT", "PATCH"):
            body = draw(raw_bodies | command_bodies.map(lambda b: json.dumps(b).encode()))
    else:
        method = draw(st.sampled_from(["GET", "HEAD"]))
        # What is drawn never depends on the agent's state (Hypothesis replays draws): an index
        # picks one of the results seen so far, when there are any.
        pick = draw(st.integers(0, 10**6) | st.uuids().map(str) | st.text(min_size=1, max_size=12))
        if isinstance(pick, int):
            pick = state.ids[pick % len(state.ids)] if state.ids else str(pick)
        path = "/v1/commands/" + pick
    query = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=8).filter(lambda k: k != "agent_token"),
            st.text(max_size=12),
            max_size=3,
        )
    )
    wait = draw(st.sampled_from([None, "true", "TRUE", "1", "yes", "false", "no", ""]))
    if wait is not None:
        query["wait"] = wait
    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(["query"] * 6 + ["bearer", "bearer-and-query", "wrong", "none"]))
    bearer_ok = state.token.isascii() and state.token.isprintable()
    if auth in ("query", "bearer-and-query") or (auth == "bearer" and not bearer_ok):
        query["agent_token"] = state.token
    if auth in ("bearer", "bearer-and-query") and bearer_ok:
        headers["Authorization"] = f"Bearer {state.token}"
    elif auth == "wrong":
        query["agent_token"] = "wrong-" + state.token
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        encoding = draw(st.sampled_from([None] * 6 + ["gzip", "deflate"]))
        if encoding is not None:
            headers["Content-Encoding"] = encoding
            if draw(st.booleans()):
                body = ENCODERS[encoding](body)  # else: garbage claiming to be compressed
        kwargs["data"] = body
    url = URL(state.run.base).with_path(path).with_query(query)
    return method, url, kwargs


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
@given(data=st.data())
async def test_fuzzed_requests_get_documented_answers(fuzz, data):
    method, url, kwargs = data.draw(requests(fuzz), label="request")
    status, value = await send(fuzz, method, url, **kwargs)
    fuzz.examples += 1
    if method == "POST" and url.path == "/v1/commands/" and status == 200:
        fuzz.ids.append(value["id"])
    # The agent keeps serving, and what it stored still serialises as documented.
    base = URL(fuzz.run.base)
    status, _ = await send(fuzz, "GET", base.with_path("/v1/status"))
    assert status == 200
    if fuzz.examples % 10 == 0:
        listing = base.with_path("/v1/commands/").with_query(agent_token=fuzz.token)
        status, _ = await send(fuzz, "GET", listing)
        assert status == 200
