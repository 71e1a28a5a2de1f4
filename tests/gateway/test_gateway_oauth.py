"""OAuth at the gateway, end to end: the MCP SDK's OAuth client, a real authorization server
(tests/authserver.py), the gateway served by uvicorn, and SDK servers behind it, all on 127.0.0.1.

- The SDK client meets the gateway's 401, reads the protected-resource metadata (RFC 9728) it points at,
  registers (RFC 7591), gets a token for the gateway's URL of the server (RFC 8707) and calls tools; the
  backend never sees that token.
- The JWT checks on a running gateway: expiry and leeway, audience, issuer, algorithm confusion, key
  rotation and key-id floods, an issuer that is down, required scopes, groups in access rules; every 401
  points at the metadata whose `resource` is the URL the client used (or `gateway.public_url`).
- A backend that wants OAuth itself: its challenge points at the gateway, whose metadata passes the
  backend's on with the gateway's URL, and the SDK client's flow works through the gateway; when the gateway
  validates tokens itself, the backend's challenge becomes a 502 naming the entry's `headers`.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp.shared.exceptions import MCPError
from pydantic import AnyUrl

from mcpfleet.client.websocket import websocket_client
from mcpfleet.gateway.app import Gateway
from mcpfleet.registry import load_registry

from authserver import AuthServer
from support import ACCEPT, INIT, free_port, running, serving_in_process, until

ECHO = """
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("echo-headers")


@server.tool()
def headers(ctx: Context) -> list[list[str]]:
    '''The headers of the HTTP request this call arrived in.'''
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in ctx.request_context.request.headers.raw]


uvicorn.run(server.streamable_http_app(host="127.0.0.1"), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""

# An SDK server that is an OAuth resource server itself: tokens from `issuer` for `audience` (argv).
PROTECTED = """
import sys

import anyio
import jwt
import uvicorn
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

port, issuer, audience = int(sys.argv[1]), sys.argv[2], sys.argv[3]
keys = jwt.PyJWKClient(issuer + "/jwks")


class Verifier:
    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            key = await anyio.to_thread.run_sync(keys.get_signing_key_from_jwt, token)
            claims = jwt.decode(token, key, algorithms=["RS256", "ES256"], audience=audience, issuer=issuer)
        except jwt.PyJWTError:
            return None
        scopes = str(claims.get("scope", "")).split()
        return AccessToken(token=token, client_id=str(claims.get("client_id", "?")), scopes=scopes,
                           expires_at=claims["exp"], resource=audience, subject=claims["sub"])


settings = AuthSettings(issuer_url=issuer, resource_server_url=f"http://127.0.0.1:{port}/mcp",
                        validate_token_resource=False, required_scopes=["mcp"])
server = MCPServer("protected", token_verifier=Verifier(), auth=settings)


@server.tool()
def secret() -> str:
    '''Only for holders of a token.'''
    return "the owl flies at midnight"


uvicorn.run(server.streamable_http_app(host="127.0.0.1"), host="127.0.0.1", port=port, log_level="warning")
"""

REDIRECT_URI = "http://127.0.0.1:9/callback"  # never reached: the test's redirect handler reads the code


# --- the pieces ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An SDK server (module-wide) whose tool `headers` answers the headers its request arrived with."""
    script = tmp_path_factory.mktemp("echo") / "echo.py"
    script.write_text(ECHO)
    port = free_port()
    with running([sys.executable, str(script), str(port)], port) as url:
        yield url


def listening() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, sock: socket.socket, registry: str) -> AsyncIterator[str]:
    """A Gateway serving `registry` on the listening socket `sock` until the block ends; yields its URL."""
    port = sock.getsockname()[1]
    path = tmp_path / f"registry-{port}.yaml"
    path.write_text(registry)
    async with Gateway(load_registry(path), registry_path=path) as app, serving_in_process(app, sock) as url:
        yield url


@contextlib.asynccontextmanager
async def issuer_and_gateway(
    tmp_path: Path, echo_url: str, *, jwt: str = ""
) -> AsyncIterator[tuple[AuthServer, str, httpx2.AsyncClient]]:
    """A serving test authorization server, a gateway that takes its tokens (`jwt`: more `gateway.auth.jwt`
    settings) in front of the echo server, and an HTTP client, until the block ends."""
    auth = AuthServer(free_port())
    with listening() as sock:
        registry = jwt_registry(auth.issuer, echo_url, jwt=jwt)
        async with auth.serving(), gateway(tmp_path, sock, registry) as url, httpx2.AsyncClient(timeout=30) as http:
            yield auth, url, http


