"""Gateway-issued session ids and what each one stands for.

The gateway never shows a client an upstream session id: it issues its own, unguessable (256 random bits),
and maps it to the upstream session on a pinned replica (`http`) or to a supervised process (`stdio`).
An id is recorded only after a successful `initialize`. Unknown, ended or expired ids get 404, so a
spec-compliant client initializes again. (Issue 4 replaces the table for `http` sessions with sealed,
self-describing ids that any gateway replica can read.)
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol


class Owner(Protocol):
    retired: bool


class Session(Protocol):
    last_used: float

    @property
    def server_id(self) -> str: ...

    @property
    def owner(self) -> Owner: ...

    async def aclose(self) -> None: ...


@dataclass
class HttpSession:
    """A client session held by an upstream HTTP server: which replica, and the upstream's own id."""

    server_id: str
    replica: str
    upstream_id: str
    owner: Owner
    last_used: float = field(default_factory=time.monotonic)

    async def aclose(self) -> None:
        """Nothing to stop locally: the upstream owns the session and expires it itself."""


class SessionTable:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def issue(self, session: Session) -> str:
        token = secrets.token_urlsafe(32)
        self._sessions[token] = session
        return token

    def get(self, token: str, server_id: str) -> Session | None:
        session = self._sessions.get(token)
        if session is None or session.server_id != server_id:
            return None
        if session.owner.retired:  # its server was changed or removed by a reload
            del self._sessions[token]
            return None
        session.last_used = time.monotonic()
        return session

    def drop(self, token: str) -> Session | None:
        return self._sessions.pop(token, None)

    def drop_session(self, session: Session) -> None:
        for token, held in list(self._sessions.items()):
            if held is session:
                del self._sessions[token]

    def idle(self, older_than: float) -> list[tuple[str, Session]]:
        cutoff = time.monotonic() - older_than
        return [(t, s) for t, s in self._sessions.items() if s.last_used < cutoff]

    def of_server(self, server_id: str) -> list[tuple[str, Session]]:
        return [(t, s) for t, s in self._sessions.items() if s.server_id == server_id]

    def __len__(self) -> int:
        return len(self._sessions)
