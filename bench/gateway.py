"""Gateway benchmark: `tools/call echo` direct to a demo backend vs through the mcpfleet gateway.

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/gateway.py            # the table
    .venv/bin/python bench/gateway.py --json     # machine output on stdout (progress goes to stderr)
    .venv/bin/python bench/gateway.py --profile  # plus a py-spy profile of the gateway (extra phase)

It starts everything itself on 127.0.0.1 (the demo HTTP server, the gateway with a generated registry that
has an `http` entry for that server and a `stdio` entry that spawns the demo over stdio), each in its own
process group, and stops all of it in `finally`, including the stdio processes the gateway spawned.

Targets: `direct` (the demo HTTP server's /mcp), `gateway-http` (the gateway in front of that same server)
and `gateway-stdio` (the gateway in front of demo stdio processes). Eras: `2025` opens one session per
worker with the 2025-11-25 handshake (initialize, notifications/initialized) and sends every call in it;
`2026` sends stateless 2026-07-28 requests shaped like the SDK client's (the MCP-Protocol-Version,
Mcp-Method and Mcp-Name headers and the `_meta` envelope). Each worker owns one keep-alive connection.

The measuring client is deliberately cheap: a minimal HTTP/1.1 client over anyio sockets (`--client raw`,
the default) or httpx2 (`--client httpx2`), no SDK session objects. Every reply is parsed (JSON or Server-Sent
Events) and checked against the text that was sent; wrong replies and errors are counted, never hidden.
All loops are bounded by a call count and a time cap; every call has a timeout.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import httpx2
from anyio.streams.buffered import BufferedByteStream

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
HANDSHAKE_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO = {"name": "mcpfleet-bench", "version": "0.1.0"}
# A raw 2025-11-25 handshake, for the benchmarks that time a first answer with plain HTTP.
INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": HANDSHAKE_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
    }
).encode()
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024

TARGETS = ("direct", "gateway-http", "gateway-stdio")
ERAS = ("2025", "2026")

# The goals from the issue, printed beside the figures (never asserted).
GOAL_ADDED_P50_MS = 0.5
GOAL_THROUGHPUT_PCT = 70.0
GOAL_GATEWAY_CPU = 0.3
REFERENCE_SDK_SERVER_CPU = 1.2


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- /proc ----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads, not its children), in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent not idle (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def status_kib(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status, e.g. VmHWM (peak RSS) or VmRSS."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return found


def descendants_of(pid: int) -> list[int]:
    seen: list[int] = []
    frontier = [pid]
    while frontier and len(seen) < 10_000:
        kids = children_of(frontier.pop())
        seen.extend(kids)
        frontier.extend(kids)
    return seen


def total_cpu(pids: Sequence[int]) -> float:
    return sum(c for c in (cpu_seconds(p) for p in pids) if c is not None)


def cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def source_state() -> dict[str, Any]:
    """Which gateway code was measured: the commit, and a digest of src/ as it is on disk (it may be dirty)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    state: dict[str, Any] = {"src_sha256": digest.hexdigest()[:16]}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO)]
        state["commit"] = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, timeout=10
        ).stdout
        state["src_modified_files"] = len(dirty.splitlines())
    return state


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "loadavg_at_start": loadavg(),
    }


# --- processes ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A process started in its own process group; `stop` ends it and everything it spawned."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    known: dict[int, bytes] = field(default_factory=dict)  # descendants seen, with their command lines

    @property
    def pid(self) -> int:
        return self.popen.pid

    def remember_descendants(self) -> None:
        for pid in descendants_of(self.pid):
            if pid not in self.known and (line := cmdline(pid)) is not None:
                self.known[pid] = line

    def stop(self, grace: float = 30.0) -> None:
        self.remember_descendants()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {grace:g} s of SIGTERM: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        # stdio servers run in process groups of their own: anything still alive that we saw spawned goes too.
        deadline = time.monotonic() + 3
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p, line in self.known.items() if cmdline(p) == line]
            if not alive:
                return
            if sig == signal.SIGKILL:
                log(f"{self.name}: {len(alive)} leftover child process(es) after stop: SIGKILL")
            for pid in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            while time.monotonic() < deadline and any(cmdline(p) == line for p, line in self.known.items()):
                time.sleep(0.05)

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def spawn(name: str, argv: list[str], workdir: Path, cwd: Path) -> Child:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
        )
    return Child(name, popen, log_path)


