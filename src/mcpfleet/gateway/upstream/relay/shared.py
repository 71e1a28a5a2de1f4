"""Serving over shared processes (sessions.py: `SharedProcess`), request ids and progress tokens remapped:

- 2026-07-28 requests (no session): each goes to the least busy process not due for recycling, except a
  retry carrying `requestState`, which goes back to the process that issued it (pinning.py). One process
  starts on the first request (every request arriving meanwhile waits for that same start); another starts
  in the background when every running one has SPREAD_AT requests in flight, up to `pool.max`. A client
  that disconnects before its answer has its request cancelled (`notifications/cancelled`).
- Pool mode `shared` (2025-era sessions of a server declared stateless): the gateway initializes each process
  once and answers every client's `initialize` from that result; a new session goes to a process with no
  session, else a new one while the pool has room, else the one with the fewest sessions.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.asgi import respond
from mcpfleet.gateway.exchange import Exchange
from mcpfleet.gateway.pinning import unwrap, wrap
from mcpfleet.gateway.policy.tools import ToolGuard, closing
from mcpfleet.gateway.protocol import SESSION_HEADER, Message, dumps, id_key, parse_body, refuse_batch
from mcpfleet.gateway.upstream.relay.outbox import Outbox, closed_outbox
from mcpfleet.gateway.upstream.relay.serving import PoolServing, answer_post, delete_or_stream, request_timeout
from mcpfleet.gateway.upstream.relay.sessions import SharedProcess, SharedSession
from mcpfleet.gateway.upstream.relay.starts import MODERN, SHARED
from mcpfleet.gateway.upstream.relay.upkeep import worn

if TYPE_CHECKING:
    pass

log = logging.getLogger("mcpfleet.gateway.relay")

SPREAD_AT = 32  # 2026-07-28 requests in flight on every process before another one starts


class SharedServing(PoolServing):
    """The requests served by shared processes, for one relayed server's `pool`."""

    async def stateless(self, exchange: Exchange) -> None:
        record, body = unwrap(self._sessions.sealer, exchange.body)
        messages, batch = parse_body(body)
        if batch or len(messages) != 1:
            raise GatewayError.invalid_request("2026-07-28 requests are single JSON-RPC messages, not batches")
        message = messages[0]
        guard = ToolGuard.for_exchange(exchange)
        if guard is not None and (refusal := guard.check(message.data)) is not None:
            if refusal:
                await answer_post(exchange, [refusal], closed_outbox(), [], batch=False)
            else:  # a denied call sent as a notification: dropped, nothing to answer
                await respond(exchange.send, 202, b"")
            return
        shared = await self._modern_process(record, self._pool.deadline())
        if not message.is_request:
            # A client's `notifications/cancelled` names its own request id, which on a shared process may be
            # another client's; at 2026-07-28 the cancellation is the client closing its stream, passed on below.
            if message.method != "notifications/cancelled":
                await shared.send(message.raw)
            await respond(exchange.send, 202, b"")
            return
        where = {"s": self.server.id, "g": self._sessions.instance, "p": shared.serial}

        def pin(answer: bytes) -> bytes:
            wrapped = wrap(self._sessions.sealer, answer, where)
            if wrapped is not answer:
                shared.asked_at = time.monotonic()
            return wrapped

        box = Outbox(set(), transform=pin)
        shared.last_used = time.monotonic()
        upstream_id, data = shared.ids.outgoing(message, box)
        assert box.waiting is not None
        box.waiting.add(id_key(upstream_id))
        completed = False
        with closing(guard):
            if guard is not None:
                box.watch = guard.answer
                guard.expect(message.data, id_key(upstream_id))
            try:
                await shared.send(data)
                idle = request_timeout(self.server, shared.ids.original)
                completed = await answer_post(exchange, [], box, [], batch=False, idle=idle)
            finally:
                leftover = shared.ids.forget(box)
                box.close()
                if guard is not None:
                    guard.client_left = not completed
        if not completed and leftover and not shared.closed.is_set():
            # At 2026-07-28 a client that goes away cancels its request.
            with contextlib.suppress(GatewayError):
                await shared.send(shared.ids.cancel(upstream_id, "the client disconnected"))

    async def _modern_process(self, record: dict[str, Any] | None, deadline: float) -> SharedProcess:
        """The process for a 2026-07-28 request: the one that issued its `requestState` if it still runs;
        else the least busy one not due for recycling. Another process starts in the background when every
        one has SPREAD_AT requests in flight (up to `pool.max`) or is worn; the first starts on the request,
        and every request that arrives meanwhile waits for that same start (each until its own deadline)."""
        while True:
            now = time.monotonic()
            self._pool.modern[:] = [
                p for p in self._pool.modern if not p.closed.is_set()
            ]  # in place: lists keep identity
            live = [p for p in self._pool.modern if not p.stopping]
            if record is not None and record.get("s") == self.server.id and record.get("g") == self._sessions.instance:
                issuer = next((p for p in live if p.serial == record.get("p")), None)
                if issuer is not None:
                    return issuer  # only it can open the state (unless the server shares its key)
            if not live:
                self._pool.refuse_if_draining("2026-07-28 processes")
                await self._pool.starts.join(MODERN, deadline)
                continue
            fresh = [p for p in live if not worn(p, now)]
            best = min(fresh or live, key=lambda p: len(p.ids))
            busy = len(best.ids) >= SPREAD_AT and len(live) < self.server.pool.max
            pool = self._pool
            if (busy or not fresh) and not pool.starts.under_way(MODERN) and pool.admission.free and pool.accepting:
                log.info(
                    "server %r: another process for 2026-07-28 traffic (%d running, %d in flight on the least busy)",
                    self.server.id,
                    len(live),
                    len(best.ids),
                )
                pool.starts.begin(MODERN, pool.deadline())
            return best

    async def initialize_shared(self, exchange: Exchange, message: Message) -> None:
        process = await self._pick_shared(self._pool.deadline())
        try:
            result = await process.ensure_initialized(message, self.server.timeouts.startup)
        except BaseException:
            process.assigned -= 1
            raise
        session = SharedSession(process, self._owner)
        process.sessions.add(session)
        token = self._sessions.issue(session, exchange.owner)
        answer = dumps({"jsonrpc": "2.0", "id": message.data.get("id"), "result": result})
        box = Outbox()
        box.deliver(answer)
        box.close()
        await answer_post(exchange, [], box, [(SESSION_HEADER, token.encode())], batch=False)

    async def _pick_shared(self, deadline: float) -> SharedProcess:
        """A process with no session if there is one; else a new process while fewer than `pool.max` are in
        service and a slot is free (one start at a time, which concurrent callers wait for together); else the
        process with the fewest sessions (counted from the pick, so concurrent initializations spread too).
        Processes due for recycling get new sessions only when no other can take them."""
        while True:
            now = time.monotonic()
            shared = self._pool.shared
            shared[:] = [p for p in shared if not p.closed.is_set() and not p.stopping]
            fresh = [p for p in shared if not worn(p, now)]
            spare = next((p for p in fresh if p.assigned == 0), None)  # a warm one, or one all sessions left
            if spare is not None:
                process = spare
            elif not shared or (len(fresh) < self.server.pool.max and self._pool.admission.free):
                await self._pool.starts.join(SHARED, deadline)
                continue
            else:
                process = min(fresh or shared, key=lambda p: p.assigned)
            process.assigned += 1
            process.served += 1
            return process

    async def in_shared_session(self, exchange: Exchange, token: str, session: SharedSession) -> None:
        if await delete_or_stream(exchange, token, session, self._sessions):
            return
        process = session.process
        if session.closed or process.closed.is_set():
            self._sessions.drop(token)
            raise GatewayError.session_not_found()
        messages, batch = parse_body(exchange.body)
        if batch and isinstance(process.init_result, dict):
            refuse_batch(process.init_result.get("protocolVersion"))
        box = Outbox(set())
        assert box.waiting is not None
        guard = ToolGuard.for_exchange(exchange, token)
        if guard is not None:
            box.watch = guard.answer
        mine: list[str] = []
        refused = False
        for message in messages:
            if message.is_request:
                if guard is not None and (refusal := guard.check(message.data)) is not None:
                    box.deliver(refusal)  # answered here, in the answer's place; the process never sees it
                    refused = True
                    continue
                upstream_id, data = process.ids.outgoing(message, box)
                box.waiting.add(id_key(upstream_id))
                if guard is not None:
                    guard.expect(message.data, id_key(upstream_id))
                session.upstream_ids[message.id_key] = upstream_id
                mine.append(message.id_key)
            elif message.method == "notifications/initialized" or message.is_response:
                continue  # the process was initialized once; it sends its clients no requests
            elif guard is not None and guard.check(message.data) is not None:
                continue  # a denied `tools/call` sent as a notification: dropped (and audited)
            elif message.method == "notifications/cancelled":
                params = dict(message.data.get("params") or {})
                upstream = session.upstream_ids.get(id_key(params.get("requestId")))
                if upstream is None:
                    continue
                data = dumps({**message.data, "params": {**params, "requestId": upstream}})
            else:
                data = message.raw
            await process.send(data)
        if not box.waiting:
            if not refused:
                await respond(exchange.send, 202, b"")
                return
            box.close()  # only the gateway's own answers
        session.in_flight += 1
        try:
            idle = request_timeout(self.server, process.ids.original)
            with closing(guard):
                completed = await answer_post(
                    exchange, [], box, [(SESSION_HEADER, token.encode())], batch=batch, idle=idle
                )
                if guard is not None:
                    guard.client_left = not completed
        finally:
            session.in_flight -= 1
            process.ids.forget(box)
            box.close()
            for key in mine:
                session.upstream_ids.pop(key, None)
