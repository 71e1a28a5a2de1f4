"""Values from the environment and URL secrets never shown (trial 2, findings N2, N3, N4, N8): the loader
records what `${VAR}` took from the environment, and every display of an entry, every error built from one,
and every log line masks it; URLs show no password and no query value; a URL error is located at its field
and says what is wrong in plain words."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest

from mcpfleet import masking
from mcpfleet.errors import GatewayError, RegistryError, ServerStartError
from mcpfleet.gateway import logs
from mcpfleet.masking import MASK, Masker, maskable, shown_url
from mcpfleet.registry import normalized, parse_registry
from mcpfleet.registry.render import target

SECRET = "ghp_Super Secret/Value+42&x"
ENVIRON = {"T": SECRET, "CI_KEY": "5f244e1dc824a9b0"}


def forms(value: str) -> list[str]:
    """The spellings of `value` that must never show: as is, URL-encoded, JSON-escaped."""
    return [value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]]


def assert_hidden(text: str, value: str = SECRET) -> None:
    for form in forms(value):
        assert form not in text, f"{form!r} shows in {text!r}"


@pytest.fixture
def installed() -> Iterator[None]:
    masking.install(ENVIRON.values())
    yield
    masking.install(())


# --- the rule: what is masked -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "masked"),
    [("abcd", True), ("abc", False), ("8080", False), ("0.25", False), ("123456", False), ("123456789012", True)],
)
def test_short_values_numbers_and_yaml_words_are_not_masked(value: str, masked: bool) -> None:
    assert maskable(value) is masked


@pytest.mark.parametrize("word", ["true", "False", "null", "none", "yes"])
def test_yaml_words_are_not_masked(word: str) -> None:
    assert not maskable(word)


def test_every_spelling_of_a_value_is_masked() -> None:
    masker = Masker([SECRET])
    for form in forms(SECRET):
        assert masker(f"before {form} after") == f"before {MASK} after"
    assert SECRET not in repr(masker)


# --- N3: URLs show neither a password nor a query value -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:19101?api_key=5f24", "http://127.0.0.1:19101?api_key=***"),
        ("https://u:pw@h/mcp?a=1&b=two&bare", "https://u:***@h/mcp?a=***&b=***&***"),
        ("http://h/p#frag", "http://h/p#***"),
        ("http://h/p", "http://h/p"),
    ],
)
def test_shown_url_masks_query_values_and_passwords(url: str, shown: str) -> None:
    assert shown_url(url) == shown


# --- N2: the registry carries the values; no display of it shows them -----------------------------------

REGISTRY = """
servers:
  gh: {command: [mcpfleet-demo, stdio], args: ["--token=${T}"]}
  web: {endpoint: "http://127.0.0.1:9/mcp", headers: {X-Plain: "${T}"}}
  late: {command: [x, "--token=${T}", "${MISSING}"]}
