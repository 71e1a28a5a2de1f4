"""What mcpfleet asks the Docker engine for: pure functions from a `docker` registry entry to Engine API
bodies, names and labels. Nothing here talks to the engine, so all of it is unit-tested.

Every object mcpfleet creates carries `app.kubernetes.io/managed-by=mcpfleet` (the Kubernetes recommended
label, so one selector finds what mcpfleet made on both backends), its project (`mcpfleet.project`, from
`--project` or `$MCPFLEET_PROJECT`) and, for containers, its server id, its role and the digest of its spec.
Clean-up selects by these labels and never by name, so it removes what mcpfleet made and nothing else.

The container body follows the Engine API's `ContainerCreate` (API 1.41, Docker 20.10 and later):
https://docs.docker.com/engine/api/v1.41/#tag/Container/operation/ContainerCreate
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from mcpfleet.deploy.container import container_spec
from mcpfleet.errors import UsageError
from mcpfleet.registry.model import DockerServer, Server

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "mcpfleet"
PROJECT = "mcpfleet.project"
SERVER = "mcpfleet.server"
ROLE = "mcpfleet.role"  # replica (an HTTP server's container) or session (a stdio container)
SPEC = "mcpfleet.spec"  # digest of what the container runs: a different one is replaced on deploy
PORT = "mcpfleet.port"  # the container port the MCP server listens on
OWNER = "mcpfleet.owner"  # stdio containers: the gateway process that attached to them (host:pid)

DEFAULT_PROJECT = "mcpfleet"
PROJECT_ENV = "MCPFLEET_PROJECT"
_PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,30}")
TMPFS = "/tmp"  # writable with a read-only root filesystem
TMPFS_OPTIONS = "rw,noexec,nosuid,size=64m"
LOG_CONFIG = {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}}
BODY_VERSION = 1  # raised when what `container_body` makes changes, so an upgrade rolls the replicas out

Role = Literal["replica", "session"]

_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def docker_entry(entry: Server) -> DockerServer:
    """`entry` as a docker entry, or a UsageError (exit 2) saying its type is not deployed by this backend."""
    if not isinstance(entry, DockerServer):
        raise UsageError(
            f"server {entry.id!r} is of type {entry.type!r}: only 'docker' entries are deployed (an http server"
            " runs elsewhere, a stdio server is spawned by whoever uses it)"
        )
    return entry


def project_name(given: str | None = None) -> str:
    """The project: `given`, else `$MCPFLEET_PROJECT`, else `mcpfleet`. UsageError (exit 2) names the rule."""
    name = given or os.environ.get(PROJECT_ENV) or DEFAULT_PROJECT
    if not _PROJECT_NAME.fullmatch(name):
        raise UsageError(
            f"project {name!r} is not valid: lowercase letters, digits, '.', '_' and '-', at most 31 characters"
            f" (set by --project or ${PROJECT_ENV})"
        )
    return name


def labels(project: str, server_id: str | None = None, role: Role | None = None) -> dict[str, str]:
    """The labels of an object mcpfleet creates (and the selector that finds it: every label must match)."""
    found = {MANAGED_BY: MANAGER, PROJECT: project}
    if server_id is not None:
        found[SERVER] = server_id
    if role is not None:
        found[ROLE] = role
    return found


def label_filters(selector: Mapping[str, str]) -> dict[str, list[str]]:
    """The Engine API `filters` argument that selects objects carrying every label of `selector`."""
    return {"label": [f"{key}={value}" for key, value in selector.items()]}


def replica_name(project: str, server_id: str, index: int) -> str:
    """`<project>-<server id>-<n>`, n from 1: the name of an HTTP server's n-th replica container."""
    return f"{project}-{server_id}-{index}"


def session_name(project: str, server_id: str, token: str) -> str:
    """`<project>-<server id>-s-<token>`: a stdio container (one per session or shared process)."""
    return f"{project}-{server_id}-s-{token}"


def cpu_nanos(quantity: str) -> int:
    """A CPU quantity (`500m`, `0.5`, `2`) in billionths of a CPU (`NanoCpus`)."""
    if quantity.endswith("m"):
        return int(float(quantity[:-1]) * 10**6)
    return int(float(quantity) * 10**9)


def memory_bytes(quantity: str) -> int:
    """A memory quantity (`256Mi`, `1G`, `1048576`) in bytes."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kMGT]i?|Ki)?", quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a memory quantity such as 256Mi or 1Gi")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def port_key(entry: DockerServer) -> str:
    """The container port in the Engine API's form (`8080/tcp`)."""
    assert entry.port is not None
    return f"{entry.port}/tcp"


def environment(entry: DockerServer) -> list[str]:
    """`KEY=value` for `env`, then `secret_env` (which wins on a clash)."""
    return [f"{key}={value}" for key, value in container_spec(entry).environment().items()]


