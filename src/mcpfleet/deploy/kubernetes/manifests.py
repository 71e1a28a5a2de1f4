"""What mcpfleet asks Kubernetes for: pure functions from a `kubernetes` registry entry to the objects of one
MCP server (a Deployment, a headless Service, a Secret for `secret_env`). Nothing here talks to a cluster.

The chart `charts/mcp-server` renders the same objects from the values `values.chart_values(entry)` gives
(`tests/charts/test_equivalence.py` shows it, object by object), so the gateway's dynamic path and a Helm
install of the same entry agree; a change here needs the same change in the chart's templates. Labels follow
the Kubernetes recommended labels (`app.kubernetes.io/*`) plus `mcpfleet.io/project` and `mcpfleet.io/server`,
which select a server's pods and find its objects for clean-up.

Objects follow apps/v1 Deployment, v1 Service and v1 Secret:
https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/deployment-v1/
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any

from mcpfleet.deploy.container import ContainerSpec, container_spec
from mcpfleet.registry.model import KubernetesServer

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "mcpfleet"
PROJECT = "mcpfleet.io/project"
SERVER = "mcpfleet.io/server"
SERVER_ID = "mcpfleet.io/server-id"  # annotation: the registry id as written (the label value is the same)
CONFIG_CHECKSUM = "checksum/config"  # pod template: changes with the ConfigMap's data (as Helm charts do it)
SECRET_DIGEST = "mcpfleet.io/secret-digest"  # pod template: changes with the Secret's data, rolling the pods
LAST_REQUEST = "mcpfleet.io/last-request"  # annotation: when a gateway last saw traffic (Plan 12.4)
PORT_NAME = "mcp"
CONTAINER = "mcp"
PRE_STOP_SECONDS = 5  # the gateway sees `terminating` before SIGTERM reaches the server
DRAIN_SECONDS = 25  # requests in flight after SIGTERM (uvicorn's graceful shutdown in gateway/serve.py)
TMP_VOLUME = "tmp"
FIELD_MANAGER = "mcpfleet"  # server-side apply of everything but spec.replicas
SCALE_MANAGER = "mcpfleet-scale"  # spec.replicas: set at create and through the scale subresource only

_INVALID = re.compile(r"[^a-z0-9-]+")


def object_name(project: str, server_id: str) -> str:
    """`<project>-<server id>` as a DNS-1035 label (the Service's rule, the strictest of the three kinds):
    lowercase letters, digits and '-', starting with a letter, at most 63 characters. When spelling it so
    changed the id (`.` or `_`, a leading digit, length), 6 hex digits of a hash keep two ids apart."""
    wanted = f"{project}-{server_id}"
    name = _INVALID.sub("-", wanted).strip("-")
    if not name[:1].isalpha():
        name = "m" + name
    if name == wanted and len(name) <= 63:
        return name
    suffix = hashlib.sha256(wanted.encode()).hexdigest()[:6]
    return f"{name[:56].rstrip('-')}-{suffix}"


def config_name(project: str, server_id: str) -> str:
    return f"{object_name(project, server_id)[:56].rstrip('-')}-config"


def secret_name(project: str, server_id: str) -> str:
    return f"{object_name(project, server_id)[:57].rstrip('-')}-env"


def selector(project: str, server_id: str | None = None) -> dict[str, str]:
    """The labels that select a server's pods (and, with `MANAGED_BY`, everything mcpfleet made for it)."""
    found = {PROJECT: project}
    if server_id is not None:
        found[SERVER] = server_id
    return found


def labels(project: str, server_id: str) -> dict[str, str]:
    """The labels of every object of a server, its pods included."""
    return {
        "app.kubernetes.io/name": "mcp-server",
        "app.kubernetes.io/instance": object_name(project, server_id),
        "app.kubernetes.io/component": "mcp-server",
        "app.kubernetes.io/part-of": "mcpfleet",
        MANAGED_BY: MANAGER,
        **selector(project, server_id),
    }


def label_selector(match: dict[str, str]) -> str:
    """`match` as a `labelSelector` query value (`k=v,k2=v2`)."""
    return ",".join(f"{key}={value}" for key, value in match.items())


def objects(entry: KubernetesServer, *, namespace: str, project: str) -> list[dict[str, Any]]:
    """The objects of `entry`, in the order they are applied: the Secret (when `secret_env` is set), the
    ConfigMap (when `env` is), the Deployment (`spec.replicas` = the entry's `replicas`), the headless
    Service."""
    found = []
    if entry.secret_env:
        found.append(secret(entry, namespace=namespace, project=project))
    if config_env(entry):
        found.append(config_map(entry, namespace=namespace, project=project))
    found.append(deployment(entry, namespace=namespace, project=project))
    found.append(service(entry, namespace=namespace, project=project))
    return found


def _metadata(entry: KubernetesServer, namespace: str, project: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(project, entry.id),
        "annotations": {SERVER_ID: entry.id},
    }


def secret_digest(entry: KubernetesServer, key: str) -> str:
    """12 hex digits of HMAC-SHA-256 of `secret_env`, keyed by the Secret's uid: the pod template carries it,
    so a new secret value rolls the pods out, and someone who may read the Deployment but not the Secret
    cannot test guesses of a value against it (a plain hash, as Helm charts use, would let them)."""
    data = json.dumps(sorted(entry.secret_env.items())).encode()
    return hmac.new(key.encode(), data, hashlib.sha256).hexdigest()[:12]


def config_env(entry: KubernetesServer) -> dict[str, str]:
    """The non-secret environment, by name: `env` less the names `secret_env` sets (the Secret wins)."""
    return {key: value for key, value in sorted(entry.env.items()) if key not in entry.secret_env}


def config_map(entry: KubernetesServer, *, namespace: str, project: str) -> dict[str, Any]:
    """The ConfigMap holding the non-secret settings (`env`); the pod reads it with `envFrom`, before the
    Secret (a later source wins on a clash)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(entry, namespace, project, config_name(project, entry.id)),
        "data": config_env(entry),
    }


def config_digest(entry: KubernetesServer) -> str:
    """12 hex digits of SHA-256 of the ConfigMap's data (not secret) as JSON: in the pod template, so a changed
    setting rolls the pods out (Kubernetes does not restart pods when a ConfigMap they read changes). The
    JSON is spelled as Helm's `toJson` spells it (Go: sorted keys, no spaces, `<`, `>`, `&` escaped), so the
    chart renders the same value."""
    text = json.dumps(config_env(entry), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def secret(entry: KubernetesServer, *, namespace: str, project: str) -> dict[str, Any]:
    """The Secret holding `secret_env` (base64 `data`); the pod reads it with `envFrom`."""
    data = {key: base64.b64encode(value.encode()).decode() for key, value in sorted(entry.secret_env.items())}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(entry, namespace, project, secret_name(project, entry.id)),
        "type": "Opaque",
        "data": data,
    }


def service(entry: KubernetesServer, *, namespace: str, project: str) -> dict[str, Any]:
    """The headless Service: no cluster IP, so it only gives the pods' addresses (its EndpointSlices and DNS
    records); the gateway balances per request itself (Plan Document, section 12.3)."""
    port = container_spec(entry).port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(entry, namespace, project, object_name(project, entry.id)),
        "spec": {
            "clusterIP": "None",
            "selector": selector(project, entry.id),
            "ports": [{"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"}],
            "publishNotReadyAddresses": False,
        },
    }


def deployment(entry: KubernetesServer, *, namespace: str, project: str, replicas: int | None = None) -> dict[str, Any]:
    """The Deployment: `replicas` (default the entry's) pods of `pod_template`. Rolling updates add a pod
    before removing one (`maxUnavailable: 0`), so a rollout never lowers the serving count."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(entry, namespace, project, object_name(project, entry.id)),
        "spec": {
            "replicas": entry.replicas if replicas is None else replicas,
            "selector": {"matchLabels": selector(project, entry.id)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "progressDeadlineSeconds": progress_deadline(entry),
            "template": pod_template(entry, project=project),
        },
    }


def progress_deadline(entry: KubernetesServer) -> int:
    """`progressDeadlineSeconds`: twice the entry's start-up timeout, at least a minute."""
    return max(60, int(entry.timeouts.startup) * 2)


def termination_grace(entry: KubernetesServer) -> int:
    """`terminationGracePeriodSeconds`: the preStop sleep, then the time requests in flight get once serving
    stops (`DRAIN_SECONDS`: the adapter's and the gateway's graceful shutdown), then the stop sequence's
    waits (3 x `timeouts.shutdown`), and two seconds to spare."""
    return PRE_STOP_SECONDS + DRAIN_SECONDS + int(entry.timeouts.shutdown * 3) + 2


def pod_template(entry: KubernetesServer, *, project: str) -> dict[str, Any]:
    """The pod: one container `mcp` (`container_spec`), non-root, no service account token unless the entry
    names a service account, a RuntimeDefault seccomp profile, a `preStop` sleep so the gateway sees the pod
    terminating before SIGTERM, and `terminationGracePeriodSeconds` (`termination_grace`)."""
    spec = container_spec(entry)
    pod: dict[str, Any] = {
        "automountServiceAccountToken": entry.service_account is not None,
        "enableServiceLinks": False,
        "securityContext": _pod_security(spec),
        "terminationGracePeriodSeconds": termination_grace(entry),
        "containers": [
            container(
                spec,
                secret=secret_name(project, entry.id) if entry.secret_env else None,
                config=config_name(project, entry.id) if config_env(entry) else None,
            )
        ],
    }
    if entry.service_account is not None:
        pod["serviceAccountName"] = entry.service_account
    if spec.security.read_only:
        pod["volumes"] = [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}]
    metadata: dict[str, Any] = {"labels": labels(project, entry.id)}
    if config_env(entry):
        metadata["annotations"] = {CONFIG_CHECKSUM: config_digest(entry)}
    return {"metadata": metadata, "spec": pod}


