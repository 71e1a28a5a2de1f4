"""The last few minutes of traffic, in memory, for the status page at `/` (Prometheus keeps the long run).

Per server, a ring of `SLOTS` buckets of `BUCKET_S` seconds (5 minutes): requests, errors the gateway
answered, the sum and the maximum of their durations, and a small histogram of durations (the bounds of
`/metrics`' histogram) from which quantiles are estimated. Beside them, the last `RECENT_ERRORS` errors the
gateway answered itself: when, server, HTTP status, JSON-RPC code and message (the message the client got;
never a header).

The request path pays O(1): a dict lookup, a bucket found by index (emptied when its time comes round
again) and a few additions; no lock, since the gateway serves on one event loop. Reading (`traffic`,
`errors`) costs O(servers x slots) and is done only when the page asks. Rings are made for the ids the
router accepted (registry ids, and "-" for requests no server took), so their number is bounded by the
registry; a ring with nothing in the window is dropped when read.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BUCKET_S = 5  # seconds per bucket
SLOTS = 60  # buckets per ring: 5 minutes
RECENT_ERRORS = 50
MESSAGE_LIMIT = 300  # characters of an error message kept
# Upper bounds of the duration histogram, in seconds (the /metrics histogram's), and +Inf past the last.
BOUNDS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _Bucket:
    __slots__ = ("count", "errors", "histogram", "peak", "stamp", "total")

    def __init__(self) -> None:
        self.stamp = -1  # which BUCKET_S-long interval (monotonic seconds // BUCKET_S) it holds
        self.count = 0
        self.errors = 0
        self.total = 0.0
        self.peak = 0.0
        self.histogram = [0] * (len(BOUNDS) + 1)

    def take(self, stamp: int) -> _Bucket:
        if self.stamp != stamp:
            self.stamp = stamp
            self.count = self.errors = 0
            self.total = self.peak = 0.0
            self.histogram = [0] * (len(BOUNDS) + 1)
        return self


@dataclass(frozen=True)
class RecentError:
    time: float  # Unix time, seconds
    server: str  # the server id, "-" when the request reached none
    status: int  # HTTP status
    code: int  # JSON-RPC error code
    message: str
    caller: str | None = None  # the principal answered; other callers see "another caller" in its place


class Recorder:
    """`observe` and `error` on the request path; `traffic` and `errors` for the page."""

    def __init__(self) -> None:
        self._rings: dict[str, list[_Bucket]] = {}
        self._errors: deque[RecentError] = deque(maxlen=RECENT_ERRORS)

    def _bucket(self, server: str, now: float) -> _Bucket:
        ring = self._rings.get(server)
        if ring is None:
            ring = self._rings[server] = [_Bucket() for _ in range(SLOTS)]
        stamp = int(now // BUCKET_S)
        return ring[stamp % SLOTS].take(stamp)

    def observe(self, server: str, seconds: float, now: float) -> None:
        """One request to `server` took `seconds`, ending at `now` (time.monotonic())."""
        bucket = self._bucket(server, now)
        bucket.count += 1
        bucket.total += seconds
        if seconds > bucket.peak:
            bucket.peak = seconds
        bucket.histogram[bisect_left(BOUNDS, seconds)] += 1

    def error(self, server: str, code: int, status: int, message: str, caller: str | None = None) -> None:
        """The gateway answered a request to `server` ("-": none) with an error of its own; `caller`: the
        principal of that request (`key:ci`), when it had one."""
        self._bucket(server, time.monotonic()).errors += 1
        self._errors.append(RecentError(time.time(), server, status, code, message[:MESSAGE_LIMIT], caller))

    def errors(self, viewer: str | None = None) -> list[dict[str, Any]]:
        """The recent errors, newest first, as `viewer` (a principal) may see them: `time` is ISO 8601 UTC;
        in an error another caller got, that caller's principal reads "another caller" (the log has it)."""
        return [
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.time)),
                "server": e.server,
                "status": e.status,
                "code": e.code,
                "message": e.message if e.caller in (None, viewer) else e.message.replace(e.caller, "another caller"),
            }
            for e in reversed(self._errors)
        ]

    def traffic(self, now: float | None = None) -> dict[str, Any]:
        """Per server: the totals of the last minute and of the window, and the series per bucket (oldest
        first, the last one still filling). Latencies in milliseconds, rates per second."""
        now = time.monotonic() if now is None else now
        current = int(now // BUCKET_S)
        into = now - current * BUCKET_S  # seconds of the current bucket that have passed
        servers: dict[str, Any] = {}
        for server, ring in list(self._rings.items()):
            stamps = range(current - SLOTS + 1, current + 1)
            live = [b if (b := ring[stamp % SLOTS]).stamp == stamp else None for stamp in stamps]
            if not any(live):
                del self._rings[server]
                continue
            minute = live[-(60 // BUCKET_S) :]
            servers[server] = {
                "last_minute": _summary([b for b in minute if b], 60 - BUCKET_S + into),
                "window": _summary([b for b in live if b], SLOTS * BUCKET_S - BUCKET_S + into),
                "series": {
                    "requests": [b.count if b else 0 for b in live],
                    "errors": [b.errors if b else 0 for b in live],
                    "latency_ms_mean": [_ms(b.total / b.count) if b and b.count else None for b in live],
                    "latency_ms_max": [_ms(b.peak) if b and b.count else None for b in live],
                },
            }
        return {"bucket_s": BUCKET_S, "window_s": SLOTS * BUCKET_S, "servers": servers}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _summary(buckets: Sequence[_Bucket], span_s: float) -> dict[str, Any]:
    count = sum(b.count for b in buckets)
    errors = sum(b.errors for b in buckets)
    histogram = [sum(column) for column in zip(*(b.histogram for b in buckets), strict=True)] if buckets else []
    peak = max((b.peak for b in buckets), default=0.0)
    latency = None
    if count:
        latency = {
            "mean": _ms(sum(b.total for b in buckets) / count),
            "p50": _ms(_quantile(histogram, count, 0.5, peak)),
            "p95": _ms(_quantile(histogram, count, 0.95, peak)),
            "p99": _ms(_quantile(histogram, count, 0.99, peak)),
            "max": _ms(peak),
        }
    return {
        "requests": count,
        "errors": errors,
        "rate_per_s": round(count / span_s, 3) if span_s > 0 else 0.0,
        "latency_ms": latency,
    }


def _quantile(histogram: Sequence[int], count: int, q: float, peak: float) -> float:
    """The upper bound of the histogram bucket that holds the q-quantile, never above the largest seen."""
    rank = q * count
    seen = 0
    for index, n in enumerate(histogram):
        seen += n
        if seen >= rank and n:
            return min(BOUNDS[index], peak) if index < len(BOUNDS) else peak
    return peak