def jwt_registry(issuer: str, echo: str, *, jwt: str = "", gateway: str = "", servers: str = "") -> str:
    return (
        "gateway:\n"
        f"{gateway}"
        "  auth:\n"
        f"    jwt: {{issuer: '{issuer}'{jwt}}}\n"
        "servers:\n"
        f"  web: {{endpoint: '{echo}', description: 'Echo of request headers'}}\n"
        f"  other: {{endpoint: '{echo}'}}\n"
        f"{servers}"
    )


class MemoryStorage:
    """The SDK client's token storage (`TokenStorage`), in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def oauth_client(server_url: str) -> tuple[OAuthClientProvider, list[str]]:
    """The SDK's OAuth provider for `server_url`, whose browser step follows the authorization URL with httpx
    and reads the code from the redirect; and the list of authorization URLs it followed."""
    followed: list[str] = []
    results: list[AuthorizationCodeResult] = []

    async def redirect(url: str) -> None:
        followed.append(url)
        async with httpx2.AsyncClient(timeout=30, trust_env=False) as http:
            answer = await http.get(url)
        assert answer.status_code == 302, answer.text
        query = parse_qs(urlsplit(answer.headers["location"]).query)
        results.append(
            AuthorizationCodeResult(code=query["code"][0], state=query["state"][0], iss=query.get("iss", [None])[0])
        )

    async def callback() -> AuthorizationCodeResult:
        return results.pop()

    metadata = OAuthClientMetadata(
        redirect_uris=[AnyUrl(REDIRECT_URI)],
        client_name="mcpfleet tests",
        token_endpoint_auth_method="none",
        grant_types=["authorization_code"],
    )
    return OAuthClientProvider(server_url, metadata, MemoryStorage(), redirect, callback), followed


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions in an exception group, however nested."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def bearer(token: str) -> dict[str, str]:
    return ACCEPT | {"authorization": f"Bearer {token}"}


def challenge_params(answer: Any) -> dict[str, str]:
    """The auth-params of a `WWW-Authenticate: Bearer k="v", ...` answer."""
    value = answer.headers["www-authenticate"]
    assert value.startswith("Bearer ")
    params = {}
    for part in value[len("Bearer ") :].split(", "):
        name, _, quoted = part.partition("=")
        params[name] = quoted.strip('"')
    return params


# --- the SDK's OAuth client through the gateway ----------------------------------------------------------


def test_the_sdk_oauth_client_gets_a_token_for_the_gateway_and_calls_tools(tmp_path: Path, echo_url: str) -> None:
    async def run() -> None:
        auth = AuthServer(free_port())
        with listening() as sock:
            async with auth.serving(), gateway(tmp_path, sock, jwt_registry(auth.issuer, echo_url)) as url:
                provider, followed = oauth_client(f"{url}/web/mcp")
                async with (
                    httpx2.AsyncClient(auth=provider, timeout=30) as http,
                    Client(streamable_http_client(f"{url}/web/mcp", http_client=http), mode="legacy") as client,
                ):
                    tools = await client.list_tools()
                    assert [t.name for t in tools.tools] == ["headers"]
                    result = await client.call_tool("headers", {})
                    seen = {name for name, _ in result.structured_content["result"]}  # type: ignore[index]
                # One registration, one authorization, one token: for the server's URL at the gateway.
                assert len(auth.clients) == 1 and len(followed) == 1
                assert parse_qs(urlsplit(followed[0]).query)["resource"] == [f"{url}/web/mcp"]
                assert [claims["aud"] for claims in auth.issued] == [f"{url}/web/mcp"]
                # The gateway took the token: the backend never saw an Authorization header.
                assert "authorization" not in seen and "host" in seen

    anyio.run(run)


def test_the_protected_resource_metadata_of_each_server(tmp_path: Path, echo_url: str) -> None:
    async def run() -> None:
        auth = AuthServer(free_port())
        registry = jwt_registry(auth.issuer, echo_url, jwt=", required_scopes: [mcp]")
        with listening() as sock:
            async with gateway(tmp_path, sock, registry) as url, httpx2.AsyncClient(timeout=30) as http:
                well_known = f"{url}/.well-known/oauth-protected-resource"
                document = (await http.get(f"{well_known}/web/mcp")).json()
                assert document == {
                    "resource": f"{url}/web/mcp",
                    "authorization_servers": [auth.issuer],
                    "bearer_methods_supported": ["header"],
                    "scopes_supported": ["mcp"],
                    "resource_name": "Echo of request headers",
                }
                assert (await http.get(f"{well_known}/web")).json()["resource"] == f"{url}/web"
                assert "resource_name" not in (await http.get(f"{well_known}/other/mcp")).json()
                # A client going through the gateway by another name gets that name back.
                by_name = await http.get(f"{well_known}/web/mcp".replace("127.0.0.1", "localhost"))
                assert by_name.json()["resource"] == f"{url}/web/mcp".replace("127.0.0.1", "localhost")
                for path, status, words in [
                    ("/.well-known/oauth-protected-resource/nope/mcp", 404, "unknown server 'nope'"),
                    ("/.well-known/oauth-protected-resource", 404, "several protected resources"),
                    ("/.well-known/oauth-authorization-server", 404, "not an authorization server"),
                    ("/.well-known/openid-configuration", 404, "not an authorization server"),
                ]:
                    answer = await http.get(url + path)
                    assert answer.status_code == status, path
                    assert words in answer.json()["error"]["message"], path
                assert (await http.post(f"{well_known}/web/mcp")).status_code == 405

    anyio.run(run)


def test_with_api_keys_only_there_is_no_authorization_server_to_name(tmp_path: Path, echo_url: str) -> None:
    async def run() -> None:
        registry = (
            "gateway:\n  auth:\n    api_keys: [{name: ci, key: 'a-long-enough-api-key'}]\n"
            f"servers:\n  web: {{endpoint: '{echo_url}'}}\n"
        )
        with listening() as sock:
            async with gateway(tmp_path, sock, registry) as url, httpx2.AsyncClient(timeout=30) as http:
                answer = await http.get(f"{url}/.well-known/oauth-protected-resource/web/mcp")
                assert answer.status_code == 404
                assert "gateway.auth.jwt" in answer.json()["error"]["message"]
                refused = await http.post(f"{url}/web/mcp", json=INIT, headers=ACCEPT)
                assert refused.status_code == 401 and "resource_metadata" not in refused.headers["www-authenticate"]

    anyio.run(run)


# --- JWT validation on a running gateway -----------------------------------------------------------------


def _token_cases() -> list[tuple[str, Any, int, str]]:
    """(name, token builder(auth, url), expected status, words of the error message)."""
    now = int(time.time())
    return [
        ("valid", lambda a, u: a.mint(f"{u}/web/mcp"), 200, ""),
        ("valid, EC key", lambda a, u: a.mint(f"{u}/web/mcp", key=a.keys[1]), 200, ""),
        ("for the server's root", lambda a, u: a.mint(f"{u}/web"), 200, ""),
        ("one of several audiences", lambda a, u: a.mint([f"{u}/other/mcp", f"{u}/web/mcp"]), 200, ""),
        ("expired within leeway", lambda a, u: a.mint(f"{u}/web/mcp", exp=int(time.time()) - 20), 200, ""),
        ("expired", lambda a, u: a.mint(f"{u}/web/mcp", exp=now - 300), 401, "expired"),
        ("another server's", lambda a, u: a.mint(f"{u}/other/mcp"), 401, "not for this server"),
        ("a prefix of the id", lambda a, u: a.mint(f"{u}/we"), 401, "not for this server"),
        ("another issuer", lambda a, u: a.mint(f"{u}/web/mcp", iss="http://127.0.0.1:1"), 401, "not from"),
        ("no exp", lambda a, u: a.mint(f"{u}/web/mcp", exp=None), 401, "'exp'"),
        ("no sub", lambda a, u: a.mint(f"{u}/web/mcp", sub=None), 401, "'sub'"),
        ("not yet valid", lambda a, u: a.mint(f"{u}/web/mcp", nbf=int(time.time()) + 600), 401, "not valid yet"),
        ("alg none", lambda a, u: a.unsigned(f"{u}/web/mcp"), 401, "'none' is not accepted"),
        ("HS256 keyed with the public key", lambda a, u: a.forged_hs256(f"{u}/web/mcp"), 401, "'HS256'"),
        (
            "tampered claims",
            lambda a, u: _tampered(a.mint(f"{u}/web/mcp"), a.mint(f"{u}/web/mcp", sub="root")),
            401,
            "invalid",
        ),
        ("unknown key", lambda a, u: a.mint(f"{u}/web/mcp", kid="not-listed"), 401, "'not-listed'"),
        # Crafted headers, no valid signature needed: each is a 401, never an error of the library's (a 500).
        (
            "RS256 over the EC key",
            lambda a, u: a.crafted({"alg": "RS256", "kid": "ec-1"}, f"{u}/web/mcp"),
            401,
            "RS256",
        ),
        (
            "ES256 over the RSA key",
            lambda a, u: a.crafted({"alg": "ES256", "kid": "rsa-1"}, f"{u}/web/mcp"),
            401,
            "ES256",
        ),
        ("kid not a string", lambda a, u: a.crafted({"alg": "RS256", "kid": 123}, f"{u}/web/mcp"), 401, "header"),
        (
            "crit",
            lambda a, u: a.crafted({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}, f"{u}/web/mcp"),
            401,
            "header",
        ),
        ("alg not a string", lambda a, u: a.crafted({"alg": ["RS256"], "kid": "rsa-1"}, f"{u}/web/mcp"), 401, "alg"),
        ("header nested deeply", lambda a, u: a.crafted(_nested("kid"), f"{u}/web/mcp"), 401, "header"),
        ("claims nested deeply", lambda a, u: a.signed_payload(_nested("sub").encode()), 401, "invalid"),
        # The JWKS publishes a shared secret (`oct`, kid hmac-1): never held, whatever the token's alg.
        (
            "HS256 with the published secret",
            lambda a, u: a.hmac_signed(_hmac_header("HS256"), f"{u}/web/mcp"),
            401,
            "'HS256'",
        ),
        (
            "RS256 header, HMAC with the published secret",
            lambda a, u: a.hmac_signed(_hmac_header("RS256"), f"{u}/web/mcp"),
            401,
            "'hmac-1', which the issuer does not list",
        ),
    ]


def _nested(name: str, depth: int = 2000) -> str:
    """JSON text of an object whose `name` holds arrays nested `depth` deep (deeper than the parser's
    recursion limit), with `alg` and `kid` good."""
    return f'{{"alg": "RS256", "kid": "rsa-1", "{name}": {"[" * depth}{"]" * depth}}}'


def _hmac_header(alg: str) -> dict[str, str]:
    return {"alg": alg, "typ": "JWT", "kid": "hmac-1"}


def _tampered(token: str, other: str) -> str:
    """`token`'s signature on `other`'s claims."""
    return ".".join([*other.split(".")[:2], token.split(".")[2]])


@pytest.mark.parametrize(("name", "build", "status", "words"), _token_cases(), ids=[c[0] for c in _token_cases()])
def test_jwt_checks(tmp_path: Path, echo_url: str, name: str, build: Any, status: int, words: str) -> None:
    """Each token on `/web/mcp` and on `/servers`. The issuer publishes its keys without `alg` (the token's
    `alg` then picks how a key is used) and a shared secret beside them."""

    async def run() -> None:
        auth = AuthServer(free_port(), jwk_alg=False, secret=b"a shared secret the issuer should not publish")
        with listening() as sock:
            async with (
                auth.serving(),
                gateway(tmp_path, sock, jwt_registry(auth.issuer, echo_url)) as url,
                httpx2.AsyncClient(timeout=30) as http,
            ):
                answer = await http.post(f"{url}/web/mcp", json=INIT, headers=bearer(build(auth, url)))
                assert answer.status_code == status, answer.text
                if status == 401:
                    assert words in answer.json()["error"]["message"]
                    params = challenge_params(answer)
                    assert params["error"] == "invalid_token"
                    assert params["error_description"]  # RFC 6750 section 3: a short text, never the token
                    if name == "expired":
                        assert params["error_description"] == "the token has expired"
                    assert params["resource_metadata"] == f"{url}/.well-known/oauth-protected-resource/web/mcp"
                    document = (await http.get(params["resource_metadata"])).json()
                    assert document["resource"] == f"{url}/web/mcp"
                    # The status routes check the same token the same way (none of these is for the base URL).
                    status_route = await http.get(f"{url}/servers", headers=bearer(build(auth, url)))
                    assert status_route.status_code == 401, status_route.text
                    assert challenge_params(status_route)["error"] == "invalid_token"

    anyio.run(run)


def test_every_401_points_at_the_metadata_of_the_url_the_client_used(tmp_path: Path, echo_url: str) -> None:
    async def run() -> None:
        auth = AuthServer(free_port())
        with listening() as sock:
            async with (
                gateway(tmp_path, sock, jwt_registry(auth.issuer, echo_url)) as url,
                httpx2.AsyncClient(timeout=30) as http,
            ):
                well_known = f"{url}/.well-known/oauth-protected-resource"
                for request, metadata in [
                    (http.post(f"{url}/web/mcp", json=INIT, headers=ACCEPT), f"{well_known}/web/mcp"),
                    (http.get(f"{url}/web/sse"), f"{well_known}/web"),
                    (
                        http.post(f"{url}/web/mcp", json=INIT, headers=ACCEPT | {"authorization": "Basic eA=="}),
                        f"{well_known}/web/mcp",
                    ),
                    (http.post(f"{url}/web/mcp", json=INIT, headers=bearer("not-a-jwt")), f"{well_known}/web/mcp"),
                ]:
                    answer = await request
                    assert answer.status_code == 401
                    params = challenge_params(answer)
                    assert params["resource_metadata"] == metadata
                    resource = (await http.get(metadata)).json()["resource"]
                    # The resource is the URL the client used, or a parent of it (RFC 8707, as the SDK checks).
                    assert str(answer.request.url).startswith(resource)

    anyio.run(run)


def test_with_public_url_the_challenge_and_the_metadata_use_it(tmp_path: Path, echo_url: str) -> None:
    async def run() -> None:
        auth = AuthServer(free_port())
        with listening() as sock:
            public = "https://gw.example.test/fleet"  # a proxy in front keeps `Host: gw.example.test`
            registry = jwt_registry(auth.issuer, echo_url, gateway=f"  public_url: '{public}'\n")
            async with (
                auth.serving(),
                gateway(tmp_path, sock, registry) as url,
                httpx2.AsyncClient(timeout=30, headers={"host": "gw.example.test"}) as http,
            ):
                # The public URL's name is served as a Host with no allowed_hosts entry.
                answer = await http.post(f"{url}/web/mcp", json=INIT, headers=ACCEPT)
                assert answer.status_code == 401, answer.text
                metadata = challenge_params(answer)["resource_metadata"]
                # RFC 9728 section 3.1: the well-known segment after the host, then the public URL's path.
                well_known = "/.well-known/oauth-protected-resource/fleet/web/mcp"
                assert metadata == f"https://gw.example.test{well_known}"
                assert (await http.get(f"{url}{well_known}")).json()["resource"] == f"{public}/web/mcp"
                other = await http.get(f"{url}{well_known}", headers={"host": "other.example.test"})
                assert other.status_code == 421, other.text
                # The audience is the public URL too, whatever address the request came in by.
                good = await http.post(f"{url}/web/mcp", json=INIT, headers=bearer(auth.mint(f"{public}/web/mcp")))
                assert good.status_code == 200
                local = await http.post(f"{url}/web/mcp", json=INIT, headers=bearer(auth.mint(f"{url}/web/mcp")))
                assert local.status_code == 401 and f"{public}/web" in local.json()["error"]["message"]

    anyio.run(run)


def test_a_rotated_key_is_fetched_on_first_sight_and_old_keys_stop_working(tmp_path: Path, echo_url: str) -> None:
    async def run() -> None:
        async with issuer_and_gateway(tmp_path, echo_url, jwt=", jwks_min_refresh: 0") as (auth, url, http):
            target = f"{url}/web/mcp"
            old = auth.mint(target)
            assert (await http.post(target, json=INIT, headers=bearer(old))).status_code == 200
            assert auth.jwks_fetches == 1
            auth.rotate()
            new = auth.mint(target)
            assert (await http.post(target, json=INIT, headers=bearer(new))).status_code == 200
            assert auth.jwks_fetches == 2  # the unknown key id, once; no restart
            assert (await http.post(target, json=INIT, headers=bearer(new))).status_code == 200
            assert auth.jwks_fetches == 2
            gone = await http.post(target, json=INIT, headers=bearer(old))
            assert gone.status_code == 401 and "'rsa-1'" in gone.json()["error"]["message"]

    anyio.run(run)


def test_a_flood_of_unknown_key_ids_does_not_flood_the_issuer(tmp_path: Path, echo_url: str) -> None:
    async def run() -> None:
        async with issuer_and_gateway(tmp_path, echo_url, jwt=", jwks_min_refresh: 60") as (auth, url, http):
            target = f"{url}/web/mcp"
            started = time.monotonic()
            assert (await http.post(target, json=INIT, headers=bearer(auth.mint(target)))).status_code == 200
            for n in range(30):
                forged = auth.mint(target, kid=f"forged-{n}")
                assert (await http.post(target, json=INIT, headers=bearer(forged))).status_code == 401
            allowed = 1 + int((time.monotonic() - started) // 60)  # one fetch per jwks_min_refresh
            assert auth.jwks_fetches <= allowed

    anyio.run(run)


def test_an_issuer_down_at_first_use_is_a_503_until_it_answers(
    tmp_path: Path, echo_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        auth = AuthServer(free_port())  # not serving yet
        with listening() as sock:
            registry = jwt_registry(auth.issuer, echo_url, jwt=", jwks_min_refresh: 0.5")
            async with gateway(tmp_path, sock, registry) as url, httpx2.AsyncClient(timeout=30) as http:
                target = f"{url}/web/mcp"
                down = await http.post(target, json=INIT, headers=bearer(auth.mint(target)))
                assert down.status_code == 503, down.text
                assert int(down.headers["retry-after"]) >= 1
                message = down.json()["error"]["message"]
                assert "key set could not be fetched" in message
                # The issuer's host is down: that is what to check, not a missing jwks_url.
                assert f"the issuer {auth.issuer} is unreachable" in message and "jwks_url" not in message
                warnings = [r.getMessage() for r in caplog.records if "JWT key set" in r.getMessage()]
                assert warnings and "no key held yet" in warnings[0] and "stay in use" not in warnings[0]
                async with auth.serving():

                    async def admitted() -> bool:
                        answer = await http.post(target, json=INIT, headers=bearer(auth.mint(target)))
                        assert answer.status_code in (200, 503), answer.text
                        return answer.status_code == 200

                    await until(admitted, within=30, interval=0.2)

    anyio.run(run)


def test_requests_that_arrive_during_the_first_key_set_fetch_wait_for_it(tmp_path: Path, echo_url: str) -> None:
    """A burst of callers at a fresh gateway (after a restart, on a new replica): one fetch of the key set
    (a slow issuer here), and every request waits for its outcome rather than getting a 503 meanwhile."""

    async def run() -> None:
        async with issuer_and_gateway(tmp_path, echo_url) as (auth, url, http):
            auth.delay = 0.5
            target = f"{url}/web/mcp"
            token = auth.mint(target)
            statuses: list[int] = []

            async def call() -> None:
                statuses.append((await http.post(target, json=INIT, headers=bearer(token))).status_code)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)  # starts the fetch: discovery and key set take 1 s at this issuer
                await anyio.sleep(0.3)  # the others come while it is under way (a window, not a sync)
                for _ in range(5):
                    tg.start_soon(call)
            assert statuses == [200] * 6
            assert auth.jwks_fetches == 1

    anyio.run(run)


def test_a_routine_refresh_holds_up_only_the_request_that_makes_it(tmp_path: Path, echo_url: str) -> None:
    """Once keys are held, a stale set is refetched by one request while the others go on with the held
    keys: a slow issuer holds up that one request, never the traffic beside it."""

    async def run() -> None:
        jwt_settings = ", jwks_refresh: 0.5, jwks_min_refresh: 0"
        async with issuer_and_gateway(tmp_path, echo_url, jwt=jwt_settings) as (auth, url, http):
            target = f"{url}/web/mcp"
            token = auth.mint(target)
            assert (await http.post(target, json=INIT, headers=bearer(token))).status_code == 200
            await anyio.sleep(0.6)  # the set is stale now (jwks_refresh)
            auth.delay = 5.0  # and its refetch is slow
            finished: list[str] = []

            async def call(name: str) -> None:
                answer = await http.post(target, json=INIT, headers=bearer(token))
                assert answer.status_code == 200, answer.text
                finished.append(name)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "refreshing")
                await anyio.sleep(0.5)  # its fetch is under way
                tg.start_soon(call, "beside")
            assert finished == ["beside", "refreshing"]

    anyio.run(run)


def test_an_issuer_without_a_key_set_url_is_a_503_naming_jwks_url(tmp_path: Path, echo_url: str) -> None:
    """An issuer that answers but publishes no discovery document (404 at both URLs): the one case where
    `jwt.jwks_url` is the fix, so the message names it."""

    async def run() -> None:
        with listening() as sock:
            async with (
                gateway(tmp_path, sock, jwt_registry(echo_url, echo_url)) as url,
                httpx2.AsyncClient(timeout=30) as http,
            ):
                target = f"{url}/web/mcp"
                token = AuthServer(free_port()).mint(target)
                answer = await http.post(target, json=INIT, headers=bearer(token))
                assert answer.status_code == 503, answer.text
                message = answer.json()["error"]["message"]
                assert "answered 404" in message and "set gateway.auth.jwt.jwks_url" in message

    anyio.run(run)


def test_a_discovery_document_for_another_issuer_or_naming_a_plain_http_key_set_is_not_used(
    tmp_path: Path, echo_url: str
) -> None:
    """OIDC Discovery 4.3 / RFC 8414 3.3: the document must name the configured issuer; and the key set it
    points at is held to the rule `jwt.jwks_url` is (https, http only on loopback): either fault is a 503
    naming it, and the gateway admits tokens once the document is right."""

    async def run() -> None:
        auth = AuthServer(free_port())
        with listening() as sock:
            registry = jwt_registry(auth.issuer, echo_url, jwt=", jwks_min_refresh: 0")
            async with (
                auth.serving(),
                gateway(tmp_path, sock, registry) as url,
                httpx2.AsyncClient(timeout=30) as http,
            ):
                target = f"{url}/web/mcp"
                faults = [
                    ({"issuer": "https://evil.example"}, "names the issuer 'https://evil.example'"),
                    ({"jwks_uri": "http://keys.example/jwks"}, "'http://keys.example/jwks', which is not https"),
                ]
                for fields, words in faults:
                    auth.metadata = fields
                    answer = await http.post(target, json=INIT, headers=bearer(auth.mint(target)))
                    assert answer.status_code == 503, answer.text
                    assert words in answer.json()["error"]["message"]
                assert auth.jwks_fetches == 0
                auth.metadata = {}
                assert (await http.post(target, json=INIT, headers=bearer(auth.mint(target)))).status_code == 200

    anyio.run(run)


def test_documents_nested_too_deeply_are_refused_not_a_500(tmp_path: Path, echo_url: str) -> None:
    """A key set nested past the parser's recursion limit, one nested deeper than any real one, and a
    backend's protected-resource metadata nested past the limit: each a clear refusal naming the nesting."""

    async def run() -> None:
        auth = AuthServer(free_port())
        with listening() as sock, listening() as open_sock:
            registry = jwt_registry(auth.issuer, echo_url, jwt=", jwks_min_refresh: 0")
            backend = f"servers:\n  prot: {{endpoint: '{auth.issuer}'}}\n"
            async with (
                auth.serving(),
                gateway(tmp_path, sock, registry) as url,
                gateway(tmp_path, open_sock, backend) as open_url,
                httpx2.AsyncClient(timeout=30) as http,
            ):
                target = f"{url}/web/mcp"
                for depth, words in [(5000, "nested too deeply"), (40, "nested more than 32 deep")]:
                    auth.documents["/jwks"] = b'{"keys": ' + b"[" * depth + b"]" * depth + b"}"
                    answer = await http.post(target, json=INIT, headers=bearer(auth.mint(target)))
                    assert answer.status_code == 503, answer.text
                    assert words in answer.json()["error"]["message"]
                del auth.documents["/jwks"]
                assert (await http.post(target, json=INIT, headers=bearer(auth.mint(target)))).status_code == 200

                auth.documents["/.well-known/oauth-protected-resource/mcp"] = b"[" * 5000 + b"]" * 5000
                metadata = await http.get(f"{open_url}/.well-known/oauth-protected-resource/prot/mcp")
                assert metadata.status_code == 502, metadata.text
                assert "nested too deeply" in metadata.json()["error"]["message"]

    anyio.run(run)


