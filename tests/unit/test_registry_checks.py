"""Checks between fields judged on the values as the models read them, and the URL and scope rules of the
registry's security settings (review of the located-errors change): userinfo in `public_url`, what counts
as loopback, `anonymous` in any spelling, warnings that the `open` routes make false, one report per fault,
passwords masked, RFC 6749 scope-tokens, and the unset-variable advice by kind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mcpfleet.errors import RegistryError
from mcpfleet.registry import parse_registry
from mcpfleet.registry.model import Gateway, Jwt, Registry, secure_url, shown_url

KEY_A = "a-long-random-key-0001"
KEY_B = "b-long-random-key-0002"


def problems(text: str, environ: dict[str, str] | None = None, *, running: bool = False) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, "reg.yaml", environ=environ or {}, running=running)
    return [str(p) for p in caught.value.problems]


def load(text: str, environ: dict[str, str] | None = None, *, running: bool = False) -> Registry:
    return parse_registry(text, "reg.yaml", environ=environ or {}, running=running)


# --- 1. public_url is published: no userinfo ----------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://u:secretpw@gw.example.com/x", "https://u@gw.example.com", "https://:pw@h"])
def test_a_public_url_with_userinfo_is_refused_without_showing_the_password(url: str) -> None:
    (found,) = problems(f"servers: {{}}\ngateway: {{public_url: '{url}'}}\n")
    assert found.startswith("reg.yaml: gateway.public_url: ") and "no user or password" in found
    assert "secretpw" not in found and ":pw@" not in found
    with pytest.raises(ValueError, match="no user or password"):
        Gateway(public_url=url)


# --- 2. loopback is an address, not a name that starts with 127. ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "secure"),
    [
        ("http://127.evil.com/x", False),
        ("http://127.0.0.1.nip.io/x", False),
        ("http://127.0.0.1:9/x", True),
        ("http://127.8.9.10/x", True),
        ("http://[::1]/x", True),
        ("http://[::ffff:127.0.0.1]/x", True),
        ("http://localhost/x", True),
        ("http://localhost.evil.com/x", False),
        ("https://anything.example.com/x", True),
        ("ftp://127.0.0.1/", False),
        ("http://[::1/x", False),  # unparsable: never raises
        ("http:///x", False),
        ("", False),
    ],
)
def test_only_https_or_http_to_a_loopback_address_is_secure(url: str, secure: bool) -> None:
    assert secure_url(url) is secure


def test_an_issuer_on_a_name_that_looks_like_loopback_is_refused() -> None:
    with pytest.raises(ValueError, match="reached over https"):
        Jwt(issuer="http://127.0.0.1.nip.io/realm")


# --- 3. cross-checks judge the values as validated ------------------------------------------------------------


@pytest.mark.parametrize(
    ("anonymous", "environ"), [("'yes'", {}), ('"true"', {}), ("'${A}'", {"A": "true"}), ("on", {})]
)
def test_anonymous_true_in_any_spelling_beside_credentials_is_an_error(anonymous: str, environ: dict[str, str]) -> None:
    text = f"servers: {{}}\ngateway:\n  auth: {{anonymous: {anonymous}, api_keys: [{{name: ci, key: {KEY_A}}}]}}\n"
    assert problems(text, environ) == [
        "reg.yaml: gateway.auth.anonymous: true serves callers without credentials, and api_keys or jwt asks them"
        " for some: keep one or the other"
    ]


def test_anonymous_false_in_any_spelling_beside_credentials_is_accepted() -> None:
    text = f"servers: {{}}\ngateway:\n  auth: {{anonymous: 'no', api_keys: [{{name: ci, key: {KEY_A}}}]}}\n"
    assert load(text).gateway.auth.required


def test_a_cross_check_still_runs_when_another_field_fails() -> None:
    text = f"servers: {{}}\ngateway:\n  port: x\n  auth: {{anonymous: 'yes', api_keys: [{{name: ci, key: {KEY_A}}}]}}\n"
    found = problems(text)
    assert found[0] == "reg.yaml: gateway.port: should be a whole number"
    assert found[1].startswith("reg.yaml: gateway.auth.anonymous: true serves callers without credentials")


# --- 4. anonymous matters on the open routes ------------------------------------------------------------------


def test_anonymous_is_not_warned_about_when_a_route_is_open() -> None:
    auth = f"auth: {{open: [servers], api_keys: [{{name: ci, key: {KEY_A}}}]}}"
    text = f"servers:\n  a: {{command: [x]}}\ngateway:\n  {auth}\n  access:\n  - {{principals: [anonymous]}}\n"
    assert load(text).warnings == ()
    closed = text.replace("open: [servers], ", "")
    (warning,) = load(closed).warnings
    assert "'anonymous' can never match" in warning and "opens no route (auth.open)" in warning


# --- 6. an unset variable's advice, by kind, for a running gateway --------------------------------------------


def test_a_reload_words_an_unset_variable_for_a_running_gateway_in_problems_and_failed_entries() -> None:
    restart = "set it in the gateway's environment and restart it: a reload reads the file, not new variables"
    entry = "servers:\n  a: {command: [x], env: {T: '${TOK}'}}\n"
    assert (
        load(entry, running=True).failed["a"]
        == f"reg.yaml: servers.a.env.T: ${{TOK}} is not set ({restart}, or write $${{TOK}} for a literal)"
    )
    assert "set it in the environment, or" in load(entry).failed["a"]
    (problem,) = problems("gateway: {public_url: '${URL}'}\n" + entry.replace("${TOK}", "t"), running=True)
    assert restart in problem
    # A VS Code input is no variable: no restart brings it.
    vscode = load("servers:\n  a: {command: [x], env: {T: '${input:tok}'}}\n", running=True).failed["a"]
    assert "is a VS Code input" in vscode and "restart" not in vscode


# --- 7. checks.py sits below model.py -------------------------------------------------------------------------


def test_the_checks_import_nothing_of_the_models() -> None:
    import mcpfleet.registry.checks as checks

    tree = ast.parse(Path(checks.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name and name.startswith("mcpfleet")}, imported


# --- 8. one report per fault ----------------------------------------------------------------------------------


def test_two_identical_short_keys_are_each_reported_once() -> None:
    text = "servers: {}\ngateway:\n  auth: {api_keys: [{name: a, key: short}, {name: b, key: short}]}\n"
    assert problems(text) == [
        "reg.yaml: gateway.auth.api_keys[0].key: the key is shorter than 16 characters: make it long and random",
        "reg.yaml: gateway.auth.api_keys[1].key: the key is shorter than 16 characters: make it long and random",
    ]


# --- 9. passwords masked as urlsplit splits the userinfo -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@ss@h/x", "https://u:***@h/x"),
        ("https://u:secret@h:8443/p?q=a@b", "https://u:***@h:8443/p?q=***"),
        ("https://u@h/x", "https://u@h/x"),
        ("https://h/x@y", "https://h/x@y"),
        ("not a url", "not a url"),
    ],
)
def test_shown_url_masks_the_whole_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown


# --- 10. scopes are RFC 6749 scope-tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["a b", 'say"hi', "back\\\\slash", "caf\u00e9"])
def test_a_scope_that_would_break_www_authenticate_is_refused(scope: str) -> None:
    with pytest.raises(ValueError, match="is not an OAuth scope"):
        Jwt(issuer="https://issuer.example.com", required_scopes=(scope,))
    text = "servers: {}\ngateway:\n  access:\n  - principals: [" + repr("scope:" + scope) + "]\n"
    (found,) = problems(text)
    assert found.startswith("reg.yaml: gateway.access[0].principals[0]: ") and "is not an OAuth scope" in found


def test_scope_tokens_of_printable_ascii_are_accepted() -> None:
    jwt = Jwt(issuer="https://issuer.example.com", required_scopes=("mcp:tools", "read/write", "a!#[]~"))
    assert jwt.required_scopes == ("mcp:tools", "read/write", "a!#[]~")
