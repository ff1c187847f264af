"""Check an HTTP answer of the app against its OpenAPI document (`mapping/functions/openapi.py`): path, status, headers,
body.

Every test helper that calls the app's HTTP API passes each answer through `check_answer`, so an answer the
document does not describe fails the test that saw it with an AssertionError naming what differs.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from mapping.functions.openapi import document

DOCUMENT_URI = "urn:signalr-connection-mapper:openapi.json"
JSON = "application/json"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_MAX_ERRORS = 8
_EXCERPT = 400


@dataclass(frozen=True, slots=True)
class Operation:
    """One documented operation: its method, path template and JSON pointer in the document."""

    method: str
    template: str
    pointer: str


class Contract:
    """An OpenAPI 3.1 document's operations, and the check of an HTTP answer against them."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if "date-time" not in Draft202012Validator.FORMAT_CHECKER.checkers:
            raise RuntimeError("jsonschema cannot check date-time formats: install rfc3339-validator")
        self.spec = spec
        self.base_path = urlsplit(spec["servers"][0]["url"]).path.rstrip("/")
        self._registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, DRAFT202012.create_resource(spec))
        self._validators: dict[str, Draft202012Validator] = {}
        # Concrete paths first, as OpenAPI asks: `/users/me` would win over `/users/{user}`.
        templates = sorted(spec["paths"], key=lambda t: (t.count("{"), t))
        self._paths = [(template, _template_pattern(template)) for template in templates]

    def operation(self, method: str, path: str) -> Operation:
        """Return the operation a request would reach, or raise AssertionError when none is documented."""
        raw = urlsplit(path).path
        if not raw.startswith(self.base_path + "/"):
            raise AssertionError(f"{method} {path}: not under the server URL {self.base_path or '/'}")
        relative = raw[len(self.base_path) :]
        for template, pattern in self._paths:
            if pattern.fullmatch(relative):
                item = self.spec["paths"][template]
                if method.lower() not in item:
                    documented = ", ".join(m.upper() for m in HTTP_METHODS if m in item)
                    raise AssertionError(f"{method} {path}: {template} documents only {documented}")
                return Operation(method.lower(), template, _pointer("", "paths", template, method.lower()))
        raise AssertionError(f"{method} {path}: no documented path matches {relative}")

    def check(
        self,
        method: str,
        path: str,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = JSON,
    ) -> None:
        """Raise AssertionError unless the document lists this status, these headers and this body for the request."""
        # `content_type` is the answer's Content-Type (None: no body); `body` is the decoded JSON.
        operation = self.operation(method, path)
        where = f"{method.upper()} {path} answered {status} ({operation.method.upper()} {operation.template})"
        responses = self.spec["paths"][operation.template][operation.method]["responses"]
        key = next((k for k in (str(status), f"{status // 100}XX", "default") if k in responses), None)
        if key is None:
            raise AssertionError(f"{where}: status not documented; documented: {', '.join(responses)}")
        response, pointer = self._resolve(responses[key], _pointer(operation.pointer, "responses", key))
        self._check_headers(where, response, pointer, {name.lower(): value for name, value in (headers or {}).items()})
        content = response.get("content") or {}
        if content_type is None:
            if content:
                raise AssertionError(f"{where}: no body, but the document gives it {', '.join(content)}")
            return
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in content:
            documented = ", ".join(content) or "no body"
            raise AssertionError(f"{where}: Content-Type {content_type}, but the document gives {documented}")
        if "schema" in content[media_type]:
            self._validate(where, _pointer(pointer, "content", media_type, "schema"), body, what="body")

    def _check_headers(self, where: str, response: Mapping[str, Any], pointer: str, headers: Mapping[str, str]) -> None:
        for name, header in (response.get("headers") or {}).items():
            header, header_pointer = self._resolve(header, _pointer(pointer, "headers", name))
            value = headers.get(name.lower())
            if value is None:
                if header.get("required"):
                    raise AssertionError(f"{where}: the required header {name} is missing")
                continue
            schema_pointer = _pointer(header_pointer, "schema")
            self._validate(where, schema_pointer, _header_value(value, header.get("schema") or {}), what=name)

    def _resolve(self, node: Mapping[str, Any], pointer: str) -> tuple[Mapping[str, Any], str]:
        """Follow OpenAPI Reference Objects (`{"$ref": "#/components/..."}`) within the document."""
        seen: set[str] = set()
        while "$ref" in node:
            ref = str(node["$ref"])
            if not ref.startswith("#/") or ref in seen:
                raise AssertionError(f"unresolvable reference {ref} at {pointer}")
            seen.add(ref)
            pointer = ref[1:]
            target: Any = self.spec
            for segment in pointer[1:].split("/"):
                target = target[segment.replace("~1", "/").replace("~0", "~")]
            node = target
        return node, pointer

    def _validate(self, where: str, pointer: str, instance: Any, *, what: str) -> None:
        validator = self._validators.get(pointer)
        if validator is None:
            schema = {"$ref": f"{DOCUMENT_URI}#{quote(pointer, safe='/~')}"}
            validator = Draft202012Validator(
                schema, registry=self._registry, format_checker=Draft202012Validator.FORMAT_CHECKER
            )
            self._validators[pointer] = validator
        errors = sorted(validator.iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.message))
        if errors:
            lines = [f"  at {error.json_path}: {_shorten(error.message)}" for error in errors[:_MAX_ERRORS]]
            if len(errors) > _MAX_ERRORS:
                lines.append(f"  ... and {len(errors) - _MAX_ERRORS} more")
            raise AssertionError(
                f"{where}: the {what} does not match #{pointer}\n"
                + "\n".join(lines)
                + f"\n{what}: {_excerpt(instance)}"
            )


@functools.cache
def contract() -> Contract:
    """Return the checker for the app's own document (built once)."""
    return Contract(document())


def check_answer(method: str, path: str, status: int, **answer: Any) -> None:
    """Raise AssertionError unless the app's document describes this answer (the keywords of `Contract.check`)."""
    contract().check(method, path, status, **answer)


def _template_pattern(template: str) -> re.Pattern[str]:
    # A parameter is one path segment; an empty one is allowed because in-process tests call
    # `users/` with an empty route parameter the host itself would not route.
    parts = re.split(r"(\{[^}/]+\})", template)
    return re.compile("".join("[^/]*" if part.startswith("{") else re.escape(part) for part in parts))


def _pointer(base: str, *segments: str) -> str:
    escaped = (segment.replace("~", "~0").replace("/", "~1") for segment in segments)
    return "/".join([base, *escaped]) if base else "/" + "/".join(escaped)


def _header_value(value: str, schema: Mapping[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "integer" and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _shorten(text: str) -> str:
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


def _excerpt(instance: Any) -> str:
    try:
        text = json.dumps(instance, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(instance)
    return _shorten(text)
