"""Reload benchmark: clients calling without pause while the registry is rewritten with every kind of change.

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/reload.py                  # the tables (progress on stderr)
    .venv/bin/python bench/reload.py --json           # the same run as JSON on stdout
    .venv/bin/python bench/reload.py --duration 60 --clients 16 --interval 0.25

The scenario of issue 9, item 2 (and of tests/gateway/test_gateway_reload_live.py), measured instead of
asserted. This script starts demo HTTP replicas and a gateway (`python -m mcpfleet serve`, its file watch on)
on 127.0.0.1 with a generated registry of two entries: `web` (http, the replicas) and `local` (stdio, demo
processes). Half the clients call `web`, half `local`; each is one SDK `ClientSession` over
`streamable_http_client` calling `tools/call echo` without pause and checking every answer. A call that fails
is counted; after a 404 (its session ended) the client initializes again, and that is counted as a
re-initialization.

Two runs of the same length, one after the other, paired: `steady` (the registry is left alone) and `reloads`
(the registry file is replaced every `--interval` seconds, each time with one change, cycling through every
kind: replicas, balancer strategy, weights, timeouts, health, pool sizes, env, args). In both runs the same
poller reads `/servers` every 50 ms, so that the two runs differ only by the reloads; in the reload run it
tells when each rewrite was applied (the generation advanced) or rejected. A rewrite waits for the one
before to be applied (bounded), so the count of reloads is exact. Calls are attributed to the change in force
when they began (the last rewrite written). With `--rounds N` the pair runs N times.

Every loop is bounded in count and time; everything started is stopped in `finally` (bench/gateway.py's
process handling).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the registry it rewrites

from gateway import (
    HOST,
    REPO,
    Child,
    copy_logs,
    fmt,
    free_port,
    loadavg,
    log,
    machine,
    percentile,
    run_interruptibly,
    source_state,
    spawn,
    wait_listening,
    workdir,
)
from reload_layout import CYCLE, KINDS, Layout

POLL_INTERVAL = 0.05
MAX_SESSIONS_PER_CLIENT = 50  # a client that keeps losing its session stops initializing again after this


def describe(exc: BaseException) -> str:
    """An exception as text, with task-group wrappers taken off (the first exception inside each)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


# --- the registry ---------------------------------------------------------------------------------------


def replace_atomically(path: Path, text: str) -> None:
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    os.replace(staged, path)


# --- one run ----------------------------------------------------------------------------------------------


@dataclass
class Call:
    server: str
    kind: str  # the change in force when the call began
    ms: float
    ok: bool


@dataclass
class Reload:
    kind: str
    outcome: str  # applied, rejected, not seen
    seen_after_s: float  # from the rewrite to /servers showing it
    error: list[str] | None = None


@dataclass
class RunResult:
    name: str
    seconds: float = 0.0
    calls: list[Call] = field(default_factory=list)
    reinits: Counter[str] = field(default_factory=Counter)  # by change kind
    reinits_by_server: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # the first few, as text
    reloads: list[Reload] = field(default_factory=list)
    generation: tuple[int, int] = (0, 0)  # at the start and at the end
    gateway_lost: str | None = None  # the gateway stopped answering /servers: the run ended there


