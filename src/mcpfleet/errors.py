"""The project's own errors.

Library exceptions (pydantic, yaml, httpx2, OSError, the SDK's MCPError) are translated into these where
they enter, so callers handle one hierarchy. Each class knows the CLI exit code it maps to; the gateway
will map the same classes to HTTP statuses.

Exit codes (the CLI's; `docs/cli.md` documents them for users):

- 0: success.
- 1: `ToolFailedError` (cli): the tool returned an error result, or the server answered with a JSON-RPC error.
- 2: `McpfleetError` by default, `UsageError`, `RegistryError`, `UnknownServerError`, `UnknownToolError`,
  `EntryError`: something the user wrote (an option, the registry, a server or tool name) is wrong.
- 3: `ServerUnavailableError` and its subclasses, `GatewayError`: an MCP server (or, for the CLI, the
  gateway in between) is unreachable, failed to start, or broke the protocol; `DeployError`: a deployment
  backend (the Docker engine) is unreachable or refused (no engine, no permission, image missing, a
  container that exited at once, a port taken).
- 4: `ListenError`: `mcpfleet serve` cannot listen on its address (port taken, address not on this machine,
  name unresolved, no privilege); unlike 2, often gone a moment later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mcpfleet.masking import mask, masked


class McpfleetError(Exception):
    """Base class. `exit_code` is what the CLI exits with when this error reaches it."""

    exit_code = 2


class UsageError(McpfleetError):
    """The command line or its arguments are wrong (exit 2)."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a registry file: which file, where in it, and what is wrong."""

    source: str
    location: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.location}" if self.location else self.source
        return f"{where}: {self.message}"


class RegistryError(McpfleetError):
    """A registry file is unreadable or invalid. Carries every problem found, not just the first, and the
    warnings found with them (`registry validate` prints both; the message holds the problems only)."""

    def __init__(self, problems: Sequence[Problem], warnings: Sequence[str] = ()) -> None:
        self.problems = tuple(problems)
        self.warnings = tuple(warnings)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in registry"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class UnknownServerError(McpfleetError):
    """A server id that the registry does not name (exit 2); suggests the id in lowercase when there is one
    (a client file's `Time` is served as `time`)."""

    def __init__(self, server_id: str, known: Sequence[str]) -> None:
        self.server_id = server_id
        hint = f"known servers: {', '.join(known)}" if known else "the registry names no servers"
        lowered = server_id.lower()
        guess = f"did you mean {lowered!r}? " if lowered != server_id and lowered in known else ""
        super().__init__(f"unknown server {server_id!r} ({guess}{hint})")


class UnknownToolError(McpfleetError):
    """A tool name the server's `tools/list` does not contain (exit 2); suggests the closest names."""

    SHOWN = 20  # tool names listed in the message at most

    def __init__(self, server_id: str, tool: str, known: Sequence[str], hint: str | None = None) -> None:
        import difflib

        self.server_id = server_id
        self.tool = tool
        self.known = tuple(known)
        close = difflib.get_close_matches(tool, self.known, n=3, cutoff=0.6)
        text = f"unknown tool {tool!r} on server {server_id!r}"
        if close:
            text += f" (did you mean {' or '.join(repr(name) for name in close)}?)"
        if not self.known:
            text += "; the server offers no tools"
        else:
            more = len(self.known) - self.SHOWN
            listed = ", ".join(self.known[: self.SHOWN]) + (f" and {more} more" if more > 0 else "")
            text += f"; tools: {listed}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class EntryError(McpfleetError):
    """A registry entry that could not be made usable, although the rest of the registry is (exit 2): for
    instance a `${VAR}` it uses is unset. Carries the registry's one-line error for that entry."""

    def __init__(self, server_id: str, message: str) -> None:
        self.server_id = server_id
        self.message = message
        super().__init__(f"server {server_id!r} is not usable: {message}")


class ListenError(McpfleetError):
    """`mcpfleet serve` cannot listen on its address (exit 4): the port is taken, the address is not one of
    this machine's, the name does not resolve, or binding needs a privilege. Often temporary (a previous
    gateway still holding the port, an interface not up yet), so a supervisor may retry on exit 4, unlike 2."""

    exit_code = 4

    def __init__(self, address: str, reason: str, fix: str) -> None:
        self.address = address
        self.reason = reason
        self.fix = fix
        super().__init__(f"cannot listen on {address}: {reason} ({fix})")


class ServerUnavailableError(McpfleetError):
    """A server could not be reached or started (exit 3)."""

    exit_code = 3


