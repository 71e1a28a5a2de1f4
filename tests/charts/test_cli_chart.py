"""A `chart` entry through the CLI: `mcpfleet deploy --dry-run` renders it with the real helm (no cluster), with
the labels the gateway finds its Service by; the printed objects are the chart's own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from chart_support import ROOT, helm_path

from support import run_cli

pytestmark = pytest.mark.usefixtures("helm_available")


def test_a_chart_entry_renders_through_helm_with_the_server_labels(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    chart = ROOT / "charts" / "mcp-server"
    registry.write_text(
        "servers:\n"
        f"  time: {{type: k8s, chart: {chart}, port: 8080, namespace: tools,"
        " values: {image: {repository: mcp/time, tag: '1.0'}, replicas: 2}}\n"
    )
    done = run_cli("deploy", "time", "--registry", str(registry), "--dry-run", env={"HELM": str(helm_path())})
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["Deployment", "Service"]
    for found in objects:
        assert found["metadata"]["labels"]["mcpfleet.io/server"] == "time"
        assert found["metadata"]["namespace"] == "tools"
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "mcp/time:1.0"


def test_a_chart_entry_without_helm_is_one_line(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text("servers:\n  time: {type: k8s, chart: ./nowhere, port: 8080}\n")
    env = {"HELM": "", "PATH": os.path.dirname(os.environ.get("PYTHON", "/usr/bin/python3"))}
    done = run_cli("deploy", "time", "--registry", str(registry), "--dry-run", env=env)
    assert done.returncode == 2 and "helm" in done.stderr and "Traceback" not in done.stderr


def test_replicas_null_leaves_the_count_to_whoever_scales(tmp_path: Path) -> None:
    """`replicas: null` renders no `spec.replicas`: a Helm 4 upgrade (server-side apply) then takes no count
    back from a gateway that scaled the server to zero, or from `mcpfleet scale`."""
    values = tmp_path / "values.yaml"
    values.write_text("replicas: null\n")
    argv = [str(helm_path()), "template", "t", str(ROOT / "charts" / "mcp-server"), "-f", str(values)]
    rendered = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    (deployment,) = [o for o in yaml.safe_load_all(rendered) if o and o["kind"] == "Deployment"]
    assert "replicas" not in deployment["spec"]
