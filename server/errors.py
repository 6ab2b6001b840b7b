"""One error shape for every failure: `{"error": message, "detail": [{"field", "message"}, …]}`.

`error_response` turns every exception a request can end in into that shape: qrr's own problems, FastAPI's
validation errors (malformed JSON, invalid UTF-8, wrong types), Starlette's 404 and 405, and anything else
(500, logged, never a traceback to the client). The guard middleware answers its own statuses (413, 499,
504) with `problem` too.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("qrr.server")


class HTTPProblem(Exception):
    """A failure the client is told about: status, one-line message, the fields at fault."""

    def __init__(self, status: int, message: str, detail: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail, self.headers = status, message, detail or [], headers or {}


def problem(status: int, message: str, detail: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail or []}, status_code=status, headers=headers)


def field_problem(status: int, field: str, message: str) -> HTTPProblem:
    return HTTPProblem(status, f"{field}: {message}", [{"field": field, "message": message}])


def _validation(exc: RequestValidationError) -> tuple[int, str, list[dict[str, str]]]:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid body", "type": ""}
    if first["type"] == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        where = first["loc"][1] if len(first["loc"]) > 1 else 0
        message = f"not valid JSON: {reason} at character {where}"
        return 400, f"body: {message}", [{"field": "body", "message": message}]
    if tuple(first["loc"]) == ("body",) and isinstance(first.get("input"), (bytes, bytearray)):
        return 415, "the body must be JSON, sent with content-type: application/json", []
    detail = []
    for e in errors:
        field = ".".join(str(p) for p in e["loc"][1 if e["loc"][:1] == ("body",) else 0:]) or "body"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing" and field == "body":
            message = "a JSON object is required"
        detail.append({"field": field, "message": message})
    more = f" (and {len(detail) - 3} more)" if len(detail) > 3 else ""
    return 422, "; ".join(f"{d['field']}: {d['message']}" for d in detail[:3]) + more, detail


def _http(exc: StarletteHTTPException, request: Request) -> tuple[int, str, list[dict[str, str]]]:
    method, path = request.method, request.url.path
    if exc.status_code == 404:
        return 404, f"no route {method} {path}; GET /openapi.json lists them", []
    if exc.status_code == 405:
        allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "another method")
        return 405, f"{method} is not allowed on {path}; use {allowed}", []
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
        message = f"not valid UTF-8: byte 0x{cause.object[cause.start]:02x} at position {cause.start}"
        return 400, f"body: {message}", [{"field": "body", "message": message}]
    if exc.status_code == 400 and isinstance(cause, RecursionError):
        return 400, "body: JSON nested too deeply", [{"field": "body", "message": "JSON nested too deeply"}]
    return exc.status_code, str(exc.detail), []


async def error_response(request: Request, exc: Exception) -> JSONResponse:
    headers: dict[str, str] | None = None
    if isinstance(exc, HTTPProblem):
        status, message, detail, headers = exc.status, exc.message, exc.detail, exc.headers
    elif isinstance(exc, RequestValidationError):
        status, message, detail = _validation(exc)
    elif isinstance(exc, StarletteHTTPException):
        status, message, detail = _http(exc, request)
        headers = exc.headers
    else:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        status, message, detail = 500, "internal server error", []
    return problem(status, message, detail, headers)


def install(app: FastAPI) -> None:
    """Route every failure through `error_response`."""
    handler: Any = error_response
    for kind in (HTTPProblem, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(kind, handler)
