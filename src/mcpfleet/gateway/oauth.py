"""OAuth discovery at the gateway: each server's protected-resource metadata, and backends' challenges.

An MCP client that meets a 401 reads `resource_metadata` in its `WWW-Authenticate` (RFC 9728 section 5.1),
fetches that document, and asks the authorization server it names for a token whose audience is the
document's `resource` (RFC 8707; MCP authorization spec, 2025-06-18 and later). Behind a gateway the
resource is the server's URL *at the gateway*, so every document and every challenge the client sees
points at the gateway, never at a backend's own address.

`GET /.well-known/oauth-protected-resource/<id>[/<path>]` (RFC 9728 section 3.1: the well-known segment
between the host and the resource's path, after the `public_url` prefix if any) answers, for a server in
the registry in force:

- when the gateway validates tokens itself (`gateway.auth.jwt`): its own document: `resource` =
  `<base>/<id>[/<path>]`, `authorization_servers` (`gateway.auth.authorization_servers`, else the JWT
  issuer), `bearer_methods_supported: ["header"]`, `scopes_supported` (`jwt.required_scopes`, when set),
  `resource_name` (the entry's `description`, when set);
- when the gateway asks for API keys only: 404 (there is no authorization server to name);
- when it takes no credentials of its own (none configured, or a plugged-in authenticator that passes them
  on): the backend is the resource server, and its document (from its replicas' well-known URLs: RFC 9728
  section 3.1 for the backend's URL of `<path>`, then the root one) is passed on with `resource` replaced
  by the gateway's URL and `signed_metadata` dropped (it would assert the backend's URL); none: 404.

The gateway is not an authorization server: `/.well-known/oauth-authorization-server` and
`/.well-known/openid-configuration` at its root answer 404 saying where the issuer is named.

Backends' challenges (`backend_challenge`): a passthrough answer carrying `WWW-Authenticate` has its
`resource_metadata` replaced by the gateway's URL for the same path. When the credential the backend refused
was the gateway's (it consumed the caller's, or the entry's `headers` set `Authorization`), the caller can
do nothing about it: a 401, or a 403 with a Bearer challenge, becomes a 502 naming the entry's `headers`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx2

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import Headers, Scope, Send, respond
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.policy.auth import CONSUMED, Credentials
from mcpfleet.gateway.policy.tokens import fetch_json
from mcpfleet.gateway.urls import base_url, metadata_url, server_url
from mcpfleet.registry.model import Auth, HttpServer, Registry, Server

PROTECTED_RESOURCE = "oauth-protected-resource"
AUTHORIZATION_SERVER = frozenset({"oauth-authorization-server", "openid-configuration"})
FETCH_TIMEOUT = 10.0
# `resource_metadata="..."` or `resource_metadata=token` in a challenge (RFC 9110 section 11.2 auth-param).
_RESOURCE_METADATA = re.compile(r'(resource_metadata\s*=\s*)("(?:[^"\\]|\\.)*"|[^\s,]+)', re.IGNORECASE)
_ERROR = re.compile(r'error\s*=\s*"?([A-Za-z_]+)', re.IGNORECASE)


def protected_resource(server: Server, base: str, path: str, auth: Auth) -> dict[str, Any]:
    """The RFC 9728 document of `<base>/<server.id><path>` when the gateway validates JWTs (`auth.jwt` set).
    `path`: "" (the server's root) or "/mcp", "/sse", ...."""
    assert auth.jwt is not None
    document: dict[str, Any] = {
        "resource": server_url(base, server.id, path),
        "authorization_servers": list(auth.authorization_servers) or [auth.jwt.issuer],
        "bearer_methods_supported": ["header"],
    }
    if auth.jwt.required_scopes:
        document["scopes_supported"] = list(auth.jwt.required_scopes)
    if server.description:
        document["resource_name"] = server.description
    return document


def translated(document: Mapping[str, Any], resource: str) -> dict[str, Any]:
    """A backend's protected-resource metadata as the gateway passes it on: `resource` is the gateway's URL,
    `signed_metadata` (which would assert the backend's) is dropped; raises ValueError when it names no
    authorization server (RFC 9728 section 2: then it cannot tell a client where to get a token)."""
    servers = document.get("authorization_servers")
    if not isinstance(servers, list) or not servers or not all(isinstance(s, str) for s in servers):
        raise ValueError("it names no 'authorization_servers'")
    kept = {k: v for k, v in document.items() if k != "signed_metadata"}
    kept["resource"] = resource
    return kept


def backend_metadata_urls(server: HttpServer, replica: str, path: str) -> list[str]:
    """Where a backend replica's metadata for the gateway's `<path>` may be: RFC 9728 section 3.1 for the
    backend's URL of that path (the gateway's `/mcp` is the entry's `path`), then the host's root document."""
    backend_path = server.path if path == "/mcp" else path
    resource = urlsplit(replica.rstrip("/") + backend_path)
    origin = f"{resource.scheme}://{resource.netloc}"
    urls = [f"{origin}/.well-known/{PROTECTED_RESOURCE}{resource.path.rstrip('/')}"]
    if urls[0] != f"{origin}/.well-known/{PROTECTED_RESOURCE}":
        urls.append(f"{origin}/.well-known/{PROTECTED_RESOURCE}")
    return urls


async def answer(
    scope: Scope,
    send: Send,
    segments: Sequence[str],
    snapshot: Registry,
    base: str,
    credentials: Credentials | None,
    replicas: Callable[[str], Sequence[str]] = lambda _: (),
    unknown: Callable[[str], GatewayError] | None = None,
) -> None:
    """Answer `GET /.well-known/<segments>` (the module docstring). `base`: the gateway's public base URL for
    this request; `credentials`: those in force; `replicas(id)`: the URLs of a server's replicas in service
    (the entry's endpoints are used when it gives none); `unknown(id)`: the 404 for an id the registry does
    not name, listing what this caller may reach (`GatewayError.unknown_server`; default: every id). Raises
    `GatewayError` (404, 405, 502)."""
    if scope["method"] not in ("GET", "HEAD"):
        raise GatewayError(405, -32601, "the /.well-known/ documents are read with GET", headers={"Allow": "GET"})
    name = segments[0] if segments else ""
    if name in AUTHORIZATION_SERVER:
        raise GatewayError(
            404,
            -32601,
            "this gateway is not an authorization server: each server's protected-resource metadata names the"
            f" issuer (/.well-known/{PROTECTED_RESOURCE}/<server-id>/mcp)",
        )
    if name != PROTECTED_RESOURCE:
        raise GatewayError(404, -32601, f"the gateway serves /.well-known/{PROTECTED_RESOURCE}/<server-id>/mcp only")
    rest = list(segments[1:])
    prefix = [s for s in urlsplit(base).path.split("/") if s]
    if prefix and rest[: len(prefix)] == prefix:  # the public_url's path comes after the well-known segment
        rest = rest[len(prefix) :]
    if not rest or not rest[0]:
        raise GatewayError(
            404,
            -32601,
            "the gateway serves several protected resources: ask for one,"
            f" /.well-known/{PROTECTED_RESOURCE}/<server-id>/mcp",
        )
    server_id, path = rest[0], "".join(f"/{s}" for s in rest[1:])
    server = snapshot.servers.get(server_id)
    if server is None:
        raise unknown(server_id) if unknown else GatewayError.unknown_server(server_id, sorted(snapshot.servers))
    auth = snapshot.gateway.auth
    own = credentials is not None and credentials.consumes
    if own and auth.jwt is not None:
        document = protected_resource(server, base, path, auth)
    elif own:
        raise GatewayError(
            404,
            -32601,
            "this gateway takes API keys, not OAuth tokens: there is no authorization server to name"
            " (setting: gateway.auth.jwt)",
        )
    else:
        document = await _backend_document(server, base, path, replicas(server_id))
    body = json.dumps(document, indent=2).encode()
    await respond(send, 200, body, [(b"cache-control", b"max-age=300")])


async def _backend_document(server: Server, base: str, path: str, replicas: Sequence[str]) -> dict[str, Any]:
    """The backend's document for `path`, translated; 404 when it has none, 502 when it cannot be read."""
    if not isinstance(server, HttpServer):
        raise GatewayError(
            404,
            -32601,
            f"server {server.id!r} takes no OAuth token: the gateway asks for none (gateway.auth.jwt) and the"
            " server is not reached over HTTP",
        )
    urls = list(replicas) or [e.url for e in server.endpoints if not e.url.endswith(".invalid")]
    if not urls:
        raise GatewayError(
            503,
            -32603,
            f"server {server.id!r} has no replica in service yet to read its protected-resource metadata from;"
            " call the server first",
            headers={"Retry-After": "5"},
        )
    problems: list[str] = []
    async with httpx2.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False, trust_env=False) as client:
        for replica in urls[:1]:  # one replica speaks for all: they serve the same resource
            for url in backend_metadata_urls(server, replica, path):
                try:
                    status, document = await fetch_json(client, url, dict(server.headers))
                except (httpx2.HTTPError, ValueError) as exc:
                    problems.append(f"{url}: {exc}")
                    continue
                if status == 404:
                    continue
                if status != 200 or document is None:
                    problems.append(f"{url} answered {status}")
                    continue
                try:
                    return translated(document, server_url(base, server.id, path))
                except ValueError as exc:
                    problems.append(f"{url}: {exc}")
    if problems:
        raise GatewayError(
            502, -32603, f"server {server.id!r}: its protected-resource metadata could not be read: {problems[0]}"
        )
    raise GatewayError(
        404,
        -32601,
        f"server {server.id!r} publishes no protected-resource metadata: it asks for no OAuth token",
    )


