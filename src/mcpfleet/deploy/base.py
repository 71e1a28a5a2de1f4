"""What every deployment backend gives: replica status, planned changes, and the `Deployer` protocol.

A deployer converges what runs on a backend (containers today; pods next) on what a registry entry asks for,
and reports it. It is used by the CLI (`mcpfleet deploy`, `scale`, `status`, `logs`, `remove`) and by the
gateway, which starts, replaces and stops replicas through the same code (Plan Document, section 12.1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from mcpfleet.registry.model import Server
from mcpfleet.replicas.source import ReplicaSource


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica (a container) as the backend reports it.

    `state`: the backend's word (Docker's `created`, `running`, `exited`, `dead`, ...). `address`: the base
    URL the gateway and the CLI reach it at (`http://127.0.0.1:<published port>`), None for a stdio container
    or before its port is published. `current`: it runs the entry's present spec (None: unknown, no registry
    was read; an older one is replaced
    by the next deploy). `exit_code`: for a replica that stopped."""

    server_id: str
    name: str
    id: str
    role: str
    state: str
    address: str | None = None
    current: bool | None = True
    exit_code: int | None = None
    created: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Change:
    """One thing a deploy, scale or remove does (or, with `--dry-run`, would do).

    `action`: create, update (Kubernetes: apply a changed object), scale or remove. `kind`: container,
    network or volume (Docker); Deployment, Service or Secret (Kubernetes). `reason`: why, in words ("replica 2
    of 3", "runs an older spec", "beyond 1 replica"). `body`: for a container to create, the Engine API body
    with secret values masked."""

    action: Literal["create", "update", "scale", "remove"]
    kind: str  # container, network, volume; Deployment, Service, Secret
    name: str
    server_id: str | None
    reason: str
    body: Mapping[str, Any] | None = field(default=None, compare=False)

    def as_json(self) -> dict[str, Any]:
        found = asdict(self)
        if self.body is None:
            del found["body"]
        return found


Progress = Callable[[str], None]  # told each step of a long wait, in words


class Deployer(Protocol):
    """A deployment backend. Every method raises `DeployError` (exit 3) when the backend refuses."""

    async def plan(self, entry: Server, replicas: int | None = None) -> list[Change]:
        """What `up(entry, replicas)` would change; touches nothing."""
        ...

    async def up(
        self, entry: Server, replicas: int | None = None, *, progress: Progress | None = None
    ) -> list[ReplicaStatus]:
        """Converge on `replicas` (default: the entry's) replicas of the entry's present spec, each ready;
        idempotent. New replicas that do not become ready are removed and nothing old is replaced."""
        ...

    async def plan_down(self, server_id: str | None = None) -> list[Change]:
        """What `down(server_id)` would remove; touches nothing."""
        ...

    async def down(self, server_id: str | None = None) -> list[Change]:
        """Remove what this backend made for `server_id` (None: for every server of the project)."""
        ...

    async def status(self, server_id: str | None = None) -> list[ReplicaStatus]:
        """The replicas that exist, running or not."""
        ...


class Deployment(Protocol):
    """What the gateway holds for a server whose replicas a backend starts and stops (a docker HTTP entry):
    where the replicas are (`source`), and the hooks that scale it from and to zero (section 12.2)."""

    @property
    def source(self) -> ReplicaSource: ...

    @property
    def retry_after(self) -> int:
        """Whole seconds a client should wait before trying again after `wake` failed."""
        ...

    async def run(self) -> None:
        """Keep the replicas (replace crashed ones, scale to zero when idle) until cancelled."""
        ...

    async def wake(self) -> None:
        """Start replicas when none runs, and return when the start ended (every new replica ready, or the
        start failed); DeployError if it failed or took too long."""
        ...

    def request_started(self) -> None: ...

    def request_ended(self) -> None: ...

    def configure(self, entry: Any) -> None:
        """A reload changed the registry entry (one of this backend's type: a `DockerServer` for Docker)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What `/servers` shows of it (JSON values)."""
        ...

    @property
    def drains(self) -> bool:
        """Whether a replica that stops serving still holds its sessions for `timeouts.drain` (a terminating
        pod serves until it is gone) or is dropped at once (a container that left is gone)."""
        ...

    def removed(self) -> None:
        """The entry left the registry (or changed backend): `aclose` removes what was made for it."""
        ...

    def hand_over(self, successor: Any) -> None:
        """Another deployment of the same server keeps the replicas now: what this one started is its."""
        ...

    async def aclose(self) -> None:
        """Remove what this deployment started."""
        ...
