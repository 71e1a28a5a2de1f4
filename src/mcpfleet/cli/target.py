"""Which servers a CLI command talks to: a registry file, the built-in demo registry, or a gateway."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from mcpfleet.client.connect import http_entry
from mcpfleet.demo import DEMO_REGISTRY
from mcpfleet.errors import ServerUnreachableError, UsageError
from mcpfleet.registry import Registry, Server, load_registry

DEFAULT_REGISTRY = Path("mcpfleet.yaml")
REGISTRY_ENV = "MCPFLEET_REGISTRY"


@dataclass(frozen=True)
class Target:
    registry: Registry | None = None
    gateway: str | None = None

    def server(self, server_id: str) -> Server:
        if self.gateway is not None:
            return http_entry(server_id, f"{self.gateway}/{server_id}")
        assert self.registry is not None
        return self.registry.server(server_id)


def resolve(registry: Path | None, demo: bool, gateway: str | None) -> Target:
    chosen = [name for name, given in (("--registry", registry), ("--demo", demo), ("--gateway", gateway)) if given]
    if len(chosen) > 1:
        raise UsageError(f"give only one of {', '.join(chosen)}")
    if gateway:
        if not gateway.startswith(("http://", "https://")):
            raise UsageError(f"--gateway {gateway!r}: give the gateway's base URL, e.g. http://127.0.0.1:8000")
        return Target(gateway=gateway.rstrip("/"))
    return Target(registry=load_registry(registry_path(registry, demo)))


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


def gateway_servers(gateway: str) -> list[dict[str, Any]]:
    """The server list a gateway publishes at /servers."""
    url = f"{gateway}/servers"
    try:
        response = httpx2.get(url, timeout=10.0)
    except httpx2.TransportError as exc:
        raise ServerUnreachableError(f"gateway {gateway} is unreachable: {exc}") from None
    if response.status_code != 200:
        raise ServerUnreachableError(f"gateway {url} answered HTTP {response.status_code}")
    servers: list[dict[str, Any]] = response.json().get("servers", [])
    return servers
