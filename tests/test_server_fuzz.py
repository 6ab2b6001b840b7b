"""A schema fuzzer for the HTTP API: bodies built from the app's own OpenAPI document, every field given
values of its type and of every other JSON type, fields missing or extra, raw bytes, unknown paths and
methods. No input may reach a 500, and every failure has the one error shape.
"""

from __future__ import annotations

import json

import pytest
from conftest import DOCS

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("hypothesis")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from serving import Server  # noqa: E402

from qrr.runtime import Reranker  # noqa: E402
from qrr.server import ServerConfig, create_app  # noqa: E402

texts = st.one_of(st.text(max_size=30), st.sampled_from(DOCS), st.sampled_from(["\ud800", "<|im_end|>", "Beijing " * 60]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def resolve(schema: dict, spec: dict) -> dict:
    return spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema


def of_schema(schema: dict, spec: dict, depth: int = 0) -> st.SearchStrategy:
    """Values of the type `schema` (an OpenAPI schema object) describes, at its bounds and past them."""
    schema = resolve(schema, spec)
    options = schema.get("anyOf") or schema.get("oneOf")
    if depth > 3:
        return json_values
    if options:
        return st.one_of(*(of_schema(o, spec, depth + 1) for o in options))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        return body_of(schema, spec, depth + 1)
    return {
        "string": texts,
        "integer": st.integers(schema.get("minimum", -3) - 1, 12),
        "boolean": st.booleans(),
        "null": st.none(),
        "array": st.lists(of_schema(schema.get("items", {}), spec, depth + 1), max_size=6),
    }.get(kind, json_values)


def body_of(schema: dict, spec: dict, depth: int = 0) -> st.SearchStrategy:
    """An object of the schema: its required fields, some optional ones, `model` mostly the served one."""
    fields = {name: st.one_of(st.just("tiny"), of_schema(sub, spec, depth)) if name == "model" else
              of_schema(sub, spec, depth) for name, sub in schema.get("properties", {}).items()}
    required = set(schema.get("required", []))
    return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required},
                                 optional={k: v for k, v in fields.items() if k not in required})


@st.composite
def requests(draw, spec: dict, path: str) -> dict:
    """A body of the route's schema, then maybe broken: a field's value replaced by any JSON, a field
    dropped, an unknown field added, or the whole body any JSON."""
    ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = draw(body_of(resolve(ref, spec), spec))
    how = draw(st.sampled_from(["keep", "keep", "keep", "replace", "drop", "add", "whole"]))
    if how == "whole":
        return draw(json_values)
    if how in ("replace", "drop") and body:
        name = draw(st.sampled_from(sorted(body)))
        if how == "drop":
            del body[name]
        else:
            body[name] = draw(json_values)
    if how == "add":
        body[draw(st.text(max_size=8))] = draw(json_values)
    return body


@pytest.fixture(scope="module")
def served(fp32_artifact):
    rr = Reranker(fp32_artifact, max_length=256)
    with Server(create_app(rr, ServerConfig(max_documents=8, max_body_bytes=64 * 1024), name="tiny")) as base:
        spec = httpx.get(base + "/openapi.json", timeout=30).json()
        with httpx.Client(base_url=base, timeout=60) as client:
            yield client, spec


def check(r: httpx.Response) -> None:
    assert r.status_code < 500 or r.status_code == 503, r.text  # 503: busy, never a crash
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error", "detail"} and isinstance(body["error"], str), body
        assert all(set(d) == {"field", "message"} for d in body["detail"]), body


def post_routes(spec: dict) -> list[str]:
    return sorted(path for path, ops in spec["paths"].items() if "post" in ops)


@given(data=st.data())
def test_no_body_reaches_a_500(served, data):
    client, spec = served
    path = data.draw(st.sampled_from(post_routes(spec)))
    body = data.draw(requests(spec, path))
    check(client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))


@given(data=st.data(), raw=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()[:-1])),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_no_raw_bytes_reach_a_500(served, data, raw, content_type):
    client, spec = served
    path = data.draw(st.sampled_from(post_routes(spec)))
    headers = {"content-type": content_type} if content_type else {}
    check(client.post(path, content=raw, headers=headers))


@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
       path=st.one_of(st.sampled_from(["/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/health", "/metrics",
                                       "/v1/models", "/openapi.json", "/docs", "/"]),
                      st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20).map(
                          lambda p: "/" + p.lstrip("/"))))
def test_no_path_or_method_reaches_a_500(served, method, path):
    client, _ = served
    r = client.request(method, path.replace("?", "").replace("#", ""))
    assert r.status_code < 500, r.text
    if r.status_code >= 400 and method != "HEAD":
        check(r)
