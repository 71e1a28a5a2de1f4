"""A relay's settings change in place (`reconfigure`) and a relay drains (`drain`), with the sessions it has
going on: real demo stdio processes under a `RelayUpstream` built as the runtime builds it, each request an
in-memory ASGI exchange. Every wait has a generous guard against a hang; no assertion is about time."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.protocol import parse_message
from mcpfleet.gateway.sealing import Sealer
from mcpfleet.gateway.session import SessionTable
from mcpfleet.gateway.upstream.backend import ProcessBackend
from mcpfleet.gateway.upstream.http import DEFAULT_MAX_MESSAGE_BYTES
from mcpfleet.gateway.upstream.relay import RelayUpstream, SharedSession, StdioSession
from mcpfleet.registry.loader import parse_registry
from mcpfleet.registry.model import Registry, StdioServer

from support import INIT

GUARD = 120  # seconds: only against a hang; a passing run takes a fraction of it
JSON = b"application/json"
EVENTS = b"text/event-stream"


def registry(pool: str, extra: str = "") -> Registry:
    command = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
    return parse_registry(f"servers:\n  demo: {{command: {command}, pool: {pool}{extra}}}\n", "test", environ={})


def entry(snapshot: Registry) -> StdioServer:
    server = snapshot.servers["demo"]
    assert isinstance(server, StdioServer)
    return server


class Response:
    """One response as the relay sends it over ASGI; the client stays until `disconnect()`."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.started = anyio.Event()
        self.done = anyio.Event()
        self._gone = anyio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
            self.started.set()
        else:
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                self.done.set()

    async def receive(self) -> dict[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    def disconnect(self) -> None:
        self._gone.set()

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """Requests to `relay` as the runtime makes them, for server `demo` of `snapshot`."""

    def __init__(self, relay: RelayUpstream, table: SessionTable, snapshot: Registry) -> None:
        self.relay = relay
        self.table = table
        self.snapshot = snapshot

    def exchange(
        self, method: str, body: Any = None, token: str | None = None, accept: bytes = JSON
    ) -> tuple[Exchange, Response]:
        headers = [(b"accept", accept), (b"content-type", b"application/json")]
        if token is not None:
            headers.append((b"mcp-session-id", token.encode()))
        scope = {"type": "http", "method": method, "path": "/demo/mcp", "headers": headers, "query_string": b""}
        response = Response()
        raw = json.dumps(body).encode() if body is not None else b""
        server = self.snapshot.servers["demo"]
        return Exchange(scope, response.receive, response.send, self.snapshot, server, "/mcp", raw), response

    async def initialize(self) -> str:
        exchange, response = self.exchange("POST", INIT)
        message = parse_message(exchange.body)
        assert message is not None
        await self.relay.initialize(exchange, message)
        assert response.status == 200, response.body
        return response.headers[b"mcp-session-id"].decode()

    def session(self, token: str) -> StdioSession:
        session = self.table.get(token, "demo")
        assert isinstance(session, StdioSession)
        return session

    async def call(self, token: str, name: str, arguments: dict[str, Any], rid: int = 2) -> Any:
        body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
        exchange, response = self.exchange("POST", body, token)
        await self.relay.serve(exchange, token, self.session(token))
        return response.json()

    async def delete(self, token: str) -> None:
        exchange, response = self.exchange("DELETE", token=token)
        await self.relay.serve(exchange, token, self.session(token))
        assert response.status == 200

    async def open_stream(self, tg: anyio.abc.TaskGroup, token: str) -> Response:
        """The session's GET stream, open until its `disconnect()`: the session is not idle meanwhile, so no
        waiter can reclaim it."""
        exchange, response = self.exchange("GET", token=token, accept=EVENTS)
        tg.start_soon(self.relay.serve, exchange, token, self.session(token))
        await response.started.wait()
        return response


async def maintain(relay: RelayUpstream) -> None:
    """The gateway's maintenance pass: once a second, upkeep (refill, expiry)."""
    while True:
        await anyio.sleep(1)
        await relay.expire_idle(time.monotonic())


@contextlib.asynccontextmanager
async def relay_for(snapshot: Registry) -> AsyncIterator[Client]:
    """A stdio relay for `demo`, built and maintained as the runtime and the gateway do, closed (processes and
    all) at the end."""
    server = entry(snapshot)
    table = SessionTable(Sealer(["test"]))
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            relay = RelayUpstream(
                server,
                lambda: ProcessBackend(server, server.command, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES),
                tg,
                table,
                limit=server.pool.max,
            )
            if server.pool.min:
                relay.keep_warm(server.pool.min)
            tg.start_soon(maintain, relay)
            try:
                yield Client(relay, table, snapshot)
            finally:
                await relay.aclose()
                tg.cancel_scope.cancel()


async def until(check: Callable[[], bool]) -> None:
    """Until the pool's state says so (bounded by GUARD): a look at it, not an event, is what a test has."""
    while not check():  # noqa: ASYNC110
        await anyio.sleep(0.02)


def echoed(answer: Any) -> str:
    return str(answer["result"]["content"][0]["text"])


def test_raising_pool_max_admits_a_waiting_session_before_its_timeout() -> None:
    async def main() -> None:
        async with relay_for(registry("{max: 1, acquire_timeout: 600}")) as client, anyio.create_task_group() as tg:
            first = await client.initialize()
            stream = await client.open_stream(tg, first)
            tokens: list[str] = []

            async def second() -> None:
                tokens.append(await client.initialize())

            tg.start_soon(second)
            await until(lambda: client.relay.waiting == 1)  # the only process is leased and busy: it waits
            client.relay.reconfigure(entry(registry("{max: 2, acquire_timeout: 600}")))
            await until(lambda: bool(tokens))  # admitted now, not after its 600 s

            assert echoed(await client.call(tokens[0], "echo", {"text": "in"})) == "in"
            assert echoed(await client.call(first, "echo", {"text": "still"})) == "still"
            assert client.relay.admission.slots.total_tokens == 2 and len(client.relay.live) == 2
            stream.disconnect()

    anyio.run(main)


def test_lowering_pool_max_ends_no_leased_session_and_holds_back_new_ones() -> None:
    async def main() -> None:
        async with relay_for(registry("{max: 3, acquire_timeout: 1}")) as client, anyio.create_task_group() as tg:
            tokens = [await client.initialize(), await client.initialize()]
            streams = [await client.open_stream(tg, token) for token in tokens]
            client.relay.reconfigure(entry(registry("{max: 1, acquire_timeout: 1}")))

            for index, token in enumerate(tokens):
                assert echoed(await client.call(token, "echo", {"text": f"s{index}"})) == f"s{index}"
            assert len(client.relay.live) == 2  # both processes run on, over the new limit
            with pytest.raises(GatewayError) as refused:
                await client.initialize()  # no slot: both sessions hold theirs, and neither is idle
            assert refused.value.status == 503 and "all 1 processes are in use" in refused.value.message

            for stream, token in zip(streams, tokens, strict=True):
                stream.disconnect()
                await client.delete(token)
            await until(lambda: not client.relay.live)  # their slots given back
            fresh = await client.initialize()  # once the leased ones ended, the new limit admits one
            assert echoed(await client.call(fresh, "echo", {"text": "new"})) == "new"

    anyio.run(main)


def test_pool_min_changes_start_and_stop_warm_processes() -> None:
    async def main() -> None:
        async with relay_for(registry("{min: 0, max: 4}")) as client:
            relay = client.relay
            assert len(relay.live) == 0
            relay.reconfigure(entry(registry("{min: 2, max: 4}")))
            await until(lambda: relay.warm_count == 2)
            token = await client.initialize()  # takes a warm one; the pool refills to two
            await until(lambda: relay.warm_count == 2)
            assert len(relay.live) == 3

            relay.reconfigure(entry(registry("{min: 0, max: 4}")))
            assert relay.warm_count == 0  # taken out at once, stopping
            await until(lambda: len(relay.live) == 1)
            assert echoed(await client.call(token, "echo", {"text": "kept"})) == "kept"

    anyio.run(main)


def test_a_drained_relay_serves_its_sessions_opens_none_and_is_drained_when_they_end() -> None:
    async def main() -> None:
        async with relay_for(registry("{min: 1, max: 4}")) as client:
            relay = client.relay
            await until(lambda: relay.warm_count == 1)
            kept, crashing = await client.initialize(), await client.initialize()
            await until(lambda: relay.warm_count == 1)  # refilled after the leases
            assert len(relay.live) == 3

            relay.drain()
            assert relay.warm_count == 0 and not relay.drained
            await until(lambda: len(relay.live) == 2)  # the warm process stopped, the sessions run
            for start_one in (client.initialize, relay.open_bridge):
                with pytest.raises(GatewayError) as refused:
                    await start_one()
                assert refused.value.status == 503 and "take no new sessions" in refused.value.message
            modern = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
            with pytest.raises(GatewayError) as refused:
                await relay.stateless(client.exchange("POST", modern)[0])  # would need a new process
            assert refused.value.status == 503

            assert echoed(await client.call(kept, "echo", {"text": "served"})) == "served"
            crashed = await client.call(crashing, "crash", {})  # a session that ends on its own counts
            assert crashed["error"]["code"] == -32014
            await until(lambda: len(relay.live) == 1)
            assert not relay.drained

            async with anyio.create_task_group() as tg:
                tg.start_soon(relay.wait_drained)
                await client.delete(kept)
            assert relay.drained and len(relay.live) == 0

    anyio.run(main)


def test_a_drained_shared_mode_relay_keeps_its_sessions_and_stops_spare_processes() -> None:
    async def main() -> None:
        async with relay_for(registry("{mode: shared, min: 2, max: 4}", ", stateless: true")) as client:
            relay = client.relay
            await until(lambda: relay.warm_count == 2)
            exchange, response = client.exchange("POST", INIT)
            message = parse_message(exchange.body)
            assert message is not None
            await relay.initialize_shared(exchange, message)
            token = response.headers[b"mcp-session-id"].decode()
            session = client.table.get(token, "demo")
            assert isinstance(session, SharedSession)

            relay.drain()
            await until(lambda: len(relay.live) == 1)  # the spare process stopped; the session's runs
            params = {"name": "echo", "arguments": {"text": "shared"}}
            exchange, response = client.exchange(
                "POST", {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}, token
            )
            await relay.serve(exchange, token, session)
            assert echoed(response.json()) == "shared" and not relay.drained

            exchange, response = client.exchange("DELETE", token=token)
            await relay.serve(exchange, token, session)
            await relay.wait_drained()
            assert relay.drained

    anyio.run(main)
