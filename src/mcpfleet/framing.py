"""Newline-delimited JSON-RPC framing, as the MCP stdio transport defines it. Pure: bytes in, lines out.

Messages are separated by `\\n` and must not contain embedded newlines; a `\\r` before the newline is
tolerated. A line longer than `max_line` is an error rather than unbounded memory.
"""

from __future__ import annotations

DEFAULT_MAX_LINE = 64 * 1024 * 1024


class LineTooLongError(ValueError):
    pass


class LineBuffer:
    """Accumulates chunks and hands back complete lines (without their terminator), in order."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._pending = bytearray()
        self._max_line = max_line

    def feed(self, chunk: bytes) -> list[bytes]:
        self._pending += chunk
        if b"\n" not in chunk:
            self._check_length()
            return []
        *lines, rest = bytes(self._pending).split(b"\n")
        self._pending = bytearray(rest)
        self._check_length()
        return [line.removesuffix(b"\r") for line in lines if line.strip()]

    def flush(self) -> bytes | None:
        """The unterminated remainder at end of stream, if it holds anything."""
        rest = bytes(self._pending).strip()
        self._pending.clear()
        return rest or None

    def _check_length(self) -> None:
        if len(self._pending) > self._max_line:
            size = len(self._pending)
            self._pending.clear()
            raise LineTooLongError(f"a message line exceeds {self._max_line} bytes (got {size} without a newline)")


def encode_line(message: bytes) -> bytes:
    """Frame one serialized JSON-RPC message for stdin; refuses embedded newlines, which would split it."""
    if b"\n" in message:
        raise ValueError("a JSON-RPC message sent over stdio must not contain a newline")
    return message + b"\n"
