"""Helpers for the Docker tests: the engine check, the images, project names and the leak check.

Everything here talks to the engine through the `docker` CLI (or aiodocker for the engine check), never
through mcpfleet's own code, so a check does not depend on what it checks.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from support import ROOT

MANAGED_BY = "app.kubernetes.io/managed-by=mcpfleet"
COMPOSE_PROJECT = "com.docker.compose.project"
BUILD_SCRIPT = ROOT / "docker" / "build-images.sh"
# A first build makes the base image from Debian packages and downloads wheels: a minute or two.
BUILD_TIMEOUT = 900.0
ENABLE = (
    "install docker.io (apt-get install -y docker.io mmdebstrap docker-compose), start the engine "
    "(setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &), or run .ci/run, which does both"
)

_projects = itertools.count(1)
# Project names handed out since the last leak check.
issued: list[str] = []
# A project name as a label value (`mcpfleet.project=t123-4`), not part of a longer word.
_PROJECT = re.compile(r"(?<![\w.-])t(\d+)-\d+(?![\w.-])")


@dataclass(frozen=True)
class DockerImages:
    """The images `make images` builds, by the `src-<hash>` tags of this very source tree."""

    base: str
    gateway: str
    demo: str


def docker(*args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `docker` CLI; raises with its stderr on failure when `check`."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
    return done


def docker_project() -> str:
    """A project name unique to this test process and call, `t<pid>-<n>`: a label value (or a compose project
    name) that marks what one test creates. The leak check looks for objects carrying it after the test."""
    name = f"t{os.getpid()}-{next(_projects)}"
    issued.append(name)
    return name


def _aiodocker_answers() -> str | None:
    """Ask the engine for its version through aiodocker; a problem, or None when it answered."""
    aiodocker: Any = importlib.import_module("aiodocker")

    async def ask() -> None:
        async with aiodocker.Docker() as client:
            await asyncio.wait_for(client.version(), timeout=10)

    try:
        asyncio.run(ask())
    except Exception as exc:
        return f"the Docker engine does not answer aiodocker ({type(exc).__name__}: {exc})"
    return None


def engine_problem() -> str | None:
    """What is missing for the Docker tests, or None when the engine answers and the CLI is there."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        importlib.import_module("aiodocker")
    except ImportError:
        pass
    else:
        if problem := _aiodocker_answers():
            return problem
    try:
        done = docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker info` within 20 s"
    if done.returncode != 0 or not done.stdout.strip():
        return f"the Docker engine does not answer `docker info`: {done.stderr.strip() or 'no version'}"
    return None


def build_images() -> DockerImages:
    """Build the images when missing (docker/build-images.sh skips what is up to date); their names."""
    env = {**os.environ, "PYTHON": sys.executable}
    # A session of its own, so a build that overruns is stopped whole (mmdebstrap, pip, docker build).
    with subprocess.Popen(
        [str(BUILD_SCRIPT)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as build:
        try:
            out, err = build.communicate(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(build.pid, signal.SIGKILL)
            build.communicate()
            raise RuntimeError(f"{BUILD_SCRIPT} did not finish in {BUILD_TIMEOUT:.0f} s") from None
    if build.returncode != 0:
        tail = "\n".join(err.splitlines()[-30:])
        raise RuntimeError(f"{BUILD_SCRIPT} exited with {build.returncode}:\n{tail}")
    base, gateway, demo = out.split()[-3:]
    return DockerImages(base=base, gateway=gateway, demo=demo)


def compose_command() -> list[str] | None:
    """The compose command that works here: `docker compose` (the plugin), else `docker-compose` (Debian's
    1.29, or a standalone v2); None when there is neither."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        done = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0:
            return argv
    return None


@dataclass(frozen=True)
class DockerObject:
    kind: str  # container, network or volume
    id: str
    name: str
    labels: str  # as `docker ... --format {{.Labels}}` writes them: k=v,k=v

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + ("" if self.id == self.name else f" ({self.id})")


KINDS = ("container", "network", "volume")


def _listed(kind: str, label: str) -> list[DockerObject]:
    """The `kind` objects carrying `label` (`key=value`)."""
    fields = {"container": "{{.ID}} {{.Names}}", "network": "{{.ID}} {{.Name}}", "volume": "{{.Name}} {{.Name}}"}
    args = ["ps", "--all"] if kind == "container" else [kind, "ls"]
    done = docker(*args, "--filter", f"label={label}", "--format", fields[kind] + " {{.Labels}}")
    rows = [line.split(" ", 2) for line in done.stdout.splitlines() if line.strip()]
    return [DockerObject(kind, row[0], row[1], row[2] if len(row) > 2 else "") for row in rows]


def _pids(thing: DockerObject) -> set[int]:
    """The test processes whose project names (`docker_project()`) the object's labels carry."""
    return {int(match.group(1)) for match in _PROJECT.finditer(thing.labels)}


def ours(thing: DockerObject) -> bool:
    """Whether the object carries a project name of this test process: safe to remove."""
    return os.getpid() in _pids(thing)


def present() -> set[DockerObject]:
    """Everything labelled managed-by=mcpfleet now, to tell a test's leftovers from what was there before."""
    return {thing for kind in KINDS for thing in _listed(kind, MANAGED_BY)}


def leftovers(before: set[DockerObject]) -> list[DockerObject]:
    """What a test left behind: objects labelled managed-by=mcpfleet that were not there before it, less those
    that name a project of another test process (a concurrent session), and every object of a compose project
    named by `docker_project()`."""
    found: list[DockerObject] = []
    for kind in KINDS:
        found += [
            thing for thing in _listed(kind, MANAGED_BY) if thing not in before and (ours(thing) or not _pids(thing))
        ]
        for project in issued:
            found += [thing for thing in _listed(kind, f"{COMPOSE_PROJECT}={project}") if thing not in found]
    return found


def remove(found: list[DockerObject]) -> None:
    """Remove leftovers: containers first (with their anonymous volumes), then networks, then volumes. Callers
    pass only what is theirs (`ours`: a compose project's objects carry its name too)."""
    for kind, args in (("container", ["rm", "--force", "--volumes"]), ("network", ["network", "rm"])):
        if ids := [thing.id for thing in found if thing.kind == kind]:
            docker(*args, *ids, check=False)
    if names := [thing.name for thing in found if thing.kind == "volume"]:
        docker("volume", "rm", "--force", *names, check=False)
