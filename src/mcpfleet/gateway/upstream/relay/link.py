"""`Link`: one backend (a stdio process, or a bridged connection) and the task that reads it.

What session mode (`StdioSession`) and shared processes (`SharedProcess`) have in common: the reading loop
that hands each message to `dispatch`, the error for requests that cannot be answered once it ended, and a
bounded stop. A link keeps the registry entry it was started with: its own timeouts and recycling limits
are those, whatever a reload changes later (sessions.py, upkeep.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import anyio
import anyio.abc

from mcpfleet.errors import DeployError, GatewayError, ServerStartError
from mcpfleet.framing import MessageTooLarge
from mcpfleet.gateway import tracing
from mcpfleet.gateway.protocol import TOO_LARGE, Message, error_response, message_kind, parse_message, too_large
from mcpfleet.gateway.upstream.backend import Backend, ProcessBackend
from mcpfleet.registry.model import HttpServer, StdioServer

log = logging.getLogger("mcpfleet.gateway.relay")

EXITED = -32014
UNREACHABLE = -32012


class Link:
    """What session and shared modes have in common: one backend and the task that reads it."""

    def __init__(self, server: StdioServer | HttpServer, backend: Backend) -> None:
        self.server = server
        self.backend = backend
        self.closed = anyio.Event()
        self.exit_detail = ""
        self.born = time.monotonic()
        self.served = 0  # client sessions given this process over its life (pool mode `shared`)
        self._running = False
        self.started = False
        self.stopping = False
        self._stop = anyio.CancelScope()
        # Called once, at the first message the backend writes: its start-up is over (admission.py).
        self.on_first_message: Callable[[], None] | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with self.backend:
                self._running = True
                self.started = True
                task_status.started()
                with (
                    self._stop,
                    contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError),
                ):
                    while True:
                        try:
                            line = await self.backend.receive()
                        except MessageTooLarge as exc:  # skipped; the request it answers fails, nothing else
                            stand_in = self._in_place_of(exc)
                            if stand_in is None:
                                continue
                            line = stand_in
                        if self.on_first_message is not None:
                            self.on_first_message()
                            self.on_first_message = None
                        message = parse_message(line)
                        if message is None:
                            log.warning("server %r sent something that is not JSON-RPC; skipped", self.server.id)
                            continue
                        if (reply := self.dispatch(message)) is not None:
                            await self.backend.send(reply)
                self.exit_detail = await self.backend.settle()
        except (ServerStartError, DeployError) as exc:  # it never started (a container: its engine said why)
            self.exit_detail = exc.reason if isinstance(exc, ServerStartError) else exc.message
            raise
        except Exception as exc:  # the gateway's task group must not die with one backend
            if not self._running:
                raise
            self.exit_detail = f"{type(exc).__name__}: {exc}"
            log.warning("server %r: backend failed: %s", self.server.id, self.exit_detail)
        finally:
            self._running = False
            self.exit_detail = self.exit_detail or "stopped"
            self.finish()
            self.closed.set()

    @property
    def bridged(self) -> bool:
        """An HTTP server reached through a connection of the gateway's, not a process it runs."""
        return not isinstance(self.backend, ProcessBackend)

    def ended(self, detail: str, when: str = "") -> GatewayError:
        """The error for requests that cannot be answered because this link ended: a process exited (-32014),
        or a bridged connection ended (-32012: a transport event, never counted as a crash)."""
        if self.bridged:
            return GatewayError(502, UNREACHABLE, f"the connection to server {self.server.id!r} ended{when} ({detail})")
        return GatewayError(502, EXITED, f"server {self.server.id!r} exited{when} ({detail})")

    def _in_place_of(self, exc: MessageTooLarge) -> bytes | None:
        """The error answer that stands for a message the server wrote over `gateway.max_message_bytes`, to
        the request whose id the message names (its first or last bytes hold it); None when none is found."""
        kind, request_id = message_kind(exc.head, exc.tail)
        text = too_large(self.server.id, exc.size, exc.limit)
        if kind != "answer":  # a notification or a request to the client: nobody waits for it
            log.warning("%s; not an answer to a request: skipped", text)
            return None
        log.warning("%s; request %r fails", text, request_id)
        return error_response(request_id, TOO_LARGE, text)

    last_used: float

    @property
    def idle(self) -> bool:
        """Nothing in flight and no stream open: stopping it now loses nothing."""
        raise NotImplementedError

    @property
    def has_sessions(self) -> bool:
        """A client session is on it: stopping it would end one."""
        raise NotImplementedError

    def dispatch(self, message: Message) -> bytes | None:
        """Route one message from the backend; return a message to send back to it, if any."""
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        if not self._running or self.closed.is_set():
            raise self.ended(self.exit_detail or "not running")
        if tracing.enabled:
            data = tracing.inject_meta(data)
        try:
            await self.backend.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            # The process is going away: wait (bounded) for its exit code and last stderr line to be known.
            with anyio.move_on_after(self.server.timeouts.shutdown + 1):
                await self.closed.wait()
            raise self.ended(self.exit_detail or "its input is closed") from None

    async def aclose(self) -> None:
        if not self.closed.is_set():
            self.stopping = True  # asked to stop: not a crash
        self._stop.cancel()
        with anyio.move_on_after(self.server.timeouts.shutdown * 3 + 1):
            await self.closed.wait()
