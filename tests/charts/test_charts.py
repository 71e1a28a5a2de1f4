"""Both charts lint (`helm lint --strict`) and render objects the Kubernetes 1.37 API accepts
(`kubernetes-validate --strict`, which rejects unknown fields), with default values and with each values file
under `charts/*/ci/`; their schemas reject a misspelt value, naming it; the gateway's ConfigMap holds a registry
the gateway loads, with no secret value in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import GATEWAY, MCP_SERVER, ci_values, documents, helm, template, validate

from mcpfleet.registry import parse_registry

pytestmark = pytest.mark.usefixtures("helm_available")

CASES = [
    pytest.param(chart, values, id=f"{chart.name}-{values.stem if values else 'defaults'}")
    for chart in (MCP_SERVER, GATEWAY)
    for values in [None, *ci_values(chart)]
]


def test_every_chart_has_its_ci_values() -> None:
    assert {path.stem for path in ci_values(MCP_SERVER)} >= {"minimal-values", "full-values", "stdio-adapter-values"}
    assert {path.stem for path in ci_values(GATEWAY)} >= {"minimal-values", "full-values"}


@pytest.mark.parametrize(("chart", "values"), CASES)
def test_lint_strict(chart: Path, values: Path | None) -> None:
    extra: list[str | Path] = ["--values", values] if values else []
    done = helm("lint", "--strict", chart, *extra, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize(("chart", "values"), CASES)
def test_rendered_objects_validate(chart: Path, values: Path | None, tmp_path: Path) -> None:
    rendered = template(chart, values=[values] if values else [])
    assert documents(rendered)
    done = validate(rendered, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("chart", "setting", "named"),
    [
        (MCP_SERVER, "replica=2", "'replica'"),
        (MCP_SERVER, "securityContext.readOnlyRootFilesytem=true", "'readOnlyRootFilesytem'"),
        (MCP_SERVER, "networkPolicy.extraFrom[0].podSelektor.a=b", "'podSelektor'"),
        (GATEWAY, "replicas=3", "'replicas'"),
        (GATEWAY, "ingress.host=mcp.example.com", "'host'"),
        (GATEWAY, "registry.server.a.url=http://a", "'server'"),
    ],
)
def test_schema_rejects_unknown_values(chart: Path, setting: str, named: str) -> None:
    done = helm("template", "r", chart, "--set", setting, check=False)
    assert done.returncode != 0
    assert "additional properties" in done.stderr and named in done.stderr, done.stderr


def test_session_keys_never_go_in_the_configmap() -> None:
    done = helm("template", "r", GATEWAY, "--set", "registry.gateway.session_keys[0]=k", check=False)
    assert done.returncode != 0 and "session keys go in a Secret" in done.stderr, done.stderr


def _configmap_registry(rendered: str) -> str:
    configmap = next(obj for obj in documents(rendered) if obj["kind"] == "ConfigMap")
    text: str = configmap["data"]["registry.yaml"]
    return text


@pytest.mark.parametrize("values", ci_values(GATEWAY), ids=lambda path: path.stem)
def test_the_configmap_holds_a_registry_the_gateway_loads(values: Path) -> None:
    source = yaml.safe_load(values.read_text())
    rendered = template(GATEWAY, namespace="tools", values=[values])
    text = _configmap_registry(rendered)
    environ = {"GITHUB_TOKEN": "t", "DOCS_TOKEN": "t"}  # what the Secrets give the gateway's environment
    registry = parse_registry(text, "registry.yaml", environ=environ)
    assert not registry.failed
    assert set(registry.servers) == set(source["registry"]["servers"])
    service = source.get("fullnameOverride") or "r-mcpfleet"
    assert {service, f"{service}.tools", f"{service}.tools.svc", f"{service}.tools.svc.cluster.local"} <= set(
        registry.gateway.allowed_hosts
    )  # the names the Service is reached by (the helm test pod's among them) pass the Host check
    for secret in source.get("secretEnv", {}).values():
        assert secret not in text


def test_session_keys_come_from_a_secret(tmp_path: Path) -> None:
    """Generated into a Secret (never a literal env value), or read from the Secret named in the values."""
    rendered = documents(template(GATEWAY))
    secret = next(obj for obj in rendered if obj["kind"] == "Secret")
    assert set(secret["data"]) == {"MCPFLEET_SESSION_KEYS"}
    container = next(obj for obj in rendered if obj["kind"] == "Deployment")["spec"]["template"]["spec"]
    env = {item["name"]: item for item in container["containers"][0]["env"]}
    assert env["MCPFLEET_SESSION_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "MCPFLEET_SESSION_KEYS",
    }
    own = documents(template(GATEWAY, sets=["sessionKeys.existingSecret=mine", "sessionKeys.existingSecretKey=k"]))
    assert not [obj for obj in own if obj["kind"] == "Secret"]
    deployment = next(obj for obj in own if obj["kind"] == "Deployment")
    env = {item["name"]: item for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MCPFLEET_SESSION_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "k"}


def test_gateway_pods_are_what_mcp_server_network_policies_admit() -> None:
    """charts/mcp-server's NetworkPolicy admits pods labelled `app.kubernetes.io/name: mcpfleet`: the gateway's."""
    gateway = next(obj for obj in documents(template(GATEWAY)) if obj["kind"] == "Deployment")
    assert gateway["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "mcpfleet"
    policy = next(
        obj
        for obj in documents(template(MCP_SERVER, sets=["networkPolicy.enabled=true"]))
        if obj["kind"] == "NetworkPolicy"
    )
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "mcp", "protocol": "TCP"}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mcpfleet"}}}]


@pytest.mark.parametrize(
    ("registry", "named"),
    [
        ({"gateway": {"discovery": "labels"}, "servers": {}}, "set discovery.labels: true"),
        ({"gateway": {"discovery_namespaces": ["tools"]}, "servers": {}}, 'discovery_namespaces names "tools"'),
        (
            {"servers": {"web": {"type": "k8s", "image": "a/b:1", "port": 8080, "namespace": "other"}}},
            'registry.servers.web.namespace is "other"',
        ),
    ],
)
def test_a_registry_the_role_does_not_allow_fails_the_install(
    registry: dict[str, Any], named: str, tmp_path: Path
) -> None:
    """What the gateway would do that its Role does not allow fails at install, naming the value to change."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"registry": registry}))
    done = helm("template", "x", GATEWAY, "--values", values, check=False)
    assert done.returncode != 0 and named in done.stderr, done.stderr
