"""The gateway: one ASGI app in front of every server in the registry.

`async with Gateway(registry, ...) as app:` owns everything that lives longer than a request (the task
group that supervises stdio processes, the idle-session reaper, the registry watcher) and serves `app`
with any ASGI server. The hot path is plain ASGI: the policy layers (`gateway/policy/`: CORS, Host and
Origin, the body limit, authentication), one dict lookup on the first path segment, then the server's
runtime. Status and admin endpoints are answered here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.abc

from mcpfleet import __version__, masking
from mcpfleet.deploy.docker.spec import spec_digest
from mcpfleet.deploy.kubernetes.controller import place
from mcpfleet.errors import GatewayError, RegistryError, UsageError
from mcpfleet.gateway import logs, oauth, page, status
from mcpfleet.gateway.asgi import App, ErrorBoundary, Receive, Scope, Send, header, read_body, respond
from mcpfleet.gateway.deployments import Deployments, backend, deployed, served_form
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.identity import principal_of
from mcpfleet.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mcpfleet.gateway.metrics import Metrics
from mcpfleet.gateway.policy import (
    ANONYMOUS,
    GRANT,
    IDENTITY,
    PEER,
    Access,
    Authentication,
    Authenticator,
    BodyLimit,
    Cors,
    Credentials,
    HostOriginGuard,
    Identity,
    Policy,
    Quotas,
    TokenValidator,
    TrustedProxies,
    check_path,
    credentials,
    may_open_session,
    open_door,
    session_owner,
)
from mcpfleet.gateway.policy.access import EVERYTHING, AccessDenied, Grant
from mcpfleet.gateway.policy.context import Correlation
from mcpfleet.gateway.policy.credentials import GatewayAuthenticator, audience_notice
from mcpfleet.gateway.policy.handshake import Handshake
from mcpfleet.gateway.runtime import ServerRuntime
from mcpfleet.gateway.sealing import Sealer
from mcpfleet.gateway.session import SessionTable
from mcpfleet.gateway.status import GatewayView
from mcpfleet.gateway.urls import base_url
from mcpfleet.registry import Registry, load_registry
from mcpfleet.registry.model import (
    STATUS_PATHS,
    Auth,
    DockerServer,
    HttpServer,
    KubernetesServer,
    Server,
    StdioServer,
)
from mcpfleet.registry.model import Gateway as GatewaySettings
from mcpfleet.replicas import ReplicaSource

log = logging.getLogger("mcpfleet.gateway")

NOTHING_TO_RELOAD = (
    "nothing to reload: this gateway serves no registry file (the built-in demo registry, or an adapter)"
)
ENTRY_FAILED = -32018  # the entry is in the registry but could not be loaded (an unset ${VAR}): 503
REAP_INTERVAL = 5.0
POOL_INTERVAL = 1.0


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes; None if it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Gateway:
    def __init__(
        self,
        registry: Registry,
        *,
        registry_path: str | Path | None = None,
        host: str | None = None,
        loaded_digest: str | None = None,
        replica_sources: Mapping[str, ReplicaSource] | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        """`replica_sources`: server id -> where its replicas come from, in place of the entry's `endpoints`
        (discovery; see mcpfleet.replicas). `authenticator`: who may call (policy/auth.py), in place of
        `gateway.auth`. Raises `UsageError` when the registry asks for no credentials on a bind that is not
        loopback without `gateway.auth.anonymous` (section 9.16)."""
        masking.install(registry.secrets)  # `${VAR}` values: masked in log lines and errors from here on
        self._snapshot = registry
        self._file_registry = registry  # the registry file's; `_snapshot` adds the servers discovery found
        self._discovered: dict[str, Server] = {}
        for warning in registry.warnings:  # accepted but ignored: client-only keys, settings nothing reads
            log.warning("registry: %s", warning)
        self.replica_sources = dict(replica_sources or {})
        self.registry_path = Path(registry_path) if registry_path is not None else None
        # What the registry file held at the last load or reload attempt: a watcher reloads only on a change.
        # `loaded_digest`: taken before `registry` was read, so that a change made since then is seen.
        if loaded_digest is None and self.registry_path is not None:
            loaded_digest = file_digest(self.registry_path)
        self.loaded_digest = loaded_digest
        settings = registry.gateway
        self.sessions = SessionTable(Sealer.from_settings(settings.session_keys, settings.session_max_age))
        self.quotas = Quotas(self.sessions)  # gateway.limits: rates and session slots (policy/quotas.py)
        self._bind_host = host or registry.gateway.host
        self.policy = _host_policy(self._bind_host, registry.gateway)
        self._fixed_credentials = Credentials(authenticator, consumes=False) if authenticator is not None else None
        if self._fixed_credentials is None and (problem := open_door(registry.gateway.auth, self._bind_host)):
            raise UsageError(problem)
        self._validator: TokenValidator | None = None
        self.credentials = self._credentials(registry.gateway.auth)
        self.access = Access(registry.gateway.access)
        for notice in self.policy.notices():
            log.warning("%s", notice)
        if jwt_notice := audience_notice(registry.gateway, self.policy.loopback):
            log.warning("%s", jwt_notice)
        self.reload_error: list[str] = []
        self.reloads = {"ok": 0, "rejected": 0}
        self.generation = 1
        self._runtimes: dict[str, ServerRuntime] = {}
        # Runtimes of servers that left the registry (or changed type or transport), serving the sessions they
        # hold until those end or the entry's `timeouts.drain` passes.
        self._draining: dict[str, list[ServerRuntime]] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._reload_lock = anyio.Lock()
        self.ready = False
        self.metrics = Metrics(self.status, lambda: self.ready)
        self._stack = self._layers()
        # The Docker backend of `docker` entries; its engine connection is made on first use.
        self.deployments = Deployments()

    @property
    def snapshot(self) -> Registry:
        return self._snapshot

    @property
    def runtimes(self) -> dict[str, ServerRuntime]:
        return self._runtimes

    # --- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._reap_idle_sessions)
        self._task_group.start_soon(self.deployments.run)
        self._task_group.start_soon(self._maintain_pools)
        if any(isinstance(s, DockerServer) and s.stdio for s in self._snapshot.servers.values()):
            self._task_group.start_soon(self._collect_orphans)
        if self._snapshot.gateway.discovery == "labels":
            self._task_group.start_soon(self._discover_labelled)
        self._prewarm()
        self.ready = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.ready = False
        assert self._task_group is not None
        try:
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as closing:
                    for runtime in [*self._runtimes.values(), *itertools.chain(*self._draining.values())]:
                        closing.start_soon(runtime.aclose)
            self._runtimes.clear()
            self._draining.clear()
            with anyio.CancelScope(shield=True):
                await self.deployments.aclose()
        finally:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)

    async def _collect_orphans(self) -> None:
        try:
            await self.deployments.collect_orphans()
        except Exception as exc:  # clean-up of leftovers must never take the gateway down
            log.warning("stdio containers left by a crashed process could not be collected: %s", exc)

    async def _discover_labelled(self) -> None:
        """`gateway.discovery: labels`: serve the labelled Services no entry lists (deploy/kubernetes/labelled.py)."""
        from mcpfleet.deploy.kubernetes.labelled import Labelled, LabelledServices

        namespaces = self._snapshot.gateway.discovery_namespaces
        watcher = LabelledServices(self.deployments.cluster, namespaces, self.deployments.slice_hub)
        sources: dict[str, ReplicaSource] = {}

        def found(servers: dict[str, Labelled]) -> None:
            # A server whose Service changed gets a new runtime (following the new source): out, then in.
            moved = {i for i, labelled in servers.items() if i in sources and sources[i] is not labelled.source}
            if moved:
                self._discovered = {i: e for i, e in self._discovered.items() if i not in moved}
                self._swap(self._file_registry)
            for server_id in set(sources) - set(servers):
                self.replica_sources.pop(server_id, None)
            sources.clear()
            for server_id, labelled in servers.items():
                sources[server_id] = self.replica_sources[server_id] = labelled.source
            self._discovered = {server_id: labelled.entry for server_id, labelled in servers.items()}
            log.info("discovered servers (labelled Services): %s", sorted(servers) or "none")
            self._swap(self._file_registry)

        while True:
            try:
                await watcher.run(found)
            except Exception as exc:  # no API configuration, or a fault of ours: the gateway goes on without it
                log.warning("discovery of labelled Services failed (%s); trying again in 5 s", exc)
                await anyio.sleep(5)

    async def _reap_idle_sessions(self) -> None:
        while True:
            idle_after = self._snapshot.gateway.session_idle_timeout  # the registry in force, reloads included
            await anyio.sleep(min(REAP_INTERVAL, idle_after / 2))
            if expired := await self.sessions.expire(idle_after):
                servers = sorted({session.server_id for session in expired})
                log.info("%d sessions expired after %g s idle (servers: %s)", len(expired), idle_after, servers)

    def _prewarm(self) -> None:
        """Start the runtimes that have work before the first request: warm processes (`pool.min`) and
        active health checks (`health.active`)."""
        for server_id, server in self._snapshot.servers.items():
            spawns = isinstance(server, StdioServer | HttpServer) and bool(server.command)
            spawns = spawns or (isinstance(server, DockerServer) and server.stdio)
            warm = spawns and isinstance(server, StdioServer | HttpServer | DockerServer) and server.pool.min > 0
            probed = isinstance(server, HttpServer | DockerServer) and server.health.active
            # A source is followed from the start; deployed replicas are kept from the start.
            if warm or probed or deployed(server) or server_id in self.replica_sources:
                self._runtime(server_id)

    async def _maintain_pools(self) -> None:
        """Once a second: replace warm processes that died, stop warm ones idle past `pool.idle_timeout`,
        forget replicas whose drain ended."""
        while True:
            await anyio.sleep(POOL_INTERVAL)
            now = time.monotonic()
            for runtime in list(self._runtimes.values()):
                try:
                    await runtime.maintain(now)
                except Exception:  # upkeep of one server must not stop the others', nor the gateway
                    log.exception("server %r: upkeep failed; it runs again in %g s", runtime.server.id, POOL_INTERVAL)

    def start_soon(self, fn: Any, *args: Any) -> None:
        """Start `fn` in the gateway's task group, with no request's log fields (it may outlive the request,
        a reload by /admin/reload say, that started it: `logs.detached`)."""
        assert self._task_group is not None
        self._task_group.start_soon(logs.detached(fn), *args)

    # --- reload ----------------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Load the registry file again. An invalid file leaves the one in force; returns whether it loaded."""
        if self.registry_path is None:
            log.info(NOTHING_TO_RELOAD)
            return False
        async with self._reload_lock:
            self.loaded_digest = await anyio.to_thread.run_sync(file_digest, self.registry_path)
            try:
                # `running`: an unset ${VAR} is advised as a restart, in the problems and in `failed` entries.
                fresh = await anyio.to_thread.run_sync(partial(load_registry, self.registry_path, running=True))
            except RegistryError as exc:
                self.reload_error = [str(p) for p in exc.problems]
                self.reloads["rejected"] += 1
                # One line (a text log is read line by line): the problems joined, each already located.
                log.error("registry reload rejected; the registry in force stays: %s", "; ".join(self.reload_error))
                return False
            except Exception as exc:  # a fault of ours: the watcher, and the gateway, must outlive it
                self.reload_error = [f"{self.registry_path}: the registry could not be loaded ({exc!r})"]
                self.reloads["rejected"] += 1
                log.exception("registry reload failed; the registry in force stays")
                return False
            if self._fixed_credentials is None and (problem := open_door(fresh.gateway.auth, self._bind_host)):
                self.reload_error = [f"{self.registry_path}: gateway.auth: {problem}"]
                self.reloads["rejected"] += 1
                log.error("registry reload rejected; the registry in force stays: %s", problem)
                return False
            self.apply(fresh)
            return True

    def apply(self, fresh: Registry) -> None:
        """Swap in a new snapshot. Changed entries apply to their live runtimes without ending a session
        (`ServerRuntime.configure`); removed ones, and ones whose type or transport changed, drain. `fresh` is
        the registry file's; servers discovery found are added under ids the file does not use."""
        self._file_registry = fresh
        for warning in fresh.warnings:
            log.warning("registry: %s", warning)
        self.reload_error = []
        self.reloads["ok"] += 1
        self._swap(fresh)

    def _swap(self, fresh: Registry) -> None:
        """Make `fresh` (the registry file's, plus the servers discovery found) the snapshot in force."""
        extra = {i: e for i, e in self._discovered.items() if i not in fresh.servers and i not in fresh.failed}
        if extra:
            fresh = fresh.model_copy(update={"servers": {**extra, **fresh.servers}})
        old = self._snapshot
        masking.install(fresh.secrets | old.secrets)  # the old ones for the processes that still drain
        self._snapshot = fresh
        self.policy = _host_policy(self._bind_host, fresh.gateway)
        for notice in self.policy.notices():
            log.warning("%s", notice)
        if jwt_notice := audience_notice(fresh.gateway, self.policy.loopback):
            log.warning("%s", jwt_notice)
        if fresh.gateway.auth != old.gateway.auth:
            if old.gateway.auth.required and not fresh.gateway.auth.required and self._fixed_credentials is None:
                log.warning(
                    "gateway.auth asks for no credentials any more: every caller that reaches %s is let in",
                    self._bind_host,
                )
            self.credentials = self._credentials(fresh.gateway.auth)
        if fresh.gateway.access != old.gateway.access:
            self.access = Access(fresh.gateway.access)
        logs.reconfigure(old.gateway, fresh.gateway)
        self.generation += 1
        size = fresh.gateway.max_message_bytes
        for server_id, runtime in list(self._runtimes.items()):
            entry = fresh.servers.get(server_id)
            before = old.servers.get(server_id)
            if entry is not None and backend(entry) != backend(before):
                entry = None  # into or out of a backend: the runtime drains and another takes the entry
            elif (
                isinstance(entry, KubernetesServer)
                and isinstance(before, KubernetesServer)
                and place(entry) != place(before)
            ):
                entry = None  # its objects or replicas are elsewhere now: a new runtime watches there
            elif (
                isinstance(entry, DockerServer)
                and entry.stdio
                and isinstance(before, DockerServer)
                and spec_digest(entry) != spec_digest(before)
            ):
                entry = None  # other containers: new sessions get a new runtime, the old one drains
            if entry is not None and runtime.deployment is not None and entry != before:
                if deployed(entry):
                    runtime.deployment.configure(entry)
                else:  # no longer deployed: the runtime drains and its containers go
                    entry = None
            if entry is None and runtime.deployment is not None:
                runtime.deployment.removed()  # what a gateway created for it goes when its runtime ends
            server = served_form(entry) if entry is not None else None
            if server is not None and (server == runtime.server and size == runtime.max_message_bytes):
                continue
            try:
                applied = server is not None and runtime.configure(server, size)
            except Exception:  # a fault here must not take the gateway down: a new runtime takes the entry
                log.exception("server %r: the new entry could not be applied in place; it starts afresh", server_id)
                applied = False
            if not applied:
                del self._runtimes[server_id]
                self._drain(runtime)
        self._prewarm()
        added = sorted(set(fresh.servers) - set(old.servers))
        removed = sorted(set(old.servers) - set(fresh.servers))
        changed = sorted(i for i in set(fresh.servers) & set(old.servers) if fresh.servers[i] != old.servers[i])
        log.info(
            "servers in force (generation %d): %d, added %s, changed %s, removed %s",
            self.generation,
            len(fresh.servers),
            added or "none",
            changed or "none",
            removed or "none",
        )

    def _drain(self, runtime: ServerRuntime) -> None:
        server_id = runtime.server.id
        self._draining.setdefault(server_id, []).append(runtime)
        log.info(
            "server %r: its open sessions are served until they end or %g s pass (timeouts.drain)",
            server_id,
            runtime.server.timeouts.drain,
        )

        async def drain() -> None:
            try:
                await runtime.drain(runtime.server.timeouts.drain)
            except Exception:  # a drain that fails must not take the gateway down: stop what is left
                log.exception("server %r: draining failed; stopping its sessions and processes now", server_id)
                with anyio.CancelScope(shield=True):
                    await runtime.aclose()
            finally:
                left = self._draining.get(server_id, [])
                if runtime in left:
                    left.remove(runtime)
                if not left:
                    self._draining.pop(server_id, None)

        self.start_soon(drain)

    def _runtime(self, server_id: str) -> ServerRuntime | None:
        """The runtime of `server_id` in the registry in force (made on first use); None if it is not there.
        A request that began under an older registry is served by the runtime in force, which a reload
        updated in place."""
        server = self._snapshot.servers.get(server_id)
        if server is None:
            return None
        runtime = self._runtimes.get(server_id)
        if runtime is None:
            assert self._task_group is not None
            deployment = spawn = None
            if isinstance(server, DockerServer | KubernetesServer) and deployed(server):
                deployment = self.deployments.controller(server)
                for old in self._draining.get(server_id, []):  # the id came back: one controller keeps them
                    if old.deployment is not None:
                        old.hand_over(deployment)
            elif isinstance(server, DockerServer):
                spawn = self.deployments.containers(server, lambda: self._snapshot.servers.get(server_id))
            runtime = ServerRuntime(
                served_form(server),
                self.sessions,
                self._task_group,
                max_message_bytes=self._snapshot.gateway.max_message_bytes,
                source=self.replica_sources.get(server_id),
                deployment=deployment,
                spawn=spawn,
            )
            self._runtimes[server_id] = runtime
        return runtime

    def _draining_runtime(self, server_id: str, scope: Scope) -> ServerRuntime | None:
        """A draining runtime of `server_id` that holds the session this request names, if any."""
        token = (
            header(scope, b"mcp-session-id")
            or parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_id", [None])[0]
        )
        if token is None:
            return None
        with contextlib.suppress(GatewayError):
            session = self.sessions.get(token, server_id, session_owner(scope))
            for runtime in self._draining.get(server_id, []):
                if session is not None and runtime.owns(session):
                    return runtime
        return None

    # --- ASGI ------------------------------------------------------------------------------------------

    def _credentials(self, auth: Auth) -> Credentials | None:
        """The credentials `auth` asks for; the JWT key set is kept while its settings stay the same."""
        if self._fixed_credentials is not None:
            return self._fixed_credentials
        if auth.jwt is None:
            self._validator = None
        elif self._validator is None or self._validator.settings != auth.jwt:
            self._validator = TokenValidator(auth.jwt)
        return credentials(auth, self.base_url, self._validator)

    def _replica_urls(self, server_id: str) -> list[str]:
        """The URLs of a server's replicas in service (none before its runtime starts)."""
        runtime = self._runtimes.get(server_id)
        return [r.url for r in runtime.balancer.replicas] if runtime is not None and runtime.balancer else []

    def base_url(self, scope: Scope) -> str:
        """The gateway's URL as this request reached it (`urls.base_url`, `gateway.public_url` first)."""
        return base_url(scope, self._snapshot.gateway.public_url, self._bind_host)

    def _layers(self) -> App:
        """The request policy around the router, built once; each layer reads the settings in force."""
        app: App = Authentication(self._endpoint, lambda: self.credentials)
        app = BodyLimit(app, lambda: self._snapshot.gateway.max_message_bytes)
        app = HostOriginGuard(app, lambda: self.policy)
        app = TrustedProxies(app, lambda: self._snapshot.gateway.trusted_proxies)
        return Correlation(Cors(ErrorBoundary(app, self.metrics.error), lambda: self.policy))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        else:
            await self._stack(scope, receive, send)

    async def _endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The router, under the policy layers: a `GatewayError` raised here is answered by `ErrorBoundary`."""
        if scope["type"] == "http":
            await self._route(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    def _grant(self, scope: Scope, server_id: str) -> Grant:
        """What the caller may do on `server_id` (`gateway.access`); a 403 otherwise, challenging for the
        scopes that would lift it when a token could (`AccessDenied.scopes`)."""
        try:
            return self.access.check(scope[IDENTITY], server_id)
        except AccessDenied as denied:
            authenticator = self._authenticator()
            if denied.scopes and authenticator is not None:
                denied.headers["WWW-Authenticate"] = authenticator.insufficient_scope(scope, denied.scopes)
            raise

    def _authenticator(self) -> GatewayAuthenticator | None:
        """The gateway's own authenticator in force (`gateway.auth`); None without credentials, or with one
        plugged in by code, whose decisions the gateway cannot repeat."""
        authenticator = self.credentials.authenticator if self.credentials is not None else None
        return authenticator if isinstance(authenticator, GatewayAuthenticator) else None

    def _handshake(self, scope: Scope, server_id: str) -> Handshake:
        """The handshake's decision for a connection that outlives it (policy/handshake.py)."""
        jwt = self._snapshot.gateway.auth.jwt
        return Handshake(
            scope[IDENTITY],
            scope[GRANT],
            server_id,
            lambda: self.generation,
            self._lapsed,
            leeway=jwt.leeway if jwt is not None else 0.0,
        )

    def _lapsed(self, identity: Identity, grant: Grant, server_id: str) -> str | None:
        """Why a caller let in with `grant` on `server_id` would not be now (None: it would, the same)."""
        authenticator = self._authenticator()
        if authenticator is not None and (identity.kind == "anonymous" or not authenticator.accepts(identity)):
            return "the credential is no longer accepted (gateway.auth changed): connect again"
        if self.access.grant(identity, server_id) != grant:
            return "what it may use changed (gateway.access): connect again"
        return None

    def _target(self, scope: Scope) -> tuple[bytes, list[str]]:
        """The raw path and its segments, once it passed the path escape checks (Host and Origin have)."""
        raw_path: bytes = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0]
        return raw_path, check_path(raw_path)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Refusals are raised before `websocket.connect` is taken: `ErrorBoundary` refuses the handshake.
        _, segments = self._target(scope)
        runtime = self._runtime(segments[0]) if len(segments) == 2 else None
        if runtime is None or segments[1] != "ws":
            raise GatewayError(404, -32601, "WebSocket endpoints are /<server-id>/ws")
        if "mcp" not in scope.get("subprotocols", []):
            raise GatewayError(400, -32600, "the WebSocket subprotocol 'mcp' is required")
        scope[GRANT] = self._grant(scope, segments[0])
        limits = self._snapshot.gateway.limits
        self.quotas.admit(scope, segments[0], limits)
        with self.quotas.session_slot(scope, segments[0], limits, send):  # the connection is the session
            await receive()  # websocket.connect
            # Taken again after the await, from the registry in force: a reload may have retired the first one.
            runtime = self._runtime(segments[0])
            if runtime is None:
                await send({"type": "websocket.close", "code": 1011, "reason": "the server left the registry"})
                return
            handshake = self._handshake(scope, segments[0])
            await runtime.websocket(
                self.quotas.metered(handshake.websocket(receive, send), send, scope, segments[0], limits),
                send,
                self._snapshot.gateway.max_message_bytes,
                scope=scope,
                logging_settings=self._snapshot.gateway.logging,
                max_duration=limits.max_stream_duration,
            )

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path, segments = self._target(scope)
        first = segments[0]
        if len(segments) == 1 and first in STATUS_PATHS:
            await self._status(first, scope, send)
            return
        if segments == [""] and scope["method"] in ("GET", "HEAD"):  # the status page, or its JSON
            await page.serve(scope, send, lambda: self._page_document(scope))
            return
        if first == "admin":
            await self._admin(scope, segments, receive, send)
            return
        if first == ".well-known":  # OAuth discovery (oauth.py): open to all, like the probes
            await oauth.answer(
                scope,
                send,
                segments[1:],
                self._snapshot,
                self.base_url(scope),
                self.credentials,
                self._replica_urls,
                lambda server_id: self._unknown(scope, server_id, metadata=True),
            )
            return
        snapshot = self._snapshot
        if first in snapshot.failed:
            self._grant(scope, first)  # a caller the rules keep away gets their 403, not the entry's error
            raise GatewayError(
                503,
                ENTRY_FAILED,
                # The entry's error says what to do about its variable; the file can also do without it.
                f"server {first!r} is not available: {snapshot.failed[first]}; or fix the registry and reload",
            )
        if first not in snapshot.servers and first not in self._draining:
            raise self._unknown(scope, first)
        scope["mcpfleet.server"] = first  # a named server: its refusals (a 403) are counted and logged under it
        scope[GRANT] = self._grant(scope, first)
        limits = snapshot.gateway.limits
        self.quotas.admit(scope, first, limits)  # 429 over gateway.limits.rate_per_principal / rate_per_server
        rest = raw_path[len(first.encode()) + 1 :].decode("latin-1") or "/"
        started = time.monotonic()
        try:
            body = b""
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = scope["mcpfleet.body"] = await read_body(receive)  # bounded by the BodyLimit layer
            # The runtime is taken from the registry in force once the body arrived, and `handle` counts the
            # request in flight from its first step: with no await between the two, a reload cannot retire (and
            # close) the runtime under the request.
            snapshot = self._snapshot
            runtime = self._runtime(first)
            if first in self._draining:  # rare: only while a reload's changes drain
                runtime = self._draining_runtime(first, scope) or runtime
            if runtime is None:
                raise self._unknown(scope, first)
            # A new session of an http entry is the upstream's (the passthrough): the gateway holds nothing for
            # it and cannot see it end, so only the sessions it holds count (Plan 9.17).
            opens = may_open_session(scope, rest, body) and not (rest == "/mcp" and runtime.http is not None)
            with self.quotas.session_slot(scope, first, limits, send) if opens else contextlib.nullcontext(send) as out:
                await runtime.handle(
                    Exchange(scope, receive, out, snapshot, runtime.server, rest, body, base=self.base_url)
                )
        finally:
            self.metrics.observe(first, scope["method"], started)

    # --- status and admin ------------------------------------------------------------------------------

    async def _status(self, what: str, scope: Scope, send: Send) -> None:
        if what == "healthz":
            await respond(send, 200, b'{"status":"ok"}')
        elif what == "metrics":
            await respond(send, 200, self.metrics.render(), content_type=METRICS_CONTENT_TYPE)
        elif what == "readyz":
            await respond(send, 200 if self.ready else 503, json.dumps({"ready": self.ready}).encode())
        else:
            await respond(send, 200, json.dumps(self.describe(scope), indent=2).encode())

    def _visible(self, scope: Scope | None) -> Callable[[str], bool]:
        """Which server ids a caller sees on `/` and `/servers`: those `gateway.access` lets it reach (every
        one without rules). Its entries (commands, replica addresses, errors) are not the others' business."""
        if scope is None or not self.access.rules:
            return lambda _server_id: True
        identity = scope.get(IDENTITY, ANONYMOUS)
        return lambda server_id: self.access.grant(identity, server_id) is not None

    def _unknown(self, scope: Scope, server_id: str, *, metadata: bool = False) -> GatewayError:
        """The 404 for an id the registry does not name, listing only the servers this caller may reach (as
        `/` and `/servers` do: trial 2 N6). `metadata`: an open `/.well-known/` request, whose caller is
        anonymous: with `gateway.auth` it reaches no server route."""
        visible = (lambda _server_id: False) if metadata and self.credentials is not None else self._visible(scope)
        known = sorted(server for server in self._snapshot.servers if visible(server))
        filtered = bool(self.access.rules) or (metadata and self.credentials is not None)
        return GatewayError.unknown_server(server_id, known, filtered=filtered)

    def _page_document(self, scope: Scope) -> dict[str, Any]:
        """The status page's JSON, with what this caller may see."""
        document = page.document(self.index(scope), self.describe(scope), self.metrics.recent, principal_of(scope))
        visible = self._visible(scope)
        traffic = document["traffic"]["servers"]
        document["traffic"]["servers"] = {i: t for i, t in traffic.items() if visible(i)}
        document["recent_errors"] = [e for e in document["recent_errors"] if visible(e["server"])]
        return document

    def index(self, scope: Scope) -> dict[str, Any]:
        """`GET /`: every server the caller may reach and its URLs as this request reached the gateway (its
        scheme, its Host)."""
        base = self.base_url(scope)
        visible = self._visible(scope)
        ws_base = "ws" + base[len("http") :]  # http -> ws, https -> wss
        servers = [
            {
                "id": server_id,
                "description": server.description,
                "type": server.type,
                "mcp": f"{base}/{server_id}/mcp",
                "sse": f"{base}/{server_id}/sse",
                "ws": f"{ws_base}/{server_id}/ws",
            }
            for server_id, server in self._snapshot.servers.items()
            if visible(server_id)
        ]
        failed = [{"id": sid, "error": error} for sid, error in self._snapshot.failed.items() if visible(sid)]
        status = {name: f"{base}/{name}" for name in ("servers", "metrics", "healthz", "readyz")}
        document = {"mcpfleet": __version__, "servers": servers, "failed": failed, "status": status}
        shown: dict[str, Any] = masking.masked(document)  # every field (a description), one added later too
        return shown

    def status(self) -> GatewayView:
        """The read-only view of the gateway's state that `/servers` and `/metrics` show."""
        return status.read(
            self._snapshot,
            self._runtimes,
            self._draining,
            self.sessions,
            generation=self.generation,
            reloads=self.reloads,
            last_reload_error=self.reload_error,
        )

    def describe(self, scope: Scope | None = None) -> dict[str, Any]:
        """The `/servers` document; for a request (`scope`), the servers its caller may reach."""
        document = status.as_json(self.status())
        visible = self._visible(scope)
        for key in ("servers", "draining"):
            if key in document:
                document[key] = [server for server in document[key] if visible(server["id"])]
        return document

    def _check_admin(self, scope: Scope) -> None:
        """With `gateway.access` rules, only a caller they give every server to, with all its tools (the
        operator's rule, `servers: ["*"]`), may reload: a key holder on this machine with one tool of one
        server may not (trial 2 N11; Plan 9.17). Without rules every caller the authentication let in reaches
        everything, so any may. 403 naming the setting otherwise."""
        if not self.access.rules:
            return
        identity = scope.get(IDENTITY, ANONYMOUS)
        for server_id in self._snapshot.servers:
            if self.access.grant(identity, server_id) != EVERYTHING:
                raise GatewayError(
                    403,
                    -32600,
                    f"{identity.principal} may not reload: the admin endpoints answer callers whose gateway.access"
                    " rules give them every server and all its tools",
                )

    async def _admin(self, scope: Scope, segments: list[str], receive: Receive, send: Send) -> None:
        client = scope.get(PEER) or scope.get("client")  # the TCP peer, whatever a trusted proxy said
        proxied = any(header(scope, name) is not None for name in (b"x-forwarded-for", b"forwarded", b"x-real-ip"))
        if not client or not _loopback_peer(client[0]) or proxied:
            # A request a proxy on this machine passed on comes from loopback too: it is not served.
            raise GatewayError(403, -32600, "the admin endpoints answer loopback clients only")
        if segments[1:] != ["reload"]:
            raise GatewayError(404, -32601, "admin endpoints: POST /admin/reload")
        self._check_admin(scope)
        if scope["method"] != "POST":
            raise GatewayError(405, -32601, "POST /admin/reload", headers={"Allow": "POST"})
        await read_body(receive, 1024)
        loaded = await self.reload()
        errors = self.reload_error or (None if loaded or self.registry_path else [NOTHING_TO_RELOAD])
        body = {"reloaded": loaded, "generation": self.generation, "errors": errors}
        await respond(send, 200 if loaded else 422, json.dumps(body).encode())


def _host_policy(bind_host: str, settings: GatewaySettings) -> Policy:
    return Policy.create(bind_host, settings.allowed_hosts, settings.allowed_origins, settings.public_url)


def _loopback_peer(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # a Unix socket's peer, or no address at all
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None  # IPv4 on a dual-stack socket
    return (mapped or ip).is_loopback


async def _lifespan(receive: Receive, send: Send) -> None:
    """The Gateway is entered by whoever serves it; an ASGI server's lifespan events are just acknowledged."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
