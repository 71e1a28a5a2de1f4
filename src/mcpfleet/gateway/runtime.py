"""What the gateway runs for one registry entry: its upstreams, and the choice between them per request.

| client transport                 | http entry (Streamable)  | http entry (legacy SSE) | stdio entry  |
|----------------------------------|--------------------------|-------------------------|--------------|
| Streamable HTTP  `/<id>/mcp`     | passthrough (bytes)      | relay over SDK client   | relay        |
| legacy SSE `/<id>/sse` + `/messages/` | relay over SDK client | relay over SDK client  | relay        |
| WebSocket `/<id>/ws`             | relay over SDK client    | relay over SDK client   | relay        |

An http entry with a `command` is served over HTTP while an endpoint answers, and through its command when
none does. A runtime lives as long as its server id stays in the registry with the same type and transport:
a reload applies the new entry to it in place (`configure`): replicas, weights, strategy, timeouts, health
and pool sizes change without ending any session. When *what runs* changes (command, env, cwd, stateless,
pool mode, the size limit), a new relay takes new sessions and the old one drains: its sessions keep their
process until they end or `timeouts.drain` passes. A removed server (or one whose type or transport
changed) drains as a whole (`drain`) and then ends its sessions.

The replica set of an http entry comes from a replica source (`mcpfleet.replicas`): the registry's
`endpoints`, or a discovery source the runtime follows (`follow`).

Bridged HTTP connections (the relay over `TransportBackend` or `SseBackend`) carry the entry's `headers` and
the X-Forwarded-* of the client connection that opened them; a connection shared by several clients
(2026-07-28 requests to a legacy SSE server) carries none. The server's answers hold to
`max_message_bytes` (`gateway.max_message_bytes`) on every route. A bridged connection that ends is a
transport event, not a crash: it never counts towards crash loops.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc

from mcpfleet.deploy.base import Deployment
from mcpfleet.errors import DeployError, GatewayError
from mcpfleet.gateway.asgi import (
    Receive,
    Scope,
    Send,
    header,
    respond,
)
from mcpfleet.gateway.balancer import Balancer
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.logs import detached
from mcpfleet.gateway.policy.access import EVERYTHING, GRANT
from mcpfleet.gateway.policy.tools import ToolGuard, closing
from mcpfleet.gateway.protocol import parse_body
from mcpfleet.gateway.session import Session, SessionTable, close_all
from mcpfleet.gateway.streams import legacy_event_stream, websocket_session
from mcpfleet.gateway.upstream.backend import (
    Backend,
    ProcessBackend,
    SseBackend,
    TransportBackend,
    opened_for,
    opening_for,
)
from mcpfleet.gateway.upstream.base import Unreachable, Upstream
from mcpfleet.gateway.upstream.http import DEFAULT_MAX_MESSAGE_BYTES, HttpUpstream
from mcpfleet.gateway.upstream.relay import Outbox, RelayUpstream, SharedSession, StdioSession
from mcpfleet.masking import shown_url
from mcpfleet.registry.model import Endpoint, HttpServer, Logging, Server, StdioServer
from mcpfleet.replicas import ReplicaAddress, ReplicaSource

log = logging.getLogger("mcpfleet.gateway")

MCP_PATH = "/mcp"
SSE_PATH = "/sse"
MESSAGES_PATH = "/messages/"
WS_PATH = "/ws"
BRIDGE_LIMIT = 10_000  # bridged HTTP connections hold no process; this only bounds memory
FOLLOW_BACKOFF = 1.0  # seconds before a failed replica source is watched again, doubling
FOLLOW_BACKOFF_MAX = 60.0
RETIRE_FINISH = 5.0  # seconds requests get to unwind once a retired runtime closed their upstreams
NO_REPLICA = -32011  # a deployment backend could not start a replica (engine down, image missing, exits)


def watch_tools(session: StdioSession, box: Outbox, guard: ToolGuard | None) -> ToolGuard | None:
    """A message-stream client's session: its requests pass `guard`, and the answers on `box` too."""
    if guard is not None:
        session.guard = guard
        box.watch = guard.answer
    return guard


