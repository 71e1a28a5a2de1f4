"""Kubernetes benchmark: the gateway serving `kubernetes` entries against the test suite's emulated cluster.

Run from the repository root with the project's virtualenv (no cluster and no Docker needed):

    .venv/bin/python bench/kubernetes.py            # the three parts, tables on stdout (about 4 minutes)
    .venv/bin/python bench/kubernetes.py --quick    # fewer rounds (about 1.5 minutes)
    .venv/bin/python bench/kubernetes.py --parts slice,cold --slice-rounds 30
    .venv/bin/python bench/kubernetes.py --json     # the same as JSON on stdout (progress goes to stderr)

There is no real cluster here. The bench uses the test suite's support modules: the Kubernetes API emulator
(`tests/kube/kube_emulator.py`, served over real HTTP on 127.0.0.1) and the harness that plays the Deployment
and EndpointSlice controllers and the kubelet (`tests/kube/kube_cluster.py`), whose pods are local demo server
processes (`python -m mcpfleet.demo http`) on their own loopback addresses 127.0.0.N. To import them it puts
`tests/kube` and `tests` on `sys.path`. The gateways are real `python -m mcpfleet serve` subprocesses on
127.0.0.1 that reach the emulator through a kubeconfig (`KUBECONFIG`, `MCPFLEET_PROJECT`), exactly as in
`tests/kube/test_gateway_kubernetes.py`. The emulator and the harness run in this process, on its event loop.

Three parts (`--parts slice,cold,memory`):

- `slice`: from an EndpointSlice change to routing by it. One gateway, one entry (`replicas: 1`). Each round
  scales its Deployment 1 -> 2 through the emulator's Python API. The emulator's store is hooked (`_emit`), so
  the bench knows the instant the harness writes the EndpointSlice that lists the new pod's endpoint ready. From
  that instant it polls `/servers` every `--poll-ms` until the entry lists the new replica as `ok`, and opens new
  sessions (`initialize`, `notifications/initialized`, `tools/call whoami`) one after the other until one is
  answered by the new pod. The gateway's own log line "replicas joined" (millisecond timestamps, the same
  clock) gives the moment the balancer took the set. Then the round scales 2 -> 1: the harness deletes the
  newest pod gracefully, so its endpoint turns `terminating`; the bench times the same three things for the
  removal ("replicas ... left", `/servers` showing it `draining`, and the sessions opened after the slice write
  that still landed on it, which should be none once the gateway has the set).
- `cold`: cold start from zero to the first answer. An entry with `start: on_demand`. Each round the bench
  scales it to 0 (emulator API), waits until no pod process is left and `/servers` lists no serving replica,
  then times `initialize` on a new connection, then `notifications/initialized` and `tools/call whoami`. The
  breakdown comes from the hooked store (the scale written by the gateway, the pod created, its process
  started, the pod Ready, the EndpointSlice listing it) and from the gateway's log ("replicas joined").
- `memory`: gateway RSS (`VmRSS` from `/proc/<pid>/status`) with a kubernetes entry whose EndpointSlices list
  1,000 ready endpoints (10 slices x 100), against 1 endpoint; and with 500 kubernetes entries (one slice of 2
  endpoints each) against 1 entry. Here no harness runs (so no pod and no process): the slices are written
  through the emulator's Python API before the gateway starts, on made-up addresses 127.77.x.y:8080. Nothing
  connects to them: `health.active` is off (the default) and no request is sent to those entries. Each case is a
  fresh gateway; the bench times its start to `/readyz` and to `/servers` listing every replica, waits
  `--settle` seconds, and reads VmRSS. With 1,000 endpoints it also times one endpoint turning terminating.

Caveats: no real kube-proxy, kubelet, container runtime or network. Pods are local processes and the
"kubelet" probes readiness every `--probe-ms` (the pod spec's `periodSeconds` is ignored); times in pod
specs (preStop sleep, grace period) are scaled by `time_scale`. The API emulator answers at once, with no
watch-cache lag. Every wait is bounded, and `--max-seconds` bounds the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "tests" / "kube"))
sys.path.insert(0, str(HERE.parent / "src"))

from kube_cluster import Cluster, is_ready  # noqa: E402
from kube_emulator import KubeEmulator, running_kube  # noqa: E402

from gateway import (  # noqa: E402
    HANDSHAKE_VERSION,
    HOST,
    INITIALIZE,
    INITIALIZED,
    REPO,
    Child,
    RawConnection,
    answer_to,
    free_port,
    loadavg,
    log,
    machine,
    percentile,
    run_interruptibly,
    source_state,
    status_kib,
)
from mcpfleet.deploy.kubernetes import manifests  # noqa: E402

NS = "mcp"
MEM_NS = "mem"
DEMO = "mcpfleet/demo:dev"
PARTS = ("slice", "cold", "memory")
JSON_ACCEPT = {"accept": "application/json"}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
WHOAMI = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}'
LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def demo_image(container: dict[str, Any], ip: str) -> list[str]:
    """The demo image, as in tests/kube/test_gateway_kubernetes.py: `http --host <pod ip> --port 8080
    --replica {hostname}`, so `whoami` answers the pod name."""
    args = list(container.get("args") or ["http", "--host", "0.0.0.0", "--port", "8080", "--replica", "{hostname}"])
    return [sys.executable, "-m", "mcpfleet.demo", *[ip if a == "0.0.0.0" else a for a in args]]


# --- the hooked store --------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    address: str
    pod: str
    ready: bool
    serving: bool
    terminating: bool


@dataclass
class Event:
    at: float  # time.time() when the emulator stored it
    plural: str
    kind: str
    name: str
    labels: dict[str, str]
    replicas: int | None = None  # deployments: spec.replicas
    running: bool = False  # pods: the container's state is `running`
    ready: bool = False  # pods: Ready
    deleting: bool = False
    endpoints: list[Endpoint] = field(default_factory=list)  # endpointslices


class Recorder:
    """Every write to deployments, pods and endpointslices, timed as the emulator stores it (its `_emit`,
    wrapped on this instance). `wait(predicate)` resolves on the first later event that matches."""

    PLURALS = ("deployments", "pods", "endpointslices")

    def __init__(self, kube: KubeEmulator) -> None:
        self.events: list[Event] = []
        self._waiters: list[tuple[Callable[[Event], bool], anyio.Event, list[Event]]] = []
        original = kube._emit

        def emit(plural: str, kind: str, old: Any, new: Any) -> None:
            original(plural, kind, old, new)
            if plural in self.PLURALS:
                self._record(time.time(), plural, kind, new)

        kube._emit = emit  # type: ignore[method-assign]

    def _record(self, at: float, plural: str, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        event = Event(at, plural, kind, meta.get("name", ""), dict(meta.get("labels") or {}))
        event.deleting = bool(meta.get("deletionTimestamp")) or kind == "DELETED"
        if plural == "deployments":
            event.replicas = int((obj.get("spec") or {}).get("replicas") or 0)
        elif plural == "pods":
            statuses = (obj.get("status") or {}).get("containerStatuses") or [{}]
            event.running = "running" in (statuses[0].get("state") or {})
            event.ready = is_ready(obj)
        else:
            for item in obj.get("endpoints") or []:
                conditions = item.get("conditions") or {}
                event.endpoints.append(
                    Endpoint(
                        (item.get("addresses") or [""])[0],
                        (item.get("targetRef") or {}).get("name", ""),
                        bool(conditions.get("ready")),
                        bool(conditions.get("serving")),
                        bool(conditions.get("terminating")),
                    )
                )
        self.events.append(event)
        for predicate, done, found in list(self._waiters):
            if not found and predicate(event):
                found.append(event)
                done.set()

    async def wait(self, predicate: Callable[[Event], bool], within: float, what: str) -> Event:
        done, found = anyio.Event(), []
        waiter = (predicate, done, found)
        self._waiters.append(waiter)
        try:
            with anyio.fail_after(within):
                await done.wait()
        except TimeoutError:
            raise TimeoutError(f"{what}: not within {within:g} s") from None
        finally:
            self._waiters.remove(waiter)
        return found[0]

    def since(self, mark: int) -> list[Event]:
        return self.events[mark:]


# --- the gateway -------------------------------------------------------------------------------------------


class Gateway:
    """A `python -m mcpfleet serve` subprocess using the emulator's kubeconfig, in its own process group."""

    def __init__(self, name: str, registry: Path, kubeconfig: Path, project: str, workdir: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MCPFLEET_PROJECT": project}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        argv = [sys.executable, "-m", "mcpfleet", "serve", "--registry", str(registry), "--port", str(self.port)]
        argv += ["--host", HOST, "--no-watch"]
        log_path = workdir / f"{name}.log"
        self.spawned_at = time.time()
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
                env=env,
            )
        self.child = Child(name, popen, log_path)
        self.status = RawConnection(self.port)

    @property
    def pid(self) -> int:
        return self.child.pid

    def check_alive(self) -> None:
        if (code := self.child.popen.poll()) is not None:
            raise RuntimeError(f"the gateway exited with {code}:\n{self.child.tail()}")

    async def ready(self, within: float = 60.0) -> float:
        """Until `/readyz` answers 200; the time.time() it did."""
        with anyio.fail_after(within):
            while True:
                self.check_alive()
                with contextlib.suppress(OSError, anyio.EndOfStream, anyio.IncompleteRead, ValueError):
                    reply = await self.status.request("GET", "/readyz", {}, b"")
                    if reply.status == 200:
                        return time.time()
                    await self.status.reset()
                await anyio.sleep(0.05)

    async def servers(self) -> dict[str, dict[str, Any]]:
        with anyio.fail_after(30):
            reply = await self.status.request("GET", "/servers", JSON_ACCEPT, b"")
        if reply.status != 200:
            raise RuntimeError(f"/servers answered HTTP {reply.status}")
        return {s["id"]: s for s in json.loads(reply.body)["servers"]}

    def rss_kib(self) -> int | None:
        return status_kib(self.pid, "VmRSS")

    def log_lines(self) -> list[str]:
        return self.child.log_path.read_text(errors="replace").splitlines()

    def logged(self, pattern: str, after: float) -> float | None:
        """The time of the first log line at or after `after` (less 5 ms: the log's resolution is 1 ms) matching."""
        found = re.compile(pattern)
        for line in self.log_lines():
            stamp = LOG_STAMP.match(line)
            if stamp and found.search(line):
                at = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if at >= after - 0.005:
                    return at
        return None

    async def stop(self) -> None:
        await self.status.aclose()
        await anyio.to_thread.run_sync(self.child.stop)


