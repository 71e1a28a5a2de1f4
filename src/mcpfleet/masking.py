"""Masking: what a display of the registry, an error or a log line may show of a value (pure, no I/O).

Two things are masked, as CI systems mask their secrets (GitHub Actions' `***`):

- **Values that came from the environment** through `${VAR}` in the registry (a token in a stdio
  command's `args`, a key in a URL's query): the loader records every one that is at least `MIN_LENGTH`
  characters long (`Registry.secrets`), and `Masker` replaces each occurrence with `***`, also in the
  forms a URL or a JSON document writes it (percent-encoded, `+` for spaces, JSON-escaped). Values that
  could not be secrets and would blot out every log line are not masked (`maskable`): shorter ones (`1`,
  `on`), numbers of up to `PLAIN_DIGITS` digits (a port, a count: `8080`), and the words YAML reads as
  true, false or null.
- **URL parts that hold credentials whatever their origin**: a userinfo password and every query value
  (`shown_url`: `http://u:***@h/p?api_key=***`).

The gateway installs the registry's values process-wide (`install`, swapped on reload, the previous
snapshot's kept one generation for the processes it still runs); its log filter and the errors built from
an entry (`ServerStartError`) read them through `mask`. Plan Document, section 6.5.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import shlex
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
# Values shorter than this are not masked (decision: Plan Document, section 6.5).
MIN_LENGTH = 4
_PLAIN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "null", "none"})
# Numbers of up to this many digits are not masked: ports, counts, sizes (a 12-digit PIN or account number is).
PLAIN_DIGITS = 6


def maskable(value: str) -> bool:
    """Whether a value from the environment is masked: at least `MIN_LENGTH` characters, and neither a
    short number (`8080`, `0.5`, at most `PLAIN_DIGITS` digits) nor a word YAML reads as a boolean or null
    (`true`, `false`)."""
    plain = value.strip()
    if len(plain) < MIN_LENGTH or plain.lower() in _PLAIN_WORDS:
        return False
    digits = plain.replace(".", "", 1)
    return not (digits.isdigit() and len(digits) <= PLAIN_DIGITS)


def _escaped(value: str) -> set[str]:
    r"""`value` as the messages of this codebase may escape it once: JSON-escaped (`\"`, `\\`, `\u00fc` or
    as is), and Python's `repr` with either quote (an f-string's `!r` of a text that holds it: a command shown
    `'no-such-bin ab"c\\d'`)."""
    forms = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1]}
    forms.add(repr("'\"" + value)[4:-1])  # quoted with ' (a text holding both quotes)
    if '"' not in value:
        forms.add(repr("'" + value)[2:-1])  # quoted with " (a text holding ' and no ")
    return forms


def _spellings(value: str) -> set[str]:
    """`value` as text, a URL, a shell word, a JSON string and a Python repr may carry it, and each escaped
    form escaped once more (a JSON log line of a message that holds a repr or a JSON document)."""
    # A shell word's body (`shlex.quote` without its outer quotes: the quotes, as a repr's, may be the message's).
    shell = shlex.quote(value).removeprefix("'").removesuffix("'")
    once = {value, quote(value, safe=""), quote(value), quote_plus(value), shell} | _escaped(value)
    forms = set(once)
    for form in once:
        forms |= _escaped(form)
    return {form for form in forms if len(form) >= MIN_LENGTH}


class Masker:
    """Replaces each of `values` (and its spellings: URL, shell, JSON, `repr`, and those escaped once more)
    with `***` in a text, whatever the letter case (a message that lower-cases a host name). Its repr never
    shows them. Values that are not `maskable` are left out."""

    __slots__ = ("_folded", "_pattern")

    def __init__(self, values: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for value in values:
            if maskable(value):
                forms |= _spellings(value)
        # Longest first, so a value that contains another is masked whole (the first alternative that matches).
        ordered = sorted(forms, key=len, reverse=True)
        # The cheap test a text passes first (most hold no value): `in` on the lower-cased text.
        self._folded = tuple(dict.fromkeys(form.lower() for form in ordered))
        self._pattern = re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __repr__(self) -> str:
        return f"Masker({len(self._folded)} spellings)"

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        folded = text.lower()
        for form in self._folded:
            if form in folded:
                return self._pattern.sub(MASK, text)
        return text


_installed = Masker()
# Values being validated (`validating`): what a message built meanwhile masks besides the installed ones.
_validating: contextvars.ContextVar[Masker | None] = contextvars.ContextVar("mcpfleet_validating", default=None)


def install(values: Iterable[str]) -> None:
    """Make `values` the ones this process masks (`mask`, the gateway's log filter); replaces the previous."""
    global _installed
    _installed = Masker(values)  # one assignment: a reader sees the old masker or the new one, whole


@contextlib.contextmanager
def validating(values: Iterable[str]) -> Iterator[None]:
    """Within the block (this task and thread), `mask` masks `values` too: the registry's loader validates
    an entry with the values its `${VAR}`s took, so a message built then (a malformed URL) masks a value
    before any structural masking (`shown_url`) cuts it into parts the whole value no longer matches."""
    token = _validating.set(Masker(values))
    try:
        yield
    finally:
        _validating.reset(token)


def mask(text: str) -> str:
    """`text` with the installed values (`install`) and those being validated (`validating`) masked."""
    text = _installed(text)
    extra = _validating.get()
    return extra(text) if extra is not None else text


def masked(document: Any, masker: Callable[[str], str] | None = None) -> Any:
    """`document` (JSON-like: dicts, lists, tuples, strings, numbers) with `masker` applied to every string in
    it, keys included: a listing masked whole, so a field added to it later is masked too. `masker`: a
    `Masker` of given values (`registry show`), else `mask` (the installed ones), in which case the document
    itself is returned, untouched, when nothing is to be masked (`masking`)."""
    if masker is None:
        if not masking() and _validating.get() is None:
            return document
        masker = mask
    return _masked(document, masker)


def _masked(document: Any, masker: Callable[[str], str]) -> Any:
    if isinstance(document, str):
        return masker(document)
    if isinstance(document, dict):
        return {_masked(key, masker): _masked(value, masker) for key, value in document.items()}
    if isinstance(document, list | tuple):
        return [_masked(item, masker) for item in document]
    return document


def masking() -> bool:
    """Whether any value is installed to be masked (none: `mask` returns every text as it is, outside a
    `validating` block)."""
    return bool(_installed)


def shown_url(url: str) -> str:
    """`url` as a message or a listing may show it: the masked values first (`mask`: a `${VAR}` value whole,
    before the URL is cut into parts it may straddle, a password holding `@`, `#` or `/`), then a userinfo
    password and every query value (`http://u:***@h/mcp?api_key=***&v=***`); the fragment is dropped past
    its `#` (`#***`). Never raises: the text is cut by hand, not parsed, so a malformed URL is masked too.
    The userinfo is the netloc up to its last `@` (an unencoded `@` in the password is masked too)."""
    url = mask(url)
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
