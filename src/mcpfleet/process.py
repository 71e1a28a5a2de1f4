"""Supervision of one stdio MCP server process.

`StdioProcess` is an async context manager that owns the child from spawn to reaping:

- argv only, never a shell; the program is looked up on the child's PATH, then beside this interpreter
  (so console scripts installed in the same virtualenv are found without activating it);
- a minimal environment (a few inherited variables) plus the entry's `env` and `secret_env`;
- its own session and process group, so shutdown reaches every descendant;
- stderr drained continuously into a bounded ring buffer (kept for error messages, never interleaved
  with protocol traffic), stdout read line by line on demand as raw bytes;
- shutdown in the order the MCP lifecycle gives: close stdin, wait, SIGTERM to the group, wait, SIGKILL
  to the group; shielded from cancellation and bounded at every step.

Both the CLI (through an SDK transport adapter) and the gateway's stdio upstreams (which relay raw lines
untouched) use this one class.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

from mcpfleet.errors import ServerStartError
from mcpfleet.framing import DEFAULT_MAX_LINE, LineBuffer, MessageTooLarge, encode_line
from mcpfleet.registry.model import HttpServer, StdioServer

Spawnable = StdioServer | HttpServer

INHERITED_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR", "TZ")
_POLL = 0.01
_READ_CHUNK = 65536


def child_environment(env: Mapping[str, str], secret_env: Mapping[str, str]) -> dict[str, str]:
    base = {key: value for key in INHERITED_ENV if (value := os.environ.get(key)) is not None}
    return base | dict(env) | dict(secret_env)


def resolve_program(server_id: str, argv: Sequence[str], environ: Mapping[str, str], cwd: str | None) -> str:
    """The executable to run for argv[0], or a ServerStartError that says where it was looked for."""
    if cwd is not None and not os.path.isdir(cwd):
        # Else the OS says only "No such file or directory", which reads as the command's fault.
        raise ServerStartError(
            server_id, argv, f"could not be started: its working directory {cwd} (cwd) is not a directory"
        )
    program = argv[0]
    if os.sep in program:
        path = program if os.path.isabs(program) or cwd is None else os.path.join(cwd, program)
        if os.access(path, os.X_OK) and os.path.isfile(path):
            return path
        raise ServerStartError(server_id, argv, "cannot be run: the file does not exist or is not executable")
    interpreter_bin = os.path.dirname(sys.executable)
    search = os.pathsep.join(p for p in (environ.get("PATH", ""), interpreter_bin) if p)
    found = shutil.which(program, path=search)
    if found is None:
        raise ServerStartError(server_id, argv, f"was not found (looked on PATH and in {interpreter_bin})")
    return found


class Supervised:
    """What every supervisor of a stdio server has, a local process (`StdioProcess`) or a container
    (`ContainerProcess`): a start-up watchdog and the tail of its stderr. Subclasses set `_task_group`,
    `_stderr` and `timed_out`, and define `kill()`."""

    _task_group: anyio.abc.TaskGroup | None
    _stderr: collections.deque[str]
    timed_out: bool

    def kill(self) -> None:
        raise NotImplementedError

    def kill_after(self, seconds: float) -> anyio.CancelScope:
        """Kill the server in `seconds` unless the returned scope is cancelled first (a startup watchdog).

        `timed_out` tells afterwards whether it fired. The timer runs in this object's own task group, so
        the caller needs no task group of its own around the code it guards.
        """
        scope = anyio.CancelScope()

        async def timer() -> None:
            with scope:
                await anyio.sleep(seconds)
                self.timed_out = True
                self.kill()

        if self._task_group is not None:
            self._task_group.start_soon(timer)
        return scope

    def stderr_tail(self) -> str:
        """The server's last stderr lines, oldest first."""
        return "\n".join(self._stderr)


