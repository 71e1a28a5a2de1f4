"""`mcpfleet adapter -- COMMAND ARGS...`: one stdio MCP server behind a Streamable HTTP endpoint.

A stdio-only server cannot be a replica the gateway balances across; wrapped by the adapter in its own
container (a Kubernetes pod, plan section 12.4) it is one: an `http` endpoint at `http://<pod>:8080/mcp`.
There is no second implementation here. The adapter is the gateway itself, serving a one-server registry
(a `stdio` entry with the given argv and pool settings) with its own stdio upstream, pool, sessions,
policy layers, status endpoints and shutdown; `FixedPath` only moves that server from `/<id>/mcp` to the
adapter's path.

- **Paths.** `--path` (default `/mcp`) is the server's `/<id>/mcp`; `/healthz`, `/readyz`, `/metrics` and
  `/servers` are the gateway's own; everything else is 404 (the gateway's `/`, `/admin/reload`, `/<id>/sse`,
  `/<id>/ws` are not exposed: the adapter serves Streamable HTTP only, and has no registry file to reload).
- **Environment.** The server gets the adapter's whole environment, as any program started in a container
  does (a pod's env and Secrets are meant for it), held as the entry's `secret_env` so that nothing prints
  it; only `MCPFLEET_SESSION_KEYS`, the adapter's own secret, is kept back.
- **Host and Origin.** The gateway's rules (`policy/hosts.py`, docs/security.md), unchanged: on the default
  loopback bind only loopback names and addresses; bound to `0.0.0.0` (a pod), any IP literal as Host,
  which is how a gateway reaches a pod (`<podIP>:8080`, from EndpointSlices), while a DNS name (a Service's)
  must be listed with `--allowed-host`. `Origin` is checked as by the gateway: absent (server-side clients,
  the gateway's passthrough, which drops it) passes; a browser's must be listed with `--allowed-origin`
  (loopback origins also pass on a loopback bind).
- **The command** is looked up at start with the pool's own lookup (`process.resolve_program`): a missing
  one is one line and exit 3, and the pod crash-loops visibly rather than turning ready and failing every
  session.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mcpfleet.errors import GatewayError, UsageError
from mcpfleet.gateway.app import Gateway
from mcpfleet.gateway.asgi import ErrorBoundary, Receive, Scope, Send
from mcpfleet.gateway.runtime import MCP_PATH
from mcpfleet.gateway.sealing import KEYS_ENV
from mcpfleet.gateway.serve import Listener, serve
from mcpfleet.process import child_environment, resolve_program
from mcpfleet.registry import Registry
from mcpfleet.registry.model import RESERVED_IDS, SERVER_ID, STATUS_PATHS, Auth, Pool, StdioServer
from mcpfleet.registry.model import Gateway as GatewaySettings

DEFAULT_PATH = "/mcp"
FALLBACK_ID = "server"
_NOT_ID = re.compile(r"[^a-z0-9._-]+")


def server_id_for(argv: Sequence[str]) -> str:
    """The id the server gets inside the adapter (logs, metrics labels, error messages) when `--name` is not
    given: its program's file name, made a valid id (`/usr/bin/mcp-server-time` -> `mcp-server-time`)."""
    name = _NOT_ID.sub("-", os.path.basename(argv[0]).lower()).strip("-._")[:63]
    return name if SERVER_ID.fullmatch(name) and name not in RESERVED_IDS else FALLBACK_ID


def mount_path(path: str) -> bytes:
    """`--path` as the raw path requests must name: absolute, plain segments, not a status path."""
    segments = path.split("/")[1:]
    if (
        not path.startswith("/")
        or not all(segments)
        or any(s in (".", "..") or not s.isascii() or "%" in s or "?" in s or "#" in s for s in segments)
    ):
        raise UsageError(f"--path {path!r}: give an absolute path of plain segments, such as /mcp")
    if len(segments) == 1 and segments[0] in STATUS_PATHS:
        raise UsageError(f"--path {path!r} is the adapter's status endpoint: choose another path")
    return path.encode()


