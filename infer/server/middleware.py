"""ASGI middleware in front of the routes: the request-body limit and the API key.

BodyLimit refuses a body past `max_bytes` with 413 in the OpenAI error shape: at once when
its Content-Length says so (nothing of it is read), else as soon as the bytes read so far
pass the limit (chunked bodies), so a huge body never sits in memory. ApiKey answers 401
to a request without `Authorization: Bearer <key>` on every path but the open ones
(/health, and /metrics unless it is configured behind the key).
"""
from __future__ import annotations

import hmac
import json
from typing import Iterable

from infer.server.protocol import APIError


async def send_error(send, e: APIError) -> None:
    body = json.dumps(e.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in (e.headers or {}).items()]
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def too_large(limit: int) -> APIError:
    return APIError(f"the request body is larger than {limit} bytes", status=413, code="request_too_large",
                    headers={"Connection": "close"})


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                return await send_error(send, APIError("invalid Content-Length", code="invalid_request"))
            if declared > self.max_bytes:
                return await send_error(send, too_large(self.max_bytes))
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large(self.max_bytes)  # the app's APIError handler answers (or the except below)
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except APIError as e:
            if started or e.status != 413:
                raise
            await send_error(send, e)


class ApiKey:
    def __init__(self, app, key: str, open_paths: Iterable[str]):
        self.app, self.open_paths = app, frozenset(open_paths)
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        got = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(got, self.expected):
            return await self.app(scope, receive, send)
        await send_error(send, APIError("a valid API key is required: `Authorization: Bearer <key>`", status=401,
                                        code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
