"""The request's identity for logs and traces: the outermost layer, so every answer (a refusal, a preflight
included) and every line logged while serving the request carry the same request id.

`X-Request-Id`: the client's when it is a sane token (1 to 128 of `[A-Za-z0-9._-]`), else one made here
(the trace id when tracing is on, else 32 hex digits unique to this process and request); the request goes
inward with that one header (so an HTTP backend receives it through the passthrough) and every answer
carries it back, in place of any a backend sent. The id and the scope are left in `logs.REQUEST` for the
log filter (`gateway/logs.py`); with tracing on (`gateway/tracing.py`), the request's SERVER span is
current while it is served.

Costs, tracing off: one header scan, one `ContextVar.set`, one wrapped `send` (the answer's headers copied
once); no OpenTelemetry call.
"""

from __future__ import annotations

import itertools
import os
import re

from mcpfleet.gateway import logs, tracing
from mcpfleet.gateway.asgi import App, Message, Receive, Scope, Send

REQUEST_ID = b"x-request-id"
SANE_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")
_ANSWER_STARTS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})


_PREFIX = os.urandom(8).hex()  # this process's: ids stay unique across gateway replicas and restarts
_serial = itertools.count(1)


def new_request_id() -> str:
    """32 hex digits: 16 random ones chosen when the process starts, then a serial number (unique, cheap: no
    system call per request; a request id is a correlation handle, not a secret)."""
    return f"{_PREFIX}{next(_serial):016x}"


class Correlation:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
        elif tracing.enabled:
            await self._traced(scope, receive, send)
        else:
            request_id = _request_id(scope, None)
            token = logs.REQUEST.set(logs.RequestContext(request_id, scope))
            try:
                await self.app(scope, receive, _echoing(send, request_id, None))
            finally:
                logs.REQUEST.reset(token)

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        with tracing.serving(scope) as span:
            request_id = _request_id(scope, tracing.current_trace_id())
            status: list[int] = []
            token = logs.REQUEST.set(logs.RequestContext(request_id, scope))
            try:
                await self.app(scope, receive, _echoing(send, request_id, status))
            finally:
                logs.REQUEST.reset(token)
                if status:
                    tracing.answered(span, status[0])


def _request_id(scope: Scope, trace_id: str | None) -> str:
    """The client's id when it is sane; else a new one, which replaces the client's in the request."""
    given = None
    for name, value in scope["headers"]:
        if name == REQUEST_ID:
            given = value
            break
    if given is not None and SANE_ID.fullmatch(given):
        return str(given.decode("ascii"))
    request_id = trace_id or new_request_id()
    kept = [(k, v) for k, v in scope["headers"] if k != REQUEST_ID] if given is not None else scope["headers"]
    scope["headers"] = [*kept, (REQUEST_ID, request_id.encode())]
    return request_id


def _echoing(send: Send, request_id: str, status: list[int] | None) -> Send:
    """`send`, with `X-Request-Id` on the answer's start (in place of any other); `status` collects its status."""
    echoed = (REQUEST_ID, request_id.encode())

    async def answer(message: Message) -> None:
        if message["type"] in _ANSWER_STARTS:
            headers = [item for item in message.get("headers", ()) if item[0] != REQUEST_ID]  # names: lowercase
            headers.append(echoed)
            message = {**message, "headers": headers}
            if status is not None and "status" in message:
                status.append(int(message["status"]))
        await send(message)

    return answer
