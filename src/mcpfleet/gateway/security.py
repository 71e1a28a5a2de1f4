"""DNS-rebinding and path-escape checks, applied before any routing. Pure functions of the request.

- `Host` must name this gateway: the bind address, loopback names, or `gateway.allowed_hosts` (else 421).
- `Origin`, when present, must be allowed: loopback origins when bound to loopback, or
  `gateway.allowed_origins` (else 403).
- The raw path may not escape its server or backend path: no `.`/`..` segments, no encoded `/` or `\\`,
  no empty segments, no NUL (else 400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from mcpfleet.errors import GatewayError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
_ENCODED_SEPARATOR = re.compile(rb"%(2f|5c|00)", re.IGNORECASE)
_DOT_SEGMENT = re.compile(rb"^(\.|%2e){1,2}$", re.IGNORECASE)


@dataclass(frozen=True)
class Policy:
    bind_host: str
    allowed_hosts: frozenset[str]
    allowed_origins: frozenset[str]

    @classmethod
    def create(cls, bind_host: str, allowed_hosts: tuple[str, ...], allowed_origins: tuple[str, ...]) -> Policy:
        """Loopback names are always allowed (a local probe is no rebinding attack). On a loopback bind the
        Host is checked against them and `allowed_hosts`. On any other bind with no `allowed_hosts`, every
        Host is accepted, as the SDK's own servers do: the operator who exposes the gateway names its
        public hosts to turn the check on (the gateway logs a warning until then)."""
        hosts = {h.lower() for h in allowed_hosts} | {bind_host.lower()} | LOOPBACK_HOSTS
        loopback = bind_host in LOOPBACK_HOSTS or bind_host.startswith("127.")
        if not loopback and not allowed_hosts:
            hosts.add("*")
        return cls(bind_host, frozenset(hosts), frozenset(o.lower().rstrip("/") for o in allowed_origins))

    @property
    def loopback(self) -> bool:
        return self.bind_host in LOOPBACK_HOSTS or self.bind_host.startswith("127.")

    def check_host(self, host: str | None) -> None:
        if host is None:
            raise GatewayError(421, -32600, "the request has no Host header")
        name = _host_name(host)
        if "*" not in self.allowed_hosts and name not in self.allowed_hosts and not name.startswith("127."):
            raise GatewayError(421, -32600, f"Host {host!r} is not served here (setting: gateway.allowed_hosts)")

    def check_origin(self, origin: str | None) -> None:
        if origin is None:
            return
        normalized = origin.lower().rstrip("/")
        if normalized in self.allowed_origins or "*" in self.allowed_origins:
            return
        if self.loopback:
            try:
                hostname = urlsplit(normalized).hostname
            except ValueError:
                hostname = None
            if hostname is not None and (hostname in LOOPBACK_HOSTS or hostname.startswith("127.")):
                return
        raise GatewayError(403, -32600, f"Origin {origin!r} is not allowed (setting: gateway.allowed_origins)")


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_path(raw_path: bytes) -> list[str]:
    """The decoded path segments, or a 400 when the raw path could escape its server or backend path."""
    if not raw_path.startswith(b"/") or b"\x00" in raw_path or _ENCODED_SEPARATOR.search(raw_path):
        raise GatewayError.invalid_request("the path is not allowed: encoded separators or NUL")
    segments = raw_path[1:].split(b"/")
    for index, segment in enumerate(segments):
        if _DOT_SEGMENT.match(segment):
            raise GatewayError.invalid_request("the path is not allowed: '.' and '..' segments")
        if segment == b"" and index != len(segments) - 1:
            raise GatewayError.invalid_request("the path is not allowed: empty segments")
    from urllib.parse import unquote_to_bytes

    return [unquote_to_bytes(s).decode("utf-8", "replace") for s in segments]
