"""A small OAuth 2.1 authorization server for the tests, served by uvicorn on 127.0.0.1.

What an MCP client and the gateway need of one, and nothing more:

- RFC 8414 metadata at `/.well-known/oauth-authorization-server` (`/.well-known/openid-configuration`
  answers 404 unless `oidc=True`, so the gateway's discovery fallback is exercised);
- a JWKS at `/jwks` with an RSA and an EC signing key made with `cryptography` (`rotate()` replaces the RSA
  key; `jwks_fetches` counts the reads);
- dynamic client registration (RFC 7591) at `/register`;
- `/authorize`, which approves at once and redirects with a code, bound to the client, redirect URI, PKCE
  S256 challenge (RFC 7636), scope and `resource` (RFC 8707);
- `/token` (authorization code grant): checks the code, the verifier and the resource, and issues an RS256
  JWT access token with `iss`, `sub`, `aud` = the requested resource, `iat`, `exp`, `scope`, `client_id`
  and `groups` (`groups`, settable by the test);
- `mint(...)` for tokens no real issuer would give: expired, for another audience or issuer, signed by a
  key the JWKS does not list, `alg: none` (`unsigned`), HS256 keyed with the public key (`forged_hs256`),
  any header at all over a signature that means nothing (`crafted`), an HMAC over any header (`hmac_signed`,
  with `secret=`: the shared secret the JWKS then also publishes as an `oct` key, kid `hmac-1`).
- `documents[path] = bytes`: served as they are (200, JSON) at `path` instead of what the server would answer
  there (the JWKS, or any path it does not serve): broken or hostile documents.
- `jwk_alg=False` publishes the keys without `alg` (RFC 7517 makes it optional; many issuers leave it
  out), so the token's `alg` decides how a key is used.

Signing is PyJWT's; the only hand-assembled token is the HS256 forgery, whose MAC is the standard
library's `hmac`, since PyJWT refuses (rightly) to use a public key as an HMAC secret.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import anyio
import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

TOKEN_LIFETIME = 600


@dataclass
class SigningKey:
    kid: str
    algorithm: str  # RS256 or ES256
    private: Any

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self, with_alg: bool = True) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if self.algorithm == "RS256" else jwt.algorithms.ECAlgorithm
        data: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        data.pop("key_ops", None)
        data.pop("alg", None)
        return {**data, "kid": self.kid, "use": "sig"} | ({"alg": self.algorithm} if with_alg else {})

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


class AuthServer:
    """The server's state and its Starlette app; `async with server.serving():` runs it on `port`."""

    def __init__(self, port: int, *, oidc: bool = False, jwk_alg: bool = True, secret: bytes | None = None) -> None:
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.oidc = oidc
        self.jwk_alg = jwk_alg
        self.secret = secret
        self.keys = [SigningKey.rsa("rsa-1"), SigningKey.ec("ec-1")]
        self.generation = 1
        self.groups: list[str] = []
        self.jwks_fetches = 0
        self.clients: dict[str, dict[str, Any]] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.issued: list[dict[str, Any]] = []  # the claims of every token /token issued
        self.documents: dict[str, bytes] = {}
        self.metadata: dict[str, Any] = {}  # fields that replace the discovery document's own
        self.delay = 0.0  # seconds each discovery document and key set answer waits (a slow issuer)
        self.app = Starlette(
            routes=[
                Route("/.well-known/oauth-authorization-server", self._metadata),
                Route("/.well-known/openid-configuration", self._oidc_metadata),
                Route("/jwks", self._jwks),
                Route("/register", self._register, methods=["POST"]),
                Route("/authorize", self._authorize),
                Route("/token", self._token, methods=["POST"]),
                Route("/{path:path}", self._raw_document),
            ]
        )

    # --- test hooks --------------------------------------------------------------------------------------

    @property
    def signing(self) -> SigningKey:
        return self.keys[0]

    def rotate(self) -> SigningKey:
        """A new RSA key takes the old one's place in the JWKS and signs from now on."""
        self.generation += 1
        self.keys[0] = SigningKey.rsa(f"rsa-{self.generation}")
        return self.keys[0]

    def claims(self, audience: str | list[str], **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": audience,
            "iat": now,
            "exp": now + TOKEN_LIFETIME,
            "scope": "mcp",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self, audience: str | list[str], *, key: SigningKey | None = None, kid: str | None = None, **claims: Any
    ) -> str:
        """A token for `audience` signed with `key` (default: the RSA key); `kid` overrides the header's key
        id; `claims` override the defaults (None removes one)."""
        key = key or self.signing
        headers = {"kid": kid if kid is not None else key.kid}
        return jwt.encode(self.claims(audience, **claims), key.private, algorithm=key.algorithm, headers=headers)

    def unsigned(self, audience: str) -> str:
        """`alg: none`, naming a listed key id."""
        return jwt.encode(self.claims(audience), None, algorithm="none", headers={"kid": self.signing.kid})

    def crafted(self, header: dict[str, Any] | str, audience: str) -> str:
        """A token with exactly `header` (a dict, or its JSON text), good claims for `audience`, and a
        signature that means nothing."""
        return _signed(header, self.claims(audience), lambda _: b"not a signature")

    def hmac_signed(self, header: dict[str, Any], audience: str) -> str:
        """HMAC-SHA256 with `secret` (the `oct` key the JWKS publishes) over `header` and good claims."""
        assert self.secret is not None
        return _signed(
            header, self.claims(audience), lambda data: hmac.new(self.secret or b"", data, "sha256").digest()
        )

    def signed_payload(self, payload: bytes) -> str:
        """`payload` as it is (any bytes, no claims checked), signed with the RSA key: for claims no JSON
        encoder would write."""
        return jwt.PyJWS().encode(payload, self.signing.private, algorithm="RS256", headers={"kid": self.signing.kid})

    def forged_hs256(self, audience: str) -> str:
        """HS256 with the RSA public key's PEM as the secret: the classic algorithm-confusion forgery."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.signing.kid}
        signing_input = b".".join(_b64(json.dumps(part).encode()) for part in (header, self.claims(audience)))
        mac = hmac.new(self.signing.public_pem(), signing_input, hashlib.sha256).digest()
        return (signing_input + b"." + _b64(mac)).decode()

    # --- serving -----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[AuthServer]:
        """Serve on 127.0.0.1:`port` until the block ends (listening before it starts)."""
        with socket.create_server(("127.0.0.1", self.port)) as listening:
            server = uvicorn.Server(uvicorn.Config(self.app, lifespan="off", log_level="warning"))
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [listening])
                try:
                    yield self
                finally:
                    server.should_exit = True

    # --- endpoints ---------------------------------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "registration_endpoint": f"{self.issuer}/register",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post"],
            "scopes_supported": ["mcp", "admin"],
            **self.metadata,
        }

    async def _metadata(self, request: Request) -> Response:
        await anyio.sleep(self.delay)
        return JSONResponse(self._document())

    async def _oidc_metadata(self, request: Request) -> Response:
        return JSONResponse(self._document()) if self.oidc else JSONResponse({"error": "not_found"}, 404)

    async def _jwks(self, request: Request) -> Response:
        self.jwks_fetches += 1
        await anyio.sleep(self.delay)
        if "/jwks" in self.documents:
            return Response(self.documents["/jwks"], media_type="application/json")
        keys = [key.jwk(self.jwk_alg) for key in self.keys]
        if self.secret is not None:
            keys.append({"kty": "oct", "k": _b64(self.secret).decode(), "kid": "hmac-1", "use": "sig", "alg": "HS256"})
        return JSONResponse({"keys": keys})

    async def _raw_document(self, request: Request) -> Response:
        body = self.documents.get(request.url.path)
        return Response(body, media_type="application/json") if body is not None else Response(status_code=404)

    async def _register(self, request: Request) -> Response:
        metadata = await request.json()
        if not isinstance(metadata, dict) or not metadata.get("redirect_uris"):
            return JSONResponse({"error": "invalid_redirect_uri"}, 400)
        method = metadata.get("token_endpoint_auth_method") or "client_secret_post"
        client = {
            **metadata,
            "client_id": secrets.token_urlsafe(12),
            "client_id_issued_at": int(time.time()),
            "token_endpoint_auth_method": method,
        }
        if method != "none":
            client["client_secret"] = secrets.token_urlsafe(24)
        self.clients[client["client_id"]] = client
        return JSONResponse(client, 201)

    async def _authorize(self, request: Request) -> Response:
        query = request.query_params
        client = self.clients.get(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri", "")
        if client is None or redirect_uri not in client["redirect_uris"]:
            return JSONResponse({"error": "invalid_request", "error_description": "unknown client or redirect"}, 400)
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request", "error_description": "code with PKCE S256 only"}, 400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "client_id": client["client_id"],
            "redirect_uri": redirect_uri,
            "challenge": query.get("code_challenge", ""),
            "resource": query.get("resource"),
            "scope": query.get("scope") or "mcp",
        }
        answer = {"code": code, "iss": self.issuer}
        if "state" in query:
            answer["state"] = query["state"]
        return RedirectResponse(f"{redirect_uri}?{urlencode(answer)}", 302)

    async def _token(self, request: Request) -> Response:
        form = await request.form()
        grant = self.codes.pop(str(form.get("code", "")), None)
        if form.get("grant_type") != "authorization_code" or grant is None:
            return JSONResponse({"error": "invalid_grant"}, 400)
        client = self.clients[grant["client_id"]]
        if form.get("client_id") != grant["client_id"] or form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "client or redirect differs"}, 400)
        if client.get("client_secret") and form.get("client_secret") != client["client_secret"]:
            return JSONResponse({"error": "invalid_client"}, 401)
        verifier = str(form.get("code_verifier", ""))
        if _b64(hashlib.sha256(verifier.encode()).digest()).decode() != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE verifier mismatch"}, 400)
        resource = form.get("resource") or grant["resource"]
        if grant["resource"] is not None and resource != grant["resource"]:
            return JSONResponse({"error": "invalid_target"}, 400)
        if not resource:
            return JSONResponse({"error": "invalid_target", "error_description": "name the resource (RFC 8707)"}, 400)
        claims = self.claims(str(resource), scope=grant["scope"], client_id=grant["client_id"])
        if self.groups:
            claims["groups"] = list(self.groups)
        self.issued.append(claims)
        key = self.signing
        token = jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid})
        body = {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME, "scope": grant["scope"]}
        return JSONResponse(body, headers={"cache-control": "no-store"})


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _signed(header: dict[str, Any] | str, claims: dict[str, Any], sign: Any) -> str:
    text = header if isinstance(header, str) else json.dumps(header)
    signing_input = _b64(text.encode()) + b"." + _b64(json.dumps(claims).encode())
    return (signing_input + b"." + _b64(sign(signing_input))).decode()
