"""Our own MCP server for the official conformance suite (`@modelcontextprotocol/conformance`, server mode).

Run it as `python tests/conformance/fixture.py stdio` or
`python tests/conformance/fixture.py http --host 127.0.0.1 --port N` (Streamable HTTP at `/mcp`).

The tools, resources and prompts are the ones the suite's server scenarios ask for (`test_simple_text`,
`test://static-text`, `test_prompt_with_arguments`, ...), written with the SDK's `MCPServer`. `MCPServer` has no
public API for `logging/setLevel`, `resources/subscribe` and `resources/unsubscribe`, so the server that speaks
the protocol is the SDK's lowlevel `Server`: it serves those three methods and `completion/complete` itself and
hands tools, resources and prompts to the `MCPServer` through its public methods (`list_tools`, `call_tool`,
`read_resource`, `get_prompt`, ...). No JSON-RPC is written here: both servers are the SDK's.

Behaviour a gateway has to carry: logging notifications filtered by the session's `logging/setLevel`, progress
notifications, server-to-client requests (sampling, elicitation: the SDK's resolvers send them on the tool call's
own stream for 2025 clients and answer 2026-07-28 clients with an `InputRequiredResult`), resource subscriptions
with `notifications/resources/updated` on the session's standalone stream (tool `update_watched_resource`),
resumable SSE streams (an in-memory event store: priming events, `Last-Event-ID` replay; it keeps every event, so
this is a test server only) and DNS-rebinding protection (the SDK turns it on for a server bound to 127.0.0.1).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import anyio
import mcp.types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Audio,
    Context,
    Elicit,
    ElicitationResult,
    Image,
    MCPServer,
    RequestStateBoundary,
    RequestStateSecurity,
    Resolve,
    Sample,
    UserMessage,
)
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from pydantic import BaseModel, Field
from starlette.applications import Starlette

SERVER_NAME = "mcpfleet-conformance-fixture"

# A 1x1 red PNG and a tiny WAV file.
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_BASE64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
PNG = base64.b64decode(PNG_BASE64)
WAV = base64.b64decode(WAV_BASE64)

WATCHED_URI = "test://watched-resource"
LOG_LEVELS: tuple[types.LoggingLevel, ...] = get_args(types.LoggingLevel)
# A tool whose inputSchema uses JSON Schema 2020-12 keywords; `MCPServer` derives schemas from signatures, so the
# lowlevel server lists and serves this one itself (the suite's pending `json-schema-2020-12` scenario).
SCHEMA_2020_12_TOOL = types.Tool(
    name="json_schema_2020_12_tool",
    description="Tool with JSON Schema 2020-12 features",
    input_schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}
        },
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
        "additionalProperties": False,
    },
)
COMPLETIONS = {"arg1": ["paris", "park", "party", "test", "testing"], "arg2": ["alpha", "beta", "gamma"]}


# --- session state -------------------------------------------------------------------------------------------


@dataclass
class SessionState:
    """What one client session set: its log level and its resource subscriptions."""

    log_level: types.LoggingLevel = "debug"
    subscriptions: set[str] = field(default_factory=set[str])
    session: ServerSession | None = None
    """The session of the latest subscribe request; its standalone channel carries resource updates."""


@dataclass
class FixtureState:
    watched_text: str = "Watched resource content, version 0."
    sessions: dict[str, SessionState] = field(default_factory=dict[str, SessionState])

    def of(self, request_context: ServerRequestContext[Any, Any]) -> SessionState:
        """The state of the session a request belongs to (`Mcp-Session-Id` on HTTP, the process on stdio)."""
        headers: Mapping[str, str] | None = getattr(request_context.request, "headers", None)
        key = (headers or {}).get("mcp-session-id") or "process"
        return self.sessions.setdefault(key, SessionState())


class InMemoryEventStore(EventStore):
    """Keeps every SSE event so a client can resume a stream with `Last-Event-ID` (SEP-1699)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, types.JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        event_id = str(len(self._events) + 1)
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        stream_id = next((stream for stream, event_id, _ in self._events if event_id == last_event_id), None)
        if stream_id is None:
            return None
        for stream, event_id, message in self._events[int(last_event_id) :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


# --- the MCPServer: tools, resources, prompts ----------------------------------------------------------------


class UserInfo(BaseModel):
    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


class Sep1034Defaults(BaseModel):
    """Every primitive type with a default value (SEP-1034)."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: Literal["active", "inactive", "pending"] = Field(default="active", description="User status")
    verified: bool = Field(default=True, description="Verification status")


def titled(options: dict[str, str], *, multi: bool = False) -> Callable[[dict[str, Any]], None]:
    """`json_schema_extra` that renders a `Literal` as a titled enum: `oneOf` (single) or `items.anyOf` (multi)."""
    choices = [{"const": value, "title": title} for value, title in options.items()]

    def render(schema: dict[str, Any]) -> None:
        if multi:
            schema["items"] = {"anyOf": choices}
        else:
            schema.pop("enum", None)
            schema["oneOf"] = choices

    return render


class Sep1330Enums(BaseModel):
    """The five enum schema variants of SEP-1330."""

    untitledSingle: Literal["option1", "option2", "option3"] | None = Field(None, description="Untitled single-select")
    titledSingle: Literal["value1", "value2", "value3"] | None = Field(
        None,
        description="Titled single-select",
        json_schema_extra=titled({"value1": "First Option", "value2": "Second Option", "value3": "Third Option"}),
    )
    legacyEnum: Literal["opt1", "opt2", "opt3"] | None = Field(
        None,
        description="Legacy titled enum (enumNames, deprecated)",
        json_schema_extra={"enumNames": ["Option One", "Option Two", "Option Three"]},
    )
    untitledMulti: list[Literal["option1", "option2", "option3"]] | None = Field(
        None, description="Untitled multi-select"
    )
    titledMulti: list[Literal["value1", "value2", "value3"]] | None = Field(
        None,
        description="Titled multi-select",
        json_schema_extra=titled(
            {"value1": "First Choice", "value2": "Second Choice", "value3": "Third Choice"}, multi=True
        ),
    )


# Resolvers: the SDK sends these as server-to-client requests on the tool call's stream (2025 revisions) or
# returns them in an InputRequiredResult the client answers by retrying the call (2026-07-28).


def ask_llm(prompt: str) -> Sample:
    return Sample(
        [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))], max_tokens=100
    )


def ask_user(message: str) -> Elicit[UserInfo]:
    return Elicit(message, UserInfo)


def ask_defaults() -> Elicit[Sep1034Defaults]:
    return Elicit("Please review your information", Sep1034Defaults)


def ask_enums() -> Elicit[Sep1330Enums]:
    return Elicit("Please choose options", Sep1330Enums)


def describe(answer: ElicitationResult[Any]) -> str:
    content = answer.data.model_dump_json(exclude_none=True) if isinstance(answer, AcceptedElicitation) else "{}"
    return f"action={answer.action}, content={content}"


async def send_log(ctx: Context, state: FixtureState, level: types.LoggingLevel, message: str) -> None:
    """Send a log notification on the request's stream unless the session's level filters it out."""
    if LOG_LEVELS.index(level) >= LOG_LEVELS.index(state.of(ctx.request_context).log_level):
        await ctx.log(level, message)


def build_mcp_server(state: FixtureState) -> MCPServer:
    mcp = MCPServer(SERVER_NAME, version="1.0.0", instructions="Conformance test fixture of mcpfleet.")

    # Tools -----------------------------------------------------------------------------------------------------

    @mcp.tool()
    def test_simple_text() -> str:
        """Returns simple text content."""
        return "This is a simple text response for testing."

    @mcp.tool()
    def test_image_content() -> Image:
        """Returns image content (a 1x1 PNG)."""
        return Image(data=PNG, format="png")

    @mcp.tool()
    def test_audio_content() -> Audio:
        """Returns audio content (a tiny WAV file)."""
        return Audio(data=WAV, format="wav")

    @mcp.tool()
    def test_embedded_resource() -> types.EmbeddedResource:
        """Returns an embedded text resource."""
        return types.EmbeddedResource(
            type="resource",
            resource=types.TextResourceContents(
                uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
            ),
        )

    @mcp.tool()
    def test_multiple_content_types() -> list[types.TextContent | types.ImageContent | types.EmbeddedResource]:
        """Returns text, image and embedded resource content together."""
        return [
            types.TextContent(type="text", text="Multiple content types test:"),
            types.ImageContent(type="image", data=PNG_BASE64, mime_type="image/png"),
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(
                    uri="test://mixed-content-resource",
                    mime_type="application/json",
                    text=json.dumps({"test": "data", "value": 123}),
                ),
            ),
        ]

    @mcp.tool()
    async def test_tool_with_logging(ctx: Context) -> str:
        """Sends three info log notifications while it runs."""
        await send_log(ctx, state, "info", "Tool execution started")
        await anyio.sleep(0.05)
        await send_log(ctx, state, "info", "Tool processing data")
        await anyio.sleep(0.05)
        await send_log(ctx, state, "info", "Tool execution completed")
        return "Tool with logging executed successfully"

    @mcp.tool()
    async def test_tool_with_progress(ctx: Context) -> str:
        """Reports progress 0, 50 and 100 of 100 when the request carries a progress token."""
        for step in (0, 50, 100):
            if step:
                await anyio.sleep(0.05)
            await ctx.report_progress(step, 100, f"Completed step {step} of 100")
        return "Tool with progress executed successfully"

    @mcp.tool()
    def test_error_handling() -> str:
        """Always fails: the result has isError set."""
        raise ToolError("This tool intentionally returns an error for testing")

    @mcp.tool()
    def test_sampling(prompt: str, reply: Annotated[types.CreateMessageResult, Resolve(ask_llm)]) -> str:
        """Asks the client's LLM (sampling/createMessage) and returns its answer."""
        text = reply.content.text if isinstance(reply.content, types.TextContent) else "(non-text content)"
        return f"LLM response: {text}"

    @mcp.tool()
    def test_elicitation(message: str, answer: Annotated[ElicitationResult[UserInfo], Resolve(ask_user)]) -> str:
        """Asks the user (elicitation/create) for a username and an email address."""
        return f"User response: {describe(answer)}"

    @mcp.tool()
    def test_elicitation_sep1034_defaults(
        answer: Annotated[ElicitationResult[Sep1034Defaults], Resolve(ask_defaults)],
    ) -> str:
        """Elicits a form whose fields all carry default values (SEP-1034)."""
        return f"Elicitation completed: {describe(answer)}"

    @mcp.tool()
    def test_elicitation_sep1330_enums(answer: Annotated[ElicitationResult[Sep1330Enums], Resolve(ask_enums)]) -> str:
        """Elicits a form with the five enum schema variants (SEP-1330)."""
        return f"Elicitation completed: {describe(answer)}"

    @mcp.tool()
    async def test_reconnection(ctx: Context) -> str:
        """Closes its SSE stream mid-call; the result arrives when the client resumes (SEP-1699)."""
        await send_log(ctx, state, "info", "Before disconnect")
        await ctx.close_sse_stream()
        await anyio.sleep(0.2)
        await send_log(ctx, state, "info", "After reconnect")
        return "Reconnection test completed"

    @mcp.tool()
    async def update_watched_resource(text: str, ctx: Context) -> str:
        """Changes test://watched-resource and notifies every session subscribed to it."""
        state.watched_text = text
        notified = 0
        for session_state in list(state.sessions.values()):
            if WATCHED_URI not in session_state.subscriptions or session_state.session is None:
                continue
            try:
                await session_state.session.send_resource_updated(WATCHED_URI)
                notified += 1
            except Exception:  # that session is gone: forget its subscriptions
                session_state.subscriptions.clear()
        return f"Updated {WATCHED_URI}; notified {notified} session(s)"

    # Resources -------------------------------------------------------------------------------------------------

    @mcp.resource("test://static-text", name="static-text", mime_type="text/plain")
    def static_text() -> str:
        """A static text resource."""
        return "This is the content of the static text resource."

    @mcp.resource("test://static-binary", name="static-binary", mime_type="image/png")
    def static_binary() -> bytes:
        """A static binary resource (a 1x1 PNG)."""
        return PNG

    @mcp.resource("test://template/{id}/data", name="template-data", mime_type="application/json")
    def template_data(id: str) -> str:
        """Data for an id, from a resource template."""
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @mcp.resource(WATCHED_URI, name="watched-resource", mime_type="text/plain")
    def watched_resource() -> str:
        """A resource to subscribe to; the update_watched_resource tool changes it."""
        return state.watched_text

    # Prompts ---------------------------------------------------------------------------------------------------

    @mcp.prompt()
    def test_simple_prompt() -> list[UserMessage]:
        """A prompt without arguments."""
        return [UserMessage("This is a simple prompt for testing.")]

    @mcp.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        """A prompt with two required arguments."""
        return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]

    @mcp.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        """A prompt that embeds a resource."""
        resource = types.TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            UserMessage(types.EmbeddedResource(type="resource", resource=resource)),
            UserMessage("Please process the embedded resource above."),
        ]

    @mcp.prompt()
    def test_prompt_with_image() -> list[UserMessage]:
        """A prompt with image content."""
        return [
            UserMessage(types.ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")),
            UserMessage("Please analyze the image above."),
        ]

    return mcp


# --- the lowlevel Server that speaks the protocol ------------------------------------------------------------


def build_server(state: FixtureState | None = None) -> Server[Any]:
    """The fixture: a lowlevel `Server` serving the `MCPServer`'s tools, resources and prompts."""
    state = state or FixtureState()
    mcp = build_mcp_server(state)

    def context(ctx: ServerRequestContext[Any, Any], params: types.InputResponseRequestParams) -> Context:
        return Context(request_context=ctx, mcp_server=mcp, input_params=params)

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[*await mcp.list_tools(), SCHEMA_2020_12_TOOL])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        if params.name == SCHEMA_2020_12_TOOL.name:
            text = f"Received: {json.dumps(params.arguments or {}, sort_keys=True)}"
            return types.CallToolResult(content=[types.TextContent(type="text", text=text)])
        try:
            return await mcp.call_tool(params.name, params.arguments or {}, context(ctx, params))
        except MCPError:
            raise
        except Exception as exc:  # a failing tool is a result with isError, not a protocol error
            return types.CallToolResult(content=[types.TextContent(type="text", text=str(exc))], is_error=True)

    async def list_resources(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=await mcp.list_resources())

    async def list_resource_templates(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=await mcp.list_resource_templates())

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        try:
            contents = await mcp.read_resource(params.uri, context(ctx, params))
        except ResourceError as exc:  # the same error `MCPServer` answers with
            code = types.INVALID_PARAMS if isinstance(exc, ResourceNotFoundError) else types.INTERNAL_ERROR
            raise MCPError(code=code, message=str(exc), data={"uri": params.uri}) from exc
        if isinstance(contents, types.InputRequiredResult):
            return contents
        result: list[types.TextResourceContents | types.BlobResourceContents] = []
        for item in contents:
            if isinstance(item.content, bytes):
                blob = base64.b64encode(item.content).decode()
                mime_type = item.mime_type or "application/octet-stream"
                result.append(types.BlobResourceContents(uri=params.uri, blob=blob, mime_type=mime_type))
            else:
                mime_type = item.mime_type or "text/plain"
                result.append(types.TextResourceContents(uri=params.uri, text=item.content, mime_type=mime_type))
        return types.ReadResourceResult(contents=result)

    async def list_prompts(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=await mcp.list_prompts())

    async def get_prompt(
        ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        return await mcp.get_prompt(params.name, params.arguments, context(ctx, params))

    async def complete(
        ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        values: list[str] = []
        if isinstance(params.ref, types.PromptReference) and params.ref.name == "test_prompt_with_arguments":
            prefix = params.argument.value.lower()
            values = [v for v in COMPLETIONS.get(params.argument.name, []) if v.startswith(prefix)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    async def set_logging_level(
        ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        state.of(ctx).log_level = params.level
        return types.EmptyResult()

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        session_state = state.of(ctx)
        session_state.subscriptions.add(params.uri)
        session_state.session = ctx.session
        return types.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        state.of(ctx).subscriptions.discard(params.uri)
        return types.EmptyResult()

    server = Server(
        SERVER_NAME,
        version="1.0.0",
        instructions=mcp.instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        on_set_logging_level=set_logging_level,
    )
    # Seals the requestState of 2026-07-28 multi-round-trip calls, as `MCPServer` does for its own server. The key
    # is per process: a retry must reach the process that answered the first round.
    server.middleware.append(RequestStateBoundary(RequestStateSecurity.ephemeral(), default_audience=SERVER_NAME))
    return server


def http_app(host: str = "127.0.0.1") -> Starlette:
    """Streamable HTTP at /mcp, with resumable SSE streams and the SDK's DNS-rebinding protection for `host`."""
    return build_server().streamable_http_app(host=host, event_store=InMemoryEventStore(), retry_interval=100)


async def serve_stdio() -> None:
    server = build_server()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The mcpfleet conformance fixture MCP server.")
    sub = parser.add_subparsers(dest="transport", required=True)
    sub.add_parser("stdio", help="serve over stdin/stdout")
    http = sub.add_parser("http", help="serve Streamable HTTP at /mcp")
    http.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1"], help="loopback only")
    http.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    # Logging, sampling and `resources/subscribe` are deprecated as of protocol 2026-07-28; the suite tests the
    # 2025 revisions, where they are current, so this server uses them on purpose.
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

    if args.transport == "stdio":
        anyio.run(serve_stdio)
        return
    import uvicorn

    print(f"conformance fixture: http://{args.host}:{args.port}/mcp", file=sys.stderr)
    uvicorn.run(http_app(args.host), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
