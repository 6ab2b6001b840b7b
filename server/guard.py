"""The ASGI middleware around every request: body limit, deadline, client disconnects, metrics, last-resort 500.

- The body is read here, at most `max_body_bytes` of it: a larger Content-Length is refused before a byte is
  read, and a chunked body is refused as soon as its count passes the limit (413).
- The whole request runs under a deadline (504) and is cancelled when the client goes away (counted as
  499), so its pairs are dropped before they reach the model.
- Every request is counted by route template and status; an exception nobody handled is logged and
  answered 500 in the one error shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .errors import problem

log = logging.getLogger("qrr.server")
CLIENT_GONE = 499  # nginx's status for a client that closed the connection first


class ClientGone(Exception):
    pass


class Guard:
    def __init__(self, app: Any, *, max_body_bytes: int, timeout_s: float, label: Callable[[dict], str],
                 observe: Callable[[str, int, float], None]) -> None:
        self.app, self.max_body_bytes, self.timeout_s = app, max_body_bytes, timeout_s
        self.label, self.observe = label, observe

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, path = time.perf_counter(), self.label(scope)
        state = {"status": 500, "started": False}

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        async def answer(status: int, message: str, headers: dict[str, str] | None = None) -> None:
            if not state["started"]:
                await problem(status, message, headers=headers)(scope, receive, tracked_send)

        try:
            await asyncio.wait_for(self._handle(scope, receive, tracked_send, answer), self.timeout_s)
        except asyncio.TimeoutError:
            await answer(504, f"the request took longer than the server's {self.timeout_s:g} s deadline; "
                              "send fewer or shorter documents")
        except ClientGone:
            state["status"] = CLIENT_GONE
        except Exception:  # no traceback ever reaches a client
            log.exception("unhandled error on %s", scope.get("path"))
            await answer(500, "internal server error")
        self.observe(path, state["status"], time.perf_counter() - start)

    async def _handle(self, scope: dict, receive: Callable, send: Callable, answer: Callable) -> None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await answer(413, f"the body is {int(length)} bytes; this server takes at most {self.max_body_bytes}",
                         {"connection": "close"})
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await answer(413, f"the body is over {self.max_body_bytes} bytes, the most this server takes",
                             {"connection": "close"})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, gone = b"".join(chunks), asyncio.Event()
        chunks.clear()

        async def replay() -> dict:
            nonlocal body
            if body is not None:
                message, body = {"type": "http.request", "body": body, "more_body": False}, None
                return message
            await gone.wait()
            return {"type": "http.disconnect"}

        app = asyncio.ensure_future(self.app(scope, replay, send))
        watch = asyncio.ensure_future(receive())  # after the body, the next message is the disconnect
        try:
            while True:
                await asyncio.wait({app, watch}, return_when=asyncio.FIRST_COMPLETED)
                if app.done():
                    app.result()
                    return
                if watch.result()["type"] == "http.disconnect":
                    gone.set()
                    raise ClientGone
                watch = asyncio.ensure_future(receive())
        finally:
            for task in (app, watch):
                task.cancel()
            await asyncio.gather(app, watch, return_exceptions=True)
