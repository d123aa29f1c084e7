"""Check real responses against ptool_ops/booking/openapi.yaml, and record what was covered."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import Any

import httpx
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_URI = "urn:ptool-ops:booking-openapi"
covered: set[tuple[str, str, int]] = set()


@cache
def document() -> dict[str, Any]:
    text = files("ptool_ops.booking").joinpath("openapi.yaml").read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


@cache
def _registry() -> Registry:
    resource = Resource.from_contents(document(), default_specification=DRAFT202012)
    return Registry().with_resource(DOC_URI, resource)


def operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch"}
    }


def _template(method: str, url_path: str) -> str:
    for path, item in document()["paths"].items():
        if method.lower() not in item:
            continue
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"
        if re.match(pattern, url_path):
            return str(path)
    raise AssertionError(f"{method} {url_path} is not in the contract")


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        pointer = node["$ref"].removeprefix("#/").split("/")
        target: Any = document()
        for part in pointer:
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def check(response: httpx.Response) -> Any:
    """Assert ``response`` is one the contract allows; return its JSON body."""
    method = response.request.method
    path = _template(method, response.request.url.path)
    operation = document()["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], (
        f"{method} {path} answered {status}, which the contract does not list"
    )
    spec = _deref(operation["responses"][status])
    media = response.headers.get("content-type", "").split(";")[0]
    assert media in spec["content"], f"{method} {path} {status}: unexpected media type {media}"
    for header, header_spec in spec.get("headers", {}).items():
        if _deref(header_spec).get("required", True):
            assert header.lower() in response.headers, f"{method} {path}: missing {header}"
    body = response.json()
    schema_node = spec["content"][media]["schema"]
    assert "$ref" in schema_node, "contract schemas are named components"
    schema = {"$ref": f"{DOC_URI}{schema_node['$ref']}"}
    Draft202012Validator(schema, registry=_registry(), format_checker=FormatChecker()).validate(
        body
    )
    covered.add((method, path, response.status_code))
    return body
