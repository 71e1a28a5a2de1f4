"""The gateway's log lines: one handler on stderr, text or JSON (`gateway.logging`), and the request fields
every line logged while serving a request carries.

Fields come from one context variable, `REQUEST`, set by the `Correlation` layer (`policy/context.py`) for
each request and read by `ContextFilter` when a line is emitted, so every `log.info(...)` on the request path
gets them without passing anything along; a line costs nothing until it is logged, and a request that logs
nothing costs one `ContextVar.set`. The fields (docs/operations.md, "Logs"):

- `request_id`: the client's `X-Request-Id` when it is a sane token (1 to 128 of `[A-Za-z0-9._-]`), else one
  the gateway made (the trace id when tracing is on);
- `session_id`: the first 16 hex digits of the SHA-256 of the request's `Mcp-Session-Id` (or legacy
  `?session_id=`): a session id is a bearer capability (http ones are sealed records), so it is never logged;
- `server`: the server id once the router knows it; `principal`: the caller (`Identity.principal`) once the
  authentication layer knows it;
- `client`: the client's address (`scope["client"][0]`), the one found through `gateway.trusted_proxies`
  once that layer ran (docs/security.md).

Tasks inherit the context of the task that starts them (asyncio copies it at `create_task`), so a long-lived
task started while a request is served (a stdio process's readers, a pool's tasks, a runtime's watches) would
stamp every line it ever logs with that first request's fields: such tasks start through `detached`, which
runs them with no request (and no trace request, `tracing.py`). A line such a task logs about a request it
serves for someone (the audit line of an answer it reads) names that request itself: `extra=request_fields(
context)` with the `RequestContext` the request's task captured (`ContextFilter` keeps explicit fields).

JSON (python-json-logger): one object a line with `time` (RFC 3339, UTC, milliseconds), `level`, `logger`,
`message`, the fields above when present, `exc_info` for a traceback, and `audit` (the object an audit line
passes as `extra={"audit": {...}}`) nested as it is. Text: `time level logger [request_id]: message`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, ParamSpec, TextIO, TypeVar
from urllib.parse import parse_qs

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

from mcpfleet.gateway import tracing
from mcpfleet.gateway.identity import IDENTITY
from mcpfleet.masking import mask, masking
from mcpfleet.registry.model import Gateway, Logging

log = logging.getLogger("mcpfleet.gateway")

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Libraries that log a line per request at INFO (CPU on the hot path): WARNING unless `level: debug`.
CHATTY = ("httpx2", "httpcore2", "mcp")
# Libraries kept at WARNING whatever the level: watchfiles logs each change in the registry's directory at
# DEBUG and INFO, the gateway's own log file included when stderr is redirected there (a line per write, forever).
QUIET = ("watchfiles",)
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_FORMAT_IN_REQUEST = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
SESSION_DIGEST_HEX = 16


def session_digest(session_id: str) -> str:
    """What logs show of a session id: the first 16 hex digits of its SHA-256 (stable, not reversible)."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()[:SESSION_DIGEST_HEX]


class RequestContext:
    """The request a line is logged for: its id, and its ASGI scope, read only when a line is emitted (the
    server id and the identity are put there by the router and the authentication layer as they learn them)."""

    __slots__ = ("_session", "request_id", "scope")

    def __init__(self, request_id: str, scope: Any) -> None:
        self.request_id = request_id
        self.scope = scope
        self._session: str | None = None

    def fields(self) -> dict[str, str]:
        """`request_id`, and `session_id`, `server`, `principal`, `client` when known."""
        fields = {"request_id": self.request_id}
        session = self.session_id()
        if session is not None:
            fields["session_id"] = session
        server = self.scope.get("mcpfleet.server")
        if server is not None:
            fields["server"] = str(server)
        identity = self.scope.get(IDENTITY)
        if identity is not None:
            fields["principal"] = str(identity.principal)
        client = self.scope.get("client")
        if client:
            fields["client"] = str(client[0])
        return fields

    def session_id(self) -> str | None:
        if self._session is None:
            token = None
            for name, value in self.scope.get("headers", ()):
                if name == b"mcp-session-id":
                    token = value.decode("latin-1")
                    break
            if token is None and b"session_id=" in self.scope.get("query_string", b""):  # legacy /messages/
                query = parse_qs(self.scope["query_string"].decode("latin-1"))
                token = query.get("session_id", [None])[0]
            self._session = session_digest(token) if token else ""
        return self._session or None


