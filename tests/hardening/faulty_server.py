"""A stdio MCP server (the official SDK's `MCPServer`) that breaks the framing on request, for the hardening tests.

The handshake, `echo`, `pid` and `huge` are the SDK's own; the others write straight to the pipe the gateway
reads, between the SDK's messages (the SDK flushes each one whole), then misbehave. (While it serves, the SDK
points fd 1 at stderr and writes the protocol to a duplicate of it, so stray prints cannot break the framing;
the tools find that duplicate as the descriptor open on the same pipe as fd 1 was at start.)

- `garbage`: a line that is not JSON, then its answer as usual;
- `stall`: the first half of its answer's line, then nothing, for ever (the process keeps answering others);
- `huge`: an answer of `mib` MiB (over `gateway.max_message_bytes`), through the SDK's own writer;
- `bad_utf8`: its answer with bytes that are not UTF-8 in it, and nothing else;
- `cut`: the first half of its answer, then closes stdout; `exit`: then exits (else it keeps running);
- `pid`: the process id, to tell processes apart.
"""

from __future__ import annotations

import contextlib
import json
import os

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("faulty", version="0.1.0")
_PIPE = os.fstat(1)


def _wires() -> list[int]:
    """The descriptors open on the pipe fd 1 was at start: the SDK writes the protocol to one of them."""
    wires = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found = os.fstat(int(name))
            if (found.st_dev, found.st_ino) == (_PIPE.st_dev, _PIPE.st_ino):
                wires.append(int(name))
    return wires


def _write(data: bytes) -> None:
    wire = _wires()[0]
    while data:
        data = data[os.write(wire, data) :]


def _head(ctx: Context) -> bytes:
    """The start of the JSON-RPC answer to the request being served."""
    request_id = json.dumps(ctx.request_context.request_id)
    return b'{"jsonrpc":"2.0","id":' + request_id.encode() + b',"result":{"content":[{"type":"text","text":"'


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def pid() -> int:
    """This process's id."""
    return os.getpid()


@server.tool()
def garbage(text: str) -> str:
    """A line that is not JSON on stdout, then the answer."""
    _write(b"this is not JSON-RPC {{{\n")
    return text


@server.tool()
async def stall(ctx: Context) -> str:
    """Half a line, then nothing."""
    _write(_head(ctx)[:25])
    await anyio.sleep_forever()
    return "never"


@server.tool()
def huge(mib: int = 50) -> str:
    """An answer of `mib` MiB, on one line as every message (written by the SDK, so nothing interleaves)."""
    return "x" * (mib << 20)


@server.tool()
async def bad_utf8(ctx: Context) -> str:
    """An answer that is not UTF-8, and no other."""
    _write(_head(ctx) + b'\xff\xfe\xc3("}]}}\n')
    await anyio.sleep_forever()
    return "never"


@server.tool()
async def cut(ctx: Context, exit: bool = True) -> str:
    """Half an answer, then stdout closed; then exit, or keep running."""
    _write(_head(ctx)[:25])
    for wire in _wires():
        os.close(wire)
    if exit:
        os._exit(3)
    await anyio.sleep_forever()
    return "never"


if __name__ == "__main__":
    server.run("stdio")
