"""The Kubernetes backend's pure parts: registry fields, the shared container spec, manifests, and how
EndpointSlices become a replica set (Plan Document, sections 11 and 12.4)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mcpfleet.deploy.container import ADAPTER, container_spec
from mcpfleet.deploy.docker import spec as docker_spec
from mcpfleet.deploy.kubernetes import manifests, rbac
from mcpfleet.deploy.kubernetes.source import base_url, replica_set
from mcpfleet.errors import RegistryError
from mcpfleet.registry.loader import parse_registry
from mcpfleet.registry.model import DockerServer, KubernetesServer
from mcpfleet.replicas.source import ReplicaAddress


def entry(text: str) -> Any:
    return parse_registry(f"servers:\n  s: {text}\n", "r.yaml", environ={}).servers["s"]


def problems(text: str, server_id: str = "s") -> list[str]:
    try:
        parse_registry(f"servers:\n  {server_id}: {text}\n", "r.yaml", environ={})
    except RegistryError as exc:
        return [str(p) for p in exc.problems]
    return []


# --- registry -------------------------------------------------------------------------------------------


def test_kubernetes_entry_fields_and_defaults() -> None:
    found = entry(
        "{type: k8s, image: mcpfleet/demo:dev, port: 8080, replicas: 2, namespace: mcp, start: on_demand,"
        " idle_timeout: 60, env: {A: '1'}, secret_env: {T: x}, resources: {cpu: 250m, memory: 128Mi}}"
    )
    assert isinstance(found, KubernetesServer)
    assert (found.type, found.replicas, found.namespace, found.idle_timeout) == ("kubernetes", 2, "mcp", 60)
    assert found.discovery == "endpointslices" and not found.starts_on_boot and not found.stdio


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{type: k8s, port: 80}", "exactly one of 'image' or 'chart'"),
        ("{type: k8s, image: i, chart: c, port: 80}", "exactly one of 'image' or 'chart'"),
        ("{type: k8s, image: i, port: 80, namespace: Bad_NS}", "not a valid Kubernetes namespace name"),
        ("{type: k8s, image: i}", "a stdio server (no 'port') needs 'command'"),
        ("{type: k8s, chart: ./c}", "a 'chart' entry needs the 'port'"),
        ("{type: k8s, image: i, port: 80, values: {a: 1}}", "'values' and 'chart_version' are for 'chart' entries"),
        ("{type: k8s, image: i, port: 80, security: {user: app}}", "numeric user"),
        ("{type: k8s, image: i, port: 80, discovery: consul}", "discovery"),
        ("{type: k8s, image: i, port: 80, volumes: ['/a:/b']}", "applies only to docker entries"),
        ("{type: k8s, image: i, port: 80, pool: {min: 1}}", "'pool' and 'stateless' are for stdio servers"),
        ("{type: k8s, image: i, port: 80, resources: {memory: 100m}}", "thousandths of a byte"),
        ("{type: k8s, image: 'http://x/y', port: 80}", "not an image reference"),
        ("{type: k8s, image: i, command: [x], pool: {max_lifetime: 60}}", "pool.max_lifetime is not carried"),
        ("{type: k8s, chart: ./c, port: 80, env: {A: b}}", "a 'chart' entry's pods are the chart's"),
    ],
)
def test_each_kubernetes_field_is_checked(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_a_kubernetes_server_id_must_be_a_label_value() -> None:
    assert any("must end with a letter or digit" in p for p in problems("{type: k8s, image: i, port: 80}", "web-"))
    assert problems("{type: k8s, image: i, port: 80}", "a.b_c") == []


# --- one container spec for both backends ---------------------------------------------------------------

COMMON = (
    "image: mcpfleet/demo:dev, command: [mcpfleet-demo], args: [http, --port, '8080'], port: 8080,"
    " env: {A: '1', T: literal}, secret_env: {T: s3cret}, resources: {cpu: 500m, memory: 256Mi},"
    " security: {read_only: true, user: '10001', cap_add: [NET_BIND_SERVICE]}, pull: never"
)


def test_docker_and_kubernetes_read_the_same_fields_the_same_way() -> None:
    docker = entry(f"{{type: docker, {COMMON}}}")
    kube = entry(f"{{type: k8s, {COMMON}}}")
    assert isinstance(docker, DockerServer) and isinstance(kube, KubernetesServer)
    assert container_spec(docker) == container_spec(kube)
    body = docker_spec.container_body(docker, project="p", name="p-s-1", role="replica", digest="d")
    pod = manifests.pod_template(kube, project="p")["spec"]
    container = pod["containers"][0]
    assert body["Entrypoint"] == container["command"] == ["mcpfleet-demo"]
    assert body["Cmd"] == container["args"] == ["http", "--port", "8080"]
    assert body["Image"] == container["image"] == "mcpfleet/demo:dev"
    assert "T=s3cret" in body["Env"] and "A=1" in body["Env"]
    # Kubernetes: settings in a ConfigMap, the secret value in the Secret only (it wins: read last); the
    # literal of the same name is left out of the ConfigMap; no value in the pod template.
    assert "env" not in container
    assert container["envFrom"] == [
        {"configMapRef": {"name": manifests.config_name("p", "s")}},
        {"secretRef": {"name": manifests.secret_name("p", "s")}},
    ]
    assert manifests.config_map(kube, namespace="n", project="p")["data"] == {"A": "1"}
    assert body["HostConfig"]["Memory"] == 256 * 2**20 and container["resources"]["limits"] == {"memory": "256Mi"}
    assert body["HostConfig"]["NanoCpus"] == 5 * 10**8 and container["resources"]["requests"]["cpu"] == "500m"
    assert "cpu" not in container["resources"]["limits"]  # a CPU limit would throttle tool calls
    assert body["HostConfig"]["ReadonlyRootfs"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert body["HostConfig"]["CapAdd"] == ["NET_BIND_SERVICE"] == container["securityContext"]["capabilities"]["add"]
    assert body["User"] == "10001" and pod["securityContext"]["runAsUser"] == 10001
    assert container["imagePullPolicy"] == "Never"


def test_a_kubernetes_stdio_server_runs_behind_the_adapter() -> None:
    kube = entry("{type: k8s, image: mcpfleet/demo:dev, command: [mcpfleet-demo], args: [stdio], replicas: 3}")
    assert kube.replicas == 3  # its pods are HTTP replicas, balanced like any others
    spec = container_spec(kube)
    assert spec.entrypoint is not None and spec.entrypoint[:2] == ADAPTER
    assert spec.entrypoint[-3:] == ("--", "mcpfleet-demo", "stdio") and spec.port == 8080 and spec.args is None
    container = manifests.pod_template(kube, project="p")["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    http = entry("{type: k8s, image: mcpfleet/demo:dev, port: 9000}")
    assert manifests.pod_template(http, project="p")["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]


# --- manifests ------------------------------------------------------------------------------------------


def test_objects_of_an_entry() -> None:
    kube = entry("{type: k8s, image: mcpfleet/demo:dev, port: 8080, replicas: 3, secret_env: {TOKEN: abc}}")
    found = manifests.objects(kube, namespace="mcp", project="fleet")
    assert [o["kind"] for o in found] == ["Secret", "Deployment", "Service"]
    secret, deployment, service = found
    assert base64.b64decode(secret["data"]["TOKEN"]) == b"abc"
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"] == {manifests.PROJECT: "fleet", manifests.SERVER: "s"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels[manifests.MANAGED_BY] == "mcpfleet" and labels[manifests.SERVER] == "s"
    assert service["spec"]["clusterIP"] == "None"  # headless: the gateway balances, not kube-proxy
    assert service["spec"]["ports"] == [{"name": "mcp", "port": 8080, "targetPort": "mcp", "protocol": "TCP"}]
    assert all(o["metadata"]["namespace"] == "mcp" for o in found)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
    assert pod["containers"][0]["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] == manifests.PRE_STOP_SECONDS


@pytest.mark.parametrize(
    ("project", "server_id"), [("mcpfleet", "github"), ("p", "a.b"), ("p", "a_b"), ("9p", "x"), ("p", "x" * 63)]
)
def test_object_names_are_dns_labels_and_distinct(project: str, server_id: str) -> None:
    name = manifests.object_name(project, server_id)
    assert len(name) <= 63 and name[0].isalpha() and all(c.isalnum() or c == "-" for c in name)
    assert name == name.lower() and not name.endswith("-")
    if project == "p" and server_id in ("a.b", "a_b"):
        assert manifests.object_name("p", "a.b") != manifests.object_name("p", "a_b")


def test_rbac_lists_no_wildcards_and_merges() -> None:
    merged = rbac.merged(rbac.GATEWAY)
    assert ("discovery.k8s.io", "endpointslices") in merged and ("apps", "deployments/scale") in merged
    assert all("*" not in verbs and "*" not in resource for (_, resource), verbs in merged.items())


# --- EndpointSlices -------------------------------------------------------------------------------------


def slice_(endpoints: list[dict[str, Any]], *, ports: Any = None, address_type: str = "IPv4") -> dict[str, Any]:
    return {
        "addressType": address_type,
        "ports": ports if ports is not None else [{"name": "mcp", "port": 8080}],
        "endpoints": endpoints,
    }


def ep(address: str, **conditions: bool) -> dict[str, Any]:
    return {"addresses": [address], "conditions": conditions}


def test_ready_serving_and_terminating_endpoints() -> None:
    found = replica_set(
        [
            slice_(
                [
                    ep("10.0.0.1", ready=True, serving=True, terminating=False),
                    ep("10.0.0.2", ready=False, serving=True, terminating=True),  # draining
                    ep("10.0.0.3", ready=False, serving=False, terminating=True),  # gone
                    ep("10.0.0.4", ready=False),  # not ready yet (serving taken from ready)
                    ep("10.0.0.5"),  # no conditions: ready (the API's rule for an unknown state)
                ]
            )
        ],
        "mcp",
    )
    assert found == (
        ReplicaAddress("http://10.0.0.1:8080"),
        ReplicaAddress("http://10.0.0.2:8080", serving=False),
        ReplicaAddress("http://10.0.0.5:8080"),
    )


def test_several_slices_named_ports_and_address_families() -> None:
    found = replica_set(
        [
            slice_([ep("10.0.0.1", ready=True)]),
            slice_([ep("fd00::7", ready=True)], address_type="IPv6"),
            slice_([ep("10.0.0.9", ready=True)], ports=[{"name": "metrics", "port": 9090}]),  # not our port
            slice_([ep("10.0.0.8", ready=True)], ports=[{"port": 7000}]),  # one unnamed port: it
            slice_([ep("pod.example", ready=True)], address_type="FQDN"),  # deprecated: ignored
            slice_([ep("10.0.0.1", ready=False, serving=True, terminating=True)]),  # same address, serving wins
        ],
        "mcp",
    )
    assert found == (
        ReplicaAddress("http://10.0.0.1:8080"),
        ReplicaAddress("http://10.0.0.8:7000"),
        ReplicaAddress("http://[fd00::7]:8080"),
    )


def test_empty_and_odd_slices() -> None:
    assert replica_set([], "mcp") == ()
    assert replica_set([{"endpoints": None, "ports": None}], "mcp") == ()
    assert replica_set([slice_([{"addresses": [], "conditions": {"ready": True}}])], "mcp") == ()
    assert base_url("fd00::1", 80) == "http://[fd00::1]:80" and base_url("10.1.2.3", 80) == "http://10.1.2.3:80"


def test_the_dns_option_lists_every_address_of_the_name() -> None:
    """`discovery: dns`: the A/AAAA records of the headless Service's name (here `localhost`) at the port."""
    import anyio

    from mcpfleet.deploy.kubernetes.source import DnsSource

    async def first() -> tuple[ReplicaAddress, ...]:
        with anyio.fail_after(10):
            async for found in DnsSource("localhost", 8080, interval=0.01).watch():
                return found
        raise AssertionError("no set")

    found = anyio.run(first)
    assert ReplicaAddress("http://127.0.0.1:8080") in found
    assert all(a.url.endswith(":8080") and a.serving for a in found)