@contextlib.asynccontextmanager
async def gateway(name: str, registry: Path, kubeconfig: Path, project: str, workdir: Path) -> AsyncIterator[Gateway]:
    started = Gateway(name, registry, kubeconfig, project, workdir)
    try:
        yield started
    except BaseException:
        log(f"--- {name} log (tail) ---\n{started.child.tail(30)}")
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await started.stop()


def replica_states(servers: dict[str, dict[str, Any]], server_id: str) -> dict[str, str]:
    """url -> health (ok, draining, ejected) of the entry's replicas as /servers lists them."""
    return {r["url"]: r["health"] for r in servers.get(server_id, {}).get("replicas") or []}


async def poll_until(
    gw: Gateway, check: Callable[[dict[str, dict[str, Any]]], bool], within: float, every: float
) -> tuple[float, float, int]:
    """Poll /servers until `check` holds: (time.time() the matching answer arrived, when that request was
    sent, polls made)."""
    polls = 0
    with anyio.fail_after(within):
        while True:
            sent = time.time()
            servers = await gw.servers()
            polls += 1
            if check(servers):
                return time.time(), sent, polls
            await anyio.sleep(every)


async def whoami_session(port: int, path: str) -> tuple[str, float, float]:
    """A new connection and session: initialize, notifications/initialized, tools/call whoami. (the pod
    name, time.time() sent, time.time() the whoami answer arrived)."""
    connection = RawConnection(port)
    sent = time.time()
    try:
        reply = await connection.request("POST", path, MCP_HEADERS, INITIALIZE)
        answer_to(reply, 0)
        headers = {**MCP_HEADERS, "mcp-session-id": reply.headers["mcp-session-id"]}
        headers["mcp-protocol-version"] = HANDSHAKE_VERSION
        notified = await connection.request("POST", path, headers, INITIALIZED)
        if notified.status != 202:
            raise RuntimeError(f"notifications/initialized answered HTTP {notified.status}")
        result = answer_to(await connection.request("POST", path, headers, WHOAMI), 1)
        answered = time.time()
        replica = json.loads(result["content"][0]["text"])["replica"]
        with contextlib.suppress(Exception), anyio.move_on_after(5):
            await connection.request("DELETE", path, headers, b"")
        return str(replica), sent, answered
    finally:
        await connection.aclose()


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    """p50, p90 (nearest rank), min and max of millisecond values, and n (values missing are left out)."""
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return {"n": 0, "p50": None, "p90": None, "min": None, "max": None}
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 0.5),
        "p90": percentile(ordered, 0.9),
        "min": ordered[0],
        "max": ordered[-1],
    }


