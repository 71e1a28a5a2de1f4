"""The rest of a cluster for tests: the Deployment controller, the EndpointSlice controller, the garbage collector
and a kubelet whose pods are real local processes, each on its own loopback address 127.0.0.N.

`async with Cluster(kube, images) as cluster:` watches the emulator in process (so it reacts to whatever any
client changes over HTTP) and writes back through the emulator's Python API (so its writes emit watch events but
stay out of `kube.calls`). Level-triggered: after every batch of events it reconciles the whole state.

`images` maps an image name to `fn(container, pod_ip) -> argv`; the container is the pod's (first) container with
`$(VAR)` references in `command`/`args` expanded like the kubelet does. A pod's process gets the test's own
environment plus the container's `env`/`envFrom` (literal values, secretKeyRef, configMapKeyRef, fieldRef) and
`HOSTNAME` = the pod name; Python processes also see `socket.gethostname()` return the pod name (a
sitecustomize on PYTHONPATH), so the demo's `--replica {hostname}` becomes the pod name.

Known differences from a real cluster:
- No ReplicaSets: pods are owned by their Deployment directly (names still `<deploy>-<template hash>-<xxxxx>`).
- Rollouts surge all new pods at once and remove old pods as new ones become ready; minReadySeconds, maxSurge,
  progressDeadlineSeconds and paused are ignored; availableReplicas == readyReplicas.
- One node; only the first container of a pod runs; no init containers, volumes, resources or liveness probes.
- Addresses: the lowest free 127.0.0.N (N >= 2) on which the pod's container ports can be bound, so runs of
  this harness in other processes on the machine are stepped around. The controllers keep running while the
  emulator is `down()` (they use its Python API, not HTTP).
- Readiness is probed every `probe_period` seconds whatever periodSeconds says; thresholds are honoured.
- Times in pod specs (preStop sleep, terminationGracePeriodSeconds, initialDelaySeconds) are multiplied by
  `time_scale`; restart backoff runs from `restart_backoff[0]` doubling to `restart_backoff[1]` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kube_emulator import RESOURCES, ApiError, KubeEmulator, Obj, now, selector_matches

ImageFn = Callable[[Obj, str], list[str]]
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER = "endpointslice-controller.k8s.io"
SITECUSTOMIZE = """import os, socket
if os.environ.get("KUBE_CLUSTER_POD"):
    socket.gethostname = lambda: os.environ["KUBE_CLUSTER_POD"]
"""


class ConfigError(Exception):
    """The container cannot start (CreateContainerConfigError, ErrImagePull): retried with backoff."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_ready(pod: Obj) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def template_hash(template: Obj) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def owned_by(obj: Obj, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


