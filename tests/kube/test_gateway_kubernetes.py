"""The gateway and the CLI on Kubernetes, end to end with real MCP traffic, against the API emulator over real
HTTP while the harness plays the controllers and the kubelet (pods are local demo servers on 127.0.0.N).

The gateways are real `mcpfleet serve` processes reaching the emulator through a kubeconfig; the CLI is the
real `mcpfleet` command. Times in pod specs are scaled by the harness (`time_scale`), so a pod's 5 s preStop
sleep lasts a fraction of a second here."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx2
import pytest
from kube_cluster import Cluster
from kube_emulator import KubeEmulator
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcpfleet.deploy.kubernetes import manifests, rbac

from support import ACCEPT, INIT, free_port, until

pytestmark = pytest.mark.timeout(BOUND_S := 300)
KubeApi = Callable[..., AbstractAsyncContextManager[KubeEmulator]]
T = TypeVar("T")
BOUND = BOUND_S - 30.0  # seconds any one test may take on a busy machine (then its clean-up)
NS = "mcp"
DEMO = "mcpfleet/demo:dev"
KEYS = "k8s-test-key-1-of-at-least-32-bytes"  # the 32-byte minimum (docs/registry.md)


def demo_image(container: dict[str, Any], ip: str) -> list[str]:
    """The demo image: entrypoint `mcpfleet-demo`, default command `http --host 0.0.0.0 --port 8080 --replica
    {hostname}` (docker/demo.Dockerfile), its host set to the pod's own address; an adapter container
    (`command: [mcpfleet, adapter, ...]`) runs the adapter on that address."""
    command = list(container.get("command") or [])
    if command[:2] == ["mcpfleet", "adapter"]:
        argv = [sys.executable, "-m", "mcpfleet", *command[1:]]
        return [ip if a == "0.0.0.0" else a for a in argv]
    args = list(container.get("args") or ["http", "--host", "0.0.0.0", "--port", "8080", "--replica", "{hostname}"])
    return [sys.executable, "-m", "mcpfleet.demo", *[ip if a == "0.0.0.0" else a for a in args]]


IMAGES = {DEMO: demo_image}


def step(what: str) -> None:
    """Print where a long test is (shown when it fails)."""
    print(f"{time.strftime('%H:%M:%S')} {what}", flush=True)


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        with anyio.fail_after(BOUND):
            return await main()

    return anyio.run(bounded)


def registry_text(**entries: str) -> str:
    lines = ["servers:"]
    for server_id, body in entries.items():
        lines.append(f"  {server_id}: {body}")
    return "\n".join(lines) + "\n"


class Gateway:
    """A `mcpfleet serve` process using the emulator's kubeconfig."""

    def __init__(self, registry: Path, kubeconfig: Path, project: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by `gateways`
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MCPFLEET_SESSION_KEYS": KEYS}
        env["MCPFLEET_PROJECT"] = project
        env.pop("KUBERNETES_SERVICE_HOST", None)
        argv = [sys.executable, "-m", "mcpfleet", "serve", "--registry", str(registry), "--port", str(self.port)]
        self.process = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def mcp(self, server_id: str) -> str:
        return f"{self.url}/{server_id}/mcp"

    async def started(self) -> None:
        with anyio.fail_after(60):
            while True:
                assert self.process.poll() is None, self.output()
                try:
                    async with httpx2.AsyncClient(timeout=2) as http:
                        if (await http.get(f"{self.url}/readyz")).status_code == 200:
                            return
                except httpx2.TransportError:
                    pass
                await anyio.sleep(0.1)

    async def servers(self) -> dict[str, Any]:
        async with httpx2.AsyncClient(timeout=10) as http:
            found: dict[str, Any] = (await http.get(f"{self.url}/servers")).json()
            return found

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-6000:]

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode


