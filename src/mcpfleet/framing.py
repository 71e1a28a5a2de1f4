"""Newline-delimited JSON-RPC framing, as the MCP stdio transport defines it. Pure: bytes in, lines out.

Messages are separated by `\\n` and must not contain embedded newlines; a `\\r` before the newline is
tolerated. A line longer than `max_line` is not kept (memory stays bounded): it is skipped up to its newline
and reported as `MessageTooLarge` with its size and its first and last bytes, where a JSON-RPC message
names its `id`, so that the one request it answers can fail and the stream goes on.
"""

from __future__ import annotations

DEFAULT_MAX_LINE = 64 * 1024 * 1024
KEPT = 4096  # bytes kept from each end of a line that is too long


class MessageTooLarge(ValueError):
    """One line over the limit, skipped. `size` counts the bytes seen up to its newline (or the end)."""

    def __init__(self, size: int, limit: int, head: bytes, tail: bytes) -> None:
        super().__init__(f"a message line of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit
        self.head = head
        self.tail = tail


class _Skipped:
    """A line being skipped: how long it is so far, its first KEPT bytes and its last KEPT bytes."""

    def __init__(self, start: bytes) -> None:
        self.size = len(start)
        self.head = start[:KEPT]
        self.tail = start[-KEPT:]

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if len(self.head) < KEPT:
            self.head += data[: KEPT - len(self.head)]
        self.tail = (self.tail + data[-KEPT:])[-KEPT:]


class LineBuffer:
    """Accumulates chunks and hands back complete lines (without their terminator), in order.

    A line over `max_line` comes back as a `MessageTooLarge` in its place (an exception object in the list,
    not raised), so the lines after it are not lost.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._pending = bytearray()
        self._max_line = max_line
        self._skipping: _Skipped | None = None

    def feed(self, chunk: bytes) -> list[bytes | MessageTooLarge]:
        out: list[bytes | MessageTooLarge] = []
        if self._skipping is not None:
            end = chunk.find(b"\n")
            if end < 0:
                self._skipping.add(chunk)
                return out
            self._skipping.add(chunk[:end])
            out.append(self._too_large(self._skipping))
            self._skipping = None
            chunk = chunk[end + 1 :]
        self._pending += chunk
        if b"\n" in chunk:
            *lines, rest = bytes(self._pending).split(b"\n")
            self._pending = bytearray(rest)
            for line in lines:
                line = line.removesuffix(b"\r")
                if len(line) > self._max_line:
                    out.append(MessageTooLarge(len(line), self._max_line, line[:KEPT], line[-KEPT:]))
                elif line.strip():
                    out.append(line)
        if len(self._pending) > self._max_line:
            self._skipping = _Skipped(bytes(self._pending))
            self._pending.clear()
        return out

    def flush(self) -> bytes | MessageTooLarge | None:
        """The unterminated remainder at end of stream, if it holds anything."""
        if self._skipping is not None:
            skipped, self._skipping = self._skipping, None
            return self._too_large(skipped)
        rest = bytes(self._pending).strip()
        self._pending.clear()
        return rest or None

    def _too_large(self, skipped: _Skipped) -> MessageTooLarge:
        tail = skipped.tail.removesuffix(b"\r")
        size = skipped.size - (len(skipped.tail) - len(tail))
        return MessageTooLarge(size, self._max_line, skipped.head[:size], tail)


def encode_line(message: bytes) -> bytes:
    """Frame one serialized JSON-RPC message for stdin; refuses embedded newlines, which would split it."""
    if b"\n" in message:
        raise ValueError("a JSON-RPC message sent over stdio must not contain a newline")
    return message + b"\n"
