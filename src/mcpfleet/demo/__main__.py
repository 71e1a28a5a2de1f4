"""Run the demo server: `mcpfleet-demo stdio` or `mcpfleet-demo http --port 8101 --replica a`."""

from __future__ import annotations

import argparse
import sys

from mcpfleet.demo.server import build_server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mcpfleet-demo", description="The mcpfleet demo MCP server.")
    sub = parser.add_subparsers(dest="transport", required=True)
    stdio = sub.add_parser("stdio", help="serve over stdin/stdout")
    stdio.add_argument("--replica", default="stdio", help="name reported by the whoami tool")
    http = sub.add_parser("http", help="serve Streamable HTTP at /mcp and legacy HTTP+SSE at /sse")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, default=8101)
    http.add_argument("--replica", default=None, help="name reported by the whoami tool (default: the port)")
    args = parser.parse_args(argv)

    if args.transport == "stdio":
        build_server(replica=args.replica, transport="stdio").run("stdio")
        return
    import uvicorn

    replica = args.replica or str(args.port)
    server = build_server(replica=replica, transport="http")
    app = server.streamable_http_app(host=args.host)
    app.router.routes.extend(server.sse_app(host=args.host).routes)
    print(f"mcpfleet-demo replica {replica}: http://{args.host}:{args.port}/mcp (and /sse)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
