"""Run the gateway: uvicorn in front of a `Gateway`, plus the reload triggers (file watch, SIGHUP).

The listening sockets are bound here, before anything else starts (`bind`), and handed to uvicorn: a port
that is taken or an address this machine does not have is one `ListenError` line, and the caller learns the
real port (the system's choice for port 0) before it prints any URL.

The registry file's directory is watched, not the file, so atomic renames and Kubernetes ConfigMap
symlink swaps (`..data`) are seen; a change reloads only when the file's content changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import resource
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import anyio
import uvicorn

from mcpfleet.errors import ListenError
from mcpfleet.gateway.app import Gateway, file_digest
from mcpfleet.gateway.asgi import App
from mcpfleet.registry import Registry

log = logging.getLogger("mcpfleet.gateway")


class _DeniedUpgrades(logging.Filter):
    """uvicorn's websockets-sansio protocol (0.54) logs an error after the app answered an upgrade with its
    own HTTP response (the ASGI `websocket.http.response` extension the gateway uses for 421/403/400), as if
    the app had sent nothing; the client got the right answer, so the line is noise anyone could provoke."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


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


@dataclass(frozen=True)
class Listener:
    """The gateway's sockets: one per address `host` resolves to, all on the same port. Bound, and
    listening once `listen()` has run; uvicorn serves on them and closes them when it stops."""

    host: str
    sockets: tuple[socket.socket, ...]

    @property
    def port(self) -> int:
        port: int = self.sockets[0].getsockname()[1]
        return port

    def listen(self, backlog: int = 2048) -> None:
        """Start accepting connections. Two processes may both bind a port (SO_REUSEADDR) while neither
        listens; the second to listen is refused here."""
        port = self.port
        for sock in self.sockets:
            try:
                sock.listen(backlog)
            except OSError as exc:
                self.close()
                raise listen_error(self.host, port, exc) from None

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def bind(host: str, port: int) -> Listener:
    """Bind `host:port` without listening yet (connections are refused, not queued, until `listen()`).

    A name with several addresses (`localhost`: 127.0.0.1 and ::1) gets a socket for each, all on the port
    the first one got (with port 0, each would otherwise get its own); an address this machine lacks among
    several (::1 without IPv6) is skipped. Raises `ListenError` (exit 4) naming the address, the cause and
    the option to change.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise listen_error(host, port, exc) from None
    addresses = list(dict.fromkeys((family, address[:2]) for family, _, _, _, address in infos))
    sockets: list[socket.socket] = []
    skipped: OSError | None = None
    # Both families (localhost): one socket each. IPv6 alone (`::`) stays dual-stack, as uvicorn binds it.
    both = {family for family, _ in addresses} >= {socket.AF_INET, socket.AF_INET6}
    try:
        for family, (ip, _) in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and both:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # one family per socket
            chosen = sockets[0].getsockname()[1] if len(sockets) > 1 else port
            try:
                sock.bind((ip, chosen))
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL or len(addresses) == 1:
                    raise listen_error(host, chosen, exc) from None
                sockets.pop().close()
                skipped = exc
        if not sockets:
            raise listen_error(host, port, skipped or OSError(errno.EADDRNOTAVAIL, "no address"))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return Listener(host, tuple(sockets))


def listen_error(host: str, port: int, exc: BaseException) -> ListenError:
    """One line for a failed bind or listen: which address, why, and which option to change."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror | UnicodeError):
        detail = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
        return ListenError(
            address, f"cannot resolve {host!r}: {detail[:1].lower()}{detail[1:]}", "choose another --host"
        )
    code = exc.errno if isinstance(exc, OSError) else None
    if code == errno.EADDRINUSE:
        return ListenError(address, "address already in use", "choose another --port")
    if code == errno.EADDRNOTAVAIL:
        return ListenError(address, "not an address of this machine", "choose another --host")
    if code in (errno.EACCES, errno.EPERM):
        fix = "ports below 1024 need privileges: choose another --port" if 0 < port < 1024 else "check --host"
        return ListenError(address, "permission denied", fix)
    reason = exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ListenError(address, reason, "check --host and --port")


