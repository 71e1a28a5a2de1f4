"""The `mcpfleet` command line. Each command resolves its target, opens an SDK session, prints, exits.

Exit codes: 0 ok; 1 the tool (or the server) returned an error for the request; 2 usage or configuration
error (an unknown server or tool name included); 3 server unreachable or failed to start, or the Docker
engine missing or refusing; 4 `serve` cannot listen on its address. The table with the classes behind them
is in `mcpfleet.errors`. The deploy commands (`deploy`, `scale`, `status`, `logs`, `remove`) are in
`cli/deploy.py`, registered on the same `app`.

Help is click's plain layout (`rich_markup_mode=None`): Typer's Rich panels print a type, `<bool>`, after
every flag, which promises a value the parser refuses. Every value option names its metavar.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import anyio
import httpx2
import typer
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from mcpfleet import __version__, masking
from mcpfleet.cli import output
from mcpfleet.cli.target import Target, gateway_refusal, gateway_servers, registry_path, resolve
from mcpfleet.client.connect import Connection, connect
from mcpfleet.errors import (
    EntryError,
    McpfleetError,
    RefusedError,
    RegistryError,
    ServerUnavailableError,
    UnknownToolError,
    UsageError,
    leaf_error,
)
from mcpfleet.masking import Masker, masked
from mcpfleet.registry import Registry, load_registry, normalized, render
from mcpfleet.registry.model import Logging

app = typer.Typer(
    name="mcpfleet",
    help="Run many MCP servers behind one gateway, and talk to them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
registry_app = typer.Typer(help="Check and print registry files.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(registry_app, name="registry")

T = TypeVar("T")

RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        "-r",
        metavar="FILE",
        help="Registry file (default: ./mcpfleet.yaml, then $MCPFLEET_REGISTRY).",
    ),
]
DemoOpt = Annotated[bool, typer.Option("--demo", help="Use the built-in demo registry.")]
GatewayOpt = Annotated[
    str | None,
    typer.Option(
        "--gateway",
        "-g",
        metavar="URL",
        help="Talk to servers through the mcpfleet gateway at this URL (its base URL, or any server's URL on it).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of tables.")]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project",
        metavar="NAME",
        help="Project of deployed servers, the label on their containers and Kubernetes objects (default:"
        " $MCPFLEET_PROJECT, else mcpfleet).",
    ),
]
ServerArg = Annotated[str, typer.Argument(metavar="SERVER", help="Server id, as named in the registry.")]


class ToolFailedError(McpfleetError):
    """The tool returned an error result, or the server answered the request with an error (exit 1)."""

    exit_code = 1


def _run(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return anyio.run(work)
    except McpfleetError as exc:
        output.error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except BaseExceptionGroup as group:
        # Raised inside a task group (the SDK's or ours): report the project's error it carries, if any.
        matched, _ = group.split(McpfleetError)
        if matched is None:
            raise
        first = leaf_error(matched)
        output.error(str(first))
        raise typer.Exit(getattr(first, "exit_code", 1)) from None


async def _session(target: Target, server_id: str, body: Callable[[Connection], Awaitable[T]]) -> T:
    server = target.server(server_id)
    try:
        async with connect(server, project=target.project) as connection:
            try:
                return await body(connection)
            except MCPError as exc:
                if exc.code == CONNECTION_CLOSED:
                    closed = f"server {server_id!r} closed the connection during the request"
                    raise ServerUnavailableError(closed) from None
                raise ToolFailedError(f"server {server_id!r} answered with an error: {exc.error.message}") from None
    except (BaseExceptionGroup, RefusedError, httpx2.TransportError, OSError) as exc:
        # A server that dies mid-request surfaces from the SDK's task groups as a transport error.
        lost = leaf_error(exc)
        if isinstance(lost, RefusedError) and target.gateway is not None:
            raise gateway_refusal(target.gateway, lost.status, lost.detail, server_id) from None
        if isinstance(lost, McpfleetError) or not isinstance(lost, httpx2.TransportError | OSError):
            raise
        raise ServerUnavailableError(f"server {server_id!r}: connection lost during the request ({lost})") from None


MAX_PAGES = 100  # a paginator that never ends cannot hang a listing


async def _all_pages(fetch: Callable[..., Awaitable[Any]], field: str) -> list[Any]:
    """Every item of a paginated list (`tools`, `resources`, ...), following `nextCursor`."""
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await fetch(cursor=cursor)
        items.extend(getattr(page, field))
        cursor = page.next_cursor
        if not cursor:
            break
    return items


def _on_server(
    server: str,
    registry: Path | None,
    demo: bool,
    gateway: str | None,
    project: str | None,
    body: Callable[[Connection], Awaitable[T]],
) -> T:
    """Resolve the target, open a session to `server`, run `body` on it; errors become exit codes."""

    async def work() -> T:
        return await _session(resolve(registry, demo, gateway, project), server, body)

    return _run(work)


def version_callback(value: bool) -> None:
    if value:
        output.plain(f"mcpfleet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Run many MCP servers behind one gateway, and talk to them."""


