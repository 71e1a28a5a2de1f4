"""An SDK `Transport` over a stdio server's lines: the SDK's `ClientSession` on top, our supervisor underneath
(a local `StdioProcess`, or a `ContainerProcess` attached to a container).

Sessions never see bytes: this adapter parses each stdout line into a `SessionMessage` (or hands the parse
error to the session as a value, as the SDK's own stdio transport does) and serializes outgoing messages
one per line.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

import anyio
import mcp_types as types
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage


def session_message(data: bytes | str) -> SessionMessage | Exception:
    """One received JSON-RPC message for the SDK session; a parse error is handed over as a value."""
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(data, by_name=False))
    except ValueError as exc:
        return exc


class LineProcess(Protocol):
    """What the transport needs of a stdio server: `StdioProcess`, or a container (`ContainerProcess`)."""

    async def send(self, message: bytes) -> None: ...

    async def receive(self) -> bytes: ...


@contextlib.asynccontextmanager
async def process_transport(process: LineProcess) -> AsyncIterator[TransportStreams]:
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async def pump_stdout() -> None:
        async with read_writer:
            with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                while True:
                    await read_writer.send(session_message(await process.receive()))

    async def pump_stdin() -> None:
        async with write_reader:
            try:
                async for outgoing in write_reader:
                    data = outgoing.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.send(data.encode())
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                await read_writer.aclose()  # the child stopped reading: end the session instead of hanging

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump_stdout)
        tg.start_soon(pump_stdin)
        try:
            yield read_stream, write_stream
        finally:
            tg.cancel_scope.cancel()
            for stream in (read_stream, write_stream):
                await stream.aclose()