@contextlib.asynccontextmanager
async def gateways(count: int, registry: Path, kubeconfig: Path, project: str) -> AsyncIterator[list[Gateway]]:
    """`count` gateways; stopped in a thread, since their shutdown may need the emulator on this loop."""
    started = [Gateway(registry, kubeconfig, project) for _ in range(count)]
    try:
        yield started
    except BaseException:
        for gateway in started:
            print(f"--- gateway {gateway.url} ---", gateway.output(), sep="\n")
        raise
    finally:
        with anyio.CancelScope(shield=True):
            for gateway in started:
                await anyio.to_thread.run_sync(gateway.stop)
                gateway.log.close()


@contextlib.asynccontextmanager
async def mcp_session(url: str) -> AsyncIterator[Any]:
    async with (
        httpx2.AsyncClient(timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client


async def whoami(client: Any) -> str:
    """The replica (pod) name the demo's `whoami` tool reports."""
    result = await client.call_tool("whoami", {})
    replica: str = json.loads(result.content[0].text)["replica"]
    return replica


async def one_call(url: str) -> str:
    async with mcp_session(url) as client:
        return await whoami(client)


def terminating(kube: KubeEmulator) -> list[str]:
    """The pods whose endpoints are serving but terminating (draining), when there are two of them."""
    found = [
        endpoint["targetRef"]["name"]
        for item in kube.list("endpointslices", NS, None)
        for endpoint in item.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("terminating") and (endpoint.get("conditions") or {}).get("serving")
    ]
    return found if len(found) == 2 else []


def deployment_of(kube: KubeEmulator, project: str, server_id: str) -> dict[str, Any] | None:
    return kube.find("deployments", NS, manifests.object_name(project, server_id))


def replicas_of(kube: KubeEmulator, project: str, server_id: str) -> int | None:
    found = deployment_of(kube, project, server_id)
    return None if found is None else int(found["spec"].get("replicas") or 0)


def cli(*args: str, kubeconfig: Path, registry: Path, project: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "MCPFLEET_PROJECT": project}
    argv = [sys.executable, "-m", "mcpfleet", *args, "--registry", str(registry), "--kubeconfig", str(kubeconfig)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


def follow_logs(kubeconfig: Path, registry: Path, project: str) -> tuple[int, str]:
    """`mcpfleet logs web --follow` until its first line, then Ctrl-C: (exit code, that line)."""
    env = {**os.environ, "NO_COLOR": "1", "MCPFLEET_PROJECT": project}
    argv = [sys.executable, "-m", "mcpfleet", "logs", "web", "--follow", "--registry", str(registry)]
    argv += ["--kubeconfig", str(kubeconfig)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=30), first
        finally:
            if process.poll() is None:
                process.kill()


async def acli(*args: str, kubeconfig: Path, registry: Path, project: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: cli(*args, kubeconfig=kubeconfig, registry=registry, project=project))


def objects_of(kube: KubeEmulator, project: str) -> list[str]:
    selector = f"{manifests.PROJECT}={project}"
    return sorted(
        f"{plural}/{o['metadata']['name']}"
        for plural in ("deployments", "services", "secrets", "pods")
        for o in kube.list(plural, NS, selector)
    )


# --- the whole story ----------------------------------------------------------------------------------------


def test_create_route_scale_drain_idle_cold_start_two_gateways_delete(kube_api: KubeApi, tmp_path: Path) -> None:
    """create → discover → route → scale 1 → 3 (balancing across the three) → 3 → 1 with a session on a removed
    pod draining → idle scale to zero → cold start → two gateways sharing keys (activity through one keeps the
    other from scaling down) → the entry removed: every object a gateway created is gone."""
    project = "story"
    registry = tmp_path / "registry.yaml"
    entry = (
        f"{{type: k8s, image: {DEMO}, port: 8080, replicas: 1, namespace: {NS}, idle_timeout: 4,"
        " env: {GREETING: hi}, secret_env: {TOKEN: s3cret}, timeouts: {startup: 60, drain: 5}}"
    )
    registry.write_text(registry_text(demo=entry))

    async def main() -> None:
        async with kube_api() as kube, Cluster(kube, IMAGES, time_scale=0.6) as cluster:
            kube.create("namespaces", {"metadata": {"name": NS}})
            kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
            async with gateways(2, registry, kubeconfig, project) as (first, second):
                await first.started()
                await second.started()
                step("create + discover + route")
                # create + discover + route
                await cluster.wait_for(lambda: replicas_of(kube, project, "demo") == 1, 60, "the Deployment")
                # The Secret is made before the Deployment and handed to it right after: wait for the hand-over.
                owners = await cluster.wait_for(
                    lambda: (
                        (kube.find("secrets", NS, manifests.secret_name(project, "demo")) or {})
                        .get("metadata", {})
                        .get("ownerReferences")
                    ),
                    60,
                    "the Secret owned by the Deployment",
                )
                assert owners[0]["kind"] == "Deployment"
                (pod,) = await cluster.wait_for(lambda: cluster.pods(NS, {manifests.SERVER: "demo"}), 60, "a pod")
                assert await one_call(first.mcp("demo")) == pod["metadata"]["name"]

                step("scale 1 -> 3 with the CLI")
                # scale 1 -> 3 with the CLI: new sessions spread over the three pods
                done = await acli("scale", "demo", "3", kubeconfig=kubeconfig, registry=registry, project=project)
                assert done.returncode == 0, done.stderr
                names = {p["metadata"]["name"] for p in cluster.pods(NS, {manifests.SERVER: "demo"})}
                assert len(names) == 3
                seen: set[str] = set()
                for _ in range(30):
                    seen.add(await one_call(first.mcp("demo")))
                    if seen == names:
                        break
                assert seen == names

                step("3 -> 1: a session")
                # 3 -> 1 through the Deployment: sessions on the pods it removes keep working while they drain
                async with contextlib.AsyncExitStack() as stack:
                    held: dict[str, Any] = {}
                    for _ in range(30):  # a session on each of the three pods
                        client = await stack.enter_async_context(mcp_session(first.mcp("demo")))
                        held.setdefault(await whoami(client), client)
                        if len(held) == 3:
                            break
                    assert set(held) == names
                    name = manifests.object_name(project, "demo")
                    kube.patch("deployments", NS, name, {"spec": {"replicas": 1}})
                    draining = await cluster.wait_for(lambda: terminating(kube), 60, "two terminating endpoints")
                    assert len(draining) == 2
                    for pod in draining:  # served by its terminating pod
                        assert await whoami(held[pod]) == pod
                    (survivor,) = names - set(draining)
                    for _ in range(6):  # new sessions go to the one that stays
                        assert await one_call(first.mcp("demo")) == survivor
                await cluster.wait_for(lambda: len(cluster.processes()) == 1, 60, "one pod process left")

                step("idle: no request")
                # idle: no request through either gateway for idle_timeout -> zero pods
                await cluster.wait_for(lambda: replicas_of(kube, project, "demo") == 0, 60, "scaled to zero")
                await cluster.wait_for(lambda: not cluster.processes(), 60, "no pod process")
                step("cold start through")
                # cold start through the second gateway
                cold = await one_call(second.mcp("demo"))
                assert cold in {p["metadata"]["name"] for p in cluster.pods(NS, {manifests.SERVER: "demo"})}
                assert replicas_of(kube, project, "demo") == 1

                step("two gateways share keys")
                # two gateways share keys: a session opened on one continues on the other
                async with httpx2.AsyncClient(timeout=30) as http:
                    headers = ACCEPT
                    init = INIT
                    answer = await http.post(first.mcp("demo"), json=init, headers=headers)
                    session = answer.headers["mcp-session-id"]
                    more = {**headers, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
                    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
                    assert (await http.post(second.mcp("demo"), json=note, headers=more)).status_code == 202
                    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami"}}
                    answer = await http.post(second.mcp("demo"), json=call, headers=more)
                    assert answer.status_code == 200 and cold in answer.text

                    step("activity through the first o")
                    # activity through the first only, for longer than idle_timeout: the second never scales down
                    until = time.monotonic() + 10
                    while time.monotonic() < until:
                        assert (await http.post(first.mcp("demo"), json=call, headers=more)).status_code == 200
                        assert replicas_of(kube, project, "demo") == 1
                        await anyio.sleep(0.5)
                status = await second.servers()
                (shown,) = [s for s in status["servers"] if s["id"] == "demo"]
                described = shown["deployment"]
                assert described["backend"] == "kubernetes" and described["namespace"] == NS
                serving = [r["url"] for r in shown["replicas"] if r["health"] != "draining"]
                assert serving == [f"http://{cluster.ip_of(cold)}:8080"]

                step("the entry leaves the registr")
                # the entry leaves the registry: both gateways reload and what a gateway created is deleted
                registry.write_text("servers: {}\n")
                await cluster.wait_for(lambda: not objects_of(kube, project), 90, "every object gone")
                # Every permission the chart grants the gateway was used (create: by applies that created).
                used = {
                    (c.group, c.resource + (f"/{c.subresource}" if c.subresource else ""), c.verb) for c in kube.calls
                }
                implied = rbac.merged(rbac.IMPLIED)
                for (group, resource), verbs in rbac.merged(rbac.GATEWAY).items():
                    for verb in verbs - implied.get((group, resource), set()):
                        assert (group, resource, verb) in used, (group, resource, verb)
                granted = rbac.merged(rbac.GATEWAY, rbac.INSPECT)
                assert all(verb in granted.get((g, r), set()) for g, r, verb in used), sorted(used)
                await cluster.wait_for(lambda: not cluster.processes(), 60, "no pod process")
                assert await anyio.to_thread.run_sync(first.stop) == 0
                assert await anyio.to_thread.run_sync(second.stop) == 0
        assert cluster.processes() == {}

    run(main)


# --- the CLI -----------------------------------------------------------------------------------------------


def test_cli_deploy_status_logs_remove(kube_api: KubeApi, tmp_path: Path) -> None:
    project = "cli"
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        registry_text(
            web=f"{{type: k8s, image: {DEMO}, port: 8080, replicas: 2, namespace: {NS}}}",
            tool=f"{{type: k8s, image: {DEMO}, namespace: {NS}, command: [mcpfleet-demo], args: [stdio]}}",
        )
    )

    async def main() -> None:
        async with kube_api() as kube, Cluster(kube, IMAGES) as cluster:
            kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
            where = {"kubeconfig": kubeconfig, "registry": registry, "project": project}
            # Nothing is created unless asked: status and a deploy into a missing namespace create no namespace.
            listed = await acli("status", "--backend", "kubernetes", **where)
            assert listed.returncode == 0, listed.stderr
            failed = await acli("deploy", "web", **where)
            assert failed.returncode == 3 and "namespace" in failed.stderr and "Traceback" not in failed.stderr
            assert kube.find("namespaces", None, NS) is None
            kube.create("namespaces", {"metadata": {"name": NS}})

            dry = await acli("deploy", "web", "--dry-run", **where)
            assert dry.returncode == 0 and "kind: Deployment" in dry.stdout and "clusterIP: None" in dry.stdout
            assert kube.list("deployments", NS, None) == []  # a dry run asks nothing of the cluster

            done = await acli("deploy", "web", **where)
            assert done.returncode == 0, done.stderr
            assert "created Deployment" in done.stdout and "running" in done.stdout
            again = await acli("deploy", "web", "--json", **where)
            assert again.returncode == 0 and '"update"' in again.stdout  # idempotent: applied, nothing new
            assert cluster.created[(NS, manifests.object_name(project, "web"))] == 2

            # a stdio server runs in its pods behind `mcpfleet adapter`: a real MCP endpoint per pod
            tool = await acli("deploy", "tool", **where)
            assert tool.returncode == 0, tool.stderr
            (pod,) = cluster.pods(NS, {manifests.SERVER: "tool"})
            async with mcp_session(f"http://{pod['status']['podIP']}:8080/mcp") as client:
                assert (await client.list_tools()).tools

            status = await acli("status", "web", "--json", **where)
            assert status.returncode == 0 and status.stdout.count('"running"') == 2
            logs = await acli("logs", "web", "--tail", "5", **where)
            assert logs.returncode == 0 and "mcpfleet-demo" in logs.stdout
            followed = await anyio.to_thread.run_sync(lambda: follow_logs(kubeconfig, registry, project))
            assert followed[0] == 0 and "mcpfleet-demo" in followed[1]  # Ctrl-C ends --follow: exit 0

            removed = await acli("remove", "--all", "--backend", "kubernetes", **where)
            assert removed.returncode == 0 and "Deployment" in removed.stdout
            await cluster.wait_for(lambda: not objects_of(kube, project), 60, "nothing left")
            await cluster.wait_for(lambda: not cluster.processes(), 60, "no pod process")
            # Every permission the CLI used is one the documented RBAC grants.
            granted = rbac.merged(rbac.GATEWAY, rbac.INSPECT)
            for call in kube.calls:
                key = (call.group, call.resource + (f"/{call.subresource}" if call.subresource else ""))
                assert call.verb in granted.get(key, set()), call

    run(main)


# --- faults ------------------------------------------------------------------------------------------------


def test_api_down_cut_watches_and_410_keep_routing_and_resume(kube_api: KubeApi, tmp_path: Path) -> None:
    """The API unreachable → the gateway routes to the pods it knows and, when the API is back, follows a
    scale made meanwhile; a cut watch resumes; a 410 (history compacted) lists again. Only the permissions
    rbac.GATEWAY lists are used."""
    project = "faults"
    registry = tmp_path / "registry.yaml"
    registry.write_text(registry_text(demo=f"{{type: k8s, image: {DEMO}, port: 8080, replicas: 1, namespace: {NS}}}"))

    async def main() -> None:
        async with kube_api() as kube, Cluster(kube, IMAGES, time_scale=0.2) as cluster:
            kube.create("namespaces", {"metadata": {"name": NS}})
            kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
            name = manifests.object_name(project, "demo")
            async with gateways(1, registry, kubeconfig, project) as (gateway,):
                await gateway.started()
                (pod,) = await cluster.wait_for(lambda: cluster.pods(NS, {manifests.SERVER: "demo"}), 60, "a pod")
                first = pod["metadata"]["name"]
                assert await one_call(gateway.mcp("demo")) == first

                step("API down")
                async with kube.down():
                    for _ in range(5):  # routing goes on with the endpoints it knows
                        assert await one_call(gateway.mcp("demo")) == first
                    # The controllers go on meanwhile (the harness uses the emulator's Python API).
                    kube.patch("deployments", NS, name, {"spec": {"replicas": 2}})
                    await cluster.wait_for(lambda: len(cluster.processes()) == 2, 60, "a second pod")
                step("API back: the gateway lists again and routes to the new pod")
                both = {p["metadata"]["name"] for p in cluster.pods(NS, {manifests.SERVER: "demo"})}
                seen: set[str] = set()
                with anyio.fail_after(90):
                    while seen != both:
                        seen.add(await one_call(gateway.mcp("demo")))
                        await anyio.sleep(0.1)

                step("a cut watch resumes")
                await cluster.wait_for(lambda: kube.open_watches > 0, 60, "the gateway's watch")
                kube.cut_watches()
                kube.patch("deployments", NS, name, {"spec": {"replicas": 1}})
                await cluster.wait_for(lambda: len(cluster.processes()) == 1, 60, "one pod")
                (left,) = cluster.pods(NS, {manifests.SERVER: "demo"})
                await until_only(gateway, left["metadata"]["name"])

                step("410: the history is compacted while the watch is cut")
                kube.cut_watches()
                kube.compact()
                kube.patch("deployments", NS, name, {"spec": {"replicas": 2}})
                await cluster.wait_for(lambda: len(cluster.processes()) == 2, 60, "two pods")
                both = {p["metadata"]["name"] for p in cluster.pods(NS, {manifests.SERVER: "demo"})}
                seen = set()
                with anyio.fail_after(90):
                    while seen != both:
                        seen.add(await one_call(gateway.mcp("demo")))
                        await anyio.sleep(0.1)
            granted = rbac.merged(rbac.GATEWAY)
            for call in kube.calls:
                key = (call.group, call.resource + (f"/{call.subresource}" if call.subresource else ""))
                assert call.verb in granted.get(key, set()), call

    run(main)


async def until_only(gateway: Gateway, pod: str) -> None:
    """Until the gateway sends new sessions to `pod` only (four in a row)."""
    streak = 0
    with anyio.fail_after(90):
        while streak < 4:
            streak = streak + 1 if await one_call(gateway.mcp("demo")) == pod else 0
            await anyio.sleep(0.1)


def test_forbidden_actions_and_pods_that_never_get_ready(kube_api: KubeApi, tmp_path: Path) -> None:
    """RBAC forbids scaling one server → its requests get 503 naming the verb and resource, the other
    server is unaffected; a Deployment whose pods never get ready → a bounded wait, 503 with Retry-After,
    and no retry storm (one scale, a few pods, whatever the number of requests)."""
    project = "deny"
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        registry_text(
            ok=f"{{type: k8s, image: {DEMO}, port: 8080, namespace: {NS}}}",
            locked=f"{{type: k8s, image: {DEMO}, port: 8080, namespace: {NS}, start: on_demand}}",
            broken=(
                f"{{type: k8s, image: {DEMO}, port: 8080, namespace: {NS}, start: on_demand, args: [crash],"
                " timeouts: {startup: 4}}"
            ),
        )
    )

    async def main() -> None:
        async with kube_api() as kube, Cluster(kube, IMAGES, restart_backoff=(0.5, 2.0)) as cluster:
            kube.create("namespaces", {"metadata": {"name": NS}})
            kube.deny("update", "apps", "deployments/scale", NS)
            kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
            async with gateways(1, registry, kubeconfig, project) as (gateway,), httpx2.AsyncClient(timeout=60) as http:
                await gateway.started()
                await cluster.wait_for(lambda: cluster.pods(NS, {manifests.SERVER: "ok"}), 60, "the ok pod")
                init = INIT
                headers = ACCEPT
                step("forbidden scale")
                answer = await http.post(gateway.mcp("locked"), json=init, headers=headers)
                assert answer.status_code == 503 and answer.headers.get("retry-after")
                message = answer.json()["error"]["message"]
                assert "forbids update on deployments/scale.apps" in message and NS in message, message
                assert answer.json()["error"]["code"] == -32011
                assert (
                    await one_call(gateway.mcp("ok"))
                    == cluster.pods(NS, {manifests.SERVER: "ok"})[0]["metadata"]["name"]
                )

                step("pods that never get ready")
                kube.allow_all()
                answers, took = [], []
                for _ in range(3):
                    started = time.monotonic()
                    answers.append(await http.post(gateway.mcp("broken"), json=init, headers=headers))
                    took.append(time.monotonic() - started)
                assert all(a.status_code == 503 and a.headers.get("retry-after") for a in answers)
                messages = [a.json()["error"]["message"] for a in answers]
                assert "no pod was ready within 9 s (setting: timeouts.startup)" in messages[0]
                assert messages[1] == messages[2] == messages[0]  # the failure kept, told at once
                # The first waited the bounded start-up window (4 s + 5 s); the next two, within the failure's
                # backoff, did not wait for it again (no new scale, no new wait: far less than 9 s).
                assert took[0] >= 9 and max(took[1:]) < 4.5, took
                scales = [c for c in kube.calls if c.subresource == "scale" and c.verb == "update"]
                broken = manifests.object_name(project, "broken")
                assert len([c for c in scales if c.name == broken]) == 1  # scaled once, not per request
                assert replicas_of(kube, project, "broken") == 1
                assert cluster.created[(NS, broken)] == 1  # one pod, restarted in place by the kubelet

    run(main)


def test_labelled_services_are_served_only_when_the_registry_allows(kube_api: KubeApi, tmp_path: Path) -> None:
    """`gateway.discovery: labels`: a Service labelled `mcpfleet.io/server: extra` that no entry lists is served
    at /extra/mcp (its pods through its EndpointSlices); a gateway without it answers 404; the Service going
    away takes the server with it."""
    allowed, closed = tmp_path / "allowed.yaml", tmp_path / "closed.yaml"
    allowed.write_text(f"gateway: {{discovery: labels, discovery_namespaces: [{NS}]}}\nservers: {{}}\n")
    closed.write_text("servers: {}\n")
    labels = {"app": "extra"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "extra", "namespace": NS, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "mcp",
                            "image": DEMO,
                            "ports": [{"name": "mcp", "containerPort": 8080}],
                            "readinessProbe": {"tcpSocket": {"port": "mcp"}},
                        }
                    ]
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "extra", "namespace": NS, "labels": {manifests.SERVER: "extra"}},
        "spec": {
            "clusterIP": "None",
            "selector": labels,
            "ports": [{"name": "mcp", "port": 8080, "targetPort": "mcp"}],
        },
    }

    async def main() -> None:
        async with kube_api() as kube, Cluster(kube, IMAGES) as cluster:
            kube.create("namespaces", {"metadata": {"name": NS}})
            kube.create("deployments", deployment)
            kube.create("services", service)
            kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
            (pod,) = await cluster.wait_for(lambda: cluster.pods(NS, labels), 60, "the pod")
            async with (
                gateways(1, allowed, kubeconfig, "labels") as (open_gateway,),
                gateways(1, closed, kubeconfig, "labels") as (closed_gateway,),
                httpx2.AsyncClient(timeout=30) as http,
            ):
                await open_gateway.started()
                await closed_gateway.started()

                async def listed() -> bool:
                    return bool((await http.get(f"{open_gateway.url}/servers")).json()["servers"])

                await until(listed, 60)
                assert await one_call(open_gateway.mcp("extra")) == pod["metadata"]["name"]
                init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
                refused = await http.post(closed_gateway.mcp("extra"), json=init)
                assert refused.status_code == 404  # not exposed unless the registry allows it
                kube.delete("services", NS, "extra")

                async def gone() -> bool:
                    return (await http.post(open_gateway.mcp("extra"), json=init)).status_code == 404

                await until(gone, 60)

    run(main)