"""


def test_the_registry_carries_the_values_and_never_shows_them() -> None:
    registry = parse_registry(REGISTRY, "reg.yaml", environ=ENVIRON)
    assert SECRET in registry.secrets
    assert registry.servers["gh"].command[-1] == f"--token={SECRET}"  # the process still gets it
    assert_hidden(repr(registry))
    assert_hidden(str(registry))
    assert "secrets" not in registry.model_dump()
    assert_hidden(json.dumps(normalized(registry)))
    assert_hidden(target(registry.servers["gh"], Masker(registry.secrets)))
    assert "failed" in normalized(registry) and "${MISSING}" in registry.failed["late"]


def test_an_error_about_an_entry_masks_the_value() -> None:
    text = 'servers:\n  h: {endpoint: "http://h/mcp", balancer: {hash_header: "${T}"}}\n'
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, "reg.yaml", environ=ENVIRON)
    shown = str(caught.value)
    assert "servers.h.balancer.hash_header: '***' is not an HTTP header name" in shown
    assert_hidden(shown)


def test_a_start_error_masks_the_installed_values(installed: None) -> None:
    error = ServerStartError("nf", ["no-such-mcp-bin", f"--token={SECRET}"], "was not found")
    assert str(error) == "server 'nf': command 'no-such-mcp-bin --token=***' was not found"


def test_the_log_filter_masks_message_args_and_exception(installed: None) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.MaskFilter())
    handler.setFormatter(logs.TextFormatter())
    logger = logging.getLogger("test.masking")
    logger.addHandler(handler)
    try:
        logger.warning("command %r was not found", f"x --token={SECRET}")
        logger.warning("url http://h/?k=%s", quote(SECRET, safe=""))
        try:
            raise RuntimeError(f"boom {SECRET}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "--token=***" in written and "boom ***" in written
    assert_hidden(written)


# --- N3, N4, N8: URL errors at the field, in plain words, masked -----------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            '{endpoint: "http://[::1/mcp"}',
            "servers.s.endpoint: malformed URL 'http://[::1/mcp': a '[' opens an IPv6 address that no ']' closes",
        ),
        (
            '{endpoints: ["http://ok:80", "http://[zz]:80"]}',
            "servers.s.endpoints[1]: malformed URL 'http://[zz]:80': the host in brackets is not an IPv6 address",
        ),
        (
            '{endpoint: "http://h:99999/mcp"}',
            "servers.s.endpoint: malformed URL 'http://h:99999/mcp': the port is not a number from 1 to 65535",
        ),
        ('{endpoint: "http://exa mple.com/mcp"}', "servers.s.endpoint: malformed URL 'http://exa mple.com/mcp': it"),
        (
            '{endpoint: "http://h:8080/mcp?key=abc"}',
            "servers.s.endpoint: malformed URL 'http://h:8080/mcp?key=***': a query or fragment is not allowed",
        ),
        ('{endpoint: "http://h:8080/mcp#frag"}', "servers.s.endpoint: malformed URL 'http://h:8080/mcp#***': a query"),
        (
            '{endpoint: "http://127.0.0.1:19101?api_key=${CI_KEY}"}',
            "servers.s.endpoint: malformed URL 'http://127.0.0.1:19101?api_key=***': a query or fragment",
        ),
    ],
)
def test_a_malformed_url_is_located_at_its_field_in_plain_words(entry: str, expected: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_registry(f"servers:\n  s: {entry}\n", "reg.yaml", environ=ENVIRON)
    shown = [str(problem) for problem in caught.value.problems]
    assert len(shown) == 1 and shown[0].startswith(f"reg.yaml: {expected}"), shown
    assert not any(word in shown[0] for word in ("Invalid IPv6", "does not appear", "Port out", "=abc", "#frag"))
    assert_hidden(shown[0], ENVIRON["CI_KEY"])


# --- trial 3, findings 1, 2, 6: every spelling, whatever the order of masking ------------------------------

NASTY = [
    'ab"c\\defx',
    'it\'s "both" \\ here',
    "sp ace\ttab\nline",
    "ünï€ode-válue",
    "pct%41%zz-value",
    "p@ss:w/rd#q?x=1",
    "back\\\\slashes\\",
]


def spellings_shown(value: str) -> list[str]:
    """The ways this codebase's messages write a value: as is, in a command's repr, in a JSON document, in a
    JSON log line of a message holding a repr or a JSON document, URL-encoded."""
    command = f"server 'nf': command {'no-such-bin ' + value!r} was not found"
    document = json.dumps({"error": value})
    return [
        f"text {value} end",
        command,
        json.dumps(command),
        document,
        json.dumps(document),
        json.dumps(document, ensure_ascii=False),
        f"{value!r}",
        f"url http://h/?k={quote(value, safe='')}",
        f"url http://h/p/{quote(value)}",
        f"form a={quote_plus(value)}",
        f"upper {value.upper()} lower {value.lower()}",
    ]


@pytest.mark.parametrize("value", NASTY)
def test_a_nasty_value_is_masked_in_every_spelling(value: str) -> None:
    masker = Masker([value])
    for text in spellings_shown(value):
        shown = masker(text)
        assert MASK in shown, (value, text)
        for form in [value, json.dumps(value)[1:-1], repr(value)[1:-1], quote(value, safe="")]:
            assert form not in shown and form.lower() not in shown.lower(), (form, shown)


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("p@ss:w/rd%Secret555", "the user or password holds a reserved character: percent-encode it"),
        ("pa#ssSecretH1", "the user or password holds a reserved character: percent-encode it"),
        ("pa?ssSecretH1", "the user or password holds a reserved character: percent-encode it"),
        ("pa@ssSecretH1", "the user or password holds an '@', which clients and servers split at differently"),
    ],
)
def test_a_password_from_the_environment_is_masked_whole_in_a_url_error(password: str, why: str) -> None:
    text = 'servers:\n  u: {endpoint: "http://user:${T_PWS}@127.0.0.1:20011/mcp"}\n'
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, "reg.yaml", environ={"T_PWS": password})
    shown = [str(problem) for problem in caught.value.problems]
    assert len(shown) == 1, shown
    url = "'http://user:***@127.0.0.1:20011/mcp'"
    assert shown[0].startswith(f"reg.yaml: servers.u.endpoint: malformed URL {url}: {why}"), shown
    for part in [password, *password.replace("@", " ").replace("#", " ").replace("?", " ").split()]:
        if len(part) >= 4:
            assert part not in shown[0], (part, shown[0])


def test_shown_url_masks_an_installed_value_before_cutting_the_url(installed: None) -> None:
    masking.install(["pa#ssSecretH1"])
    assert shown_url("http://user:pa#ssSecretH1@h/mcp") == "http://user:***@h/mcp"


def test_a_hint_shows_no_spelling_or_character_of_a_value() -> None:
    text = (
        "gateway:\n  allowed_hosts: ['https://${T}.example.com']\n"
        "  access:\n    - {principals: ['*'], servers: ['${T}!']}\nservers:\n  time: {command: [x]}\n"
    )
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, "reg.yaml", environ={"T": "ghp_ArgsSecretValue111"})
    shown = "\n".join(str(problem) for problem in caught.value.problems)
    assert "write the host name only, ***.example.com" in shown, shown
    assert "'***!' can match no server: it holds characters no server id has" in shown, shown
    assert "argssecret" not in shown.lower() and "'A'" not in shown, shown


def test_a_gateway_errors_data_is_masked_like_its_message() -> None:
    """A container's logs or a process's stderr ride in an error's `data` to every caller of the server."""
    masking.install(["s3cr3t-token-value"])
    try:
        error = GatewayError(503, -32011, "no replica", data={"logs": "token=s3cr3t-token-value", "n": 1})
        assert error.data == {"logs": "token=***", "n": 1}
    finally:
        masking.install(())


def test_the_log_filter_lets_a_record_whose_args_do_not_fit_reach_its_handler() -> None:
    """`logging` reports such a record itself ("--- Logging error ---"); masking must not raise instead."""
    masking.install(["s3cr3t-token-value"])
    try:
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "bad %d", ("s3cr3t-token-value",), None)
        assert logs.MaskFilter().filter(record) is True
    finally:
        masking.install(())