def test_required_scopes_and_groups_in_access_rules(tmp_path: Path, echo_url: str) -> None:
    async def run() -> None:
        auth = AuthServer(free_port())
        access = (
            "  access:\n    - {principals: ['group:ops'], servers: [web]}\n"
            "    - {principals: ['scope:admin', 'scope:ops', 'group:ops'], servers: ['oth*']}\n"
            "    - {principals: ['scope:admin'], servers: [other]}\n"
        )
        with listening() as sock:
            registry = jwt_registry(auth.issuer, echo_url, jwt=", required_scopes: [mcp]", gateway=access)
            async with (
                auth.serving(),
                gateway(tmp_path, sock, registry) as url,
                httpx2.AsyncClient(timeout=30) as http,
            ):
                web, other = f"{url}/web/mcp", f"{url}/other/mcp"
                scopeless = await http.post(web, json=INIT, headers=bearer(auth.mint(web, groups=["ops"], scope="x")))
                assert scopeless.status_code == 403, scopeless.text
                params = challenge_params(scopeless)
                assert params["error"] == "insufficient_scope" and params["scope"] == "mcp"
                assert params["resource_metadata"] == f"{url}/.well-known/oauth-protected-resource/web/mcp"
                assert "'mcp'" in scopeless.json()["error"]["message"]
                ops = await http.post(web, json=INIT, headers=bearer(auth.mint(web, groups=["ops"])))
                assert ops.status_code == 200
                elsewhere = await http.post(other, json=INIT, headers=bearer(auth.mint(other, groups=["dev"])))
                assert elsewhere.status_code == 403 and "gateway.access" in elsewhere.json()["error"]["message"]
                # Rules give `other` to holders of these scopes: the challenge lists them after the required
                # one, each once, for a client to step up to all at once (MCP authorization, Scope Challenge
                # Handling), and points at the metadata like every other challenge.
                assert challenge_params(elsewhere) == {
                    "realm": "mcpfleet",
                    "error": "insufficient_scope",
                    "scope": "mcp admin ops",
                    "resource_metadata": f"{url}/.well-known/oauth-protected-resource/other/mcp",
                }
                stranger = await http.post(web, json=INIT, headers=bearer(auth.mint(web, groups=["dev"])))
                assert stranger.status_code == 403 and "sub:alice" in stranger.json()["error"]["message"]
                # No scope opens `web`: another token would not help, so no challenge invites a new login.
                assert "www-authenticate" not in stranger.headers

    anyio.run(run)


