"""The request's identity for logs and traces: the outermost layer, so every answer (a refusal, a preflight
included) and every line logged while serving the request carry the same request id.

`X-Request-Id`: the client's when it is a sane token (1 to 128 of `[A-Za-z0-9._-]`), else one made here (the
trace id when tracing is on, else 32 random hex digits); the request goes inward with that one header (so an
HTTP backend receives it through the passthrough) and every answer carries it back, in place of any a
backend sent. The id and the scope are left in `logs.REQUEST` for the log filter (`gateway/logs.py`); with
tracing on (`gateway/tracing.py`), the request's SERVER span is current while it is served.

Costs, tracing off: one header scan, one `ContextVar.set`, one wrapped `send` (the answer's headers copied
once); no OpenTelemetry call.
"""

from __future__ import annotations

import os
import re

from mcpfleet.gateway import logs, tracing
from mcpfleet.gateway.asgi import App, Message, Receive, Scope, Send

REQUEST_ID = b"x-request-id"
SANE_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")
_ANSWER_STARTS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})


def new_request_id() -> str:
    """32 random hex digits."""
    return os.urandom(16).hex()


class Correlation:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if tracing.enabled:
            with tracing.serving(scope) as span:
                status: list[int] = []
                await self._serve(scope, receive, send, tracing.current_trace_id(), status)
                if status:
                    tracing.answered(span, status[0])
            return
        await self._serve(scope, receive, send, None, None)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, trace_id: str | None, status: list[int] | None
    ) -> None:
        given = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID:
                given = value
                break
        if given is not None and SANE_ID.fullmatch(given):
            request_id = given.decode("ascii")
        else:
            request_id = trace_id or new_request_id()
            kept = [(k, v) for k, v in scope["headers"] if k != REQUEST_ID] if given is not None else scope["headers"]
            scope["headers"] = [*kept, (REQUEST_ID, request_id.encode())]
        echoed = (REQUEST_ID, request_id.encode())

        async def answer(message: Message) -> None:
            if message["type"] in _ANSWER_STARTS:
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID]
                message = {**message, "headers": [*headers, echoed]}
                if status is not None and "status" in message:
                    status.append(int(message["status"]))
            await send(message)

        token = logs.REQUEST.set(logs.RequestContext(request_id, scope))
        try:
            await self.app(scope, receive, answer)
        finally:
            logs.REQUEST.reset(token)
