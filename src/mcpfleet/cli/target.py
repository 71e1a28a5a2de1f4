"""Which servers a CLI command talks to: a registry file, the built-in demo registry, or a gateway."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2

from mcpfleet import masking
from mcpfleet.client.connect import http_entry
from mcpfleet.demo import DEMO_REGISTRY
from mcpfleet.errors import EntryError, RefusedError, ServerUnreachableError, UsageError
from mcpfleet.registry import Registry, Server, load_registry

DEFAULT_REGISTRY = Path("mcpfleet.yaml")
REGISTRY_ENV = "MCPFLEET_REGISTRY"
# The credential sent to a gateway (an API key or a bearer token): from the environment only, so it is in
# no shell history and no process list.
TOKEN_ENV = "MCPFLEET_TOKEN"
# The last segment of a server's URL on the gateway (`<base>/<id>/mcp`), and the gateway's own paths
# (`<base>/servers`): a --gateway URL that ends in one of them is a URL people paste, not the base.
SERVER_ROUTES = frozenset({"mcp", "sse", "ws", "messages"})
GATEWAY_ROUTES = frozenset({"servers", "metrics", "healthz", "readyz"})


@dataclass(frozen=True)
class Target:
    """A registry, or a gateway. `project`: `--project`, the project of the registry's docker containers
    (None: `$MCPFLEET_PROJECT`, else `mcpfleet`; read when a docker entry is reached)."""

    registry: Registry | None = None
    gateway: str | None = None
    project: str | None = None

    def server(self, server_id: str) -> Server:
        if self.gateway is not None:
            return http_entry(server_id, f"{self.gateway}/{server_id}", headers=gateway_headers())
        assert self.registry is not None
        if server_id in self.registry.failed:  # left out of the registry: an unset ${VAR}, say
            raise EntryError(server_id, self.registry.failed[server_id])
        return self.registry.server(server_id)


def resolve(registry: Path | None, demo: bool, gateway: str | None, project: str | None = None) -> Target:
    """The target the options name; `project` (`--project`) only goes with a registry: a gateway reaches the
    containers of its own project."""
    chosen = [name for name, given in (("--registry", registry), ("--demo", demo), ("--gateway", gateway)) if given]
    if len(chosen) > 1:
        raise UsageError(f"give only one of {', '.join(chosen)}")
    if gateway:
        if project:
            raise UsageError("--project goes with a registry; through --gateway, the gateway reaches its containers")
        return Target(gateway=gateway_base(gateway))
    loaded = load_registry(registry_path(registry, demo))
    masking.install(loaded.secrets)  # this process's errors (a command not found) show no `${VAR}` value
    return Target(registry=loaded, project=project)


def gateway_base(url: str) -> str:
    """The gateway's base URL from what a user may give: the base (with any path prefix a proxy adds), a
    server's URL on it (`<base>/<id>/mcp`, `/sse`, `/ws`, `/messages/`) or a status URL (`<base>/servers`)."""
    example = "e.g. http://127.0.0.1:8000"
    if "://" not in url:
        raise UsageError(f"--gateway {url!r}: give the gateway's base URL with its scheme, {example}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--gateway {url!r}: give the gateway's base URL, {example}")
    if parts.query or parts.fragment:
        raise UsageError(f"--gateway {url!r}: give the gateway's base URL, without '?' or '#' parts, {example}")
    segments = [segment for segment in parts.path.split("/") if segment]
    if len(segments) >= 2 and segments[-1] in SERVER_ROUTES:
        segments = segments[:-2]
    elif segments and segments[-1] in GATEWAY_ROUTES:
        segments = segments[:-1]
    path = "".join(f"/{segment}" for segment in segments)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def registry_path(registry: Path | None, demo: bool) -> Path:
    if demo:
        return DEMO_REGISTRY
    if registry is not None:
        return registry
    if DEFAULT_REGISTRY.exists():
        return DEFAULT_REGISTRY
    if env := os.environ.get(REGISTRY_ENV):
        return Path(env)
    raise UsageError(
        f"no registry: give --registry FILE, create ./{DEFAULT_REGISTRY}, set {REGISTRY_ENV}, or try --demo"
    )


def gateway_headers() -> dict[str, str]:
    """`Authorization: Bearer $MCPFLEET_TOKEN` when it is set: what a gateway with `gateway.auth` asks for."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def gateway_refusal(gateway: str, status: int, detail: str | None, server_id: str | None = None) -> RefusedError:
    """What every command says when the gateway at `gateway` refuses it (the one wording for `servers`,
    `tools`, `call`, ...): 401, it asks for credentials and `$MCPFLEET_TOKEN` is unset or not accepted; 403,
    the credentials are accepted but may not reach `server_id` (its message names `gateway.access`).
    `detail`: what the gateway said, None when it said nothing."""
    said = f": {detail}" if detail else ""
    where = f"server {server_id!r}" if server_id else "its status"
    if status == 403:
        message = f"gateway {gateway} refused this caller for {where} (HTTP 403{said})"
    else:
        given = "is refused" if os.environ.get(TOKEN_ENV, "").strip() else "is not set"
        message = (
            f"gateway {gateway} answered HTTP {status} for {where}{said}: it asks for credentials, and"
            f" ${TOKEN_ENV} {given} (set it to an API key or a bearer token the gateway accepts)"
        )
    return RefusedError(message, status, detail)


def gateway_servers(gateway: str) -> list[dict[str, Any]]:
    """The server list a gateway publishes at /servers."""
    url = f"{gateway}/servers"
    try:
        response = httpx2.get(url, headers=gateway_headers(), timeout=10.0)
    except httpx2.TransportError as exc:
        raise ServerUnreachableError(f"gateway {gateway} is unreachable: {exc}") from None
    if response.status_code in (401, 403):
        try:
            detail = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = None
        raise gateway_refusal(gateway, response.status_code, detail if isinstance(detail, str) else None)
    if response.status_code != 200:
        raise ServerUnreachableError(f"gateway {url} answered HTTP {response.status_code}")
    servers: list[dict[str, Any]] = response.json().get("servers", [])
    return servers
