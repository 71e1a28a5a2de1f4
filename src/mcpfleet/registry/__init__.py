"""The registry: which MCP servers exist and how to reach or run them.

`load_registry(path)` returns an immutable, validated `Registry` snapshot or raises `RegistryError` with
every problem located (file, server id, field). See docs/registry.md for the format.
"""

from mcpfleet.registry.loader import load_registry, parse_registry
from mcpfleet.registry.model import (
    DockerServer,
    Endpoint,
    Gateway,
    HttpServer,
    KubernetesServer,
    Registry,
    Server,
    StdioServer,
)
from mcpfleet.registry.render import normalized

__all__ = [
    "DockerServer",
    "Endpoint",
    "Gateway",
    "HttpServer",
    "KubernetesServer",
    "Registry",
    "Server",
    "StdioServer",
    "load_registry",
    "normalized",
    "parse_registry",
]
