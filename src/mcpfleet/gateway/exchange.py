"""One client request as the gateway handles it: the ASGI triple, the bounded body, and the route."""

from __future__ import annotations

from dataclasses import dataclass

from mcpfleet.gateway.asgi import Receive, Scope, Send, header, only_header
from mcpfleet.gateway.protocol import SESSION_HEADER, VERSION_HEADER, is_modern
from mcpfleet.registry.model import Registry, Server


@dataclass
class Exchange:
    scope: Scope
    receive: Receive
    send: Send
    snapshot: Registry
    server: Server
    rest: str  # the path after /<server-id>, e.g. "/mcp" or "/api/v1"
    body: bytes = b""

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def session_id(self) -> str | None:
        """`Mcp-Session-Id`; a 400 GatewayError when it is repeated (as for `MCP-Protocol-Version`)."""
        return only_header(self.scope, SESSION_HEADER)

    @property
    def modern(self) -> bool:
        return is_modern(only_header(self.scope, VERSION_HEADER))

    @property
    def query(self) -> bytes:
        return bytes(self.scope.get("query_string", b""))

    def header(self, name: bytes) -> str | None:
        return header(self.scope, name)
