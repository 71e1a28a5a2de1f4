"""The ASGI contract, typed, and the few helpers every handler needs: read a body, answer, and the one place
where the gateway's errors become answers (`ErrorBoundary`)."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.identity import principal_of
from mcpfleet.gateway.protocol import error_response, single_request

log = logging.getLogger("mcpfleet.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (names are lowercase in ASGI)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def only_header(scope: Scope, name: bytes) -> str | None:
    """The value of a request header the gateway routes on, which may appear once: a second copy is refused
    with 400, since which one the client meant (and which one a proxy in front read) cannot be known."""
    found = None
    for key, value in scope["headers"]:
        if key == name:
            if found is not None:
                raise GatewayError.invalid_request(f"the {name.decode()} header may appear only once")
            found = str(value.decode("latin-1"))
    return found


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole request body; with a `limit`, more than `limit` bytes are refused with 413 before all is read.
    (`gateway.max_message_bytes` is applied by the `BodyLimit` layer, under every route.)"""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError.invalid_request("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise GatewayError(413, -32600, f"the body exceeds {limit} bytes (setting: gateway.max_message_bytes)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(
    send: Send, status: int, body: bytes, headers: Headers | None = None, content_type: bytes = b"application/json"
) -> None:
    all_headers = [(b"content-length", str(len(body)).encode())] if status != 204 else []
    if body:
        all_headers.append((b"content-type", content_type))
    all_headers.extend(headers or [])
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, error: GatewayError, request_id: Any = None) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await respond(send, error.status, error_response(request_id, error.code, error.message, error.data), extra)


class ErrorBoundary:
    """Where a `GatewayError` raised by the layers or routes inside becomes an answer, counted once.

    HTTP: the status and a JSON-RPC error body with the request's id when its body was read, unless the
    response has started (then it is logged: the client sees the stream end). WebSocket: the handshake is
    refused with the same status and body (uvicorn's `websocket.http.response`), else closed with 1008, so
    the layers and routes inside raise only before they take `websocket.connect`.

    Each error is logged once (`answered`): a 5xx at WARNING (the gateway or a server is at fault: the operator
    wants each one), a 4xx at DEBUG (a client's mistake, a refused key or a quota: as many as a client sends).
    The line holds the status, the JSON-RPC code and the message the client got, which never holds a secret
    (credentials, session ids and URL passwords are kept out of `GatewayError` messages, docs/operations.md).
    """

    def __init__(self, app: App, count: Callable[[str, int, int, str, str | None], None]) -> None:
        self.app = app
        # (server id or "-", JSON-RPC code, HTTP status, message, the caller's principal or None)
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            try:
                await self.app(scope, receive, send)
            except GatewayError as exc:
                self.count(scope.get("mcpfleet.server", "-"), exc.code, exc.status, exc.message, principal_of(scope))
                answered(exc, "the WebSocket handshake")
                await _refuse_handshake(scope, receive, send, exc)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except GatewayError as exc:
            self.count(scope.get("mcpfleet.server", "-"), exc.code, exc.status, exc.message, principal_of(scope))
            if not started:
                answered(exc, "the request")
                _, request_id = single_request(scope.get("mcpfleet.body", b""))
                await respond_error(send, exc, request_id)
            else:
                log.warning(
                    "error after the response started: %s",
                    exc.message,
                    extra={"status": exc.status, "code": exc.code},
                )


def answered(error: GatewayError, what: str) -> None:
    """The log line of an error the gateway answers itself: `status` and `code` as fields (JSON format)."""
    level = logging.WARNING if error.status >= 500 else logging.DEBUG
    if log.isEnabledFor(level):
        extra = {"status": error.status, "code": error.code}
        log.log(level, "answered %s with %d (%d): %s", what, error.status, error.code, error.message, extra=extra)


async def _refuse_handshake(scope: Scope, receive: Receive, send: Send, error: GatewayError) -> None:
    await receive()  # websocket.connect
    if "websocket.http.response" in (scope.get("extensions") or {}):

        async def deny(message: Message) -> None:  # the HTTP answer to the handshake, status and body
            await send({**message, "type": f"websocket.{message['type']}"})

        await respond_error(deny, error)
    else:  # closing before accepting answers the handshake with 403
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})


async def start_event_stream(send: Send, headers: Headers | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache, no-transform"),
                (b"x-accel-buffering", b"no"),
                *(headers or []),
            ],
        }
    )


async def send_chunk(send: Send, data: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def stream_body(
    receive: Receive, send: Send, chunks: AsyncIterator[bytes], max_duration: float | None = None
) -> bool:
    """Send `chunks` as the response body until they end, the client disconnects, or `max_duration`
    seconds pass (`gateway.limits.max_stream_duration`), whichever is first; at that deadline the body is
    ended cleanly, so an event-stream client reconnects (and resumes with `Last-Event-ID` where the route
    keeps events).

    Returns True when the body was sent whole. Leaving early cancels the iteration, which closes whatever
    feeds it (an upstream response stream, say). An error of `chunks` (an upstream that went silent or closed
    its stream) is raised as it is, once the watch on the client has stopped, for the caller to answer; the
    response is then not finished. (Until issue 12 a TimeoutError, being an OSError, was taken for the
    client going away and swallowed, and other errors came out in an ExceptionGroup nobody caught.)
    """
    completed = False
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def watch_client() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch_client)
        try:
            with anyio.move_on_after(math.inf if max_duration is None else max_duration) as deadline:
                async for chunk in chunks:
                    await send_chunk(send, chunk)
                completed = True
                await send_chunk(send, b"", more=False)
            if deadline.cancelled_caught and not completed:
                log.info("an event stream ended after %g s (setting: gateway.limits.max_stream_duration)", max_duration)
                await send_chunk(send, b"", more=False)
        except TimeoutError as exc:  # the source went silent (checked before OSError, which it is)
            failure = exc
        except OSError:  # the client went away
            pass
        except Exception as exc:
            failure = exc
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return completed
