"""Session ids that carry their own routing: an authenticated, encrypted record any gateway can read.

An id is `base64url(version | key id | nonce | AES-256-GCM(record))`. The record names the server, the
replica, the upstream's own session id and the issue time (and, for sessions held in one gateway
process, that process's instance id). Gateways that share a key serve each other's sessions with no
shared store. Keys come from configuration (`gateway.session_keys`) or `MCPFLEET_SESSION_KEYS`, newest
first: the newest seals, all of them open (rotation). Each configured secret is stretched into an AES key
with HKDF once, at start-up. A forged, tampered, truncated or expired id opens to nothing, and the
gateway answers 404.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mcpfleet.errors import UsageError
from mcpfleet.registry.model import session_key_problem

VERSION = b"\x01"
NONCE_SIZE = 12
KEY_ID_SIZE = 4
ASSOCIATED = b"mcpfleet session id v1"
KEYS_ENV = "MCPFLEET_SESSION_KEYS"


class Sealer:
    def __init__(
        self, secrets: Sequence[str | bytes], *, max_age: float = 86400.0, clock: Callable[[], float] = time.time
    ) -> None:
        if not secrets:
            secrets = [os.urandom(32)]  # this process only: ids stay valid until it exits
        self._keys: dict[bytes, AESGCM] = {}
        self._newest = b""
        for index, secret in enumerate(secrets):
            material = secret.encode() if isinstance(secret, str) else secret
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mcpfleet sessions").derive(material)
            key_id = hashlib.sha256(key).digest()[:KEY_ID_SIZE]
            self._keys[key_id] = AESGCM(key)
            if index == 0:
                self._newest = key_id
        self.max_age = max_age
        self._clock = clock

    @classmethod
    def from_settings(cls, configured: Sequence[str], max_age: float) -> Sealer:
        """Keys from `gateway.session_keys` (checked at load), else `$MCPFLEET_SESSION_KEYS`
        (`environment_keys`: UsageError when one is short), else a random key for this process."""
        return cls(list(configured) or environment_keys(), max_age=max_age)

    def seal(self, record: dict[str, Any], *, purpose: bytes = ASSOCIATED) -> str:
        """`purpose` is the associated data: a token sealed for one purpose does not open for another."""
        nonce = os.urandom(NONCE_SIZE)
        plaintext = json.dumps({**record, "t": int(self._clock())}, separators=(",", ":")).encode()
        sealed = self._keys[self._newest].encrypt(nonce, plaintext, purpose)
        return base64.urlsafe_b64encode(VERSION + self._newest + nonce + sealed).rstrip(b"=").decode()

    def open(self, token: str, *, purpose: bytes = ASSOCIATED) -> dict[str, Any] | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) < 1 + KEY_ID_SIZE + NONCE_SIZE + 16 or raw[:1] != VERSION:
            return None
        key = self._keys.get(raw[1 : 1 + KEY_ID_SIZE])
        if key is None:
            return None
        nonce = raw[1 + KEY_ID_SIZE : 1 + KEY_ID_SIZE + NONCE_SIZE]
        try:
            record = json.loads(key.decrypt(nonce, raw[1 + KEY_ID_SIZE + NONCE_SIZE :], purpose))
        except (InvalidTag, ValueError):
            return None
        if not isinstance(record, dict) or self._clock() - record.get("t", 0) > self.max_age:
            return None
        return record


def environment_keys(environ: Mapping[str, str] | None = None) -> list[str]:
    """The comma-separated keys in `$MCPFLEET_SESSION_KEYS`, newest first; UsageError (exit 2) naming the
    variable when one is too short (`session_key_problem`: the rule `gateway.session_keys` follows)."""
    text = (os.environ if environ is None else environ).get(KEYS_ENV, "")
    keys = [key.strip() for key in text.split(",") if key.strip()]
    for index, key in enumerate(keys):
        if (problem := session_key_problem(key)) is not None:
            raise UsageError(f"${KEYS_ENV}: key {index + 1} of {len(keys)}: {problem}")
    return keys
