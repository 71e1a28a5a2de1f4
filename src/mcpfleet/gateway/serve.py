"""Run the gateway: uvicorn in front of a `Gateway`, plus the reload triggers (file watch, SIGHUP).

The registry file's directory is watched, not the file, so atomic renames and Kubernetes ConfigMap
symlink swaps (`..data`) are seen; a change reloads only when the file's content changed.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
from pathlib import Path

import anyio
import uvicorn

from mcpfleet.gateway.app import Gateway, file_digest
from mcpfleet.registry import Registry

log = logging.getLogger("mcpfleet.gateway")
RESCAN_MS = 2000  # the registry file is checked at least this often, events or not


def raise_descriptor_limit() -> int:
    """Every proxied stream holds two descriptors: lift the soft limit to the hard one (no privilege
    needed). Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(
    registry: Registry,
    *,
    registry_path: Path | None,
    host: str,
    port: int,
    tls_certfile: str | None = None,
    tls_keyfile: str | None = None,
    watch: bool = True,
) -> None:
    log.info("file descriptor limit: %d", raise_descriptor_limit())
    async with Gateway(registry, registry_path=registry_path, host=host) as gateway:
        config = uvicorn.Config(
            gateway,
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            ssl_certfile=tls_certfile,
            ssl_keyfile=tls_keyfile,
            timeout_graceful_shutdown=25,
            ws="websockets-sansio",
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_reload_on_sighup, gateway)
            if registry_path is not None and watch:
                tg.start_soon(_reload_on_change, gateway, registry_path)
            await server.serve()
            tg.cancel_scope.cancel()


async def _reload_on_sighup(gateway: Gateway) -> None:
    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("SIGHUP: reloading the registry")
            await gateway.reload()


async def _reload_on_change(gateway: Gateway, path: Path) -> None:
    from watchfiles import awatch

    directory = await anyio.to_thread.run_sync(lambda: path.absolute().parent)
    # The file itself, or the `..data` link a Kubernetes ConfigMap volume swaps atomically.
    names = {path.name, "..data"}
    logging.getLogger("watchfiles").setLevel(logging.WARNING)

    def relevant(_change: object, changed: str) -> bool:
        return Path(changed).name in names

    # Every RESCAN_MS without an event the file is checked anyway: a change made before the watch was in
    # place (right after start-up) or missed by the file system's notifications is still picked up. A
    # reload by any trigger records what it read, so the same content is never loaded twice.
    async for _ in awatch(
        directory,
        debounce=200,
        recursive=False,
        watch_filter=relevant,
        rust_timeout=RESCAN_MS,
        yield_on_timeout=True,
    ):
        current = await anyio.to_thread.run_sync(file_digest, path)
        if current is not None and current != gateway.loaded_digest:
            log.info("%s changed: reloading the registry", path)
            await gateway.reload()
