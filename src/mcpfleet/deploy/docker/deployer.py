"""The Docker deployer: converge containers on a `docker` entry, report them, remove them (section 12.2).

The engine's state is the truth: there is no file of ours. A replica is a container labelled with the
project, the server id, the role `replica` and the digest of its spec (`spec.py`). `up(entry, n)`:

1. plan: keep up to n running containers of the present spec (lowest names first), create the missing
   ones (names `<project>-<id>-<k>` with the lowest free k), remove the rest (stopped ones, older specs,
   beyond n);
2. create and start the new ones, all at once, and wait until each is ready: its MCP endpoint answers HTTP
   below 500 on 127.0.0.1 (any answer: the server is up) within `timeouts.startup`; a container that exits
   meanwhile fails the deploy with its last log lines;
3. if any new one fails, remove every new one and keep the old ones (a failed deploy replaces nothing);
   else remove the old and extra ones (SIGTERM, `timeouts.shutdown`, SIGKILL).

Deploying twice changes nothing the second time; two deployers racing for one name leave one container
(the engine refuses the second name, which counts as made). A stdio entry has no standing containers
(one per session, made by whoever opens the session): deploying it checks its image only.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import anyio
import anyio.abc
import httpx2

from mcpfleet.deploy.base import Change, Progress, ReplicaStatus
from mcpfleet.deploy.docker import spec
from mcpfleet.deploy.docker.engine import PULL_TIMEOUT, Engine, NameTaken
from mcpfleet.deploy.docker.spec import docker_entry
from mcpfleet.errors import DeployError
from mcpfleet.registry.model import DockerServer, Server

log = logging.getLogger("mcpfleet.docker")

READY_POLL = 0.01  # seconds before the second readiness check of a starting container, doubling up to:
READY_POLL_MAX = 0.1
PROBE_TIMEOUT = 2.0  # seconds for one readiness request
LOG_LINES = 20  # log lines quoted when a container exits during a deploy
_BUILTIN_NETWORKS = frozenset({"bridge", "host", "none"})
_EXITED = re.compile(r"Exited \((-?\d+)\)")


def replica_status(summary: Mapping[str, Any], digest: str | None = None) -> ReplicaStatus:
    """A `ContainerList` item as a ReplicaStatus; `digest`: the present spec's, to tell old replicas apart."""
    labels = summary.get("Labels") or {}
    port = labels.get(spec.PORT)
    address = None
    for binding in summary.get("Ports") or []:
        if str(binding.get("PrivatePort")) == port and binding.get("PublicPort") and binding.get("IP") == "127.0.0.1":
            address = f"http://127.0.0.1:{binding['PublicPort']}"
            break
    exited = _EXITED.search(summary.get("Status") or "")
    return ReplicaStatus(
        server_id=labels.get(spec.SERVER, ""),
        name=(summary.get("Names") or ["/?"])[0].lstrip("/"),
        id=summary.get("Id", ""),
        role=labels.get(spec.ROLE, ""),
        state=summary.get("State", ""),
        address=address,
        current=digest is None or labels.get(spec.SPEC) == digest,
        exit_code=int(exited.group(1)) if exited else None,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(summary.get("Created", 0))),
    )