# --- options -----------------------------------------------------------------------------------------------


@dataclass
class Options:
    parts: tuple[str, ...] = PARTS
    slice_rounds: int = 20
    cold_rounds: int = 10
    poll_ms: float = 5.0
    probe_ms: float = 20.0
    endpoints: int = 1000
    per_slice: int = 100
    servers: int = 500
    settle: float = 5.0
    max_seconds: float = 600.0


# --- part 1: an EndpointSlice change to routing -------------------------------------------------------------


async def slice_part(options: Options, kube: KubeEmulator, cluster: Cluster, rec: Recorder, workdir: Path) -> dict:
    project = "kbs"
    deployment = manifests.object_name(project, "demo")
    registry = workdir / "slice.yaml"
    registry.write_text(
        "servers:\n"
        f"  demo: {{type: k8s, image: {DEMO}, port: 8080, replicas: 1, namespace: {NS}, timeouts: {{drain: 1}}}}\n"
    )
    kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig", namespace=NS)
    every = options.poll_ms / 1000
    rounds: list[dict[str, Any]] = []
    async with gateway("gateway-slice", registry, kubeconfig, project, workdir) as gw:
        await gw.ready()
        await cluster.wait_for(lambda: len(cluster.processes()) == 1, 60, "the first pod")
        await poll_until(gw, lambda s: list(replica_states(s, "demo").values()) == ["ok"], 60, 0.05)
        mine = f"{manifests.SERVER}=demo"
        for number in range(options.slice_rounds):
            gw.check_alive()
            before = {p["metadata"]["name"] for p in cluster.pods(NS, mine)}
            result: dict[str, Any] = {"round": number + 1}

            # --- 1 -> 2: a new ready endpoint -----------------------------------------------------------
            scaled = time.time()
            kube.patch("deployments", NS, deployment, {"spec": {"replicas": 2}})

            def new_ready(event: Event, before: set[str] = before) -> bool:
                return event.plural == "endpointslices" and any(
                    e.ready and e.pod and e.pod not in before for e in event.endpoints
                )

            written = await rec.wait(new_ready, 60, "the slice with the new pod ready")
            new = next(e for e in written.endpoints if e.ready and e.pod not in before)
            url = f"http://{new.address}:8080"
            result["added"] = await measure_change(
                gw,
                written.at,
                lambda s, url=url: replica_states(s, "demo").get(url) == "ok",
                rf"'demo': replicas joined \[[^\]]*{re.escape(url)}",
                new.pod,
                want_pod=True,
                every=every,
            )
            result["added"]["scale_to_slice_ms"] = ms(written.at - scaled)

            # --- 2 -> 1: that endpoint turns terminating --------------------------------------------------
            kube.patch("deployments", NS, deployment, {"spec": {"replicas": 1}})

            def terminating(event: Event) -> bool:
                return event.plural == "endpointslices" and any(e.terminating for e in event.endpoints)

            written = await rec.wait(terminating, 60, "the slice with a terminating endpoint")
            victim = next(e for e in written.endpoints if e.terminating)
            url = f"http://{victim.address}:8080"
            result["removed"] = await measure_change(
                gw,
                written.at,
                lambda s, url=url: replica_states(s, "demo").get(url) in (None, "draining"),
                rf"'demo': replicas joined .*, left \[[^\]]*{re.escape(url)}",
                victim.pod,
                want_pod=False,
                every=every,
            )
            result["removed"]["victim_was_new_pod"] = victim.pod == new.pod
            # at rest again: one pod process, and /servers lists it only (the drain, 1 s, ended)
            await cluster.wait_for(lambda: len(cluster.processes()) == 1, 60, "one pod process")
            await poll_until(gw, lambda s: list(replica_states(s, "demo").values()) == ["ok"], 60, 0.1)
            rounds.append(result)
            added, removed = result["added"], result["removed"]
            log(
                f"slice round {number + 1}: added: gateway log {added['log_ms']} ms, /servers {added['servers_ms']}"
                f" ms, new session on it {added['routed_ms']} ms; removed: log {removed['log_ms']} ms, /servers"
                f" {removed['servers_ms']} ms, sessions still sent there {removed['sessions_to_pod']}"
            )
    # its pods go: the other parts start from no pod process
    kube.patch("deployments", NS, deployment, {"spec": {"replicas": 0}})
    await cluster.wait_for(lambda: not cluster.processes(), 60, "no pod process")
    return {"rounds": rounds, "summary": slice_summary(rounds)}


