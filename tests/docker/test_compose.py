"""docker-compose.yaml as a user runs it: the gateway image in front of two demo HTTP replicas (compose
services) and a stdio server it spawns in its own container, called through the real CLI from the host."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx2
import pytest
from docker_support import DockerImages, compose_command, docker

from support import ROOT, run_cli

REQUIRED = os.environ.get("MCPFLEET_REQUIRE_DOCKER") == "1"


def _compose() -> list[str]:
    argv = compose_command()
    if argv is None:
        message = "neither `docker compose` nor `docker-compose` works (apt-get install -y docker-compose)"
        if REQUIRED:
            pytest.fail(f"MCPFLEET_REQUIRE_DOCKER=1 but {message}", pytrace=False)
        pytest.skip(message)
    return argv


Compose = Callable[..., subprocess.CompletedProcess[str]]


@contextlib.contextmanager
def compose_up(images: DockerImages, project: str) -> Iterator[tuple[str, Compose]]:
    """`up` docker-compose.yaml as project `project`, the gateway on a port Docker picks; yields its URL and a
    function that runs compose commands on the project. `down -v` at the end whatever happened; the logs on a
    failure."""
    env = {
        **os.environ,
        "MCPFLEET_PORT": "0",
        "MCPFLEET_IMAGE": images.gateway,
        "MCPFLEET_DEMO_IMAGE": images.demo,
    }
    argv = [*_compose(), "--file", str(ROOT / "docker-compose.yaml"), "--project-name", project]

    def compose(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*argv, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )

    try:
        up = compose("up", "--detach")
        assert up.returncode == 0, f"compose up failed:\n{up.stdout}{up.stderr}"
        published = compose("port", "gateway", "8000")
        assert published.returncode == 0, f"compose port failed:\n{published.stdout}{published.stderr}"
        yield f"http://{published.stdout.strip()}", compose
    except BaseException:
        logs = compose("logs", "--no-color", "--tail", "40")
        print(f"--- compose logs of {project} ---\n{logs.stdout}{logs.stderr}")
        raise
    finally:
        down = compose("down", "--volumes", "--timeout", "10")
        assert down.returncode == 0, f"compose down failed:\n{down.stdout}{down.stderr}"


def wait_until_healthy(url: str, timeout: float = 30.0) -> None:
    """Poll /healthz: docker-proxy accepts connections before the gateway inside listens."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, f"the gateway at {url} did not answer /healthz in {timeout:.0f} s"
        time.sleep(0.2)


def whoami(gateway: str, server: str) -> dict[str, object]:
    done = run_cli("call", server, "whoami", "--gateway", gateway)
    assert done.returncode == 0, f"mcpfleet call {server} whoami: {done.returncode}\n{done.stdout}{done.stderr}"
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def test_compose_gateway_two_http_replicas_and_stdio(docker_images: DockerImages, docker_project: str) -> None:
    with compose_up(docker_images, docker_project) as (gateway, compose):
        wait_until_healthy(gateway)
        # A container's hostname is its short id; the demo image's `--replica {hostname}` reports it.
        hostname = {
            service: docker(
                "inspect", "--format", "{{.Config.Hostname}}", compose("ps", "-q", service).stdout.strip()
            ).stdout.strip()
            for service in ("gateway", "demo-1", "demo-2")
        }

        # Round robin over the two endpoints: four sessions, two on each replica.
        answers = [whoami(gateway, "demo-http") for _ in range(4)]
        assert [answer["transport"] for answer in answers] == ["http"] * 4
        assert {answer["replica"] for answer in answers} == {hostname["demo-1"], hostname["demo-2"]}

        # The stdio server is the gateway's child, in the gateway's container; localhost passes the Host check.
        stdio = whoami(gateway.replace("127.0.0.1", "localhost"), "demo")
        assert (stdio["transport"], stdio["replica"]) == ("stdio", f"stdio in {hostname['gateway']}")
