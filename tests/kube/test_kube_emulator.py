"""Probes of the Kubernetes test support with the real `kubernetes_asyncio` client: the API emulator
(kube_emulator.py, which leans on kmock internals, so these guard it) and the cluster harness (kube_cluster.py)
running the demo server as pods on 127.0.0.N."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio
import httpx2
import pytest
from kube_cluster import Cluster
from kube_emulator import KubeEmulator
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client import ApiException
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

KubeApi = Callable[..., AbstractAsyncContextManager[KubeEmulator]]
T = TypeVar("T")
BOUND = 90.0  # seconds any one test may take on a busy machine
NS = "mcp"
DEMO = "mcpfleet/demo:dev"
IMAGES = {DEMO: lambda container, ip: [sys.executable, "-m", "mcpfleet.demo", *container.get("args", []), "--host", ip]}


def run(main: Callable[[], Awaitable[T]]) -> T:
    """`main()` bounded by BOUND; shortly before the bound, every task's stack goes to stderr (shown on failure)."""

    async def watchdog() -> None:
        await asyncio.sleep(BOUND - 5)
        for task in asyncio.all_tasks():
            task.print_stack(limit=8, file=sys.stderr)

    async def bounded() -> T:
        dog = asyncio.create_task(watchdog())
        try:
            with anyio.fail_after(BOUND):
                return await main()
        finally:
            dog.cancel()

    return anyio.run(bounded)


def deployment(replicas: int = 1, pre_stop: int = 0, name: str = "demo") -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "demo",
        "image": DEMO,
        "args": ["http", "--port", "8080", "--replica", "{hostname}"],  # socket.gethostname(): the pod name
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
    }
    if pre_stop:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": pre_stop}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
        },
    }


def service(name: str = "demo") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "clusterIP": "None",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
        },
    }


