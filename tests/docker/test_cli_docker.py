"""The deploy commands of the CLI (`deploy`, `scale`, `status`, `logs`, `remove`) and `tools`/`call` on the
containers they start, with no gateway: the real CLI as a process against the real Docker engine.

Each test has a project of its own (`docker_project`), given through `$MCPFLEET_PROJECT` or `--project`,
and checks what exists on the engine with the `docker` CLI, never with mcpfleet's own code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import ROOT, run_cli

pytestmark = pytest.mark.usefixtures("docker_engine")

NO_ENGINE = "unix:///nonexistent.sock"
EXITS_AT_ONCE = ["python3", "-c", "import sys; print('boom'); sys.exit(3)"]


@dataclass
class Fleet:
    """One test's project and registry, the CLI on them, and what the engine holds of the project."""

    project: str
    registry: Path

    def write(self, servers: dict[str, Any]) -> None:
        self.registry.write_text(yaml.safe_dump({"servers": servers}))

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`mcpfleet ARGS --registry <this test's>`, the project from $MCPFLEET_PROJECT."""
        return run_cli(
            *args,
            "--registry",
            str(self.registry),
            env={"MCPFLEET_PROJECT": self.project, **(env or {})},
            timeout=timeout,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.cli(*args)
        assert result.returncode == 0, f"mcpfleet {' '.join(args)}: exit {result.returncode}\n{result.stderr}"
        return result

    def listed(self, kind: str, template: str) -> list[str]:
        args = ["ps", "--all"] if kind == "container" else [kind, "ls"]
        found = _docker(*args, "--filter", f"label=mcpfleet.project={self.project}", "--format", template)
        return sorted(found.split())

    def containers(self) -> list[str]:
        """`<name>/<id>` of every container of the project, running or not."""
        return self.listed("container", "{{.Names}}/{{.ID}}")

    def names(self) -> list[str]:
        return [entry.split("/")[0] for entry in self.containers()]

    def nothing_left(self) -> None:
        assert self.containers() == []
        assert self.listed("network", "{{.Name}}") == []
        assert self.listed("volume", "{{.Name}}") == []

    def clear(self) -> None:
        """Remove whatever a failed test left of the project (the leak check then finds nothing)."""
        if ids := [entry.split("/")[1] for entry in self.containers()]:
            _docker("rm", "--force", "--volumes", *ids)
        if networks := self.listed("network", "{{.Name}}"):
            _docker("network", "rm", *networks)
        if volumes := self.listed("volume", "{{.Name}}"):
            _docker("volume", "rm", "--force", *volumes)


def _docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@pytest.fixture
def fleet(docker_project: str, tmp_path: Path) -> Iterator[Fleet]:
    found = Fleet(docker_project, tmp_path / "mcpfleet.yaml")
    yield found
    found.clear()


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def whoami(fleet: Fleet) -> str:
    replica: str = json.loads(fleet.ok("call", "web", "whoami").stdout)["replica"]
    return replica


def test_deploy_call_scale_status_logs_remove_without_a_gateway(fleet: Fleet, docker_images: Any) -> None:
    """The whole life of an HTTP server in containers, with its own network and named volume, and no gateway:
    deploying twice makes one set; tools/call reach the replicas; scale 1 -> 3 -> 1 (calls spread over the
    three); status and logs; remove leaves nothing of the project."""
    p = fleet.project
    network, volume = f"{p}-net", f"{p}-data"
    web = {
        "type": "docker",
        "image": docker_images.demo,
        "port": 8080,
        "network": network,
        "volumes": [f"{volume}:/data"],
    }
    fleet.write({"web": web})

    deployed = fleet.ok("deploy", "web")
    assert f"created container {p}-web-1 (replica 1 of 1)" in deployed.stdout
    assert f"created network {network}" in deployed.stdout and f"created volume {volume}" in deployed.stdout
    first = fleet.containers()
    assert fleet.names() == [f"{p}-web-1"]
    again = fleet.ok("deploy", "web")
    assert "nothing to change" in again.stdout
    assert fleet.containers() == first  # the same container, not a new one

    assert "whoami" in fleet.ok("tools", "web").stdout
    assert whoami(fleet) == f"{p}-web-1"

    scaled = json.loads(fleet.ok("scale", "web", "3", "--json").stdout)
    assert [c["name"] for c in scaled["changes"]] == [f"{p}-web-2", f"{p}-web-3"]
    three = {f"{p}-web-{k}" for k in (1, 2, 3)}
    assert set(fleet.names()) == three
    seen: set[str] = set()
    for _ in range(12):  # the CLI picks a replica at random: 12 calls all on one of three is 1 in 177,147
        seen.add(whoami(fleet))
        if len(seen) > 1:
            break
    assert len(seen) > 1 and seen <= three

    status = json.loads(fleet.ok("status", "--json").stdout)
    assert status["project"] == p
    rows = status["replicas"]
    assert {r["name"] for r in rows} == three
    assert all(r["state"] == "running" and r["current"] and r["address"].startswith("http://127.0.0.1:") for r in rows)

    logged = fleet.ok("logs", "web", "--tail", "1").stdout.splitlines()
    assert len(logged) == 3 and {line.split(" | ")[0] for line in logged} == three
    assert all(json.loads(line)["container"] in three for line in fleet.ok("logs", "web", "--json").stdout.splitlines())

    fleet.ok("scale", "web", "1")
    assert fleet.containers() == first  # the lowest replica is the one kept
    follow_until_interrupted(fleet, f"{p}-web-1")

    removed = fleet.ok("remove", "web")
    assert f"removed container {p}-web-1" in removed.stdout
    assert f"removed network {network}" in removed.stdout and f"removed volume {volume}" in removed.stdout
    fleet.nothing_left()


def follow_until_interrupted(fleet: Fleet, name: str) -> None:
    """`logs --follow` prints the last line, then waits for more; Ctrl-C ends it with exit 0."""
    argv = [
        sys.executable,
        "-m",
        "mcpfleet",
        "logs",
        "web",
        "--follow",
        "--tail",
        "1",
        "--registry",
        str(fleet.registry),
    ]
    env = {**os.environ, "MCPFLEET_PROJECT": fleet.project}
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    ) as follower:
        assert follower.stdout is not None
        line = follower.stdout.readline()
        assert line.startswith(f"{name} | "), line
        time.sleep(0.2)
        assert follower.poll() is None  # still following
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=20)
    assert follower.returncode == 0, err


def test_dry_run_prints_the_plan_and_touches_nothing(fleet: Fleet, docker_images: Any) -> None:
    """--dry-run of deploy, scale and remove: the containers before and after are the same, the plan is
    printed (with --json, the create bodies, secrets masked), and the secret value appears nowhere."""
    p = fleet.project
    web = {"type": "docker", "image": docker_images.demo, "port": 8080, "secret_env": {"TOKEN": "s3cret-value"}}
    fleet.write({"web": web})

    planned = fleet.ok("deploy", "web", "--dry-run")
    assert planned.stdout.strip() == f"would create container {p}-web-1 (replica 1 of 1)"
    as_json = fleet.ok("deploy", "web", "--dry-run", "--json", "--replicas", "2")
    plan = json.loads(as_json.stdout)
    assert plan["dry_run"] is True and plan["image_present"] is True
    assert [(c["action"], c["kind"], c["name"]) for c in plan["changes"]] == [
        ("create", "container", f"{p}-web-1"),
        ("create", "container", f"{p}-web-2"),
    ]
    body = plan["changes"][0]["body"]
    assert "TOKEN=***" in body["Env"] and body["Labels"]["mcpfleet.project"] == p
    for result in (planned, as_json):
        assert "s3cret-value" not in result.stdout + result.stderr
    assert fleet.containers() == []

    fleet.ok("deploy", "web")
    before = fleet.containers()
    assert f"would create container {p}-web-2 (replica 2 of 2)" in fleet.ok("scale", "web", "2", "--dry-run").stdout
    assert f"would remove container {p}-web-1 (beyond 0 replicas)" in fleet.ok("scale", "web", "0", "--dry-run").stdout
    assert f"would remove container {p}-web-1 (replica, running)" in fleet.ok("remove", "web", "--dry-run").stdout
    everything = json.loads(fleet.ok("remove", "--all", "--dry-run", "--json").stdout)
    assert [c["name"] for c in everything["changes"]] == [f"{p}-web-1"]
    status = fleet.ok("status").stdout
    assert "s3cret-value" not in status
    assert fleet.containers() == before

    fleet.ok("remove", "--all")
    fleet.nothing_left()


def test_project_option_and_a_server_that_left_the_registry(fleet: Fleet, docker_images: Any, tmp_path: Path) -> None:
    """--project wins over $MCPFLEET_PROJECT; `status` marks the containers of a server the registry no longer
    names as not current, and `remove SERVER` still removes them; once none is left, the id is unknown (exit 2)."""
    p = fleet.project
    fleet.write({"web": {"type": "docker", "image": docker_images.demo, "port": 8080}})
    other = {"MCPFLEET_PROJECT": "mcpfleet-not-this-one"}
    assert fleet.cli("deploy", "web", "--project", p, env=other).returncode == 0
    assert fleet.names() == [f"{p}-web-1"]

    fleet.write({"time": {"type": "stdio", "command": ["true"]}})  # web left the registry
    status = json.loads(fleet.ok("status", "web", "--json").stdout)
    assert [(r["name"], r["current"]) for r in status["replicas"]] == [(f"{p}-web-1", False)]
    assert f"removed container {p}-web-1" in fleet.ok("remove", "web").stdout
    fleet.nothing_left()

    gone = fleet.cli("remove", "web")
    assert gone.returncode == 2
    assert "unknown server 'web'" in one_error_line(gone) and repr(p) in gone.stderr
    assert "nothing to remove" in fleet.ok("remove", "--all").stdout


def test_no_engine_is_one_line_and_exit_3(fleet: Fleet) -> None:
    fleet.write({"web": {"type": "docker", "image": "mcpfleet/demo:dev", "port": 8080}})
    for args in (["deploy", "web"], ["deploy", "web", "--dry-run"], ["status"], ["remove", "--all"], ["tools", "web"]):
        result = fleet.cli(*args, env={"DOCKER_HOST": NO_ENGINE})
        assert result.returncode == 3, (args, result.stderr)
        assert one_error_line(result) == (
            "error: no Docker engine: /nonexistent.sock does not exist (start dockerd, or set DOCKER_HOST to the"
            " engine's address)"
        )


def test_a_missing_image_is_named_exit_3(fleet: Fleet) -> None:
    image = f"mcpfleet/not-built-{fleet.project}:1"
    fleet.write({"web": {"type": "docker", "image": image, "port": 8080, "pull": "never"}})
    note = fleet.ok("deploy", "web", "--dry-run").stderr
    assert f"image {image} is not on the Docker engine" in note
    result = fleet.cli("deploy", "web")
    assert result.returncode == 3
    assert image in one_error_line(result) and "'pull' is 'never'" in result.stderr
    assert fleet.containers() == []


def test_a_container_that_exits_at_once_fails_the_deploy_with_its_output(fleet: Fleet, docker_images: Any) -> None:
    fleet.write({"boom": {"type": "docker", "image": docker_images.base, "command": EXITS_AT_ONCE, "port": 8080}})
    result = fleet.cli("deploy", "boom")
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"error: server 'boom': container {fleet.project}-boom-1 exited with code 3")
    assert "boom" in result.stderr.split("last log lines:")[1]
    assert "Traceback" not in result.stderr
    assert fleet.containers() == []  # the failed replica is removed


def test_a_taken_host_port_is_named_exit_3(fleet: Fleet, docker_images: Any) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        fleet.write({"web": {"type": "docker", "image": docker_images.demo, "port": 8080, "host_port": port}})
        result = fleet.cli("deploy", "web")
    assert result.returncode == 3, result.stderr
    line = one_error_line(result)
    assert "cannot publish its port" in line and f"127.0.0.1:{port}" in line
    assert fleet.containers() == []


def test_what_the_deploy_commands_refuse(fleet: Fleet, docker_images: Any) -> None:
    """Exit 2 before the engine is asked: a server that is not a docker entry, an unknown id, a stdio docker
    entry to scale, more replicas than a fixed host_port allows, neither or both of SERVER and --all, a bad
    project name. Exit 3: tools on an HTTP server not deployed. A stdio docker entry deploys nothing."""
    fleet.write(
        {
            "plain": {"type": "stdio", "command": ["true"]},
            "web": {"type": "docker", "image": docker_images.demo, "port": 8080},
            "fixed": {"type": "docker", "image": docker_images.demo, "port": 8080, "host_port": 18080},
            "local": {"type": "docker", "image": docker_images.demo, "args": ["stdio"]},
        }
    )
    refused = {
        ("deploy", "plain"): "server 'plain' is of type 'stdio': only 'docker' entries are deployed",
        ("deploy", "nope"): "unknown server 'nope'",
        ("scale", "local", "2"): "server 'local' is a stdio docker entry: it has no replicas to scale",
        ("scale", "fixed", "2"): "fixed host_port 18080, which fits one replica, not 2",
        ("remove",): "give either SERVER or --all",
        ("remove", "web", "--all"): "give either SERVER or --all",
        ("status", "--project", "Bad Name"): "project 'Bad Name' is not valid",
    }
    for args, message in refused.items():
        result = fleet.cli(*args, env={"DOCKER_HOST": NO_ENGINE})  # exit 2 comes before the engine is asked
        assert result.returncode == 2, (args, result.stderr)
        assert message in one_error_line(result), args

    undeployed = fleet.cli("tools", "web")
    assert undeployed.returncode == 3
    assert one_error_line(undeployed) == (
        f"error: server 'web' has no running replica in project {fleet.project!r}: run `mcpfleet deploy web` first"
    )
    stdio = fleet.ok("deploy", "local")
    assert "each session starts a container of its own" in stdio.stdout
    assert fleet.containers() == []


def test_a_stdio_docker_entry_gets_a_container_for_each_cli_session(fleet: Fleet, docker_images: Any) -> None:
    """`call` on a docker entry without a port runs one container for the session, attached to its stdin and
    stdout, and removes it afterwards; one that exits before the handshake is exit 3 with its stderr."""
    dies = ["python3", "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"]
    fleet.write(
        {
            "local": {"type": "docker", "image": docker_images.demo, "args": ["stdio"]},
            "dies": {"type": "docker", "image": docker_images.base, "command": dies},
        }
    )
    answer = json.loads(fleet.ok("call", "local", "whoami").stdout)
    assert answer["transport"] == "stdio"
    assert "echo" in fleet.ok("tools", "local").stdout
    assert fleet.containers() == []  # each session's container is gone with it

    failed = fleet.cli("tools", "dies")
    assert failed.returncode == 3, failed.stderr
    assert "exited with code 3 before the MCP handshake finished" in failed.stderr
    assert "boom" in failed.stderr.split("stderr (last lines):")[1]
    assert fleet.containers() == []