def spec_digest(entry: DockerServer, key: bytes = b"") -> str:
    """12 hex digits of HMAC-SHA-256, keyed by `key` (the engine's ID, so a label seen elsewhere confirms
    nothing about the secrets in it), over everything that decides what a container runs: image, entrypoint,
    command, environment (secret values included, so a new secret rolls the replicas out), port, resources,
    volumes, network and security. Settings the gateway reads (balancer, timeouts, replicas, pool sizes) are
    not in it: changing them replaces no container."""
    what = {
        "image": entry.image,
        "command": entry.command,
        "args": entry.args,
        "env": environment(entry),
        "port": entry.port,
        "host_port": entry.host_port,
        "resources": entry.resources.model_dump(),
        "volumes": [volume.model_dump() for volume in entry.volumes],
        "network": entry.network,
        "security": entry.security.model_dump(),
        "body": BODY_VERSION,
    }
    return hmac.new(key, json.dumps(what, sort_keys=True).encode(), hashlib.sha256).hexdigest()[:12]


def network_mode(entry: DockerServer) -> str:
    """The entry's network; by default `bridge` for an HTTP server (its port is published) and `none` for a
    stdio server (it talks only through its stdin and stdout)."""
    return entry.network or ("none" if entry.stdio else "bridge")


def container_body(
    entry: DockerServer, *, project: str, name: str, role: Role, digest: str, owner: str | None = None
) -> dict[str, Any]:
    """The `ContainerCreate` body of one container of `entry`.

    HTTP servers publish `port` on 127.0.0.1 with a host port the engine picks (read back with
    `published_port`); stdio servers get stdin kept open until the attached client closes it (`OpenStdin`,
    `StdinOnce`) and no TTY, so stdout and stderr stay apart. Confinement: every capability dropped but
    `security.cap_add`, `no-new-privileges`, a pids limit, an init process as PID 1 (signals reach the
    server), bounded json-file logs, no restart policy (the gateway replaces crashed replicas itself)."""
    container = container_spec(entry)
    security = container.security
    host: dict[str, Any] = {
        "NetworkMode": network_mode(entry),
        "CapDrop": ["ALL"],
        "CapAdd": list(security.cap_add) or None,
        "SecurityOpt": ["no-new-privileges"] if security.no_new_privileges else [],
        "ReadonlyRootfs": security.read_only,
        "Init": True,
        "RestartPolicy": {"Name": "no"},
        "LogConfig": LOG_CONFIG,
        "Mounts": [
            {
                "Type": "bind" if volume.source.startswith("/") else "volume",
                "Source": volume.source,
                "Target": volume.target,
                "ReadOnly": volume.read_only,
            }
            for volume in entry.volumes
        ],
    }
    if security.read_only:
        host["Tmpfs"] = {TMPFS: TMPFS_OPTIONS}
    if entry.resources.pids is not None:
        host["PidsLimit"] = entry.resources.pids
    if container.cpu is not None:
        host["NanoCpus"] = cpu_nanos(container.cpu)
    if container.memory is not None:
        host["Memory"] = memory_bytes(container.memory)
    body: dict[str, Any] = {
        "Image": container.image,
        "Hostname": name[:63],
        "Env": [f"{key}={value}" for key, value in container.environment().items()],
        "Labels": labels(project, entry.id, role) | {SPEC: digest},
        "Tty": False,
        "HostConfig": host,
    }
    if container.entrypoint is not None:
        body["Entrypoint"] = list(container.entrypoint)
    if container.args is not None:
        body["Cmd"] = list(container.args)
    if security.user is not None:
        body["User"] = security.user
    if container.stdio:
        body |= {"OpenStdin": True, "StdinOnce": True, "AttachStdin": True, "AttachStdout": True, "AttachStderr": True}
        if owner is not None:
            body["Labels"][OWNER] = owner
    else:
        body["Labels"][PORT] = str(container.port)
        body["ExposedPorts"] = {port_key(entry): {}}
        host_port = "" if entry.host_port is None else str(entry.host_port)
        host["PortBindings"] = {port_key(entry): [{"HostIp": "127.0.0.1", "HostPort": host_port}]}
    return body


def masked(body: Mapping[str, Any], entry: DockerServer) -> dict[str, Any]:
    """`body` with the values of `secret_env` replaced by `***`, for `--dry-run` and `--json` output."""
    secrets = set(entry.secret_env)
    env = [item if item.split("=", 1)[0] not in secrets else item.split("=", 1)[0] + "=***" for item in body["Env"]]
    return {**body, "Env": env}


def published_port(inspected: Mapping[str, Any], port: int) -> int | None:
    """The host port on 127.0.0.1 that a started container's `port` is published on (`ContainerInspect`'s
    `NetworkSettings.Ports`); None before the engine has bound it, or when it is not published."""
    bindings = ((inspected.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") == "127.0.0.1" and binding.get("HostPort"):
            return int(binding["HostPort"])
    return None
