"""The audit line: one log record per `tools/call`, on every route (`gateway.logging.audit`, on by default).

Records go to the logger `mcpfleet.audit` at INFO. The message reads in the text format
(`tool call key:ci -> demo/echo ok 3.2 ms`); the same facts are structured in `record.audit` (passed as
`extra={"audit": {...}}`), which the JSON format renders as fields:

| field | value |
|---|---|
| `principal` | who called (`Identity.principal`: `key:<name>`, `sub:<subject>`, `anonymous`) |
| `server` | the server id |
| `tool` | the tool name the call named (`?` when it named none) |
| `outcome` | see OUTCOMES |
| `duration_ms` | from the request leaving the gateway to its answer (0 for `denied`), milliseconds |
| `session` | a digest of the gateway's session id (`logs.session_digest`), or None (2026-07-28, WebSocket) |
| `request_id` | the JSON-RPC id as the client sent it |
| `arguments` | the call's arguments, only with `gateway.logging.audit_arguments: true` |

What the records hold is never the credential: the principal is a key's name or a token's subject.

An answer is often read by a task other than the request's (a stdio process's reader, a shared process's
pump: `logs.detached`), so the line's request fields (`request_id`, `session_id`, `principal`, ...) come from
the `context` the caller captured in the request's task, not from the task that writes the line.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from mcpfleet.gateway.logs import RequestContext, request_fields, session_digest

log = logging.getLogger("mcpfleet.audit")

# ok: a result; tool_error: a result with `isError: true`; error: a JSON-RPC error from the server;
# input_required: a 2026-07-28 `input_required` result (the client retries: another call, another line);
# denied: refused by `gateway.access` (never sent); cancelled: the client went away before the answer;
# timeout: the gateway gave up waiting (-32015); failed: the gateway answered with another error of its own
# (the server unreachable, its process exited, an answer over the size limit) or none came.
Outcome = Literal["ok", "tool_error", "error", "input_required", "denied", "cancelled", "timeout", "failed"]
OUTCOMES: tuple[Outcome, ...] = (
    "ok",
    "tool_error",
    "error",
    "input_required",
    "denied",
    "cancelled",
    "timeout",
    "failed",
)
GATEWAY_CODES = range(-32019, -32009)  # errors.GatewayError's own family (section 9.11)
TIMEOUT = -32015


def outcome_of(answer: dict[str, Any]) -> Outcome:
    """The outcome a JSON-RPC response to `tools/call` says."""
    error = answer.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        if code == TIMEOUT:
            return "timeout"
        return "failed" if isinstance(code, int) and code in GATEWAY_CODES else "error"
    result = answer.get("result")
    if isinstance(result, dict):
        if result.get("isError") is True:
            return "tool_error"
        if result.get("resultType") == "input_required":
            return "input_required"
    return "ok"


def emit(
    *,
    principal: str,
    server: str,
    tool: str,
    outcome: Outcome,
    duration_ms: float,
    session: str | None,
    request_id: Any,
    arguments: Any = None,
    with_arguments: bool = False,
    context: RequestContext | None = None,
) -> None:
    """Write one audit record (see the module's table); `arguments` only when `with_arguments`. `context`: the
    request the call came in (`logs.REQUEST` in its task), whose fields the line carries; None: the fields of
    the request the writing task serves, if any."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "principal": principal,
        "server": server,
        "tool": tool,
        "outcome": outcome,
        "duration_ms": round(duration_ms, 3),
        "session": session_digest(session) if session is not None else None,  # never the id: it is a capability
        "request_id": request_id,
    }
    if with_arguments:
        fields["arguments"] = arguments
    log.info(
        "tool call %s -> %s/%s %s %.1f ms",
        principal,
        server,
        tool,
        outcome,
        duration_ms,
        extra={"audit": fields, **request_fields(context)},
    )