# --- backends that want OAuth themselves -----------------------------------------------------------------


@contextlib.contextmanager
def protected_backend(tmp_path: Path, issuer: str, audience: str) -> Iterator[str]:
    script = tmp_path / "protected.py"
    script.write_text(PROTECTED)
    port = free_port()
    with running([sys.executable, str(script), str(port), issuer, audience], port) as url:
        yield url


def test_a_backends_challenge_points_at_the_gateway_and_the_sdk_flow_works_through_it(tmp_path: Path) -> None:
    auth = AuthServer(free_port())
    with listening() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with protected_backend(tmp_path, auth.issuer, f"{url}/prot/mcp") as backend:

            async def run() -> None:
                registry = f"servers:\n  prot: {{endpoint: '{backend}'}}\n"
                async with (
                    auth.serving(),
                    gateway(tmp_path, sock, registry),
                    httpx2.AsyncClient(timeout=30) as http,
                ):
                    refused = await http.post(f"{url}/prot/mcp", json=INIT, headers=ACCEPT)
                    assert refused.status_code == 401
                    metadata = challenge_params(refused)["resource_metadata"]
                    assert metadata == f"{url}/.well-known/oauth-protected-resource/prot/mcp"
                    document = (await http.get(metadata)).json()
                    assert document["resource"] == f"{url}/prot/mcp"
                    assert document["authorization_servers"] == [auth.issuer]
                    assert document["scopes_supported"] == ["mcp"]

                    provider, _ = oauth_client(f"{url}/prot/mcp")
                    async with (
                        httpx2.AsyncClient(auth=provider, timeout=30) as oauth_http,
                        Client(streamable_http_client(f"{url}/prot/mcp", http_client=oauth_http), mode="legacy") as c,
                    ):
                        result = await c.call_tool("secret", {})
                        assert result.content[0].text == "the owl flies at midnight"  # type: ignore[union-attr]
                    assert [claims["aud"] for claims in auth.issued] == [f"{url}/prot/mcp"]

            anyio.run(run)


