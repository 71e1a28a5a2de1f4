"""What the gateway runs for one registry entry: its upstreams, and the choice between them per request.

A runtime belongs to one entry of one snapshot. A reload that changes or removes the entry retires the
runtime: it takes no new sessions, its in-flight requests finish, then its sessions end and its processes
stop (clients get 404 and initialize again, on the new configuration).
"""

from __future__ import annotations

import anyio
import anyio.abc

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import respond
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.protocol import is_initialize, parse_body
from mcpfleet.gateway.session import HttpSession, SessionTable
from mcpfleet.gateway.upstream.http import HttpUpstream, Unreachable
from mcpfleet.gateway.upstream.stdio import StdioSession, StdioUpstream
from mcpfleet.registry.model import HttpServer, Server, StdioServer

MCP_PATH = "/mcp"


class ServerRuntime:
    def __init__(self, server: Server, sessions: SessionTable, task_group: anyio.abc.TaskGroup) -> None:
        self.server = server
        self.sessions = sessions
        self.http = HttpUpstream(server) if isinstance(server, HttpServer) else None
        argv = server.command if isinstance(server, StdioServer | HttpServer) else None
        self.stdio = StdioUpstream(server, argv, task_group, sessions) if argv else None  # type: ignore[arg-type]
        self.inflight = 0
        self._idle = anyio.Event()

    @property
    def retired(self) -> bool:
        return (self.http is not None and self.http.retired) or (self.stdio is not None and self.stdio.retired)

    async def handle(self, exchange: Exchange) -> None:
        self.inflight += 1
        try:
            if exchange.rest == MCP_PATH:
                await self._mcp(exchange)
            elif self.http is not None:
                await self._forward_other(exchange)
            else:
                raise GatewayError(
                    404,
                    -32601,
                    f"server {self.server.id!r} runs over stdio: it serves only /{self.server.id}{MCP_PATH}",
                )
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
                self._idle = anyio.Event()

    async def _forward_other(self, exchange: Exchange) -> None:
        assert self.http is not None
        try:
            await self.http.forward(exchange, exchange.rest, self.sessions, None, None)
        except Unreachable as exc:
            raise GatewayError.unreachable(self.server.id, exc.detail) from None

    async def _mcp(self, exchange: Exchange) -> None:
        token = exchange.session_id
        if token is not None:
            session = self.sessions.get(token, self.server.id)
            if isinstance(session, HttpSession) and self.http is not None:
                try:
                    await self.http.forward(exchange, self.http.server.path, self.sessions, token, session)
                except Unreachable as exc:
                    raise GatewayError.unreachable(self.server.id, exc.detail) from None
                return
            if isinstance(session, StdioSession) and self.stdio is not None:
                await self.stdio.in_session(exchange, token, session)
                return
            raise GatewayError.session_not_found()
        await self._sessionless(exchange)

    async def _sessionless(self, exchange: Exchange) -> None:
        initialize = exchange.method == "POST" and b'"initialize"' in exchange.body
        if self.http is not None:
            try:
                await self.http.forward(
                    exchange, self.http.server.path, self.sessions, None, None, initialize=initialize
                )
                return
            except Unreachable as exc:
                if self.stdio is None:
                    raise GatewayError.unreachable(self.server.id, exc.detail) from None
        assert self.stdio is not None
        if exchange.method != "POST":
            if exchange.modern:
                await respond(exchange.send, 405, b"", [(b"allow", b"POST")])
                return
            raise GatewayError.invalid_request("Mcp-Session-Id header is required (initialize first)")
        if exchange.modern:
            await self.stdio.stateless(exchange)
            return
        messages, _ = parse_body(exchange.body)
        if not is_initialize(messages):
            raise GatewayError.invalid_request("Mcp-Session-Id header is required (initialize first)")
        await self.stdio.initialize(exchange, messages[0])

    async def retire(self, drain_limit: float = 600.0) -> None:
        """Take no new work, let in-flight requests finish (bounded), then end sessions and processes."""
        for upstream in (self.http, self.stdio):
            if upstream is not None:
                upstream.retired = True
        with anyio.move_on_after(drain_limit):
            while self.inflight:
                await self._idle.wait()
        for token, session in self.sessions.of_server(self.server.id):
            if session.owner in (self.http, self.stdio):
                self.sessions.drop(token)
                await session.aclose()
        await self.aclose()

    async def aclose(self) -> None:
        if self.stdio is not None:
            await self.stdio.aclose()
        if self.http is not None:
            await self.http.aclose()
