"""The status page at `/`: one HTML document for a browser, the JSON it polls for everyone else.

`GET /` answers HTML when the request's `Accept` prefers `text/html` over `application/json` (RFC 9110
12.5.1: a media type's weight is that of the most specific range that matches it); otherwise the JSON
document: the index of servers and their URLs, `gateway` (the `/servers` document), `traffic` (the last
minutes per server, `gateway/recorder.py`) and `recent_errors`. Both carry `Vary: Accept`.

The page needs no build step: `status.html`, `status.css` and `status.js` sit beside this file and are put
together once, at import. The style and the script are inline and allowed by their SHA-256 in a strict
Content-Security-Policy (nothing else may run, load or be framed), so the page makes no request but its own
JSON, which goes through the same layers (authentication included) as any request. The script renders with
DOM calls only (`textContent`), so a server id, a description or an error message holding markup is shown
as text.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from importlib.resources import files
from typing import Any

from mcpfleet.gateway.asgi import Scope, Send, header, respond
from mcpfleet.gateway.recorder import Recorder

REFRESH_S = 5  # how often the page polls (seconds)

_HERE = files(__name__)


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _build() -> tuple[bytes, str]:
    style = _HERE.joinpath("status.css").read_text("utf-8")
    script = _HERE.joinpath("status.js").read_text("utf-8")
    html = _HERE.joinpath("status.html").read_text("utf-8")
    html = html.replace("{{REFRESH_MS}}", str(REFRESH_S * 1000)).replace("{{STYLE}}", style)
    html = html.replace("{{SCRIPT}}", script)
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_digest(script)}",
            f"style-src {_digest(style)}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html.encode(), policy


PAGE, CONTENT_SECURITY_POLICY = _build()
_COMMON = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"), (b"vary", b"Accept")]
HTML_HEADERS = [
    *_COMMON,
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def wants_html(accept: str | None) -> bool:
    """Whether `accept` (an `Accept` header value) weighs `text/html` above `application/json`; ties, and no
    header at all, go to JSON (what scripts and `curl` get)."""
    if not accept:
        return False
    ranges: list[tuple[str, str, float]] = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        kind, _, sub = media.lower().partition("/")
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        ranges.append((kind, sub, q))

    def weight(kind: str, sub: str) -> float:
        best, score = 0.0, -1
        for k, s, q in ranges:
            specificity = 2 if (k, s) == (kind, sub) else 1 if (k == kind and s == "*") else 0 if k == "*" else -1
            if specificity > score:
                best, score = q, specificity
        return best if score >= 0 else 0.0

    return weight("text", "html") > weight("application", "json")


def document(
    index: Mapping[str, Any], servers: Mapping[str, Any], recorder: Recorder, viewer: str | None = None
) -> dict[str, Any]:
    """The JSON form: `index` (GET /'s fields, unchanged) plus `gateway` (the /servers document), `traffic`
    and `recent_errors` (newest first, as the caller `viewer` may see them: `Recorder.errors`)."""
    errors = recorder.errors(viewer)
    return {**index, "gateway": servers, "traffic": recorder.traffic(), "recent_errors": errors}


async def serve(scope: Scope, send: Send, make_document: Callable[[], Mapping[str, Any]]) -> None:
    """Answer `GET /` (or `HEAD /`): the page or its JSON, as `Accept` asks."""
    if wants_html(header(scope, b"accept")):
        await respond(send, 200, PAGE, HTML_HEADERS, content_type=b"text/html; charset=utf-8")
    else:
        await respond(send, 200, json.dumps(make_document(), indent=2).encode(), _COMMON)
