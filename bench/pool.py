"""Pool benchmark: warm stdio session setup, throughput to stdio, and many open sessions on one gateway.

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/pool.py            # the tables (progress on stderr)
    .venv/bin/python bench/pool.py --json     # the same run as JSON on stdout

Three parts, each against a gateway (`python -m mcpfleet serve`) that this script starts on 127.0.0.1 with a
generated registry, in its own process group, and stops in `finally` with everything it spawned:

1. Session setup through the stdio pool. One session at a time, each on a fresh keep-alive connection:
   the time from the `initialize` POST to its answer, and to the answer of the first `tools/call echo`
   (after `notifications/initialized`). Before each session the script waits (bounded) until `/servers`
   shows the pool full again and the gateway and its children are quiet. Four kinds alternate:
   `warm` (an entry with `pool.min` processes started ahead of need, refilled in the background as one is
   leased), `fixed` (a warm entry with pool.min = pool.max, so nothing is refilled while the session is
   set up), `cold` (`pool.min: 0`: each session spawns its process, as a per-session stdio bridge does) and
   `direct` (no gateway: a fresh, idle demo process and initialize over its own pipes, the floor). Whether
   a session really leased a warm process is checked, not assumed: its `whoami` pid must be a child of the
   gateway that existed before the `initialize` POST.
2. `tools/call echo` throughput through the gateway to stdio at each concurrency level: 2025 sessions (one
   session, so one process, per worker, all opened before measuring) and 2026-07-28 stateless calls (all
   through the shared processes), interleaved over rounds (`run_phase` of bench/gateway.py).
3. Many open sessions on one gateway process: N sessions to an `http` entry (the demo HTTP server), each
   then holding an open GET stream (`Accept: text/event-stream`, its session id) on a raw socket of its own.
   The gateway's and the demo server's RSS before and after give the memory per session; calls on a sample
   of the sessions, before and while every stream is open, must be answered correctly, and every stream must
   stay open (and carry the upstream's keep-alive pings) for the hold time. The soft RLIMIT_NOFILE is raised
   if needed (the gateway needs two descriptors per stream); `--fd-limit N` starts the gateway and the demo
   server with a lower one instead, to see what happens when it runs out.

It reuses bench/gateway.py: the raw HTTP/1.1 client, reply checking, /proc readings, process handling and
the phase driver. Every reply is checked against what was sent; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream, BufferedByteStream

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import (
    CLIENT_INFO,
    CLK_TCK,
    HANDSHAKE_VERSION,
    HOST,
    MAX_BODY,
    MAX_HEAD,
    REPO,
    Child,
    PhaseResult,
    Pids,
    ProtocolFailure,
    RawConnection,
    Session,
    Settings,
    WrongReply,
    aggregate,
    answer_to,
    check_echo,
    children_of,
    close_all,
    cmdline,
    copy_logs,
    cpu_seconds,
    fmt,
    free_port,
    loadavg,
    log,
    machine,
    median,
    percentile,
    phase_line,
    run_interruptibly,
    run_phase,
    source_state,
    spawn,
    status_kib,
    wait_listening,
)

# The goals from the issue, printed beside the figures (never asserted).
GOAL_WARM_SETUP_P50_MS = 5.0
BEST_STDIO_BRIDGE_CALLS_PER_S = 800.0  # the best per-session stdio bridge measured on this machine (~750-800/s)
GOAL_STDIO_FACTOR = 1.2
GOAL_STDIO_CALLS_PER_S = GOAL_STDIO_FACTOR * BEST_STDIO_BRIDGE_CALLS_PER_S

WARM_ID, FIXED_ID, COLD_ID, HTTP_ID = "echo-warm", "echo-fixed", "echo-cold", "echo-http"
SHARED_ID, SHARED_POOL = "echo-shared", 2  # 2025 sessions multiplexed over a shared pool (stateless server)
FIXED_POOL = 4  # pool.min = pool.max: no refill can start while a leased session is open
KINDS = ("warm", "fixed", "cold", "direct")
CALL_ERRORS = (
    OSError,
    ValueError,
    TimeoutError,
    ProtocolFailure,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.DelimiterNotFound,
)


# --- small helpers ----------------------------------------------------------------------------------------


def uptime() -> float:
    """Seconds since boot (/proc/uptime, 10 ms resolution): the clock of /proc/<pid>/stat start times."""
    return float(Path("/proc/uptime").read_text().split()[0])


def process_started_at(pid: int) -> float | None:
    """When a process started, in seconds since boot (1/CLK_TCK resolution), from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) / CLK_TCK


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def rss_mib(pid: int | None) -> float | None:
    kib = status_kib(pid, "VmRSS") if pid is not None else None
    return round(kib / 1024, 1) if kib is not None else None


def hwm_mib(pid: int | None) -> float | None:
    kib = status_kib(pid, "VmHWM") if pid is not None else None
    return round(kib / 1024, 1) if kib is not None else None


def family_cpu(root: int) -> dict[int, float]:
    """CPU seconds of a process and each of its children, by pid."""
    out: dict[int, float] = {}
    for pid in (root, *children_of(root)):
        if (cpu := cpu_seconds(pid)) is not None:
            out[pid] = cpu
    return out