async def measure_change(
    gw: Gateway,
    written_at: float,
    listed: Callable[[dict[str, dict[str, Any]]], bool],
    log_pattern: str,
    pod: str,
    *,
    want_pod: bool,
    every: float,
) -> dict[str, Any]:
    """After a slice write at `written_at`: /servers polled until `listed`, and new sessions one after the other
    (added: until one lands on `pod`, at most 40; removed: 8, counting those that still land on `pod`)."""
    found: dict[str, Any] = {}

    async def poll() -> None:
        answered, sent, polls = await poll_until(gw, listed, 30, every)
        found["servers_ms"] = ms(answered - written_at)
        found["servers_sent_ms"] = ms(sent - written_at)  # the matching poll was sent then: a lower bound
        found["polls"] = polls

    async def sessions() -> None:
        path = "/demo/mcp"
        landed = []
        tries = 40 if want_pod else 8
        for _ in range(tries):
            replica, sent, answered = await whoami_session(gw.port, path)
            landed.append((replica, sent, answered))
            if want_pod and replica == pod:
                found["routed_ms"] = ms(answered - written_at)
                found["routed_sent_ms"] = ms(sent - written_at)
                break
        found["sessions"] = len(landed)
        if not want_pod:
            there = [(s, a) for r, s, a in landed if r == pod]
            found["sessions_to_pod"] = len(there)
            found["last_to_pod_sent_ms"] = ms(there[-1][0] - written_at) if there else None
        elif "routed_ms" not in found:
            found["routed_ms"] = None

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            tg.start_soon(sessions)
    await anyio.sleep(0.05)  # the log line is written when the set is applied: long before this
    at = gw.logged(log_pattern, written_at)
    found["log_ms"] = ms(at - written_at) if at is not None else None
    return found


def slice_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def column(change: str, key: str) -> dict[str, Any]:
        return stats([r[change].get(key) for r in rounds])

    return {
        "added": {
            key: column("added", key)
            for key in ("scale_to_slice_ms", "log_ms", "servers_sent_ms", "servers_ms", "routed_ms", "sessions")
        },
        "removed": {key: column("removed", key) for key in ("log_ms", "servers_sent_ms", "servers_ms")},
        "removed_sessions_to_pod": sum(r["removed"]["sessions_to_pod"] for r in rounds),
        "removed_sessions": sum(r["removed"]["sessions"] for r in rounds),
        "removed_victim_was_new_pod": sum(bool(r["removed"]["victim_was_new_pod"]) for r in rounds),
    }


# --- part 2: cold start ---------------------------------------------------------------------------------


