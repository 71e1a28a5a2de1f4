"""An SDK `Transport` over a WebSocket: subprotocol `mcp`, one JSON-RPC message per text frame.

WebSocket is in no MCP revision; this follows the common convention (the TypeScript SDK's client and a
pending proposal). The official SDK's `mcp.Client` runs on top, so the handshake is the SDK's own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import anyio
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mcpfleet.client.transport import session_message

SUBPROTOCOL = "mcp"
log = logging.getLogger("mcpfleet.client")


@contextlib.asynccontextmanager
async def websocket_client(
    url: str, *, max_size: int = 16 * 1024 * 1024, headers: Sequence[tuple[str, str]] = ()
) -> AsyncIterator[TransportStreams]:
    """Connect to `url` (ws:// or wss://); `max_size`: the largest frame taken, in bytes; `headers`: extra
    headers of the opening handshake."""
    async with connect(
        url,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        max_size=max_size,
        additional_headers=list(headers),
    ) as ws:
        read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

        async def from_server() -> None:
            async with read_writer:
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    try:
                        async for frame in ws:
                            await read_writer.send(session_message(frame))
                    except ConnectionClosed as closed:
                        # The SDK sees only "Connection closed": the server's code and reason say why (a
                        # gateway names the setting, e.g. 1008 "... (gateway.access changed) ...").
                        received = closed.rcvd
                        if received is not None and received.code not in (1000, 1001):
                            log.warning("%s closed the WebSocket: %d %s", url, received.code, received.reason)

        async def to_server() -> None:
            async with write_reader:
                with contextlib.suppress(ConnectionClosed):
                    async for message in write_reader:
                        await ws.send(message.message.model_dump_json(by_alias=True, exclude_unset=True))

        async with anyio.create_task_group() as tg:
            tg.start_soon(from_server)
            tg.start_soon(to_server)
            try:
                yield read_stream, write_stream
            finally:
                tg.cancel_scope.cancel()
