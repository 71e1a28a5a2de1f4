"""A stdio MCP server in a Docker container, supervised like a local one.

`ContainerProcess` has the surface of `StdioProcess` (process.py), so the gateway's pool (through
`ProcessBackend.of`) and the CLI (through `process_transport`) use it unchanged:

- the container is created from the entry (`spec.container_body`, role `session`, with `OpenStdin` and
  `StdinOnce` and no TTY), attached to **before** it starts (so nothing it writes is lost), then started;
- one attach stream carries stdin, stdout and stderr (Engine API `ContainerAttach`, API 1.41:
  https://docs.docker.com/engine/api/v1.41/#tag/Container/operation/ContainerAttach). Without a TTY the
  engine multiplexes stdout and stderr in frames of at most 32 KiB, each with an 8-byte header; aiodocker
  strips the headers and says which stream a frame is from. Lines are rebuilt across frames (`LineBuffer`);
- a task owned by the object reads the stream continuously: stderr into a bounded ring (kept for error
  messages, never mixed with protocol traffic), stdout lines handed to `receive` one at a time;
- shutdown in the order the MCP lifecycle gives: half-close stdin (the engine closes the container's stdin,
  since `StdinOnce`, and goes on streaming its output), wait, stop (SIGTERM, then SIGKILL), remove with
  force; shielded from cancellation, bounded at every step, and the container is removed whatever happened,
  also when it never started.

The exit code comes from inspecting the container once its output stream ends (no long-lived `wait`
request: each container then holds one connection to the engine, not two).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import logging
import math
import os
import secrets
import socket
from types import TracebackType
from typing import Any

import aiodocker
import aiohttp
import anyio
import anyio.abc
from aiodocker.stream import Stream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mcpfleet.deploy.docker import spec
from mcpfleet.deploy.docker.deployer import DockerDeployer
from mcpfleet.deploy.docker.engine import REQUEST_TIMEOUT, Engine
from mcpfleet.errors import DeployError
from mcpfleet.framing import DEFAULT_MAX_LINE, LineBuffer, MessageTooLarge, encode_line
from mcpfleet.process import Supervised
from mcpfleet.registry.model import DockerServer

log = logging.getLogger("mcpfleet.docker")

STDERR = 2  # the stream number of a stderr frame (stdout is 1)
_LINE_KEPT = 4096  # characters kept of one stderr line
_POLL_FIRST, _POLL_MAX = 0.01, 0.5  # seconds between inspections of a container whose output ended
_STOPPED = ("exited", "dead", "removing")  # `State.Status` of a container that ran and stopped
_LOGS_WITHIN = 2.0  # seconds for fetching the stderr of a container whose attach stream carried none
# What a call to the engine can raise: the Engine's own errors, and aiodocker's and aiohttp's where attach.py
# uses the aiodocker client directly.
_ENGINE_ERRORS: tuple[type[Exception], ...] = (DeployError, aiodocker.DockerError, aiohttp.ClientError, OSError)


def owner_id() -> str:
    """`<host>:<pid>`: the `mcpfleet.owner` label of the stdio containers this process attaches to."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ContainerProcess(Supervised):
    """One stdio server running in a container. Use as `async with ContainerProcess(...) as proc:`; send and
    receive raw lines, as with `StdioProcess`.

    `project`: the label and name prefix of the container; `owner`: its `mcpfleet.owner` label (see
    `owner_id`); `max_line`: the largest message it may write, in bytes (`gateway.max_message_bytes`).
    Entering raises `DeployError` when the image cannot be had (per the entry's `pull`, within
    `timeouts.startup`) or the engine refuses to create, attach to or start the container."""

    def __init__(
        self,
        engine: Engine,
        entry: DockerServer,
        *,
        project: str,
        owner: str | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        stderr_lines: int = 40,
    ) -> None:
        if not entry.stdio:
            raise ValueError(f"server {entry.id!r} has a port: it is an HTTP server, not a stdio one")
        self.server_id = entry.id
        self.argv = ("docker", entry.image, *(entry.command or ()), *(entry.args or ()))
        self.name = spec.session_name(project, entry.id, secrets.token_hex(4))
        self.container_id: str | None = None
        self._engine = engine
        self._entry = entry
        self._project = project
        self._owner = owner
        self._grace = entry.timeouts.shutdown
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._max_line = max_line
        self._lines: MemoryObjectReceiveStream[bytes | MessageTooLarge] | None = None  # from the reader task
        self._stream: Stream | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._send_lock = anyio.Lock()
        self._create_sent = False
        self._started = False
        self._reading = False
        self._closed = False
        self._exited = anyio.Event()
        self._returncode: int | None = None
        self.timed_out = False

    # --- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> ContainerProcess:
        engine, entry = self._engine, self._entry
        deployer = DockerDeployer(engine, self._project)
        await deployer.prepare(entry)  # the image, a named network and volumes
        digest = await deployer.digest(entry)
        body = spec.container_body(
            entry, project=self._project, name=self.name, role="session", digest=digest, owner=self._owner
        )
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            self._create_sent = True
            # Shielded: a container the engine made must be known by its id, or it could not be removed.
            with anyio.fail_after(REQUEST_TIMEOUT, shield=True):
                self.container_id = await engine.create(body, self.name, server_id=entry.id)
            container = engine.docker.containers.container(self.container_id)
            stream = self._stream = container.attach(stdin=True, stdout=True, stderr=True)
            await engine._call(stream.__aenter__(), server_id=entry.id, what=f"attaching to container {self.name}")
            lines_in, self._lines = anyio.create_memory_object_stream[bytes | MessageTooLarge](0)
            self._reading = True
            self._task_group.start_soon(self._read, stream, lines_in)
            await engine.start(self.container_id, server_id=entry.id, name=self.name)
            self._started = True
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed or self._task_group is None:
            return
        self._closed = True
        try:
            with anyio.CancelScope(shield=True):
                await self._stop()
        finally:
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    await self._stream.close()
            task_group, self._task_group = self._task_group, None
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)

    async def _stop(self) -> None:
        # Whatever the container still writes is read and dropped, so it is never blocked writing.
        if self._lines is not None:
            self._lines.close()
        if self._started and self._stream is not None:
            _half_close(self._stream)
            if not await self.wait_exited(self._grace):
                with anyio.move_on_after(self._grace + REQUEST_TIMEOUT), contextlib.suppress(*_ENGINE_ERRORS):
                    container = self._engine.docker.containers.container(self.container_id or self.name)
                    await container.stop(t=math.ceil(self._grace))  # SIGTERM, SIGKILL after t seconds
                await self.wait_exited(self._grace)
        if self._create_sent:
            # By name: a create that was interrupted still made a container of that name.
            failure = f"no answer within {REQUEST_TIMEOUT:g} s"
            with anyio.move_on_after(REQUEST_TIMEOUT):
                try:
                    await self._engine.remove(self.container_id or self.name, grace=0)
                    failure = ""
                except _ENGINE_ERRORS as exc:
                    failure = str(exc)
            if failure:
                log.warning("server %r: container %s was not removed: %s", self.server_id, self.name, failure)

    # --- state ----------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """None: the server's process lives in the container's own process namespace."""
        return None

    @property
    def returncode(self) -> int | None:
        """The container's exit code once it has exited (137 after SIGKILL), also after aclose; else None."""
        return self._returncode

    async def wait_exited(self, within: float) -> bool:
        """Whether the container exits within `within` seconds (it may already have). Once this is true,
        `returncode` and `stderr_tail()` hold what the container left.

        The reader task learns the exit when the output ends; when that task is gone (cancelled with the
        scope this object was entered in), this inspects the container itself, with backoff."""
        if not self._started or self._exited.is_set():
            return self._exited.is_set()
        delay = _POLL_FIRST
        with anyio.move_on_after(within):
            while not self._exited.is_set():
                if not self._reading:
                    await self._check_exit()
                with anyio.move_on_after(delay):
                    await self._exited.wait()
                delay = min(delay * 2, _POLL_MAX)
        return self._exited.is_set()

    def kill(self) -> None:
        """SIGKILL the container now (a watchdog's last resort; aclose() still removes it)."""
        if self._task_group is not None and self.container_id is not None:
            self._task_group.start_soon(self._kill, self.container_id)

    async def _kill(self, container_id: str) -> None:
        with anyio.move_on_after(REQUEST_TIMEOUT), contextlib.suppress(*_ENGINE_ERRORS):
            await self._engine.kill(container_id)

    # --- I/O ------------------------------------------------------------------------------------------

    async def send(self, message: bytes) -> None:
        """Write one serialized JSON-RPC message as one line on the container's stdin. Raises
        anyio.ClosedResourceError after aclose, anyio.BrokenResourceError when the stream is gone."""
        if self._stream is None or self._closed:
            raise anyio.ClosedResourceError
        line = encode_line(message)
        async with self._send_lock:
            try:
                await self._stream.write_in(line)
            except (RuntimeError, ConnectionError, aiohttp.ClientError) as exc:
                raise anyio.BrokenResourceError from exc

    async def receive(self) -> bytes:
        """The next line the container wrote on stdout, without its newline; raises anyio.EndOfStream when
        its stdout ends, and `MessageTooLarge` for a line over `max_line` (skipped: the next call returns the
        line after it)."""
        if self._lines is None:
            raise anyio.ClosedResourceError
        line = await self._lines.receive()
        if isinstance(line, MessageTooLarge):
            raise line
        return line

    async def _read(self, stream: Stream, lines_in: MemoryObjectSendStream[bytes | MessageTooLarge]) -> None:
        """Demultiplex the attach stream until it ends, then learn how the container ended."""
        lines = LineBuffer(self._max_line)
        stdout_open = True
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        try:
            while (frame := await stream.read_out()) is not None:
                if frame.stream == STDERR:
                    pending = self._keep_stderr(pending + decoder.decode(frame.data))
                    continue
                for line in lines.feed(frame.data):
                    stdout_open = stdout_open and await _hand_over(lines_in, line)
            if stdout_open and (rest := lines.flush()) is not None:
                await _hand_over(lines_in, rest)
        except Exception as exc:  # the engine went away mid-stream: the same as the end of the output
            log.warning("server %r: the attach stream of %s failed: %r", self.server_id, self.name, exc)
        finally:
            lines_in.close()
            self._reading = False
        pending += decoder.decode(b"", final=True)
        if pending.strip():
            self._stderr.append(pending[:_LINE_KEPT])
        delay = _POLL_FIRST
        while not await self._check_exit():  # the output can end a moment before the engine records the exit
            await anyio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    def _keep_stderr(self, text: str) -> str:
        *complete, pending = text.split("\n")
        self._stderr.extend(line.rstrip("\r")[:_LINE_KEPT] for line in complete if line.strip())
        if len(pending) > _LINE_KEPT:
            self._stderr.append(pending[:_LINE_KEPT])
            pending = ""
        return pending

    async def _check_exit(self) -> bool:
        """Inspect the container once. When it has stopped (or is gone), keep its exit code, fetch its stderr
        from the logs if the attach stream carried none, and tell `wait_exited`; whether it has."""
        assert self.container_id is not None
        try:
            found = await self._engine.inspect(self.container_id)
        except _ENGINE_ERRORS as exc:
            log.debug("server %r: inspecting %s failed: %s", self.server_id, self.name, exc)
            return False
        state = {} if found is None else found["State"]
        if found is not None and state["Status"] not in _STOPPED:
            return False
        if not self._exited.is_set():
            self._returncode = None if found is None else int(state["ExitCode"])  # None: removed by someone else
            if not self._stderr and found is not None:
                self._stderr.extend(await self._stderr_from_logs(self.container_id))
            self._exited.set()
        return True

    async def _stderr_from_logs(self, container_id: str) -> list[str]:
        with anyio.move_on_after(_LOGS_WITHIN), contextlib.suppress(*_ENGINE_ERRORS):
            container = self._engine.docker.containers.container(container_id)
            lines = await container.log(stderr=True, tail=self._stderr.maxlen or 40)
            return [line.rstrip("\r\n")[:_LINE_KEPT] for line in lines if line.strip()]
        return []


async def _hand_over(lines_in: MemoryObjectSendStream[bytes | MessageTooLarge], line: bytes | MessageTooLarge) -> bool:
    """Give one line to `receive`; whether anyone still takes them (no one after aclose)."""
    try:
        await lines_in.send(line)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        return False
    return True


def _half_close(stream: Stream) -> None:
    """Half-close the attach connection: end the container's stdin and keep reading its output.

    aiodocker's `Stream.close()` also closes the HTTP response, which drops everything the container writes
    after it, so this reaches the connection's transport itself (`write_eof()`: a TCP or unix-socket
    shutdown for writing)."""
    response: Any = stream._resp
    connection = None if response is None else response.connection
    transport = None if connection is None else connection.transport
    if transport is not None and transport.can_write_eof():
        with contextlib.suppress(OSError, RuntimeError):
            transport.write_eof()