def _pod_security(spec: ContainerSpec) -> dict[str, Any]:
    found: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if spec.security.user is not None:
        uid, _, gid = spec.security.user.partition(":")
        found["runAsUser"] = int(uid)
        if gid:
            found["runAsGroup"] = int(gid)
    return found


def container(spec: ContainerSpec, *, secret: str | None, config: str | None = None) -> dict[str, Any]:
    """The container of a pod. Its environment comes from the ConfigMap `config` (`env`) and then the Secret
    `secret` (`secret_env`), both with `envFrom`: no value is written in the pod template. An empty
    `command` or `args` is left out (the API drops it too).
    CPU is requested, never limited (a CPU limit throttles tool calls); memory is requested and limited alike.
    Ready when the port accepts TCP (an MCP endpoint answers a GET with 400 or 405, which an httpGet probe
    counts as a failure); the adapter has `/readyz`, which turns 503 as soon as it drains."""
    found: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": "Never" if spec.pull == "never" else "IfNotPresent",
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        "securityContext": {
            "allowPrivilegeEscalation": not spec.security.no_new_privileges,
            "readOnlyRootFilesystem": spec.security.read_only,
            "capabilities": _capabilities(spec),
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "readinessProbe": readiness(spec),
    }
    if spec.entrypoint:
        found["command"] = list(spec.entrypoint)
    if spec.args:
        found["args"] = list(spec.args)
    sources = [{"configMapRef": {"name": config}}] if config is not None else []
    sources += [{"secretRef": {"name": secret}}] if secret is not None else []
    if sources:
        found["envFrom"] = sources
    found_resources = resources(spec)
    if found_resources:
        found["resources"] = found_resources
    if spec.security.read_only:
        found["volumeMounts"] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    return found


def _capabilities(spec: ContainerSpec) -> dict[str, Any]:
    found: dict[str, Any] = {"drop": ["ALL"]}
    if spec.security.cap_add:
        found["add"] = list(spec.security.cap_add)
    return found


def readiness(spec: ContainerSpec) -> dict[str, Any]:
    timing = {"periodSeconds": 1, "failureThreshold": 3, "timeoutSeconds": 1}
    if spec.entrypoint is not None and tuple(spec.entrypoint[:2]) == ("mcpfleet", "adapter"):
        return {"httpGet": {"path": "/readyz", "port": PORT_NAME}, **timing}
    return {"tcpSocket": {"port": PORT_NAME}, **timing}


def resources(spec: ContainerSpec) -> dict[str, Any]:
    requests = {key: value for key, value in (("cpu", spec.cpu), ("memory", spec.memory)) if value is not None}
    found: dict[str, Any] = {}
    if requests:
        found["requests"] = requests
    if spec.memory is not None:
        found["limits"] = {"memory": spec.memory}
    return found