def test_a_backends_challenge_behind_a_validating_gateway_is_a_502_naming_headers(tmp_path: Path) -> None:
    auth = AuthServer(free_port())
    with listening() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with protected_backend(tmp_path, auth.issuer, f"{url}/prot/mcp") as backend:

            async def run() -> None:
                registry = (
                    f"gateway:\n  auth:\n    jwt: {{issuer: '{auth.issuer}'}}\n"
                    f"servers:\n  prot: {{endpoint: '{backend}'}}\n"
                )
                async with (
                    auth.serving(),
                    gateway(tmp_path, sock, registry),
                    httpx2.AsyncClient(timeout=30) as http,
                ):
                    token = auth.mint(f"{url}/prot/mcp")
                    answer = await http.post(f"{url}/prot/mcp", json=INIT, headers=bearer(token))
                    assert answer.status_code == 502, answer.text
                    assert "www-authenticate" not in answer.headers
                    message = answer.json()["error"]["message"]
                    assert "servers.prot.headers" in message and "invalid_token" in message
                    # The gateway's own metadata names its issuer; the backend's is not consulted.
                    document = (await http.get(f"{url}/.well-known/oauth-protected-resource/prot/mcp")).json()
                    assert document["resource"] == f"{url}/prot/mcp" and "scopes_supported" not in document

            anyio.run(run)


def test_a_bridged_connection_to_a_backend_that_wants_a_token_names_headers(tmp_path: Path) -> None:
    """A WebSocket client is served over a connection of the gateway's own, which carries only the entry's
    headers: no client could answer the backend's challenge, so the error says what to configure."""
    auth = AuthServer(free_port())
    with listening() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with protected_backend(tmp_path, auth.issuer, f"{url}/prot/mcp") as backend:

            async def run() -> None:
                registry = f"servers:\n  prot: {{endpoint: '{backend}'}}\n"
                async with auth.serving(), gateway(tmp_path, sock, registry):
                    errors: list[str] = []
                    try:
                        async with Client(websocket_client(f"{url.replace('http', 'ws')}/prot/ws"), mode="legacy"):
                            pass
                    except* MCPError as group:
                        errors = [str(e) for e in leaves(group)]
                    assert len(errors) == 1 and "servers.prot.headers" in errors[0]

            anyio.run(run)