@dataclass(frozen=True)
class Adapter:
    """What `mcpfleet adapter` serves: the one-server registry, the server's id in it, and its path."""

    registry: Registry
    server_id: str
    path: bytes

    @classmethod
    def create(
        cls,
        argv: Sequence[str],
        *,
        path: str = DEFAULT_PATH,
        name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        pool: Mapping[str, Any] | None = None,
        stateless: bool = False,
        max_message_bytes: int | None = None,
        allowed_hosts: Sequence[str] = (),
        allowed_origins: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> Adapter:
        """From the command line's values. `pool`: the `Pool` fields given, and `max_message_bytes` if given
        (the models' defaults fill the rest, so the adapter and a registry file mean the same by them).
        Raises `UsageError` (exit 2) for values the registry refuses (`--min` above `--max`, `--mode shared`
        without `--stateless`), and `ServerStartError` (exit 3) when the command cannot be found."""
        if not argv:
            raise UsageError("give the server's command after '--': mcpfleet adapter [OPTIONS] -- COMMAND [ARGS]...")
        mounted = mount_path(path)
        server_id = name or server_id_for(argv)
        if not SERVER_ID.fullmatch(server_id) or server_id in RESERVED_IDS:
            raise UsageError(f"--name {server_id!r}: lowercase letters, digits, '.', '_' and '-', at most 63")
        environ = os.environ if environ is None else environ
        passed = {key: value for key, value in environ.items() if key != KEYS_ENV}
        given = {} if max_message_bytes is None else {"max_message_bytes": max_message_bytes}
        try:
            settings = GatewaySettings(
                host=host,
                port=port,
                allowed_hosts=tuple(allowed_hosts),
                allowed_origins=tuple(allowed_origins),
                # Reached only by the gateway that fronts it, which authenticates callers (and, in a
                # cluster, the chart's NetworkPolicy): a pod's adapter asks for no credentials of its own.
                auth=Auth(anonymous=True),
                **given,
            )
            entry = StdioServer(
                id=server_id, command=tuple(argv), secret_env=passed, stateless=stateless, pool=Pool(**(pool or {}))
            )
        except ValidationError as exc:
            raise UsageError(_options_error(exc)) from None
        resolve_program(server_id, entry.command, child_environment(entry.env, entry.secret_env), entry.cwd)
        registry = Registry(source="mcpfleet adapter", gateway=settings, servers={server_id: entry})
        return cls(registry, server_id, mounted)

    async def serve(self, listener: Listener) -> None:
        """Serve on `listener` until SIGINT or SIGTERM: the gateway's `serve`, with `FixedPath` in front."""
        await serve(
            self.registry,
            registry_path=None,
            listener=listener,
            front=lambda gateway: FixedPath(gateway, self.server_id, self.path),
        )


# What the model calls a setting -> the option that sets it, for the few errors the options can provoke.
_OPTION_NAMES = {
    "pool.min": "--min",
    "pool.max": "--max",
    "pool.mode 'shared'": "--mode shared",
    "'stateless: true'": "--stateless",
}


def _options_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:  # a field's own check: named as its option (every option sets one field)
            message = f"--{str(error['loc'][0]).replace('_', '-')}: {message}"
        for setting, option in _OPTION_NAMES.items():
            message = message.replace(setting, option)
        problems.append(message)
    return "; ".join(problems)


@dataclass(frozen=True)
class FixedPath:
    """ASGI: serve the gateway's one server at `path` instead of `/<server_id>/mcp`.

    A request for `path` has its path rewritten to the server's, as a reverse proxy would, before the
    gateway sees it, so every policy layer, the router and the runtime treat it as any gateway request. The
    status paths pass as they are; any other request is refused with 404 through the gateway's own
    `ErrorBoundary` (a JSON-RPC error body; a WebSocket handshake is refused with the same), counted in its
    metrics.
    """

    gateway: Gateway
    server_id: str
    path: bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.gateway(scope, receive, send)
            return
        raw_path: bytes = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0]
        if raw_path == self.path and scope["type"] == "http":
            served = f"/{self.server_id}{MCP_PATH}"  # where the gateway serves the server
            await self.gateway({**scope, "path": served, "raw_path": served.encode()}, receive, send)
        elif scope["type"] == "http" and raw_path[1:].decode("latin-1") in STATUS_PATHS:
            await self.gateway(scope, receive, send)
        else:
            await ErrorBoundary(self._not_found, self.gateway.metrics.error)(scope, receive, send)

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        served = self.path.decode()
        raise GatewayError(404, -32601, f"this adapter serves MCP (Streamable HTTP) at {served} only")
