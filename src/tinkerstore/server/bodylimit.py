"""Refuse request bodies over ``max_body_bytes`` with a 413 JSON, before the app reads them.

A declared ``Content-Length`` is checked up front (the SDK always sends one). A chunked body is
counted as it arrives and buffered up to the limit, then replayed to the app: FastAPI would turn
an error raised mid-read into a generic 400, so the decision is made here instead.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tinkerstore.errors import InvalidInput, PayloadTooLarge, TinkerstoreError
from tinkerstore.server.errors import error_response

__all__ = ["BodyLimitMiddleware"]


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self, size: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body of {size} bytes is over the {self.max_body_bytes}-byte limit",
            hint="send a smaller request (the server's max_body_bytes setting)",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            text = declared.decode("latin-1").strip()
            if not text.isdigit():
                await self._reject(scope, receive, send, InvalidInput("malformed Content-Length"))
            elif int(text) > self.max_body_bytes:
                await self._reject(scope, receive, send, self._too_large(text))
            else:
                await self.app(scope, receive, send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await self._reject(scope, receive, send, self._too_large(f"over {size}"))
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, exc: TinkerstoreError
    ) -> None:
        # Connection: close, because the unread body is still on the wire.
        await error_response(exc, {"Connection": "close"})(scope, receive, send)
