"""Bearer JWTs validated against an issuer's JSON Web Key Set, with PyJWT (RFC 7519, RFC 7517, RFC 9068).

`KeySet` holds the issuer's keys: fetched on first use (the `jwks_uri` read from the issuer's OpenID
Connect discovery document, `<issuer>/.well-known/openid-configuration`, else its RFC 8414 metadata,
`<origin>/.well-known/oauth-authorization-server<issuer path>`, when `jwt.jwks_url` is not given), again
every `jwt.jwks_refresh` seconds, and at once when a token names a key id the set does not hold. Fetches,
failed ones included, are at least `jwt.jwks_min_refresh` seconds apart, so neither forged key ids nor an
issuer that is down make the gateway hammer it or keep requests waiting on it. A failed fetch keeps the keys
it had; with none at all, the request gets 503 with `Retry-After` (the gateway cannot tell good tokens from
bad), not 401. Only asymmetric keys (`kty` RSA, EC, OKP) are held: a symmetric (`oct`) key an issuer
publishes is skipped, so no token is ever checked with a shared secret, whatever PyJWT would allow.

`TokenValidator.validate(token, audiences, below=...)` checks the signature with an allowed asymmetric
algorithm (never `none`, never HMAC: a public key must not double as a shared secret), `iss`, `exp`
(required), `nbf`, `iat` with `jwt.leeway` seconds of clock skew, and that `aud` names one of `audiences` or
a URL at or below `below` (RFC 8707 resources are hierarchical); then `jwt.required_scopes`. Every refusal
is a `TokenRefused` (401) whose message says what was wrong with the token, never the token, and whose
`description` is a short fixed text for the challenge's `error_description` (RFC 6750 section 3); a
malformed token of any kind (header, key id, `crit`, an algorithm its key cannot serve, nesting) is one too,
never an error of the library's.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import jwt

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.policy.auth import Identity, forbidden
from mcpfleet.registry.model import Jwt, secure_url

log = logging.getLogger("mcpfleet.gateway")

FETCH_TIMEOUT = 10.0
MAX_DOCUMENT = 1 << 20  # a key set, discovery or metadata document larger than 1 MiB is refused
MAX_DEPTH = 32  # nor one nested deeper (real ones nest 3 or 4 deep): nothing that reads it can recurse away
ASYMMETRIC = frozenset({"RSA", "EC", "OKP"})  # the JWK key types held (RFC 7518 section 6.1, RFC 8037)
# What PyJWT raises for a token or a key it cannot use, and what parsing crafted JSON can raise besides.
_LIBRARY_ERRORS = (jwt.PyJWTError, ValueError, TypeError, RecursionError)
_MALFORMED = "the token is malformed"  # the error_description of a token whose header cannot be used


class KeySetUnavailable(GatewayError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(503, -32603, message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class TokenRefused(GatewayError):
    """401 for a bearer token the gateway does not accept. `message`: what was wrong (the JSON-RPC error);
    `description`: a short fixed text (ASCII, no quote, no comma, never the token's content) for the
    challenge's `error_description` (RFC 6750 section 3)."""

    def __init__(self, message: str, description: str) -> None:
        challenge = f'Bearer error="invalid_token", error_description="{description}"'
        super().__init__(401, -32600, message, headers={"WWW-Authenticate": challenge})
        self.description = description


class _Unreachable(ValueError):
    """A fetch that got no answer at all (connection refused, timeout, name not resolved)."""


class KeySet:
    """The issuer's signing keys by key id, refreshed as the module docstring says."""

    def __init__(self, settings: Jwt) -> None:
        self.settings = settings
        self._keys: dict[str, jwt.PyJWK] = {}
        self._data: dict[str, dict[str, Any]] = {}  # each key's JWK, for algorithms other than its default
        self._for_algorithm: dict[tuple[str, str], jwt.PyJWK] = {}
        self._fetched = float("-inf")  # monotonic time of the last fetch attempt
        self._loaded = float("-inf")  # of the last good one
        self._lock = anyio.Lock()
        self.jwks_url = settings.jwks_url
        self.last_error: str | None = None

    async def key(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        """The key that signed a token with header `kid` (None: the set's only key), for the token's
        `algorithm` (a JWK without `alg` serves any algorithm of its key type); raises `TokenRefused` for an
        unknown key id or a key that cannot serve `algorithm`, `KeySetUnavailable` when no key set could be
        fetched yet."""
        now = time.monotonic()
        stale = now - self._loaded > self.settings.jwks_refresh
        unknown = kid is not None and kid not in self._keys
        if stale or unknown:
            if self._lock.locked():  # a fetch is under way
                if unknown or not self._keys:  # the keys held cannot serve this token: its outcome decides
                    async with self._lock:
                        pass
                # else a merely stale set serves on meanwhile: only the fetching request waits
            elif now - self._fetched >= self.settings.jwks_min_refresh:
                await self._refresh(now)
        if not self._keys:
            wait = self.settings.jwks_min_refresh - (time.monotonic() - self._fetched)
            raise KeySetUnavailable(
                f"the issuer's key set could not be fetched ({self.last_error}); setting: gateway.auth.jwt", wait
            )
        if kid is None:
            if len(self._keys) != 1:
                raise TokenRefused(
                    "the token names no key id ('kid') and the issuer has several keys", "the signing key is unknown"
                )
            kid = next(iter(self._keys))
        found = self._keys.get(kid)
        if found is None:
            raise TokenRefused(
                f"the token is signed with key {_shown(kid)}, which the issuer does not list",
                "the signing key is unknown",
            )
        if algorithm == found.algorithm_name or "alg" in self._data[kid]:
            return found  # a key bound to another algorithm than the token's is refused by PyJWT
        cached = self._for_algorithm.get((kid, algorithm))
        if cached is None:
            try:
                cached = jwt.PyJWK(self._data[kid], algorithm)
            except _LIBRARY_ERRORS:  # InvalidKeyError: an EC key asked for RS256, an RSA key for ES256, ...
                raise TokenRefused(
                    f"key {kid!r} (kty {self._data[kid].get('kty')}) cannot verify {algorithm}",
                    "the signing key does not fit the algorithm",
                ) from None
            self._for_algorithm[(kid, algorithm)] = cached
        return cached

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
                data_by_kid: dict[str, dict[str, Any]] = {}
                listed = document.get("keys")
                for index, data in enumerate(listed if isinstance(listed, list) else []):
                    if not isinstance(data, dict) or data.get("use", "sig") != "sig" or "d" in data:
                        continue  # encryption keys, and private keys an issuer should never publish
                    if data.get("kty") not in ASYMMETRIC:
                        continue  # a shared secret (`oct`) is never a verification key here, whatever the `alg`
                    try:
                        key = jwt.PyJWK.from_dict(data)
                    except _LIBRARY_ERRORS:
                        continue  # a key type or algorithm this build does not know: the others still count
                    kid = str(data.get("kid", f"#{index}"))
                    keys[kid] = key
                    data_by_kid[kid] = data
                if not keys:
                    raise ValueError(f"{self.jwks_url} lists no usable (asymmetric, signing) key")
            except (httpx2.HTTPError, ValueError, OSError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                if self._keys:
                    log.warning("JWT key set not refreshed (the keys held stay in use): %s", self.last_error)
                else:
                    log.warning(
                        "JWT key set not fetched: no key held yet, so requests with a bearer token get 503 until"
                        " a fetch succeeds (tried again on a request, at most every %g s: gateway.auth.jwt."
                        "jwks_min_refresh): %s",
                        self.settings.jwks_min_refresh,
                        self.last_error,
                    )
                return
            self._keys = keys
            self._data = data_by_kid
            self._for_algorithm = {}
            self._loaded = self._fetched
            self.last_error = None

    async def _discover(self, client: httpx2.AsyncClient) -> str:
        """The `jwks_uri` of the issuer's metadata. Raises `_Unreachable` when no discovery URL answered
        at all (the issuer's address is then what to check), ValueError otherwise; the hint to set
        `jwt.jwks_url` is given only when the issuer answered without a key set URL (404, or no `jwks_uri`)."""
        problems: list[str] = []
        unanswered = 0
        absent = False  # a discovery URL answered 404, or a document named no jwks_uri
        for url in discovery_urls(self.settings.issuer):
            try:
                status, document = await fetch_json(client, url)
            except httpx2.TransportError as exc:
                unanswered += 1
                problems.append(f"{url} could not be reached ({str(exc) or type(exc).__name__})")
                continue
            except (httpx2.HTTPError, ValueError) as exc:
                problems.append(f"{url}: {exc}")
                continue
            uri = None if document is None else document.get("jwks_uri")
            if document is not None and document.get("issuer") != self.settings.issuer:
                # OIDC Discovery 4.3 and RFC 8414 3.3: a document naming another issuer is not to be used.
                problems.append(f"{url} names the issuer {document.get('issuer')!r}, not {self.settings.issuer!r}")
                continue
            if isinstance(uri, str) and uri.startswith(("https://", "http://")):
                if secure_url(uri):
                    return uri
                problems.append(f"{url} names the key set {uri!r}, which is not https (http only on loopback)")
                continue
            absent = absent or status in (404, 410) or document is not None
            problems.append(f"{url} answered {status}" if document is None else f"{url} names no 'jwks_uri'")
        if unanswered == len(problems):
            raise _Unreachable(f"the issuer {self.settings.issuer} is unreachable: {problems[0]}")
        hint = " (the issuer publishes no key set URL: set gateway.auth.jwt.jwks_url)" if absent else ""
        raise ValueError("; ".join(problems) + hint)


def discovery_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata is: OpenID Connect Discovery 1.0 section 4 (`<issuer>/.well-known/
    openid-configuration`), then RFC 8414 section 3.1 (the well-known segment between host and path)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return [
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
        f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}",
    ]


async def fetch_json(
    client: httpx2.AsyncClient, url: str, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any] | None]:
    """GET `url`: its status, and the JSON object it answered with 200 (None otherwise). Read up to
    MAX_DOCUMENT bytes; raises ValueError for a larger document, one that is not a JSON object (nested too
    deeply to parse included) or a `url` that is not one; `httpx2.HTTPError` when no answer came."""
    try:
        async with client.stream("GET", url, headers={**(headers or {}), "accept": "application/json"}) as response:
            if response.status_code != 200:
                return response.status_code, None
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_DOCUMENT:
                    raise ValueError(f"the document is larger than {MAX_DOCUMENT} bytes")
                chunks.append(chunk)
    except httpx2.InvalidURL as exc:
        raise ValueError(f"not a URL ({exc})") from None
    try:
        document = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # RecursionError: arrays or objects nested thousands deep
        raise ValueError("the answer is not JSON (or is nested too deeply)") from None
    if not isinstance(document, dict):
        raise ValueError("the answer is not a JSON object")
    if _depth(document) > MAX_DEPTH:
        raise ValueError(f"the document is nested more than {MAX_DEPTH} deep")
    return 200, document


def _depth(value: Any) -> int:
    """How deep JSON arrays and objects nest in `value` (a scalar: 0), without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            pending.extend((child, level + 1) for child in children)
    return deepest


async def _get_json(client: httpx2.AsyncClient, url: str) -> dict[str, Any]:
    """The JSON object at `url`; raises `_Unreachable` when no answer came, ValueError for any other failure."""
    try:
        status, document = await fetch_json(client, url)
    except httpx2.TransportError as exc:
        raise _Unreachable(f"the key set at {url} could not be reached ({str(exc) or type(exc).__name__})") from None
    except (httpx2.HTTPError, ValueError) as exc:
        raise ValueError(f"{url}: {exc}") from None
    if document is None:
        raise ValueError(f"{url} answered {status}")
    return document


class TokenValidator:
    """Validates bearer JWTs for one `gateway.auth.jwt` setting (see the module docstring)."""

    def __init__(self, settings: Jwt) -> None:
        self.settings = settings
        self.keys = KeySet(settings)

    async def validate(self, token: str, audiences: Collection[str], *, below: str | None = None) -> Identity:
        """The identity a valid token names: its `aud` (a string or a list) must name one of `audiences`, or
        `below` or a URL under it (`below` + "/..."), unless `jwt.audience` is set, which replaces both.
        Raises `TokenRefused` (401) for a malformed, bad or expired token or one for another audience,
        `forbidden` (403) when it lacks `jwt.required_scopes`, `KeySetUnavailable` (503) when no keys are
        held."""
        settings = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenRefused("the bearer token is not a JWT (its header is not base64url JSON)", _MALFORMED) from None
        except _LIBRARY_ERRORS as exc:  # InvalidTokenError: a `kid` that is not a string, a `crit` it cannot honour
            raise TokenRefused(f"the token's header is refused: {_said(exc)}", _MALFORMED) from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in settings.algorithms:
            raise TokenRefused(
                f"the token's algorithm {_shown(algorithm)} is not accepted (gateway.auth.jwt.algorithms:"
                f" {', '.join(settings.algorithms)})",
                "the algorithm is not accepted",
            )
        kid = header.get("kid")  # a string: PyJWT refuses any other
        key = await self.keys.key(kid if isinstance(kid, str) else None, algorithm)
        exact = list(settings.audience) or list(audiences)
        parent = None if settings.audience else below
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=settings.issuer,
                leeway=settings.leeway,
                options={"require": ["exp", "iss", "aud"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("the token has expired", "the token has expired") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused(f"the token is not from {settings.issuer}", "the token is from another issuer") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("the token is not valid yet ('nbf' or 'iat')", "the token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"the token has no {exc.claim!r} claim", "the token lacks a required claim") from None
        except _LIBRARY_ERRORS as exc:
            raise TokenRefused(f"the token is invalid: {_said(exc)}", "the token is invalid") from None
        if not _audience_matches(claims.get("aud"), exact, parent):
            raise TokenRefused(
                f"the token is not for this server (its 'aud' must name {parent or exact[0]})",
                "the token is for another resource",
            )
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise TokenRefused("the token has no 'sub' claim", "the token lacks a required claim")
        scopes = _names(claims.get(settings.scopes_claim))
        missing = [s for s in settings.required_scopes if s not in scopes]
        if missing:
            raise forbidden(f"the token lacks the scope {missing[0]!r} (gateway.auth.jwt.required_scopes)")
        return Identity(
            subject, _public_claims(claims), kind="jwt", groups=_names(claims.get(settings.groups_claim)), scopes=scopes
        )


def _shown(value: Any) -> str:
    """A value from a token, for a message: its repr, cut short and printable (it is the caller's text)."""
    text = repr(value)
    return _said(text[:80] + "..." if len(text) > 80 else text)


def _said(error: BaseException | str) -> str:
    """What a library said about a token, for a message: one printable line of at most 200 characters."""
    text = str(error)[:200]
    return "".join(c if c.isprintable() else "?" for c in text)


def _audience_matches(aud: Any, exact: Collection[str], below: str | None) -> bool:
    """Whether a token's `aud` (RFC 7519 section 4.1.3: a string or a list of strings) names one of `exact`,
    or `below` or a URL under it."""
    names = [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
    for name in names:
        if name in exact:
            return True
        if below is not None and (name == below or name.startswith(below.rstrip("/") + "/")):
            return True
    return False


def _names(value: Any) -> frozenset[str]:
    """A claim holding names: a JSON list of strings, or one space-separated string (RFC 8693 `scope`)."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _public_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The claims an identity keeps, when they have their standard shapes (strings, numbers, a list of
    audiences): nothing nested rides along into logs and audit lines."""
    kept: dict[str, Any] = {}
    for name in ("iss", "sub", "aud", "exp", "iat", "client_id", "azp"):
        value = claims.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            kept[name] = value
        elif name == "aud" and isinstance(value, list):
            kept[name] = [a for a in value if isinstance(a, str)]
    return kept
