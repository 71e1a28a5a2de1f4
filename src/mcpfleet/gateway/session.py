"""Gateway-issued session ids and what each one stands for.

The gateway never shows a client an upstream session id: it issues its own, sealed (sealing.py), and
records only successful initializations.

- An `http` session id seals (server, replica, upstream session id): it needs no table, so every gateway
  process that shares the session key can route it, and it lives as long as the upstream keeps the session
  (and at most `gateway.session_max_age`).
- A session the gateway holds itself (a stdio process, a bridged connection) lives in this process's
  table; its id seals (server, this gateway's instance id, the table key). Another gateway process that
  receives it answers 404 naming the instance that holds it, never a hang.

Unknown, ended, expired, forged or tampered ids get 404, so a spec-compliant client initializes again.
So does an id named by another caller than the one who opened it: a session opened by an authenticated
caller seals a digest of its principal (`owner`), and `get` with another owner finds nothing.

A session the gateway holds may be charged to its caller's session slot (`charge`, policy/quotas.py,
`gateway.limits.sessions_per_principal`): the slot goes back when the session leaves the table. An `http`
session is not charged: it is the upstream's (the gateway holds nothing for it and cannot see it end), and
the rate limits bound how fast a caller opens them.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from mcpfleet.errors import GatewayError
from mcpfleet.gateway.sealing import Sealer

log = logging.getLogger("mcpfleet.gateway")

CLOSING_AT_ONCE = 64  # sessions ended together (each may stop a process: timeouts.shutdown per step)


class Session(Protocol):
    """What the table needs of a session. Which upstream serves it is the upstream's to say
    (`Upstream.holds`); a relayed session also names its `RelayUpstream` (its typed `owner`)."""

    last_used: float

    @property
    def server_id(self) -> str: ...

    @property
    def idle(self) -> bool:
        """Nothing in flight and no stream open: ending it loses no message."""
        ...

    @property
    def upstream_closed(self) -> bool:
        """Its upstream closed (a reload's drain ran out): its id gets 404."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class HttpSession:
    """A client session held by an upstream HTTP server: which replica, and the upstream's own id."""

    server_id: str
    replica: str
    upstream_id: str
    last_used: float = field(default_factory=time.monotonic)
    idle: bool = True
    upstream_closed: bool = False  # the replica says when it ends (404), not the gateway

    async def aclose(self) -> None:
        """Nothing to stop locally: the upstream owns the session and expires it itself."""


class SessionTable:
    def __init__(self, sealer: Sealer, instance: str | None = None) -> None:
        self.sealer = sealer
        self.instance = instance or secrets.token_hex(4)
        self._local: dict[str, Session] = {}
        self._keys: dict[int, list[str]] = {}  # id(session) -> its keys: dropping a session is O(1)
        self._charges: dict[int, Callable[[], None]] = {}  # id(session) -> what gives its caller's slot back

    def issue(self, session: Session, owner: str | None = None) -> str:
        """A new id for `session`, bound to `owner` (the opener's principal; None: anyone holding the id)."""
        bound = {"p": _owner_digest(owner)} if owner is not None else {}
        if isinstance(session, HttpSession):
            record = {"s": session.server_id, "r": session.replica, "u": session.upstream_id}
            return self.sealer.seal(record | bound)
        key = secrets.token_urlsafe(12)
        self._local[key] = session
        self._keys.setdefault(id(session), []).append(key)
        return self.sealer.seal({"s": session.server_id, "g": self.instance, "k": key} | bound)

    def get(self, token: str, server_id: str, owner: str | None = None) -> Session | None:
        """The session `token` names for `server_id` and `owner`; None when there is none (404). A session
        held by another gateway instance raises a 404 that says so."""
        record = self.sealer.open(token)
        if record is None or record.get("s") != server_id:
            return None
        if record.get("p") != (_owner_digest(owner) if owner is not None else None):
            return None  # opened by another caller (or anonymously): not this caller's session
        if "u" in record:
            return HttpSession(server_id, str(record.get("r")), str(record["u"]))
        if record.get("g") != self.instance:
            raise GatewayError(
                404,
                -32600,
                f"Session not found here: it is held by gateway instance {record.get('g')} and this "
                f"is {self.instance}; a stdio session must reach the gateway process that started it (or the client"
                " initializes again)",
            )
        session = self._local.get(str(record.get("k")))
        if session is None:
            return None
        if session.upstream_closed:  # its process or server was drained away by a reload
            self.drop_session(session)
            return None
        session.last_used = time.monotonic()
        return session

    def charge(self, token: str, server_id: str, release: Callable[[], None]) -> bool:
        """Tie `release` to the session `token` names (a session slot, policy/quotas.py): called once, when
        the session ends here. False (nothing tied) when `token` names no session of `server_id` held here:
        an `http` session is the upstream's, costs the gateway nothing, and ends where it cannot see it."""
        record = self.sealer.open(token)
        if record is None or record.get("s") != server_id or "u" in record:
            return False
        session = self._local.get(str(record.get("k"))) if record.get("g") == self.instance else None
        if session is None or id(session) in self._charges:
            return False
        self._charges[id(session)] = release
        return True

    def _release(self, session: Session) -> None:
        if (release := self._charges.pop(id(session), None)) is not None:
            release()

    def drop(self, token: str) -> Session | None:
        record = self.sealer.open(token)
        if record is None or "k" not in record or record.get("g") != self.instance:
            return None
        session = self._local.pop(str(record["k"]), None)
        if session is not None:
            keys = self._keys.get(id(session), [])
            keys.remove(str(record["k"]))
            if not keys:
                del self._keys[id(session)]
                self._release(session)
        return session

    def drop_session(self, session: Session) -> None:
        for key in self._keys.pop(id(session), []):
            self._local.pop(key, None)
        self._release(session)

    def idle(self, older_than: float) -> list[Session]:
        cutoff = time.monotonic() - older_than
        return [s for s in self._local.values() if s.last_used < cutoff]

    async def expire(self, idle_after: float) -> list[Session]:
        """End every session unused for `idle_after` seconds that has no stream open and nothing in flight,
        all together (`close_all`); returns them. They are out of the table before the first one ends."""
        expired = [s for s in self.idle(idle_after) if s.idle]
        for session in expired:
            self.drop_session(session)
        await close_all(expired)
        return expired

    def of_server(self, server_id: str) -> list[Session]:
        return [s for s in self._local.values() if s.server_id == server_id]

    def __len__(self) -> int:
        return len(self._local)


def _owner_digest(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


async def close_all(sessions: Iterable[Session], at_once: int = CLOSING_AT_ONCE) -> None:
    """End `sessions` together, at most `at_once` at a time, and return when all have ended. Each may stop a
    process (bounded by its `timeouts.shutdown`), so ending them one after another would take their sum:
    2,000 idle sessions at 0.5 s each is a quarter of an hour. One that fails to end does not stop the rest."""
    limiter = anyio.CapacityLimiter(at_once)

    async def close(session: Session) -> None:
        async with limiter:
            try:
                await session.aclose()
            except Exception:
                log.exception("server %r: a session did not end cleanly", session.server_id)

    async with anyio.create_task_group() as tg:
        for session in sessions:
            tg.start_soon(close, session)
