"""Against a real cluster (kind, k3d, minikube): run when `MCPFLEET_TEST_KUBECONFIG` names its kubeconfig.

What they need (docs/kubernetes.md, "Testing against a real cluster"): the images `mcpfleet/demo:dev` and
`mcpfleet/mcpfleet:dev` (`make images`) loaded into the cluster (`kind load docker-image ...`), helm and
kubectl (`build/tools/`, from `make test`). Each test makes a namespace of its own (`mcpfleet-test-<random>`)
and deletes it at the end, with everything in it; nothing else in the cluster is touched. Without the
variable they are skipped: there is no cluster on this machine (Plan Document, section 14).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from support import ACCEPT, INIT, ROOT, free_port

KUBECONFIG = os.environ.get("MCPFLEET_TEST_KUBECONFIG")
pytestmark = [
    pytest.mark.skipif(not KUBECONFIG, reason="set MCPFLEET_TEST_KUBECONFIG to a test cluster's kubeconfig"),
    pytest.mark.timeout(600),
]
DEMO = os.environ.get("MCPFLEET_TEST_DEMO_IMAGE", "mcpfleet/demo:dev")
GATEWAY = os.environ.get("MCPFLEET_TEST_GATEWAY_IMAGE", "mcpfleet/mcpfleet:dev")
TOOLS = ROOT / "build" / "tools"


def kubectl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = [str(TOOLS / "kubectl"), "--kubeconfig", str(KUBECONFIG), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def helm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    argv = [str(TOOLS / "helm"), "--kubeconfig", str(KUBECONFIG), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)


def mcpfleet(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "KUBECONFIG": str(KUBECONFIG)}
    argv = [sys.executable, "-m", "mcpfleet", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace of the test's own, deleted with everything in it afterwards."""
    name = f"mcpfleet-test-{secrets.token_hex(4)}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=true", "--timeout=180s", check=False, timeout=240)


def test_cli_deploys_scales_and_removes_on_a_real_cluster(namespace: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        f"servers:\n  demo: {{type: k8s, image: {DEMO}, port: 8080, replicas: 1, namespace: {namespace},"
        " pull: never, secret_env: {TOKEN: s3cret}, timeouts: {startup: 120}}\n"
    )
    done = mcpfleet("deploy", "demo", "--registry", str(registry))
    assert done.returncode == 0, done.stderr
    scaled = mcpfleet("scale", "demo", "2", "--registry", str(registry))
    assert scaled.returncode == 0, scaled.stderr
    status = mcpfleet("status", "demo", "--registry", str(registry), "--json")
    pods = json.loads(status.stdout)["replicas"]
    assert [p["state"] for p in pods] == ["running", "running"]
    slices = json.loads(kubectl("get", "endpointslices", "-n", namespace, "-o", "json").stdout)["items"]
    ready = [e for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")]
    assert len(ready) == 2
    # The Secret holds the value; the Deployment does not.
    deployment = kubectl("get", "deployment", "-n", namespace, "-o", "json").stdout
    assert "s3cret" not in deployment
    removed = mcpfleet("remove", "demo", "--registry", str(registry))
    assert removed.returncode == 0, removed.stderr
    assert demo_objects(namespace) == ""


def poll(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        time.sleep(2)


def demo_replicas(namespace: str) -> int | None:
    found = kubectl("get", "deployment", "-n", namespace, "-l", "mcpfleet.io/server=demo", "-o", "json")
    items = json.loads(found.stdout)["items"]
    return int(items[0]["spec"]["replicas"]) if items else None


def demo_objects(namespace: str) -> str:
    what = "deployments,services,secrets"
    return kubectl("get", what, "-n", namespace, "-l", "mcpfleet.io/server=demo", "-o", "name").stdout.strip()


@contextlib.contextmanager
def port_forward(namespace: str, service: str, port: int) -> Iterator[str]:
    local = free_port()
    argv = [str(TOOLS / "kubectl"), "--kubeconfig", str(KUBECONFIG), "-n", namespace, "port-forward"]
    process = subprocess.Popen([*argv, f"service/{service}", f"{local}:{port}"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", local)) == 0:
                    break
            time.sleep(0.2)
        yield f"http://127.0.0.1:{local}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_gateway_chart_routes_scales_to_zero_and_back(namespace: str, tmp_path: Path) -> None:
    """The gateway installed with its chart (two replicas) creates the server's objects, routes to its pods,
    scales it to zero when idle and back on the next request; its objects go when the entry leaves."""
    repository, _, tag = GATEWAY.rpartition(":")
    values = tmp_path / "values.yaml"
    values.write_text(
        json.dumps(
            {
                "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
                "registry": {
                    "servers": {
                        "demo": {
                            "type": "k8s",
                            "image": DEMO,
                            "port": 8080,
                            "pull": "never",
                            "idle_timeout": 20,
                            "timeouts": {"startup": 120},
                        }
                    }
                },
            }
        )
    )
    helm(
        "install",
        "gw",
        str(ROOT / "charts" / "mcpfleet"),
        "-n",
        namespace,
        "-f",
        str(values),
        "--wait",
        "--timeout",
        "300s",
    )
    try:
        with port_forward(namespace, "gw-mcpfleet", 8000) as url, httpx2.Client(timeout=120) as http:
            headers = ACCEPT
            init = INIT
            assert http.post(f"{url}/demo/mcp", json=init, headers=headers).status_code == 200
            poll(lambda: demo_replicas(namespace) == 0, 180, "scaled to zero when idle")
            assert http.post(f"{url}/demo/mcp", json=init, headers=headers).status_code == 200  # cold start
        helm(
            "upgrade",
            "gw",
            str(ROOT / "charts" / "mcpfleet"),
            "-n",
            namespace,
            "-f",
            str(values),
            "--set",
            "registry.servers=null",
            "--wait",
        )
        poll(lambda: not demo_objects(namespace), 120, "the objects gone after the entry left the registry")
    finally:
        subprocess.run(
            [str(TOOLS / "helm"), "--kubeconfig", str(KUBECONFIG), "uninstall", "gw", "-n", namespace], check=False
        )
