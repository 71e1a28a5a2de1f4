"""The gateway's own URLs as a client reaches it: the base every advertised URL starts from.

`gateway.public_url` when it is set (the address clients use, behind whatever proxies); otherwise the
request's scheme and `Host` (already checked by the Host rule, and rewritten by a trusted proxy's
`X-Forwarded-Proto` / `Forwarded` in `policy/proxies.py`), with the ASGI `root_path`. A server's URL is
`<base>/<id>/mcp`: the `resource` of its protected-resource metadata (RFC 9728) and the default JWT
audience (RFC 8707), so a token minted for one server is refused by every other.

What the gateway advertises as a path alone (the legacy SSE `endpoint` event, which a client resolves against
the URL it connected to: the SDK's `sse_client` does `urljoin` and requires the same origin) is the path of
that URL, `public_url`'s path prefix included: behind a proxy that strips the prefix, the client's next
request goes through the proxy again.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mcpfleet.gateway.asgi import Scope, header


def base_url(scope: Scope, public_url: str | None, bind_host: str) -> str:
    """`scheme://host[:port][/prefix]` with no trailing slash."""
    if public_url is not None:
        return public_url
    secure = scope.get("scheme") in ("https", "wss")
    host = header(scope, b"host") or f"{bind_host}:{scope.get('server', ('', 0))[1]}"
    return f"{'https' if secure else 'http'}://{host}{str(scope.get('root_path', '')).rstrip('/')}"


def server_url(base: str, server_id: str, path: str = "/mcp") -> str:
    """A server's URL at the gateway: `<base>/<id><path>`."""
    return f"{base}/{server_id}{path}"


def metadata_url(base: str, server_id: str, path: str = "/mcp") -> str:
    """Where the protected-resource metadata of `<base>/<id><path>` is served (RFC 9728 section 3.1: the
    well-known segment goes between the host and the resource's path)."""
    scheme, _, rest = base.partition("://")
    host, slash, prefix = rest.partition("/")
    return f"{scheme}://{host}/.well-known/oauth-protected-resource{slash}{prefix}/{server_id}{path}"


def server_path(base: str, server_id: str, path: str) -> str:
    """The absolute path of `server_url(base, server_id, path)`: `[/prefix]/<id><path>`, the prefix being
    `base`'s path (`gateway.public_url`'s, or the ASGI `root_path`)."""
    return f"{urlsplit(base).path.rstrip('/')}/{server_id}{path}"