async def cold_part(options: Options, kube: KubeEmulator, cluster: Cluster, rec: Recorder, workdir: Path) -> dict:
    project = "kbc"
    deployment = manifests.object_name(project, "cold")
    registry = workdir / "cold.yaml"
    registry.write_text(
        "servers:\n"
        f"  cold: {{type: k8s, image: {DEMO}, port: 8080, namespace: {NS}, start: on_demand,"
        " timeouts: {drain: 1, startup: 30}}\n"
    )
    kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig", namespace=NS)
    mine = f"{manifests.SERVER}=cold"
    rounds: list[dict[str, Any]] = []
    async with gateway("gateway-cold", registry, kubeconfig, project, workdir) as gw:
        await gw.ready()
        await cluster.wait_for(lambda: kube.find("deployments", NS, deployment) is not None, 60, "the Deployment")
        for number in range(options.cold_rounds):
            gw.check_alive()
            kube.patch("deployments", NS, deployment, {"spec": {"replicas": 0}})
            await cluster.wait_for(lambda: not cluster.pods(NS, mine), 60, "no pod")
            await cluster.wait_for(
                lambda: not [p for p in cluster.processes() if p.startswith(deployment)], 60, "no pod process"
            )
            await poll_until(gw, lambda s: "ok" not in replica_states(s, "cold").values(), 60, 0.1)
            await anyio.sleep(1.0)  # quiet: the drain (1 s) ends, the harness and the gateway settle
            mark = len(rec.events)
            connection = RawConnection(gw.port)
            try:
                with anyio.fail_after(60):
                    sent = time.time()
                    reply = await connection.request("POST", "/cold/mcp", MCP_HEADERS, INITIALIZE)
                    initialized = time.time()
                    answer_to(reply, 0)
                    headers = {**MCP_HEADERS, "mcp-session-id": reply.headers["mcp-session-id"]}
                    headers["mcp-protocol-version"] = HANDSHAKE_VERSION
                    notified = await connection.request("POST", "/cold/mcp", headers, INITIALIZED)
                    if notified.status != 202:
                        raise RuntimeError(f"notifications/initialized answered HTTP {notified.status}")
                    result = answer_to(await connection.request("POST", "/cold/mcp", headers, WHOAMI), 1)
                    called = time.time()
                    pod = json.loads(result["content"][0]["text"])["replica"]
                    with contextlib.suppress(Exception), anyio.move_on_after(5):
                        await connection.request("DELETE", "/cold/mcp", headers, b"")
            finally:
                await connection.aclose()
            await anyio.sleep(0.05)
            events = rec.since(mark)

            def first(predicate: Callable[[Event], bool], events: list[Event] = events) -> float | None:
                return next((e.at for e in events if predicate(e)), None)

            def of_pod(e: Event, pod: str = pod) -> bool:
                return e.plural == "pods" and e.name == pod

            def lists_pod(e: Event, pod: str = pod) -> bool:
                return e.plural == "endpointslices" and any(x.pod == pod and x.ready for x in e.endpoints)

            steps = {
                "scale": first(lambda e: e.plural == "deployments" and e.name == deployment and bool(e.replicas)),
                "pod_created": first(
                    lambda e: e.plural == "pods" and e.kind == "ADDED" and e.name.startswith(deployment + "-")
                ),
                "process_started": first(lambda e: of_pod(e) and e.running),
                "pod_ready": first(lambda e: of_pod(e) and e.ready),
                "slice_ready": first(lists_pod),
                "gateway_joined": gw.logged(r"'cold': replicas joined \[", sent),
                "initialize_answered": initialized,
                "whoami_answered": called,
            }
            row = {"round": number + 1, "pod": pod, **{k: ms(v - sent) if v else None for k, v in steps.items()}}
            rounds.append(row)
            log(
                f"cold round {number + 1}: initialize {row['initialize_answered']} ms (scale {row['scale']}, process"
                f" {row['process_started']}, ready {row['pod_ready']}, slice {row['slice_ready']}, gateway"
                f" {row['gateway_joined']})"
            )
    keys = [k for k in rounds[0] if k not in ("round", "pod")] if rounds else []
    return {"rounds": rounds, "summary": {k: stats([r[k] for r in rounds]) for k in keys}}


# --- part 3: memory ----------------------------------------------------------------------------------------