# --- servers ------------------------------------------------------------------------------------------


@app.command()
def servers(
    registry: RegistryOpt = None, demo: DemoOpt = False, gateway: GatewayOpt = None, json_: JsonOpt = False
) -> None:
    """List the servers in the registry (or behind a gateway)."""

    async def work() -> list[dict[str, Any]]:
        target = resolve(registry, demo, gateway)
        if target.gateway is not None:
            listed: list[dict[str, Any]] = await anyio.to_thread.run_sync(gateway_servers, target.gateway)
            return listed
        assert target.registry is not None
        _warn_failed(target.registry)
        masker = Masker(target.registry.secrets)
        return [_describe(sid, server, masker) for sid, server in target.registry.servers.items()]

    rows = masked(_run(work))  # every field a `${VAR}` value may be in (a description), a later one too
    if json_:
        output.print_json(rows)
        return
    output.table(
        "Servers",
        ["id", "type", "reached at", "description"],
        [[r["id"], r.get("type", ""), r.get("target", ""), _description(r)] for r in rows],
    )


def _description(row: dict[str, Any]) -> str:
    """A gateway lists an entry it cannot serve (an unset `${VAR}`) with its error and no type."""
    error = row.get("error")
    return f"not usable: {error}" if error else str(row.get("description") or "")


def _warn_failed(registry: Registry) -> None:
    """Entries the registry could not make usable are not listed: say so on stderr, each with its error."""
    for server_id, message in registry.failed.items():
        output.plain(f"warning: {EntryError(server_id, message)}", stream=sys.stderr)


def _describe(server_id: str, server: Any, masker: Masker) -> dict[str, Any]:
    target = render.target(server, masker)  # `${VAR}` values and URL secrets masked
    return {"id": server_id, "type": server.type, "target": target, "description": server.description}


# --- tools, call --------------------------------------------------------------------------------------