def refused_credential(server_id: str, status: int, challenge: str, whose: str) -> str:
    """What a client is told when a backend refused the credential the gateway sent it (`whose`)."""
    error = _ERROR.search(challenge)
    what = f" ({error.group(1)})" if error else ""
    return (
        f"server {server_id!r} answered {status}{what} to {whose}: give it the credential it needs in"
        f" servers.{server_id}.headers (e.g. Authorization: Bearer ${{VAR}}) or secret_env"
    )


def backend_challenge(exchange: Exchange, status: int, headers: Headers) -> Headers:
    """The headers of a backend's answer as the client gets them (the module docstring): `resource_metadata`
    in `WWW-Authenticate` pointing at the gateway's document for the path the client used, under the base URL
    the gateway gave the exchange (`Exchange.base_url`, as every other advertised URL). Raises a 502
    `GatewayError` when the backend refused a credential the gateway supplied (or withheld)."""
    challenges = [v for k, v in headers if k == b"www-authenticate"]
    if not challenges:
        return headers
    server = exchange.server
    text = ", ".join(v.decode("latin-1") for v in challenges)
    refused = status == 401 or (status == 403 and text.lower().lstrip().startswith("bearer"))
    entry_credential = isinstance(server, HttpServer) and any(k.lower() == "authorization" for k in server.headers)
    if refused and (exchange.scope.get(CONSUMED) or entry_credential):
        whose = (
            "the Authorization that the entry's headers set"
            if entry_credential
            else "a request without credentials (the gateway does not pass callers' tokens on)"
        )
        raise GatewayError(502, -32603, refused_credential(server.id, status, text, whose))
    base = exchange.base_url
    if base is None:  # an exchange built without the gateway's view (tests): the registry's bind host
        settings = exchange.snapshot.gateway
        base = base_url(exchange.scope, settings.public_url, settings.host)
    target = metadata_url(base, server.id, exchange.rest if exchange.rest != "/" else "")
    return [
        (k, _RESOURCE_METADATA.sub(lambda m: f'{m.group(1)}"{target}"', v.decode("latin-1")).encode("latin-1"))
        if k == b"www-authenticate"
        else (k, v)
        for k, v in headers
    ]