class Run:
    """One timed run: the clients, and the poller that (in a reload run) also rewrites the registry."""

    def __init__(self, name: str, gateway_url: str, registry: Path, layout: Layout, options: Options) -> None:
        self.result = RunResult(name)
        self.gateway_url = gateway_url
        self.registry = registry
        self.layout = layout
        self.options = options
        self.kind = "none"
        self.stop = anyio.Event()

    def failed(self, what: str) -> None:
        if len(self.result.failures) < 20:
            self.result.failures.append(f"[{self.kind}] {what}")

    async def status(self, http: httpx2.AsyncClient) -> dict[str, Any]:
        answer = await http.get(f"{self.gateway_url}/servers")
        return answer.json()  # type: ignore[no-any-return]

    async def client(self, server: str, number: int) -> None:
        url = f"{self.gateway_url}/{server}/mcp"
        count = sessions = 0
        while not self.stop.is_set() and sessions < MAX_SESSIONS_PER_CLIENT:
            errors: list[int] = []

            async def on_response(response: httpx2.Response, errors: list[int] = errors) -> None:
                if response.status_code >= 400:
                    errors.append(response.status_code)

            try:
                async with sdk_session(url, on_response, self.options.call_timeout) as session:
                    sessions += 1
                    if sessions > 1:
                        self.result.reinits[self.kind] += 1
                        self.result.reinits_by_server[server] += 1
                    while not self.stop.is_set():
                        count += 1
                        text = f"{server}{number}-{count}"
                        kind, before, began = self.kind, len(errors), time.perf_counter()
                        try:
                            with anyio.fail_after(self.options.call_timeout):
                                result = await session.call_tool("echo", {"text": text})
                            got = [getattr(block, "text", None) for block in result.content]
                            ok = not result.is_error and got == [text]
                            if not ok:
                                self.failed(f"{text}: wrong answer {result.model_dump()}")
                        except Exception as exc:
                            ok = False
                            self.failed(f"{text}: {describe(exc)} (HTTP {errors[before:]})")
                        ms = (time.perf_counter() - began) * 1000
                        self.result.calls.append(Call(server, kind, ms, ok))
                        if 404 in errors[before:]:
                            break  # the session ended: initialize again
            except Exception as exc:
                self.failed(f"session of {server}{number}: {describe(exc)}")
                await anyio.sleep(0.2)

    async def poll(self, rewrites: bool) -> None:
        """Until the end of the run: read /servers every POLL_INTERVAL; with `rewrites`, replace the registry
        file every `interval` seconds with one change, once the rewrite before it has been applied. A gateway
        that stops answering ends the run (its figures up to then are kept)."""
        try:
            await self._poll(rewrites)
        except (httpx2.HTTPError, ValueError) as exc:
            self.result.gateway_lost = f"{type(exc).__name__}: {exc}"
            log(f"the gateway stopped answering /servers: {self.result.gateway_lost}")
            self.stop.set()

    async def _poll(self, rewrites: bool) -> None:
        options = self.options
        async with httpx2.AsyncClient(timeout=30) as http:
            shown = await self.status(http)
            generation, rejected = shown["generation"], shown["reloads"]["rejected"]
            self.result.generation = (generation, generation)
            n = 0
            while not self.stop.is_set():
                began = time.monotonic()
                kind = CYCLE[n % len(CYCLE)]
                if rewrites:
                    self.layout = self.layout.changed(kind)
                    self.kind = kind
                    await anyio.to_thread.run_sync(replace_atomically, self.registry, self.layout.render())
                outcome = "not seen"
                with anyio.move_on_after(options.reload_wait):
                    while True:
                        shown = await self.status(http)
                        if shown["generation"] > generation:
                            outcome = "applied"
                        elif shown["reloads"]["rejected"] > rejected:
                            outcome = "rejected"
                        if outcome != "not seen" or not rewrites:
                            break
                        await anyio.sleep(POLL_INTERVAL)
                if rewrites:
                    error = shown["last_reload_error"] if outcome == "rejected" else None
                    self.result.reloads.append(Reload(kind, outcome, round(time.monotonic() - began, 3), error))
                    n += 1
                generation, rejected = shown["generation"], shown["reloads"]["rejected"]
                self.result.generation = (self.result.generation[0], generation)
                while not self.stop.is_set() and time.monotonic() < began + options.interval:
                    await anyio.sleep(POLL_INTERVAL)
                    await self.status(http)

    async def run(self, rewrites: bool) -> RunResult:
        options = self.options
        started = time.monotonic()
        with anyio.fail_after(options.duration + options.call_timeout + options.reload_wait + 60):
            async with anyio.create_task_group() as tg:
                for number in range(options.clients):
                    tg.start_soon(self.client, "web" if number % 2 == 0 else "local", number // 2)
                tg.start_soon(self.poll, rewrites)
                with anyio.move_on_after(options.duration):
                    await self.stop.wait()
                self.stop.set()
        self.result.seconds = round(time.monotonic() - started, 1)
        return self.result


@contextlib.asynccontextmanager
async def sdk_session(url: str, on_response: Any, call_timeout: float) -> AsyncIterator[ClientSession]:
    timeout = httpx2.Timeout(30, read=300)
    async with (
        httpx2.AsyncClient(timeout=timeout, event_hooks={"response": [on_response]}) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=call_timeout) as session,
    ):
        with anyio.fail_after(call_timeout):
            await session.initialize()
        yield session


# --- figures ----------------------------------------------------------------------------------------------


