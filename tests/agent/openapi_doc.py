"""docs/openapi.yaml as a checker: which documented operation a request hits, and whether a
real response (status, headers, body) is one the document allows.

OpenAPI 3.1 schemas are JSON Schema 2020-12, so plain ``jsonschema`` validates them; ``$ref``
resolves inside the one document through a ``referencing`` registry.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
URI = "urn:tacet:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
FALLBACK = "x-tacet-fallback"


def pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def strict_json(data: bytes) -> Any:
    """Parse as RFC 8259 JSON: NaN and Infinity are not JSON, whatever Python accepts."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in a response body is not JSON")

    value = json.loads(data.decode("utf-8"), parse_constant=refuse)
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in walk(value)), (
        "a non-finite number in a response body"
    )
    return value


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


class Document:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry = Registry().with_resource(URI, resource)
        self.templates = [
            (template, re.compile(_template_regex(template))) for template in doc["paths"]
        ]

    # -- where a request goes ----------------------------------------------------------
    def route(self, method: str, path_safe: str) -> tuple[str, str]:
        """(template, method) the app serves ``method path`` with; FALLBACK when unlisted.

        Mirrors aiohttp's router: it matches ``URL.path_safe`` against each resource, and a
        ``{name}`` segment is ``[^{}/]+``.
        """
        method = method.lower()
        for template, regex in self.templates:
            if regex.fullmatch(path_safe):
                if method in self.doc["paths"][template]:
                    return template, method
                break
        return FALLBACK, method

    def operations(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for template, item in self.doc["paths"].items():
            for method in METHODS:
                if method in item:
                    yield template, method, item[method]

    def documented_responses(self) -> set[tuple[str, str, int]]:
        found = {
            (template, method, int(status))
            for template, method, operation in self.operations()
            for status in operation["responses"]
        }
        found |= {(FALLBACK, "*", int(status)) for status in self.doc[FALLBACK]["responses"]}
        return found

    # -- what it may answer ------------------------------------------------------------
    def response(self, template: str, method: str, status: int) -> tuple[str, dict[str, Any]]:
        """(JSON pointer, response object) documented for the status; AssertionError if none."""
        if template == FALLBACK:
            base = pointer(FALLBACK, "responses")
            responses = self.doc[FALLBACK]["responses"]
        else:
            operation = self.doc["paths"][template][method]
            base = pointer("paths", template, method, "responses")
            responses = operation["responses"]
        assert str(status) in responses, (
            f"{method.upper()} {template} answered {status}, which is not documented "
            f"(documented: {sorted(responses)})"
        )
        where = base + pointer(str(status))
        found = responses[str(status)]
        while "$ref" in found:
            ref = found["$ref"]
            assert ref.startswith("#/"), ref
            where = ref[1:]
            found = self.resolve(ref)
        return where, found

    def resolve(self, ref: str) -> Any:
        return self.registry.resolver(URI).lookup(ref).contents

    def validator(self, schema_pointer: str) -> Draft202012Validator:
        return _validator(self, schema_pointer)

    def check(
        self,
        method: str,
        template: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Any:
        """Assert a real answer is allowed by the document; returns the parsed body."""
        where, response = self.response(template, method.lower(), status)
        context = f"{method.upper()} {template} -> {status}"
        for name, spec in response.get("headers", {}).items():
            value = headers.get(name)
            if value is None:
                assert not spec.get("required"), f"{context}: header {name} missing"
                continue
            errors = list(
                self.validator(where + pointer("headers", name, "schema")).iter_errors(value)
            )
            assert not errors, f"{context}: header {name}={value!r}: {errors[0].message}"
        content = response.get("content")
        if method.lower() == "head" or not content:
            assert body == b"", f"{context}: a body where the document has none: {body[:200]!r}"
            return None
        media = headers.get("Content-Type", "").split(";")[0].strip()
        assert media in content, f"{context}: Content-Type {media!r}, documented {sorted(content)}"
        try:
            value: Any = strict_json(body) if media == "application/json" else body.decode()
        except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
            raise AssertionError(f"{context}: not {media}: {exc}; body {body[:300]!r}") from None
        schema_at = where + pointer("content", media, "schema")
        errors = sorted(self.validator(schema_at).iter_errors(value), key=lambda e: e.path)
        assert not errors, (
            f"{context}: body violates {schema_at}: {errors[0].message} at "
            f"{list(errors[0].absolute_path)}; body {body[:300]!r}"
        )
        return value


@functools.cache
def _validator(document: Document, schema_pointer: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"{URI}#{schema_pointer}"},
        registry=document.registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def _template_regex(template: str) -> str:
    parts = re.split(r"(\{[^{}]+\})", template)
    return "".join("[^{}/]+" if p.startswith("{") else re.escape(p) for p in parts)


@functools.cache
def load() -> Document:
    with DOC_PATH.open() as handle:
        return Document(yaml.safe_load(handle))
