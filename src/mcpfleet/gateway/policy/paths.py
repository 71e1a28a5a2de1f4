"""Path escape: a request's raw path may not leave its server or the backend path it maps to.

Checked on the raw bytes (`scope["raw_path"]`) before anything is decoded, by the router, which routes on
the segments it returns. Refused with 400: `.` and `..` segments (raw or percent-encoded), encoded `/`, `\\`
or NUL, empty segments (a trailing `/` aside).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from mcpfleet.errors import GatewayError

_ENCODED_SEPARATOR = re.compile(rb"%(2f|5c|00)", re.IGNORECASE)
_DOT_SEGMENT = re.compile(rb"^(\.|%2e){1,2}$", re.IGNORECASE)


def check_path(raw_path: bytes) -> list[str]:
    """The decoded path segments, or a 400 when the raw path could escape its server or backend path."""
    if not raw_path.startswith(b"/") or b"\x00" in raw_path or _ENCODED_SEPARATOR.search(raw_path):
        raise GatewayError.invalid_request("the path is not allowed: encoded separators or NUL")
    segments = raw_path[1:].split(b"/")
    for index, segment in enumerate(segments):
        if _DOT_SEGMENT.match(segment):
            raise GatewayError.invalid_request("the path is not allowed: '.' and '..' segments")
        if segment == b"" and index != len(segments) - 1:
            raise GatewayError.invalid_request("the path is not allowed: empty segments")
    return [unquote_to_bytes(s).decode("utf-8", "replace") for s in segments]
