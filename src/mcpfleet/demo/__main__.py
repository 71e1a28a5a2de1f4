"""Run the demo server: `mcpfleet-demo stdio` or `mcpfleet-demo http --port 8101 --replica a`."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from mcpfleet.demo.server import build_server


class _Counter:
    """Counts the MCP POSTs this replica served, and the initialize requests among them (`GET /stats`),
    so load balancing can be checked from the replicas' side."""

    def __init__(self, app: Any, counts: dict[str, int]) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/mcp":
            await self.app(scope, receive, send)
            return
        self.counts["requests"] += 1

        async def peek() -> Any:
            message = await receive()
            if b'"initialize"' in message.get("body", b""):
                self.counts["initialize"] += 1
            return message

        await self.app(scope, peek, send)


REPLICA_HELP = (
    "name reported by the whoami tool, a template: {hostname} is this machine's host name (a container's id "
    "in Docker), {port} the port served (http only); write {{ and }} for literal braces"
)


def replica_name(template: str, **fields: object) -> str:
    """`--replica` with its fields filled in: `{hostname}`, and `{port}` for http."""
    known = ", ".join("{" + name + "}" for name in ["hostname", *fields])
    try:
        return template.format(hostname=socket.gethostname(), **fields)
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        why = f"{{{exc.args[0]}}} is not a field" if isinstance(exc, KeyError) else str(exc)
        raise SystemExit(f"mcpfleet-demo: --replica {template!r}: {why}; the fields are {known}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mcpfleet-demo", description="The mcpfleet demo MCP server.")
    sub = parser.add_subparsers(dest="transport", required=True)
    stdio = sub.add_parser("stdio", help="serve over stdin/stdout")
    stdio.add_argument("--replica", default="stdio", help=f"{REPLICA_HELP} (default: %(default)s)")
    http = sub.add_parser("http", help="serve Streamable HTTP at /mcp and legacy HTTP+SSE at /sse")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, default=8101)
    http.add_argument("--replica", default="{port}", help=f"{REPLICA_HELP} (default: the port)")
    args = parser.parse_args(argv)

    if args.transport == "stdio":
        build_server(replica=replica_name(args.replica), transport="stdio").run("stdio")
        return
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    replica = replica_name(args.replica, port=args.port)
    server = build_server(replica=replica, transport="http")
    app = server.streamable_http_app(host=args.host)
    app.router.routes.extend(server.sse_app(host=args.host).routes)
    counts = {"initialize": 0, "requests": 0}

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse({"replica": replica, **counts})

    app.router.routes.append(Route("/stats", stats))
    app.add_middleware(_Counter, counts=counts)
    print(f"mcpfleet-demo replica {replica}: http://{args.host}:{args.port}/mcp (and /sse)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