async def serve(
    registry: Registry,
    *,
    registry_path: Path | None,
    loaded_digest: str | None = None,
    listener: Listener,
    tls_certfile: str | None = None,
    tls_keyfile: str | None = None,
    watch: bool = True,
    front: Callable[[Gateway], App] | None = None,
) -> None:
    """Serve on `listener` (bound by `bind`, listening or not) until SIGINT or SIGTERM. `front`: an ASGI
    layer to serve in front of the gateway (the adapter's fixed path, `gateway/adapter.py`)."""
    log.info("file descriptor limit: %d", raise_descriptor_limit())
    async with Gateway(
        registry, registry_path=registry_path, host=listener.host, loaded_digest=loaded_digest
    ) as gateway:
        config = uvicorn.Config(
            front(gateway) if front is not None else gateway,
            host=listener.host,
            port=listener.port,
            lifespan="off",
            log_level="warning",
            log_config=None,  # uvicorn's loggers go through the process's one handler (gateway/logs.py)
            ssl_certfile=tls_certfile,
            ssl_keyfile=tls_keyfile,
            timeout_graceful_shutdown=25,  # manifests.DRAIN_SECONDS: the pods' grace period counts on it
            ws="websockets-sansio",
            # Off: the gateway reads a proxy's Forwarded / X-Forwarded-* itself, from `gateway.trusted_proxies`
            # only, reloadable (policy/proxies.py).
            proxy_headers=False,
            # uvicorn refuses larger frames itself; the gateway's own check (reloadable) applies below this.
            ws_max_size=registry.gateway.max_message_bytes + 1024,
        )
        server = _Server(config, gateway, registry.gateway.shutdown_delay)
        logging.getLogger("uvicorn.error").addFilter(_DeniedUpgrades())
        async with anyio.create_task_group() as tg:
            tg.start_soon(_reload_on_sighup, gateway)
            stop_watching = anyio.Event()
            if registry_path is not None and watch:
                tg.start_soon(_reload_on_change, gateway, registry_path, stop_watching)
            await server.serve(sockets=list(listener.sockets))
            stop_watching.set()  # the watcher's thread sees it within 50 ms (a cancel alone waits RESCAN_MS)
            tg.cancel_scope.cancel()


class _Server(uvicorn.Server):
    """uvicorn's server, but a SIGTERM or SIGINT ends serving without ending the process: uvicorn raises the
    signal again once it stops serving, which would kill the process before the gateway's own shutdown
    (sessions ended, stdio processes stopped, the containers it started removed) runs (section 9.15).

    With `shutdown_delay` (`gateway.shutdown_delay`, seconds), the first SIGTERM turns `/readyz` to 503 and
    serving goes on for that long before uvicorn stops taking connections: readiness probes and load
    balancers see the gateway leave while it still answers. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway, shutdown_delay: float) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.shutdown_delay = shutdown_delay
        self._leaving = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.shutdown_delay > 0 and not self._leaving and not self.should_exit:
            self._leaving = True
            self.gateway.ready = False
            log.info(
                "signal %s: /readyz answers 503; serving goes on for %g s (gateway.shutdown_delay)",
                signal.Signals(sig).name,
                self.shutdown_delay,
            )
            loop = asyncio.get_event_loop()
            later = functools.partial(super().handle_exit, sig, frame)
            loop.call_soon_threadsafe(loop.call_later, self.shutdown_delay, later)
            return
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            if self._captured_signals:
                names = dict.fromkeys(signal.Signals(s).name for s in self._captured_signals)
                log.info("signal %s: shutting down", ", ".join(names))
            self._captured_signals.clear()


async def _reload_on_sighup(gateway: Gateway) -> None:
    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("SIGHUP: reloading the registry")
            await gateway.reload()


async def _reload_on_change(gateway: Gateway, path: Path, stop: anyio.Event) -> None:
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
        stop_event=stop,
    ):
        current = await anyio.to_thread.run_sync(file_digest, path)
        if current is not None and current != gateway.loaded_digest:
            log.info("%s changed: reloading the registry", path)
            await gateway.reload()