def latency(calls: Sequence[Call]) -> dict[str, float | None]:
    values = sorted(c.ms for c in calls)
    return {"p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99), "max_ms": max(values, default=None)}


def run_row(result: RunResult, server: str | None = None) -> dict[str, Any]:
    calls = [c for c in result.calls if server is None or c.server == server]
    reinits = sum(result.reinits.values()) if server is None else result.reinits_by_server[server]
    return {
        "run": result.name,
        "server": server or "all",
        "calls": len(calls),
        "failed": sum(not c.ok for c in calls),
        "reinits": reinits,
        "reloads_applied": sum(r.outcome == "applied" for r in result.reloads),
        "reloads_rejected": sum(r.outcome == "rejected" for r in result.reloads),
        "reloads_not_seen": sum(r.outcome == "not seen" for r in result.reloads),
        "generations": result.generation[1] - result.generation[0],
        "calls_per_s": round(len(calls) / result.seconds, 1) if result.seconds else None,
        **latency([c for c in calls if c.ok]),
    }


def kind_rows(result: RunResult) -> list[dict[str, Any]]:
    rows = []
    for kind in KINDS:
        calls = [c for c in result.calls if c.kind == kind]
        reloads = [r for r in result.reloads if r.kind == kind]
        seen = sorted(r.seen_after_s for r in reloads if r.outcome == "applied")
        rows.append(
            {
                "kind": kind,
                "rewrites": len(reloads),
                "applied": sum(r.outcome == "applied" for r in reloads),
                "rejected": sum(r.outcome == "rejected" for r in reloads),
                "calls": len(calls),
                "failed": sum(not c.ok for c in calls),
                "reinits": result.reinits[kind],
                "applied_after_p50_s": percentile(seen, 0.5),
                "applied_after_max_s": max(seen, default=None),
                **latency([c for c in calls if c.ok]),
            }
        )
    return rows


def render(info: dict[str, Any], options: Options, results: Sequence[RunResult]) -> str:
    source, mach = info["source"], info["machine"]
    lines = [
        f"mcpfleet reload benchmark, {info['date']}, {mach['nproc']} cores ({mach['cpu_model']}),"
        f" Python {mach['python']}, load average {' '.join(mach['loadavg_at_start'])} at start",
        f"source: commit {source.get('commit', '?')}, {source.get('src_modified_files', '?')} modified file(s)"
        f" under src/, src sha256 {source['src_sha256']}; the gateway imports mcpfleet from {info['mcpfleet_from']}",
        f"{options.clients} clients ({(options.clients + 1) // 2} on web: http, {options.replicas} demo replicas;"
        f" {options.clients // 2} on local: stdio demo), each one SDK session calling echo without pause;"
        f" {options.rounds} pair(s) of {options.duration:g} s runs: steady (no reload), then a rewrite every"
        f" {options.interval:g} s",
        "",
        "run      server   calls  failed  re-inits  reloads  rejected  not seen  p50 ms  p99 ms  max ms  calls/s",
        "-" * 104,
    ]
    for result in results:
        for server in (None, "web", "local"):
            r = run_row(result, server)
            lines.append(
                f"{r['run']:<8} {r['server']:<6} {r['calls']:>7} {r['failed']:>7} {r['reinits']:>9}"
                f" {r['reloads_applied']:>8} {r['reloads_rejected']:>9} {r['reloads_not_seen']:>9}"
                f" {fmt(r['p50_ms']):>7} {fmt(r['p99_ms']):>7} {fmt(r['max_ms'], 1):>7} {fmt(r['calls_per_s'], 1):>8}"
            )
    for result in results:
        if result.name.startswith("steady"):
            continue
        lines += [
            "",
            f"{result.name}: by change kind (a call counts under the last rewrite written when it began)",
            "kind      rewrites applied rejected   calls  failed  re-inits  p50 ms  p99 ms  applied after p50/max s",
        ]
        for k in kind_rows(result):
            lines.append(
                f"{k['kind']:<9} {k['rewrites']:>8} {k['applied']:>7} {k['rejected']:>8} {k['calls']:>7}"
                f" {k['failed']:>7} {k['reinits']:>9} {fmt(k['p50_ms']):>7} {fmt(k['p99_ms']):>7}"
                f"   {fmt(k['applied_after_p50_s'])}/{fmt(k['applied_after_max_s'])}"
            )
        if rejected := [r for r in result.reloads if r.outcome == "rejected"]:
            lines.append(f"rejected rewrites: {len(rejected)}; first: {rejected[0].kind}: {rejected[0].error}")
    for result in results:
        if result.gateway_lost:
            lines.append(
                f"\n{result.name}: THE GATEWAY STOPPED ANSWERING after {result.seconds} s: {result.gateway_lost}"
            )
    for result in results:
        if result.failures:
            lines.append(f"\n{result.name}: first failures")
            lines += [f"  {text[:300]}" for text in result.failures[:8]]
    lines.append("\ngoal (issue 9, not asserted): no failed call and no re-initialization in the reload run")
    for result in results:
        row = run_row(result)
        met = "met" if row["failed"] == 0 and row["reinits"] == 0 else "MISSED"
        lines.append(f"  {result.name}: {row['failed']} failed, {row['reinits']} re-initializations: {met}")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------------


def package_location(python: str) -> str:
    """Where the gateway's `mcpfleet` is imported from (PYTHONPATH may point away from this checkout)."""
    found = subprocess.run(
        [python, "-c", "import mcpfleet; print(mcpfleet.__file__)"], capture_output=True, text=True, timeout=60
    )
    return str(Path(found.stdout.strip()).parent.parent) if found.returncode == 0 else "?"


@dataclass
class Options:
    duration: float = 20.0
    clients: int = 8
    interval: float = 0.5
    rounds: int = 1
    replicas: int = 3
    call_timeout: float = 60.0
    reload_wait: float = 30.0
    python: str = sys.executable


def parse_args(argv: Sequence[str] | None) -> tuple[Options, bool, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each run (steady, reloads)")
    parser.add_argument("--clients", type=int, default=8, help="clients, half on the http entry, half on stdio")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between registry rewrites")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs (steady, then reloads)")
    parser.add_argument("--replicas", type=int, default=3, help="demo HTTP replicas of the http entry (2 or more)")
    parser.add_argument("--call-timeout", type=float, default=60.0, help="timeout of one call (and initialize)")
    parser.add_argument("--reload-wait", type=float, default=30.0, help="how long a rewrite waits to be applied")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the gateway and the demo")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the processes' logs into this directory")
    args = parser.parse_args(argv)
    if not 2 <= args.clients <= 256:
        parser.error("--clients must be between 2 and 256")
    if not 2 <= args.replicas <= 16:
        parser.error("--replicas must be between 2 and 16")
    if args.duration <= 0 or args.interval <= 0:
        parser.error("--duration and --interval must be above 0")
    options = Options(
        args.duration,
        args.clients,
        args.interval,
        max(1, args.rounds),
        args.replicas,
        args.call_timeout,
        args.reload_wait,
        args.python,
    )
    return options, args.json, args.keep_logs


