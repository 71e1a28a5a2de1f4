"""OpenTelemetry tracing (`gateway.tracing`, the optional extra `mcpfleet[otel]`): a SERVER span per client
request, a CLIENT span per upstream call, W3C trace context to the backends.

Off (the default), nothing here runs on a request: callers test the module-level flag `enabled` once and
make no OpenTelemetry call at all. On:

- the `Correlation` layer (`policy/context.py`) opens the request's SERVER span, the child of the client's
  `traceparent` header when it sends a valid one, named `<METHOD> <route>` (`POST /<id>/mcp`) or the MCP
  method when it is known without parsing a body (the 2026-07-28 `Mcp-Method` header, or a stdio call the
  relay parsed), with the OpenTelemetry semantic conventions' HTTP attributes (`http.request.method`,
  `url.path`, `url.scheme`, `http.route`, `http.response.status_code`, `user_agent.original` is not kept),
  `mcp.server.id`, and the MCP ones (`mcp.method.name`, `jsonrpc.request.id`) when known;
- an HTTP backend call (`upstream/http.py`) gets a CLIENT span and the `traceparent`/`tracestate` headers
  of that span in place of the client's; a JSON-RPC request relayed to a stdio process (or a bridged
  connection) gets a CLIENT span and its context in `params._meta.traceparent`/`tracestate` (the MCP
  `_meta` convention the SDK's own server reads), in place of any the client put there.

A CLIENT span ends when its upstream answer's headers arrived (HTTP) or with the client request (stdio: the
answer comes back on another task). Spans hold no header values, query strings or bodies. The tracer
provider is the gateway's own (not the process-global one), so libraries that trace through the global API
(the MCP SDK) are unaffected. Exporters: OTLP over HTTP (`endpoint`, the collector's base URL, `/v1/traces`
appended), `console` (JSON on stdout: stderr keeps one log line per line), `none` (propagation only).
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mcpfleet import __version__
from mcpfleet.errors import UsageError
from mcpfleet.masking import shown_url
from mcpfleet.registry.model import Tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("mcpfleet.gateway")

enabled = False  # checked once per request; False: no OpenTelemetry call is made
INSTALL = "pip install 'mcpfleet[otel]'"
CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate"})
ROUTES = frozenset({"/mcp", "/sse", "/messages/", "/ws"})  # the gateway's own routes under /<id>
# MCP semantic conventions: a call's span is named `<method> <target>`; the target's attribute.
TARGETS = {"tools/call": "gen_ai.tool.name", "prompts/get": "gen_ai.prompt.name"}
STATUS_ROUTES = frozenset({"/", "/healthz", "/readyz", "/servers", "/metrics", "/admin/reload"})

_propagator = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()


class _Request:
    """The tracing state of one client request: its SERVER span, and the CLIENT spans to end with it."""

    __slots__ = ("client_spans", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.client_spans: list[trace.Span] = []


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("mcpfleet_trace", default=None)


def setup(settings: Tracing, exporter: SpanExporter | None = None) -> None:
    """Start tracing as `settings` say (nothing when `enabled` is false). `exporter`: in place of the one
    `settings.exporter` names (tests pass an in-memory one). Raises `UsageError` (exit 2) naming the install
    command when the OpenTelemetry SDK is not installed."""
    global enabled, _provider, _tracer
    shutdown()
    if not settings.enabled:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise UsageError(
            "gateway.tracing.enabled is true but the OpenTelemetry SDK is not installed:"
            f" {INSTALL} (or set gateway.tracing.enabled: false)"
        ) from None
    resource = Resource.create({"service.name": settings.service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    exporter = exporter or _exporter(settings)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("mcpfleet", __version__)
    enabled = True
    log.info(
        "tracing on: exporter %s, service %s, sample ratio %g",
        settings.exporter,
        settings.service_name,
        settings.sample_ratio,
    )


def _exporter(settings: Tracing) -> SpanExporter | None:
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if settings.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise UsageError(
                f"gateway.tracing.exporter is otlp but the OTLP exporter is not installed: {INSTALL}"
            ) from None
        endpoint = settings.endpoint
        if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return OTLPSpanExporter(endpoint=endpoint)  # None: $OTEL_EXPORTER_OTLP_*ENDPOINT, else localhost:4318
    return None


def flush() -> None:
    """Export the spans ended so far (tests; shutdown does it too)."""
    if _provider is not None:
        _provider.force_flush()


def shutdown() -> None:
    """Export what is left and stop tracing (bounded by the SDK's export timeout)."""
    global enabled, _provider, _tracer
    enabled = False
    if _provider is not None:
        _provider.shutdown()
    _provider = None
    _tracer = trace.NoOpTracer()


# --- the client request's span (policy/context.py) ------------------------------------------------------------


@contextmanager
def serving(scope: Any) -> Iterator[trace.Span]:
    """The SERVER span of one request, current while the block runs; ended (with its CLIENT spans) after."""
    carrier = {k.decode(): v.decode("latin-1") for k, v in scope.get("headers", ()) if k in CONTEXT_HEADERS}
    parent = _propagator.extract(carrier) if carrier else None
    method = str(scope.get("method", "GET"))
    path = str(scope.get("path", ""))
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": path,
        "url.scheme": str(scope.get("scheme", "http")),
    }
    span = _tracer.start_span(method, kind=SpanKind.SERVER, context=parent, attributes=attributes)
    request = _Request(span)
    token = _REQUEST.set(request)
    attached = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, type(exc).__name__)
        raise
    finally:
        otel_context.detach(attached)
        _REQUEST.reset(token)
        _name(span, scope, method, path)
        for client in request.client_spans:
            client.end()
        span.end()