class StdioProcess(Supervised):
    """One running stdio server. Use as `async with StdioProcess(...) as proc:`; send and receive raw lines."""

    @classmethod
    def for_entry(cls, server: Spawnable, argv: Sequence[str], *, max_line: int = DEFAULT_MAX_LINE) -> StdioProcess:
        """The process a registry entry describes: its argv, environment, directory and stop timeout;
        `max_line`: the largest message it may write, in bytes (`gateway.max_message_bytes`)."""
        return cls(
            server.id,
            argv,
            env=server.env,
            secret_env=server.secret_env,
            cwd=server.cwd,
            shutdown_grace=server.timeouts.shutdown,
            max_line=max_line,
        )

    def __init__(
        self,
        server_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        secret_env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        shutdown_grace: float = 2.0,
        stderr_lines: int = 40,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self.server_id = server_id
        self.argv = tuple(argv)
        self._environ = child_environment(env or {}, secret_env or {})
        self._cwd = cwd
        self._grace = shutdown_grace
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._process: anyio.abc.Process | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._lines = LineBuffer(max_line)
        self._ready: collections.deque[bytes | MessageTooLarge] = collections.deque()
        self._send_lock = anyio.Lock()
        self._eof = False
        self.timed_out = False
        self._last_returncode: int | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> StdioProcess:
        program = resolve_program(self.server_id, self.argv, self._environ, self._cwd)
        try:
            self._process = await anyio.open_process(
                [program, *self.argv[1:]],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._environ,
                cwd=self._cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServerStartError(self.server_id, self.argv, f"could not be started: {exc.strerror or exc}") from None
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._drain_stderr)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        try:
            with anyio.CancelScope(shield=True):
                await self._stop(process)
                self._last_returncode = process.returncode
        finally:
            if self._task_group is not None:
                task_group, self._task_group = self._task_group, None
                task_group.cancel_scope.cancel()
                await task_group.__aexit__(None, None, None)

    async def _stop(self, process: anyio.abc.Process) -> None:
        if self._task_group is not None:
            # A child blocked writing a full stdout pipe cannot see its stdin close: keep reading.
            self._task_group.start_soon(self._discard_stdout, process)
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.aclose()  # type: ignore[union-attr]
        if not await _exited(process, self._grace):
            self._signal_group(process.pid, signal.SIGTERM)
            if not await _exited(process, self._grace):
                self._signal_group(process.pid, signal.SIGKILL)
                await _exited(process, self._grace)
        # The leader is gone; descendants that kept running in its group go too.
        if self._group_alive(process.pid):
            self._signal_group(process.pid, signal.SIGTERM)
            with anyio.move_on_after(self._grace):
                while self._group_alive(process.pid):  # noqa: ASYNC110 - no event exists for a group's exit
                    await anyio.sleep(_POLL)
            self._signal_group(process.pid, signal.SIGKILL)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await stream.aclose()

    @staticmethod
    def _signal_group(pgid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        return bool(live_group_members(pgid))

    # --- I/O ------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has exited (also after aclose), else None."""
        return self._last_returncode if self._process is None else self._process.returncode

    async def wait_exited(self, within: float) -> bool:
        """Whether the child exits within `within` seconds (it may already have)."""
        return self._process is not None and await _exited(self._process, within)

    def kill(self) -> None:
        """SIGKILL the whole process group now (a watchdog's last resort; aclose() still reaps)."""
        if self._process is not None:
            self._signal_group(self._process.pid, signal.SIGKILL)

    async def send(self, message: bytes) -> None:
        """Write one serialized JSON-RPC message as one line on the child's stdin."""
        process = self._require()
        async with self._send_lock:
            await process.stdin.send(encode_line(message))  # type: ignore[union-attr]

    async def receive(self) -> bytes:
        """The next line the child wrote on stdout; raises anyio.EndOfStream when stdout closes, and
        `MessageTooLarge` for a line over `max_line` (skipped: the next call returns the line after it)."""
        process = self._require()
        while not self._ready:
            if self._eof:
                raise anyio.EndOfStream
            try:
                chunk = await process.stdout.receive(_READ_CHUNK)  # type: ignore[union-attr]
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._eof = True
                if (rest := self._lines.flush()) is not None:
                    self._ready.append(rest)
                continue
            self._ready.extend(self._lines.feed(chunk))
        line = self._ready.popleft()
        if isinstance(line, MessageTooLarge):
            raise line
        return line

    def _require(self) -> anyio.abc.Process:
        if self._process is None:
            raise anyio.ClosedResourceError
        return self._process

    @staticmethod
    async def _discard_stdout(process: anyio.abc.Process) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            while True:
                await process.stdout.receive(_READ_CHUNK)  # type: ignore[union-attr]

    async def _drain_stderr(self) -> None:
        process = self._process
        if process is None or process.stderr is None:
            return
        pending = ""
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            async for text in TextReceiveStream(process.stderr, errors="replace"):
                *complete, pending = (pending + text).split("\n")
                self._stderr.extend(line.rstrip("\r") for line in complete if line.strip())
                if len(pending) > 4096:
                    self._stderr.append(pending[:4096])
                    pending = ""
        if pending.strip():
            self._stderr.append(pending)


async def _exited(process: anyio.abc.Process, within: float) -> bool:
    # Poll returncode rather than wait(): wait() also waits for pipe EOF, which a grandchild can hold open.
    with anyio.move_on_after(within):
        while process.returncode is None:  # noqa: ASYNC110 - see above
            await anyio.sleep(_POLL)
    return process.returncode is not None


def live_group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are still running (zombies awaiting their reaper do not count)."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members
