"""The pure parts of OAuth discovery: document building and translation, backend metadata URLs, issuer
discovery URLs and the audience rule (RFC 9728, RFC 8414, RFC 8707)."""

from __future__ import annotations

import pytest

from mcpfleet.gateway.asgi import Message
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.oauth import backend_challenge, backend_metadata_urls, protected_resource, translated
from mcpfleet.gateway.policy.tokens import _audience_matches, _depth, discovery_urls
from mcpfleet.gateway.urls import metadata_url
from mcpfleet.registry import parse_registry
from mcpfleet.registry.model import Auth, HttpServer, Jwt, StdioServer

BASE = "https://mcp.example.com"


def test_the_gateways_document_names_the_server_url_and_the_issuer() -> None:
    auth = Auth(jwt=Jwt(issuer="https://login.example.com/", required_scopes=("mcp",)))
    server = StdioServer(id="files", command=("files-server",), description="Files")
    assert protected_resource(server, BASE, "/mcp", auth) == {
        "resource": f"{BASE}/files/mcp",
        "authorization_servers": ["https://login.example.com/"],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp"],
        "resource_name": "Files",
    }
    listed = Auth(jwt=Jwt(issuer="https://login.example.com/"), authorization_servers=("https://as.example.com",))
    document = protected_resource(StdioServer(id="files", command=("x",)), BASE, "", listed)
    assert document == {
        "resource": f"{BASE}/files",
        "authorization_servers": ["https://as.example.com"],
        "bearer_methods_supported": ["header"],
    }


def test_a_backends_document_is_passed_on_with_the_gateways_resource() -> None:
    backend = {
        "resource": "http://10.0.0.5:8080/mcp",
        "authorization_servers": ["https://login.example.com"],
        "scopes_supported": ["read"],
        "signed_metadata": "eyJ...",
    }
    assert translated(backend, f"{BASE}/gh/mcp") == {
        "resource": f"{BASE}/gh/mcp",
        "authorization_servers": ["https://login.example.com"],
        "scopes_supported": ["read"],
    }
    with pytest.raises(ValueError, match="authorization_servers"):
        translated({"resource": "http://10.0.0.5:8080/mcp"}, f"{BASE}/gh/mcp")


def test_where_a_backends_document_is_looked_for() -> None:
    server = HttpServer(id="gh", endpoints=("http://10.0.0.5:8080",), path="/api/mcp")
    assert backend_metadata_urls(server, "http://10.0.0.5:8080", "/mcp") == [
        "http://10.0.0.5:8080/.well-known/oauth-protected-resource/api/mcp",
        "http://10.0.0.5:8080/.well-known/oauth-protected-resource",
    ]
    assert backend_metadata_urls(server, "http://10.0.0.5:8080", "") == [
        "http://10.0.0.5:8080/.well-known/oauth-protected-resource"
    ]


def test_metadata_urls_put_the_well_known_segment_after_the_host() -> None:
    assert metadata_url(BASE, "gh") == f"{BASE}/.well-known/oauth-protected-resource/gh/mcp"
    assert metadata_url(f"{BASE}/fleet", "gh", "") == f"{BASE}/.well-known/oauth-protected-resource/fleet/gh"


def test_issuer_discovery_urls() -> None:
    assert discovery_urls("https://kc.example.com/realms/tools") == [
        "https://kc.example.com/realms/tools/.well-known/openid-configuration",
        "https://kc.example.com/.well-known/oauth-authorization-server/realms/tools",
    ]
    assert discovery_urls("https://tenant.auth0.com/") == [
        "https://tenant.auth0.com/.well-known/openid-configuration",
        "https://tenant.auth0.com/.well-known/oauth-authorization-server",
    ]


@pytest.mark.parametrize(
    ("aud", "accepted"),
    [
        (f"{BASE}/gh", True),
        (f"{BASE}/gh/mcp", True),
        (f"{BASE}/gh/sse", True),
        ([f"{BASE}/other/mcp", f"{BASE}/gh/mcp"], True),
        (f"{BASE}/ghx/mcp", False),
        (f"{BASE}/other/mcp", False),
        (BASE, False),
        ("exact-client-id", True),
        (["exact-client-id"], True),
        (42, False),
        (None, False),
    ],
)
def test_the_audience_is_the_servers_url_or_below_it(aud: object, accepted: bool) -> None:
    assert _audience_matches(aud, ["exact-client-id"], f"{BASE}/gh") is accepted


async def _never_receive() -> Message:
    raise AssertionError("nothing is read")


async def _never_send(message: Message) -> None:
    raise AssertionError("nothing is sent")


def test_a_backends_challenge_points_at_the_base_the_gateway_gave_the_exchange() -> None:
    """Without a Host header (HTTP/1.0), the gateway's base is its bind host, which `--host` may set apart
    from the registry's `gateway.host`: the challenge takes the base the gateway computed, as every other
    advertised URL does, not one rebuilt from the registry."""
    snapshot = parse_registry("servers:\n  gh: {endpoint: 'http://10.0.0.5:8080'}\n", "test", environ={})
    scope = {"type": "http", "http_version": "1.0", "method": "POST", "path": "/gh/mcp", "headers": []}
    headers = [(b"www-authenticate", b'Bearer resource_metadata="http://10.0.0.5:8080/.well-known/x"')]
    server = snapshot.servers["gh"]
    exchange = Exchange(
        scope, _never_receive, _never_send, snapshot, server, "/mcp", base=lambda _scope: "http://10.1.2.3:8000"
    )
    [(_, value)] = backend_challenge(exchange, 401, headers)
    assert value == b'Bearer resource_metadata="http://10.1.2.3:8000/.well-known/oauth-protected-resource/gh/mcp"'


@pytest.mark.parametrize(
    ("document", "depth"),
    [({}, 1), ({"keys": []}, 2), ({"keys": [{"kty": "RSA"}]}, 3), ({"a": [[[[1]]]]}, 5), ({"a": 1, "b": [{}]}, 3)],
)
def test_the_nesting_depth_of_a_document(document: dict[str, object], depth: int) -> None:
    assert _depth(document) == depth
