"""ASGI middleware shared by the predictor service and the gateway: a start-up failure is one line."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class OneLineStartupErrors:
    """When start-up fails on a known error (a bad setting, an unloadable model), the lifespan stores its
    reason in `app.state.startup_error`; uvicorn then prints "<who> cannot start: <reason>" (it logs the
    lifespan failure message as is) instead of a traceback."""

    def __init__(self, app: ASGIApp, who: str) -> None:
        self.app = app
        self.who = who

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_reason(message: Message) -> None:
            reason = getattr(scope["app"].state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and reason:
                message = {**message, "message": f"{self.who} cannot start: {reason}"}
            await send(message)

        await self.app(scope, receive, send_reason)
