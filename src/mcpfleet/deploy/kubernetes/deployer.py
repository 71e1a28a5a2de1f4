"""Deploying `kubernetes` entries: create or update a server's objects, scale it, report it, remove it.

The cluster's state is the truth; there is no state file. Objects come from `manifests.objects` and are
written with server-side apply (field manager `mcpfleet`, forced: mcpfleet owns what it declares), which is
idempotent, so any number of gateway replicas and CLI runs may apply the same entry. `spec.replicas` is
left out of every apply and set only when the Deployment is created and through the `scale` subresource
(field manager `mcpfleet-scale`): an apply never undoes a scale, to zero or from it (Plan Document, 12.4).
The Service and the Secret carry an ownerReference to the Deployment, so deleting it deletes them; removal
also deletes by label, so nothing is left when an ownerReference was never set.

Nothing here creates a namespace: a namespace that does not exist is an error naming it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import anyio

from mcpfleet.deploy.base import Change, Progress, ReplicaStatus
from mcpfleet.deploy.kubernetes import manifests
from mcpfleet.deploy.kubernetes.api import KINDS, Cluster
from mcpfleet.errors import DeployError, UsageError
from mcpfleet.registry.model import KubernetesServer

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
CREATED_BY = "mcpfleet.io/created-by"  # annotation: `gateway` on objects a gateway created (it removes them)
READY_POLL = 0.25  # seconds between checks of a Deployment's ready replicas, doubling up to:
READY_POLL_MAX = 2.0
REMOVED_KINDS = ("Deployment", "Service")  # listed by label; a server's Secret and ConfigMap by their names
ACTIVITY_MANAGER = "mcpfleet-activity"  # the field manager of the activity mark


class KubernetesDeployer:
    """Converges a cluster on registry entries, for the CLI and the gateway. `project` separates fleets in
    one namespace (label `mcpfleet.io/project`); `namespace` overrides the entries' (`--namespace`)."""

    def __init__(self, cluster: Cluster, project: str, *, namespace: str | None = None) -> None:
        if not project[-1:].isalnum():
            raise UsageError(
                f"project {project!r} ends with {project[-1:]!r}: Kubernetes labels carry it, and a label value must"
                " end with a letter or digit (set by --project or $MCPFLEET_PROJECT)"
            )
        self.cluster = cluster
        self.project = project
        self.namespace_override = namespace

    async def namespace(self, entry: KubernetesServer | None = None) -> str:
        """Where `entry` lives: `--namespace`, else its `namespace`, else the context's (or the pod's)."""
        await self.cluster.client()  # the default namespace is known once the configuration is read
        return self.namespace_known(entry)

    def namespace_known(self, entry: KubernetesServer | None = None) -> str:
        """`namespace(entry)` as far as it is known now (`default` before the configuration is read)."""
        if self.namespace_override is not None:
            return self.namespace_override
        if entry is not None and entry.namespace is not None:
            return entry.namespace
        return self.cluster.default_namespace

    # --- reading ---------------------------------------------------------------------------------------

    async def deployment(self, entry: KubernetesServer) -> dict[str, Any] | None:
        """The entry's Deployment as the API has it; None when it does not exist. A `chart` entry's is
        found by its `mcpfleet.io/server` label."""
        namespace = await self.namespace(entry)
        if entry.chart is not None:
            found = await self._labelled("Deployment", namespace, {manifests.SERVER: entry.id})
            return found[0] if found else None
        name = manifests.object_name(self.project, entry.id)
        result: dict[str, Any] | None = await self.cluster.request(
            "GET", KINDS["Deployment"], namespace, name, missing_ok=True
        )
        return result

    async def service_name(self, entry: KubernetesServer) -> str:
        """The name of the entry's headless Service (a `chart` entry's: found by label; DeployError when the
        chart is not installed)."""
        if entry.chart is None:
            return manifests.object_name(self.project, entry.id)
        namespace = await self.namespace(entry)
        found = await self._labelled("Service", namespace, {manifests.SERVER: entry.id})
        if not found:
            raise DeployError(
                f"no Service labelled {manifests.SERVER}={entry.id} in namespace {namespace!r}: install the chart"
                " with `mcpfleet deploy`",
                server_id=entry.id,
            )
        return str(found[0]["metadata"]["name"])

    async def _labelled(self, kind: str, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        listed = await self.cluster.request(
            "GET", KINDS[kind], namespace, query={"labelSelector": manifests.label_selector(selector)}
        )
        return list(listed.get("items") or [])

    async def status(self, server_id: str | None = None, entry: KubernetesServer | None = None) -> list[ReplicaStatus]:
        """The pods of `server_id` (None: of every server of the project) in the namespace of `entry` (or the
        default one): name, uid, phase (or `terminating`), address, ready."""
        namespace = await self.namespace(entry)
        selector = manifests.selector(self.project, server_id)
        if entry is not None and entry.chart is not None:
            selector = {manifests.SERVER: entry.id}
        pods = await self._labelled("Pod", namespace, selector)
        found = []
        for pod in pods:
            metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            state = "terminating" if metadata.get("deletionTimestamp") else (status.get("phase") or "Pending").lower()
            if state == "running" and not ready:
                state = "starting"
            if (reason := _waiting_reason(status)) and not ready:
                state = f"{state} ({reason})"
            ip = status.get("podIP")
            port = _container_port(pod)
            found.append(
                ReplicaStatus(
                    server_id=(metadata.get("labels") or {}).get(manifests.SERVER, server_id or ""),
                    name=metadata.get("name", ""),
                    id=metadata.get("uid", ""),
                    role="replica",
                    state=state,
                    address=f"http://{ip}:{port}" if ip and port else None,
                    current=None,
                    exit_code=_exit_code(status),
                    created=metadata.get("creationTimestamp") or "",
                )
            )
        return sorted(found, key=lambda r: (r.server_id, r.name))

    async def logs(
        self, entry: KubernetesServer, *, tail: int | None, follow: bool, line: Callable[[str, str], None]
    ) -> None:
        """Tell `line(pod name, text)` every log line of every pod of `entry`; with `follow`, the pods'
        streams as lines come, until each ends or the caller is cancelled."""
        namespace = await self.namespace(entry)
        query: dict[str, Any] = {"container": manifests.CONTAINER}
        if tail is not None:
            query["tailLines"] = str(tail)
        pods = [p.name for p in await self.status(entry.id, entry)]
        if not follow:
            for pod in pods:
                text = await self.cluster.request_text(KINDS["Pod"], namespace, pod, "log", query)
                for each in text.splitlines():
                    line(pod, each)
            return

        async def stream(pod: str) -> None:
            async for each in self.cluster.stream_lines(
                KINDS["Pod"], namespace, pod, "log", {**query, "follow": "true"}
            ):
                line(pod, each)

        async with anyio.create_task_group() as tg:
            for pod in pods:
                tg.start_soon(stream, pod)

    # --- changing --------------------------------------------------------------------------------------

    async def plan(self, entry: KubernetesServer, replicas: int | None = None) -> list[Change]:
        """What `up(entry, replicas)` would do: create the objects that do not exist, apply the others,
        scale the Deployment when `replicas` differs. Touches nothing."""
        namespace = await self.namespace(entry)
        changes = []
        for body in manifests.objects(entry, namespace=namespace, project=self.project):
            kind, name = body["kind"], body["metadata"]["name"]
            shown = _masked(body)
            if kind in ("Secret", "ConfigMap"):  # never read back (no get granted): applied either way
                changes.append(Change("update", kind, name, entry.id, "server-side apply", shown))
                continue
            existing = await self.cluster.request("GET", KINDS[kind], namespace, name, missing_ok=True)
            if existing is None:
                changes.append(Change("create", kind, name, entry.id, f"in namespace {namespace}", shown))
            else:
                changes.append(Change("update", kind, name, entry.id, "server-side apply (unchanged if equal)", shown))
                if kind == "Deployment" and replicas is not None:
                    current = (existing.get("spec") or {}).get("replicas")
                    if current != replicas:
                        changes.append(Change("scale", kind, name, entry.id, f"{current} -> {replicas} replicas"))
        return changes

    async def apply(
        self, entry: KubernetesServer, *, replicas_if_created: int, created_by: str = "cli"
    ) -> dict[str, Any]:
        """Create or update the entry's objects; the Deployment as the API has it afterwards. A new
        Deployment gets `replicas_if_created` replicas; an existing one keeps its count. The Secret goes
        first, so the pod template can carry the digest of its data (`manifests.secret_digest`, keyed by its
        uid): a new secret value rolls the pods out. The Service and the Secret are owned by the Deployment."""
        namespace = await self.namespace(entry)
        bodies = {b["kind"]: b for b in manifests.objects(entry, namespace=namespace, project=self.project)}
        deployment = bodies.pop("Deployment")
        name = deployment["metadata"]["name"]
        kind = KINDS["Deployment"]
        existing = await self.cluster.request("GET", kind, namespace, name, missing_ok=True)
        secret = bodies.get("Secret")
        first = [b for b in (secret, bodies.get("ConfigMap")) if b is not None]  # what the pods read, before them
        for body in first:
            if existing is not None:
                body["metadata"]["ownerReferences"] = [_owner(existing)]
            stored = await self._apply(body)
            if body is secret:
                digest = manifests.secret_digest(entry, stored["metadata"]["uid"])
                template = deployment["spec"]["template"]["metadata"]
                template.setdefault("annotations", {})[manifests.SECRET_DIGEST] = digest
        if existing is None:
            # Created by an apply of `mcpfleet` (which then owns every field it wrote, so a field dropped
            # from the entry later is removed), then `spec.replicas` and the created-by annotation are handed
            # to `mcpfleet-scale` (it applies them too, then `mcpfleet` applies without them): no later apply
            # of the entry undoes a scale, and who made the Deployment stays recorded (`down(created_by=)`).
            deployment["spec"]["replicas"] = replicas_if_created
            deployment["metadata"]["annotations"][CREATED_BY] = created_by
            existing = await self._apply(deployment)
            await self._apply(_scale_part(deployment), manager=manifests.SCALE_MANAGER)
            del deployment["spec"]["replicas"]
            del deployment["metadata"]["annotations"][CREATED_BY]
            existing = await self._apply(deployment)
            for body in first:  # now that their owner exists
                body["metadata"]["ownerReferences"] = [_owner(existing)]
                await self._apply(body)
        else:
            del deployment["spec"]["replicas"]
            existing = await self._apply(deployment)
        service = bodies["Service"]
        service["metadata"]["ownerReferences"] = [_owner(existing)]
        await self._apply(service)
        return dict(existing)

    async def _apply(self, body: dict[str, Any], *, manager: str = manifests.FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply of `body` as field `manager`, forced (mcpfleet owns what it declares)."""
        metadata = body["metadata"]
        result: dict[str, Any] = await self.cluster.request(
            "PATCH",
            KINDS[body["kind"]],
            metadata["namespace"],
            metadata["name"],
            body=body,
            content_type=APPLY,
            query={"fieldManager": manager, "force": "true"},
        )
        return result

    async def scale(self, entry: KubernetesServer, replicas: int, *, resource_version: str | None = None) -> None:
        """Set the Deployment's `spec.replicas` through its `scale` subresource. With `resource_version`,
        only if the Deployment has not changed since (ConflictError otherwise): how a gateway scales to zero
        without undoing another gateway's activity mark."""
        namespace = await self.namespace(entry)
        found = await self.deployment(entry)
        if found is None:
            raise DeployError(
                f"no Deployment in namespace {namespace!r}: run `mcpfleet deploy {entry.id}` first", server_id=entry.id
            )
        body: dict[str, Any] = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": found["metadata"]["name"], "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        if resource_version is not None:
            body["metadata"]["resourceVersion"] = resource_version
        await self.cluster.request(
            "PUT",
            KINDS["Deployment"],
            namespace,
            found["metadata"]["name"],
            subresource="scale",
            body=body,
            query={"fieldManager": manifests.SCALE_MANAGER},
        )

    async def annotate(self, entry: KubernetesServer, key: str, value: str) -> None:
        """Set one annotation on the entry's Deployment (a merge patch: nothing else changes)."""
        namespace = await self.namespace(entry)
        found = await self.deployment(entry)
        if found is None:
            return
        await self.cluster.request(
            "PATCH",
            KINDS["Deployment"],
            namespace,
            found["metadata"]["name"],
            body={"metadata": {"annotations": {key: value}}},
            content_type=MERGE,
            query={"fieldManager": ACTIVITY_MANAGER},
        )

    async def up(
        self, entry: KubernetesServer, replicas: int | None = None, *, progress: Progress | None = None
    ) -> list[ReplicaStatus]:
        """Apply the entry's objects, scale to `replicas` (default: the entry's) and wait until that many pods
        are ready (bounded by `timeouts.startup`, at least 60 s for image pulls); DeployError when they are
        not, naming the Deployment's own reason when it gives one."""
        want = entry.replicas if replicas is None else replicas
        await self.apply(entry, replicas_if_created=want)
        found = await self.deployment(entry)
        if found is not None and (found.get("spec") or {}).get("replicas") != want:
            await self.scale(entry, want)
        await self.wait_ready(entry, want, progress=progress)
        return await self.status(entry.id, entry)

    async def wait_ready(self, entry: KubernetesServer, want: int, *, progress: Progress | None = None) -> None:
        """Wait until the Deployment's rollout is complete, as `kubectl rollout status` judges it: the
        controller saw the last change (`observedGeneration`), `want` pods run the present template and are
        available, and no old one is left. Bounded by `timeouts.startup` (at least 60 s for image pulls);
        DeployError naming the Deployment's own reason when it gives one."""
        within = max(60.0, entry.timeouts.startup)
        deadline = time.monotonic() + within
        pause = READY_POLL
        told = -1
        while True:
            found = await self.deployment(entry)
            if found is None:
                raise DeployError("its Deployment is gone", server_id=entry.id)
            status = found.get("status") or {}
            ready = int(status.get("availableReplicas") or status.get("readyReplicas") or 0)
            if ready != told and progress is not None:
                progress(f"{entry.id}: {ready}/{want} pods ready")
                told = ready
            if _rolled_out(found, want):
                return
            if time.monotonic() > deadline:
                reason = _condition_message(status) + await self._pod_reasons(entry)
                setting = "timeouts.startup" if within == entry.timeouts.startup else "timeouts.startup, at least 60 s"
                raise DeployError(
                    f"{ready} of {want} pods ready after {within:g} s ({setting}){reason}", server_id=entry.id
                )
            await anyio.sleep(pause)
            pause = min(READY_POLL_MAX, pause * 2)

    async def _pod_reasons(self, entry: KubernetesServer) -> str:
        """Why the pods wait, as their containers say (`ErrImagePull: ...`), when this client may list pods."""
        try:
            pods = await self.status(entry.id, entry)
        except DeployError:
            return ""
        waiting = sorted({p.state.partition(" (")[2].rstrip(")") for p in pods if " (" in p.state})
        return f"; pods: {', '.join(waiting)}" if waiting else ""

    async def plan_down(self, server_id: str | None = None, entry: KubernetesServer | None = None) -> list[Change]:
        """What `down` would delete: the labelled Deployments and Services, and each of their servers' Secret
        (by its name: the gateway may not list Secrets, whose list would show their data)."""
        namespace = await self.namespace(entry)
        changes = []
        servers: set[str] = set()
        for kind in REMOVED_KINDS:
            for item in await self._labelled(kind, namespace, self._removal_selector(server_id)):
                metadata = item["metadata"]
                owner = (metadata.get("labels") or {}).get(manifests.SERVER)
                changes.append(Change("remove", kind, metadata["name"], owner, f"in namespace {namespace}"))
                servers.add(owner or "")
        if entry is not None and (entry.secret_env or entry.env):
            servers.add(entry.id)
        for owner in sorted(servers - {""}):
            for kind, name in (
                ("Secret", manifests.secret_name(self.project, owner)),
                ("ConfigMap", manifests.config_name(self.project, owner)),
            ):
                changes.append(Change("remove", kind, name, owner, f"in namespace {namespace}, if it exists"))
        return changes

    async def down(
        self, server_id: str | None = None, entry: KubernetesServer | None = None, *, created_by: str | None = None
    ) -> list[Change]:
        """Delete the objects of `server_id` (None: of the whole project) by label, the Deployment first
        (its pods get their grace period). `created_by`: only when the server's Deployment carries that
        `mcpfleet.io/created-by` (a gateway removes what a gateway made, never what the CLI deployed)."""
        namespace = await self.namespace(entry)
        if created_by is not None and entry is not None:
            found = await self.deployment(entry)
            if found is None or (found["metadata"].get("annotations") or {}).get(CREATED_BY) != created_by:
                return []
        changes = []
        for change in await self.plan_down(server_id, entry):
            deleted = await self.cluster.request(
                "DELETE",
                KINDS[change.kind],
                namespace,
                change.name,
                body={"propagationPolicy": "Background"},
                missing_ok=True,
            )
            if deleted is not None:  # None: it was not there (a Secret of a server without secret_env)
                changes.append(dataclasses.replace(change, reason=change.reason.removesuffix(", if it exists")))
        return changes

    def _removal_selector(self, server_id: str | None) -> dict[str, str]:
        return {manifests.MANAGED_BY: manifests.MANAGER, **manifests.selector(self.project, server_id)}


def _scale_part(deployment: dict[str, Any]) -> dict[str, Any]:
    """The fields `mcpfleet-scale` owns on a Deployment: `spec.replicas` and the created-by annotation."""
    metadata = deployment["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "annotations": {CREATED_BY: metadata["annotations"][CREATED_BY]},
        },
        "spec": {"replicas": deployment["spec"]["replicas"]},
    }


def _owner(deployment: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to `deployment`: deleting it deletes the owned object (background cascade)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
        "uid": deployment["metadata"]["uid"],
        "controller": False,
        "blockOwnerDeletion": False,
    }


def _masked(body: dict[str, Any]) -> dict[str, Any]:
    if body["kind"] != "Secret":
        return body
    return {**body, "data": dict.fromkeys(body.get("data") or {}, "***")}


def _container_port(pod: dict[str, Any]) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == manifests.PORT_NAME:
                return int(port["containerPort"])
    return None


def _exit_code(status: dict[str, Any]) -> int | None:
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("lastState") or {}).get("terminated") or (container.get("state") or {}).get(
            "terminated"
        )
        if terminated and terminated.get("exitCode") is not None:
            return int(terminated["exitCode"])
    return None


def _rolled_out(deployment: dict[str, Any], want: int) -> bool:
    metadata, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    if int(status.get("observedGeneration") or 0) < int(metadata.get("generation") or 0):
        return False
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or status.get("readyReplicas") or 0)
    return updated >= want and available >= want and int(status.get("replicas") or 0) <= want


def _waiting_reason(status: dict[str, Any]) -> str:
    """A waiting container's reason (`ErrImagePull`, `CrashLoopBackOff`, `CreateContainerConfigError`)."""
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return str(waiting["reason"])
    return ""


def _condition_message(status: dict[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("message"):
            return f": {condition['message']}"
    return ""
