"""Sealed session ids: round trip, tampering, rotation, expiry, and the session table on top."""

from __future__ import annotations

import base64

import pytest

from mcpfleet.errors import GatewayError, UsageError
from mcpfleet.gateway.sealing import Sealer, environment_keys
from mcpfleet.gateway.session import HttpSession, SessionTable


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_round_trip_and_opaque() -> None:
    sealer = Sealer(["k1"])
    token = sealer.seal({"s": "web", "r": "http://10.0.0.1:8080", "u": "abc"})
    assert "web" not in token and "abc" not in token and "10.0.0.1" not in token
    record = sealer.open(token)
    assert record is not None and record["u"] == "abc" and record["r"] == "http://10.0.0.1:8080"
    assert sealer.seal({"u": "abc"}) != sealer.seal({"u": "abc"})  # a fresh nonce every time


def test_tampered_truncated_foreign_and_garbage_ids_open_to_nothing() -> None:
    sealer = Sealer(["k1"])
    token = sealer.seal({"s": "web", "u": "abc"})
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for index in (0, 3, 10, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[index] ^= 1
        assert sealer.open(base64.urlsafe_b64encode(bytes(flipped)).decode()) is None
    assert sealer.open(token[:-4]) is None
    assert Sealer(["another key"]).open(token) is None
    for garbage in ("", "not-a-session", "%%%", "A" * 500):
        assert sealer.open(garbage) is None


def test_rotation_newest_seals_all_open() -> None:
    old = Sealer(["old"])
    rotated = Sealer(["new", "old"])
    earlier = old.seal({"u": "1"})
    assert rotated.open(earlier) is not None  # ids sealed before the rotation still work
    later = rotated.seal({"u": "2"})
    assert old.open(later) is None  # sealed with the new key
    assert Sealer(["new"]).open(later) is not None


def test_expiry() -> None:
    clock = Clock()
    sealer = Sealer(["k"], max_age=60, clock=clock)
    token = sealer.seal({"u": "1"})
    clock.now += 59
    assert sealer.open(token) is not None
    clock.now += 2
    assert sealer.open(token) is None


def test_without_configured_keys_ids_are_local_to_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCPFLEET_SESSION_KEYS", raising=False)
    one, two = Sealer.from_settings((), 60), Sealer.from_settings((), 60)
    assert two.open(one.seal({"u": "1"})) is None
    monkeypatch.setenv("MCPFLEET_SESSION_KEYS", f"{'a' * 32}, {'b' * 40}")
    three, four = Sealer.from_settings((), 60), Sealer.from_settings((), 60)
    assert four.open(three.seal({"u": "1"})) is not None


def test_a_short_key_in_the_environment_is_refused_as_in_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPFLEET_SESSION_KEYS", f"{'a' * 32},tiny")
    with pytest.raises(UsageError, match=r"\$MCPFLEET_SESSION_KEYS: key 2 of 2: .* at least 32 bytes .* this one is 4"):
        Sealer.from_settings((), 60)
    assert environment_keys({"MCPFLEET_SESSION_KEYS": " " + "k" * 32 + " ,"}) == ["k" * 32]
    assert Sealer.from_settings(["c" * 32], 60)  # the registry's keys: the environment is not read


class Held:
    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.last_used = 0.0
        self.upstream_closed = False
        self.idle = True

    async def aclose(self) -> None:
        pass


def test_table_http_sessions_need_no_table_and_local_ones_name_their_instance() -> None:
    key = ["shared"]
    first, second = SessionTable(Sealer(key), "gw-a"), SessionTable(Sealer(key), "gw-b")
    token = first.issue(HttpSession("web", "http://r1", "up-1"))
    found = second.get(token, "web")
    assert isinstance(found, HttpSession) and (found.replica, found.upstream_id) == ("http://r1", "up-1")
    assert second.get(token, "other-server") is None

    held = Held("local")
    local_token = first.issue(held)  # type: ignore[arg-type]
    assert first.get(local_token, "local") is held
    with pytest.raises(GatewayError) as caught:
        second.get(local_token, "local")
    assert caught.value.status == 404 and "gw-a" in caught.value.message and "gw-b" in caught.value.message
    assert first.drop(local_token) is held and first.get(local_token, "local") is None