def made_up_slices(service: str, count: int, per_slice: int, base: int) -> list[dict[str, Any]]:
    """EndpointSlices for `service` listing `count` ready endpoints on 127.77.x.y (nothing listens there)."""
    slices = []
    for start in range(0, count, per_slice):
        endpoints = []
        for n in range(start, min(count, start + per_slice)):
            k = base + n
            address = f"127.77.{(k // 250) % 250}.{k % 250 + 2}"
            endpoints.append(
                {
                    "addresses": [address],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "targetRef": {"kind": "Pod", "namespace": MEM_NS, "name": f"{service}-fake-{n}"},
                    "nodeName": "node-1",
                }
            )
        slices.append(
            {
                "metadata": {
                    "name": f"{service}-{start // per_slice}",
                    "labels": {"kubernetes.io/service-name": service},
                },
                "addressType": "IPv4",
                "ports": [{"name": manifests.PORT_NAME, "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }
        )
    return slices


async def memory_case(
    options: Options, kube: KubeEmulator, workdir: Path, label: str, servers: int, endpoints: int
) -> dict[str, Any]:
    project = f"m{label}"
    ids = [f"s{i}" for i in range(servers)]
    lines = ["servers:"]
    for server_id in ids:
        lines.append(f"  {server_id}: {{type: k8s, image: {DEMO}, port: 8080, namespace: {MEM_NS}, start: on_demand}}")
    registry = workdir / f"memory-{label}.yaml"
    registry.write_text("\n".join(lines) + "\n")
    base = 0
    for server_id in ids:
        for item in made_up_slices(manifests.object_name(project, server_id), endpoints, options.per_slice, base):
            kube.create("endpointslices", item, MEM_NS)
        base += endpoints
    kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig-mem", namespace=MEM_NS)
    calls_before, watches_before = len(kube.calls), kube.open_watches
    total = servers * endpoints
    result: dict[str, Any] = {"case": label, "servers": servers, "endpoints_each": endpoints, "replicas": total}
    async with gateway(f"gateway-memory-{label}", registry, kubeconfig, project, workdir) as gw:
        ready = await gw.ready(120)
        result["start_to_readyz_s"] = round(ready - gw.spawned_at, 2)
        result["rss_at_readyz_mib"] = round((gw.rss_kib() or 0) / 1024, 1)
        listed_count = 0

        def all_listed(found: dict[str, dict[str, Any]]) -> bool:
            nonlocal listed_count
            listed_count = sum(
                sum(1 for r in found.get(i, {}).get("replicas") or [] if r["health"] == "ok") for i in ids
            )
            return listed_count == total

        within = min(90.0, 20.0 + servers * 0.08)
        try:
            answered, _, _ = await poll_until(gw, all_listed, within, 0.1 if servers < 50 else 0.5)
            result["start_to_all_listed_s"] = round(answered - gw.spawned_at, 2)
        except TimeoutError:
            result["start_to_all_listed_s"] = None
            result["listed_after_timeout"] = listed_count
            result["timeout_s"] = within
            log(f"memory {label}: only {listed_count} of {total} replicas listed after {within:g} s")
        await anyio.sleep(options.settle)
        samples = []
        for _ in range(3):
            samples.append(gw.rss_kib() or 0)
            await anyio.sleep(0.5)
        result["rss_mib"] = round(max(samples) / 1024, 1)
        result["hwm_mib"] = round((status_kib(gw.pid, "VmHWM") or 0) / 1024, 1)
        timed = time.time()
        found = await gw.servers()
        result["servers_json_ms"] = ms(time.time() - timed)
        result["servers_json_kib"] = round(len(json.dumps(found)) / 1024, 1)
        api = kube.calls[calls_before:]
        result["api_calls"] = len(api)
        result["open_watches"] = kube.open_watches - watches_before  # the earlier gateways' may linger
        if endpoints >= options.per_slice and servers == 1 and result["start_to_all_listed_s"] is not None:
            # one endpoint of the first slice turns terminating: the time until the gateway applies the set (its
            # log line, read every 5 ms: polling /servers, ~20 ms an answer here, would slow the gateway down)
            name = f"{manifests.object_name(project, ids[0])}-0"
            current = kube.get("endpointslices", MEM_NS, name)
            current["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
            url = f"http://{current['endpoints'][0]['addresses'][0]}:8080"
            pattern = rf"replicas joined none, left \[[^\]]*{re.escape(url)}"
            sent = time.time()
            kube.replace("endpointslices", current)
            at = None
            with anyio.fail_after(30):
                while at is None:
                    await anyio.sleep(0.005)
                    at = gw.logged(pattern, sent)
            result["one_terminating_to_log_ms"] = ms(at - sent)
            result["one_terminating_draining"] = replica_states(await gw.servers(), ids[0]).get(url) == "draining"
        if servers > 1:
            # one endpoint turns terminating in 10 entries spread over the registry: which gateways' watches see it
            probed = ids[:: max(1, servers // 10)][:10]
            sent = time.time()
            patterns = {}
            for server_id in probed:
                current = kube.get("endpointslices", MEM_NS, f"{manifests.object_name(project, server_id)}-0")
                current["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
                url = f"http://{current['endpoints'][0]['addresses'][0]}:8080"
                patterns[server_id] = rf"'{server_id}': replicas joined none, left \[[^\]]*{re.escape(url)}"
                kube.replace("endpointslices", current)
            for _ in range(200):  # 10 s
                if all(gw.logged(pattern, sent) is not None for pattern in patterns.values()):
                    break
                await anyio.sleep(0.05)
            seen = {i: gw.logged(pattern, sent) for i, pattern in patterns.items()}
            result["change_probe"] = {i: ms(at - sent) if at is not None else None for i, at in seen.items()}
        errors = [line for line in gw.log_lines() if " ERROR " in line or " WARNING " in line]
        result["log_errors"] = len(errors)
        result["log_error_samples"] = sorted({re.sub(r"^\S+ \S+ ", "", line)[:400] for line in errors})[:3]
        kinds: dict[str, int] = {}
        for call in api:
            key = f"{call.verb} {call.resource}{'/' + call.subresource if call.subresource else ''}"
            kinds[key] = kinds.get(key, 0) + 1
        result["api_calls_by_kind"] = kinds
        log(
            f"memory {label}: RSS {result['rss_mib']} MiB, all {total} listed "
            f"{result['start_to_all_listed_s']} s after start, {result['api_calls']} API calls"
        )
    return result


async def memory_part(options: Options, workdir: Path) -> dict:
    cases = []
    async with running_kube() as kube:
        kube.create("namespaces", {"metadata": {"name": MEM_NS}})
        for label, servers, endpoints in (
            ("1x1", 1, 1),
            (f"1x{options.endpoints}", 1, options.endpoints),
            ("1x2", 1, 2),
            ("90x2", 90, 2),  # below kubernetes_asyncio's 100 pooled connections (one watch per entry)
            (f"{options.servers}x2", options.servers, 2),
        ):
            cases.append(await memory_case(options, kube, workdir, label, servers, endpoints))
    return {"cases": cases}


# --- the run -----------------------------------------------------------------------------------------------


async def run(options: Options) -> dict[str, Any]:
    document: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "source": source_state(),
        "options": options.__dict__,
    }
    started = time.monotonic()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="mcpfleet-kbench-") as name, anyio.fail_after(options.max_seconds):
        workdir = Path(name)
        if "slice" in options.parts or "cold" in options.parts:
            async with running_kube() as kube:
                rec = Recorder(kube)
                async with Cluster(kube, {DEMO: demo_image}, probe_period=options.probe_ms / 1000) as cluster:
                    kube.create("namespaces", {"metadata": {"name": NS}})
                    if "slice" in options.parts:
                        log("part slice")
                        document["slice"] = await slice_part(options, kube, cluster, rec, workdir)
                    if "cold" in options.parts:
                        log("part cold")
                        document["cold"] = await cold_part(options, kube, cluster, rec, workdir)
                    document["harness_failures"] = [repr(f) for f in cluster.failures]
                document["emulator_failures"] = [repr(f) for f in kube.failures]
        if "memory" in options.parts:
            log("part memory")
            document["memory"] = await memory_part(options, workdir)
    document["total_s"] = round(time.monotonic() - started, 1)
    document["loadavg_at_end"] = loadavg()
    return document


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def stat_line(label: str, s: dict[str, Any]) -> str:
    return f"{label:<58} {fmt(s['p50']):>8} {fmt(s['p90']):>8} {fmt(s['min']):>8} {fmt(s['max']):>8} {s['n']:>4}"


def render(document: dict[str, Any]) -> str:
    info, src = document["machine"], document["source"]
    out = [
        f"mcpfleet Kubernetes benchmark, {document['started']}, {info['nproc']} cores ({info['cpu_model']}),"
        f" Python {info['python']}, load average {' '.join(info['loadavg_at_start'])} at start,"
        f" {' '.join(document['loadavg_at_end'])} at end",
        f"source: commit {src.get('commit')}, {src.get('src_modified_files')} modified file(s) under src/",
        "API emulator + harness (tests/kube): pods are local demo processes on 127.0.0.N, readiness probed every"
        f" {document['options']['probe_ms']:g} ms; /servers polled every {document['options']['poll_ms']:g} ms",
    ]
    header = f"{'ms after the EndpointSlice write':<58} {'p50':>8} {'p90':>8} {'min':>8} {'max':>8} {'n':>4}"
    if "slice" in document:
        s = document["slice"]["summary"]
        a, r = s["added"], s["removed"]
        out += [
            "",
            "1. EndpointSlice change -> routing (scale 1 -> 2, then 2 -> 1)",
            header,
            "-" * len(header),
            stat_line("added: scale written -> slice lists the new pod ready", a["scale_to_slice_ms"]),
            stat_line("added: gateway log 'replicas joined' (balancer has it)", a["log_ms"]),
            stat_line("added: /servers lists it ok (answer; poll sent at next row)", a["servers_ms"]),
            stat_line("added:   (that /servers poll was sent at)", a["servers_sent_ms"]),
            stat_line("added: a new session answered by the new pod", a["routed_ms"]),
            stat_line("added:   sessions opened until one reached it (count)", a["sessions"]),
            stat_line("removed: gateway log '... left' (no new sessions there)", r["log_ms"]),
            stat_line("removed: /servers shows it draining", r["servers_ms"]),
            stat_line("removed:   (that /servers poll was sent at)", r["servers_sent_ms"]),
            f"removed: new sessions opened after the write that still reached the terminating pod:"
            f" {s['removed_sessions_to_pod']} of {s['removed_sessions']}"
            f" (the terminating pod was the newest in {s['removed_victim_was_new_pod']} rounds)",
        ]
    if "cold" in document:
        s = document["cold"]["summary"]
        head = f"{'ms after initialize sent':<58} {'p50':>8} {'p90':>8} {'min':>8} {'max':>8} {'n':>4}"
        names = {
            "scale": "gateway scaled the Deployment (written)",
            "pod_created": "harness created the pod",
            "process_started": "pod process spawned (container running)",
            "pod_ready": "pod Ready (readiness probe passed)",
            "slice_ready": "EndpointSlice lists it ready",
            "gateway_joined": "gateway log 'replicas joined'",
            "initialize_answered": "initialize answered",
            "whoami_answered": "first tools/call answered",
        }
        out += ["", "2. Cold start from zero (start: on_demand)", head, "-" * len(head)]
        out += [stat_line(label, s[key]) for key, label in names.items() if key in s]
    if "memory" in document:
        out += [
            "",
            "3. Gateway memory, idle (made-up endpoints on 127.77.x.y, nothing connects to them)",
            f"{'case':<10} {'replicas':>8} {'RSS MiB':>8} {'HWM MiB':>8} {'readyz s':>9} {'listed s':>9}"
            f" {'API calls':>9} {'watches':>8} {'/servers ms':>11} {'KiB':>7}",
        ]
        for c in document["memory"]["cases"]:
            listed = fmt(c["start_to_all_listed_s"])
            if c["start_to_all_listed_s"] is None:
                listed = f"{c['listed_after_timeout']}!"
            out.append(
                f"{c['case']:<10} {c['replicas']:>8} {fmt(c['rss_mib']):>8} {fmt(c['hwm_mib']):>8}"
                f" {fmt(c['start_to_readyz_s']):>9} {listed:>9} {c['api_calls']:>9} {c['open_watches']:>8}"
                f" {fmt(c['servers_json_ms']):>11} {fmt(c['servers_json_kib']):>7}"
            )
        for c in document["memory"]["cases"]:
            if "one_terminating_to_log_ms" in c:
                out.append(
                    f"{c['case']}: one endpoint turned terminating -> gateway log 'left' after"
                    f" {fmt(c['one_terminating_to_log_ms'])} ms (then listed draining: {c['one_terminating_draining']})"
                )
            if c["start_to_all_listed_s"] is None:
                out.append(
                    f"{c['case']}: NOT all listed: {c['listed_after_timeout']} of {c['replicas']} after"
                    f" {c['timeout_s']:g} s; {c['log_errors']} warning/error lines in the gateway log, e.g.:"
                )
                out += [f"    {line}" for line in c["log_error_samples"]]
        by = {c["case"]: c for c in document["memory"]["cases"]}
        deltas = []
        for case in by.values():
            base = by.get("1x1") if case["servers"] == 1 and case["endpoints_each"] != 2 else by.get("1x2")
            if base is not None and base is not case:
                per = (case["rss_mib"] - base["rss_mib"]) * 1024 / max(1, case["replicas"] - base["replicas"])
                deltas.append(f"{case['case']} - {base['case']} = {case['rss_mib'] - base['rss_mib']:+.1f} MiB")
                if case["servers"] > 1:
                    per = (case["rss_mib"] - base["rss_mib"]) * 1024 / (case["servers"] - 1)
                    deltas[-1] += f" ({per:.0f} KiB per added entry)"
                else:
                    deltas[-1] += f" ({per:.1f} KiB per added endpoint)"
        if deltas:
            out.append("RSS delta: " + "; ".join(deltas))
        for c in document["memory"]["cases"]:
            if "change_probe" in c:
                probe = c["change_probe"]
                seen = [v for v in probe.values() if v is not None]
                missed = [k for k, v in probe.items() if v is None]
                out.append(
                    f"{c['case']}: one endpoint turned terminating in {len(probe)} entries: the gateway applied"
                    f" {len(seen)} within 10 s (max {fmt(max(seen) if seen else None)} ms);"
                    f" not seen: {missed or 'none'}"
                )
                out.append(f"    API calls: {json.dumps(c['api_calls_by_kind'])}")
    failures = document.get("harness_failures", []) + document.get("emulator_failures", [])
    out += ["", f"harness/emulator failures: {len(failures)}; total {document['total_s']} s"]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> tuple[Options, bool, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: slice, cold, memory")
    parser.add_argument("--quick", action="store_true", help="5 slice rounds, 3 cold starts, 150 servers")
    parser.add_argument("--slice-rounds", type=int)
    parser.add_argument("--cold-rounds", type=int)
    parser.add_argument("--poll-ms", type=float, default=Options.poll_ms)
    parser.add_argument("--probe-ms", type=float, default=Options.probe_ms)
    parser.add_argument("--endpoints", type=int, default=Options.endpoints)
    parser.add_argument("--servers", type=int)
    parser.add_argument("--settle", type=float, default=Options.settle)
    parser.add_argument("--max-seconds", type=float, default=Options.max_seconds)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--save", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts: {sorted(unknown)}")
    quick = args.quick
    options = Options(
        parts=parts,
        slice_rounds=args.slice_rounds or (5 if quick else Options.slice_rounds),
        cold_rounds=args.cold_rounds or (3 if quick else Options.cold_rounds),
        poll_ms=args.poll_ms,
        probe_ms=args.probe_ms,
        endpoints=args.endpoints,
        servers=args.servers or (150 if quick else Options.servers),
        settle=2.0 if quick and args.settle == Options.settle else args.settle,
        max_seconds=args.max_seconds,
    )
    return options, args.json, args.save


async def main_async(options: Options, as_json: bool, save: Path | None) -> int:
    document = await run(options)
    if save is not None:
        save.write_text(json.dumps(document, indent=1))  # noqa: ASYNC240 - once, at the end
    print(json.dumps(document, indent=1) if as_json else render(document))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_interruptibly(main_async, *parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
