"""One source of truth for a server's objects: for the same `kubernetes` registry entry, the gateway's dynamic
path (`manifests.objects`) and the chart (`charts/mcp-server` rendered by `helm template` with
`values.chart_values(entry)`) give the same objects, compared whole, object by object.

What is ignored, and why (everything else must be equal, key for key and value for value):
- the label `helm.sh/chart`: Helm's convention, naming the chart and its version; the gateway has no chart.
- the label `app.kubernetes.io/managed-by`: `Helm` for the chart, `mcpfleet` for the gateway. The difference is
  wanted: the gateway cleans up by a selector that includes `managed-by=mcpfleet`, so it never deletes what a
  Helm release owns.
- the pod-template annotation `checksum/secret`: the chart rolls the pods when `secretEnv` changes by
  hashing it into the pod template (Helm has no other way to see a Secret change); the gateway's server-side
  apply has no such annotation.
The chart's optional objects (HPA, PDB, ServiceAccount, NetworkPolicy) are off in `chart_values`, so both sides
have the same set of objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import MCP_SERVER, documents, helm

from mcpfleet.deploy.kubernetes import manifests
from mcpfleet.deploy.kubernetes.values import chart_values, split_image
from mcpfleet.registry.model import KubernetesServer

NAMESPACE = "tools"
PROJECT = "team-a"
HELM_LABELS = ("helm.sh/chart", manifests.MANAGED_BY)

ENTRIES: dict[str, dict[str, Any]] = {
    "http": {"id": "web", "image": "mcpfleet/demo:dev", "port": 8080, "replicas": 3},
    "secret-env": {
        "id": "github",
        "image": "ghcr.io/github/github-mcp-server:v1",
        "port": 8082,
        "command": ["github-mcp-server"],
        "args": ["http", "--port", "8082"],
        "env": {"LOG_LEVEL": "debug", "A_FIRST": "1", "GITHUB_TOKEN": "shadowed by secret_env"},
        "secret_env": {"GITHUB_TOKEN": "ghp_not_real", "OTHER": "x y z"},
    },
    "resources": {
        "id": "heavy.one",  # a '.' is not allowed in object names: object_name adds a hash
        "image": "registry.example.com:5000/mcp/heavy@sha256:" + "ab" * 32,
        "port": 9000,
        "pull": "never",
        "resources": {"cpu": "500m", "memory": "512Mi"},
        "timeouts": {"startup": 90, "shutdown": 4},
    },
    "hardened": {
        "id": "fs",
        "image": "mcp/filesystem:1.2",
        "port": 3000,
        "security": {"read_only": True, "user": "10001:10002", "cap_add": ["NET_BIND_SERVICE"]},
    },
    "stdio-adapter": {
        "id": "memory",
        "image": "mcpfleet/demo:dev",
        "command": ["mcpfleet-demo", "stdio"],
        "args": ["--replica", "pod"],
        "stateless": True,
        "pool": {"mode": "shared", "min": 1, "max": 4},
        "resources": {"memory": "128Mi"},
    },
    "service-account": {
        "id": "kube-tools",
        "image": "mcp/kubernetes:latest",
        "port": 8080,
        "service_account": "kube-reader",
        "security": {"no_new_privileges": False},
    },
}


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` without what is Helm's own (the module docstring lists it)."""
    found: dict[str, Any] = yaml.safe_load(yaml.safe_dump(obj))  # a deep copy, in plain YAML types
    metadatas = [found["metadata"]]
    if found["kind"] == "Deployment":
        metadatas.append(found["spec"]["template"]["metadata"])
    for metadata in metadatas:
        for label in HELM_LABELS:
            metadata.get("labels", {}).pop(label, None)
        annotations = metadata.get("annotations", {})
        for key in [key for key in annotations if key == "checksum/secret"]:
            del annotations[key]
        if "annotations" in metadata and not annotations:
            del metadata["annotations"]
    return found


def _keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(obj["kind"], obj["metadata"]["name"]): _comparable(obj) for obj in objects}


@pytest.mark.usefixtures("helm_available")
@pytest.mark.parametrize("case", list(ENTRIES))
def test_chart_renders_the_objects_the_gateway_creates(case: str, tmp_path: Path) -> None:
    entry = KubernetesServer.model_validate(ENTRIES[case])
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(chart_values(entry, project=PROJECT)))
    rendered = helm("template", "any-release-name", MCP_SERVER, "--namespace", NAMESPACE, "--values", values).stdout

    from_chart = _keyed(documents(rendered))
    dynamic = _keyed(manifests.objects(entry, namespace=NAMESPACE, project=PROJECT))

    assert sorted(from_chart) == sorted(dynamic)
    for key, expected in dynamic.items():
        assert from_chart[key] == expected, f"{key[0]} {key[1]} differs"


@pytest.mark.usefixtures("helm_available")
def test_the_helm_own_parts_are_all_that_differ(tmp_path: Path) -> None:
    """The ignore list is not hiding anything else: before `_comparable`, the chart's Deployment differs from
    the gateway's only by those labels and the checksum annotation."""
    entry = KubernetesServer.model_validate(ENTRIES["secret-env"])
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(chart_values(entry, project=PROJECT)))
    rendered = helm("template", "x", MCP_SERVER, "--namespace", NAMESPACE, "--values", values).stdout
    chart = next(obj for obj in documents(rendered) if obj["kind"] == "Deployment")
    dynamic = manifests.deployment(entry, namespace=NAMESPACE, project=PROJECT)
    assert chart["metadata"]["labels"][manifests.MANAGED_BY] == "Helm"
    assert dynamic["metadata"]["labels"][manifests.MANAGED_BY] == manifests.MANAGER
    template = chart["spec"]["template"]["metadata"]
    assert set(template["annotations"]) - set(dynamic["spec"]["template"]["metadata"]["annotations"]) == {
        "checksum/secret"
    }
    assert set(template["labels"]) - set(dynamic["spec"]["template"]["metadata"]["labels"]) == {"helm.sh/chart"}


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("mcpfleet/demo:dev", ("mcpfleet/demo", "dev", "")),
        ("python", ("python", "", "")),
        ("host:5000/a/b", ("host:5000/a/b", "", "")),
        ("host:5000/a/b:1.2@sha256:" + "0" * 64, ("host:5000/a/b", "1.2", "sha256:" + "0" * 64)),
    ],
)
def test_split_image(image: str, parts: tuple[str, str, str]) -> None:
    assert split_image(image) == parts