class PodRun:
    """One pod on the kubelet: its process (restarted per restartPolicy), readiness probe and termination."""

    def __init__(self, cluster: Cluster, pod: Obj, ip: str) -> None:
        self.cluster, self.kube, self.ip = cluster, cluster.kube, ip
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.spec: Obj = pod.get("spec", {})
        self.container: Obj = (self.spec.get("containers") or [{}])[0]
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.ready = False
        self.terminating = False
        self.killing = False
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.started_at = now()
        self._wake = asyncio.Event()
        self._written: Any = None
        self.task = asyncio.create_task(self._run(), name=f"pod {self.name}")
        self.stop_task: asyncio.Task[None] | None = None

    # --- the container -----------------------------------------------------------------------------------

    def _port(self, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in self.container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise ConfigError("InvalidPort", f"no container port named {port!r}")

    def _environment(self) -> tuple[dict[str, str], dict[str, str]]:
        """(the process's whole environment, the variables the container declares)."""
        pod = self.kube.find("pods", self.namespace, self.name) or {}

        def source(kind: str, name: str, optional: bool) -> dict[str, str]:
            obj = self.kube.find(kind, self.namespace, name)
            if obj is None:
                if optional:
                    return {}
                raise ConfigError("CreateContainerConfigError", f'{kind[:-1]} "{name}" not found')
            if kind == "secrets":
                return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
            return dict(obj.get("data") or {})

        def field(path: str) -> str:
            fields = {
                "metadata.name": self.name,
                "metadata.namespace": self.namespace,
                "metadata.uid": self.uid,
                "status.podIP": self.ip,
                "status.hostIP": "127.0.0.1",
                "spec.nodeName": self.cluster.node_name,
                "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            }
            if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
                return str(pod.get("metadata", {}).get(m[1], {}).get(m[2], ""))
            return fields[path]

        declared: dict[str, str] = {}
        for item in self.container.get("envFrom") or []:
            for kind, key in (("secrets", "secretRef"), ("configmaps", "configMapRef")):
                if key in item:
                    ref = item[key]
                    values = source(kind, ref["name"], ref.get("optional", False))
                    declared.update({item.get("prefix", "") + k: v for k, v in values.items()})
        for var in self.container.get("env") or []:
            if "value" in var or "valueFrom" not in var:
                declared[var["name"]] = expand(str(var.get("value", "")), declared)
                continue
            ref = var["valueFrom"]
            for kind, key in (("secrets", "secretKeyRef"), ("configmaps", "configMapKeyRef")):
                if key in ref:
                    values = source(kind, ref[key]["name"], ref[key].get("optional", False))
                    if ref[key]["key"] in values:
                        declared[var["name"]] = values[ref[key]["key"]]
                    elif not ref[key].get("optional", False):
                        raise ConfigError("CreateContainerConfigError", f"couldn't find key {ref[key]['key']}")
            if "fieldRef" in ref:
                declared[var["name"]] = field(ref["fieldRef"]["fieldPath"])
        path = os.pathsep.join(filter(None, [str(self.cluster.site_dir), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "HOSTNAME": self.name, "KUBE_CLUSTER_POD": self.name, "PYTHONPATH": path, **declared}
        return env, declared

    def _argv(self, declared: dict[str, str]) -> list[str]:
        image = self.container.get("image", "")
        if image not in self.cluster.images:
            raise ConfigError("ErrImagePull", f"image {image!r} is not in the test's image table")
        container = dict(self.container)
        for key in ("command", "args"):
            if key in container:
                container[key] = [expand(str(arg), declared) for arg in container[key]]
        return list(self.cluster.images[image](container, self.ip))

    async def _run(self) -> None:
        backoff = self.cluster.restart_backoff[0]
        policy = self.spec.get("restartPolicy", "Always")
        while not self.terminating:
            try:
                env, declared = self._environment()
                argv = self._argv(declared)
            except ConfigError as exc:
                self.state = {"waiting": {"reason": exc.reason, "message": str(exc)}}
                self.write_status()
            else:
                code = await self._attempt(argv, env)
                if self.terminating:
                    break
                self.restarts += 1
                self.ready = False
                finished = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
                if policy == "Never" or (policy == "OnFailure" and code == 0):
                    self.state = {"terminated": finished}
                    self.write_status()
                    return
                self.state = {"waiting": {"reason": "CrashLoopBackOff", "message": f"exited with {code}"}}
                self.write_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            backoff = min(backoff * 2, self.cluster.restart_backoff[1])

    async def _attempt(self, argv: list[str], env: dict[str, str]) -> int:
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:  # like a runtime failing to start the container: counted as a failed run
            self.kube.append_log(self.namespace, self.name, f"{exc}\n".encode())
            return 128
        self.state = {"running": {"startedAt": now()}}
        self.write_status()
        pump = asyncio.create_task(self._pump(self.process))
        probe = asyncio.create_task(self._probe_loop())
        try:
            return await self.process.wait()
        finally:
            await cancelled(probe)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(pump, 2.0)
            self.kube.close_log(self.namespace, self.name)

    async def _pump(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            self.kube.append_log(self.namespace, self.name, chunk)

    async def _probe_loop(self) -> None:
        probe = self.container.get("readinessProbe")
        if not probe:
            self.ready = True
            self.write_status()
            return
        await asyncio.sleep(probe.get("initialDelaySeconds", 0) * self.cluster.time_scale)
        failures, successes = 0, 0
        while True:
            if await self._probe(probe):
                failures, successes = 0, successes + 1
                if successes >= probe.get("successThreshold", 1):
                    self.ready = True
            else:
                failures, successes = failures + 1, 0
                if failures >= probe.get("failureThreshold", 3):
                    self.ready = False
            self.write_status()
            await asyncio.sleep(self.cluster.probe_period)

    async def _probe(self, probe: Obj) -> bool:
        timeout = max(self.cluster.probe_period * 5, 1.0)
        try:
            if "tcpSocket" in probe:
                port = self._port(probe["tcpSocket"]["port"])
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.ip, port), timeout)
                writer.close()
                return True
            if "httpGet" in probe:
                get = probe["httpGet"]
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.ip, self._port(get["port"])), timeout
                )
                try:
                    request = f"GET {get.get('path', '/')} HTTP/1.0\r\nHost: {self.ip}\r\n\r\n"
                    writer.write(request.encode())
                    line = await asyncio.wait_for(reader.readline(), timeout)
                finally:
                    writer.close()
                parts = line.split()
                return len(parts) >= 2 and 200 <= int(parts[1]) < 400
            return True  # exec probes: not run, counted as passing
        except (OSError, TimeoutError, ValueError, ConfigError):
            return False

    # --- status and termination --------------------------------------------------------------------------

    def write_status(self) -> None:
        """Write the pod's status if what the kubelet knows changed."""
        running = "running" in self.state
        state = (self.ready, self.restarts, json.dumps(self.state, sort_keys=True))
        if state == self._written:
            return
        pod = self.kube.find("pods", self.namespace, self.name)
        if pod is None or pod["metadata"]["uid"] != self.uid:
            return
        self._written = state
        ready = "True" if self.ready and running else "False"
        stamp = now()
        pod["status"] = {
            "phase": "Failed" if "terminated" in self.state else "Running" if running else "Pending",
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": "127.0.0.1",
            "startTime": self.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": self.started_at},
                {"type": "Initialized", "status": "True", "lastTransitionTime": self.started_at},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": stamp},
                {"type": "Ready", "status": ready, "lastTransitionTime": stamp},
            ],
            "containerStatuses": [
                {
                    "name": self.container.get("name", ""),
                    "image": self.container.get("image", ""),
                    "imageID": f"local://{self.container.get('image', '')}",
                    "ready": ready == "True",
                    "started": running,
                    "restartCount": self.restarts,
                    "state": self.state,
                }
            ],
        }
        with contextlib.suppress(ApiError):
            self.kube.replace("pods", pod, subresource="status")

    def stop(self, at_once: bool = False) -> None:
        """The pod got a deletionTimestamp: preStop, SIGTERM, grace period, SIGKILL, then the final delete
        (`at_once`: the pod is already gone from the API, SIGKILL now)."""
        if at_once and not self.killing:
            self.killing = True
            if self.stop_task is not None:
                self.stop_task.cancel()
        elif self.terminating:
            return
        self.terminating = True
        self._wake.set()
        self.stop_task = asyncio.create_task(self._terminate(0.0 if at_once else 1.0), name=f"stop {self.name}")

    async def _terminate(self, scale_factor: float) -> None:
        scale = self.cluster.time_scale * scale_factor
        pod = self.kube.find("pods", self.namespace, self.name) or {"metadata": {}}
        grace = pod["metadata"].get("deletionGracePeriodSeconds", self.spec.get("terminationGracePeriodSeconds", 30))
        deadline = asyncio.get_running_loop().time() + grace * scale
        pre_stop = (self.container.get("lifecycle") or {}).get("preStop") or {}
        seconds = (pre_stop.get("sleep") or {}).get("seconds", 0)
        if m := re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", " ".join((pre_stop.get("exec") or {}).get("command") or [])):
            seconds = float(m[1])
        if self.process is not None and self.process.returncode is None and seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), min(seconds * scale, grace * scale))
        await self.kill(signal.SIGTERM, wait=max(deadline - asyncio.get_running_loop().time(), 0.05))
        await self.kill(signal.SIGKILL, wait=5.0)
        await cancelled(self.task)
        pod = self.kube.find("pods", self.namespace, self.name)
        if pod is not None and pod["metadata"]["uid"] == self.uid:
            self.kube.delete("pods", self.namespace, self.name, grace_period=0)
        self.cluster.forget(self)

    async def kill(self, sig: int = signal.SIGKILL, wait: float = 5.0) -> None:
        """Signal the process group and wait (bounded) for the process to end."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), wait)


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it ended. Python 3.11's `asyncio.wait_for` can swallow a cancellation that
    arrives as its inner wait completes (gh-86296), so a loop of them may go on: cancel again until it ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.5)


def bindable(ip: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError:
            return False
        return True


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: known variables replaced, `$$` an escaped `$`, the rest kept."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


class Cluster:
    """Controllers and a kubelet for a KubeEmulator. Options are the knobs tests need; see the module doc."""

    def __init__(
        self,
        kube: KubeEmulator,
        images: Mapping[str, ImageFn],
        *,
        probe_period: float = 0.1,
        time_scale: float = 0.05,
        restart_backoff: tuple[float, float] = (0.2, 2.0),
        max_endpoints_per_slice: int = 100,
        node_name: str = "node-1",
    ) -> None:
        self.kube, self.images = kube, dict(images)
        self.probe_period, self.time_scale, self.restart_backoff = probe_period, time_scale, restart_backoff
        self.max_endpoints_per_slice, self.node_name = max_endpoints_per_slice, node_name
        self.created: dict[tuple[str, str], int] = {}  # (namespace, deployment) -> pods created
        self.site_dir = Path()
        self._runs: dict[str, PodRun] = {}  # pod uid -> its run
        self._ips: dict[str, str] = {}  # address -> uid of the pod holding it
        self._order = itertools.count()
        self._seq: dict[str, int] = {}  # pod uid -> creation order
        self._loop: asyncio.Task[None] | None = None
        self.failures: list[BaseException] = []  # the harness's own errors (wait_for raises the first)

    async def __aenter__(self) -> Cluster:
        self.site_dir = Path(tempfile.mkdtemp(prefix="kube-cluster-"))
        (self.site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.kube.graceful_pods = True
        self._stream = self.kube.subscribe()
        self._loop = asyncio.create_task(self._run(), name="cluster controllers")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the controllers, kill every pod process and wait for it (bounded); pods stay in the store."""
        try:
            if self._loop is not None:
                await cancelled(self._loop)
            runs = list(self._runs.values())
            for run in runs:
                run.terminating = True
                for task in (run.task, run.stop_task):
                    if task is not None:
                        task.cancel()
            await asyncio.gather(*(run.kill(signal.SIGKILL, wait=5.0) for run in runs), return_exceptions=True)
            tasks = [t for run in runs for t in (run.task, run.stop_task) if t is not None]
            await asyncio.gather(*(cancelled(t) for t in tasks), return_exceptions=True)
            self._runs.clear()
            self._ips.clear()
        finally:
            self.kube.graceful_pods = False
            self.kube.unsubscribe(self._stream)
            shutil.rmtree(self.site_dir, ignore_errors=True)

    # --- test helpers ----------------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:  # noqa: ASYNC109
        """Poll `predicate` (sync or async) until it returns something truthy; TimeoutError after `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if self.failures:
                raise RuntimeError("the cluster harness failed") from self.failures[0]
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"not within {timeout} s: {what or predicate}; pods: {self.describe()}")
            await asyncio.sleep(0.05)

    def pods(self, namespace: str | None = None, selector: str | Mapping[str, str] | None = None) -> list[Obj]:
        if isinstance(selector, Mapping):
            selector = ",".join(f"{k}={v}" for k, v in selector.items())
        return self.kube.list("pods", namespace, selector)

    def describe(self) -> list[str]:
        """One line a pod, for failure messages: name, address, phase, readiness, restarts, deletion."""
        lines = []
        for pod in self.kube.list("pods"):
            status = pod.get("status", {})
            restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
            state = (status.get("containerStatuses") or [{}])[0].get("state", {})
            deleting = " deleting" if pod["metadata"].get("deletionTimestamp") else ""
            lines.append(
                f"{pod['metadata']['name']} {status.get('podIP')} {status.get('phase')} ready={is_ready(pod)} "
                f"restarts={restarts} {json.dumps(state)}{deleting}"
            )
        return lines

    def processes(self) -> dict[str, int]:
        """Running pod processes: pod name -> pid."""
        return {
            run.name: run.process.pid
            for run in self._runs.values()
            if run.process is not None and run.process.returncode is None
        }

    def ip_of(self, pod_name: str) -> str:
        return next(run.ip for run in self._runs.values() if run.name == pod_name)

    def kill(self, pod_name: str) -> None:
        """kill -9 a pod's process (the kubelet restarts it per restartPolicy)."""
        for run in self._runs.values():
            if run.name == pod_name and run.process is not None and run.process.returncode is None:
                os.killpg(run.process.pid, signal.SIGKILL)

    def forget(self, run: PodRun) -> None:
        self._runs.pop(run.uid, None)
        self._ips.pop(run.ip, None)
        self._wake()

    # --- the control loop ------------------------------------------------------------------------------------

    def _wake(self) -> None:
        self._stream.queue.put_nowait(None)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stream.queue.get(), 0.5)
            while not self._stream.queue.empty():
                self._stream.queue.get_nowait()
            try:
                self.reconcile()
            except Exception as exc:  # a harness bug: reported by wait_for, the loop goes on
                self.failures.append(exc)
            await asyncio.sleep(0)

    def reconcile(self) -> None:
        self._collect_garbage()
        self._deployments()
        self._kubelet()
        self._endpoint_slices()

    def _collect_garbage(self) -> None:
        everything = [obj for plural in RESOURCES for obj in self.kube.list(plural)]
        uids = {obj["metadata"]["uid"] for obj in everything}
        for obj in everything:
            refs = obj["metadata"].get("ownerReferences") or []
            if (
                refs
                and not any(ref.get("uid") in uids for ref in refs)
                and not obj["metadata"].get("deletionTimestamp")
            ):
                plural = next(p for p, r in RESOURCES.items() if r.kind == obj["kind"])
                with contextlib.suppress(ApiError):
                    self.kube.delete(plural, obj["metadata"].get("namespace"), obj["metadata"]["name"])

    def _deployments(self) -> None:
        pods = self.kube.list("pods")
        for deployment in self.kube.list("deployments"):
            meta, spec = deployment["metadata"], deployment.get("spec", {})
            if meta.get("deletionTimestamp"):
                continue
            live = [p for p in pods if owned_by(p, meta["uid"]) and not p["metadata"].get("deletionTimestamp")]
            template = spec.get("template", {})
            digest = template_hash(template)
            new = [p for p in live if p["metadata"].get("labels", {}).get("pod-template-hash") == digest]
            old = [p for p in live if p not in new]
            desired = spec.get("replicas", 1)
            for _ in range(desired - len(new)):
                new.append(self._create_pod(deployment, template, digest))
            ready_new = sum(1 for p in new if is_ready(p))
            doomed = self._victims(new, len(new) - desired) + self._victims(old, len(old) - max(0, desired - ready_new))
            for pod in doomed:
                with contextlib.suppress(ApiError):
                    self.kube.delete("pods", meta["namespace"], pod["metadata"]["name"])
            kept = [p for p in new + old if p not in doomed]
            self._deployment_status(deployment, desired, kept, [p for p in new if p not in doomed], old)

    def _victims(self, pods: list[Obj], count: int) -> list[Obj]:
        """Which pods a ReplicaSet removes first: not ready before ready, then the newest."""
        ordered = sorted(pods, key=lambda p: (is_ready(p), -self._seq.get(p["metadata"]["uid"], 0)))
        return ordered[: max(count, 0)]

    def _create_pod(self, deployment: Obj, template: Obj, digest: str) -> Obj:
        meta = deployment["metadata"]
        labels = {**(template.get("metadata", {}).get("labels") or {}), "pod-template-hash": digest}
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"], "uid": meta["uid"]}
        pod = {
            "metadata": {
                "generateName": f"{meta['name']}-{digest}-",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": template.get("metadata", {}).get("annotations") or {},
                "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {**template.get("spec", {}), "nodeName": self.node_name},
        }
        created = self.kube.create("pods", pod)
        self._seq[created["metadata"]["uid"]] = next(self._order)
        key = (meta["namespace"], meta["name"])
        self.created[key] = self.created.get(key, 0) + 1
        return created

    def _deployment_status(
        self, deployment: Obj, desired: int, live: list[Obj], new: list[Obj], old: list[Obj]
    ) -> None:
        strategy = (deployment.get("spec", {}).get("strategy") or {}).get("rollingUpdate") or {}
        unavailable = strategy.get("maxUnavailable", "25%")
        if isinstance(unavailable, str) and unavailable.endswith("%"):
            unavailable = math.floor(desired * int(unavailable[:-1]) / 100)
        ready = sum(1 for p in live if is_ready(p))
        complete = len(new) == desired and not old and sum(1 for p in new if is_ready(p)) >= desired
        previous = {c["type"]: c for c in deployment.get("status", {}).get("conditions") or []}

        def condition(kind: str, ok: bool, reason: str) -> Obj:
            status = "True" if ok else "False"
            before = previous.get(kind, {})
            stamp = before.get("lastTransitionTime") if before.get("status") == status else now()
            return {"type": kind, "status": status, "reason": reason, "lastTransitionTime": stamp}

        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(live),
            "updatedReplicas": len(new),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(desired - ready, 0),
            "conditions": [
                condition(
                    "Available",
                    ready >= desired - int(unavailable),
                    "MinimumReplicasAvailable" if ready >= desired - int(unavailable) else "MinimumReplicasUnavailable",
                ),
                condition("Progressing", True, "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated"),
            ],
        }
        if status != deployment.get("status"):
            with contextlib.suppress(ApiError):
                self.kube.replace("deployments", {**deployment, "status": status}, subresource="status")

    def _kubelet(self) -> None:
        pods = {p["metadata"]["uid"]: p for p in self.kube.list("pods")}
        for uid, run in list(self._runs.items()):
            if uid not in pods:  # force-deleted (or its namespace went): stop at once
                run.stop(at_once=True)
        for uid, pod in pods.items():
            run = self._runs.get(uid)
            deleting = bool(pod["metadata"].get("deletionTimestamp"))
            if run is None and deleting:
                with contextlib.suppress(ApiError):
                    self.kube.delete("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], grace_period=0)
            elif run is None:
                ip = self._free_address(pod)
                if ip is not None:
                    self._ips[ip] = uid
                    self._runs[uid] = PodRun(self, pod, ip)
            elif deleting:
                run.stop()

    def _free_address(self, pod: Obj) -> str | None:
        """The lowest free 127.0.0.N whose container ports nobody else (another test run) holds."""
        ports = [
            int(port["containerPort"])
            for container in pod.get("spec", {}).get("containers") or []
            for port in container.get("ports") or []
        ]
        for n in range(2, 255):
            ip = f"127.0.0.{n}"
            if ip not in self._ips and all(bindable(ip, port) for port in ports):
                return ip
        return None

    def _endpoint_slices(self) -> None:
        pods = self.kube.list("pods")
        for service in self.kube.list("services"):
            meta, spec = service["metadata"], service.get("spec", {})
            selector = spec.get("selector")
            if not selector or meta.get("deletionTimestamp"):
                continue
            ns = meta["namespace"]
            members = [
                p
                for p in pods
                if p["metadata"]["namespace"] == ns
                and selector_matches({"matchLabels": selector}, p["metadata"].get("labels") or {})
                and p.get("status", {}).get("podIP")
            ]
            ports = [port for port in (self._slice_port(p, members) for p in spec.get("ports") or []) if port]
            endpoints = [self._endpoint(p) for p in sorted(members, key=lambda p: p["metadata"]["name"])]
            size = self.max_endpoints_per_slice
            chunks = [endpoints[i : i + size] for i in range(0, len(endpoints), size)] or [[]]
            mine = f"{SERVICE_NAME}={meta['name']},{MANAGED_BY}={CONTROLLER}"
            existing = sorted(self.kube.list("endpointslices", ns, mine), key=lambda s: s["metadata"]["name"])
            for i, chunk in enumerate(chunks):
                body = {"addressType": "IPv4", "ports": ports, "endpoints": chunk}
                if i < len(existing):
                    current = existing[i]
                    if {k: current.get(k) for k in body} != body:
                        self.kube.replace("endpointslices", {**current, **body})
                    continue
                owner = {"apiVersion": "v1", "kind": "Service", "name": meta["name"], "uid": meta["uid"]}
                labels = {SERVICE_NAME: meta["name"], MANAGED_BY: CONTROLLER}
                slice_meta = {"generateName": f"{meta['name']}-", "labels": labels}
                slice_meta["ownerReferences"] = [{**owner, "controller": True, "blockOwnerDeletion": True}]
                self.kube.create("endpointslices", {"metadata": slice_meta, **body}, ns)
            for extra in existing[len(chunks) :]:
                self.kube.delete("endpointslices", ns, extra["metadata"]["name"])

    @staticmethod
    def _slice_port(port: Obj, members: list[Obj]) -> Obj | None:
        target = port.get("targetPort", port.get("port"))
        if isinstance(target, str) and not target.isdigit():
            named = [
                declared["containerPort"]
                for pod in members
                for container in pod.get("spec", {}).get("containers") or []
                for declared in container.get("ports") or []
                if declared.get("name") == target
            ]
            if not named:
                return None
            target = named[0]
        return {"name": port.get("name", ""), "port": int(target), "protocol": port.get("protocol", "TCP")}

    def _endpoint(self, pod: Obj) -> Obj:
        meta = pod["metadata"]
        serving = is_ready(pod)
        terminating = bool(meta.get("deletionTimestamp"))
        return {
            "addresses": [pod["status"]["podIP"]],
            "conditions": {"ready": serving and not terminating, "serving": serving, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
            "nodeName": pod.get("spec", {}).get("nodeName", self.node_name),
        }
