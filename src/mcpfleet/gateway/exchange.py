"""One client request as the gateway handles it: the ASGI triple, the bounded body, and the route."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mcpfleet.gateway.asgi import Receive, Scope, Send, header, only_header
from mcpfleet.gateway.identity import session_owner
from mcpfleet.gateway.protocol import SESSION_HEADER, VERSION_HEADER, is_modern
from mcpfleet.gateway.urls import server_path
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
    # How the gateway makes its public base URL for a request (`Gateway.base_url`: `public_url`, else scheme
    # and Host, else the bind host it runs with, `--host` included); None: from the registry's settings. A
    # callable, so the request path builds the URL only when an answer needs it (a backend's challenge).
    base: Callable[[Scope], str] | None = None

    @property
    def base_url(self) -> str | None:
        """The gateway's public base URL for this request, None when the exchange was built without `base`."""
        return self.base(self.scope) if self.base is not None else None

    def public_path(self, path: str) -> str:
        """`path` of this exchange's server as a client addresses it (`urls.server_path`): `[/prefix]/<id><path>`,
        the prefix being `gateway.public_url`'s path, else the ASGI `root_path`."""
        base = self.base_url
        if base is None:
            base = str(self.scope.get("root_path", "")).rstrip("/")
        return server_path(base, self.server.id, path)

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

    @property
    def max_stream_duration(self) -> float | None:
        """How long an event stream answering this request may last (`gateway.limits.max_stream_duration`)."""
        return self.snapshot.gateway.limits.max_stream_duration

    @property
    def owner(self) -> str | None:
        """The caller a session this request opens or names belongs to (`policy/auth.session_owner`)."""
        return session_owner(self.scope)

    def header(self, name: bytes) -> str | None:
        return header(self.scope, name)