async def main_async(options: Options, as_json: bool, keep_logs: Path | None) -> int:
    logging.getLogger("mcp").setLevel(logging.ERROR)  # "Session termination failed: 404" after a lost session
    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "source": await anyio.to_thread.run_sync(source_state),
        "mcpfleet_from": await anyio.to_thread.run_sync(package_location, options.python),
    }
    started = time.monotonic()
    results: list[RunResult] = []
    children: list[Child] = []
    failure: str | None = None
    with workdir() as tmp:
        try:
            urls = []
            for number in range(options.replicas):
                port, name = free_port(), chr(ord("a") + number)
                argv = [options.python, "-m", "mcpfleet.demo", "http", "--port", str(port), "--replica", name]
                children.append(spawn(f"demo-{name}", argv, tmp, REPO))
                await wait_listening(children[-1], port)
                urls.append(f"http://{HOST}:{port}")
            layout = Layout(tuple(urls), options.python)
            registry = tmp / "registry.yaml"
            registry.write_text(layout.render())
            port = free_port()
            argv = [options.python, "-m", "mcpfleet", "serve", "--registry", str(registry), "--port", str(port)]
            gateway = spawn("gateway", argv, tmp, REPO)
            children.append(gateway)
            await wait_listening(gateway, port)
            url = f"http://{HOST}:{port}"
            for round_ in range(1, options.rounds + 1):
                suffix = f"-{round_}" if options.rounds > 1 else ""
                for name, rewrites in (("steady", False), ("reloads", True)):
                    log(f"run {name}{suffix}: {options.duration:g} s, {options.clients} clients")
                    run = Run(name + suffix, url, registry, layout, options)
                    results.append(await run.run(rewrites))
                    layout = run.layout
                    gateway.remember_descendants()
                    row = run_row(results[-1])
                    log(f"  {row['calls']} calls, {row['failed']} failed, {row['reinits']} re-initializations")
                    if results[-1].gateway_lost:
                        failure = f"the gateway stopped answering during {results[-1].name}"
                        log(f"last lines of the gateway's log:\n{gateway.tail(40)}")
                        break
                if failure:
                    break
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            log(f"run failed: {failure}")
            for child in children:
                log(f"last lines of {child.name}'s log:\n{child.tail()}")
        finally:
            with anyio.CancelScope(shield=True):
                for child in reversed(children):
                    await anyio.to_thread.run_sync(child.stop)
            if keep_logs is not None:
                await anyio.to_thread.run_sync(copy_logs, tmp, keep_logs)
    info["total_seconds"] = round(time.monotonic() - started, 1)
    info["machine"]["loadavg_at_end"] = loadavg()
    if as_json:
        document = {
            **info,
            "options": asdict(options),
            "runs": [run_row(r, s) for r in results for s in (None, "web", "local")],
            "by_kind": {r.name: kind_rows(r) for r in results if not r.name.startswith("steady")},
            "reloads": {r.name: [asdict(x) for x in r.reloads] for r in results},
            "failures": {r.name: r.failures for r in results},
            "failure": failure,
        }
        print(json.dumps(document, indent=2, default=str))
    else:
        print(render(info, options, results))
        print(f"total {info['total_seconds']} s" + (f"; FAILED: {failure}" if failure else ""))
    return 1 if failure else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_interruptibly(main_async, *parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