async def wait_listening(child: Child, port: int, within: float = 30.0) -> None:
    with anyio.move_on_after(within):
        while True:
            if child.popen.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{child.tail()}")
            try:
                stream = await anyio.connect_tcp(HOST, port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return
    raise RuntimeError(f"{child.name} did not listen on {HOST}:{port} within {within:g} s:\n{child.tail()}")


# --- a minimal HTTP/1.1 client ----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes


class Transport(Protocol):
    resent: int

    async def request(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply: ...

    async def reset(self) -> None: ...

    async def aclose(self) -> None: ...


class RawConnection:
    """One keep-alive HTTP/1.1 connection; just enough of the protocol for uvicorn's answers.

    Like any HTTP client, it sends a request again, once, on a fresh connection when a reused keep-alive
    connection turns out to be closed before a single byte of the answer came back (uvicorn closes idle
    connections after 5 s). Those resends are counted in `resent`.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._host_line = f"host: {HOST}:{port}\r\n"
        self._stream: BufferedByteStream | None = None
        self.resent = 0

    async def request(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        head = f"{method} {path} HTTP/1.1\r\n{self._host_line}" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        data = f"{head}content-length: {len(body)}\r\n\r\n".encode("latin-1") + body
        stream = self._stream
        if stream is not None:
            try:
                await stream.send(data)
                raw_head = await stream.receive_until(b"\r\n\r\n", MAX_HEAD)
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                if stream.buffer:
                    raise  # part of an answer came: not a stale connection
                await self.reset()
                self.resent += 1
                stream = None
        if stream is None:
            stream = self._stream = BufferedByteStream(await anyio.connect_tcp(HOST, self.port))
            await stream.send(data)
            raw_head = await stream.receive_until(b"\r\n\r\n", MAX_HEAD)
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        reply_headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            reply_headers[name.strip().lower()] = value.strip()
        if (length := reply_headers.get("content-length")) is not None:
            content = await stream.receive_exactly(int(length)) if int(length) else b""
        elif reply_headers.get("transfer-encoding", "").lower() == "chunked":
            content = await self._chunked(stream)
        elif status in (204, 304) or method == "HEAD":
            content = b""
        else:
            raise ValueError(f"reply {status} has neither content-length nor chunked encoding")
        if reply_headers.get("connection", "").lower() == "close":
            await self.reset()
        return Reply(status, reply_headers, content)

    @staticmethod
    async def _chunked(stream: BufferedByteStream) -> bytes:
        parts: list[bytes] = []
        size_total = 0
        while True:
            size = int((await stream.receive_until(b"\r\n", 1024)).split(b";", 1)[0], 16)
            if size == 0:
                while await stream.receive_until(b"\r\n", MAX_HEAD):  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            size_total += size
            if size_total > MAX_BODY:
                raise ValueError(f"chunked body larger than {MAX_BODY} bytes")
            parts.append(await stream.receive_exactly(size))
            if await stream.receive_exactly(2) != b"\r\n":
                raise ValueError("malformed chunk: no CRLF after the data")

    async def reset(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def aclose(self) -> None:
        await self.reset()


class Httpx2Connection:
    """The same interface over an httpx2 client limited to one connection."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.resent = 0  # httpx2 resends on stale connections itself, uncounted
        self._client = self._new()

    def _new(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            base_url=f"http://{HOST}:{self.port}",
            timeout=self.timeout,
            limits=httpx2.Limits(max_connections=1, max_keepalive_connections=1),
            trust_env=False,
        )

    async def request(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        response = await self._client.request(method, path, headers=dict(headers), content=body)
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)

    async def reset(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()
        self._client = self._new()

    async def aclose(self) -> None:
        await self._client.aclose()


# --- MCP over that client ---------------------------------------------------------------------------------


class ProtocolFailure(Exception):
    """The reply was not a usable answer (HTTP status, JSON-RPC error, unparsable body)."""


def messages_of(reply: Reply) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a reply: a JSON body, or the `message` events of an event stream."""
    content_type = reply.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        data = json.loads(reply.body)
        items = data if isinstance(data, list) else [data]
    elif content_type.startswith("text/event-stream"):
        items = []
        for block in reply.body.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
            event, data_lines = "message", []
            for line in block.split("\n"):
                if line.startswith("data:"):
                    data_lines.append(line[6:] if line.startswith("data: ") else line[5:])
                elif line.startswith("event:"):
                    event = line[6:].strip()
            if event == "message" and data_lines and any(data_lines):
                items.append(json.loads("\n".join(data_lines)))
    else:
        raise ProtocolFailure(f"HTTP {reply.status} with content-type {content_type!r}: {reply.body[:200]!r}")
    return [item for item in items if isinstance(item, dict)]


def answer_to(reply: Reply, request_id: int) -> dict[str, Any]:
    if reply.status != 200:
        raise ProtocolFailure(f"HTTP {reply.status}: {reply.body[:300]!r}")
    messages = messages_of(reply)
    for message in messages:
        if message.get("id") == request_id and ("result" in message or "error" in message):
            if "error" in message:
                error = message["error"]
                raise ProtocolFailure(f"JSON-RPC error {error.get('code')}: {error.get('message')}")
            result = message["result"]
            if not isinstance(result, dict):
                raise ProtocolFailure(f"result is not an object: {result!r}")
            return result
    ids = [m.get("id") for m in messages]
    raise WrongReply(f"no answer with id {request_id} in the reply (ids seen: {ids})")


class WrongReply(Exception):
    """A well-formed reply whose content is not what was sent (or that answers another request)."""


def payload(size: int) -> str:
    """A fresh text per call: characters that need care in JSON, then random bytes as base64."""
    return 'é"' + base64.b64encode(os.urandom(size)).decode()


def check_echo(result: dict[str, Any], text: str) -> None:
    content = result.get("content")
    if result.get("isError"):
        raise WrongReply(f"tool error: {content!r:.200}")
    if not (isinstance(content, list) and len(content) == 1 and isinstance(content[0], dict)):
        raise WrongReply(f"content is not one item: {content!r:.200}")
    item = content[0]
    if item.get("type") != "text" or item.get("text") != text:
        raise WrongReply(f"sent {text!r}, got {item!r:.200}")
    structured = result.get("structuredContent")
    if structured is not None and structured != {"result": text}:
        raise WrongReply(f"structuredContent {structured!r:.200} does not match {text!r}")


@dataclass
class Session:
    """One worker's conversation with one target: its connection and (2025) its session id."""

    transport: Transport
    path: str
    era: str
    session_id: str | None = None
    next_id: int = 1
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.headers = self._headers()

    def _headers(self) -> dict[str, str]:
        """What the SDK client sends with a tools/call in this era (streamable_http.py, session.py)."""
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        if self.era == "2025":
            if self.session_id is not None:
                headers["mcp-session-id"] = self.session_id
                headers["mcp-protocol-version"] = HANDSHAKE_VERSION
        else:
            headers |= {"mcp-protocol-version": MODERN_VERSION, "mcp-method": "tools/call", "mcp-name": "echo"}
        return headers

    async def open(self) -> None:
        """2025: initialize and notifications/initialized. 2026: nothing to open (stateless)."""
        if self.era != "2025":
            return
        body = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": HANDSHAKE_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
        }
        reply = await self.transport.request("POST", self.path, self.headers, json.dumps(body).encode())
        result = answer_to(reply, 0)
        if result.get("protocolVersion") != HANDSHAKE_VERSION:
            raise ProtocolFailure(f"initialize negotiated {result.get('protocolVersion')!r}")
        self.session_id = reply.headers.get("mcp-session-id")
        if not self.session_id:
            raise ProtocolFailure("initialize answered without an Mcp-Session-Id")
        self.headers = self._headers()
        notified = await self.transport.request(
            "POST", self.path, self.headers, b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
        )
        if notified.status != 202:
            raise ProtocolFailure(f"notifications/initialized answered HTTP {notified.status}")

    def call_body(self, request_id: int, text: str) -> bytes:
        params: dict[str, Any] = {"name": "echo", "arguments": {"text": text}}
        if self.era == "2026":
            params["_meta"] = {META_VERSION: MODERN_VERSION, META_CLIENT_INFO: CLIENT_INFO, META_CAPABILITIES: {}}
        message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()

    async def echo(self, text: str) -> None:
        """One tools/call echo; raises WrongReply or ProtocolFailure (or a transport error)."""
        request_id = self.next_id
        self.next_id += 1
        reply = await self.transport.request("POST", self.path, self.headers, self.call_body(request_id, text))
        check_echo(answer_to(reply, request_id), text)

    async def close(self) -> None:
        if self.era == "2025" and self.session_id is not None:
            with contextlib.suppress(Exception), anyio.move_on_after(5):
                await self.transport.request("DELETE", self.path, self.headers, b"")
        await self.transport.aclose()


# --- phases -----------------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    target: str
    era: str
    concurrency: int
    requested: int
    round: int = 1
    sequence: int = 0  # order in which the phases ran
    completed: int = 0
    ok: int = 0
    wrong: int = 0
    errors: int = 0
    warmup_wrong: int = 0
    warmup_errors: int = 0
    seconds: float = 0.0
    calls_per_s: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    gateway_cpu_s_per_1000: float | None = None
    backend_cpu_s_per_1000: float | None = None
    client_cpu_s_per_1000: float | None = None
    gateway_vm_hwm_mib: float | None = None
    # requests sent again on a fresh connection because a kept-alive one had been closed while idle
    warmup_resent: int = 0
    resent: int = 0
    other_cpu_pct: float | None = None  # CPU used by processes outside the benchmark, % of all cores
    stopped_early: str | None = None
    problems: list[str] = field(default_factory=list)
    gateway_cpu_s: float | None = None
    backend_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # sorted; left out of --json


@dataclass
class Row:
    """One (target, era, concurrency) over all rounds: what the table shows."""

    target: str
    era: str
    concurrency: int
    rounds: int
    requested: int
    ok: int
    wrong: int
    errors: int
    p50_ms: float | None  # the median of the rounds' p50
    p99_ms: float | None  # over the calls of all rounds
    calls_per_s: float  # the median of the rounds'
    calls_per_s_min: float
    calls_per_s_max: float
    gateway_cpu_s_per_1000: float | None  # all rounds' CPU over all rounds' calls
    backend_cpu_s_per_1000: float | None
    client_cpu_s_per_1000: float | None
    gateway_vm_hwm_mib: float | None
    other_cpu_pct: float | None  # the mean of the rounds'
    resent: int
    problems: list[str]


def median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def aggregate(results: Sequence[PhaseResult]) -> list[Row]:
    groups: dict[tuple[str, str, int], list[PhaseResult]] = {}
    for r in results:
        groups.setdefault((r.target, r.era, r.concurrency), []).append(r)
    rows = []
    for (target, era, concurrency), rs in sorted(groups.items(), key=lambda kv: (TARGETS.index(kv[0][0]), kv[0][1:])):
        done = sum(r.completed for r in rs)
        per_1000 = 1000 / done if done else math.nan
        pooled = sorted(x for r in rs for x in r.latencies_ms)
        gw = [r.gateway_cpu_s for r in rs if r.gateway_cpu_s is not None]
        other = [r.other_cpu_pct for r in rs if r.other_cpu_pct is not None]
        hwm = [r.gateway_vm_hwm_mib for r in rs if r.gateway_vm_hwm_mib is not None]
        problems: Counter[str] = Counter()
        for r in rs:
            problems.update(r.problems)
        rows.append(
            Row(
                target,
                era,
                concurrency,
                len(rs),
                sum(r.requested for r in rs),
                sum(r.ok for r in rs),
                sum(r.wrong + r.warmup_wrong for r in rs),
                sum(r.errors + r.warmup_errors for r in rs),
                median([r.p50_ms for r in rs if r.p50_ms is not None]),
                percentile(pooled, 0.99),
                median([r.calls_per_s for r in rs]) or 0.0,
                min(r.calls_per_s for r in rs),
                max(r.calls_per_s for r in rs),
                sum(gw) * per_1000 if gw else None,
                sum(r.backend_cpu_s for r in rs) * per_1000,
                sum(r.client_cpu_s for r in rs) * per_1000,
                max(hwm) if hwm else None,
                round(sum(other) / len(other), 1) if other else None,
                sum(r.resent for r in rs),
                list(problems),
            )
        )
    return rows


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass
class Tally:
    issued: int = 0
    ok: int = 0
    wrong: int = 0
    errors: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)


@dataclass
class Settings:
    call_timeout: float
    phase_seconds: float
    payload_bytes: int
    client: str


async def drive(
    sessions: Sequence[Session], calls: int, deadline: float, settings: Settings, record: bool, tally: Tally
) -> None:
    """Run `calls` echo calls over `sessions` (one task each) until done or `deadline` (monotonic)."""
    error_budget = max(50, calls // 10)

    async def worker(session: Session) -> None:
        while tally.issued < calls and time.monotonic() < deadline and tally.errors < error_budget:
            tally.issued += 1
            text = payload(settings.payload_bytes)
            started = time.perf_counter_ns()
            problem: str | None = None
            wrong = False
            try:
                with anyio.fail_after(settings.call_timeout):
                    await session.echo(text)
            except WrongReply as exc:
                problem, wrong = f"wrong reply: {exc}", True
            except ProtocolFailure as exc:
                problem = str(exc)
            except TimeoutError:
                problem = f"no reply within {settings.call_timeout:g} s"
                await session.transport.reset()
            except (
                OSError,
                ValueError,  # includes malformed JSON
                anyio.EndOfStream,
                anyio.IncompleteRead,
                anyio.BrokenResourceError,
                anyio.DelimiterNotFound,
                httpx2.HTTPError,
            ) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                await session.transport.reset()
            elapsed = time.perf_counter_ns() - started
            if problem is None:
                tally.ok += 1
                if record:
                    tally.latencies_ns.append(elapsed)
            else:
                if wrong:
                    tally.wrong += 1
                else:
                    tally.errors += 1
                tally.problems[problem[:300]] += 1

    async with anyio.create_task_group() as tg:
        for session in sessions:
            tg.start_soon(worker, session)


@dataclass
class Pids:
    gateway: int | None
    backend: list[int]  # processes whose CPU is the backend's


async def run_phase(
    target: str,
    era: str,
    sessions: Sequence[Session],
    calls: int,
    warmup: int,
    settings: Settings,
    pids_of: Callable[[], Pids],
) -> PhaseResult:
    concurrency = len(sessions)
    result = PhaseResult(target, era, concurrency, calls)
    resent_before = sum(s.transport.resent for s in sessions)
    warm = Tally()
    await drive(sessions, warmup, time.monotonic() + min(settings.phase_seconds, 15), settings, False, warm)
    result.warmup_wrong, result.warmup_errors = warm.wrong, warm.errors
    resent_warm = sum(s.transport.resent for s in sessions)
    result.warmup_resent = resent_warm - resent_before
    pids: Pids = pids_of()
    gw0 = cpu_seconds(pids.gateway) if pids.gateway else None
    be0 = total_cpu(pids.backend)
    client0 = time.process_time()
    machine0 = machine_busy_seconds()
    tally = Tally()
    started = time.perf_counter()
    await drive(sessions, calls, time.monotonic() + settings.phase_seconds, settings, True, tally)
    seconds = time.perf_counter() - started
    client1 = time.process_time()
    machine1 = machine_busy_seconds()
    gw1 = cpu_seconds(pids.gateway) if pids.gateway else None
    be1 = total_cpu(pids.backend)
    done = tally.ok + tally.wrong + tally.errors
    per_1000 = 1000 / done if done else math.nan
    latencies = sorted(ns / 1e6 for ns in tally.latencies_ns)
    result.completed, result.ok, result.wrong, result.errors = done, tally.ok, tally.wrong, tally.errors
    result.seconds = seconds
    result.calls_per_s = tally.ok / seconds if seconds > 0 else 0.0
    result.p50_ms, result.p90_ms = percentile(latencies, 0.50), percentile(latencies, 0.90)
    result.p99_ms, result.max_ms = percentile(latencies, 0.99), (latencies[-1] if latencies else None)
    result.latencies_ms = latencies
    result.backend_cpu_s, result.client_cpu_s = be1 - be0, client1 - client0
    if gw0 is not None and gw1 is not None:
        result.gateway_cpu_s = gw1 - gw0
        result.gateway_cpu_s_per_1000 = (gw1 - gw0) * per_1000
        hwm = status_kib(pids.gateway, "VmHWM") if pids.gateway else None
        result.gateway_vm_hwm_mib = hwm / 1024 if hwm is not None else None
    result.backend_cpu_s_per_1000 = (be1 - be0) * per_1000
    result.client_cpu_s_per_1000 = (client1 - client0) * per_1000
    result.resent = sum(s.transport.resent for s in sessions) - resent_warm
    ours = (client1 - client0) + (be1 - be0) + ((gw1 - gw0) if gw0 is not None and gw1 is not None else 0.0)
    if seconds > 0:
        other = max(0.0, (machine1 - machine0) - ours) / (seconds * (os.cpu_count() or 1))
        result.other_cpu_pct = round(100 * other, 1)
    if done < calls:
        result.stopped_early = (
            f"{done}/{calls} calls: "
            + ("the error budget ran out" if tally.errors >= max(50, calls // 10) else "the time cap was reached")
            + f" ({settings.phase_seconds:g} s)"
        )
    problems = warm.problems + tally.problems
    result.problems = [f"{n}x {p}" for p, n in problems.most_common(5)]
    return result


# --- the run ----------------------------------------------------------------------------------------------


@dataclass
class Options:
    targets: list[str]
    eras: list[str]
    concurrency: list[int]
    rounds: int
    calls_c1: int
    calls: int
    warmup: int
    settings: Settings
    max_seconds: float
    profile: Path | None
    py_spy: str | None
    profile_seconds: float
    python: str


@dataclass
class Run:
    options: Options
    workdir: Path
    demo: Child | None = None
    gateway: Child | None = None
    demo_port: int = 0
    gateway_port: int = 0
    results: list[PhaseResult] = field(default_factory=list)
    setup: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    gateway_rss_at_start_kib: int | None = None
    started: float = field(default_factory=time.monotonic)

    def path_of(self, target: str) -> tuple[int, str]:
        if target == "direct":
            return self.demo_port, "/mcp"
        return self.gateway_port, "/echo-http/mcp" if target == "gateway-http" else "/echo-stdio/mcp"

    def pids(self, target: str) -> Pids:
        assert self.demo is not None
        assert self.gateway is not None
        if target == "gateway-stdio":
            self.gateway.remember_descendants()
            return Pids(self.gateway.pid, children_of(self.gateway.pid))
        return Pids(None if target == "direct" else self.gateway.pid, [self.demo.pid])

    def out_of_time(self) -> bool:
        return time.monotonic() - self.started > self.options.max_seconds

    def transport(self, port: int) -> Transport:
        if self.options.settings.client == "httpx2":
            return Httpx2Connection(port, self.options.settings.call_timeout)
        return RawConnection(port)

    async def start(self) -> None:
        o = self.options
        self.demo_port, self.gateway_port = free_port(), free_port()
        registry = self.workdir / "registry.yaml"
        stdio_cmd = json.dumps([o.python, "-m", "mcpfleet.demo", "stdio", "--replica", "bench"])
        registry.write_text(
            "# generated by bench/gateway.py\n"
            "servers:\n"
            "  echo-http:\n"
            "    type: http\n"
            f"    endpoints: [http://{HOST}:{self.demo_port}]\n"
            "  echo-stdio:\n"
            "    type: stdio\n"
            f"    command: {stdio_cmd}\n"
            f"    pool: {{max: {max(max(o.concurrency), 1) + 4}}}\n"
        )
        cwd = REPO
        demo_argv = [o.python, "-m", "mcpfleet.demo", "http", "--port", str(self.demo_port), "--replica", "bench"]
        self.demo = spawn("demo-http", demo_argv, self.workdir, cwd)
        gateway_argv = [o.python, "-m", "mcpfleet", "serve", "--registry", str(registry)]
        gateway_argv += ["--host", HOST, "--port", str(self.gateway_port), "--no-watch"]
        self.gateway = spawn("gateway", gateway_argv, self.workdir, cwd)
        await wait_listening(self.demo, self.demo_port)
        await wait_listening(self.gateway, self.gateway_port)
        probe = RawConnection(self.gateway_port)
        try:
            status = await probe.request("GET", "/servers", {"accept": "application/json"}, b"")
        finally:
            await probe.aclose()
        described = json.loads(status.body)
        if described.get("pid") != self.gateway.pid:
            raise RuntimeError(f"the gateway reports pid {described.get('pid')}, we started {self.gateway.pid}")
        demo, gateway = self.demo, self.gateway
        self.gateway_rss_at_start_kib = status_kib(gateway.pid, "VmRSS")
        log(f"demo http: pid {demo.pid}, port {self.demo_port}; gateway: pid {gateway.pid}, port {self.gateway_port}")

    def stop(self) -> None:
        for child in (self.gateway, self.demo):
            if child is not None:
                try:
                    child.stop()
                except Exception as exc:  # keep stopping the others
                    log(f"stopping {child.name}: {exc}")

    async def open_sessions(self, target: str, era: str, count: int) -> list[Session]:
        port, path = self.path_of(target)
        sessions = [Session(self.transport(port), path, era) for _ in range(count)]
        limiter = anyio.CapacityLimiter(8)  # stdio sessions each start a process: not all at once on 2 cores
        failures: list[str] = []

        async def open_one(session: Session) -> None:
            async with limiter:
                try:
                    with anyio.fail_after(60):
                        await session.open()
                except Exception as exc:
                    step = "initialize" if session.session_id is None else "notifications/initialized"
                    failures.append(f"{step} after {time.perf_counter() - started:.1f} s: {type(exc).__name__}: {exc}")

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for session in sessions:
                tg.start_soon(open_one, session)
        seconds = time.perf_counter() - started
        resent = sum(s.transport.resent for s in sessions)
        self.setup.append(
            {"target": target, "era": era, "sessions": count, "seconds": round(seconds, 3), "resent": resent}
        )
        if failures:
            await close_all(sessions)
            raise RuntimeError(f"{target} {era}: {len(failures)}/{count} sessions failed to open: {failures[:3]}")
        if era == "2025":
            log(f"{target} {era}: opened {count} sessions in {seconds:.2f} s")
        return sessions

    async def measure(self) -> None:
        """Per era: open every target's sessions, then per round and concurrency level run the targets back to back.

        Interleaving the targets (direct, gateway-http, gateway-stdio at c=1, then at c=16, ...) and repeating
        that in rounds keeps a burst of background load from landing on one target only: the comparisons are
        of neighbours in time, and the table takes medians over the rounds.
        """
        o = self.options
        for era in o.eras:
            if self.out_of_time():
                self.notes.append(f"skipped era {era}: --max-seconds {o.max_seconds:g} reached")
                continue
            pools: dict[str, list[Session]] = {}
            try:
                for target in o.targets:
                    pools[target] = await self.open_sessions(target, era, max(o.concurrency))
                for round_number in range(1, o.rounds + 1):
                    for concurrency in o.concurrency:
                        for target in o.targets:
                            if self.out_of_time():
                                self.notes.append(
                                    f"skipped {target} {era} c={concurrency} round {round_number}: --max-seconds"
                                )
                                continue
                            result = await run_phase(
                                target,
                                era,
                                pools[target][:concurrency],
                                o.calls_c1 if concurrency == 1 else o.calls,
                                max(o.warmup, 4 * concurrency),
                                o.settings,
                                functools.partial(self.pids, target),
                            )
                            result.round, result.sequence = round_number, len(self.results) + 1
                            self.results.append(result)
                            log(phase_line(result))
                            self.check_alive(f"{target} {era} c={concurrency} round {round_number}")
            finally:
                for sessions in pools.values():
                    await close_all(sessions)
            if era == "2025" and "gateway-stdio" in pools:
                await self.wait_stdio_sessions_gone()

    def check_alive(self, during: str) -> None:
        """Stop the run at once when the gateway or the demo server exited (every later phase would fail)."""
        for child in (self.gateway, self.demo):
            if child is not None and (code := child.popen.poll()) is not None:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                raise RuntimeError(f"{child.name} (pid {child.pid}) exited ({how}) during or before {during}")

    async def wait_stdio_sessions_gone(self, polls: int = 150) -> None:
        """After DELETE, the gateway stops the session processes; let that finish (bounded) before going on."""
        assert self.gateway is not None
        live = children_of(self.gateway.pid)
        for _ in range(polls):
            live = children_of(self.gateway.pid)
            if len(live) <= 1:  # the shared 2026-07-28 process may stay
                return
            await anyio.sleep(0.1)
        self.notes.append(f"{len(live)} stdio processes still alive {polls / 10:g} s after their sessions were deleted")

    async def profile_gateway(self) -> None:
        """An extra gateway-http 2025 c=16 phase with py-spy attached (kept out of the main figures)."""
        o = self.options
        assert self.gateway is not None
        assert o.profile is not None
        if o.py_spy is None:
            self.notes.append("profile skipped: py-spy not found (--py-spy PATH)")
            return
        sessions = await self.open_sessions("gateway-http", "2025", 16)
        raw = o.profile
        spy = PySpy(o.py_spy, self.gateway.pid, raw, self.workdir / "py-spy.log")
        try:
            await drive(sessions, 200, time.monotonic() + 10, o.settings, False, Tally())
            spy.start()
            await anyio.sleep(1.0)  # py-spy attaches
            tally = Tally()
            started = time.perf_counter()
            await drive(sessions, o.calls * 10, time.monotonic() + o.profile_seconds, o.settings, False, tally)
            seconds = time.perf_counter() - started
            await anyio.to_thread.run_sync(spy.stop)
        finally:
            await anyio.to_thread.run_sync(spy.stop)
            await close_all(sessions)
        if not raw.exists():
            self.notes.append(f"py-spy wrote no profile: {(self.workdir / 'py-spy.log').read_text()[-500:]}")
            return
        self.profile = summarize_profile(raw.read_text())
        self.profile |= {
            "file": str(o.profile),
            "calls": tally.ok,
            "wrong": tally.wrong,
            "errors": tally.errors,
            "seconds": round(seconds, 2),
        }


@dataclass
class PySpy:
    """`py-spy record` attached to a running process, raw (folded) output, stopped with SIGINT."""

    executable: str
    pid: int
    output: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [self.executable, "record", "--pid", str(self.pid), "--rate", "250", "--nolineno", "--full-filenames"]
        argv += ["--format", "raw", "--output", str(self.output)]
        with self.log_path.open("wb") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


async def close_all(sessions: Sequence[Session]) -> None:
    with anyio.CancelScope(shield=True):
        limiter = anyio.CapacityLimiter(16)

        async def close(session: Session) -> None:
            async with limiter:
                await session.close()

        async with anyio.create_task_group() as tg:
            for session in sessions:
                tg.start_soon(close, session)


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")
_PATH_PREFIX = re.compile(r"^.*/(site-packages|src|lib/python3\.\d+)/")


def short_frame(frame: str) -> str:
    """`func (/abs/.../site-packages/pkg/mod.py)` as `func (pkg/mod.py)`."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match.group('func')} ({_PATH_PREFIX.sub('', match.group('file'))})"


def summarize_profile(folded: str) -> dict[str, Any]:
    """Own time by function, file and package from py-spy's raw (folded) output, event-loop thread only.

    A sample's own time goes to its leaf frame. Samples of other threads (asyncio's child-watcher threads
    block in waitpid for each stdio process) are left out, and so are samples waiting in epoll (idle).
    """
    by_function: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = polling = other_threads = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short_frame(f) for f in stack.split(";")]
        loop_frame = next((i for i, f in enumerate(frames) if f.split(" (", 1)[0].endswith("_run_once")), None)
        if loop_frame is None:
            other_threads += count
            continue
        leaf = frames[-1]
        if leaf.startswith(("select (selectors.py)", "EpollSelector.select (selectors.py)")):
            polling += count
            continue
        busy += count
        by_function[leaf] += count
        match = _FRAME.match(leaf)
        file = match.group("file") if match else leaf
        by_file[file] += count
        by_package[file.split("/", 1)[0] if "/" in file else file] += count
        for name in set(frames[loop_frame + 1 :]):
            inclusive[name] += count

    def top(counter: Counter[str], n: int = 10) -> list[dict[str, Any]]:
        return [
            {"name": k, "samples": v, "pct": round(100 * v / busy, 1) if busy else 0.0}
            for k, v in counter.most_common(n)
        ]

    return {
        "busy_samples": busy,
        "polling_samples": polling,
        "other_thread_samples": other_threads,
        "top_functions": top(by_function),
        "top_files": top(by_file),
        "top_packages": top(by_package),
        "top_inclusive": top(inclusive, 40),
    }


# --- output -----------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def phase_line(r: PhaseResult) -> str:
    return (
        f"round {r.round} {r.target:<13} {r.era} c={r.concurrency:<3} {r.ok}/{r.requested} ok, "
        f"{r.wrong} wrong, {r.errors} errors; "
        f"p50 {fmt(r.p50_ms)} ms p99 {fmt(r.p99_ms)} ms; {r.calls_per_s:.0f}/s; "
        f"gw CPU {fmt(r.gateway_cpu_s_per_1000, 3)} s/1000" + (f"; {r.stopped_early}" if r.stopped_early else "")
    )


def find(rows: Sequence[Row], target: str, era: str, concurrency: int) -> Row | None:
    for r in rows:
        if (r.target, r.era, r.concurrency) == (target, era, concurrency):
            return r
    return None


def summary(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {}
    results = aggregate(run.results)
    top = max(run.options.concurrency)
    for era in run.options.eras:
        era_out: dict[str, Any] = {}
        for target in ("gateway-http", "gateway-stdio"):
            entry: dict[str, Any] = {}
            direct1, via1 = find(results, "direct", era, 1), find(results, target, era, 1)
            if direct1 and via1 and direct1.p50_ms is not None and via1.p50_ms is not None:
                entry["added_p50_ms_c1"] = round(via1.p50_ms - direct1.p50_ms, 3)
            direct_top, via_top = find(results, "direct", era, top), find(results, target, era, top)
            if direct_top and via_top and direct_top.calls_per_s:
                entry[f"throughput_pct_of_direct_c{top}"] = round(100 * via_top.calls_per_s / direct_top.calls_per_s, 1)
            phases = [
                r
                for r in run.results
                if r.target == target and r.era == era and r.gateway_cpu_s is not None and r.completed
            ]
            if phases:
                calls = sum(r.completed for r in phases)
                cpu = sum(r.gateway_cpu_s or 0.0 for r in phases)
                entry["gateway_cpu_s_per_1000_all_phases"] = round(1000 * cpu / calls, 3)
                entry["gateway_cpu_s_per_1000_worst_phase"] = round(
                    max(r.gateway_cpu_s_per_1000 or 0 for r in phases), 3
                )
            era_out[target] = entry
        out[era] = era_out
    if run.gateway is not None:
        hwm, rss = status_kib(run.gateway.pid, "VmHWM"), status_kib(run.gateway.pid, "VmRSS")
        out["gateway_peak_rss_mib"] = round(hwm / 1024, 1) if hwm is not None else None
        out["gateway_rss_at_end_mib"] = round(rss / 1024, 1) if rss is not None else None
        start = run.gateway_rss_at_start_kib
        out["gateway_rss_at_start_mib"] = round(start / 1024, 1) if start is not None else None
    out["wrong_replies_total"] = sum(r.wrong + r.warmup_wrong for r in run.results)
    out["errors_total"] = sum(r.errors + r.warmup_errors for r in run.results)
    return out


def render_table(run: Run, info: dict[str, Any], summ: dict[str, Any]) -> str:
    lines: list[str] = []
    o = run.options
    lines.append(
        f"mcpfleet gateway benchmark, {info['date']}, {info['machine']['nproc']} cores "
        f"({info['machine']['cpu_model']}), Python {info['machine']['python']}, client {o.settings.client}, "
        f"load average {' '.join(info['machine']['loadavg_at_start'])} at start"
    )
    src = info["source"]
    lines.append(
        f"source: commit {src.get('commit', '?')}, {src.get('src_modified_files', '?')} modified file(s) under src/, "
        f"src sha256 {src['src_sha256']}"
    )
    lines.append(
        "tools/call echo, "
        f"{len(payload(o.settings.payload_bytes))}-character text per call; {o.rounds} round(s) of: c=1 "
        f"{o.calls_c1} calls, c>1 {o.calls} calls (cap {o.settings.phase_seconds:g} s), warm-up before each; "
        "p50 and calls/s: median of the rounds; p99 and CPU: over all rounds' calls"
    )
    lines.append("")
    header = (
        f"{'target':<14}{'era':<6}{'c':>3}{'ok':>7}{'wrong':>6}{'err':>5}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'calls/s':>9}{'(min-max)':>12}{'gw CPU':>8}{'be CPU':>8}{'cl CPU':>8}{'gw HWM':>8}{'other':>7}"
    )
    lines.append(header)
    lines.append(f"{'':<36}{'':>16}{'':>9}{'':>12}{'s/1000':>8}{'s/1000':>8}{'s/1000':>8}{'MiB':>8}{'CPU %':>7}")
    lines.append("-" * len(header))
    rows = aggregate(run.results)
    for r in rows:
        spread = f"{r.calls_per_s_min:.0f}-{r.calls_per_s_max:.0f}"
        lines.append(
            f"{r.target:<14}{r.era:<6}{r.concurrency:>3}{r.ok:>7}{r.wrong:>6}{r.errors:>5}"
            f"{fmt(r.p50_ms):>8}{fmt(r.p99_ms):>8}{r.calls_per_s:>9.0f}{spread:>12}"
            f"{fmt(r.gateway_cpu_s_per_1000, 3):>8}{fmt(r.backend_cpu_s_per_1000, 3):>8}"
            f"{fmt(r.client_cpu_s_per_1000, 3):>8}{fmt(r.gateway_vm_hwm_mib, 0):>8}{fmt(r.other_cpu_pct, 0):>7}"
        )
    lines.append("")
    top = max(o.concurrency)
    lines.append(f"{'against the goals (not asserted)':<55}{'measured':>10}{'goal':>10}")
    for era in o.eras:
        for target in ("gateway-http", "gateway-stdio"):
            entry = summ.get(era, {}).get(target, {})
            goals = [
                ("added p50 at c=1 (ms)", entry.get("added_p50_ms_c1"), f"<= {GOAL_ADDED_P50_MS}", True, 3),
                (
                    f"throughput at c={top}, % of direct",
                    entry.get(f"throughput_pct_of_direct_c{top}"),
                    f">= {GOAL_THROUGHPUT_PCT:g}",
                    False,
                    1,
                ),
                (
                    "gateway CPU s/1000 calls (all phases)",
                    entry.get("gateway_cpu_s_per_1000_all_phases"),
                    f"<= {GOAL_GATEWAY_CPU}",
                    True,
                    3,
                ),
            ]
            for label, value, goal, lower_is_better, digits in goals:
                if value is None:
                    verdict = ""
                else:
                    limit = float(goal.split()[1])
                    met = value <= limit if lower_is_better else value >= limit
                    verdict = "met" if met else "MISSED"
                lines.append(f"{target + ' ' + era + ': ' + label:<55}{fmt(value, digits):>10}{goal:>10}  {verdict}")
    lines.append(
        f"gateway peak RSS (VmHWM): {fmt(summ.get('gateway_peak_rss_mib'), 1)} MiB "
        f"(RSS {fmt(summ.get('gateway_rss_at_start_mib'), 1)} MiB when ready); "
        f"reference: the SDK's own HTTP server ~{REFERENCE_SDK_SERVER_CPU} s CPU per 1000 calls (column be CPU)"
    )
    lines.append(f"wrong replies: {summ['wrong_replies_total']} (must be 0); errors: {summ['errors_total']}")
    if run.setup:
        opened = ", ".join(
            f"{s['target']} {s['era']} {s['sessions']} in {s['seconds']:.1f} s" for s in run.setup if s["era"] == "2025"
        )
        lines.append(f"session setup (not measured): {opened}")
    for phase in run.results:
        where = f"{phase.target} {phase.era} c={phase.concurrency} round {phase.round}"
        lines.extend(f"problem in {where}: {problem}" for problem in phase.problems)
        if phase.resent:
            lines.append(
                f"note: {where}: {phase.resent} measured request(s) resent on a fresh connection "
                "(a kept-alive connection had been closed while idle)"
            )
        if phase.stopped_early:
            lines.append(f"stopped early in {where}: {phase.stopped_early}")
    if warm_resent := sum(r.warmup_resent for r in run.results):
        lines.append(
            f"note: {warm_resent} warm-up request(s) were resent on a fresh connection: uvicorn closes keep-alive "
            "connections idle for 5 s, which the workers of the other phases are (not measured)"
        )
    lines.extend(f"note: {n}" for n in run.notes)
    if run.profile:
        p = run.profile
        lines.append("")
        lines.append(
            f"py-spy, gateway during gateway-http 2025 c=16 ({p['calls']} calls in {p['seconds']} s; {p['file']}): "
            f"own time, % of {p['busy_samples']} busy event-loop samples (+{p['polling_samples']} in epoll)"
        )
        for row in p["top_functions"]:
            lines.append(f"  {row['pct']:5.1f}%  {row['name']}")
        lines.append("  by package (first path component):")
        for row in p["top_packages"]:
            lines.append(f"  {row['pct']:5.1f}%  {row['name']}")
        lines.append("  inclusive time, below the common trunk (frames in fewer than 85% of busy samples):")
        for row in [r for r in p["top_inclusive"] if r["pct"] < 85][:12]:
            lines.append(f"  {row['pct']:5.1f}%  {row['name']}")
    return "\n".join(lines)


# --- entry point ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[Options, bool, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: " + ", ".join(TARGETS))
    parser.add_argument("--eras", default=",".join(ERAS), help="2025 (sessions), 2026 (stateless), or both")
    parser.add_argument("--concurrency", default="1,16,64", help="concurrency levels (default 1,16,64)")
    parser.add_argument("--rounds", type=int, default=3, help="times the whole interleaved schedule runs")
    parser.add_argument("--calls-c1", type=int, default=400, help="measured calls per c=1 phase and round")
    parser.add_argument("--calls", type=int, default=800, help="measured calls per c>1 phase and round")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up calls per phase (at least 4 per worker)")
    parser.add_argument("--phase-seconds", type=float, default=30.0, help="time cap per phase")
    parser.add_argument("--call-timeout", type=float, default=10.0, help="timeout of one call")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="skip the phases left after this long")
    parser.add_argument("--payload-bytes", type=int, default=48, help="random bytes per text (base64: 64 chars)")
    parser.add_argument("--client", choices=("raw", "httpx2"), default="raw", help="the measuring HTTP client")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument(
        "--profile",
        nargs="?",
        const=str(Path(tempfile.gettempdir()) / "mcpfleet-gateway-profile.folded"),
        default=None,
        metavar="FILE",
        help="after the phases, profile the gateway with py-spy during an extra gateway-http 2025 c=16 phase "
        "and write the folded stacks to FILE (default: $TMPDIR/mcpfleet-gateway-profile.folded)",
    )
    parser.add_argument("--py-spy", default=None, help="py-spy executable (default: PATH, then /tmp/pyspy/bin)")
    parser.add_argument("--profile-seconds", type=float, default=8.0, help="length of the profiled phase")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the gateway and the demo")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the processes' logs into this directory")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    eras = [e for e in args.eras.split(",") if e]
    concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets {sorted(unknown)}")
    if unknown := set(eras) - set(ERAS):
        parser.error(f"unknown eras {sorted(unknown)}")
    if not concurrency or min(concurrency) < 1 or max(concurrency) > 512:
        parser.error("concurrency levels must be between 1 and 512")
    py_spy = args.py_spy or shutil.which("py-spy")
    if py_spy is None and Path("/tmp/pyspy/bin/py-spy").exists():
        py_spy = "/tmp/pyspy/bin/py-spy"
    settings = Settings(args.call_timeout, args.phase_seconds, args.payload_bytes, args.client)
    options = Options(
        targets,
        eras,
        concurrency,
        max(1, args.rounds),
        max(1, args.calls_c1),
        max(1, args.calls),
        max(0, args.warmup),
        settings,
        args.max_seconds,
        Path(args.profile).resolve() if args.profile else None,
        py_spy,
        args.profile_seconds,
        args.python,
    )
    return options, args.json, args.keep_logs


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mcpfleet-bench-") as name:
        yield Path(name)


def copy_logs(source: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*"):
        shutil.copy(path, destination / path.name)


async def main_async(options: Options, as_json: bool, keep_logs: Path | None) -> int:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "source": await anyio.to_thread.run_sync(source_state),
    }
    with workdir() as tmp:
        run = Run(options, tmp)
        failure: str | None = None
        try:
            await run.start()
            await run.measure()
            if options.profile is not None and not run.out_of_time():
                await run.profile_gateway()
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            log(f"run failed: {failure}")
            for child in (run.gateway, run.demo):
                if child is not None:
                    log(f"last lines of {child.name}'s log:\n{child.tail()}")
        finally:
            summ = summary(run)  # reads the gateway's VmHWM while it is still alive
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(run.stop)
            if keep_logs is not None:
                await anyio.to_thread.run_sync(copy_logs, tmp, keep_logs)
        info["total_seconds"] = round(time.monotonic() - run.started, 1)
        info["machine"]["loadavg_at_end"] = loadavg()
        if as_json:
            document = {
                **info,
                "options": {
                    **{k: v for k, v in asdict(options).items() if k not in ("profile", "settings")},
                    **asdict(options.settings),
                },
                "rows": [asdict(r) for r in aggregate(run.results)],
                "phases": [{k: v for k, v in asdict(r).items() if k != "latencies_ms"} for r in run.results],
                "summary": summ,
                "session_setup": run.setup,
                "profile": run.profile,
                "notes": run.notes,
                "failure": failure,
            }
            print(json.dumps(document, indent=2, default=str))
        else:
            print(render_table(run, info, summ))
            print(f"total {info['total_seconds']} s" + (f"; FAILED: {failure}" if failure else ""))
        return 1 if failure else 0


def run_interruptibly(main: Callable[..., Awaitable[int]], *args: Any) -> int:
    """Run a bench's `main` so that Ctrl-C and SIGTERM both unwind it: its `finally` stops every process it
    started. SIGINT gets its default handler back first: a shell starts background jobs with SIGINT ignored,
    which would lose it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        return anyio.run(main, *args)
    except KeyboardInterrupt:
        log("interrupted; the gateways, the demo server and their children were stopped")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run_interruptibly(main_async, *parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