def forget_request() -> None:
    """In a task that outlives the request that started it (`logs.detached`): no request's span is current,
    so nothing it sends later opens a CLIENT span under that request. A no-op outside a traced request."""
    if _REQUEST.get() is not None:
        _REQUEST.set(None)
        otel_context.attach(otel_context.Context())  # this task's copy of the context; it ends with the task


def answered(span: trace.Span, status: int) -> None:
    """The client request's answer started with `status`."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(StatusCode.ERROR)


def _name(span: trace.Span, scope: Any, method: str, path: str) -> None:
    """Name the span once the router has done its work: the MCP method if known, else `METHOD route`."""
    if not span.is_recording():
        return
    server = scope.get("mcpfleet.server")
    mcp_method = mcp_name = None
    for name, value in scope.get("headers", ()):
        if name == b"mcp-method":
            mcp_method = value.decode("latin-1")
        elif name == b"mcp-name":
            mcp_name = value.decode("latin-1")
    route = None
    if server is not None:
        span.set_attribute("mcp.server.id", str(server))
        rest = path[len(str(server)) + 1 :]
        route = f"/{server}{rest if rest in ROUTES else '/*'}"
    elif path in STATUS_ROUTES:
        route = path
    if route is not None:
        span.set_attribute("http.route", route)
    if mcp_method:  # 2026-07-28: the method, and the tool's or prompt's name, are headers
        span.set_attribute("mcp.method.name", mcp_method)
        if mcp_name and mcp_method in TARGETS:
            span.set_attribute(TARGETS[mcp_method], mcp_name)
        span.update_name(f"{mcp_method} {mcp_name}" if mcp_name and mcp_method in TARGETS else mcp_method)
    elif getattr(span, "name", method) == method and route is not None:  # not named by a relayed call
        span.update_name(f"{method} {route}")


# --- upstream calls ---------------------------------------------------------------------------------------


def http_call(headers: list[tuple[bytes, bytes]], method: str, url: str) -> trace.Span:
    """A CLIENT span for a request to an HTTP backend at `url`: its trace context replaces any in `headers`
    (changed in place). End it with `http_answered` or `http_failed`."""
    span = _tracer.start_span(
        f"{method}", kind=SpanKind.CLIENT, attributes={"http.request.method": method, "url.full": _no_query(url)}
    )
    headers[:] = [(k, v) for k, v in headers if k not in CONTEXT_HEADERS]
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, trace.set_span_in_context(span))
    headers.extend((k.encode(), v.encode()) for k, v in carrier.items())
    request = _REQUEST.get()
    if request is not None:
        request.client_spans.append(span)
    return span


def http_answered(span: trace.Span, status: int) -> None:
    """The backend's answer started with `status`: the CLIENT span ends."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(StatusCode.ERROR)
    _end(span)


def http_failed(span: trace.Span, exc: BaseException) -> None:
    """Nothing was answered (connection refused, timeout, cancelled): the CLIENT span ends in error."""
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(StatusCode.ERROR)
    _end(span)


def _end(span: trace.Span) -> None:
    request = _REQUEST.get()
    if request is not None and span in request.client_spans:
        request.client_spans.remove(span)
    span.end()


def _no_query(url: str) -> str:
    """`url` without userinfo or query (spans carry no credentials)."""
    return shown_url(url).split("?", 1)[0]


def inject_meta(data: bytes) -> bytes:
    """A JSON-RPC message on its way to a relayed backend (stdio process, bridged connection). A request sent
    while a client request is served gets a CLIENT span, child of that request's span, and the span's trace
    context in `params._meta` (replacing `traceparent`/`tracestate` there); anything else is returned as it
    is. Called only when `enabled`."""
    request = _REQUEST.get()
    if request is None or b'"method"' not in data:
        return data
    try:
        message = json.loads(data)
    except ValueError:
        return data
    if not isinstance(message, dict) or "id" not in message or not isinstance(message.get("method"), str):
        return data
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        return data
    method: str = message["method"]
    attributes: dict[str, Any] = {"mcp.method.name": method, "jsonrpc.request.id": str(message["id"])}
    name = method
    target = (params or {}).get("name")
    if method in TARGETS and isinstance(target, str):
        name = f"{method} {target}"
        attributes[TARGETS[method]] = target
    if not request.client_spans and request.span.is_recording():  # the client request is this call
        request.span.update_name(name)
        request.span.set_attributes(attributes)
    span = _tracer.start_span(
        name, kind=SpanKind.CLIENT, context=trace.set_span_in_context(request.span), attributes=attributes
    )
    request.client_spans.append(span)
    meta = {k: v for k, v in ((params or {}).get("_meta") or {}).items() if k not in ("traceparent", "tracestate")}
    _propagator.inject(meta, trace.set_span_in_context(span))
    message["params"] = {**(params or {}), "_meta": meta}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def current_trace_id() -> str | None:
    """The trace id (32 hex digits) of the request being served, when it is sampled or was propagated."""
    request = _REQUEST.get()
    if request is None:
        return None
    context = request.span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