class DockerDeployer:
    """The `Deployer` of Docker containers, for one project on one engine."""

    def __init__(self, engine: Engine, project: str) -> None:
        self.engine = engine
        self.project = project

    # --- reading ---------------------------------------------------------------------------------------

    async def status(self, server_id: str | None = None, *, digest: str | None = None) -> list[ReplicaStatus]:
        """Every container of the project (of `server_id` when given), sorted by server and name."""
        found = await self.engine.containers(spec.labels(self.project, server_id))
        replicas = [replica_status(summary, digest) for summary in found]
        return sorted(replicas, key=lambda r: (r.server_id, _index(r.name), r.name))

    async def replicas(self, entry: DockerServer) -> list[ReplicaStatus]:
        """The entry's replica containers, each marked current or not against its present spec."""
        found = await self.engine.containers(spec.labels(self.project, entry.id, "replica"))
        digest = await self.digest(entry)
        return sorted((replica_status(s, digest) for s in found), key=lambda r: (_index(r.name), r.name))

    async def digest(self, entry: DockerServer) -> str:
        """The entry's spec digest on this engine (keyed by its ID): the `mcpfleet.spec` label."""
        return spec.spec_digest(entry, await self.engine.identity())

    async def plan(self, entry: Server, replicas: int | None = None) -> list[Change]:
        docker = docker_entry(entry)
        return [*await self._supporting(docker), *await self._replica_changes(docker, replicas)]

    async def _replica_changes(self, docker: DockerServer, replicas: int | None) -> list[Change]:
        """The containers `up(docker, replicas)` creates and removes (none for a stdio entry)."""
        changes: list[Change] = []
        if docker.stdio:
            return changes
        want = docker.replicas if replicas is None else replicas
        existing = await self.replicas(docker)
        digest = await self.digest(docker)
        keep = [r for r in existing if r.current and r.running][:want]
        taken = {_index(r.name) for r in existing}
        free = (k for k in range(1, 10**6) if k not in taken)
        for number in range(len(keep) + 1, want + 1):
            name = spec.replica_name(self.project, docker.id, next(free))
            body = spec.container_body(docker, project=self.project, name=name, role="replica", digest=digest)
            reason = f"replica {number} of {want}"
            changes.append(Change("create", "container", name, docker.id, reason, spec.masked(body, docker)))
        for replica in existing:
            if replica in keep:
                continue
            if not replica.current:
                reason = "runs an older spec of the entry"
            elif not replica.running:
                reason = f"is {replica.state}" + (f" (exit code {replica.exit_code})" if replica.exit_code else "")
            else:
                reason = f"beyond {want} replica{'s' if want != 1 else ''}"
            changes.append(Change("remove", "container", replica.name, docker.id, reason))
        return changes

    async def _supporting(self, entry: DockerServer) -> list[Change]:
        """Networks and named volumes the entry names that do not exist: made (and labelled) by us."""
        changes: list[Change] = []
        if entry.network is not None and entry.network not in _BUILTIN_NETWORKS:
            existing = await self.engine.networks({})
            if not any(n.get("Name") == entry.network for n in existing):
                changes.append(Change("create", "network", entry.network, entry.id, "named by 'network'"))
        for volume in entry.volumes:
            if not volume.source.startswith("/") and not await self._volume_exists(volume.source):
                changes.append(Change("create", "volume", volume.source, entry.id, f"mounted at {volume.target}"))
        return changes

    async def _volume_exists(self, name: str) -> bool:
        return any(v.get("Name") == name for v in await self.engine.volumes({}))

    async def plan_down(self, server_id: str | None = None) -> list[Change]:
        changes = [
            Change("remove", "container", r.name, r.server_id, f"{r.role}, {r.state}")
            for r in await self.status(server_id)
        ]
        selector = spec.labels(self.project, server_id)
        for network in await self.engine.networks(selector):
            owner = (network.get("Labels") or {}).get(spec.SERVER)
            changes.append(Change("remove", "network", network["Name"], owner, "made by mcpfleet"))
        for volume in await self.engine.volumes(selector):
            owner = (volume.get("Labels") or {}).get(spec.SERVER)
            changes.append(Change("remove", "volume", volume["Name"], owner, "made by mcpfleet"))
        return changes

    # --- changing --------------------------------------------------------------------------------------

    async def up(
        self, entry: Server, replicas: int | None = None, *, progress: Progress | None = None
    ) -> list[ReplicaStatus]:
        docker = docker_entry(entry)
        tell = progress or (lambda _: None)
        tell(f"checking image {docker.image}")
        await self.prepare(docker)
        changes = await self._replica_changes(docker, replicas)  # prepare made the network and volumes
        creating = [c.name for c in changes if c.action == "create" and c.kind == "container"]
        removing = {c.name for c in changes if c.action == "remove" and c.kind == "container"}
        if creating:
            tell(f"starting {len(creating)} container{'s' if len(creating) != 1 else ''} of {docker.id}")
            await self._start_all(docker, creating)
        if removing:
            tell(f"removing {len(removing)} container{'s' if len(removing) != 1 else ''} of {docker.id}")
            existing = await self.replicas(docker)
            await self.remove_all([r.id for r in existing if r.name in removing], docker.timeouts.shutdown)
        return await self.replicas(docker)

    async def prepare(self, entry: DockerServer) -> None:
        """What every container of `entry` needs before it is created: its image (pulled per `pull`, bounded by
        PULL_TIMEOUT), and the network and named volumes it names, made and labelled as ours when
        missing (so `remove` deletes them, and never one that was there before)."""
        await self.engine.ensure_image(entry.image, pull=entry.pull, server_id=entry.id, within=PULL_TIMEOUT)
        for change in await self._supporting(entry):
            if change.kind == "network":
                await self.engine.ensure_network(change.name, self._owned(entry.id), server_id=entry.id)
            else:
                await self.engine.ensure_volume(change.name, self._owned(entry.id), server_id=entry.id)

    def _owned(self, server_id: str) -> dict[str, str]:
        return spec.labels(self.project, server_id)

    async def _start_all(self, entry: DockerServer, names: list[str]) -> None:
        """Create, start and wait for each named replica, at once. If any fails, or the wait is cancelled,
        every one made here is removed (shielded) and the first failure raised."""
        made: list[str] = []
        failures: list[DeployError] = []
        digest = await self.digest(entry)

        async def one(name: str) -> None:
            body = spec.container_body(entry, project=self.project, name=name, role="replica", digest=digest)
            try:
                with anyio.CancelScope(shield=True):  # a container the engine made must be known to be removed
                    container_id = await self.engine.create(body, name, server_id=entry.id)
                    made.append(container_id)
            except NameTaken:
                await self._made_by_us(entry, name)  # another deployer of ours made it: it counts as made
                return
            except DeployError as exc:
                failures.append(exc)
                return
            try:
                await self.engine.start(container_id, server_id=entry.id, name=name)
                await self.wait_ready(entry, container_id, name)
            except DeployError as exc:
                failures.append(exc)

        try:
            async with anyio.create_task_group() as group:
                for name in names:
                    group.start_soon(one, name)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.remove_all(made, 0)
            raise
        if failures:
            with anyio.CancelScope(shield=True):
                await self.remove_all(made, 0)
            raise failures[0]

    async def _made_by_us(self, entry: DockerServer, name: str) -> None:
        """The container named `name` exists: fine if it is a replica of this entry in this project (another
        deployer raced us), else a DeployError naming the clash."""
        inspected = await self.engine.inspect(name) or {}
        labels = (inspected.get("Config") or {}).get("Labels") or {}
        if {k: labels.get(k) for k in spec.labels(self.project, entry.id, "replica")} != spec.labels(
            self.project, entry.id, "replica"
        ):
            raise DeployError(
                f"a container named {name} exists and is not a replica of this server in project"
                f" {self.project!r}: remove or rename it, or choose another project (--project, $MCPFLEET_PROJECT)",
                server_id=entry.id,
            )

    async def remove_all(self, container_ids: Iterable[str], grace: float) -> list[DeployError]:
        """Remove each container (SIGTERM, `grace` seconds, SIGKILL), all at once; the failures, each logged."""
        failures: list[DeployError] = []

        async def remove(container_id: str) -> None:
            try:
                await self.engine.remove(container_id, grace=grace)
            except DeployError as exc:
                log.error("%s", exc)
                failures.append(exc)

        async with anyio.create_task_group() as group:
            for container_id in container_ids:
                group.start_soon(remove, container_id)
        return failures

    async def wait_ready(self, entry: DockerServer, container_id: str, name: str) -> str:
        """Wait until the replica's MCP endpoint answers HTTP below 500 on 127.0.0.1, up to
        `timeouts.startup` seconds; its base URL. DeployError if it exits (with its last log lines) or
        does not answer in time."""
        assert entry.port is not None
        deadline = time.monotonic() + entry.timeouts.startup
        poll = READY_POLL
        async with httpx2.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False) as client:
            while True:
                inspected = await self.engine.inspect(container_id)
                state = (inspected or {}).get("State") or {}
                if inspected is None or not state.get("Running"):
                    code = state.get("ExitCode")
                    logs = await self.engine.logs(container_id, tail=LOG_LINES) if inspected else ""
                    what = f"exited with code {code}" if inspected else "was removed"
                    raise DeployError(f"container {name} {what} before it was ready", server_id=entry.id, logs=logs)
                port = spec.published_port(inspected, entry.port)
                if port is not None and await answers(client, f"http://127.0.0.1:{port}{entry.path}"):
                    return f"http://127.0.0.1:{port}"
                if time.monotonic() > deadline:
                    logs = await self.engine.logs(container_id, tail=LOG_LINES)
                    raise DeployError(
                        f"container {name} did not answer on {entry.path} within {entry.timeouts.startup:g} s"
                        " (setting: timeouts.startup)",
                        server_id=entry.id,
                        logs=logs,
                    )
                await anyio.sleep(poll)
                poll = min(READY_POLL_MAX, poll * 2)

    async def down(self, server_id: str | None = None) -> list[Change]:
        changes = await self.plan_down(server_id)
        containers = [r.id for r in await self.status(server_id)]
        failures = await self.remove_all(containers, 2.0)
        if failures:
            raise failures[0]  # a network or volume in use by a container left could not go either
        for change in changes:
            if change.kind == "network":
                await self.engine.remove_network(change.name)
            elif change.kind == "volume":
                await self.engine.remove_volume(change.name)
        return changes

    # --- logs ------------------------------------------------------------------------------------------

    async def logs(self, server_id: str, *, tail: int = 50, follow: bool = False) -> AsyncIterator[tuple[str, str]]:
        """(container name, line) of each container of `server_id`; with `follow`, as they come until every
        container stops (or the caller stops reading)."""
        replicas = await self.status(server_id)
        if not follow:
            for replica in replicas:
                for line in (await self.engine.logs(replica.id, tail=tail)).splitlines():
                    yield replica.name, line
            return
        send, receive = anyio.create_memory_object_stream[tuple[str, str]](256)

        async def pump(replica: ReplicaStatus, out: anyio.abc.ObjectSendStream[tuple[str, str]]) -> None:
            async with out:
                pending = ""
                async for chunk in self.engine.follow_logs(replica.id, tail=tail):
                    pending += chunk
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        await out.send((replica.name, line))

        async with anyio.create_task_group() as group:
            async with send:  # cloned before the tasks start: the stream ends when the last pump ends
                for replica in replicas:
                    group.start_soon(pump, replica, send.clone())
            async with receive:
                async for item in receive:
                    yield item


async def answers(client: httpx2.AsyncClient, url: str) -> bool:
    """Whether an MCP endpoint is up: an HTTP answer below 500 to a GET of its path, 404 excepted (a wrong
    `path`). docker-proxy accepts the TCP connection before the server listens, so TCP is not it."""
    try:
        response = await client.get(url, headers={"accept": "application/json, text/event-stream"})
    except httpx2.HTTPError:
        return False
    return response.status_code < 500 and response.status_code != 404


def _index(name: str) -> int:
    """k of a replica name `<project>-<id>-<k>`; 0 for other names."""
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