class ServerStartError(ServerUnavailableError):
    """A stdio server's command is missing, exited at once, or broke the protocol before the handshake ended."""

    def __init__(self, server_id: str, argv: Sequence[str], reason: str, stderr_tail: str = "") -> None:
        self.server_id = server_id
        self.argv = tuple(argv)
        self.reason = reason
        self.stderr_tail = stderr_tail
        # The command as the registry's displays show it: `${VAR}` values masked (masking.py).
        text = mask(f"server {server_id!r}: command {' '.join(self.argv)!r} {reason}")
        if stderr_tail:
            text += "\n  stderr (last lines):\n" + "\n".join(f"    {line}" for line in stderr_tail.splitlines())
        super().__init__(text)


class ServerUnreachableError(ServerUnavailableError):
    """No HTTP endpoint of a server answered, and it has no command to fall back to."""


class DeployError(ServerUnavailableError):
    """A deployment backend could not do what was asked (exit 3): its engine or API is unreachable or refuses,
    an image does not exist, a container exited at once (its last log lines in the message), a port is taken.
    `server_id` is None for errors that concern no one server."""

    def __init__(self, message: str, *, server_id: str | None = None, logs: str = "") -> None:
        self.server_id = server_id
        self.logs = logs
        text = f"server {server_id!r}: {message}" if server_id else message
        if logs:
            text += "\n  last log lines:\n" + "\n".join(f"    {line}" for line in logs.splitlines())
        super().__init__(text)
        self.message = message


class EngineUnavailableError(DeployError):
    """The Docker engine does not answer, or its socket refuses us (exit 3): one line naming what is missing."""


class ProtocolError(ServerUnavailableError):
    """The server answered, but not as an MCP server should (exit 3)."""


class RefusedError(ProtocolError):
    """An HTTP server refused the caller (exit 3): `status` 401 (no credentials, or ones it does not accept)
    or 403 (these credentials may not do this); `detail`: the reason it gave, None when it gave none."""

    def __init__(self, message: str, status: int, detail: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def leaf_error(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups raised by task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class GatewayError(McpfleetError):
    """An error the gateway answers itself: an HTTP status and a JSON-RPC error body a person can act on.

    JSON-RPC codes: the standard ones where they fit (-32700 parse error, -32600 invalid request), and
    -32009..-32019 (left to implementations by the spec) for what only a gateway can say.
    """

    exit_code = 3

    def __init__(
        self, status: int, code: int, message: str, *, data: object = None, headers: dict[str, str] | None = None
    ) -> None:
        message = mask(message)  # what callers read never holds a registry's `${VAR}` value (masking.py)
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.data = masked(data)  # a container's logs, a process's stderr: the same rule as the message
        self.headers = headers or {}

    @classmethod
    def parse_error(cls, message: str) -> GatewayError:
        return cls(400, -32700, message)

    @classmethod
    def invalid_request(cls, message: str, status: int = 400) -> GatewayError:
        return cls(status, -32600, message)

    @classmethod
    def unknown_server(cls, server_id: str, known: Sequence[str], *, filtered: bool = False) -> GatewayError:
        """404 -32010 for an id the registry does not name. `known`: the ids the caller may learn of; when
        `filtered` (access rules chose them), the hint says they are the caller's, and an empty list says
        nothing (the caller learns of no other server)."""
        if known:
            hint = f"; {'servers you may reach here' if filtered else 'servers here'}: {', '.join(known)}"
        else:
            hint = "" if filtered else "; the registry names no servers"
        return cls(404, -32010, f"unknown server {server_id!r}{hint}")

    @classmethod
    def session_not_found(cls) -> GatewayError:
        return cls(404, -32600, "Session not found: it ended, expired or was never issued here; initialize again")

    @classmethod
    def unreachable(cls, server_id: str, detail: str) -> GatewayError:
        return cls(502, -32012, f"server {server_id!r} is unreachable: {detail}")

    @classmethod
    def start_failed(cls, error: ServerStartError | DeployError) -> GatewayError:
        """A process or container that did not start: the first line of why, its last output as data."""
        tail = error.stderr_tail if isinstance(error, ServerStartError) else error.logs
        return cls(502, -32013, str(error).split("\n")[0], data={"stderr": tail})

    @classmethod
    def timeout(cls, server_id: str, what: str, seconds: float, setting: str) -> GatewayError:
        return cls(504, -32015, f"server {server_id!r}: no {what} within {seconds:g} s (setting: {setting})")
