"""The gateway's own authenticator, built from `gateway.auth`: static API keys and bearer JWTs.

A caller sends one credential: `Authorization: Bearer <key or token>` or `X-API-Key: <key>`; a browser
(which cannot send a bearer credential when it opens a page) may send an API key as the password of HTTP
Basic authentication (RFC 7617; the user name is not checked), and a browser asking for the status page
`/` without credentials is challenged with `Basic`, so it asks its user for them. A key is
hashed (SHA-256) and compared with every configured key's hash in constant time (`hmac.compare_digest`, all
of them, so the time says nothing of which or how much matched). What is hashed is the header's bytes as
they came (or the Basic password's, RFC 7617 UTF-8), and a configured `key` is hashed as UTF-8, so a key
beyond ASCII matches when the client sends it UTF-8 encoded. A bearer value shaped like a JWT is
validated by `tokens.TokenValidator` when `gateway.auth.jwt` is set. The audience a token must name is the
URL of the server it calls at the gateway (`urls.server_url`), or the gateway's base for the status routes.

A token is for a server when its `aud` names the server's URL at the gateway, `<base>/<id>`, or a URL below
it (`<base>/<id>/mcp`, `<base>/<id>/sse`: RFC 8707 resources are hierarchical, as the MCP SDK's client
treats them); the status routes take `<base>` itself. `jwt.audience` replaces both with fixed values.

Every 401, and a 403 for a missing scope, carries `WWW-Authenticate: Bearer` with `error` and, for a refused
token, `error_description` (RFC 6750 section 3: the token validator's short fixed text, as "the token has
expired"), and, when JWTs are accepted,
`resource_metadata` pointing at this server's protected-resource metadata (RFC 9728 section 5.1; the MCP
authorization spec's discovery; `oauth.py` serves it): the document of `<base>/<id>/mcp` for a request on
`/<id>/mcp`, of `<base>/<id>` for any other path of the server, so that the `resource` a client reads there
is its own URL or a parent of it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Sequence

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import Scope, header
from mcpfleet.gateway.policy.auth import PROBES, Credentials, Identity, forbidden, unauthorized
from mcpfleet.gateway.policy.tokens import TokenRefused, TokenValidator
from mcpfleet.gateway.urls import metadata_url, server_url
from mcpfleet.registry.model import RESERVED_IDS, Auth
from mcpfleet.registry.model import Gateway as GatewaySettings

STATUS_SEGMENTS = RESERVED_IDS | {""}  # the gateway's own routes: no server's audience
OPEN_PATHS = {"metrics": ("/metrics",), "servers": ("/servers", "/")}


class GatewayAuthenticator:
    """`authenticate(scope)` for one `gateway.auth` setting. `base(scope)`: the gateway's public base URL
    for a request (`urls.base_url` with the settings in force)."""

    def __init__(self, auth: Auth, base: Callable[[Scope], str], validator: TokenValidator | None = None) -> None:
        self.auth = auth
        self.base = base
        self.keys = [(key.name, bytes.fromhex(str(key.sha256)), frozenset(key.groups)) for key in auth.api_keys]
        self.validator = validator

    def _challenge(self, scope: Scope, error: str | None = None, *extra: str) -> str:
        parts = ['Bearer realm="mcpfleet"']
        if error:
            parts.append(f'error="{error}"')
        parts.extend(extra)
        server = _server_id(scope)
        if self.validator is not None and server is not None:
            rest = str(scope.get("path", "/"))[len(server) + 1 :]
            url = metadata_url(self.base(scope), server, "/mcp" if rest == "/mcp" else "")
            parts.append(f'resource_metadata="{url}"')
        return ", ".join(parts)

    def accepts(self, identity: Identity) -> bool:
        """Whether a caller let in earlier (by this or an older `gateway.auth`) would be let in now: its API
        key is still configured under the same name with the same groups, or its token's issuer is still the
        one trusted. For connections that outlive their handshake (`handshake.py`)."""
        if identity.kind == "key":
            return any(
                name == identity.subject
                and hmac.compare_digest(digest, identity.credential)
                and groups == identity.groups
                for name, digest, groups in self.keys
            )
        if identity.kind == "jwt":  # its signature, audience and expiry were checked; the expiry is Handshake's
            jwt = self.auth.jwt
            return (
                jwt is not None
                and identity.claims.get("iss") == jwt.issuer
                and set(jwt.required_scopes) <= identity.scopes
            )
        return False

    def insufficient_scope(self, scope: Scope, scopes: Sequence[str] = ()) -> str:
        """The `WWW-Authenticate` of a 403 a token with more scopes would lift (RFC 6750 section 3.1): its
        `scope` lists `jwt.required_scopes`, then `scopes` (what an access rule wants), each once, so a client
        that steps up asks for all it needs at once."""
        required = self.auth.jwt.required_scopes if self.auth.jwt else ()
        wanted = " ".join(dict.fromkeys((*required, *scopes)))
        return self._challenge(scope, "insufficient_scope", f'scope="{wanted}"')

    async def authenticate(self, scope: Scope) -> Identity:
        try:
            value = _credential(scope)
        except GatewayError as error:
            if error.status == 401:
                raise unauthorized(error.message, self._challenge(scope, "invalid_request")) from None
            raise
        if value is None:
            kinds = " or ".join(k for k, on in (("an API key", self.keys), ("a bearer token", self.validator)) if on)
            page = self.keys and scope.get("path") == "/" and "text/html" in (header(scope, b"accept") or "")
            challenge = 'Basic realm="mcpfleet", charset="UTF-8"' if page else self._challenge(scope)
            raise unauthorized(
                f"this gateway needs credentials: {kinds} (Authorization: Bearer ...; the mcpfleet CLI sends"
                " $MCPFLEET_TOKEN)",
                challenge,
            )
        if self.keys:
            digest = hashlib.sha256(value).digest()
            found: tuple[str, bytes, frozenset[str]] | None = None
            for key in self.keys:  # every key is compared: the time does not tell which matched
                if hmac.compare_digest(digest, key[1]):
                    found = key
            if found is not None:
                return Identity(found[0], kind="key", groups=found[2], credential=found[1])
        token = _ascii(value)  # a JWT is ASCII (base64url segments and dots)
        if self.validator is not None and token is not None and token.count(".") == 2:
            base = self.base(scope)
            server = _server_id(scope)
            audiences, below = ([base, base + "/"], None) if server is None else ([], server_url(base, server, ""))
            try:
                return await self.validator.validate(token, audiences, below=below)
            except TokenRefused as error:
                described = f'error_description="{error.description}"'
                raise unauthorized(error.message, self._challenge(scope, "invalid_token", described)) from None
            except GatewayError as error:
                if error.status == 403:
                    raise forbidden(error.message, self.insufficient_scope(scope)) from None
                raise
        what = "API key" if self.keys and not self.validator else "credential"
        raise unauthorized(f"the {what} is not valid here", self._challenge(scope, "invalid_token"))


def open_door(auth: Auth, bind_host: str, where: str = "gateway.host") -> str | None:
    """Why `auth` may not serve on `bind_host` (None: it may): no credentials asked, a bind beyond this
    machine, and not `auth.anonymous` on purpose (Plan 9.16). `where`: what set the bind, for the message."""
    if not auth.open_door(bind_host):  # the rule the registry's load warns with (registry/loader.py)
        return None
    try:
        ipaddress.ip_address(bind_host.strip("[]"))
        beyond = "beyond this machine"
    except ValueError:  # a name: what it resolves to can change, so only `localhost` counts as this machine
        beyond = "a name other than localhost (write 127.0.0.1 to stay on this machine)"
    return (
        f"the gateway would listen on {bind_host} ({where}), {beyond}, and asks callers for no"
        " credentials: set gateway.auth.api_keys or gateway.auth.jwt, or gateway.auth.anonymous: true if"
        " something in front of it authenticates (docs/security.md)"
    )


def credentials(auth: Auth, base: Callable[[Scope], str], validator: TokenValidator | None) -> Credentials | None:
    """The `Credentials` for `gateway.auth`; None when it asks for none (anonymous callers)."""
    if not auth.required:
        return None
    open_paths = PROBES.union(*(OPEN_PATHS[name] for name in auth.open))
    return Credentials(GatewayAuthenticator(auth, base, validator), open_paths)


def audience_notice(gateway: GatewaySettings, loopback: bool) -> str | None:
    """The warning for JWTs whose audience comes from `Host` on a bind beyond loopback: there any IP literal
    passes the Host rule, so a caller who sends `Host: <ip>` makes `http://<ip>/<id>` the audience, and a
    token minted for another resource at that URL is accepted. None when `gateway.public_url` is set, JWTs
    are not, `jwt.audience` fixes the audiences, or the bind is loopback. (Section 9.16: warned at start and
    on each reload, not refused.)"""
    if gateway.auth.jwt is None or gateway.public_url is not None or loopback or gateway.auth.jwt.audience:
        return None
    return (
        "gateway.auth.jwt is set without gateway.public_url on a bind beyond loopback: token audiences are built"
        " from each request's Host header, which any IP address passes; set gateway.public_url to the URL"
        " clients use"
    )


def _credential(scope: Scope) -> bytes | None:
    """The credential a request carries, as the bytes that came (none: None); raises 400 for two
    credential headers, 401 for an Authorization header of another scheme or malformed Basic credentials."""
    found: list[tuple[bytes, bytes]] = [(k, v) for k, v in scope["headers"] if k in (b"authorization", b"x-api-key")]
    if not found:
        return None
    if len(found) > 1:
        names = sorted({k.decode() for k, _ in found})
        raise GatewayError(400, -32600, f"the request carries {len(found)} credentials ({', '.join(names)}): send one")
    name, raw = found[0]
    value = raw.strip()
    if name == b"authorization":
        scheme, _, token = value.partition(b" ")
        if scheme.lower() == b"basic" and token.strip():
            return _basic_password(token.strip())
        if scheme.lower() != b"bearer" or not token.strip():
            raise unauthorized(
                "the Authorization header must be 'Bearer <key or token>' (or Basic with an API key as the password)",
                'Bearer realm="mcpfleet"',
            )
        value = token.strip()
    return value or None


def _basic_password(encoded: bytes) -> bytes | None:
    """The password of RFC 7617 credentials (`base64(user:password)`), as its bytes (UTF-8 by RFC 7617's
    `charset`, which is how a configured key is hashed)."""
    malformed = unauthorized("the Basic credentials are not base64 of 'user:password'", 'Bearer realm="mcpfleet"')
    try:
        user_pass = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise malformed from None
    _, colon, password = user_pass.partition(b":")
    if not colon:
        raise malformed
    return password or None


def _ascii(value: bytes) -> str | None:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def _server_id(scope: Scope) -> str | None:
    """The server id a request's path names, None for the gateway's own routes."""
    segment = str(scope.get("path", "/")).lstrip("/").split("/", 1)[0]
    return None if segment in STATUS_SEGMENTS else segment
