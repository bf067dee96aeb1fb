"""Request bodies are capped before anything parses them (or authenticates the caller).

An ASGI middleware: a declared ``Content-Length`` over the cap is refused at once, and a body sent
without one is read only up to the cap; either way the answer is 413 with the common error body,
and memory never holds more than the cap. Upload routes, which stream to storage under their own
larger limits, are exempt by path prefix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, exempt: Iterable[str] = ()) -> None:
        self.app, self.max_bytes, self.exempt = app, max_bytes, tuple(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        payload: dict[str, Any] = {
            "error": "payload_too_large",
            "detail": f"request body larger than {self.max_bytes} bytes (TRAINYARD_MAX_REQUEST_BYTES)",
            "status_code": 413,
        }
        data = json.dumps(payload).encode()
        await send({
            "type": "http.response.start", "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": data})


def install_body_limit(app: Any, max_bytes: int, exempt: Iterable[str] = ()) -> None:
    """Cap every request body of ``app`` at ``max_bytes`` except under the ``exempt`` path prefixes."""
    app.add_middleware(BodyLimit, max_bytes=max_bytes, exempt=tuple(exempt))
