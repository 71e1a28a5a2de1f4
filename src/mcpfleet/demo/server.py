"""The demo MCP server, written with the official SDK's `MCPServer`.

Its tools cover what a gateway has to carry: plain text, structured output, progress notifications, an
error result, a slow call, a crash, elicitation, a resource notification, and `whoami`, which names the replica
that answered so load balancing shows. Lists of these tools in the docs are checked against `tools/list` by
tests/integration/test_cli_edges.py.
"""

from __future__ import annotations

import os
from typing import Annotated

import anyio
from mcp.server.mcpserver import AcceptedElicitation, Context, Elicit, ElicitationResult, MCPServer, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel


class Stats(BaseModel):
    count: int
    total: float
    mean: float


class Confirmation(BaseModel):
    ok: bool


def ask(question: str) -> Elicit[Confirmation]:
    """The SDK asks the client mid-call (2025 revisions) or answers with an InputRequiredResult that the client
    retries with its answer and the server's `requestState` (2026-07-28)."""
    return Elicit(question, Confirmation)


class Identity(BaseModel):
    replica: str
    pid: int
    transport: str


def build_server(*, replica: str = "stdio", transport: str = "stdio") -> MCPServer:
    server = MCPServer("mcpfleet-demo", version="0.1.0", instructions="A demo server for trying mcpfleet.")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def stats(numbers: list[float]) -> Stats:
        """Count, total and mean of a list of numbers (structured output)."""
        if not numbers:
            raise ToolError("numbers is empty: give at least one number")
        total = sum(numbers)
        return Stats(count=len(numbers), total=total, mean=total / len(numbers))

    @server.tool()
    async def countdown(start: int, ctx: Context, interval: float = 0.05) -> str:
        """Count down from `start` to zero, reporting progress at each step."""
        for step in range(start):
            await ctx.report_progress(step + 1, start, f"{start - step - 1} left")
            await anyio.sleep(interval)
        return f"counted down from {start}"

    @server.tool()
    def fail(message: str = "this tool always fails") -> str:
        """Always return an error result with the given message."""
        raise ToolError(message)

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Wait `seconds` before answering (a slow call)."""
        await anyio.sleep(seconds)
        return f"slept {seconds:g} s"

    @server.tool()
    def crash(code: int = 1) -> str:
        """Exit the server process at once, mid-call (to see how crashes are handled)."""
        os._exit(code)

    @server.tool()
    def confirm(question: str, answer: Annotated[ElicitationResult[Confirmation], Resolve(ask)]) -> str:
        """Ask the user a yes/no question (elicitation) and report the answer and the replica that got it."""
        said = "yes" if isinstance(answer, AcceptedElicitation) and answer.data.ok else "no"
        return f"{said} (answered on {replica}, pid {os.getpid()})"

    @server.tool()
    async def announce(ctx: Context, uri: str = "demo://readme") -> str:
        """Tell listeners that a resource changed (`subscriptions/listen` streams, 2026-07-28)."""
        await ctx.notify_resource_updated(uri)
        return f"announced {uri} on {replica}"

    @server.tool()
    def whoami() -> Identity:
        """Which replica and process answered."""
        return Identity(replica=replica, pid=os.getpid(), transport=transport)

    @server.resource("demo://readme", mime_type="text/markdown")
    def readme() -> str:
        """What this server is."""
        return (
            "# mcpfleet demo\n"
            "A demo MCP server: try the tools echo, stats, countdown, fail, sleep, confirm, announce, whoami"
            " (and crash).\n"
        )

    @server.resource("demo://greeting/{name}")
    def greeting_resource(name: str) -> str:
        """A greeting for `name` (a resource template)."""
        return f"Hello, {name}!"

    @server.prompt()
    def review(code: str, language: str = "python") -> str:
        """Ask for a review of a piece of code."""
        return f"Please review this {language} code:\n\n{code}"

    return server
