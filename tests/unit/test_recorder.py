"""The status page's in-memory recorder (gateway/recorder.py) and its `Accept` negotiation (gateway/page),
with plain inputs and a clock the test moves."""

from __future__ import annotations

import pytest

from mcpfleet.gateway.page import wants_html
from mcpfleet.gateway.recorder import BUCKET_S, MESSAGE_LIMIT, RECENT_ERRORS, SLOTS, Recorder

T0 = 1_000_000.0  # a monotonic time on a bucket boundary


def test_requests_are_counted_per_bucket_and_summed_over_the_minute_and_the_window() -> None:
    recorder = Recorder()
    for second in range(0, 120):  # two requests a second for two minutes, 10 ms and 30 ms
        recorder.observe("web", 0.010, T0 + second)
        recorder.observe("web", 0.030, T0 + second + 0.5)
    traffic = recorder.traffic(T0 + 120)["servers"]["web"]
    assert traffic["window"]["requests"] == 240
    # The minute is the 11 buckets before the current one (55 s) and the time the current one has run (0 s).
    assert traffic["last_minute"]["requests"] == 110
    assert traffic["last_minute"]["rate_per_s"] == pytest.approx(2.0)
    latency = traffic["window"]["latency_ms"]
    assert latency["mean"] == pytest.approx(20.0) and latency["max"] == pytest.approx(30.0)
    assert latency["p50"] == 10.0  # the upper bound of the 5-10 ms bucket
    assert latency["p99"] == 30.0  # the 25-50 ms bucket, capped by the largest time seen
    series = traffic["series"]
    assert len(series["requests"]) == SLOTS and sum(series["requests"]) == 240
    assert series["requests"][-1] == 0  # the bucket now filling has nothing yet
    assert series["latency_ms_mean"][-2] == pytest.approx(20.0) and series["latency_ms_mean"][0] is None


def test_old_buckets_leave_the_window_and_an_empty_ring_is_dropped() -> None:
    recorder = Recorder()
    recorder.observe("web", 0.001, T0)
    recorder.error("web", -32012, 502, "unreachable")  # counted at the real clock, not T0: its own bucket
    assert recorder.traffic(T0 + 1)["servers"]["web"]["window"]["requests"] == 1
    later = T0 + SLOTS * BUCKET_S + 1
    recorder.observe("other", 0.001, later)
    servers = recorder.traffic(later)["servers"]
    assert "web" not in servers or servers["web"]["window"]["requests"] == 0
    # the same slot of the ring, one lap later: emptied, not added to
    recorder.observe("other", 0.002, later + SLOTS * BUCKET_S)
    assert recorder.traffic(later + SLOTS * BUCKET_S)["servers"]["other"]["window"]["requests"] == 1


def test_recent_errors_are_bounded_newest_first_and_trimmed() -> None:
    recorder = Recorder()
    for index in range(RECENT_ERRORS + 10):
        recorder.error("-", -32010, 404, f"unknown server 'x{index}'" + "!" * MESSAGE_LIMIT)
    errors = recorder.errors()
    assert len(errors) == RECENT_ERRORS
    assert errors[0]["message"].startswith(f"unknown server 'x{RECENT_ERRORS + 9}'")
    assert all(len(e["message"]) == MESSAGE_LIMIT for e in errors)
    assert set(errors[0]) == {"time", "server", "status", "code", "message"}


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8", True),  # Chromium
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # Firefox
        ("text/*", True),
        (None, False),
        ("", False),
        ("*/*", False),  # curl, httpx: a tie goes to JSON
        ("application/json", False),
        ("application/json, text/event-stream", False),  # an MCP client
        ("text/html;q=0.5, application/json", False),
        ("text/html;q=0, */*", False),
        ("text/html;q=bogus, application/json;q=0.1", False),
    ],
)
def test_html_only_when_accept_prefers_it(accept: str | None, html: bool) -> None:
    assert wants_html(accept) is html
