"""One connection to a Docker engine, over `aiodocker` (the Engine API on asyncio, aio-libs).

`Engine` is the only module that talks to Docker: the deployer, the gateway's Docker replica source and
the stdio containers all go through it. It turns the engine's failures into `DeployError`s that say what
is wrong and what to do (no engine, no permission on its socket, an image that does not exist, a port that
is taken), so no caller sees an aiohttp or aiodocker exception.

Why aiodocker and not the official `docker` SDK: the gateway is asyncio, and it holds long streams open
(the event stream, one attach stream per stdio container). The `docker` SDK is synchronous: each stream
would cost a thread, and half-closing an attach stream needs its raw socket. aiodocker is maintained by
aio-libs, speaks API 1.41 (Docker 20.10) and later, and gives both streams as coroutines (Plan Document,
section 12.2).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiodocker
import aiohttp
import anyio

from mcpfleet.deploy.docker.spec import label_filters
from mcpfleet.errors import DeployError, EngineUnavailableError

log = logging.getLogger("mcpfleet.docker")

DEFAULT_SOCKET = "/var/run/docker.sock"
REQUEST_TIMEOUT = 30.0  # seconds for one short Engine API call (create, start, inspect, list)
UNREACHABLE = 900  # aiodocker's status for a connection that failed
# Every short call (list, inspect, create, start, version) is bounded; aiodocker lifts `total` and `sock_read`
# itself for its long ones (attach, logs, stop, delete), which keep the connect bound; `events` sets its own.
CALL_TIMEOUT = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, sock_connect=5.0)
PULL_TIMEOUT = 600.0  # seconds an image pull may take (a first pull of a large image is slow)


def engine_address() -> str:
    """Where the engine is: `$DOCKER_HOST`, else the default unix socket."""
    return os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"


def _unreachable(address: str, detail: str) -> EngineUnavailableError:
    if address.startswith("unix://"):
        path = address.removeprefix("unix://")
        if not Path(path).exists():
            return EngineUnavailableError(
                f"no Docker engine: {path} does not exist (start dockerd, or set DOCKER_HOST to the engine's address)"
            )
        if not os.access(path, os.R_OK | os.W_OK):
            return EngineUnavailableError(
                f"no permission on the Docker socket {path} (run as a member of its group, usually 'docker',"
                " or as root)"
            )
    return EngineUnavailableError(f"the Docker engine at {address} does not answer ({detail}); is dockerd running?")


def _socket_missing(address: str) -> bool:
    return address.startswith("unix://") and not Path(address.removeprefix("unix://")).exists()


class Engine:
    """A Docker engine. `async with Engine() as engine:` checks it answers (else raises
    `EngineUnavailableError`, exit 3); a long-lived holder (the gateway) may skip that and let each call
    fail on its own. Every method raises `DeployError` on a refusal, `EngineUnavailableError` when the engine
    does not answer."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address or engine_address()
        self._docker: aiodocker.Docker | None = None
        self._connector: aiohttp.BaseConnector | None = None
        self._identity: bytes | None = None
        self._closed = False
        self.version: dict[str, Any] = {}

    async def __aenter__(self) -> Engine:
        try:
            await self.connect()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def identity(self) -> bytes:
        """The engine's ID (`docker info`), read once: the key of the spec digests in its containers' labels."""
        if self._identity is None:
            info = await self._call(self.docker.system.info())
            self._identity = str(info.get("ID", "")).encode()
        return self._identity

    async def connect(self) -> Engine:
        """Check that the engine answers (its version); EngineUnavailableError when it does not."""
        self.version = await self._call(self.docker.version())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()
        if self._connector is not None:
            connector, self._connector = self._connector, None
            await connector.close()

    @property
    def docker(self) -> aiodocker.Docker:
        """The aiodocker client (made on first use, in the event loop; its connections to the engine are
        made per request, so an engine that restarts is reached again without a new client)."""
        if self._docker is None:
            if self._closed:
                raise EngineUnavailableError(f"the connection to the Docker engine at {self.address} was closed")
            if not self.address.startswith(("unix://", "tcp://", "http://", "https://")):
                raise EngineUnavailableError(
                    f"DOCKER_HOST {self.address!r} is not an engine address mcpfleet can use: write"
                    " unix:///path/to/docker.sock or tcp://host:port (the engine must be on this machine)"
                )
            if _socket_missing(self.address):
                raise _unreachable(self.address, "no socket")
            # Each attached stdio container holds one connection for its life: no pool limit (aiohttp's
            # default of 100 would make the 101st container, and every other engine call, wait).
            if self.address.startswith("unix://"):
                self._connector = aiohttp.UnixConnector(path=self.address.removeprefix("unix://"), limit=0)
                # With a connector of ours, aiodocker takes the URL as it is: a dummy host, as it makes itself.
                self._docker = aiodocker.Docker(url="unix://localhost", connector=self._connector, timeout=CALL_TIMEOUT)
            else:
                self._docker = aiodocker.Docker(url=self.address, timeout=CALL_TIMEOUT)
        return self._docker

    async def _call(
        self, awaitable: Any, *, server_id: str | None = None, what: str = "", missing_ok: bool = False
    ) -> Any:
        """Await one Engine API call; its failures become DeployErrors. `missing_ok`: an object that does not
        exist (404) is None, not an error."""
        try:
            return await awaitable
        except aiodocker.DockerError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise self._error(exc, server_id=server_id, what=what) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _unreachable(self.address, str(exc) or type(exc).__name__) from None

    def _error(self, exc: aiodocker.DockerError, *, server_id: str | None = None, what: str = "") -> DeployError:
        if exc.status == UNREACHABLE:
            return _unreachable(self.address, exc.message)
        prefix = f"{what}: " if what else ""
        return DeployError(f"{prefix}the Docker engine refused: {exc.message}", server_id=server_id)

    # --- containers -----------------------------------------------------------------------------------

    async def containers(self, selector: Mapping[str, str], *, running_only: bool = False) -> list[dict[str, Any]]:
        """Summaries (`ContainerList` items: Id, Names, State, Labels, Ports, Created) of the containers that
        carry every label of `selector`, stopped ones included unless `running_only`."""
        found = await self._call(
            self.docker._query_json(
                "containers/json",
                params={"all": "0" if running_only else "1", "filters": json.dumps(label_filters(selector))},
            )
        )
        return list(found)

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        """`ContainerInspect` of a container; None when it does not exist (any more)."""
        found = await self._call(self.docker.containers.container(container_id).show(), missing_ok=True)
        return dict(found) if found is not None else None

    async def create(self, body: Mapping[str, Any], name: str, *, server_id: str) -> str:
        """Create a container; its id. A missing image and a taken name are named in the error."""
        try:
            created = await self.docker.containers.create(dict(body), name=name)
        except aiodocker.DockerError as exc:
            if exc.status == 404 and "image" in exc.message.lower():
                raise DeployError(
                    f"image {body['Image']!r} is not on the Docker engine (build it, or `docker pull` it;"
                    " registry entry field 'image')",
                    server_id=server_id,
                ) from None
            if exc.status == 409 and "already in use" in exc.message:
                raise NameTaken(name) from None
            raise self._error(exc, server_id=server_id, what=f"creating container {name}") from None
        return str(created.id)

    async def start(self, container_id: str, *, server_id: str, name: str = "") -> None:
        """Start a created container. A published port that is taken is named in the error."""
        try:
            await self.docker.containers.container(container_id).start()
        except aiodocker.DockerError as exc:
            message = exc.message
            if "port is already allocated" in message or "address already in use" in message:
                raise DeployError(
                    f"container {name or container_id[:12]} cannot publish its port: {message}", server_id=server_id
                ) from None
            what = f"starting container {name or container_id[:12]}"
            raise self._error(exc, server_id=server_id, what=what) from None

    async def remove(self, container_id: str, *, grace: float = 2.0) -> None:
        """Stop a container (SIGTERM, then SIGKILL after `grace` seconds) and remove it with its anonymous
        volumes. One that is already gone is not an error."""
        container = self.docker.containers.container(container_id)
        try:
            with anyio.fail_after(grace + REQUEST_TIMEOUT):  # bounded even when the engine stops answering
                with contextlib.suppress(aiodocker.DockerError):
                    await container.stop(t=max(0, math.ceil(grace)))
                await container.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # gone, or its removal already under way
                raise self._error(exc, what=f"removing container {container_id[:12]}") from None
        except TimeoutError:
            raise DeployError(f"removing container {container_id[:12]}: the Docker engine did not answer") from None

    async def kill(self, container_id: str) -> None:
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.containers.container(container_id).kill()

    async def logs(self, container_id: str, *, tail: int = 20) -> str:
        """The last `tail` lines the container wrote (stdout and stderr); empty when there are none."""
        try:
            lines = await self.docker.containers.container(container_id).log(stdout=True, stderr=True, tail=tail)
        except aiodocker.DockerError:
            return ""
        return "".join(lines).rstrip("\n")

    async def follow_logs(self, container_id: str, *, tail: int = 20) -> AsyncIterator[str]:
        """The container's output as it comes, from its last `tail` lines; ends when the container stops."""
        stream = self.docker.containers.container(container_id).log(stdout=True, stderr=True, follow=True, tail=tail)
        try:
            async for chunk in stream:
                yield chunk
        except aiodocker.DockerError as exc:
            raise self._error(exc, what=f"following the logs of {container_id[:12]}") from None

    async def image_present(self, image: str) -> bool:
        return await self._call(self.docker.images.inspect(image), missing_ok=True) is not None

    async def ensure_image(self, image: str, *, pull: str, server_id: str, within: float) -> None:
        """Make sure `image` is on the engine: pull it when missing and `pull` is `missing`, once and bounded
        by `within` seconds. A DeployError names the image when it cannot be had (never a retry storm: the
        caller's backoff decides when to try again)."""
        if await self.image_present(image):
            return
        if pull == "never":
            raise DeployError(
                f"image {image!r} is not on the Docker engine and 'pull' is 'never' (build or load it first)",
                server_id=server_id,
            )
        started = time.monotonic()
        try:
            with anyio.fail_after(within):
                await self.docker.images.pull(image)
        except (aiodocker.DockerError, TimeoutError, aiohttp.ClientError) as exc:
            detail = getattr(exc, "message", None) or str(exc) or f"no answer within {within:g} s"
            raise DeployError(
                f"image {image!r} is not on the Docker engine and could not be pulled ({detail}); build it, or check"
                " the name (registry entry field 'image')",
                server_id=server_id,
            ) from None
        log.info("pulled image %s in %.1f s", image, time.monotonic() - started)

    # --- networks and volumes --------------------------------------------------------------------------

    async def networks(self, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        return list(await self._call(self.docker.networks.list(filters=label_filters(selector))))

    async def volumes(self, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        listing = self.docker.volumes.list(filters=label_filters(selector))  # type: ignore[no-untyped-call]
        found = await self._call(listing)
        return list(found.get("Volumes") or [])

    async def ensure_network(self, name: str, labels: Mapping[str, str], *, server_id: str) -> bool:
        """Create the bridge network `name` with `labels` unless a network of that name exists; whether it
        was created."""
        existing = await self._call(self.docker.networks.list(filters={"name": [name]}))
        if any(network.get("Name") == name for network in existing):
            return False
        try:
            # CheckDuplicate: two starts racing here leave one network, not two of one name (API 1.41 allows it).
            await self.docker.networks.create(
                {"Name": name, "Driver": "bridge", "Labels": dict(labels), "CheckDuplicate": True}
            )
        except aiodocker.DockerError as exc:
            if exc.status == 409:
                return False
            raise self._error(exc, server_id=server_id, what=f"creating network {name}") from None
        return True

    async def ensure_volume(self, name: str, labels: Mapping[str, str], *, server_id: str) -> bool:
        """Create the named volume `name` with `labels` unless it exists; whether it was created."""
        if await self._call(self.docker.volumes.get(name), missing_ok=True) is not None:  # type: ignore[no-untyped-call]
            return False
        await self._call(
            self.docker.volumes.create(  # type: ignore[no-untyped-call]
                {"Name": name, "Labels": dict(labels)}
            ),
            server_id=server_id,
            what=f"creating volume {name}",
        )
        return True

    async def remove_network(self, name: str) -> None:
        """Remove a network; one that is gone is not an error, one still in use is (DeployError)."""

        async def delete() -> None:
            await (await self.docker.networks.get(name)).delete()

        await self._call(delete(), what=f"removing network {name}", missing_ok=True)

    async def remove_volume(self, name: str) -> None:
        """Remove a volume and its data; one that is gone is not an error, one still in use is (DeployError)."""

        async def delete() -> None:
            await (await self.docker.volumes.get(name)).delete()  # type: ignore[no-untyped-call]

        await self._call(delete(), what=f"removing volume {name}", missing_ok=True)

    # --- events ----------------------------------------------------------------------------------------

    async def events(
        self, selector: Mapping[str, str], *, since: float | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Container events (`create`, `start`, `die`, `destroy`, ...) of containers carrying `selector`'s
        labels, from `since` (seconds since the epoch) on. Ends when the engine closes the stream (an engine
        restart): the caller lists again and resumes (section 11)."""
        params: dict[str, Any] = {"filters": json.dumps({**label_filters(selector), "type": ["container"]})}
        if since is not None:
            params["since"] = f"{since:.9f}"
        try:
            async with self.docker._query("events", params=params, timeout=aiohttp.ClientTimeout()) as response:
                async for line in response.content:
                    if line.strip():
                        yield json.loads(line)
        except aiodocker.DockerError as exc:
            raise self._error(exc, what="watching events") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _unreachable(self.address, str(exc) or type(exc).__name__) from None


class NameTaken(DeployError):
    """A container of that name exists already (another deployer made it first)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a container named {name} exists already")
        self.name = name
