"""The one translation from a registry entry's container fields to a container spec, for every backend.

`image`, `command`, `args`, `env`, `secret_env`, `port`, `path`, `resources`, `security` and `pull` mean
the same on Docker and Kubernetes (Plan Document, section 12.5): `container_spec` reads them once, and the
backends only spell the result in their own API (`deploy/docker/spec.py` as an Engine API body,
`deploy/kubernetes/manifests.py` as a pod template). A stdio server on Kubernetes runs behind `mcpfleet
adapter` in its pod, which serves it as Streamable HTTP; that wrapping happens here too, so both backends
see an ordinary container.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mcpfleet.registry.model import DockerServer, KubernetesServer, Security

ADAPTER_PORT = 8080  # where `mcpfleet adapter` serves a stdio server in a pod
ADAPTER = ("mcpfleet", "adapter")  # on the PATH of the server's image (docs/kubernetes.md, "stdio servers")


@dataclass(frozen=True)
class ContainerSpec:
    """What one container of a server runs.

    `entrypoint` replaces the image's entrypoint and `args` its command (None: the image's own), as in
    Kubernetes. `env`: literal values; `secret_env`: values that are secret (Docker puts them in the
    container's environment, Kubernetes in a Secret the pod reads), which win on a clash. `port`: the
    container port MCP is served on, at `path`; None for a stdio server attached to its stdin and stdout.
    `cpu`, `memory`: quantities (`500m`, `256Mi`). `pull`: `missing` or `never`."""

    image: str
    entrypoint: tuple[str, ...] | None
    args: tuple[str, ...] | None
    env: Mapping[str, str]
    secret_env: Mapping[str, str]
    port: int | None
    path: str
    cpu: str | None
    memory: str | None
    security: Security
    pull: Literal["missing", "never"]

    @property
    def stdio(self) -> bool:
        return self.port is None

    def environment(self) -> dict[str, str]:
        """`env`, then `secret_env` (which wins on a clash)."""
        return dict(self.env) | dict(self.secret_env)


def container_spec(entry: DockerServer | KubernetesServer) -> ContainerSpec:
    """The container of `entry`. A Kubernetes stdio entry (no `port`) becomes `mcpfleet adapter` serving
    its `command` and `args` on port 8080 at the entry's `path`, with its `pool` settings; a `chart` entry
    has no container of ours (ValueError)."""
    if entry.image is None:
        raise ValueError(f"server {entry.id!r} is installed from a chart: its containers are the chart's")
    entrypoint, args, port = entry.command, entry.args, entry.port
    if isinstance(entry, KubernetesServer) and entry.stdio:
        entrypoint = (*ADAPTER, *adapter_options(entry), "--", *(entry.command or ()), *(entry.args or ()))
        args, port = None, ADAPTER_PORT
    return ContainerSpec(
        image=entry.image,
        entrypoint=entrypoint,
        args=args,
        env=entry.env,
        secret_env=entry.secret_env,
        port=port,
        path=entry.path,
        cpu=entry.resources.cpu,
        memory=entry.resources.memory,
        security=entry.security,
        pull=entry.pull,
    )


def adapter_options(entry: KubernetesServer) -> list[str]:
    """The `mcpfleet adapter` options that serve `entry`'s stdio server in a pod: every address of the pod
    (the gateway reaches it by pod IP), the adapter port, the entry's path and its pool settings."""
    pool = entry.pool
    options = ["--host", "0.0.0.0", "--port", str(ADAPTER_PORT), "--path", entry.path]
    options += ["--mode", pool.mode, "--min", str(pool.min), "--max", str(pool.max)]
    if entry.stateless:
        options.append("--stateless")
    return options


_ONLY = {
    "docker": ("host_port", "volumes", "network"),
    "kubernetes": ("chart", "chart_version", "values", "namespace", "service_account", "discovery"),
}


def as_backend(entry: DockerServer | KubernetesServer, backend: str) -> DockerServer | KubernetesServer:
    """`entry` as an entry of `backend` (`docker` or `kubernetes`): `mcpfleet deploy --backend` runs one
    entry on either, since their common fields mean the same. Fields only the entry's own backend has are
    a ValueError naming them (`volumes` has no Kubernetes meaning here; `namespace` none in Docker)."""
    if entry.type == backend:
        return entry
    own = [name for name in _ONLY[entry.type] if name in entry.model_fields_set]
    if isinstance(entry, DockerServer) and "pids" in entry.resources.model_fields_set:
        own.append("resources.pids")
    if own:
        raise ValueError(
            f"server {entry.id!r} sets {', '.join(own)}, which only {entry.type} has: deploy it with its own"
            f" backend, or write a {backend} entry"
        )
    fields = entry.model_dump(include=set(entry.model_fields_set) - {"type", "resources"}, by_alias=False)
    resources = {key: getattr(entry.resources, key) for key in ("cpu", "memory")}
    target = KubernetesServer if backend == "kubernetes" else DockerServer
    return target.model_validate({**fields, "id": entry.id, "resources": resources})
