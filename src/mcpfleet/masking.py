"""Masking: what a display of the registry, an error or a log line may show of a value (pure, no I/O).

Two things are masked, as CI systems mask their secrets (GitHub Actions' `***`):

- **Values that came from the environment** through `${VAR}` in the registry (a token in a stdio
  command's `args`, a key in a URL's query): the loader records every one that is at least `MIN_LENGTH`
  characters long (`Registry.secrets`), and `Masker` replaces each occurrence with `***`, also in the
  forms a URL or a JSON document writes it (percent-encoded, `+` for spaces, JSON-escaped). Values that
  could not be secrets and would blot out every log line are not masked (`maskable`): shorter ones (`1`,
  `on`), decimal numbers (a port, a count: `8080`), and the words YAML reads as true, false or null.
- **URL parts that hold credentials whatever their origin**: a userinfo password and every query value
  (`shown_url`: `http://u:***@h/p?api_key=***`).

The gateway installs the registry's values process-wide (`install`, swapped on reload, the previous
snapshot's kept one generation for the processes it still runs); its log filter and the errors built from
an entry (`ServerStartError`) read them through `mask`. Plan Document, section 6.5.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
# Values shorter than this are not masked (decision: Plan Document, section 6.5).
MIN_LENGTH = 4
_PLAIN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "null", "none"})


def maskable(value: str) -> bool:
    """Whether a value from the environment is masked: at least `MIN_LENGTH` characters, and neither a
    decimal number (`8080`, `0.5`) nor a word YAML reads as a boolean or null (`true`, `false`)."""
    plain = value.strip()
    if len(plain) < MIN_LENGTH or plain.lower() in _PLAIN_WORDS:
        return False
    return not plain.replace(".", "", 1).isdigit()


def _spellings(value: str) -> set[str]:
    """`value` as text, a URL and a JSON string may carry it."""
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value), json.dumps(value)[1:-1]}
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    return {form for form in forms if len(form) >= MIN_LENGTH}


class Masker:
    """Replaces each of `values` (and its URL and JSON spellings) with `***` in a text. Its repr never shows
    them. Values that are not `maskable` are left out."""

    __slots__ = ("_forms",)

    def __init__(self, values: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for value in values:
            if maskable(value):
                forms |= _spellings(value)
        # Longest first, so a value that contains another is masked whole.
        self._forms = tuple(sorted(forms, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __repr__(self) -> str:
        return f"Masker({len(self._forms)} spellings)"

    def __call__(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text


_lock = threading.Lock()
_installed = Masker()


def install(values: Iterable[str]) -> None:
    """Make `values` the ones this process masks (`mask`, the gateway's log filter); replaces the previous."""
    global _installed
    masker = Masker(values)
    with _lock:
        _installed = masker


def mask(text: str) -> str:
    """`text` with the installed values masked (`install`)."""
    return _installed(text)


def masking() -> bool:
    """Whether any value is installed to be masked (none: `mask` returns every text as it is)."""
    return bool(_installed)


def shown_url(url: str) -> str:
    """`url` as a message or a listing may show it: a userinfo password and every query value masked
    (`http://u:***@h/mcp?api_key=***&v=***`); the fragment is dropped past its `#` (`#***`). Never raises:
    the text is cut by hand, not parsed, so a malformed URL is masked too. The userinfo is the netloc up
    to its last `@` (an unencoded `@` in the password is masked too)."""
    scheme, sep, rest = url.partition("//")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    before, hashed, fragment = tail.partition("#")
    path, question, query = before.partition("?")
    if question and query:
        pairs = [pair.partition("=") for pair in query.split("&")]
        # `name=value` shows its name; a bare `value` (no `=`) may itself be a token.
        query = "&".join(f"{name}={MASK}" if equals else MASK if name else "" for name, equals, _ in pairs)
    return f"{scheme}//{netloc}{path}{question}{query}{hashed}{MASK if fragment else ''}"