def test_many_servers_share_one_watch_per_namespace(kube_api: KubeApi, tmp_path: Path) -> None:
    """120 kubernetes servers in one namespace: the gateway holds one EndpointSlice watch there (a watch per
    server took the API client's 100 connections, and every other call waited), creates every server's
    objects, and routes to the last one once it has a pod (bench/kubernetes.py found the fault)."""
    project = "many"
    count = 120
    registry = tmp_path / "registry.yaml"
    body = f"{{type: k8s, image: {DEMO}, port: 8080, namespace: {NS}, start: on_demand}}"
    registry.write_text(registry_text(**{f"s{i}": body for i in range(count)}))

    async def main() -> None:
        async with kube_api() as kube, Cluster(kube, IMAGES) as cluster:
            kube.create("namespaces", {"metadata": {"name": NS}})
            kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
            async with gateways(1, registry, kubeconfig, project) as (gateway,):
                await gateway.started()
                selector = f"{manifests.PROJECT}={project}"
                await cluster.wait_for(lambda: len(kube.list("services", NS, selector)) == count, 120, "every Service")
                assert len(kube.list("deployments", NS, selector)) == count
                assert kube.open_watches <= 2  # the namespace's slices (and nothing per server)
                last = f"s{count - 1}"
                (pod_name,) = await cluster.wait_for(lambda: wake_and_name(kube, project, last), 60, "a pod")
                assert await one_call(gateway.mcp(last)) == pod_name

    run(main)


def wake_and_name(kube: KubeEmulator, project: str, server_id: str) -> list[str]:
    """Scale `server_id` to one pod (as a request would), and its ready pods' names once there are."""
    name = manifests.object_name(project, server_id)
    if not replicas_of(kube, project, server_id):
        kube.patch("deployments", NS, name, {"spec": {"replicas": 1}})
    return [
        p["metadata"]["name"]
        for p in kube.list("pods", NS, f"{manifests.SERVER}={server_id}")
        if any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in p.get("status", {}).get("conditions", [])
        )
    ]