def static_addresses(server: HttpServer) -> tuple[ReplicaAddress, ...]:
    """The replica set an entry's `endpoints` list (the registry as a replica source)."""
    return tuple(ReplicaAddress(e.url, e.weight) for e in server.endpoints)


def what_runs(server: Server) -> tuple[object, ...]:
    """What a relay's processes are made of: when it changes, old processes drain and new sessions get new
    ones. Everything else in an entry applies to the running relay in place."""
    if not isinstance(server, StdioServer | HttpServer):
        return (server.type,)
    return (server.type, server.command, server.env, server.secret_env, server.cwd, server.stateless, server.pool.mode)


def what_serves(server: Server) -> tuple[object, ...]:
    """What decides which upstreams a runtime has: a change rebuilds the runtime (the old one drains)."""
    transport = server.transport if isinstance(server, HttpServer) else None
    has_command = bool(server.command) if isinstance(server, StdioServer | HttpServer) else False
    return (server.type, transport, has_command)


class ServerRuntime:
    def __init__(
        self,
        server: Server,
        sessions: SessionTable,
        task_group: anyio.abc.TaskGroup,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        source: ReplicaSource | None = None,
        deployment: Deployment | None = None,
        spawn: Callable[[int], Backend] | None = None,
    ) -> None:
        """`source`: where an http entry's replicas come from; None for the entry's own `endpoints`.
        `deployment`: the backend that starts the replicas (a docker entry): its source is followed, it runs
        while the runtime lives, and a request that finds no replica wakes it. `spawn(max_message_bytes)`: how
        a process of a stdio entry starts (a container, for a docker entry); None: its command, locally."""
        self.spawn = spawn
        self.deployment = deployment
        if deployment is not None:
            source = deployment.source
            self._deploying = anyio.CancelScope()
            task_group.start_soon(detached(self._keep_deployed), deployment)
        self.server = server
        self.sessions = sessions
        self.max_message_bytes = max_message_bytes
        self._tg = task_group
        self.http: HttpUpstream | None = None
        self.bridge: RelayUpstream | None = None
        self.stdio: RelayUpstream | None = None
        self.draining_relays: list[RelayUpstream] = []  # of an earlier command or env: their sessions only
        self.balancer: Balancer | None = None
        self.source = source
        self._replica_set_changed = anyio.Event()  # set (and renewed) by each update_replicas
        self._replicas_known = anyio.Event()  # the first set arrived (at once for the registry's endpoints)
        if source is None:
            self._replicas_known.set()
        self._closed = False
        self._probing = False
        self._following = anyio.CancelScope()  # the source's watch, cancelled when the runtime ends
        if isinstance(server, HttpServer):
            health = server.health
            balancer = Balancer.create(
                server.balancer.strategy,
                [(a.url, a.weight) for a in static_addresses(server)] if source is None else [],
                failures_to_eject=health.failures_to_eject,
                backoff=health.ejection_backoff,
                max_backoff=health.max_ejection_backoff,
            )
            self.balancer = balancer
            if server.transport != "sse":
                self.http = HttpUpstream(server, balancer, sessions, max_message_bytes=max_message_bytes)
                self._probe_if_active()
            self.bridge = RelayUpstream(
                server,
                self._bridged_connection,
                task_group,
                sessions,
                limit=BRIDGE_LIMIT,
                what="bridged connections",
                counts_exits=False,
            )
            if source is not None:
                task_group.start_soon(detached(self.follow), source)
        if isinstance(server, StdioServer | HttpServer) and server.command:
            self.stdio = self._new_stdio(server)
        self.inflight = 0
        self._idle = anyio.Event()

    def hand_over(self, successor: Deployment) -> None:
        """A new runtime of this server id keeps the replicas now: this one stops keeping them, and leaves the
        containers it started to `successor` instead of removing them when it ends."""
        assert self.deployment is not None
        self._deploying.cancel()
        self.deployment.hand_over(successor)

    async def _keep_deployed(self, deployment: Deployment) -> None:
        with self._deploying:
            await deployment.run()

    async def _wake(self, *, new_set: bool = False) -> None:
        """No replica serves and a backend can start some: start them, and wait (up to `timeouts.connect`
        after they are ready) until the replica source lists one (with `new_set`, until it lists a new set:
        the one in force named only replicas that refused). A start that fails is a 503 with `Retry-After`
        and the reason (-32011)."""
        assert self.deployment is not None
        assert self.balancer is not None
        changed = self._replica_set_changed
        try:
            await self.deployment.wake()
        except DeployError as exc:
            raise GatewayError(
                503,
                NO_REPLICA,
                f"server {self.server.id!r} has no replica running: {exc.message}",
                data={"logs": exc.logs} if exc.logs else None,
                headers={"retry-after": str(self.deployment.retry_after)},
            ) from None
        with anyio.move_on_after(self.server.timeouts.connect):
            if new_set:
                await changed.wait()
            while not self.balancer.replicas:
                await self._replica_set_changed.wait()

    def _new_stdio(self, server: StdioServer | HttpServer) -> RelayUpstream:
        limit = self.max_message_bytes

        def process() -> Backend:
            if self.spawn is not None:
                return self.spawn(limit)
            # The entry in force when the process starts: a reload's new timeouts reach new processes.
            entry = relay.server
            assert isinstance(entry, StdioServer | HttpServer)
            assert entry.command
            return ProcessBackend(entry, entry.command, max_message_bytes=limit)

        relay = RelayUpstream(server, process, self._tg, self.sessions, limit=server.pool.max)
        if server.pool.min:
            relay.keep_warm(server.pool.min)
        return relay

    # --- configuration: reloads and replica sources -------------------------------------------------------

    def configure(self, server: Server, max_message_bytes: int) -> bool:
        """Apply a changed entry in place, ending no session. False when it cannot be (the entry's type or
        transport changed, or it gained or lost its command): the caller drains this runtime and builds another."""
        old = self.server
        if what_serves(server) != what_serves(old):
            return False
        self.server = server
        resized = max_message_bytes != self.max_message_bytes
        self.max_message_bytes = max_message_bytes
        if isinstance(server, HttpServer):
            assert self.balancer is not None
            health = server.health
            self.balancer.configure(
                server.balancer.strategy,
                failures_to_eject=health.failures_to_eject,
                backoff=health.ejection_backoff,
                max_backoff=health.max_ejection_backoff,
            )
            if self.source is None:
                self.update_replicas(static_addresses(server))
            if self.http is not None:
                self.http.configure(server, max_message_bytes)
                self._probe_if_active()
            if self.bridge is not None:
                self.bridge.reconfigure(server)
        if self.stdio is not None and isinstance(server, StdioServer | HttpServer):
            if resized or what_runs(server) != what_runs(old):
                self._drain_relay(self.stdio, old.timeouts.drain)
                self.stdio = self._new_stdio(server)
            else:
                self.stdio.reconfigure(server)
        return True

    def update_replicas(self, addresses: Sequence[ReplicaAddress]) -> None:
        """A new replica set (from the registry or a source): joiners take new work now, leavers drain (their
        end is `maintain`'s: connections closed, bridged sessions ended)."""
        assert self.balancer is not None
        before = {r.url for r in self.balancer.replicas}
        # A replica a backend runs that is no longer listed is gone: nothing is left to drain to. One still
        # listed but not serving drains: a terminating pod serves its sessions on (a container does not).
        drain = self.server.timeouts.drain
        gone = None
        if self.deployment is not None:
            gone = 0.0
            drain = drain if self.deployment.drains else 0.0
        self.balancer.update(addresses, drain, gone)
        after = {r.url for r in self.balancer.replicas}
        self._replica_set_changed.set()
        self._replica_set_changed = anyio.Event()
        if after != before:
            left = sorted(shown_url(u) for u in before - after)
            log.info(
                "server %r: replicas joined %s, left %s%s",
                self.server.id,
                sorted(shown_url(u) for u in after - before) or "none",
                left or "none",
                f" (their sessions drain for up to {drain:g} s)" if left and drain else "",
            )

    async def follow(self, source: ReplicaSource) -> None:
        """Apply each replica set `source` yields, until the runtime ends. A source that fails keeps its last
        set in force and is watched again after a backoff (FOLLOW_BACKOFF doubling to FOLLOW_BACKOFF_MAX),
        logged as "attempt n"; it never takes the gateway down."""
        backoff = FOLLOW_BACKOFF
        attempt = 1
        with self._following:
            while not self.closed:
                try:
                    async for addresses in source.watch():
                        self.update_replicas(addresses)
                        self._replicas_known.set()
                        backoff, attempt = FOLLOW_BACKOFF, 1
                        serving = sum(a.serving for a in addresses)
                        log.info(
                            "server %r: %d replica%s serving", self.server.id, serving, "" if serving == 1 else "s"
                        )
                    return  # the source has nothing more to say (a static set): its last set stays
                except Exception as exc:
                    self._replicas_known.set()  # requests go on with the last set (none yet: 502 or a wake)
                    log.error(
                        "server %r: its replica source failed (%s); the last replica set stays, attempt %d"
                        " again in %g s",
                        self.server.id,
                        exc,
                        attempt + 1,
                        backoff,
                    )
                await anyio.sleep(backoff)
                backoff, attempt = min(FOLLOW_BACKOFF_MAX, backoff * 2), attempt + 1

    async def _first_replica_set(self) -> None:
        """A source's first set is on its way (the runtime was just made): wait for it, up to `timeouts.connect`,
        once; later requests find the set, or no replica (502), without waiting."""
        with anyio.move_on_after(self.server.timeouts.connect):
            await self._replicas_known.wait()
        self._replicas_known.set()

    async def maintain(self, now: float) -> None:
        """Periodic upkeep (once a second): close the connections of replicas whose drain ended; replace warm
        processes that died and stop idle or worn ones, in the current relay and the draining ones."""
        if self.balancer is not None:
            gone = {replica.url for replica in self.balancer.expire_drains()}
            if self.http is not None:
                self.http.sweep()  # connections to replicas the balancer no longer knows
            if gone and self.bridge is not None:  # bridged sessions (WebSocket, legacy SSE) on those replicas end
                await self.bridge.close_links(lambda link: link.backend.replica in gone)
        for relay in (self.stdio, *self.draining_relays):
            if relay is not None:
                await relay.expire_idle(now)

    def _drain_relay(self, relay: RelayUpstream, seconds: float) -> None:
        log.info(
            "server %r: its command or environment changed; new sessions get new processes, the %d open ones keep"
            " theirs until they end or %g s pass",
            self.server.id,
            len(relay.live),
            seconds,
        )
        relay.drain()
        self.draining_relays.append(relay)
        self._tg.start_soon(detached(self._end_after_drain), relay, seconds)

    async def _end_after_drain(self, relay: RelayUpstream, seconds: float) -> None:
        try:
            with anyio.move_on_after(seconds):
                await relay.wait_drained()
            await self._end_relay(relay)
        except Exception:  # never into the gateway's task group: stop what is left and go on
            log.exception("server %r: ending a drained relay failed; stopping it now", self.server.id)
            with anyio.CancelScope(shield=True):
                await relay.aclose()
        finally:
            if relay in self.draining_relays:
                self.draining_relays.remove(relay)

    async def _end_relay(self, relay: RelayUpstream) -> None:
        ending = [s for s in self.sessions.of_server(self.server.id) if relay.holds(s)]
        relay.retired = True
        for session in ending:
            self.sessions.drop_session(session)
        await close_all(ending)  # together: one after another, 2,000 sessions took a quarter of an hour
        await relay.aclose()

    def owns(self, session: Session) -> bool:
        """Whether `session` is served here (by one of this runtime's upstreams)."""
        return self._holder(session) is not None

    def routing_key(self, scope: Scope) -> str | None:
        """The request's key for `consistent_hash`: the `balancer.hash_header` value, else the client's address."""
        server = self.server
        if not isinstance(server, HttpServer) or server.balancer.strategy != "consistent_hash":
            return None
        if server.balancer.hash_header is not None and (
            value := header(scope, server.balancer.hash_header.lower().encode())
        ):
            return value
        client = scope.get("client")
        return str(client[0]) if client else None

    def _bridged_connection(self) -> Backend:
        """A connection to a replica the balancer picks, for the bridge relay."""
        server, balancer = self.server, self.balancer
        assert isinstance(server, HttpServer)
        assert balancer is not None
        forwarded, key = opened_for()
        try:
            replica = balancer.pick(key)
        except LookupError:
            raise GatewayError.unreachable(server.id, "no replica serves") from None
        endpoint = Endpoint(url=replica.url, weight=replica.weight)
        kind = SseBackend if server.transport == "sse" else TransportBackend
        return kind(server, endpoint, max_message_bytes=self.max_message_bytes, forwarded=forwarded)

    @property
    def upstreams(self) -> list[HttpUpstream | RelayUpstream]:
        return [u for u in (self.http, self.bridge, self.stdio, *self.draining_relays) if u is not None]

    @property
    def closed(self) -> bool:
        """The runtime ended (`retire` or `aclose`); a relay of an earlier configuration ending is not it."""
        return self._closed

    async def handle(self, exchange: Exchange) -> None:
        if self.http is None and self.stdio is None and self.bridge is None:
            raise GatewayError(
                501,
                -32601,
                f"server {self.server.id!r} is of type {self.server.type!r}: it is served"
                " through its deployment backend, which this version of mcpfleet does not have yet",
            )
        self.inflight += 1
        if self.deployment is not None:
            self.deployment.request_started()
        try:
            if not self._replicas_known.is_set():
                await self._first_replica_set()
            if self.deployment is not None and self.balancer is not None and not self.balancer.replicas:
                await self._wake()
            try:
                await self._dispatch(exchange)
            except Unreachable:
                if self.deployment is None or exchange.session_id is not None:
                    raise
                # Every replica refused the connection: they stopped since the last replica set (a crash).
                # Nothing was sent, so the request waits for new ones, once.
                await self._wake(new_set=True)
                await self._dispatch(exchange)
        except Unreachable as exc:  # the one place: nothing reached the server, and no other upstream took it
            raise GatewayError.unreachable(self.server.id, exc.detail) from None
        finally:
            self._done()

    async def _dispatch(self, exchange: Exchange) -> None:
        if exchange.rest == MCP_PATH:
            await self._mcp(exchange)
        elif exchange.rest == SSE_PATH and exchange.method == "GET":
            await self._legacy_stream(exchange)
        elif exchange.rest == MESSAGES_PATH and exchange.method == "POST":
            await self._legacy_message(exchange)
        elif self.http is not None:
            await self.http.pass_on(exchange)  # screened like the MCP path: a backend may serve MCP there too
        else:
            raise GatewayError(
                404,
                -32601,
                f"server {self.server.id!r} serves only /{self.server.id}{MCP_PATH}, /{self.server.id}{SSE_PATH}"
                f" and /{self.server.id}{WS_PATH}",
            )

    def _done(self) -> None:
        if self.deployment is not None:
            self.deployment.request_ended()
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()
            self._idle = anyio.Event()

    # --- Streamable HTTP clients --------------------------------------------------------------------------

    async def _mcp(self, exchange: Exchange) -> None:
        """A request in a session goes to the upstream that holds it; one outside any session to the HTTP
        passthrough while a replica takes it, else to the relay (the entry's command, or the bridge)."""
        token = exchange.session_id
        if token is not None:
            session = self.sessions.get(token, self.server.id, exchange.owner)
            upstream = self._holder(session) if session is not None else None
            if upstream is None or session is None:
                raise GatewayError.session_not_found()
            await upstream.serve(exchange, token, session)
            return
        key = self.routing_key(exchange.scope)
        if self.http is not None:
            try:
                await self.http.open(exchange, key)
                return
            except Unreachable:
                if self.stdio is None:
                    raise
        relay = self.stdio or self.bridge
        assert relay is not None
        await relay.open(exchange, key)

    def _holder(self, session: Session) -> Upstream | None:
        """The upstream of this runtime that serves `session`, if any (one test per request on the hot path)."""
        if isinstance(session, StdioSession | SharedSession):
            owner = session.owner
            mine = owner is self.stdio or owner is self.bridge or owner in self.draining_relays
            return owner if mine and owner.holds(session) else None
        return self.http if self.http is not None and self.http.holds(session) else None

    # --- message-stream clients: legacy HTTP+SSE and WebSocket --------------------------------------------

    async def _bridge_relay(self) -> RelayUpstream:
        """Where a message-stream client's session goes: the HTTP bridge while an endpoint answers, else stdio."""
        if not self.upstreams:
            raise GatewayError(
                501, -32601, f"server {self.server.id!r} is of type {self.server.type!r}: not served yet"
            )
        if self.bridge is not None and (self.stdio is None or await self._any_endpoint_answers()):
            return self.bridge
        if self.stdio is not None:
            return self.stdio
        raise GatewayError.unreachable(self.server.id, "no endpoint answers")

    async def _any_endpoint_answers(self) -> bool:
        assert self.balancer is not None
        for replica in self.balancer.candidates():
            parts = urlsplit(replica.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            with anyio.move_on_after(self.server.timeouts.connect):
                try:
                    stream = await anyio.connect_tcp(parts.hostname or "", port)
                except OSError:
                    continue
                await stream.aclose()
                return True
        return False

    async def _legacy_stream(self, exchange: Exchange) -> None:
        relay = await self._bridge_relay()
        with opening_for(exchange.scope, self.routing_key(exchange.scope)):
            session, box = await relay.open_bridge()
        token = self.sessions.issue(session, exchange.owner)
        endpoint = f"{exchange.public_path(MESSAGES_PATH)}?session_id={token}"  # public_url's prefix too
        # The stream's opener decides what the session's POSTs may call and see (they name its id).
        guard = watch_tools(session, box, ToolGuard.for_exchange(exchange, token))
        try:
            with closing(guard):
                await legacy_event_stream(exchange, box, endpoint, exchange.snapshot.gateway.keepalive_interval)
                if guard is not None:
                    guard.client_left = True  # the stream ends when its client goes away
        finally:
            self.sessions.drop(token)
            with anyio.CancelScope(shield=True):
                await session.aclose()

    async def _legacy_message(self, exchange: Exchange) -> None:
        token = parse_qs(exchange.query.decode("latin-1")).get("session_id", [None])[0]
        session = self.sessions.get(token, self.server.id, exchange.owner) if token else None
        if not isinstance(session, StdioSession) or session.standing is None:
            raise GatewayError.session_not_found()
        # The POST was authorized afresh; the stream's opener was granted what filters the session. When a
        # reload changed that grant, the session ends: its client opens another, listing tools again.
        opened = session.guard.grant if session.guard is not None else EVERYTHING
        if exchange.scope.get(GRANT, EVERYTHING) != opened:
            session.standing.close()
            raise GatewayError(
                403, -32600, "what this session may use changed (gateway.access): connect to the /sse endpoint again"
            )
        messages, _ = parse_body(exchange.body)
        await session.bridge(messages, session.standing)
        await respond(exchange.send, 202, b"Accepted", content_type=b"text/plain")

    async def websocket(
        self,
        receive: Receive,
        send: Send,
        max_frame: int,
        *,
        scope: Scope | None = None,
        logging_settings: Logging | None = None,
        max_duration: float | None = None,
    ) -> None:
        """One WebSocket connection = one session: text frames in, text frames out, one message each.
        `scope`: the connection's, for the X-Forwarded-* headers of a bridged connection and its `Grant` and
        `Identity` (the tool filter, the audit line). `logging_settings`: `gateway.logging` in force.
        `max_duration`: the connection is closed (1001) after this many seconds
        (`gateway.limits.max_stream_duration`)."""
        self.inflight += 1
        if self.deployment is not None:
            self.deployment.request_started()
        try:
            if not self._replicas_known.is_set():
                await self._first_replica_set()
            if self.deployment is not None and self.balancer is not None and not self.balancer.replicas:
                await self._wake()
            relay = await self._bridge_relay()
            opening = opening_for(scope, self.routing_key(scope)) if scope is not None else contextlib.nullcontext()
            with opening:
                session, box = await relay.open_bridge()
        except GatewayError as exc:
            self._done()
            await send({"type": "websocket.close", "code": 1011, "reason": exc.message[:120]})
            return
        guard = watch_tools(session, box, ToolGuard.of(scope, self.server.id, logging_settings or Logging()))
        try:
            with closing(guard):
                await websocket_session(receive, send, session, box, max_frame, max_duration)
                if guard is not None:
                    guard.client_left = True  # a socket the session ended leaves no call to wait for
        finally:
            with anyio.CancelScope(shield=True):
                await session.aclose()
            self._done()

    def _probe_if_active(self) -> None:
        if isinstance(self.server, HttpServer) and self.server.health.active and not self._probing:
            self._probing = True
            self._tg.start_soon(detached(self._probe_replicas))

    async def _probe_replicas(self) -> None:
        """Active health checks (`health.active`): every `health.interval`, probe each serving replica. The
        settings in force are read each round, so a reload that turns them off ends the loop."""
        assert self.http is not None
        assert self.balancer is not None
        try:
            while not self.closed and isinstance(self.server, HttpServer) and self.server.health.active:
                interval = self.server.health.interval
                for replica in list(self.balancer.replicas):
                    healthy = await self.http.probe(replica.url)
                    self.balancer.probed(replica, healthy, hold=interval)
                    if not healthy:
                        log.warning(
                            "server %r: replica %s failed its health check", self.server.id, shown_url(replica.url)
                        )
                await anyio.sleep(interval)
        finally:
            self._probing = False

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def drain(self, seconds: float) -> None:
        """The server left the registry (or changed type or transport): take no new session; serve the open
        ones until they end or `seconds` pass (HTTP sessions live upstream, so an http server's are served for
        all of `seconds`); then end them and stop everything."""
        for upstream in self.upstreams:
            upstream.drain()
        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as tg:
                for upstream in self.upstreams:
                    tg.start_soon(upstream.wait_drained)
            while self.inflight:
                await self._idle.wait()
        await self.retire()

    async def retire(self, finish: float = RETIRE_FINISH) -> None:
        """End now: sessions end (their ids get 404) and upstreams close, which ends open streams and
        WebSockets; then requests still in flight get up to `finish` seconds to unwind."""
        ending = [s for s in self.sessions.of_server(self.server.id) if self.owns(s)]
        for session in ending:
            self.sessions.drop_session(session)
        await close_all(ending)  # together: one after another, 2,000 sessions took a quarter of an hour
        await self.aclose()
        with anyio.move_on_after(finish):
            while self.inflight:
                await self._idle.wait()

    async def aclose(self) -> None:
        self._closed = True
        self._following.cancel()
        for upstream in self.upstreams:
            upstream.retired = True
            await upstream.aclose()
        if self.deployment is not None:
            self._deploying.cancel()
            await self.deployment.aclose()