def configmap(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": {"k": name}}


async def status_of(call: Awaitable[Any]) -> int:
    with pytest.raises(ApiException) as caught:
        await call
    return int(caught.value.status)


# --- the emulator -------------------------------------------------------------------------------------------


def test_namespaces_are_created_and_objects_need_one(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, kube.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespace({"metadata": {"name": NS}})
            assert (await core.read_namespace(NS)).status.phase == "Active"
            assert NS in [n.metadata.name for n in (await core.list_namespace()).items]
            assert await status_of(core.create_namespaced_secret("nowhere", {"metadata": {"name": "s"}})) == 404
            assert await status_of(core.read_namespaced_secret("s", NS)) == 404
            empty = await core.list_namespaced_secret(NS)
            assert empty.items == [] and int(empty.metadata.resource_version) > 0

    run(main)


def test_label_and_field_selectors_on_list_and_delete_collection(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, kube.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespace({"metadata": {"name": NS}})
            for name, labels in [
                ("a", {"app": "x", "tier": "web"}),
                ("b", {"app": "y"}),
                ("c", {"app": "z", "tier": "db"}),
            ]:
                await core.create_namespaced_config_map(NS, configmap(name, labels))

            async def names(**selectors: str) -> list[str]:
                return [i.metadata.name for i in (await core.list_namespaced_config_map(NS, **selectors)).items]

            assert await names(label_selector="app=x") == ["a"]
            assert await names(label_selector="app==y") == ["b"]
            assert await names(label_selector="app!=x") == ["b", "c"]
            assert await names(label_selector="app in (x, z)") == ["a", "c"]
            assert await names(label_selector="app notin (x,z)") == ["b"]
            assert await names(label_selector="tier") == ["a", "c"]
            assert await names(label_selector="!tier") == ["b"]
            assert await names(label_selector="tier,app in (z)") == ["c"]
            assert await names(field_selector="metadata.name=b") == ["b"]
            assert await names(field_selector=f"metadata.namespace={NS},metadata.name!=b") == ["a", "c"]
            await core.delete_collection_namespaced_config_map(NS, label_selector="tier")
            assert await names() == ["b"]

    run(main)


def test_create_replace_patch_and_server_side_apply(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, kube.api_client() as api:
            apps = client.AppsV1Api(api)
            await client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
            body = deployment(2)
            apply = "application/apply-patch+yaml"
            assert await status_of(apps.patch_namespaced_deployment("demo", NS, body, _content_type=apply)) == 422
            created = await apps.patch_namespaced_deployment("demo", NS, body, field_manager="t", _content_type=apply)
            assert created.metadata.generation == 1 and created.metadata.uid and created.metadata.creation_timestamp
            assert await status_of(apps.create_namespaced_deployment(NS, body)) == 409
            body["spec"]["replicas"] = 3
            applied = await apps.patch_namespaced_deployment("demo", NS, body, field_manager="t", _content_type=apply)
            assert applied.spec.replicas == 3 and applied.metadata.generation == 2
            assert int(applied.metadata.resource_version) > int(created.metadata.resource_version)
            labelled = await apps.patch_namespaced_deployment("demo", NS, {"metadata": {"labels": {"extra": "1"}}})
            assert labelled.metadata.labels == {"app": "demo", "extra": "1"} and labelled.metadata.generation == 2
            op = [{"op": "replace", "path": "/spec/replicas", "value": 4}]
            assert (await apps.patch_namespaced_deployment("demo", NS, op)).spec.replicas == 4
            stale = {**body, "metadata": {**body["metadata"], "resourceVersion": created.metadata.resource_version}}
            assert await status_of(apps.replace_namespaced_deployment("demo", NS, stale)) == 409
            current = await apps.read_namespaced_deployment("demo", NS)
            fresh = {**body, "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version}}
            assert (await apps.replace_namespaced_deployment("demo", NS, fresh)).spec.replicas == 3
            merged = await apps.patch_namespaced_deployment(
                "demo", NS, {"spec": {"replicas": 5}}, _content_type="application/merge-patch+json"
            )
            assert merged.spec.replicas == 5 and merged.status.replicas is None  # status untouched by spec writes

    run(main)


def test_scale_subresource_with_conflicts(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, kube.api_client() as api:
            apps = client.AppsV1Api(api)
            await client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
            await apps.create_namespaced_deployment(NS, deployment(2))
            scale = await apps.read_namespaced_deployment_scale("demo", NS)
            assert (scale.kind, scale.api_version, scale.spec.replicas, scale.status.replicas) == (
                "Scale",
                "autoscaling/v1",
                2,
                0,
            )
            patched = await apps.patch_namespaced_deployment_scale("demo", NS, {"spec": {"replicas": 3}})
            assert patched.spec.replicas == 3
            assert (await apps.read_namespaced_deployment("demo", NS)).spec.replicas == 3
            stale = {
                "metadata": {"name": "demo", "resourceVersion": scale.metadata.resource_version},
                "spec": {"replicas": 1},
            }
            assert await status_of(apps.replace_namespaced_deployment_scale("demo", NS, stale)) == 409
            stale_patch = {"metadata": {"resourceVersion": scale.metadata.resource_version}, "spec": {"replicas": 1}}
            assert await status_of(apps.patch_namespaced_deployment_scale("demo", NS, stale_patch)) == 409
            fresh = {
                "metadata": {"name": "demo", "resourceVersion": patched.metadata.resource_version},
                "spec": {"replicas": 1},
            }
            assert (await apps.replace_namespaced_deployment_scale("demo", NS, fresh)).spec.replicas == 1
            assert (await apps.read_namespaced_deployment("demo", NS)).spec.replicas == 1

    run(main)


def test_watch_events_resume_and_timeout(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, kube.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespace({"metadata": {"name": NS}})
            start = (await core.list_namespaced_config_map(NS)).metadata.resource_version
            await core.create_namespaced_config_map(NS, configmap("a", {"w": "1"}))
            await core.create_namespaced_config_map(NS, configmap("other"))
            middle = (await core.patch_namespaced_config_map("a", NS, {"data": {"k": "2"}})).metadata.resource_version
            await core.delete_namespaced_config_map("a", NS)

            async def events(since: str, **kw: Any) -> list[tuple[str, str]]:
                seen = []
                async with watch.Watch() as w:
                    stream = w.stream(core.list_namespaced_config_map, NS, resource_version=since, **kw)
                    async for event in stream:  # ends when the server's timeoutSeconds is up
                        seen.append((event["type"], event["object"].metadata.name))
                return seen

            everything = [("ADDED", "a"), ("ADDED", "other"), ("MODIFIED", "a"), ("DELETED", "a")]
            assert await events(start, timeout_seconds=1) == everything
            assert await events(middle, timeout_seconds=1) == [("DELETED", "a")]
            assert await events(start, timeout_seconds=1, label_selector="w=1") == [
                ("ADDED", "a"),
                ("MODIFIED", "a"),
                ("DELETED", "a"),
            ]
            # a live watch, cluster-wide, from the current state: synthetic ADDED, then what happens
            async with watch.Watch() as w:
                stream = w.stream(core.list_config_map_for_all_namespaces, timeout_seconds=30)
                assert (await anext(stream))["object"].metadata.name == "other"
                await core.create_namespaced_config_map(NS, configmap("late"))
                assert ((e := await anext(stream))["type"], e["object"].metadata.name) == ("ADDED", "late")

    run(main)


def test_watch_from_a_compacted_version_is_gone(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, kube.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespace({"metadata": {"name": NS}})
            old = (await core.create_namespaced_config_map(NS, configmap("a"))).metadata.resource_version
            await core.patch_namespaced_config_map("a", NS, {"data": {"k": "2"}})
            kube.compact()

            async def resume() -> None:
                async with watch.Watch() as w:
                    async for _ in w.stream(
                        core.list_namespaced_config_map, NS, resource_version=old, timeout_seconds=5
                    ):
                        pass

            with pytest.raises(ApiException) as gone:
                await resume()
            assert gone.value.status == 410
            latest = (await core.list_namespaced_config_map(NS)).metadata.resource_version
            async with watch.Watch() as w:  # from the list's version: nothing missed, nothing gone
                assert [
                    e
                    async for e in w.stream(
                        core.list_namespaced_config_map, NS, resource_version=latest, timeout_seconds=1
                    )
                ] == []

    run(main)


def test_denied_verbs_answer_403_with_a_status(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api(user="system:serviceaccount:mcp:mcpfleet") as kube, kube.api_client() as api:
            apps = client.AppsV1Api(api)
            await client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
            await apps.create_namespaced_deployment(NS, deployment())
            kube.deny("patch", "apps", "deployments", NS)
            kube.deny("list", "apps", "deployments")
            with pytest.raises(ApiException) as forbidden:
                await apps.patch_namespaced_deployment("demo", NS, {"spec": {"replicas": 2}})
            assert forbidden.value.status == 403
            assert json.loads(forbidden.value.body)["message"] == (
                'deployments.apps "demo" is forbidden: User "system:serviceaccount:mcp:mcpfleet" cannot patch '
                'resource "deployments" in API group "apps" in the namespace "mcp"'
            )
            assert await status_of(apps.list_deployment_for_all_namespaces()) == 403
            assert (await apps.read_namespaced_deployment("demo", NS)).spec.replicas == 1  # get is allowed
            assert (
                await apps.patch_namespaced_deployment_scale("demo", NS, {"spec": {"replicas": 2}})
            ).spec.replicas == 2
            kube.allow_all()
            assert (await apps.patch_namespaced_deployment("demo", NS, {"spec": {"replicas": 3}})).spec.replicas == 3

    run(main)


def test_storage_only_resources_and_selector_moves_in_watches(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, kube.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespace({"metadata": {"name": NS}})
            meta = {"name": "x", "labels": {"app": "demo"}}
            lease = await client.CoordinationV1Api(api).create_namespaced_lease(
                NS, {"metadata": meta, "spec": {"holderIdentity": "a"}}
            )
            assert lease.spec.holder_identity == "a"
            pdb = {"metadata": meta, "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "demo"}}}}
            assert (
                await client.PolicyV1Api(api).create_namespaced_pod_disruption_budget(NS, pdb)
            ).spec.max_unavailable == 1
            target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo"}
            hpa = {"metadata": meta, "spec": {"scaleTargetRef": target, "minReplicas": 1, "maxReplicas": 3}}
            autoscaling = client.AutoscalingV2Api(api)
            assert (await autoscaling.create_namespaced_horizontal_pod_autoscaler(NS, hpa)).spec.max_replicas == 3
            slices = client.DiscoveryV1Api(api)
            eps = {"metadata": meta, "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.9"]}]}
            since = (await slices.create_namespaced_endpoint_slice(NS, eps)).metadata.resource_version
            await slices.patch_namespaced_endpoint_slice("x", NS, {"metadata": {"labels": {"app": "other"}}})
            await slices.patch_namespaced_endpoint_slice("x", NS, {"metadata": {"labels": {"app": "demo"}}})
            async with watch.Watch() as w:
                stream = w.stream(
                    slices.list_namespaced_endpoint_slice,
                    NS,
                    label_selector="app=demo",
                    resource_version=since,
                    timeout_seconds=1,
                )
                assert [e["type"] async for e in stream] == ["DELETED", "ADDED"]
            await core.delete_namespace(NS)
            assert kube.list("leases") == kube.list("endpointslices") == []

    run(main)


def test_cut_watches_ends_open_streams(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, kube.api_client() as api:
            core = client.CoreV1Api(api)
            started = asyncio.Event()

            async def follow() -> None:
                async with watch.Watch() as w:
                    async for _ in w.stream(core.list_namespace, timeout_seconds=300):
                        started.set()  # the synthetic ADDED events: the stream is open

            task = asyncio.create_task(follow())
            with anyio.fail_after(20):
                await started.wait()
                kube.cut_watches()
                await task  # ended by the server, long before its 300 s
            assert kube.open_watches == 0

    run(main)


def test_api_down_and_back_keeps_objects(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, kube.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespace({"metadata": {"name": NS}})
            await core.create_namespaced_config_map(NS, configmap("kept"))
            url = kube.url
            async with kube.down():
                with pytest.raises(aiohttp.ClientConnectionError):
                    await core.read_namespaced_config_map("kept", NS)
            assert kube.url == url
            assert (await core.read_namespaced_config_map("kept", NS)).data == {"k": "kept"}

    run(main)


def test_request_log_names_kubernetes_verbs(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, kube.api_client() as api:
            core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            await core.create_namespace({"metadata": {"name": NS}})
            await apps.create_namespaced_deployment(NS, deployment())
            current = await apps.read_namespaced_deployment("demo", NS)
            await apps.replace_namespaced_deployment("demo", NS, current)
            await apps.patch_namespaced_deployment_scale("demo", NS, {"spec": {"replicas": 2}})
            await apps.list_namespaced_deployment(NS, label_selector="app=demo")
            async with watch.Watch() as w:
                async for _ in w.stream(apps.list_namespaced_deployment, NS, timeout_seconds=1):
                    pass
            await apps.delete_namespaced_deployment("demo", NS)
            await core.delete_collection_namespaced_secret(NS)
            assert [(c.verb, c.group, c.resource, c.subresource, c.namespace, c.name) for c in kube.calls] == [
                ("create", "", "namespaces", None, None, None),
                ("create", "apps", "deployments", None, NS, None),
                ("get", "apps", "deployments", None, NS, "demo"),
                ("update", "apps", "deployments", None, NS, "demo"),
                ("patch", "apps", "deployments", "scale", NS, "demo"),
                ("list", "apps", "deployments", None, NS, None),
                ("watch", "apps", "deployments", None, NS, None),
                ("delete", "apps", "deployments", None, NS, "demo"),
                ("deletecollection", "", "secrets", None, NS, None),
            ]

    run(main)


def test_pod_logs_tail_and_follow_and_kubeconfig(kube_api: KubeApi, tmp_path: Path) -> None:
    async def main() -> None:
        async with kube_api() as kube:
            configuration = client.Configuration()
            await config.load_kube_config(
                str(kube.write_kubeconfig(tmp_path / "kubeconfig")), client_configuration=configuration
            )
            async with client.ApiClient(configuration) as api:
                core = client.CoreV1Api(api)
                kube.create("pods", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})
                kube.append_log("default", "p", b"one\ntwo\nthree\n")
                assert await core.read_namespaced_pod_log("p", "default") == "one\ntwo\nthree\n"
                assert await core.read_namespaced_pod_log("p", "default", tail_lines=2) == "two\nthree\n"
                assert await status_of(core.read_namespaced_pod_log("missing", "default")) == 404
                lines = []
                async with watch.Watch() as w:
                    async for line in w.stream(core.read_namespaced_pod_log, "p", "default", tail_lines=1):
                        lines.append(line)
                        if line == "three\n":
                            kube.append_log("default", "p", b"four\n")
                        else:
                            kube.close_log("default", "p")  # the container ended: the follow ends
                assert lines == ["three\n", "four\n"]

    run(main)


# --- the cluster harness ------------------------------------------------------------------------------------


async def whoami(ip: str) -> str:
    with anyio.fail_after(30):
        async with (
            httpx2.AsyncClient(timeout=30) as http,
            Client(streamable_http_client(f"http://{ip}:8080/mcp", http_client=http), mode="legacy") as mcp,
        ):
            result: Any = (await mcp.call_tool("whoami", {})).structured_content
            return str(result["replica"])


def slice_endpoints(kube: KubeEmulator) -> list[dict[str, Any]]:
    return [e for s in kube.list("endpointslices", NS, "kubernetes.io/service-name=demo") for e in s["endpoints"]]


def ready_replicas(kube: KubeEmulator, name: str = "demo") -> int:
    return int(kube.get("deployments", NS, name).get("status", {}).get("readyReplicas", 0))


def test_deployment_pods_serve_mcp_on_their_own_addresses(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, Cluster(kube, IMAGES) as cluster, kube.api_client() as api:
            core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            await core.create_namespace({"metadata": {"name": NS}})
            apply = {"field_manager": "test", "_content_type": "application/apply-patch+yaml"}
            await apps.patch_namespaced_deployment("demo", NS, deployment(2), **apply)
            await core.patch_namespaced_service("demo", NS, service(), **apply)
            await cluster.wait_for(lambda: ready_replicas(kube) == 2, 60, "2 ready replicas")
            pods = (await core.list_namespaced_pod(NS, label_selector="app=demo")).items
            assert len(pods) == 2
            for pod in pods:
                assert pod.status.pod_ip.startswith("127.0.0.") and pod.status.pod_ip != "127.0.0.1"
                assert pod.metadata.owner_references[0].kind == "Deployment"
                assert await whoami(pod.status.pod_ip) == pod.metadata.name
            assert len({p.status.pod_ip for p in pods}) == 2
            await cluster.wait_for(lambda: len(slice_endpoints(kube)) == 2, 30, "2 endpoints")
            slices = (await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(NS)).items
            assert len(slices) == 1 and slices[0].metadata.name.startswith("demo-")
            assert [(p.name, p.port, p.protocol) for p in slices[0].ports] == [("http", 8080, "TCP")]
            assert {e.target_ref.name for e in slices[0].endpoints} == {p.metadata.name for p in pods}
            assert all(e.conditions.ready and e.conditions.serving for e in slices[0].endpoints)
            status = (await apps.read_namespaced_deployment("demo", NS)).status
            assert (status.replicas, status.available_replicas, status.updated_replicas) == (2, 2, 2)
            log = await core.read_namespaced_pod_log(pods[0].metadata.name, NS)
            assert f"mcpfleet-demo replica {pods[0].metadata.name}" in log
        assert cluster.processes() == {}

    run(main)


def test_scaling_drains_through_terminating_endpoints_across_slices(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with (
            kube_api() as kube,
            Cluster(kube, IMAGES, max_endpoints_per_slice=2) as cluster,
            kube.api_client() as api,
        ):
            core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            discovery = client.DiscoveryV1Api(api)
            await core.create_namespace({"metadata": {"name": NS}})
            await apps.create_namespaced_deployment(NS, deployment(1, pre_stop=10))
            await core.create_namespaced_service(NS, service())
            await cluster.wait_for(lambda: ready_replicas(kube) == 1, 60, "1 ready replica")
            (first,) = cluster.pods(NS, {"app": "demo"})
            await apps.patch_namespaced_deployment_scale("demo", NS, {"spec": {"replicas": 3}})
            await cluster.wait_for(lambda: ready_replicas(kube) == 3, 60, "3 ready replicas")
            await cluster.wait_for(lambda: sum(e["conditions"]["ready"] for e in slice_endpoints(kube)) == 3, 30)
            assert len(kube.list("endpointslices", NS)) == 2  # 3 endpoints, at most 2 a slice

            seen: list[dict[str, Any]] = []
            since = (await discovery.list_namespaced_endpoint_slice(NS)).metadata.resource_version

            async def follow() -> None:
                async with watch.Watch() as w:
                    async for event in w.stream(
                        discovery.list_namespaced_endpoint_slice, NS, resource_version=since, timeout_seconds=60
                    ):
                        seen.extend(event["raw_object"].get("endpoints") or [])
                        live = slice_endpoints(kube)
                        if len(live) == 1 and not live[0]["conditions"]["terminating"]:
                            return

            watcher = asyncio.create_task(follow())
            await apps.patch_namespaced_deployment_scale("demo", NS, {"spec": {"replicas": 1}})
            await watcher
            draining = [e for e in seen if e["conditions"]["terminating"]]
            assert draining and all(not e["conditions"]["ready"] for e in draining)
            assert any(e["conditions"]["serving"] for e in draining)  # still serving during preStop
            left = cluster.pods(NS, {"app": "demo"})
            assert [p["metadata"]["name"] for p in left] == [first["metadata"]["name"]]  # the newest went first
            await cluster.wait_for(lambda: len(cluster.processes()) == 1, 30, "one process")
            assert len(kube.list("endpointslices", NS)) == 1
            assert cluster.created[(NS, "demo")] == 3

    run(main)


def test_killed_process_restarts_in_the_same_pod(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, Cluster(kube, IMAGES, restart_backoff=(0.1, 0.5)) as cluster:
            kube.create("namespaces", {"metadata": {"name": NS}})
            kube.create("secrets", {"metadata": {"name": "words", "namespace": NS}, "stringData": {"GREETING": "hi"}})
            spec = deployment(1)
            container = spec["spec"]["template"]["spec"]["containers"][0]
            container["args"][-1] = "$(GREETING)-$(POD_NAME)"  # expanded by the kubelet from the env below
            container["envFrom"] = [{"secretRef": {"name": "words"}}]
            container["env"] = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
            container["readinessProbe"] = {"httpGet": {"path": "/stats", "port": 8080}}
            kube.create("deployments", spec)
            await cluster.wait_for(lambda: ready_replicas(kube) == 1, 60, "ready")
            (pod,) = cluster.pods(NS)
            assert await whoami(cluster.ip_of(pod["metadata"]["name"])) == f"hi-{pod['metadata']['name']}"
            name, pid = pod["metadata"]["name"], cluster.processes()[pod["metadata"]["name"]]
            cluster.kill(name)

            def restarted() -> bool:
                (now,) = cluster.pods(NS)
                restarts = now["status"]["containerStatuses"][0]["restartCount"]
                return bool(restarts == 1 and now["metadata"]["name"] == name and ready_replicas(kube) == 1)

            await cluster.wait_for(restarted, 60, "restarted and ready")
            assert cluster.processes()[name] != pid
            assert await whoami(cluster.ip_of(name)) == f"hi-{name}"
            assert cluster.created[(NS, "demo")] == 1  # the same pod, no new ones

    run(main)


def test_rollout_replaces_pods_and_delete_collects_everything_owned(kube_api: KubeApi) -> None:
    async def main() -> None:
        async with kube_api() as kube, Cluster(kube, IMAGES) as cluster, kube.api_client() as api:
            core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            await core.create_namespace({"metadata": {"name": NS}})
            created = await apps.create_namespaced_deployment(NS, deployment(1))
            owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo", "uid": created.metadata.uid}
            await core.create_namespaced_service(
                NS, {**service(), "metadata": {"name": "demo", "ownerReferences": [owner]}}
            )
            await core.create_namespaced_secret(
                NS, {"metadata": {"name": "token", "ownerReferences": [owner]}, "stringData": {"t": "x"}}
            )
            await cluster.wait_for(lambda: ready_replicas(kube) == 1, 60, "ready")
            (old,) = cluster.pods(NS)
            env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "t"}}}]
            patch = {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [{**deployment()["spec"]["template"]["spec"]["containers"][0], "env": env}]
                        }
                    }
                }
            }
            await apps.patch_namespaced_deployment("demo", NS, patch)

            def rolled() -> bool:
                pods = cluster.pods(NS)
                return (
                    len(pods) == 1
                    and pods[0]["metadata"]["uid"] != old["metadata"]["uid"]
                    and ready_replicas(kube) == 1
                )

            await cluster.wait_for(rolled, 60, "rolled out")
            (new,) = cluster.pods(NS)
            assert new["metadata"]["labels"]["pod-template-hash"] != old["metadata"]["labels"]["pod-template-hash"]
            status = kube.get("deployments", NS, "demo")["status"]
            assert status["observedGeneration"] == 2 and status["updatedReplicas"] == 1
            await cluster.wait_for(lambda: len(slice_endpoints(kube)) == 1, 30, "one endpoint")

            await apps.delete_namespaced_deployment("demo", NS)

            def collected() -> bool:
                leftovers = [kube.list(p, NS) for p in ("pods", "services", "secrets", "endpointslices")]
                return not any(leftovers) and not cluster.processes()

            await cluster.wait_for(collected, 60, "pods, processes, service, secret and slices gone")
        assert cluster.processes() == {}

    run(main)