REQUEST: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("mcpfleet_request", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this task, if any."""
    context = REQUEST.get()
    return context.request_id if context is not None else None


def request_fields(context: RequestContext | None) -> dict[str, str]:
    """The `extra` of a line logged about the request `context` (captured in the request's task) from another
    task: its fields, in place of the emitting task's (the emitting task's when `context` is None)."""
    return context.fields() if context is not None else {}


P = ParamSpec("P")
T = TypeVar("T")


def detached(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """`fn`, to be started as a task that outlives the request that starts it (`task_group.start_soon(
    detached(fn), ...)`, or `.start`): it runs with no request in its context, so its lines carry no request's
    fields and what it sends to a backend opens no span under that request. Other context variables (the
    connection's forwarded headers, `upstream/backend.py`) are inherited as before."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        REQUEST.set(None)  # this task's copy of the context only
        tracing.forget_request()
        return await fn(*args, **kwargs)

    return run


class ContextFilter(logging.Filter):
    """Copies the request fields onto every record emitted while a request is served (a handler's filter, so
    records of every logger, uvicorn's included, pass it), unless the record was given its own
    (`request_fields`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" in record.__dict__:  # given its request's fields (`request_fields`)
            return True
        context = REQUEST.get()
        if context is not None:
            for name, value in context.fields().items():
                setattr(record, name, value)
        return True


class MaskFilter(logging.Filter):
    """Masks the values the registry's `${VAR}` references took from the environment (`masking.install`:
    the gateway installs them at start and on every reload) in every record: its message with its args
    merged in, its exception text, and its string extra fields. A handler's filter, so records of every
    logger pass it. Plan Document, section 6.5."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not masking():  # no `${VAR}` took a value: nothing to look for (a record's cost stays nil)
            return True
        # A record whose args do not fit its message raises here: the handler reports it, as without masking.
        with contextlib.suppress(Exception):
            self._mask(record)
        return True

    @staticmethod
    def _mask(record: logging.LogRecord) -> None:
        message = record.getMessage()
        shown = mask(message)
        if shown != message:
            record.msg, record.args = shown, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and mask(record.exc_text) != record.exc_text:
            record.exc_info = None  # both formatters print `exc_text` in its place
        for name, value in list(record.__dict__.items()):
            if isinstance(value, str) and name not in ("msg", "message"):
                setattr(record, name, mask(value))


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object a line: `time`, `level`, `logger`, `message`, then the record's extra fields."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            # uvicorn's coloured copy of its message; python-json-logger's own list covers the rest.
            reserved_attrs=[*_reserved(), "color_message"],
            json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {"time": None, **log_data}

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = rfc3339(record.created)
        super().add_fields(log_data, record, message_dict)


def _reserved() -> list[str]:
    from pythonjsonlogger.core import RESERVED_ATTRS

    return list(RESERVED_ATTRS)


def rfc3339(created: float) -> str:
    """`2026-11-29T10:04:05.123Z`: RFC 3339, UTC, milliseconds."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# What a text line shows in place of a control character (C0, DEL, C1) or a Unicode line break: a text a
# client chose (a tool name, a path) cannot end its line and forge the next record, or put a NUL in the file
# (CWE-117, log injection). The JSON format escapes them as JSON does.
_ESCAPES: dict[int, str] = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
    **{ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"},
}


class TextFormatter(logging.Formatter):
    """`time level logger: message`, with `[request_id]` before the colon on lines logged for a request.

    One record is one line: control characters and line breaks in it are escaped (`\\n`, `\\x00`). A
    traceback or stack follows on lines of its own, each indented by two spaces and escaped the same way, so
    no line of it passes for a record (every record's line starts with its time)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._in_request = logging.Formatter(TEXT_FORMAT_IN_REQUEST)

    def format(self, record: logging.LogRecord) -> str:
        # `logging.Formatter.format`, with the record's line escaped and what follows it indented.
        record.message = record.getMessage()
        chosen = self._in_request if getattr(record, "request_id", None) is not None else self
        record.asctime = chosen.formatTime(record, chosen.datefmt)
        lines = [chosen.formatMessage(record).translate(_ESCAPES)]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                lines += ["  " + line.translate(_ESCAPES) for line in block.split("\n")]
        return "\n".join(lines)


_handler: logging.Handler | None = None


def configure(settings: Logging, stream: TextIO | None = None) -> None:
    """Send every log line of the process (the gateway's, uvicorn's, the libraries') to `stream` (stderr)
    through one handler, in the format and at the level of `settings` (`gateway.logging`). Called again (a
    reload), it changes the format and level in place."""
    global _handler
    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler(stream or sys.stderr)
        _handler.addFilter(ContextFilter())
        _handler.addFilter(MaskFilter())  # after the request fields are copied on: those are masked too
        root.addHandler(_handler)
    _handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    level = LEVELS[settings.level]
    root.setLevel(level)
    for name in UVICORN:  # through the same handler (uvicorn's own config would give them handlers of their own)
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else logging.WARNING)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def reconfigure(old: Gateway, new: Gateway) -> None:
    """A reload: new `gateway.logging` settings apply at once (when this process's logging is ours, i.e.
    `configure` ran); `gateway.tracing` is read at start only, which a line says."""
    if new.logging != old.logging and _handler is not None:
        configure(new.logging)
        log.info("gateway.logging applied: format %s, level %s", new.logging.format, new.logging.level)
    if new.tracing != old.tracing:
        log.warning("gateway.tracing changed: it applies when the gateway starts again")