def busy_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two `family_cpu` readings (a process that appeared counts with all its CPU)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def summary_of(values: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(round(v, 3) for v in values)
    return {
        "p50": percentile(ordered, 0.5),
        "p90": percentile(ordered, 0.9),
        "p99": percentile(ordered, 0.99),
        "min": ordered[0] if ordered else None,
        "max": ordered[-1] if ordered else None,
    }


async def get_json(port: int, path: str) -> Any:
    conn = RawConnection(port)
    try:
        with anyio.fail_after(10):
            reply = await conn.request("GET", path, {"accept": "application/json"}, b"")
    finally:
        await conn.aclose()
    if reply.status != 200:
        raise ProtocolFailure(f"GET {path}: HTTP {reply.status}")
    return json.loads(reply.body)


async def server_status(port: int, server_id: str) -> dict[str, Any]:
    described = await get_json(port, "/servers")
    for entry in described.get("servers", []):
        if entry.get("id") == server_id:
            return dict(entry)
    raise ProtocolFailure(f"/servers has no entry {server_id!r}")


async def call_tool(session: Session, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    request_id = session.next_id
    session.next_id += 1
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    reply = await session.transport.request("POST", session.path, session.headers, json.dumps(body).encode())
    return answer_to(reply, request_id)


async def timed_open(session: Session) -> float:
    """Session.open (bench/gateway.py) with the time from the `initialize` POST to its answer, in ms."""
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": HANDSHAKE_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
    }
    data = json.dumps(body).encode()
    started = time.perf_counter_ns()
    reply = await session.transport.request("POST", session.path, session.headers, data)
    elapsed_ms = (time.perf_counter_ns() - started) / 1e6
    result = answer_to(reply, 0)
    if result.get("protocolVersion") != HANDSHAKE_VERSION:
        raise ProtocolFailure(f"initialize negotiated {result.get('protocolVersion')!r}")
    session.session_id = reply.headers.get("mcp-session-id")
    if not session.session_id:
        raise ProtocolFailure("initialize answered without an Mcp-Session-Id")
    session.headers = session._headers()
    notified = await session.transport.request(
        "POST", session.path, session.headers, b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
    )
    if notified.status != 202:
        raise ProtocolFailure(f"notifications/initialized answered HTTP {notified.status}")
    return elapsed_ms


def burst_line(result: BurstResult) -> str:
    errors = sum(result.errors.values())
    line = (
        f"burst of {result.sessions}, max_starting {result.max_starting}: {result.opened} opened,"
        f" all open after {result.seconds_to_open_all} s, initialize p50 {result.open_ms_p50} ms"
        f" max {result.open_ms_max} ms, errors: {errors}"
    )
    return line + "".join(f"\n    {count} x {text}" for text, count in result.errors.items())


def problem_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


# --- options and the run ----------------------------------------------------------------------------------


@dataclass
class Options:
    parts: list[int]
    warm_sessions: int
    fixed_sessions: int
    cold_sessions: int
    direct_sessions: int
    pool_min: int
    settle_seconds: float
    concurrency: list[int]
    rounds: int
    calls: int
    warmup: int
    settings: Settings
    open_sessions: int
    fd_limit: int | None
    hold_seconds: float
    sample_calls: int
    part_seconds: float
    max_seconds: float
    python: str
    bursts: list[int] = field(default_factory=lambda: [64, 200])
    burst_starting: list[int] = field(default_factory=lambda: [0])  # pool.max_starting values; 0: the default
    burst_acquire: float = 180.0


@dataclass
class BurstResult:
    """Part 4: `sessions` new sessions sent at once to a stdio entry with room for all of them."""

    sessions: int
    max_starting: str
    opened: int = 0
    seconds_to_open_all: float = 0.0
    open_ms_p50: float | None = None
    open_ms_max: float | None = None
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class SetupSample:
    kind: str  # warm, fixed (warm, no refill), cold, direct (no gateway)
    index: int
    init_ms: float | None = None  # initialize POST -> its answer
    first_call_ms: float | None = None  # initialize POST -> answer of the first tools/call echo
    leased_warm: bool | None = None  # the session's process existed before the initialize POST
    pid: int | None = None
    process_age_s: float | None = None  # how long the process had been running when initialize was sent
    pool_warm_before: int | None = None  # /servers processes.warm just before
    settle_s: float | None = None  # waiting for the pool to refill and the machine to go quiet
    settled: bool = True
    error: str | None = None


@dataclass
class Part3:
    requested: int
    fd_note: str = ""
    gateway_fd_limit: int | None = None  # the soft RLIMIT_NOFILE of the gateway process (/proc/<pid>/limits)
    demo_fd_limit: int | None = None
    fd_fits: int = 0  # about how many held streams that limit allows: 2 descriptors each (client + upstream)
    sessions_opened: int = 0
    sessions_open_s: float = 0.0
    session_failures: list[str] = field(default_factory=list)
    streams_opened: int = 0
    streams_open_s: float = 0.0
    stream_failures: list[str] = field(default_factory=list)
    gateway_rss_mib: dict[str, float | None] = field(default_factory=dict)
    demo_rss_mib: dict[str, float | None] = field(default_factory=dict)
    gateway_fds: dict[str, int | None] = field(default_factory=dict)
    gateway_hwm_mib: float | None = None
    demo_hwm_mib: float | None = None
    calls_without_streams: dict[str, Any] = field(default_factory=dict)  # sampled sessions, no stream open
    calls_with_streams: dict[str, Any] = field(default_factory=dict)  # the same, while every stream is open
    demo_fds: dict[str, int | None] = field(default_factory=dict)
    replicas_with_streams: list[dict[str, Any]] = field(default_factory=list)  # /servers, all streams open
    held_s: float = 0.0
    streams_alive_after_hold: int = 0
    streams_closed_early: int = 0
    streams_with_ping: int = 0
    stream_close_reasons: list[str] = field(default_factory=list)
    deleted: int = 0
    delete_failures: int = 0
    stopped_early: str | None = None


@dataclass
class Run:
    options: Options
    workdir: Path
    tag: str
    started: float = field(default_factory=time.monotonic)
    children: list[Child] = field(default_factory=list)
    setup: list[SetupSample] = field(default_factory=list)
    setup_notes: list[str] = field(default_factory=list)
    phases: list[PhaseResult] = field(default_factory=list)
    throughput_notes: list[str] = field(default_factory=list)
    part3: Part3 | None = None
    bursts: list[BurstResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gateway_a_rss_ready_mib: float | None = None
    leftovers: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def out_of_time(self) -> bool:
        return self.elapsed() > self.options.max_seconds

    def stdio_argv(self) -> list[str]:
        return [self.options.python, "-m", "mcpfleet.demo", "stdio", "--replica", self.tag]

    async def start_gateway(self, name: str, registry_text: str) -> tuple[Child, int]:
        port = free_port()
        registry = self.workdir / f"{name}.yaml"
        registry.write_text(registry_text)
        argv = [self.options.python, "-m", "mcpfleet", "serve", "--registry", str(registry)]
        argv += ["--host", HOST, "--port", str(port), "--no-watch"]
        child = spawn(name, argv, self.workdir, REPO)
        self.children.append(child)
        await wait_listening(child, port)
        described = await get_json(port, "/servers")
        if described.get("pid") != child.pid:
            raise RuntimeError(f"{name} reports pid {described.get('pid')}, we started {child.pid}")
        log(f"{name}: pid {child.pid}, port {port}")
        return child, port

    def check_alive(self, child: Child, during: str) -> None:
        if (code := child.popen.poll()) is not None:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise RuntimeError(f"{child.name} (pid {child.pid}) exited ({how}) during {during}:\n{child.tail()}")

    def stop_all(self) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others
                log(f"stopping {child.name}: {exc}")
        self.leftovers = self.reap_leftovers()

    def reap_leftovers(self) -> int:
        """Any process still alive whose command line carries this run's tag or work directory: ended, counted."""
        marks = (self.tag.encode(), str(self.workdir).encode())
        found: list[int] = []
        with contextlib.suppress(OSError):
            for name in os.listdir("/proc"):
                if name.isdigit() and int(name) != os.getpid():
                    line = cmdline(int(name))
                    if line is not None and any(mark in line for mark in marks):
                        found.append(int(name))
        for pid in found:
            log(f"leftover process {pid}: {cmdline(pid)!r}: SIGKILL")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return len(found)

    # --- part 4: a burst of new sessions ---------------------------------------------------------------------

    async def burst_part(self) -> None:
        """For each burst size and `pool.max_starting` value: a fresh gateway whose stdio entry has room for
        the whole burst (`pool: {min: 4, max: size + 8}`), its 4 warm processes started; then every session
        sent at once, each on its own connection: initialize, notifications/initialized, one checked echo."""
        o = self.options
        command = json.dumps(self.stdio_argv())
        for size in o.bursts:
            for starting in o.burst_starting:
                if self.out_of_time():
                    self.notes.append(f"part 4: burst {size} (max_starting {starting or 'default'}) not run: time")
                    continue
                pool = f"min: 4, max: {size + 8}, acquire_timeout: {o.burst_acquire}"
                if starting:
                    pool += f", max_starting: {starting}"
                registry = f"servers:\n  burst:\n    command: {command}\n    pool: {{{pool}}}\n"
                gateway, port = await self.start_gateway(f"gateway-burst-{size}-{starting}", registry)
                try:
                    with anyio.fail_after(60):
                        while (await server_status(port, "burst"))["processes"]["warm"] < 4:  # noqa: ASYNC110 - polled over HTTP
                            await anyio.sleep(0.2)
                    self.bursts.append(await self.one_burst(port, size, starting))
                    self.check_alive(gateway, "the burst")
                finally:
                    await anyio.to_thread.run_sync(gateway.stop)
                    self.children.remove(gateway)
                log(burst_line(self.bursts[-1]))

    async def one_burst(self, port: int, size: int, starting: int) -> BurstResult:
        result = BurstResult(size, str(starting or "default (CPUs)"))
        opened_ms: list[float] = []
        began = time.monotonic()
        last_open = began

        async def one(index: int) -> None:
            nonlocal last_open
            session = Session(RawConnection(port), "/burst/mcp", "2025")
            try:
                opened_ms.append(await timed_open(session))
                last_open = max(last_open, time.monotonic())
                check_echo(await call_tool(session, "echo", {"text": f"b{index}"}), f"b{index}")
                result.opened += 1
            except (*CALL_ERRORS, WrongReply) as exc:
                key = problem_text(exc)[:120]
                result.errors[key] = result.errors.get(key, 0) + 1
            finally:
                await session.transport.aclose()

        with anyio.move_on_after(self.options.part_seconds + self.options.burst_acquire):
            async with anyio.create_task_group() as tg:
                for index in range(size):
                    tg.start_soon(one, index)
        missing = size - result.opened - sum(result.errors.values())
        if missing:
            result.errors["not answered within the part's time"] = missing
        result.seconds_to_open_all = round(last_open - began, 2)
        if opened_ms:
            result.open_ms_p50 = round(median(opened_ms), 1)
            result.open_ms_max = round(max(opened_ms), 1)
        return result

    # --- part 1 and 2: one gateway with a warm and a cold stdio entry ---------------------------------------

    async def stdio_parts(self) -> None:
        o = self.options
        command = json.dumps(self.stdio_argv())
        top = max(o.concurrency)
        registry = (
            "# generated by bench/pool.py\n"
            "servers:\n"
            f"  {WARM_ID}:\n"
            "    type: stdio\n"
            f"    command: {command}\n"
            f"    pool: {{min: {o.pool_min}, max: {o.pool_min + 8}}}\n"
            f"  {FIXED_ID}:\n"
            "    type: stdio\n"
            f"    command: {command}\n"
            f"    pool: {{min: {FIXED_POOL}, max: {FIXED_POOL}}}\n"
            f"  {COLD_ID}:\n"
            "    type: stdio\n"
            f"    command: {command}\n"
            f"    pool: {{min: 0, max: {top + 8}}}\n"
            f"  {SHARED_ID}:\n"
            "    type: stdio\n"
            f"    command: {command}\n"
            "    stateless: true\n"
            f"    pool: {{mode: shared, max: {SHARED_POOL}}}\n"
        )
        gateway, port = await self.start_gateway("gateway-stdio", registry)
        self.gateway_a_rss_ready_mib = rss_mib(gateway.pid)
        try:
            if 1 in o.parts:
                await self.session_setup(gateway, port)
            if 2 in o.parts:
                if self.out_of_time():
                    self.notes.append("part 2 skipped: --max-seconds reached")
                else:
                    await self.throughput(gateway, port)
        finally:
            gateway.remember_descendants()
            await anyio.to_thread.run_sync(gateway.stop)

    async def settle(self, gateway: Child, port: int, server_id: str, warm: int) -> tuple[float, bool]:
        """Wait until the entry has `warm` warm processes and no session process, and the gateway and its
        children used under 10 % of a core for two readings 0.1 s apart. Bounded by --settle-seconds."""
        started = time.monotonic()
        quiet = 0
        before = family_cpu(gateway.pid)
        for _ in range(int(self.options.settle_seconds / 0.1) + 1):
            await anyio.sleep(0.1)
            processes = (await server_status(port, server_id)).get("processes", {})
            after = family_cpu(gateway.pid)
            busy = busy_between(before, after)
            before = after
            full = processes.get("warm", 0) >= warm and processes.get("live", 0) <= warm
            quiet = quiet + 1 if full and busy < 0.01 else 0
            if quiet >= 2:
                return time.monotonic() - started, True
        return time.monotonic() - started, False

    async def one_setup(self, gateway: Child, port: int, kind: str, index: int) -> SetupSample:
        """One session through the gateway: time it, check it, see which process it got, DELETE it."""
        o = self.options
        server_id, warm = {"warm": (WARM_ID, o.pool_min), "fixed": (FIXED_ID, FIXED_POOL)}.get(kind, (COLD_ID, 0))
        sample = SetupSample(kind, index)
        sample.settle_s, sample.settled = await self.settle(gateway, port, server_id, warm)
        sample.pool_warm_before = (await server_status(port, server_id)).get("processes", {}).get("warm")
        conn = RawConnection(port)
        session = Session(conn, f"/{server_id}/mcp", "2025")
        try:
            with anyio.fail_after(o.settings.call_timeout + 30):
                probe = await conn.request("GET", "/healthz", {"accept": "application/json"}, b"")  # connect first
                if probe.status != 200:
                    raise ProtocolFailure(f"/healthz answered HTTP {probe.status}")
                existing = set(children_of(gateway.pid))
                sent_at = uptime()
                started = time.perf_counter_ns()
                sample.init_ms = await timed_open(session)
                await session.echo(payload_text())
                sample.first_call_ms = (time.perf_counter_ns() - started) / 1e6
                who = await call_tool(session, "whoami", {})
                identity = who.get("structuredContent") or {}
                if identity.get("replica") != self.tag or not isinstance(identity.get("pid"), int):
                    raise WrongReply(f"whoami answered {identity!r}, expected replica {self.tag!r}")
                sample.pid = int(identity["pid"])
                sample.leased_warm = sample.pid in existing
                if (born := process_started_at(sample.pid)) is not None:
                    sample.process_age_s = round(sent_at - born, 2)
        except (WrongReply, *CALL_ERRORS) as exc:
            sample.error = problem_text(exc)
        finally:
            await session.close()  # DELETE: the gateway stops the session's process before it answers
        return sample

    async def one_direct(self, gateway: Child, port: int, index: int) -> SetupSample:
        """The floor: a demo stdio process the bench starts itself, left until it is idle, then `initialize`
        and the first `tools/call echo` written to its stdin and read from its stdout (no gateway)."""
        o = self.options
        sample = SetupSample("direct", index)
        sample.settle_s, sample.settled = await self.settle(gateway, port, COLD_ID, 0)
        process = await anyio.open_process(self.stdio_argv(), stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            out = BufferedByteReceiveStream(process.stdout)
            with anyio.fail_after(o.settings.call_timeout + o.settle_seconds):
                last, quiet = cpu_seconds(process.pid), 0
                for _ in range(int(o.settle_seconds / 0.1) + 1):  # until it has finished starting
                    await anyio.sleep(0.1)
                    now = cpu_seconds(process.pid)
                    quiet = quiet + 1 if now is not None and last is not None and now - last < 0.005 else 0
                    last = now
                    if quiet >= 2:
                        break
                sent_at = uptime()
                started = time.perf_counter_ns()
                init = {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {"protocolVersion": HANDSHAKE_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
                }
                await process.stdin.send(json.dumps(init).encode() + b"\n")
                answer = json.loads(await out.receive_until(b"\n", MAX_BODY))
                sample.init_ms = (time.perf_counter_ns() - started) / 1e6
                if answer.get("id") != 0 or (answer.get("result") or {}).get("protocolVersion") != HANDSHAKE_VERSION:
                    raise WrongReply(f"initialize answered {answer!r:.200}")
                await process.stdin.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
                text = payload_text()
                params = {"name": "echo", "arguments": {"text": text}}
                call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
                await process.stdin.send(json.dumps(call, ensure_ascii=False).encode() + b"\n")
                answer = json.loads(await out.receive_until(b"\n", MAX_BODY))
                sample.first_call_ms = (time.perf_counter_ns() - started) / 1e6
                if answer.get("id") != 1 or not isinstance(answer.get("result"), dict):
                    raise WrongReply(f"tools/call answered {answer!r:.200}")
                check_echo(answer["result"], text)
                sample.pid, sample.leased_warm = process.pid, True
                if (born := process_started_at(process.pid)) is not None:
                    sample.process_age_s = round(sent_at - born, 2)
        except (WrongReply, *CALL_ERRORS) as exc:
            sample.error = problem_text(exc)
        finally:
            with anyio.CancelScope(shield=True):
                if process.stdin is not None:
                    with contextlib.suppress(Exception):
                        await process.stdin.aclose()
                with anyio.move_on_after(5):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    with anyio.move_on_after(5):
                        await process.wait()
        return sample

    async def session_setup(self, gateway: Child, port: int) -> None:
        o = self.options
        deadline = time.monotonic() + o.part_seconds
        log(f"part 1: waiting for {o.pool_min} + {FIXED_POOL} warm processes")
        seconds, ok = await self.settle(gateway, port, WARM_ID, o.pool_min)
        more, ok2 = await self.settle(gateway, port, FIXED_ID, FIXED_POOL)
        self.setup_notes.append(
            f"initial pool fill ({o.pool_min} + {FIXED_POOL} processes): {seconds + more:.1f} s"
            + ("" if ok and ok2 else " (cap reached)")
        )
        kinds = (
            ("warm", o.warm_sessions),
            ("fixed", o.fixed_sessions),
            ("cold", o.cold_sessions),
            ("direct", o.direct_sessions),
        )
        for index in range(max(count for _, count in kinds)):
            for kind, count in kinds:
                if index >= count:
                    continue
                if time.monotonic() > deadline or self.out_of_time():
                    self.setup_notes.append(f"stopped at {kind} session {index}: the part's time cap was reached")
                    return
                if kind == "direct":
                    sample = await self.one_direct(gateway, port, index)
                else:
                    sample = await self.one_setup(gateway, port, kind, index)
                self.setup.append(sample)
                self.check_alive(gateway, f"part 1, {kind} session {index}")
                log(
                    f"part 1: {kind} {index}: initialize {fmt(sample.init_ms)} ms, "
                    f"first call {fmt(sample.first_call_ms)} ms, leased warm {sample.leased_warm}, "
                    f"settle {fmt(sample.settle_s)} s" + (f"; ERROR {sample.error}" if sample.error else "")
                )

    async def throughput(self, gateway: Child, port: int) -> None:
        o = self.options
        top = max(o.concurrency)
        path = f"/{COLD_ID}/mcp"
        sessions = [Session(RawConnection(port), path, "2025") for _ in range(top)]
        stateless = [Session(RawConnection(port), path, "2026") for _ in range(top)]
        shared = [Session(RawConnection(port), f"/{SHARED_ID}/mcp", "2025") for _ in range(top)]
        try:
            failures: list[str] = []
            limiter = anyio.CapacityLimiter(8)  # each opens a process: not all at once on few cores

            async def open_one(session: Session) -> None:
                async with limiter:
                    try:
                        with anyio.fail_after(60):
                            await session.open()
                    except (WrongReply, *CALL_ERRORS) as exc:
                        failures.append(problem_text(exc))

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for session in sessions:
                    tg.start_soon(open_one, session)
            opened = time.perf_counter() - started
            live = (await server_status(port, COLD_ID)).get("processes", {}).get("live")
            self.throughput_notes.append(
                f"{top} sessions (one process each) opened in {opened:.1f} s before measuring; {live} live processes"
            )
            log(f"part 2: opened {top} stdio sessions in {opened:.1f} s ({live} live processes)")
            async with anyio.create_task_group() as tg:
                for session in shared:
                    tg.start_soon(open_one, session)
            if failures:
                raise RuntimeError(f"{len(failures)}/{top} stdio sessions failed to open: {failures[:3]}")
            deadline = time.monotonic() + o.part_seconds

            def pids() -> Pids:
                return Pids(gateway.pid, children_of(gateway.pid))

            for round_number in range(1, o.rounds + 1):
                for concurrency in o.concurrency:
                    for era, pool in (("2025", sessions), ("2025s", shared), ("2026", stateless)):
                        if time.monotonic() > deadline or self.out_of_time():
                            self.throughput_notes.append(
                                f"skipped {era} c={concurrency} round {round_number}: time cap"
                            )
                            continue
                        result = await run_phase(
                            "gateway-stdio",
                            era,
                            pool[:concurrency],
                            o.calls,
                            max(o.warmup, 4 * concurrency),
                            o.settings,
                            pids,
                        )
                        result.round, result.sequence = round_number, len(self.phases) + 1
                        self.phases.append(result)
                        log("part 2: " + phase_line(result))
                        self.check_alive(gateway, f"part 2, {era} c={concurrency} round {round_number}")
            processes = (await server_status(port, COLD_ID)).get("processes", {})
            self.throughput_notes.append(f"after the phases: {processes.get('live')} live processes on {COLD_ID}")
        finally:
            await close_all(sessions)
            await close_all(stateless)
            await close_all(shared)

    # --- part 3: many sessions with GET streams through one gateway -----------------------------------------

    async def many_sessions(self) -> None:
        o = self.options
        part = self.part3 = Part3(o.open_sessions)
        demo_port = free_port()
        demo_argv = [o.python, "-m", "mcpfleet.demo", "http", "--port", str(demo_port), "--replica", self.tag]
        with children_fd_limit(o.fd_limit):
            demo = spawn("demo-http", demo_argv, self.workdir, REPO)
        self.children.append(demo)
        await wait_listening(demo, demo_port)
        registry = (
            "# generated by bench/pool.py\n"
            "gateway:\n"
            "  limits: {sessions_per_principal: null}\n"  # thousands of held sessions from one address
            "servers:\n"
            f"  {HTTP_ID}:\n"
            "    type: http\n"
            f"    endpoints: [http://{HOST}:{demo_port}]\n"
        )
        with children_fd_limit(o.fd_limit):
            gateway, port = await self.start_gateway("gateway-http", registry)
        path = f"/{HTTP_ID}/mcp"
        part.gateway_fd_limit, part.demo_fd_limit = proc_fd_limit(gateway.pid), proc_fd_limit(demo.pid)
        if part.gateway_fd_limit is not None:
            part.fd_fits = max(0, (part.gateway_fd_limit - 64) // 2)
        await anyio.sleep(1.0)

        def memory(label: str) -> None:
            part.gateway_rss_mib[label] = rss_mib(gateway.pid)
            part.demo_rss_mib[label] = rss_mib(demo.pid)
            part.gateway_fds[label] = open_fds(gateway.pid)
            part.demo_fds[label] = open_fds(demo.pid)

        memory("ready")
        deadline = time.monotonic() + o.part_seconds
        openers = [RawConnection(port) for _ in range(16)]
        sessions: list[Session] = []
        streams: list[HeldStream] = []
        try:
            # Sessions: initialize + notifications/initialized, 16 at a time over 16 keep-alive connections.
            failures: Counter[str] = Counter()
            started = time.perf_counter()

            async def opener(conn: RawConnection, count: int) -> None:
                for _ in range(count):
                    if time.monotonic() > deadline or sum(failures.values()) >= 20:
                        return
                    session = Session(conn, path, "2025")
                    try:
                        with anyio.fail_after(o.settings.call_timeout):
                            await session.open()
                    except (WrongReply, *CALL_ERRORS) as exc:
                        failures[problem_text(exc)] += 1
                        await conn.reset()
                        continue
                    sessions.append(session)

            share = [
                o.open_sessions // len(openers) + (i < o.open_sessions % len(openers)) for i in range(len(openers))
            ]
            async with anyio.create_task_group() as tg:
                for conn, count in zip(openers, share, strict=True):
                    tg.start_soon(opener, conn, count)
            part.sessions_open_s = round(time.perf_counter() - started, 2)
            part.sessions_opened = len(sessions)
            part.session_failures = [f"{n}x {p}" for p, n in failures.most_common(5)]
            log(f"part 3: {len(sessions)}/{o.open_sessions} sessions opened in {part.sessions_open_s} s")
            self.check_alive(gateway, "part 3, opening sessions")
            await anyio.sleep(1.0)
            memory("sessions")
            part.calls_without_streams = await sample_calls(port, sessions, o.sample_calls, o.settings.call_timeout)
            log(f"part 3: calls before the streams: {sample_line(part.calls_without_streams)}")

            # GET streams: one raw socket each, 64 being opened at a time.
            failures = Counter()
            started = time.perf_counter()
            limiter = anyio.CapacityLimiter(64)
            async with anyio.create_task_group() as readers:

                async def open_stream(session: Session) -> None:
                    async with limiter:
                        if time.monotonic() > deadline or sum(failures.values()) >= 20:
                            return
                        try:
                            with anyio.fail_after(o.settings.call_timeout):
                                held = await HeldStream.open(port, path, session)
                        except (WrongReply, *CALL_ERRORS) as exc:
                            failures[problem_text(exc)] += 1
                            return
                        streams.append(held)
                        readers.start_soon(held.read_until_closed)

                async with anyio.create_task_group() as tg:
                    for session in sessions:
                        tg.start_soon(open_stream, session)
                part.streams_open_s = round(time.perf_counter() - started, 2)
                part.streams_opened = len(streams)
                part.stream_failures = [f"{n}x {p}" for p, n in failures.most_common(5)]
                log(f"part 3: {len(streams)} GET streams open in {part.streams_open_s} s")
                self.check_alive(gateway, "part 3, opening GET streams")
                hold_started = time.monotonic()
                await anyio.sleep(1.0)
                memory("streams")
                try:
                    part.replicas_with_streams = (await server_status(port, HTTP_ID)).get("replicas", [])
                except (WrongReply, *CALL_ERRORS) as exc:
                    part.replicas_with_streams = [{"error": f"/servers: {problem_text(exc)}"}]

                # Calls on a sample of the sessions while every stream is open.
                part.calls_with_streams = await sample_calls(port, sessions, o.sample_calls, o.settings.call_timeout)
                log(f"part 3: calls while all streams are open: {sample_line(part.calls_with_streams)}")

                # Hold every stream open (the upstream pings each one every 15 s), then see which survived.
                remaining = o.hold_seconds - (time.monotonic() - hold_started)
                with anyio.move_on_after(max(0.0, remaining)):
                    while time.monotonic() < deadline + 60:
                        await anyio.sleep(1.0)
                        self.check_alive(gateway, "part 3, holding GET streams")
                        self.check_alive(demo, "part 3, holding GET streams")
                part.held_s = round(time.monotonic() - hold_started, 1)
                memory("held")
                part.streams_alive_after_hold = sum(1 for s in streams if s.closed is None)
                part.streams_closed_early = len(streams) - part.streams_alive_after_hold
                part.streams_with_ping = sum(1 for s in streams if s.pings > 0)
                reasons = Counter(s.closed for s in streams if s.closed is not None)
                part.stream_close_reasons = [f"{n}x {r}" for r, n in reasons.most_common(5)]
                log(
                    f"part 3: after {part.held_s} s, {part.streams_alive_after_hold}/{len(streams)} streams open,"
                    f" {part.streams_with_ping} carried a ping"
                )
                readers.cancel_scope.cancel()
            for held in streams:
                await held.aclose()
            streams = []
            await anyio.sleep(2.0)
            memory("streams closed")
            self.check_alive(gateway, "part 3, after closing the GET streams")

            # End the sessions (DELETE through the gateway), bounded in time.
            deleted: list[int] = [0, 0]

            async def deleter(conn: RawConnection, mine: list[Session]) -> None:
                for session in mine:
                    if time.monotonic() > deadline + 60:
                        return
                    session.transport = conn
                    try:
                        with anyio.fail_after(o.settings.call_timeout):
                            reply = await conn.request("DELETE", path, session.headers, b"")
                        deleted[0 if reply.status == 200 else 1] += 1
                    except CALL_ERRORS:
                        deleted[1] += 1
                        await conn.reset()

            async with anyio.create_task_group() as tg:
                for i, conn in enumerate(openers):
                    tg.start_soon(deleter, conn, sessions[i :: len(openers)])
            part.deleted, part.delete_failures = deleted
            sessions = []
            await anyio.sleep(2.0)
            memory("sessions deleted")
            part.gateway_hwm_mib, part.demo_hwm_mib = hwm_mib(gateway.pid), hwm_mib(demo.pid)
            if time.monotonic() > deadline:
                part.stopped_early = f"the part's time cap ({o.part_seconds:g} s) was reached"
        finally:
            with anyio.CancelScope(shield=True):
                for held in streams:
                    await held.aclose()
                for conn in openers:
                    await conn.aclose()
            await anyio.to_thread.run_sync(gateway.stop)
            await anyio.to_thread.run_sync(demo.stop)


async def sample_calls(port: int, sessions: Sequence[Session], count: int, call_timeout: float) -> dict[str, Any]:
    """`tools/call echo` on `count` sessions picked at random (the same ones each time), 8 at a time, each
    reply checked. The calls go over 8 connections of their own: a session is its id, not its connection."""
    chosen = random.Random(7).sample(list(sessions), min(count, len(sessions)))
    latencies: list[float] = []
    problems: Counter[str] = Counter()
    tally = {"ok": 0, "wrong": 0, "errors": 0}
    callers = [RawConnection(port) for _ in range(8)]

    async def caller(conn: RawConnection, mine: list[Session]) -> None:
        for session in mine:
            text = payload_text()
            started = time.perf_counter_ns()
            session.transport = conn
            try:
                with anyio.fail_after(call_timeout):
                    await session.echo(text)
                latencies.append((time.perf_counter_ns() - started) / 1e6)
                tally["ok"] += 1
            except WrongReply as exc:
                tally["wrong"] += 1
                problems[problem_text(exc)] += 1
            except CALL_ERRORS as exc:
                tally["errors"] += 1
                problems[problem_text(exc)] += 1
                await conn.reset()

    try:
        async with anyio.create_task_group() as tg:
            for i, conn in enumerate(callers):
                tg.start_soon(caller, conn, chosen[i :: len(callers)])
    finally:
        for conn in callers:
            await conn.aclose()
    ms = {k: (round(v, 2) if v is not None else None) for k, v in summary_of(latencies).items()}
    return {**tally, "ms": ms, "problems": [f"{n}x {p}" for p, n in problems.most_common(5)]}


def sample_line(result: dict[str, Any]) -> str:
    ms = result.get("ms", {})
    return (
        f"{result.get('ok', 0)} ok, {result.get('wrong', 0)} wrong, {result.get('errors', 0)} errors; "
        f"p50 {fmt(ms.get('p50'))} ms, p90 {fmt(ms.get('p90'))} ms, max {fmt(ms.get('max'))} ms"
    )


def payload_text() -> str:
    return 'é"' + os.urandom(24).hex()


class HeldStream:
    """A GET stream (`Accept: text/event-stream`) held open on a socket of its own, read until it closes."""

    def __init__(self, stream: BufferedByteStream) -> None:
        self.stream = stream
        self.pings = 0
        self.received = 0
        self.closed: str | None = None  # why it ended, if it did
        self._tail = b""

    @classmethod
    async def open(cls, port: int, path: str, session: Session) -> HeldStream:
        assert session.session_id is not None
        request = (
            f"GET {path} HTTP/1.1\r\nhost: {HOST}:{port}\r\naccept: text/event-stream\r\n"
            f"mcp-session-id: {session.session_id}\r\nmcp-protocol-version: {HANDSHAKE_VERSION}\r\n\r\n"
        ).encode()
        stream = BufferedByteStream(await anyio.connect_tcp(HOST, port))
        try:
            await stream.send(request)
            head = (await stream.receive_until(b"\r\n\r\n", MAX_HEAD)).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
                body = b""
                with anyio.move_on_after(1):
                    body = await stream.receive(300)
                raise ProtocolFailure(f"GET stream: HTTP {status} {headers.get('content-type')!r}: {body!r:.200}")
        except BaseException:
            with contextlib.suppress(Exception):
                await stream.aclose()
            raise
        return cls(stream)

    async def read_until_closed(self) -> None:
        """Count what arrives (the upstream's `: ping` comments), note the end. Ends when cancelled."""
        try:
            while True:
                data = await self.stream.receive(65536)
                self.received += len(data)
                window = self._tail + data
                self.pings += window.count(b": ping") - self._tail.count(b": ping")
                self._tail = window[-16:]
                if window.endswith(b"\r\n0\r\n\r\n"):
                    self.closed = "the chunked body ended"
                    return
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.closed = f"connection closed ({type(exc).__name__})"

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.stream.aclose()


# --- file descriptors -------------------------------------------------------------------------------------


def ensure_fds(wanted_sessions: int) -> str:
    """Raise the soft RLIMIT_NOFILE, which the gateway and the demo server inherit, so `wanted_sessions` fit.

    The gateway needs two descriptors per held stream (the client's socket and its upstream connection), so
    it is the tightest: about 2 x sessions + 256. The client holds one per stream. Returns what was done.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * wanted_sessions + 256
    note = f"bench RLIMIT_NOFILE soft {soft}, hard {hard}; needed about {need}"
    if soft >= need:
        return note + ": enough"
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        note += f"; soft limit raised to {target}"
    except (ValueError, OSError) as exc:
        note += f"; raising it failed: {exc}"
    if target < need:
        note += " (the hard limit is lower than needed)"
    return note


@contextlib.contextmanager
def children_fd_limit(limit: int | None) -> Iterator[None]:
    """With `limit`, the processes spawned inside get that soft RLIMIT_NOFILE (the bench gets its own back)."""
    if limit is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard) if hard != resource.RLIM_INFINITY else limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def proc_fd_limit(pid: int) -> int | None:
    """The soft `Max open files` of a running process."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return int(value) if value.isdigit() else None
    except OSError:
        return None
    return None


# --- output -----------------------------------------------------------------------------------------------


def setup_summary(samples: Sequence[SetupSample]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in KINDS:
        mine = [s for s in samples if s.kind == kind]
        if not mine:
            continue
        good = [s for s in mine if s.error is None and s.init_ms is not None]
        ages = [s.process_age_s for s in good if s.process_age_s is not None]
        out[kind] = {
            "sessions": len(mine),
            "errors": len(mine) - len(good),
            "leased_warm": sum(1 for s in good if s.leased_warm),
            "init_ms": summary_of([s.init_ms for s in good if s.init_ms is not None]),
            "first_call_ms": summary_of([s.first_call_ms for s in good if s.first_call_ms is not None]),
            "process_age_at_lease_s_min": min(ages) if ages else None,
            "settle_s_median": median([s.settle_s for s in mine if s.settle_s is not None]),
            "not_settled": sum(1 for s in mine if not s.settled),
        }
    warm, cold = out.get("warm", {}), out.get("cold", {})
    if warm.get("init_ms", {}).get("p50") is not None:
        value = warm["init_ms"]["p50"]
        out["goal_warm_setup_p50_ms"] = {"measured": round(value, 3), "goal": GOAL_WARM_SETUP_P50_MS}
        out["goal_warm_setup_p50_ms"]["met"] = value <= GOAL_WARM_SETUP_P50_MS
        if cold.get("init_ms", {}).get("p50"):
            out["cold_over_warm_init_p50"] = round(cold["init_ms"]["p50"] / value, 1)
    return out


def throughput_summary(phases: Sequence[PhaseResult]) -> dict[str, Any]:
    rows = aggregate(phases)
    goals = [
        {
            "era": r.era,
            "concurrency": r.concurrency,
            "calls_per_s": round(r.calls_per_s, 1),
            "goal": GOAL_STDIO_CALLS_PER_S,
            "met": r.calls_per_s >= GOAL_STDIO_CALLS_PER_S,
            "x_best_bridge": round(r.calls_per_s / BEST_STDIO_BRIDGE_CALLS_PER_S, 2),
        }
        for r in rows
    ]
    return {
        "wrong_total": sum(r.wrong for r in rows),
        "errors_total": sum(r.errors for r in rows),
        "goals": goals,
    }


def part3_summary(part: Part3) -> dict[str, Any]:
    """KiB of RSS per session: the sessions alone, each held stream on top, and both together."""

    def per(values: dict[str, float | None], before: str, after: str, count: int) -> float | None:
        a, b = values.get(before), values.get(after)
        return round((b - a) * 1024 / count, 1) if a is not None and b is not None and count > 0 else None

    out: dict[str, Any] = {}
    for name, values in (("gateway", part.gateway_rss_mib), ("demo", part.demo_rss_mib)):
        out[f"{name}_kib_per_session"] = per(values, "ready", "sessions", part.sessions_opened)
        out[f"{name}_kib_per_stream"] = per(values, "sessions", "streams", part.streams_opened)
        if part.streams_opened and part.streams_opened == part.sessions_opened:
            out[f"{name}_kib_per_session_with_stream"] = per(values, "ready", "streams", part.sessions_opened)
        else:
            out[f"{name}_kib_per_session_with_stream"] = None
    return out


def render(run: Run, info: dict[str, Any], summ: dict[str, Any]) -> str:
    o = run.options
    lines: list[str] = []
    m = info["machine"]
    lines.append(
        f"mcpfleet pool benchmark, {info['date']}, {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, "
        f"load average {' '.join(m['loadavg_at_start'])} at start"
    )
    src = info["source"]
    lines.append(
        f"source: commit {src.get('commit', '?')}, {src.get('src_modified_files', '?')} modified file(s) under src/, "
        f"src sha256 {src['src_sha256']}"
    )
    if run.setup:
        lines.append("")
        lines.append(
            "1. session setup through the stdio pool, one session at a time, each on a fresh keep-alive connection; "
            "before each: wait until the pool is full and the gateway and its children are quiet"
        )
        lines.append(
            f"   warm = pool.min {o.pool_min} (the pool refills in the background as the session is set up); "
            f"fixed = pool.min = pool.max = {FIXED_POOL} (no refill until the session ends); "
            "cold = pool.min 0 (the session spawns its process); direct = no gateway: a fresh idle process, "
            "initialize over its own pipes"
        )
        lines.append(
            "   init = initialize POST -> its answer; 1st call = initialize POST -> answer of the first tools/call echo"
        )
        header = (
            f"   {'kind':<7}{'n':>4}{'err':>5}{'warm lease':>11}{'init p50':>10}{'p90':>9}{'max':>9}"
            f"{'1st call p50':>14}{'max':>9}{'min age':>9}{'settle':>8}"
        )
        lines.append(header)
        lines.append(f"   {'':<7}{'':>4}{'':>5}{'':>11}{'ms':>10}{'ms':>9}{'ms':>9}{'ms':>14}{'ms':>9}{'s':>9}{'s':>8}")
        for kind in KINDS:
            s = summ["setup"].get(kind)
            if s is None:
                continue
            good = s["sessions"] - s["errors"]
            lines.append(
                f"   {kind:<7}{s['sessions']:>4}{s['errors']:>5}{s['leased_warm']:>6}/{good:<4}"
                f"{fmt(s['init_ms']['p50']):>10}{fmt(s['init_ms']['p90']):>9}{fmt(s['init_ms']['max']):>9}"
                f"{fmt(s['first_call_ms']['p50']):>14}{fmt(s['first_call_ms']['max']):>9}"
                f"{fmt(s['process_age_at_lease_s_min']):>9}{fmt(s['settle_s_median'], 1):>8}"
            )
        lines.append(
            "   (with under 100 samples p99 is the maximum; 'warm lease' = the session's process was already running "
            "when initialize was sent; 'min age' = age of the youngest such process then; 'settle' = median wait)"
        )
        goal = summ["setup"].get("goal_warm_setup_p50_ms")
        if goal:
            lines.append(
                f"   goal (not asserted): warm session setup p50 <= {GOAL_WARM_SETUP_P50_MS:g} ms: measured "
                f"{goal['measured']:.2f} ms, {'met' if goal['met'] else 'MISSED'}"
                + (
                    f"; cold is {summ['setup']['cold_over_warm_init_p50']}x warm"
                    if "cold_over_warm_init_p50" in summ["setup"]
                    else ""
                )
            )
        for sample in run.setup:
            if sample.error:
                lines.append(f"   error in {sample.kind} session {sample.index}: {sample.error}")
            elif sample.kind in ("warm", "fixed") and not sample.leased_warm:
                lines.append(f"   {sample.kind} session {sample.index} did NOT lease a warm process (pid {sample.pid})")
            if not sample.settled:
                lines.append(
                    f"   {sample.kind} session {sample.index}: "
                    f"the pool had not settled after {fmt(sample.settle_s, 1)} s"
                )
        lines.extend(f"   note: {n}" for n in run.setup_notes)
    if run.phases:
        lines.append("")
        lines.append(
            f"2. tools/call echo through the gateway to stdio, {o.rounds} round(s) of {o.calls} calls per phase "
            f"(cap {o.settings.phase_seconds:g} s); 2025: one session = one process per worker; "
            f"2025s: sessions over a shared pool of {SHARED_POOL} processes (pool.mode shared, stateless server); "
            "2026: stateless, shared processes (another starts when each has 32 in flight)"
        )
        header = (
            f"   {'era':<6}{'c':>3}{'ok':>7}{'wrong':>6}{'err':>5}{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>9}"
            f"{'(min-max)':>12}{'gw CPU':>8}{'be CPU':>8}{'cl CPU':>8}{'other':>7}"
        )
        lines.append(header)
        lines.append(f"   {'':<40}{'':>9}{'':>12}{'s/1000':>8}{'s/1000':>8}{'s/1000':>8}{'CPU %':>7}")
        for r in aggregate(run.phases):
            spread = f"{r.calls_per_s_min:.0f}-{r.calls_per_s_max:.0f}"
            lines.append(
                f"   {r.era:<6}{r.concurrency:>3}{r.ok:>7}{r.wrong:>6}{r.errors:>5}{fmt(r.p50_ms):>8}{fmt(r.p99_ms):>8}"
                f"{r.calls_per_s:>9.0f}{spread:>12}{fmt(r.gateway_cpu_s_per_1000, 3):>8}"
                f"{fmt(r.backend_cpu_s_per_1000, 3):>8}{fmt(r.client_cpu_s_per_1000, 3):>8}{fmt(r.other_cpu_pct, 0):>7}"
            )
        lines.append(
            f"   goal (not asserted): >= {GOAL_STDIO_CALLS_PER_S:.0f} calls/s "
            f"({GOAL_STDIO_FACTOR}x the best stdio bridge measured on this machine, "
            f"~{BEST_STDIO_BRIDGE_CALLS_PER_S:.0f} calls/s)"
        )
        for g in summ["throughput"]["goals"]:
            lines.append(
                f"     {g['era']} c={g['concurrency']:<3} {g['calls_per_s']:>7.0f} calls/s = {g['x_best_bridge']:.2f}x "
                f"the bridge: {'met' if g['met'] else 'MISSED'}"
            )
        lines.append(
            f"   wrong replies: {summ['throughput']['wrong_total']} (must be 0); "
            f"errors: {summ['throughput']['errors_total']}"
        )
        for phase in run.phases:
            where = f"{phase.era} c={phase.concurrency} round {phase.round}"
            lines.extend(f"   problem in {where}: {p}" for p in phase.problems)
            if phase.stopped_early:
                lines.append(f"   stopped early in {where}: {phase.stopped_early}")
        lines.extend(f"   note: {n}" for n in run.throughput_notes)
    if run.part3 is not None:
        p = run.part3
        s3 = summ["part3"]
        lines.append("")
        lines.append(
            f"3. open sessions on one gateway process: {p.requested} sessions to an http entry (the demo HTTP server), "
            "each then holding a GET event stream on its own socket"
        )
        lines.append(
            f"   file descriptors: gateway soft limit {p.gateway_fd_limit}, demo server {p.demo_fd_limit} "
            + (f"(--fd-limit {o.fd_limit}) " if o.fd_limit is not None else "")
            + f"= room for about {p.fd_fits} held streams at 2 per stream; {p.fd_note}"
        )
        lines.append(
            f"   sessions opened: {p.sessions_opened}/{p.requested} in {p.sessions_open_s} s; GET streams open: "
            f"{p.streams_opened}/{p.sessions_opened} in {p.streams_open_s} s"
        )
        lines.extend(f"   session failure: {f}" for f in p.session_failures)
        lines.extend(f"   stream failure: {f}" for f in p.stream_failures)
        labels = ["ready", "sessions", "streams", "held", "streams closed", "sessions deleted"]
        lines.append(f"   {'RSS MiB':<16}" + "".join(f"{label:>18}" for label in labels) + f"{'peak (HWM)':>12}")
        lines.append(
            f"   {'gateway':<16}"
            + "".join(f"{fmt(p.gateway_rss_mib.get(label), 1):>18}" for label in labels)
            + f"{fmt(p.gateway_hwm_mib, 1):>12}"
        )
        lines.append(
            f"   {'demo server':<16}"
            + "".join(f"{fmt(p.demo_rss_mib.get(label), 1):>18}" for label in labels)
            + f"{fmt(p.demo_hwm_mib, 1):>12}"
        )
        lines.append(f"   {'gateway fds':<16}" + "".join(f"{p.gateway_fds.get(label) or '-':>18}" for label in labels))
        lines.append(f"   {'demo server fds':<16}" + "".join(f"{p.demo_fds.get(label) or '-':>18}" for label in labels))
        for name, label in (("gateway", "gateway"), ("demo", "demo server")):
            lines.append(
                f"   {label}, KiB per session (RSS delta / count): {fmt(s3[f'{name}_kib_per_session_with_stream'], 1)} "
                f"with its GET stream = {fmt(s3[f'{name}_kib_per_session'], 1)} for the session (ready -> sessions) "
                f"+ {fmt(s3[f'{name}_kib_per_stream'], 1)} for the stream (sessions -> streams)"
            )
        for label, result in (("before the streams", p.calls_without_streams), ("with all open", p.calls_with_streams)):
            if result:
                count = result["ok"] + result["wrong"] + result["errors"]
                lines.append(f"   calls on {count} sampled sessions, {label}: {sample_line(result)}")
                lines.extend(f"     problem: {x}" for x in result["problems"])
        lines.append(
            f"   after holding {p.held_s} s: {p.streams_alive_after_hold}/{p.streams_opened} streams still open, "
            f"{p.streams_closed_early} closed early; "
            f"{p.streams_with_ping} carried the upstream's ': ping' through the gateway"
        )
        lines.extend(f"   stream ended: {x}" for x in p.stream_close_reasons)
        for replica in p.replicas_with_streams:
            shown = ", ".join(f"{k} {v}" for k, v in replica.items() if k not in ("url", "weight"))
            lines.append(f"   the replica at /servers with all streams open: {shown}")
        lines.append(f"   DELETE after: {p.deleted} ok, {p.delete_failures} failed")
        if p.stopped_early:
            lines.append(f"   stopped early: {p.stopped_early}")
    lines.append("")
    lines.extend(f"note: {n}" for n in run.notes)
    lines.append(f"processes left behind after stopping (found by tag, then killed): {run.leftovers}")
    return "\n".join(lines)


# --- entry point ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[Options, bool, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--parts", default="1,2,3", help="which parts to run (default 1,2,3; 4: bursts)")
    parser.add_argument("--bursts", default="64,200", help="part 4: burst sizes (new sessions sent at once)")
    parser.add_argument(
        "--burst-starting", default="0", help="part 4: pool.max_starting values to compare (0: the default)"
    )
    parser.add_argument("--burst-acquire", type=float, default=180.0, help="part 4: pool.acquire_timeout")
    parser.add_argument("--warm-sessions", type=int, default=30, help="part 1: sessions through the warm pool")
    parser.add_argument(
        "--fixed-sessions",
        type=int,
        default=15,
        help=f"part 1: sessions through a warm pool of min = max = {FIXED_POOL}",
    )
    parser.add_argument("--cold-sessions", type=int, default=15, help="part 1: sessions that each start a process")
    parser.add_argument("--direct-sessions", type=int, default=10, help="part 1: fresh processes, no gateway")
    parser.add_argument("--pool-min", type=int, default=16, help="part 1: pool.min of the warm entry")
    parser.add_argument("--settle-seconds", type=float, default=15.0, help="part 1: cap of each wait for the pool")
    parser.add_argument("--concurrency", default="16,64", help="part 2: concurrency levels")
    parser.add_argument("--rounds", type=int, default=3, help="part 2: rounds of the interleaved phases")
    parser.add_argument("--calls", type=int, default=1500, help="part 2: measured calls per phase and round")
    parser.add_argument("--warmup", type=int, default=200, help="part 2: warm-up calls per phase (>= 4 per worker)")
    parser.add_argument("--phase-seconds", type=float, default=20.0, help="part 2: time cap of one phase")
    parser.add_argument("--call-timeout", type=float, default=10.0, help="timeout of one call")
    parser.add_argument("--open-sessions", type=int, default=2000, help="part 3: sessions held open with GET streams")
    parser.add_argument(
        "--fd-limit",
        type=int,
        default=None,
        help="part 3: start the gateway and the demo server with this soft RLIMIT_NOFILE (to see what it limits)",
    )
    parser.add_argument("--hold-seconds", type=float, default=20.0, help="part 3: how long the streams are held")
    parser.add_argument("--sample-calls", type=int, default=200, help="part 3: calls on sampled sessions")
    parser.add_argument("--part-seconds", type=float, default=120.0, help="time cap of each part")
    parser.add_argument("--max-seconds", type=float, default=330.0, help="parts not started after this long")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the gateway and the demo")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the processes' logs into this directory")
    args = parser.parse_args(argv)
    parts = sorted({int(p) for p in args.parts.split(",") if p})
    concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if not parts or set(parts) - {1, 2, 3, 4}:
        parser.error("--parts takes 1, 2, 3 and/or 4")
    bursts = [int(b) for b in args.bursts.split(",") if b]
    burst_starting = [int(b) for b in args.burst_starting.split(",") if b]
    if not bursts or min(bursts) < 1 or max(bursts) > 500 or min(burst_starting or [0]) < 0:
        parser.error("--bursts takes sizes from 1 to 500; --burst-starting takes values >= 0")
    if not concurrency or min(concurrency) < 1 or max(concurrency) > 256:
        parser.error("concurrency levels must be between 1 and 256")
    if not 1 <= args.open_sessions <= 20_000:
        parser.error("--open-sessions must be between 1 and 20000")
    settings = Settings(args.call_timeout, args.phase_seconds, 48, "raw")
    options = Options(
        parts,
        max(0, min(args.warm_sessions, 1000)),
        max(0, min(args.fixed_sessions, 1000)),
        max(0, min(args.cold_sessions, 1000)),
        max(0, min(args.direct_sessions, 1000)),
        max(1, args.pool_min),
        args.settle_seconds,
        concurrency,
        max(1, args.rounds),
        max(1, args.calls),
        max(0, args.warmup),
        settings,
        args.open_sessions,
        args.fd_limit,
        args.hold_seconds,
        max(0, args.sample_calls),
        args.part_seconds,
        args.max_seconds,
        args.python,
        bursts,
        burst_starting or [0],
        args.burst_acquire,
    )
    return options, args.json, args.keep_logs


async def main_async(options: Options, as_json: bool, keep_logs: Path | None) -> int:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "source": await anyio.to_thread.run_sync(source_state),
    }
    fd_note = ensure_fds(options.open_sessions)
    with tempfile.TemporaryDirectory(prefix="mcpfleet-pool-bench-") as name:
        tmp = Path(name)
        run = Run(options, tmp, tag=f"pool-bench-{os.getpid()}-{os.urandom(3).hex()}")
        failure: str | None = None
        try:
            if 1 in options.parts or 2 in options.parts:
                await run.stdio_parts()
            if 4 in options.parts:
                await run.burst_part()
            if 3 in options.parts:
                if run.out_of_time():
                    run.notes.append("part 3 skipped: --max-seconds reached")
                else:
                    try:
                        await run.many_sessions()
                    finally:
                        if run.part3 is not None:
                            run.part3.fd_note = fd_note
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            log(f"run failed: {failure}")
            for child in run.children:
                log(f"last lines of {child.name}'s log:\n{child.tail()}")
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(run.stop_all)
            if keep_logs is not None:
                await anyio.to_thread.run_sync(copy_logs, tmp, keep_logs)
        info["total_seconds"] = round(run.elapsed(), 1)
        info["machine"]["loadavg_at_end"] = loadavg()
        summ = {
            "setup": setup_summary(run.setup),
            "throughput": throughput_summary(run.phases),
            "part3": part3_summary(run.part3) if run.part3 is not None else {},
            "bursts": [asdict(b) for b in run.bursts],
        }
        if as_json:
            document = {
                **info,
                "options": {k: v for k, v in asdict(options).items() if k != "settings"} | asdict(options.settings),
                "summary": summ,
                "setup_sessions": [asdict(s) for s in run.setup],
                "setup_notes": run.setup_notes,
                "throughput_rows": [asdict(r) for r in aggregate(run.phases)],
                "throughput_phases": [{k: v for k, v in asdict(r).items() if k != "latencies_ms"} for r in run.phases],
                "throughput_notes": run.throughput_notes,
                "many_sessions": asdict(run.part3) if run.part3 is not None else None,
                "gateway_stdio_rss_ready_mib": run.gateway_a_rss_ready_mib,
                "leftover_processes": run.leftovers,
                "notes": run.notes,
                "failure": failure,
            }
            print(json.dumps(document, indent=2, default=str))
        else:
            print(render(run, info, summ))
            if run.bursts:
                print("\nPart 4: a burst of new sessions on a stdio entry with room for all (pool.min 4)")
                print("\n".join(burst_line(b) for b in run.bursts))
            print(f"total {info['total_seconds']} s" + (f"; FAILED: {failure}" if failure else ""))
        return 1 if failure else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_interruptibly(main_async, *parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
