"""Request-body limits of the service: a size cap and a deadline for the body to arrive.

Uvicorn reads a request body as fast as the client sends it and has no limit of its own: a client
could send gigabytes (held in memory by the JSON parser) or send headers and part of a body and then
stall, holding a connection and a task for as long as it likes. `BodyLimits` reads the body first,
before any endpoint sees it, and answers in JSON:

* 413 `body_too_large` as soon as `Content-Length` or the bytes received exceed
  PREDICTOR_MAX_BODY_BYTES (the rest of the body is never read, the connection is closed);
* 408 `body_timeout` when the whole body has not arrived within PREDICTOR_BODY_TIMEOUT_S.

Every endpoint parses the complete JSON body anyway, so reading it here first costs no extra memory.
The limits are read from `app.state.settings` (set in the lifespan), like the API key of BearerAuth.
"""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _json_error(status: int, error: str, message: str) -> JSONResponse:
    # `Connection: close`: the unread rest of the body must not be taken for the next request.
    return JSONResponse({"error": error, "message": message}, status_code=status, headers={"Connection": "close"})


class BodyLimits:
    """ASGI middleware: the body read in full (at most `max_body_bytes`, within `body_timeout_s`)
    before the app runs, then replayed to it as one message."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = getattr(scope["app"].state, "settings", None) if scope["type"] == "http" else None
        if settings is None:  # not HTTP, or before start-up finished (no endpoint answers yet)
            await self.app(scope, receive, send)
            return
        max_bytes: int = settings.max_body_bytes
        timeout: float = settings.body_timeout_s

        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            await self._too_large(scope, receive, send, max_bytes, f"{int(declared)} bytes declared")
            return

        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                await _json_error(408, "body_timeout", f"the request body did not arrive within {timeout:g} s "
                                  "(PREDICTOR_BODY_TIMEOUT_S)")(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                await self._too_large(scope, receive, send, max_bytes, f"more than {max_bytes} bytes sent")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect notice, when it comes

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send, max_bytes: int, what: str) -> None:
        await _json_error(413, "body_too_large", f"request body too large ({what}); the limit is {max_bytes} "
                          "bytes (PREDICTOR_MAX_BODY_BYTES)")(scope, receive, send)
