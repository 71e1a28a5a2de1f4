"""Docker benchmark: the gateway serving `docker` entries, against the same demo server as a local process.

Run from the repository root with the project's virtualenv and a Docker engine:

    .venv/bin/python bench/docker.py                  # the three parts, tables on stdout (about 5 minutes)
    .venv/bin/python bench/docker.py --parts cold     # one part: cold, lease or overhead
    .venv/bin/python bench/docker.py --json           # the same as JSON on stdout (progress goes to stderr)

Three parts, each through a real gateway (`python -m mcpfleet serve`, a subprocess on 127.0.0.1):

- `cold`: a docker HTTP entry with `start: on_demand`. Each round removes the entry's containers (docker CLI),
  waits until `/servers` lists no serving replica, then times one new client session: `initialize` sent, its
  answer, then `notifications/initialized` and the first `tools/call echo` answered. Where the time went comes
  from the engine (the container's `Created` and `State.StartedAt`), the demo's own log lines (`docker logs
  --timestamps`) and the gateway's log (the replica joining the balancer, the deployer seeing it ready).
- `lease`: a new session's `initialize`, request to answer, on docker stdio entries (one container per
  session) with `pool.min` warm containers waiting and with none (`pool.min: 0`, a cold start), and on
  local stdio entries of the same demo with the same pool settings. The four alternate in each round; before
  each measurement every pool is back at rest (its warm processes ready, the previous sessions' processes and
  containers gone).
- `overhead`: `tools/call echo` on 2025-11-25 sessions (initialize once per worker) to the demo HTTP server
  as a docker replica (its port published on 127.0.0.1, through docker-proxy) and as a local process, each
  directly and through the gateway: latency at concurrency 1, throughput at 16, the four targets interleaved
  in rounds. CPU per 1000 calls of the gateway, the backend (the demo process, in the container or not) and
  docker-proxy.

The client is the raw HTTP/1.1 client of bench/gateway.py (raw JSON-RPC, no SDK objects); every answer is
checked. Everything runs on 127.0.0.1, containers carry the project `b<pid>` (`MCPFLEET_PROJECT`) and are
removed in `finally`, with the processes. Every wait is bounded; `--max-seconds` bounds the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import (
    HANDSHAKE_VERSION,
    HOST,
    INITIALIZE,
    INITIALIZED,
    REPO,
    Child,
    PhaseResult,
    Pids,
    ProtocolFailure,
    RawConnection,
    Session,
    Settings,
    answer_to,
    close_all,
    cpu_seconds,
    descendants_of,
    fmt,
    free_port,
    loadavg,
    log,
    machine,
    payload,
    percentile,
    phase_line,
    run_interruptibly,
    run_phase,
    source_state,
    spawn,
    wait_listening,
    workdir,
)

PARTS = ("cold", "lease", "overhead")
OVERHEAD_TARGETS = ("docker-direct", "docker-gateway", "local-direct", "local-gateway")
LEASE_TARGETS = ("docker-warm", "docker-cold", "local-warm", "local-cold")
CONCURRENCY = (1, 16)
SETTLE = 2.5  # seconds with no container before a cold round: longer than the controller's reconcile (2 s)
BUILD_TIMEOUT = 900.0
JSON_ACCEPT = {"accept": "application/json"}


# --- the docker CLI -------------------------------------------------------------------------------------


def docker_cli(*args: str, timeout: float = 60.0, check: bool = True) -> str:
    """Run `docker`; stdout and stderr together, as `docker logs` writes the container's two streams."""
    done = subprocess.run(
        ["docker", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited with {done.returncode}: {done.stdout.strip()[-500:]}")
    return done.stdout


async def docker(*args: str, within: float = 60.0, check: bool = True) -> str:
    return await anyio.to_thread.run_sync(functools.partial(docker_cli, *args, timeout=within, check=check))


async def containers(project: str, server: str | None = None) -> list[str]:
    """Names of the project's containers (of one server when given), stopped ones too."""
    selector = ["--filter", f"label=mcpfleet.project={project}"]
    if server is not None:
        selector += ["--filter", f"label=mcpfleet.server={server}"]
    return sorted((await docker("ps", "-a", *selector, "--format", "{{.Names}}")).split())


def build_image(python: str) -> str:
    """The demo image of this source tree: docker/build-images.sh (skips what is up to date), its `src-` tag."""
    env = {**os.environ, "PYTHON": python}
    done = subprocess.run(
        [str(REPO / "docker" / "build-images.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"docker/build-images.sh exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout.split()[-1]


def docker_time(stamp: str) -> float:
    """An engine timestamp (`2026-11-30T02:28:57.644063049Z`, UTC) as seconds since the epoch."""
    head, _, fraction = stamp.strip().rstrip("Z").partition(".")
    whole = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return whole + (float("0." + fraction) if fraction else 0.0)


_GATEWAY_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def gateway_time(line: str) -> float | None:
    """The time of a gateway log line (`%(asctime)s`: local time, milliseconds)."""
    match = _GATEWAY_STAMP.match(line)
    if match is None:
        return None
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000


def proxy_pid(host_port: int) -> int | None:
    """The docker-proxy process that listens on `host_port` (the engine's userland proxy), if any."""
    wanted = ["-host-port", str(host_port)]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if argv and argv[0].endswith("docker-proxy") and any(argv[i : i + 2] == wanted for i in range(len(argv))):
                return int(entry.name)
    return None


# --- the gateway ----------------------------------------------------------------------------------------


@dataclass
class Gateway:
    child: Child
    port: int
    status_connection: RawConnection

    async def servers(self) -> dict[str, dict[str, Any]]:
        """`/servers`, by server id."""
        with anyio.fail_after(10):
            reply = await self.status_connection.request("GET", "/servers", JSON_ACCEPT, b"")
        if reply.status != 200:
            raise RuntimeError(f"/servers answered HTTP {reply.status}")
        return {s["id"]: s for s in json.loads(reply.body)["servers"]}

    def log_size(self) -> int:
        return self.child.log_path.stat().st_size

    def log_since(self, offset: int) -> list[str]:
        with self.child.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace").splitlines()

    def check_alive(self) -> None:
        if (code := self.child.popen.poll()) is not None:
            raise RuntimeError(f"the gateway exited with {code}:\n{self.child.tail()}")


async def wait_until(what: str, check: Callable[[], Awaitable[bool]], within: float, every: float = 0.1) -> float:
    """Poll `check` until it holds; the seconds it took. TimeoutError naming `what` after `within` seconds."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise TimeoutError(f"{what}: not within {within:g} s")
        await anyio.sleep(every)


# --- one new session, timed -------------------------------------------------------------------------------


@dataclass
class FirstAnswers:
    sent_at: float  # time.time() when `initialize` was sent
    initialize_s: float  # initialize sent -> its answer read
    call_s: float  # initialize sent -> the first tools/call's answer read (notifications/initialized between)


async def first_answers(port: int, path: str, within: float) -> tuple[FirstAnswers, Session]:
    """A new connection and session: initialize, notifications/initialized, one checked tools/call echo."""
    session = Session(RawConnection(port), path, "2025")
    try:
        with anyio.fail_after(within):
            sent_at, started = time.time(), time.perf_counter()
            reply = await session.transport.request("POST", path, session.headers, INITIALIZE)
            initialized = time.perf_counter()
            result = answer_to(reply, 0)
            if result.get("protocolVersion") != HANDSHAKE_VERSION:
                raise ProtocolFailure(f"initialize negotiated {result.get('protocolVersion')!r}")
            if not (session_id := reply.headers.get("mcp-session-id")):
                raise ProtocolFailure("initialize answered without an Mcp-Session-Id")
            session.session_id = session_id
            session.headers = session._headers()
            notified = await session.transport.request("POST", path, session.headers, INITIALIZED)
            if notified.status != 202:
                raise ProtocolFailure(f"notifications/initialized answered HTTP {notified.status}")
            await session.echo(payload(48))
            called = time.perf_counter()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await session.close()
        raise
    return FirstAnswers(sent_at, initialized - started, called - started), session


def ms_stats(seconds: Sequence[float]) -> dict[str, Any]:
    """p50 and p90 (nearest rank) in milliseconds, and n."""
    ordered = sorted(seconds)
    if not ordered:
        return {"p50": None, "p90": None, "n": 0}
    p50, p90 = percentile(ordered, 0.5), percentile(ordered, 0.9)
    assert p50 is not None
    assert p90 is not None
    return {"p50": round(p50 * 1000, 1), "p90": round(p90 * 1000, 1), "n": len(ordered)}


# --- the run ----------------------------------------------------------------------------------------------


@dataclass
class Options:
    parts: list[str]
    rounds: int
    overhead_rounds: int
    calls: int
    calls_c1: int
    warmup: int
    pool_min: int
    image: str | None
    python: str
    start_timeout: float
    call_timeout: float
    phase_seconds: float
    max_seconds: float


@dataclass
class Bench:
    options: Options
    workdir: Path
    project: str
    image: str = ""
    private_tag: str | None = None
    children: list[Child] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def out_of_time(self) -> bool:
        return time.monotonic() - self.started > self.options.max_seconds

    async def prepare_image(self) -> None:
        """The demo image, with a tag of this run's own: another work tree's build prunes older `src-` tags,
        which must not take the image away between two cold starts."""
        source = self.options.image
        if source is None:
            log("building or finding the images (docker/build-images.sh)")
            source = await anyio.to_thread.run_sync(build_image, self.options.python)
        repository = source.rsplit(":", 1)[0] if ":" in source.rsplit("/", 1)[-1] else source
        tag = f"{repository}:{self.project}"
        await docker("tag", source, tag)
        self.private_tag, self.image = tag, tag
        image_id = (await docker("image", "inspect", "--format", "{{.Id}}", tag)).strip()
        log(f"demo image {source} ({image_id[:19]}), used as {tag}")
        self.notes.append(f"demo image {source} ({image_id[:19]})")

    def spawn(self, name: str, argv: list[str]) -> Child:
        child = spawn(name, argv, self.workdir, REPO)
        self.children.append(child)
        return child

    async def start_gateway(self, name: str, registry: dict[str, Any]) -> Gateway:
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps({"servers": registry}, indent=2))
        port = free_port()
        argv = [self.options.python, "-m", "mcpfleet", "serve", "--registry", str(path)]
        child = self.spawn(name, [*argv, "--host", HOST, "--port", str(port), "--no-watch"])
        await wait_listening(child, port)
        gateway = Gateway(child, port, RawConnection(port))
        if (await gateway.servers()).keys() != registry.keys():
            raise RuntimeError(f"{name} does not serve the entries {sorted(registry)}:\n{child.tail()}")
        log(f"{name}: pid {child.pid}, port {port}")
        return gateway

    async def stop_child(self, child: Child) -> None:
        await anyio.to_thread.run_sync(child.stop)
        if child in self.children:
            self.children.remove(child)

    async def stop_gateway(self, gateway: Gateway) -> None:
        await gateway.status_connection.aclose()
        await self.stop_child(gateway.child)

    async def cleanup(self) -> list[str]:
        """Stop every process, remove every container of the project and the image tag; what is left."""
        left: list[str] = []
        with anyio.CancelScope(shield=True):
            for child in list(self.children):
                try:
                    await self.stop_child(child)
                except Exception as exc:  # keep stopping the others
                    log(f"stopping {child.name}: {exc}")
            with contextlib.suppress(Exception):
                if names := await containers(self.project):
                    log(f"removing {len(names)} container(s) the gateways left: {' '.join(names)}")
                    self.notes.append(f"{len(names)} container(s) left after the gateways stopped: {' '.join(names)}")
                    await docker("rm", "-f", "-v", *names, check=False)
                left = await containers(self.project)
            if self.private_tag is not None:
                await docker("rmi", self.private_tag, check=False)
        return left

    # --- part 1: cold start from zero ---------------------------------------------------------------------

    async def no_replica(self, gateway: Gateway, server: str) -> int:
        """Remove the server's containers and wait until none exists and `/servers` lists no serving replica
        (a removed replica stays listed as `draining` for `timeouts.drain`). Returns how many times a
        container came back within SETTLE seconds (the controller replacing one it saw stop)."""
        for came_back in range(3):
            if names := await containers(self.project, server):
                await docker("rm", "-f", *names)

            async def gone() -> bool:
                if await containers(self.project, server):
                    return False
                replicas = (await gateway.servers())[server].get("replicas") or []
                return all(r.get("health") == "draining" for r in replicas)

            await wait_until(f"no replica of {server!r}", gone, within=60, every=0.2)
            await anyio.sleep(SETTLE)
            if not await containers(self.project, server):
                return came_back
        raise RuntimeError(f"containers of {server!r} keep coming back after being removed")

    async def cold(self) -> dict[str, Any]:
        o = self.options
        entry = {
            "type": "docker",
            "image": self.image,
            "port": 8080,
            "pull": "never",
            "start": "on_demand",
            "timeouts": {"startup": o.start_timeout},
        }
        gateway = await self.start_gateway("gateway-cold", {"cold": entry})
        rounds: list[dict[str, Any]] = []
        came_back = 0
        draining_listed = 0
        try:
            for number in range(1, o.rounds + 1):
                if self.out_of_time():
                    self.notes.append(f"cold: stopped after {number - 1} rounds: --max-seconds")
                    break
                came_back += await self.no_replica(gateway, "cold")
                replicas = (await gateway.servers())["cold"].get("replicas") or []
                draining_listed = max(draining_listed, len(replicas))
                offset = gateway.log_size()
                answers, session = await first_answers(gateway.port, "/cold/mcp", o.start_timeout + 10)
                try:
                    row = await self.cold_markers(gateway, answers, offset)
                finally:
                    await session.close()
                rounds.append(row)
                log(
                    f"cold round {number}: initialize {row['initialize'] * 1000:.0f} ms, first call "
                    f"{row['call'] * 1000:.0f} ms (container {row['container']})"
                )
                gateway.check_alive()
        finally:
            await self.stop_gateway(gateway)
        if came_back:
            self.notes.append(f"cold: {came_back} time(s) a removed container was started again by the gateway")
        if draining_listed:
            self.notes.append(
                f"cold: /servers still listed up to {draining_listed} removed replica(s) as 'draining' before a round "
                "(timeouts.drain: 600 s, though their sessions had been deleted)"
            )
        return {"rounds": rounds, "markers": cold_summary(rounds)}

    async def cold_markers(self, gateway: Gateway, answers: FirstAnswers, offset: int) -> dict[str, Any]:
        """Seconds from `initialize` sent to each step seen by the engine, the demo and the gateway."""
        names = await containers(self.project, "cold")
        if len(names) != 1:
            raise RuntimeError(f"expected one container of 'cold' after a cold start, found {names}")
        name = names[0]
        inspected = json.loads(await docker("inspect", name))[0]
        sent = answers.sent_at
        row: dict[str, Any] = {
            "container": name,
            "created": docker_time(inspected["Created"]) - sent,
            "started": docker_time(inspected["State"]["StartedAt"]) - sent,
            "initialize": answers.initialize_s,
            "call": answers.call_s,
        }
        for line in (await docker("logs", "--timestamps", name)).splitlines():
            stamp, _, text = line.partition(" ")
            if "banner" not in row and "mcpfleet-demo replica" in text:
                row["banner"] = docker_time(stamp) - sent
            elif "lifespan" not in row and ("StreamableHTTP" in text or "session manager" in text):
                row["lifespan"] = docker_time(stamp) - sent
        for line in gateway.log_since(offset):
            at = gateway_time(line)
            if at is None:
                continue
            if "joined" not in row and "server 'cold': replicas joined" in line:
                row["joined"] = at - sent
            elif "ready" not in row and "server 'cold':" in line and "replica(s) running" in line:
                row["ready"] = at - sent
        return row

    # --- part 2: a new stdio session, warm or cold ------------------------------------------------------

    async def lease(self) -> dict[str, Any]:
        o = self.options
        pool_max = o.pool_min + 4
        local = [o.python, "-m", "mcpfleet.demo", "stdio"]
        local_env = {"PYTHONPATH": str(REPO / "src")}  # the gateway passes no PYTHONPATH on to its children
        registry: dict[str, Any] = {}
        for target in LEASE_TARGETS:
            pool = {"min": o.pool_min if target.endswith("warm") else 0, "max": pool_max}
            if target.startswith("docker"):
                registry[target] = {"type": "docker", "image": self.image, "args": ["stdio"], "pull": "never"}
            else:
                registry[target] = {"type": "stdio", "command": local, "env": local_env}
            registry[target] |= {"pool": pool, "timeouts": {"startup": o.start_timeout}}
        gateway = await self.start_gateway("gateway-lease", registry)
        samples: dict[str, dict[str, list[float]]] = {t: {"initialize": [], "call": []} for t in LEASE_TARGETS}
        samples["docker-cold"] |= {"created": [], "started": []}
        waits: list[float] = []
        try:
            waits.append(await self.lease_at_rest(gateway, registry))
            for number in range(1, o.rounds + 1):
                if self.out_of_time():
                    self.notes.append(f"lease: stopped after {number - 1} rounds: --max-seconds")
                    break
                order = LEASE_TARGETS[number % 4 :] + LEASE_TARGETS[: number % 4]  # each goes first in turn
                figures = []
                for target in order:
                    waits.append(await self.lease_at_rest(gateway, registry))
                    answers, session = await first_answers(gateway.port, f"/{target}/mcp", o.start_timeout + 10)
                    try:
                        if target == "docker-cold":  # the engine's side of the start (its one container)
                            (name,) = await containers(self.project, target)
                            state = json.loads(await docker("inspect", name))[0]
                            created = docker_time(state["Created"]) - answers.sent_at
                            started = docker_time(state["State"]["StartedAt"]) - answers.sent_at
                            samples[target]["created"].append(created)
                            samples[target]["started"].append(started)
                    finally:
                        await session.close()
                    samples[target]["initialize"].append(answers.initialize_s)
                    samples[target]["call"].append(answers.call_s)
                    figures.append(f"{target} {answers.initialize_s * 1000:.0f}")
                    gateway.check_alive()
                log(f"lease round {number}: initialize ms: {', '.join(figures)}")
        finally:
            await self.stop_gateway(gateway)
        return {
            "pool": {"min": o.pool_min, "max": pool_max, "mode": "session"},
            "targets": {t: {k: ms_stats(v) for k, v in samples[t].items()} for t in LEASE_TARGETS},
            "seconds": {t: {k: [round(x, 4) for x in v] for k, v in samples[t].items()} for t in LEASE_TARGETS},
            "wait_for_rest_ms": ms_stats(waits) | {"max": round(max(waits) * 1000, 1) if waits else None},
        }

    async def lease_at_rest(self, gateway: Gateway, registry: dict[str, Any]) -> float:
        """Wait until every pool is at rest: its `pool.min` processes warm and nothing else live or starting,
        and (docker) exactly that many containers on the engine."""

        async def at_rest() -> bool:
            servers = await gateway.servers()
            for target, entry in registry.items():
                processes = servers[target]["processes"]
                want = entry["pool"]["min"]
                if not processes["live"] == processes["warm"] == want or processes["starting"] or processes["waiting"]:
                    return False
                if target.startswith("docker") and len(await containers(self.project, target)) != want:
                    return False
            return True

        return await wait_until("the stdio pools at rest", at_rest, within=120, every=0.1)

    # --- part 3: per-call overhead ----------------------------------------------------------------------

    async def overhead(self) -> dict[str, Any]:
        o = self.options
        demo_port = free_port()
        demo = self.spawn("demo-http", [o.python, "-m", "mcpfleet.demo", "http", "--port", str(demo_port)])
        await wait_listening(demo, demo_port)
        registry = {
            "web-docker": {"type": "docker", "image": self.image, "port": 8080, "pull": "never", "replicas": 1},
            "web-local": {"type": "http", "endpoints": [f"http://{HOST}:{demo_port}"]},
        }
        gateway = await self.start_gateway("gateway-overhead", registry)
        results: list[PhaseResult] = []
        proxy_cpu: dict[int, float] = {}  # by the phase's index in results
        pools: dict[str, list[Session]] = {}
        try:

            async def replica_ready() -> bool:
                return any(r.get("health") == "ok" for r in (await gateway.servers())["web-docker"]["replicas"])

            await wait_until("the docker replica serving", replica_ready, within=o.start_timeout + 10)
            (replica,) = [r for r in (await gateway.servers())["web-docker"]["replicas"] if r["health"] == "ok"]
            docker_port = int(replica["url"].rsplit(":", 1)[1])
            (name,) = await containers(self.project, "web-docker")
            container_pid = int((await docker("inspect", "--format", "{{.State.Pid}}", name)).strip())
            proxy = proxy_pid(docker_port)
            log(f"docker replica {name}: 127.0.0.1:{docker_port}, pid {container_pid}, docker-proxy pid {proxy}")
            if proxy is None:
                self.notes.append("overhead: no docker-proxy found for the published port (proxy CPU not measured)")
            where = {
                "docker-direct": (docker_port, "/mcp", None, container_pid),
                "docker-gateway": (gateway.port, "/web-docker/mcp", gateway.child.pid, container_pid),
                "local-direct": (demo_port, "/mcp", None, demo.pid),
                "local-gateway": (gateway.port, "/web-local/mcp", gateway.child.pid, demo.pid),
            }
            for target, (port, path, _, _) in where.items():
                pools[target] = [Session(RawConnection(port), path, "2025") for _ in range(max(CONCURRENCY))]
                with anyio.fail_after(60):
                    for session in pools[target]:
                        await session.open()
            settings = Settings(o.call_timeout, o.phase_seconds, 48, "raw")
            proxy_at: list[float | None] = [None]

            def pids_of(target: str) -> Pids:
                """Called by run_phase after the warm-up, just before the measured calls: the proxy's CPU is
                read here too, and again when run_phase returns."""
                _, _, gateway_pid, backend = where[target]
                proxy_at[0] = cpu_seconds(proxy) if proxy is not None and target.startswith("docker") else None
                return Pids(gateway_pid, [backend, *descendants_of(backend)])

            for number in range(1, o.overhead_rounds + 1):
                for concurrency in CONCURRENCY:
                    for target in OVERHEAD_TARGETS:
                        if self.out_of_time():
                            self.notes.append(f"overhead: skipped {target} c={concurrency} round {number}")
                            continue
                        result = await run_phase(
                            target,
                            "2025",
                            pools[target][:concurrency],
                            o.calls_c1 if concurrency == 1 else o.calls,
                            max(o.warmup, 4 * concurrency),
                            settings,
                            functools.partial(pids_of, target),
                        )
                        if proxy_at[0] is not None and proxy is not None and (now := cpu_seconds(proxy)) is not None:
                            proxy_cpu[len(results)] = now - proxy_at[0]
                            if result.other_cpu_pct is not None and result.seconds > 0:  # the proxy is ours too
                                share = 100 * proxy_cpu[len(results)] / (result.seconds * (os.cpu_count() or 1))
                                result.other_cpu_pct = round(max(0.0, result.other_cpu_pct - share), 1)
                        result.round, result.sequence = number, len(results) + 1
                        results.append(result)
                        log(phase_line(result))
                        gateway.check_alive()
        finally:
            for sessions in pools.values():
                await close_all(sessions)
            await self.stop_gateway(gateway)
            await self.stop_child(demo)
        return {"rows": overhead_rows(results, proxy_cpu), "phases": [phase_json(r) for r in results]}


def phase_json(result: PhaseResult) -> dict[str, Any]:
    return {k: v for k, v in asdict(result).items() if k != "latencies_ms"}


def overhead_rows(results: Sequence[PhaseResult], proxy_cpu: dict[int, float]) -> list[dict[str, Any]]:
    """One row per target and concurrency over the rounds: p50 and calls/s the median of the rounds', p99 and
    CPU per 1000 calls over all the rounds' calls."""
    rows = []
    for concurrency in CONCURRENCY:
        for target in OVERHEAD_TARGETS:
            indexed = [(i, r) for i, r in enumerate(results) if r.target == target and r.concurrency == concurrency]
            if not indexed:
                continue
            phases = [r for _, r in indexed]
            done = sum(r.completed for r in phases)
            pooled = sorted(x for r in phases for x in r.latencies_ms)
            gateway_cpu = [r.gateway_cpu_s for r in phases if r.gateway_cpu_s is not None]
            proxies = [proxy_cpu[i] for i, _ in indexed if i in proxy_cpu]
            other = [r.other_cpu_pct for r in phases if r.other_cpu_pct is not None]
            per_1000 = 1000 / done if done else float("nan")
            rows.append(
                {
                    "target": target,
                    "concurrency": concurrency,
                    "rounds": len(phases),
                    "ok": sum(r.ok for r in phases),
                    "wrong": sum(r.wrong + r.warmup_wrong for r in phases),
                    "errors": sum(r.errors + r.warmup_errors for r in phases),
                    "p50_ms": statistics.median([r.p50_ms for r in phases if r.p50_ms is not None] or [float("nan")]),
                    "p99_ms": percentile(pooled, 0.99),
                    "calls_per_s": statistics.median([r.calls_per_s for r in phases]),
                    "calls_per_s_min": min(r.calls_per_s for r in phases),
                    "calls_per_s_max": max(r.calls_per_s for r in phases),
                    "gateway_cpu_s_per_1000": sum(gateway_cpu) * per_1000 if gateway_cpu else None,
                    "backend_cpu_s_per_1000": sum(r.backend_cpu_s for r in phases) * per_1000,
                    "proxy_cpu_s_per_1000": sum(proxies) * per_1000 if proxies else None,
                    "client_cpu_s_per_1000": sum(r.client_cpu_s for r in phases) * per_1000,
                    "other_cpu_pct": round(sum(other) / len(other), 1) if other else None,
                    "problems": [p for r in phases for p in r.problems],
                }
            )
    return rows


# Steps of a cold start: (key, what it is, the step it follows). Every figure is from `initialize` sent.
COLD_STEPS = (
    ("created", "engine: container created (Created)", None),
    ("started", "engine: container started (State.StartedAt)", "created"),
    ("banner", "demo: first line (its imports done)", "started"),
    ("lifespan", "demo: app started (uvicorn binds next)", "banner"),
    ("ready", "gateway: deployer saw it answer", "lifespan"),
    ("joined", "gateway: replica joined the balancer", "lifespan"),
    ("initialize", "client: initialize answered", "serving"),
    ("call", "client: first tools/call answered", "initialize"),
)


def cold_summary(rounds: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key, what, after in COLD_STEPS:
        since_sent = [r[key] for r in rounds if key in r]
        steps = []
        for r in rounds:
            if key not in r:
                continue
            if after == "serving":  # the gateway forwards once both happened (wake returned, replica listed)
                before = max((r[k] for k in ("ready", "joined") if k in r), default=None)
            else:
                before = r.get(after) if after is not None else 0.0
            if before is not None:
                steps.append(r[key] - before)
        rows.append({"step": key, "what": what, "from_sent": ms_stats(since_sent), "step_ms": ms_stats(steps)})
    return rows


# --- output -----------------------------------------------------------------------------------------------


def render(document: dict[str, Any]) -> str:
    lines: list[str] = []
    m, src = document["machine"], document["source"]
    lines.append(
        f"mcpfleet docker benchmark, {document['date']}, {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, "
        f"Docker engine {document.get('engine', '?')}"
    )
    lines.append(
        f"source: commit {src.get('commit', '?')}, {src.get('src_modified_files', '?')} modified file(s) under src/; "
        f"load average {' '.join(m['loadavg_at_start'])} at start, {' '.join(m.get('loadavg_at_end', []))} at end"
    )
    parts = document["parts"]
    if cold := parts.get("cold"):
        lines.append("")
        lines.append(
            f"cold start from zero (docker HTTP entry, start: on_demand), {len(cold['rounds'])} rounds; "
            "ms from `initialize` sent"
        )
        lines.append(f"{'step':<46}{'p50':>8}{'p90':>8}{'step p50':>10}{'step p90':>10}{'n':>4}")
        for row in cold["markers"]:
            f, s = row["from_sent"], row["step_ms"]
            lines.append(
                f"{row['what']:<46}{fmt(f['p50'], 0):>8}{fmt(f['p90'], 0):>8}{fmt(s['p50'], 0):>10}"
                f"{fmt(s['p90'], 0):>10}{f['n']:>4}"
            )
        lines.append(f"  (load average {' '.join(cold['loadavg'])} after the part)")
    if lease := parts.get("lease"):
        pool = lease["pool"]
        lines.append("")
        lines.append(
            f"a new session on a stdio entry (pool mode session, min {pool['min']} for warm, 0 for cold, max "
            f"{pool['max']}); ms from `initialize` sent"
        )
        lines.append(f"{'target':<14}{'initialize p50':>16}{'p90':>8}{'first call p50':>16}{'p90':>8}{'n':>4}")
        for target, figures in lease["targets"].items():
            i, c = figures["initialize"], figures["call"]
            lines.append(
                f"{target:<14}{fmt(i['p50'], 1):>16}{fmt(i['p90'], 1):>8}{fmt(c['p50'], 1):>16}{fmt(c['p90'], 1):>8}"
                f"{i['n']:>4}"
            )
        split = lease["targets"]["docker-cold"]
        if split.get("started", {}).get("n"):
            lines.append(
                f"  docker-cold, ms from `initialize` sent: container created {fmt(split['created']['p50'], 0)} "
                f"(p90 {fmt(split['created']['p90'], 0)}), started {fmt(split['started']['p50'], 0)} "
                f"(p90 {fmt(split['started']['p90'], 0)}); the rest is the demo's start-up and the attach stream"
            )
        rest = lease["wait_for_rest_ms"]
        lines.append(
            f"  waits for every pool to be at rest before a measurement (not measured): p50 {fmt(rest['p50'], 0)} ms, "
            f"max {fmt(rest['max'], 0)} ms"
        )
        lines.append(f"  (load average {' '.join(lease['loadavg'])} after the part)")
    if over := parts.get("overhead"):
        lines.append("")
        lines.append(
            "tools/call echo, 2025-11-25 sessions; p50 and calls/s: median of the rounds; p99 and CPU: over all "
            "the rounds' calls"
        )
        header = (
            f"{'target':<16}{'c':>3}{'ok':>7}{'wrong':>6}{'err':>5}{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>9}"
            f"{'(min-max)':>12}{'gw CPU':>8}{'be CPU':>8}{'proxy':>8}{'other':>7}"
        )
        lines.append(header)
        lines.append(f"{'':<64}{'s/1000':>8}{'s/1000':>8}{'s/1000':>8}{'CPU %':>7}")
        lines.append("-" * len(header))
        for r in over["rows"]:
            spread = f"{r['calls_per_s_min']:.0f}-{r['calls_per_s_max']:.0f}"
            lines.append(
                f"{r['target']:<16}{r['concurrency']:>3}{r['ok']:>7}{r['wrong']:>6}{r['errors']:>5}"
                f"{fmt(r['p50_ms']):>8}{fmt(r['p99_ms']):>8}{r['calls_per_s']:>9.0f}{spread:>12}"
                f"{fmt(r['gateway_cpu_s_per_1000'], 3):>8}{fmt(r['backend_cpu_s_per_1000'], 3):>8}"
                f"{fmt(r['proxy_cpu_s_per_1000'], 3):>8}{fmt(r['other_cpu_pct'], 0):>7}"
            )
            lines.extend(f"  problem: {p}" for p in r["problems"][:3])
        lines.append(f"  (load average {' '.join(over['loadavg'])} after the part)")
    lines.append("")
    lines.extend(f"note: {n}" for n in document["notes"])
    left = document["containers_left"]
    lines.append(f"containers of project {document['project']} left: {len(left)}" + (f" {left}" if left else ""))
    return "\n".join(lines)


# --- entry point ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[Options, bool, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--rounds", type=int, default=15, help="rounds of the cold and lease parts")
    parser.add_argument("--overhead-rounds", type=int, default=3, help="rounds of the overhead part's schedule")
    parser.add_argument("--calls", type=int, default=800, help="measured calls per overhead phase at c=16")
    parser.add_argument("--calls-c1", type=int, default=400, help="measured calls per overhead phase at c=1")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up calls before each overhead phase")
    parser.add_argument("--pool-min", type=int, default=2, help="pool.min of the warm stdio entries")
    parser.add_argument("--image", default=None, help="demo image (default: docker/build-images.sh's src- tag)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the gateway and the local demo")
    parser.add_argument("--start-timeout", type=float, default=60.0, help="timeouts.startup, and a cold start's cap")
    parser.add_argument("--call-timeout", type=float, default=10.0, help="timeout of one overhead call")
    parser.add_argument("--phase-seconds", type=float, default=30.0, help="time cap of one overhead phase")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="rounds and phases left after this long")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--save", type=Path, default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}")
    if not 1 <= args.rounds <= 1000 or not 1 <= args.overhead_rounds <= 100:
        parser.error("--rounds must be 1-1000 and --overhead-rounds 1-100")
    if not 1 <= args.pool_min <= 8:
        parser.error("--pool-min must be 1-8")
    options = Options(
        parts,
        args.rounds,
        args.overhead_rounds,
        max(1, args.calls),
        max(1, args.calls_c1),
        max(0, args.warmup),
        args.pool_min,
        args.image,
        args.python,
        args.start_timeout,
        args.call_timeout,
        args.phase_seconds,
        args.max_seconds,
    )
    return options, args.json, args.save


async def main_async(options: Options, as_json: bool, save: Path | None) -> int:
    project = f"b{os.getpid()}"
    # The gateways label their containers with the project; they and the local demo import this tree's code.
    os.environ["MCPFLEET_PROJECT"] = project
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    document: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "source": await anyio.to_thread.run_sync(source_state),
        "project": project,
        "options": asdict(options),
        "parts": {},
    }
    failure: str | None = None
    with workdir() as tmp:
        bench = Bench(options, tmp, project)
        try:
            document["engine"] = (await docker("version", "--format", "{{.Server.Version}}")).strip()
            await bench.prepare_image()
            for part in options.parts:
                log(f"part {part}")
                document["parts"][part] = await getattr(bench, part)() | {"loadavg": loadavg()}
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            log(f"run failed: {failure}")
            for child in bench.children:
                log(f"last lines of {child.name}'s log:\n{child.tail()}")
        finally:
            document["containers_left"] = await bench.cleanup()
    document["machine"]["loadavg_at_end"] = loadavg()
    document["notes"] = bench.notes
    document["total_seconds"] = round(time.monotonic() - bench.started, 1)
    document["failure"] = failure
    if save is not None:
        await anyio.Path(save).write_text(json.dumps(document, indent=2, default=str))
    if as_json:
        print(json.dumps(document, indent=2, default=str))
    else:
        print(render(document))
        print(f"total {document['total_seconds']} s" + (f"; FAILED: {failure}" if failure else ""))
    return 1 if failure or document["containers_left"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_interruptibly(main_async, *parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
