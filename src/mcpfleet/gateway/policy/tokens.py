"""Bearer JWTs validated against an issuer's JSON Web Key Set, with PyJWT (RFC 7519, RFC 7517, RFC 9068).

`KeySet` holds the issuer's keys: fetched on first use (the `jwks_uri` read from the issuer's
`/.well-known/openid-configuration`, else `/.well-known/oauth-authorization-server`, when `jwt.jwks_url` is
not given), again every `jwt.jwks_refresh` seconds, and at once when a token names a key id the set does not
hold (at most every `jwt.jwks_min_refresh` seconds, so forged key ids cannot make the gateway hammer the
issuer). A failed fetch keeps the keys it had; with none at all, the request gets 503 (the gateway cannot
tell good tokens from bad), not 401.

`TokenValidator.validate(token, audiences)` checks the signature with an allowed asymmetric algorithm (never
`none`, never HMAC: a public key must not double as a shared secret), `iss`, `exp` (required), `nbf`, `iat`
with `jwt.leeway` seconds of clock skew, and that `aud` names one of `audiences`; then `jwt.required_scopes`.
Every refusal is one `unauthorized` error whose message says what was wrong with the token, never the token.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

import anyio
import httpx2
import jwt

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.policy.auth import Identity, forbidden, unauthorized
from mcpfleet.registry.model import Jwt

log = logging.getLogger("mcpfleet.gateway")

FETCH_TIMEOUT = 10.0
MAX_DOCUMENT = 1 << 20  # a key set or discovery document larger than 1 MiB is refused


class KeySetUnavailable(GatewayError):
    def __init__(self, message: str) -> None:
        super().__init__(503, -32603, message, headers={"Retry-After": "5"})


class KeySet:
    """The issuer's signing keys by key id, refreshed as the module docstring says."""

    def __init__(self, settings: Jwt) -> None:
        self.settings = settings
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = float("-inf")  # monotonic time of the last fetch attempt
        self._loaded = float("-inf")  # of the last good one
        self._lock = anyio.Lock()
        self.jwks_url = settings.jwks_url
        self.last_error: str | None = None

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key that signed a token with header `kid` (None: the set's only key); raises `unauthorized`
        for an unknown key id, `KeySetUnavailable` when no key set could ever be fetched."""
        now = time.monotonic()
        stale = now - self._loaded > self.settings.jwks_refresh
        unknown = kid is not None and kid not in self._keys
        if stale or (unknown and now - self._fetched >= self.settings.jwks_min_refresh):
            await self._refresh(now)
        if not self._keys:
            raise KeySetUnavailable(
                f"the issuer's key set could not be fetched ({self.last_error}); setting: gateway.auth.jwt"
            )
        if kid is None:
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))
            raise unauthorized("the token names no key id ('kid') and the issuer has several keys", _challenge())
        found = self._keys.get(kid)
        if found is None:
            raise unauthorized(f"the token is signed with key {kid!r}, which the issuer does not list", _challenge())
        return found

    async def _refresh(self, started: float) -> None:
        async with self._lock:
            if self._fetched >= started:  # another request refreshed while this one waited
                return
            self._fetched = time.monotonic()
            try:
                async with httpx2.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as client:
                    if self.jwks_url is None:
                        self.jwks_url = await self._discover(client)
                    document = await _get_json(client, self.jwks_url)
                keys: dict[str, jwt.PyJWK] = {}
                for index, data in enumerate(document.get("keys", [])):
                    if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                        continue
                    try:
                        key = jwt.PyJWK.from_dict(data)
                    except jwt.PyJWKError:  # a key type or algorithm this build does not know: others still count
                        continue
                    keys[str(data.get("kid", f"#{index}"))] = key
                if not keys:
                    raise ValueError(f"{self.jwks_url} lists no usable signing key")
            except (httpx2.HTTPError, ValueError, OSError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("JWT key set not refreshed (the keys held stay in use): %s", self.last_error)
                return
            self._keys = keys
            self._loaded = self._fetched
            self.last_error = None

    async def _discover(self, client: httpx2.AsyncClient) -> str:
        issuer = self.settings.issuer.rstrip("/")
        problems = []
        for suffix in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
            try:
                document = await _get_json(client, issuer + suffix)
            except (httpx2.HTTPError, ValueError) as exc:
                problems.append(f"{issuer + suffix}: {exc}")
                continue
            uri = document.get("jwks_uri")
            if isinstance(uri, str) and uri.startswith(("https://", "http://")):
                return uri
            problems.append(f"{issuer + suffix}: no 'jwks_uri'")
        raise ValueError("; ".join(problems) + " (set gateway.auth.jwt.jwks_url)")


async def _get_json(client: httpx2.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(url, headers={"Accept": "application/json"})
    if response.status_code != 200:
        raise ValueError(f"{url} answered {response.status_code}")
    if len(response.content) > MAX_DOCUMENT:
        raise ValueError(f"{url}: the document is larger than {MAX_DOCUMENT} bytes")
    try:
        document = json.loads(response.content)
    except ValueError:
        raise ValueError(f"{url} did not answer JSON") from None
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return document


def _challenge(error: str = "invalid_token", description: str | None = None) -> str:
    challenge = f'Bearer error="{error}"'
    if description:
        challenge += f', error_description="{description}"'
    return challenge


class TokenValidator:
    """Validates bearer JWTs for one `gateway.auth.jwt` setting (see the module docstring)."""

    def __init__(self, settings: Jwt) -> None:
        self.settings = settings
        self.keys = KeySet(settings)

    async def validate(self, token: str, audiences: Collection[str]) -> Identity:
        """The identity a valid token names; raises `unauthorized` (401) for a bad or expired token or one
        for another audience, `forbidden` (403) when it lacks `jwt.required_scopes`."""
        settings = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise unauthorized("the bearer token is not a JWT", _challenge()) from None
        algorithm = header.get("alg")
        if algorithm not in settings.algorithms:
            raise unauthorized(
                f"the token's algorithm {algorithm!r} is not accepted (gateway.auth.jwt.algorithms:"
                f" {', '.join(settings.algorithms)})",
                _challenge(),
            )
        kid = header.get("kid")
        key = await self.keys.key(kid if isinstance(kid, str) else None)
        audience = list(settings.audience) or list(audiences)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={"require": ["exp", "iss", "aud"], "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the token has expired", _challenge(description="the token has expired")) from None
        except jwt.InvalidAudienceError:
            raise unauthorized(
                f"the token is not for this server (its 'aud' must name {audience[0]})",
                _challenge(description="wrong audience"),
            ) from None
        except jwt.InvalidIssuerError:
            raise unauthorized(f"the token is not from {settings.issuer}", _challenge()) from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("the token is not valid yet ('nbf' or 'iat')", _challenge()) from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"the token has no {exc.claim!r} claim", _challenge()) from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"the token is invalid: {exc}", _challenge()) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise unauthorized("the token has no 'sub' claim", _challenge())
        scopes = _names(claims.get(settings.scopes_claim))
        missing = [s for s in settings.required_scopes if s not in scopes]
        if missing:
            raise forbidden(
                f"the token lacks the scope {missing[0]!r} (gateway.auth.jwt.required_scopes)",
                f'Bearer error="insufficient_scope", scope="{" ".join(settings.required_scopes)}"',
            )
        return Identity(
            subject, _public_claims(claims), kind="jwt", groups=_names(claims.get(settings.groups_claim)), scopes=scopes
        )


def _names(value: Any) -> frozenset[str]:
    """A claim holding names: a JSON list of strings, or one space-separated string (RFC 8693 `scope`)."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _public_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k in ("iss", "sub", "aud", "exp", "iat", "client_id", "azp")}
