"""The request body bound, `gateway.max_message_bytes` (16 MiB), under every route, with the value in force.

A declared `Content-Length` over the limit is refused (413) before a byte of the body is read; the client
that sent `Expect: 100-continue` is not even asked for it. A declared length needs no counting after that:
it frames the body (RFC 9112 section 6.3; HTTP/2 treats a mismatch as malformed), so a body cannot grow
past it. A body whose length is not declared (chunked, or HTTP/2 and later without `content-length`) is
counted as it arrives, and refused once it passes the limit. So the usual request, a JSON-RPC message with
a `Content-Length`, costs one header scan and allocates nothing here. The routes read the body with
`asgi.read_body` and set no limit of their own.
"""

from __future__ import annotations

from collections.abc import Callable

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import App, Message, Receive, Scope, Send

HTTP1 = frozenset({"1.0", "1.1"})


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, -32600, f"the body exceeds {limit} bytes (setting: gateway.max_message_bytes)")


class BodyLimit:
    def __init__(self, app: App, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = self.limit()
            declared: int | None = None
            chunked = False
            for key, value in scope["headers"]:
                if key == b"content-length" and value.isdigit():
                    declared = int(value)
                elif key == b"transfer-encoding":
                    chunked = True
            if declared is not None and declared > limit:
                raise too_large(limit)
            if chunked or (declared is None and scope.get("http_version", "1.1") not in HTTP1):
                receive = _counted(receive, limit)  # chunked framing overrides a Content-Length
        await self.app(scope, receive, send)


def _counted(receive: Receive, limit: int) -> Receive:
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise too_large(limit)
        return message

    return counted
