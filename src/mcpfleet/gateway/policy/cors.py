"""CORS: browser pages on an allowed origin may call the gateway and read its answers.

A request whose `Origin` passes the policy in force (and whose `Host` does: a rebinding page must learn
nothing) gets `Access-Control-Allow-Origin` (its own value), the MCP headers a page may read, and
`Vary: origin` on whatever answers it, the gateway's own errors included, so that a page can read
"initialize again". Its preflight (`OPTIONS` with an `Origin`) is answered here, whatever the path. A
request that fails either check passes on untouched, and the `HostOriginGuard` inside refuses it: a refusal
carries no CORS headers, so a page on a refused origin cannot read even the error. Requests without an
`Origin` (clients that are not browsers) pass with one header scan and nothing allocated.
"""

from __future__ import annotations

from collections.abc import Callable

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import App, Headers, Message, Receive, Scope, Send, header, respond
from mcpfleet.gateway.policy.hosts import Policy, single_header

REQUEST_HEADERS = frozenset(
    {
        "content-type",
        "accept",
        "authorization",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
        "mcp-method",
        "mcp-name",
    }
)
MAX_AGE = b"600"


class Cors:
    def __init__(self, app: App, policy: Callable[[], Policy]) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = self._allowed_origin(scope) if scope["type"] == "http" else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        allow = _allow_headers(origin)
        if scope["method"] == "OPTIONS":
            await _preflight(scope, send, allow)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *allow]}
            await send(message)

        await self.app(scope, receive, with_cors)

    def _allowed_origin(self, scope: Scope) -> str | None:
        """The request's `Origin` when it and the `Host` pass; None otherwise (the guard inside will say why)."""
        try:
            origin = single_header(scope["headers"], b"origin")
            if origin is not None:
                policy = self.policy()
                policy.check_host(single_header(scope["headers"], b"host"))
                policy.check_origin(origin)
        except GatewayError:
            return None
        return origin


def _allow_headers(origin: str) -> Headers:
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", b"mcp-session-id, mcp-protocol-version"),
        (b"vary", b"origin"),
    ]


async def _preflight(scope: Scope, send: Send, allow: Headers) -> None:
    """204 with the methods and the requested headers a page may send: the MCP ones, `mcp-param-*` included."""
    requested = header(scope, b"access-control-request-headers") or ""
    allowed = [
        name.strip()
        for name in requested.lower().split(",")
        if name.strip() in REQUEST_HEADERS or name.strip().startswith("mcp-param-")
    ]
    preflight = [
        (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
        (b"access-control-allow-headers", ", ".join(allowed).encode()),
        (b"access-control-max-age", MAX_AGE),
    ]
    await respond(send, 204, b"", [*allow, *preflight])
