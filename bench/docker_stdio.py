"""Stdio servers in Docker containers against local processes: start-up and per-call round trip.

Run from the repository root with the project's virtualenv, a Docker engine, and the images
`mcpfleet/demo:dev` and `mcpfleet/base:bookworm` (`make images`):

    .venv/bin/python bench/docker_stdio.py              # the table
    .venv/bin/python bench/docker_stdio.py --json       # the same run as JSON on stdout

Measured, each over `--starts` fresh containers (a `ContainerProcess` of `mcpfleet-demo stdio`):
create, attach and start (the three Engine API calls of `ContainerProcess.__aenter__`; the image check before
them is shown apart), then the time from the started container to the answer of `initialize` (the official
SDK's `ClientSession` over `process_transport`: what readiness means for a stdio server); the same two
figures for a local `StdioProcess` of the server beside them. Then `--calls`
`tools/call echo` round trips, one at a time, over one session to the container and to a local
`StdioProcess` of the same server; and the same number of raw line round trips to a one-line python echo loop
(`mcpfleet/base:bookworm` against a local python3), which leaves out the SDK on both sides and shows what the
attach stream itself adds. The two kinds alternate in rounds so that load from elsewhere on the machine falls
on both. Every answer is checked. Containers are labelled with the project `bench<pid>` and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
from mcp import ClientSession

from mcpfleet.client.transport import process_transport
from mcpfleet.deploy.docker.attach import ContainerProcess
from mcpfleet.deploy.docker.engine import Engine
from mcpfleet.process import StdioProcess
from mcpfleet.registry.model import DockerServer

DEMO, BASE = "mcpfleet/demo:dev", "mcpfleet/base:bookworm"
ECHO = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n    sys.stdout.flush()\n"
ROUNDS = 4  # the call measurements alternate between the two kinds in this many rounds


class TimedEngine(Engine):
    """An Engine that records how long the calls of `ContainerProcess.__aenter__` take, in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, float] = {}
        self._created = 0.0

    async def ensure_image(self, image: str, **kwargs: Any) -> None:
        started = time.perf_counter()
        await super().ensure_image(image, **kwargs)
        self.last = {"image check": time.perf_counter() - started}

    async def create(self, body: Mapping[str, Any], name: str, *, server_id: str) -> str:
        started = time.perf_counter()
        found = await super().create(body, name, server_id=server_id)
        self.last["create"] = time.perf_counter() - started
        self._created = time.perf_counter()
        return found

    async def start(self, container_id: str, *, server_id: str, name: str = "") -> None:
        self.last["attach"] = time.perf_counter() - self._created
        started = time.perf_counter()
        await super().start(container_id, server_id=server_id, name=name)
        self.last["start"] = time.perf_counter() - started


def entry(image: str, **fields: Any) -> DockerServer:
    return DockerServer.model_validate({"id": "bench", "image": image, "pull": "never", **fields})


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p90 in milliseconds."""
    cuts = statistics.quantiles(samples, n=10, method="inclusive")
    return {"p50": round(statistics.median(samples) * 1000, 3), "p90": round(cuts[8] * 1000, 3), "n": len(samples)}


async def timed(samples: list[float], call: Callable[[], Awaitable[None]], count: int) -> None:
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)


async def sdk_session(stack: AsyncExitStack, process: Any) -> ClientSession:
    read, write = await stack.enter_async_context(process_transport(process))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    return session


async def starts(engine: TimedEngine, project: str, count: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for _ in range(count):
        async with AsyncExitStack() as stack:
            process = await stack.enter_async_context(
                ContainerProcess(engine, entry(DEMO, args=["stdio"]), project=project)
            )
            entered = time.perf_counter()
            await sdk_session(stack, process)
            engine.last["initialize answered"] = time.perf_counter() - entered
            for step, seconds in engine.last.items():
                found.setdefault(step, []).append(seconds)
        async with AsyncExitStack() as stack:  # the same server as a local process, for comparison
            spawning = time.perf_counter()
            local = await stack.enter_async_context(
                StdioProcess("bench", [sys.executable, "-m", "mcpfleet.demo", "stdio"])
            )
            entered = time.perf_counter()
            await sdk_session(stack, local)
            found.setdefault("local: spawn", []).append(entered - spawning)
            found.setdefault("local: initialize answered", []).append(time.perf_counter() - entered)
    return found


async def echo_calls(session: ClientSession, samples: list[float], count: int) -> None:
    async def call() -> None:
        result = await session.call_tool("echo", {"text": "ping"})
        assert not result.is_error, result
        assert [getattr(block, "text", None) for block in result.content] == ["ping"], result

    await timed(samples, call, count)


async def line_calls(process: Any, samples: list[float], count: int) -> None:
    line = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'

    async def call() -> None:
        await process.send(line)
        assert await process.receive() == line

    await timed(samples, call, count)


async def round_trips(engine: Engine, project: str, calls: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {
        kind: [] for kind in ("sdk container", "sdk local", "line container", "line local")
    }
    async with AsyncExitStack() as stack:
        demo_container = await stack.enter_async_context(
            ContainerProcess(engine, entry(DEMO, args=["stdio"]), project=project)
        )
        demo_local = await stack.enter_async_context(
            StdioProcess("bench", [sys.executable, "-m", "mcpfleet.demo", "stdio"])
        )
        echo_container = await stack.enter_async_context(
            ContainerProcess(engine, entry(BASE, command=["python3", "-c", ECHO]), project=project)
        )
        echo_local = await stack.enter_async_context(StdioProcess("bench", [sys.executable, "-c", ECHO]))
        sessions = {
            "sdk container": await sdk_session(stack, demo_container),
            "sdk local": await sdk_session(stack, demo_local),
        }
        for session in sessions.values():  # warm-up, not measured
            await echo_calls(session, [], 10)
        for process in (echo_container, echo_local):
            await line_calls(process, [], 10)
        for _ in range(ROUNDS):
            for kind, session in sessions.items():
                await echo_calls(session, found[kind], calls // ROUNDS)
            await line_calls(echo_container, found["line container"], calls // ROUNDS)
            await line_calls(echo_local, found["line local"], calls // ROUNDS)
    return found


async def main_async(options: argparse.Namespace) -> dict[str, Any]:
    project = f"bench{os.getpid()}"
    engine = TimedEngine()
    async with engine:
        try:
            started = await starts(engine, project, options.starts)
            calls = await round_trips(engine, project, options.calls)
        finally:
            for container in await engine.containers({"mcpfleet.project": project}):
                await engine.remove(container["Id"], grace=0)
    return {
        "engine": engine.version.get("Version"),
        "start_ms": {step: percentiles(samples) for step, samples in started.items()},
        "round_trip_ms": {kind: percentiles(samples) for kind, samples in calls.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--starts", type=int, default=10, help="fresh containers for the start-up figures")
    parser.add_argument("--calls", type=int, default=200, help="round trips of each kind")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args()
    results = anyio.run(main_async, options)
    if options.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"Docker engine {results['engine']}; milliseconds, p50 / p90 (n)")
    for title, table in (("start-up of a container", "start_ms"), ("one round trip", "round_trip_ms")):
        print(f"\n{title}:")
        for name, figures in results[table].items():
            print(f"  {name:<28} {figures['p50']:>9.3f} / {figures['p90']:>9.3f}  ({figures['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
