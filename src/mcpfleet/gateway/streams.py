"""Message-stream clients over one relayed session: a WebSocket connection, or a legacy HTTP+SSE stream.

Both carry whole JSON-RPC messages of one session, one per WebSocket text frame or SSE event, to and from a
relay's session (`StdioSession`, opened by the runtime on the relay it chose). The runtime decides where
the session goes; this module only pumps messages and ends the session with the connection.
"""

from __future__ import annotations

import contextlib
import math

import anyio

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import Receive, Send, send_chunk, start_event_stream, stream_body
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.protocol import error_response, parse_body, sse_event
from mcpfleet.gateway.upstream.relay import Outbox, StdioSession

DURATION_CLOSE = 1001  # "going away" (RFC 6455 section 7.4.1): this connection ends, the client may open another


async def websocket_session(
    receive: Receive,
    send: Send,
    session: StdioSession,
    box: Outbox,
    max_frame: int,
    max_duration: float | None = None,
) -> None:
    """Accept the WebSocket (subprotocol `mcp`) and pump text frames both ways until either side ends: the
    client (disconnect, a binary frame: 1003, a frame over `max_frame` characters: 1009), the session (1011,
    "the server went away"), or `max_duration` seconds (`gateway.limits.max_stream_duration`: 1001, the
    reason naming the setting). A message the gateway cannot pass on is answered on the socket with a
    JSON-RPC error. The caller ends the session afterwards."""
    await send({"type": "websocket.accept", "subprotocol": "mcp"})
    async with anyio.create_task_group() as tg:

        async def to_client() -> None:
            async for item in box.receive:
                await send({"type": "websocket.send", "text": item.decode()})
            await send({"type": "websocket.close", "code": 1011, "reason": "the server went away"})
            tg.cancel_scope.cancel()

        tg.start_soon(to_client)
        with anyio.move_on_after(math.inf if max_duration is None else max_duration) as deadline:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    await send({"type": "websocket.close", "code": 1003, "reason": "text frames only"})
                    break
                if len(text) > max_frame:
                    reason = "frame over gateway.max_message_bytes"
                    await send({"type": "websocket.close", "code": 1009, "reason": reason})
                    break
                try:
                    messages, _ = parse_body(text.encode())
                    await session.bridge(messages, box)
                except GatewayError as exc:
                    answer = error_response(None, exc.code, exc.message).decode()
                    await send({"type": "websocket.send", "text": answer})
        if deadline.cancelled_caught:
            reason = f"open {max_duration:g} s (gateway.limits.max_stream_duration); connect again"
            with contextlib.suppress(OSError):
                await send({"type": "websocket.close", "code": DURATION_CLOSE, "reason": reason})
        tg.cancel_scope.cancel()


async def legacy_event_stream(exchange: Exchange, box: Outbox, endpoint: str, keepalive: float) -> None:
    """The 2024-11-05 transport's stream: first an `endpoint` event naming where to POST (`endpoint`), then
    every message of the session as it comes, with `: keepalive` comments after `keepalive` seconds of
    quiet, until the client goes away or the session ends."""
    await start_event_stream(exchange.send)
    await send_chunk(exchange.send, sse_event(endpoint.encode(), event="endpoint"))
    await stream_body(exchange.receive, exchange.send, box.events(keepalive), exchange.max_stream_duration)