@app.command()
def tools(
    server: ServerArg,
    registry: RegistryOpt = None,
    demo: DemoOpt = False,
    gateway: GatewayOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List a server's tools."""

    listed = _on_server(server, registry, demo, gateway, project, lambda c: _all_pages(c.client.list_tools, "tools"))
    if json_:
        output.print_json(listed)
        return
    output.table(
        f"Tools of {server}",
        ["name", "parameters (* required)", "description"],
        [[t.name, output.schema_params(t.input_schema), output.first_line(t.description)] for t in listed],
    )


@app.command()
def call(
    server: ServerArg,
    tool: Annotated[str, typer.Argument(metavar="TOOL", help="Tool name.")],
    arg: Annotated[
        list[str] | None,
        typer.Option("--arg", "-a", metavar="KEY=VALUE", help="One argument; repeat for more."),
    ] = None,
    args_json: Annotated[
        str | None, typer.Option("--args-json", metavar="JSON", help="All arguments as a JSON object.")
    ] = None,
    registry: RegistryOpt = None,
    demo: DemoOpt = False,
    gateway: GatewayOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Call a tool. Exits 1 when the tool returns an error result, 2 when the server has no such tool."""

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        shown = f"{progress:g}/{total:g}" if total else f"{progress:g}"
        output.plain(f"progress {shown}{f' {message}' if message else ''}", stream=sys.stderr)

    async def body(connection: Connection) -> Any:
        arguments = _parse_args_json(args_json)
        listing: list[Any] | None = None
        if arg:
            listing = await _all_pages(connection.client.list_tools, "tools")
            _check_tool(server, tool, listing, gateway)
            schema = next((t.input_schema for t in listing if t.name == tool), None)
            arguments |= _parse_pairs(arg, schema)
        try:
            result = await connection.client.call_tool(tool, arguments, progress_callback=progress)
        except MCPError as exc:
            # A gateway's access refusal says why in its own words: no listing should replace them.
            if exc.code != CONNECTION_CLOSED and not _denied_by_gateway(exc):
                await _check_tool_listed(connection, server, tool, listing, gateway)
            raise
        if result.is_error:
            await _check_tool_listed(connection, server, tool, listing, gateway)
        return result

    try:
        _parse_args_json(args_json)  # fail on a typo before any server starts
    except UsageError as exc:
        _fail(exc)
    result = _on_server(server, registry, demo, gateway, project, body)
    if json_:
        output.print_json(result)
    elif result.content:
        output.plain(output.content_text(result.content))
    elif result.structured_content is not None:
        output.print_json(result.structured_content)
    if result.is_error:
        if not json_:
            output.error(f"tool {tool!r} of server {server!r} returned an error")
        raise typer.Exit(1)


async def _check_tool_listed(
    connection: Connection, server: str, tool: str, listing: list[Any] | None, gateway: str | None
) -> None:
    """After a failed call: was the tool unknown? Servers say so in their own words ("Unknown tool: x", as a
    result or as a JSON-RPC error), so ask `tools/list` instead; a server that cannot list keeps its answer."""
    if listing is None:
        try:
            listing = await _all_pages(connection.client.list_tools, "tools")
        except MCPError:
            return
    _check_tool(server, tool, listing, gateway)


def _check_tool(server: str, tool: str, listing: list[Any], gateway: str | None) -> None:
    """Raises UnknownToolError when `listing` lacks `tool`; through a gateway, the message says that its
    access rules may be what hides it (the listing is this caller's, `gateway.access`)."""
    names = [t.name for t in listing]
    if tool not in names:
        hidden = f"the gateway's access rules (gateway.access at {gateway}) may hide tools from this caller"
        raise UnknownToolError(server, tool, names, hint=hidden if gateway else None)


def _denied_by_gateway(exc: MCPError) -> bool:
    """Whether the error is a gateway's tool access refusal (Plan 9.16: -32602 with `reason: denied`)."""
    data = exc.error.data
    return isinstance(data, dict) and data.get("reason") == "denied" and data.get("setting") == "gateway.access"


def _parse_args_json(text: str | None) -> dict[str, Any]:
    """Parsed before any server is contacted, so a typo costs no process start."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        _usage(f"--args-json is not valid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(value, dict):
        _usage('--args-json must be a JSON object, e.g. \'{"text": "hi"}\'')
    return value


def _parse_pairs(pairs: list[str], schema: dict[str, Any] | None) -> dict[str, Any]:
    """key=value pairs; a value is JSON unless the tool's schema says the parameter is a string."""
    properties = (schema or {}).get("properties") or {}
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            _usage(f"--arg {pair!r}: write key=value")
        declared = properties.get(key, {}).get("type") if isinstance(properties.get(key), dict) else None
        if declared == "string":
            parsed[key] = raw
            continue
        try:
            parsed[key] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[key] = raw
    return parsed


def _usage(message: str) -> NoReturn:
    raise UsageError(message)


# --- resources, read, prompts -------------------------------------------------------------------------


@app.command()
def resources(
    server: ServerArg,
    registry: RegistryOpt = None,
    demo: DemoOpt = False,
    gateway: GatewayOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List a server's resources and resource templates."""

    async def body(connection: Connection) -> tuple[list[Any], list[Any]]:
        client = connection.client
        if client.server_capabilities.resources is None:
            return [], []  # the server offers no resources: an empty list, not an error
        listed = await _all_pages(client.list_resources, "resources")
        templates = await _all_pages(client.list_resource_templates, "resource_templates")
        return listed, templates

    listed, templates = _on_server(server, registry, demo, gateway, project, body)
    if json_:
        output.print_json({"resources": listed, "templates": templates})
        return
    rows = [[r.uri, r.name, r.mime_type or "", output.first_line(r.description)] for r in listed]
    rows += [[t.uri_template, t.name, t.mime_type or "", output.first_line(t.description)] for t in templates]
    output.table(f"Resources of {server}", ["uri", "name", "type", "description"], rows)


@app.command()
def read(
    server: ServerArg,
    uri: Annotated[str, typer.Argument(metavar="URI", help="Resource URI.")],
    registry: RegistryOpt = None,
    demo: DemoOpt = False,
    gateway: GatewayOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Read a resource."""

    result = _on_server(server, registry, demo, gateway, project, lambda c: c.client.read_resource(uri))
    if json_:
        output.print_json(result)
        return
    for content in result.contents:
        text = getattr(content, "text", None)
        blob = getattr(content, "blob", "")
        shown = text if text is not None else f"[binary {content.mime_type or ''}, {len(blob) * 3 // 4} bytes]"
        output.plain(shown)


@app.command()
def prompts(
    server: ServerArg,
    registry: RegistryOpt = None,
    demo: DemoOpt = False,
    gateway: GatewayOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List a server's prompts."""

    listed = _on_server(
        server, registry, demo, gateway, project, lambda c: _all_pages(c.client.list_prompts, "prompts")
    )
    if json_:
        output.print_json(listed)
        return
    output.table(
        f"Prompts of {server}",
        ["name", "arguments (* required)", "description"],
        [
            [
                p.name,
                ", ".join(f"{a.name}{'*' if a.required else ''}" for a in p.arguments or []),
                output.first_line(p.description),
            ]
            for p in listed
        ],
    )


# --- serve --------------------------------------------------------------------------------------------


@app.command()
def serve(
    registry: RegistryOpt = None,
    demo: DemoOpt = False,
    host: Annotated[
        str | None,
        typer.Option(metavar="ADDRESS", help="Address to listen on (default: gateway.host, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            metavar="PORT",
            help="Port to listen on; 0 for any free one (default: gateway.port, 8000).",
        ),
    ] = None,
    tls_certfile: Annotated[Path | None, typer.Option(metavar="PEM", help="Serve HTTPS with this certificate.")] = None,
    tls_keyfile: Annotated[Path | None, typer.Option(metavar="PEM", help="The certificate's private key.")] = None,
    watch: Annotated[bool, typer.Option(help="Reload when the registry file changes.")] = True,
) -> None:
    """Run the gateway: every server in the registry at http://HOST:PORT/<server-id>/mcp.

    The banner with the URLs is printed once the address is bound, with the real port (the system's choice
    for --port 0). Exits 4 when it cannot listen there.
    """
    from mcpfleet.gateway import tracing
    from mcpfleet.gateway.app import file_digest
    from mcpfleet.gateway.policy import open_door
    from mcpfleet.gateway.sealing import environment_keys
    from mcpfleet.gateway.serve import bind
    from mcpfleet.gateway.serve import serve as run_gateway

    try:
        _check_tls(tls_certfile, tls_keyfile)
        if host is not None and not host.strip():
            raise UsageError("--host is empty: give an address, e.g. 127.0.0.1, or 0.0.0.0 for every interface")
        path = registry_path(registry, demo)
        # Read before the load: a change made while the gateway starts then differs from it and is reloaded.
        digest = file_digest(Path(path))
        loaded = load_registry(path, running=True)  # a served entry's advice is for a running gateway
        if not loaded.gateway.session_keys:
            environment_keys()  # $MCPFLEET_SESSION_KEYS checked as gateway.session_keys is, before a banner
        listener = bind(host or loaded.gateway.host, port if port is not None else loaded.gateway.port)
        # Refused before a banner is printed (a script waiting for it is not misled), once the address is known
        # to be this machine's (a wrong --host is its own error, exit 4).
        where = "--host" if host else f"gateway.host in {path}"
        if problem := open_door(loaded.gateway.auth, host or loaded.gateway.host, where):
            listener.close()
            raise UsageError(problem)
        _log_to_stderr(loaded.gateway.logging)
        try:
            tracing.setup(loaded.gateway.tracing)  # exit 2 when it is asked for and the extra is missing
        except McpfleetError:
            listener.close()
            raise
    except McpfleetError as exc:
        _fail(exc)
    try:
        scheme = "https" if tls_certfile else "http"
        base = f"{scheme}://{f'[{listener.host}]' if ':' in listener.host else listener.host}:{listener.port}"
        count = len(loaded.servers)
        output.plain(f"mcpfleet gateway on {base} ({path}, {count} server{'s' * (count != 1)})")
        # The local address first (scripts read it), then what clients are told when a proxy fronts it.
        public = loaded.gateway.public_url
        for where in (base, public) if public else (base,):
            if where is public:
                output.plain(f"public: {where} (gateway.public_url)")
            for server_id in loaded.servers:
                output.plain(f"  {where}/{server_id}/mcp")
            output.plain(f"  status: {where}/servers")
        for server_id, message in loaded.failed.items():
            output.plain(f"warning: {EntryError(server_id, message)}; not served", stream=sys.stderr)
        # Listening only now: whoever connects as soon as the port answers has the banner to read.
        listener.listen()
        anyio.run(
            lambda: run_gateway(
                loaded,
                registry_path=None if demo else path,
                loaded_digest=digest,
                listener=listener,
                tls_certfile=str(tls_certfile) if tls_certfile else None,
                tls_keyfile=str(tls_keyfile) if tls_keyfile else None,
                watch=watch,
            ),
            backend_options={"use_uvloop": True},
        )
    except McpfleetError as exc:
        _fail(exc)
    finally:
        listener.close()
        tracing.shutdown()  # the spans not yet exported go out (bounded by the exporter's timeout)


def _check_tls(certfile: Path | None, keyfile: Path | None) -> None:
    """Load the certificate and key once here, so that a wrong file is one line (exit 2), not uvicorn's
    traceback after the banner."""
    if (certfile is None) != (keyfile is None):
        raise UsageError("give both --tls-certfile and --tls-keyfile, or neither")
    if certfile is None or keyfile is None:
        return
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(
            f"--tls-certfile {certfile} / --tls-keyfile {keyfile}: cannot load them: {reason}"
            " (give a PEM certificate and its private key)"
        ) from None


def _fail(exc: McpfleetError) -> NoReturn:
    output.error(str(exc))
    raise typer.Exit(exc.exit_code)


def _log_to_stderr(settings: Logging | None = None) -> None:
    """The gateway's log lines (`serve`, `adapter`) on stderr as `gateway.logging` says (gateway/logs.py):
    text at INFO by default, without the libraries' per-request lines."""
    from mcpfleet.gateway import logs

    logs.configure(settings or Logging())


# --- adapter ------------------------------------------------------------------------------------------


def _listed(help: str) -> Any:
    return typer.Option(metavar="VALUE", help=help + " Repeatable.")


@app.command(context_settings={"allow_interspersed_args": False})
def adapter(
    command: Annotated[
        list[str] | None, typer.Argument(metavar="COMMAND [ARGS]", help="The stdio server's command, after --.")
    ] = None,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on; 0.0.0.0 in a pod.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT", help="Port; 0 for any free one.")] = 8080,
    path: Annotated[str, typer.Option(metavar="PATH", help="Where the MCP endpoint is served.")] = "/mcp",
    name: Annotated[
        str | None,
        typer.Option(metavar="ID", help="The server's id in logs and metrics (default: the program's name)."),
    ] = None,
    mode: Annotated[
        str | None, typer.Option(metavar="MODE", help="pool.mode: session (a process each, the default) or shared.")
    ] = None,
    stateless: Annotated[bool, typer.Option("--stateless", help="The server keeps no per-session state.")] = False,
    min_: Annotated[
        int | None, typer.Option("--min", metavar="N", help="pool.min: warm processes (default: 0).")
    ] = None,
    max_: Annotated[int | None, typer.Option("--max", metavar="N", help="pool.max: processes (default: 16).")] = None,
    max_message_bytes: Annotated[
        int | None, typer.Option(metavar="BYTES", help="gateway.max_message_bytes (default: 16 MiB).")
    ] = None,
    allowed_host: Annotated[list[str] | None, _listed("A Host name served besides IP addresses (a Service's).")] = None,
    allowed_origin: Annotated[list[str] | None, _listed("An Origin allowed to call from a browser.")] = None,
) -> None:
    """Serve one stdio MCP server as Streamable HTTP at http://HOST:PORT/mcp, with the gateway's stdio pool.

    For a Kubernetes pod: mcpfleet adapter --host 0.0.0.0 -- mcp-server-time. Also /healthz, /readyz,
    /metrics. Exits 2 without a command, 3 when the command is not found, 4 when it cannot listen.
    """
    from mcpfleet.gateway.adapter import Adapter
    from mcpfleet.gateway.serve import bind

    try:
        pool = {key: value for key, value in {"mode": mode, "min": min_, "max": max_}.items() if value is not None}
        served = Adapter.create(
            command or [],
            path=path,
            name=name,
            host=host,
            port=port,
            pool=pool,
            stateless=stateless,
            max_message_bytes=max_message_bytes,
            allowed_hosts=allowed_host or (),
            allowed_origins=allowed_origin or (),
        )
        listener = bind(host, port)
    except McpfleetError as exc:
        _fail(exc)
    try:
        _log_to_stderr()
        base = f"http://{f'[{listener.host}]' if ':' in listener.host else listener.host}:{listener.port}"
        output.plain(f"mcpfleet adapter on {base}{path}: {' '.join(command or [])}")
        listener.listen()
        anyio.run(lambda: served.serve(listener), backend_options={"use_uvloop": True})
    except McpfleetError as exc:
        _fail(exc)
    finally:
        listener.close()


# --- registry -----------------------------------------------------------------------------------------


FileArg = Annotated[Path, typer.Argument(metavar="FILE", help="Registry file (JSON or YAML).")]
ValidateJsonOpt = Annotated[bool, typer.Option("--json", help="Print the verdict and problems as JSON.")]
ShowJsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")]


@registry_app.command("validate")
def registry_validate(file: FileArg, json_: ValidateJsonOpt = False) -> None:
    """Check a registry file; report every problem with its place. Exits 2 when invalid, or when an entry
    cannot be used (a `${VAR}` it needs is unset)."""
    try:
        loaded = load_registry(file)
    except RegistryError as exc:
        if json_:
            output.print_json(
                {
                    "valid": False,
                    "problems": [
                        {"file": p.source, "location": p.location, "message": p.message} for p in exc.problems
                    ],
                    "warnings": list(exc.warnings),
                }
            )
        else:
            for warning in exc.warnings:  # with the errors, so that one run shows every problem
                output.plain(f"warning: {warning}", stream=sys.stderr)
            output.error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    failed = loaded.failed
    if json_:
        verdict = {"valid": not failed, "servers": list(loaded.servers), "warnings": list(loaded.warnings)}
        output.print_json(verdict | ({"failed": dict(failed)} if failed else {}))
    else:
        for warning in loaded.warnings:
            output.plain(f"warning: {warning}", stream=sys.stderr)
        for server_id, message in failed.items():
            output.error(str(EntryError(server_id, message)))
        if not failed:
            count = len(loaded.servers)
            output.plain(f"{file}: valid, {count} server{'s' if count != 1 else ''}")
    if failed:
        raise typer.Exit(EntryError.exit_code)


@registry_app.command("show")
def registry_show(file: FileArg, json_: ShowJsonOpt = False) -> None:
    """Print the normalized form of a registry file, with secrets masked. Exits 2 when an entry cannot be
    used (it is shown under `failed`)."""
    try:
        loaded = load_registry(file)
    except RegistryError as exc:
        output.error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    masking.install(loaded.secrets)  # this process's errors and outputs show no `${VAR}` value
    form = normalized(loaded)
    if json_:
        output.print_json(form)
    else:
        import yaml

        output.plain(yaml.safe_dump(form, sort_keys=False), end="")
    for server_id, message in loaded.failed.items():
        output.error(str(EntryError(server_id, message)))
    if loaded.failed:
        raise typer.Exit(EntryError.exit_code)
