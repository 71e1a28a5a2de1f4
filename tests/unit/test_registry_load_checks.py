"""Checks made at load that the gateway used to make only at serve time, or not at all (trial 2: N9, N10,
N11): `allowed_hosts` / `allowed_origins` entries it could never match, warnings shown with the errors,
a client's `mcpServers` file read as it is, session keys long enough, and an empty `${VAR}` said as such."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpfleet.authority import parse_authority
from mcpfleet.errors import RegistryError
from mcpfleet.registry import normalized, parse_registry

from support import run_cli


def problems(text: str, environ: dict[str, str] | None = None, source: str = "reg.yaml") -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, source, environ=environ or {})
    return [str(p) for p in caught.value.problems]


# --- N9: allowed_hosts and allowed_origins -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("*.example.com", "'*.example.com' is a wildcard name: list each host name"),
        ("https://mcp.example.com", "'https://mcp.example.com' is a URL: write the host name only, mcp.example.com"),
        ("mcp.example.com.", "'mcp.example.com.' is a name with a trailing dot: write mcp.example.com"),
        ("::1", "'::1' is an IPv6 address without brackets: write [::1]"),
        ("h:99999", "'h:99999': the port is not a number from 1 to 65535"),
        ("http://[::1", "'http://[::1' is a URL: write the host name only, mcp.example.com"),
    ],
)
def test_an_allowed_host_the_gateway_could_never_match_is_an_error_at_its_index(entry: str, expected: str) -> None:
    text = f"servers: {{}}\ngateway:\n  allowed_hosts: [ok.example.com, '{entry}']\n"
    (found,) = problems(text)
    assert found.startswith(f"reg.yaml: gateway.allowed_hosts[1]: {expected}"), found


@pytest.mark.parametrize("entry", ["*", "mcp.example.com", "MCP.Example.com", "h:8443", "h:*", "[::1]", "10.0.0.1"])
def test_allowed_hosts_that_match_load(entry: str) -> None:
    parse_registry(f"servers: {{}}\ngateway: {{allowed_hosts: ['{entry}']}}\n", "reg.yaml", environ={})


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("mcp.example.com", "an origin has a scheme: write https://mcp.example.com"),
        ("https://app.example.com/path", "an origin has no path, query or fragment: write https://app.example.com"),
    ],
)
def test_an_allowed_origin_without_scheme_or_with_a_path_is_an_error(entry: str, expected: str) -> None:
    text = f"servers: {{}}\ngateway:\n  allowed_origins: ['{entry}']\n"
    (found,) = problems(text)
    assert found.startswith(f"reg.yaml: gateway.allowed_origins[0]: '{entry}' is not an origin: {expected}"), found


def test_a_url_as_a_host_is_named_a_url_not_a_bad_port() -> None:
    with pytest.raises(ValueError, match="a URL, not host"):
        parse_authority("https://mcp.example.com")


def test_warnings_come_with_the_errors() -> None:
    text = '{"mcpServers": {"a": {"command": "x", "autoApprove": ["t"]}, "b": {"url": "http://[zz]"}}}'
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, "mcp.json", environ={})
    assert caught.value.warnings == ("mcp.json: mcpServers.a: ignored client-only field(s): autoApprove",)


def test_registry_validate_prints_warnings_beside_errors(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text('{"mcpServers": {"a": {"command": "x", "autoApprove": ["t"]}, "b": {"url": "http://[zz]"}}}')
    done = run_cli("registry", "validate", str(path))
    assert done.returncode == 2
    assert "warning: " in done.stderr and "autoApprove" in done.stderr and "mcpServers.b.url" in done.stderr


# --- N10: a client's mcpServers file read as it is --------------------------------------------------------


def test_a_client_files_other_top_level_keys_are_ignored_with_a_note() -> None:
    text = '{"globalShortcut": "Ctrl+Space", "theme": "dark", "mcpServers": {"t": {"command": "x"}}}'
    registry = parse_registry(text, "claude_desktop_config.json", environ={})
    assert list(registry.servers) == ["t"]
    assert registry.warnings == (
        "claude_desktop_config.json: (top level): ignored, the client's own settings: globalShortcut, theme",
    )


def test_a_misspelt_gateway_in_a_client_file_is_still_an_error() -> None:
    found = problems('{"mcpServers": {}, "gatway": {"port": 1}}', source="mcp.json")
    assert found == ["mcp.json: gatway: unknown top-level field (did you mean 'gateway'?)"]


def test_our_own_form_still_refuses_an_unknown_top_level_key() -> None:
    assert problems("globalShortcut: x\nservers: {}\n") == [
        "reg.yaml: globalShortcut: unknown top-level field (allowed: servers, gateway)"
    ]


def test_a_client_id_with_capitals_is_served_lowercase_with_a_note() -> None:
    registry = parse_registry('{"mcpServers": {"Context7": {"command": "x"}}}', "mcp.json", environ={})
    assert list(registry.servers) == ["context7"] and registry.servers["context7"].id == "context7"
    assert registry.warnings == (
        "mcp.json: mcpServers.Context7: served as 'context7': server ids are lowercase (URL paths)",
    )


def test_two_client_ids_that_differ_only_in_case_are_an_error_naming_both() -> None:
    found = problems('{"mcpServers": {"github": {"command": "x"}, "GitHub": {"command": "y"}}}', source="mcp.json")
    assert found == [
        "mcp.json: mcpServers.GitHub: server ids 'github' and 'GitHub' differ only in case, and ids are lowercase"
        " (URL paths): rename one"
    ]


def test_our_own_form_keeps_ids_as_written() -> None:
    (found,) = problems("servers:\n  Context7: {command: [x]}\n")
    assert "server id 'Context7' is not URL-safe" in found and "'context7'" in found


# --- N11: public_url, session keys, an empty variable --------------------------------------------------------


def test_public_url_with_a_password_is_refused_and_never_shown() -> None:
    (found,) = problems("servers: {}\ngateway: {public_url: 'https://user:pw-0123@mcp.example.test'}\n")
    assert "gateway.public_url: 'https://user:***@mcp.example.test'" in found and "pw-0123" not in found


def test_a_short_session_key_is_refused_with_how_to_make_one() -> None:
    long_enough = "k" * 32
    found = problems(f"servers: {{}}\ngateway: {{session_keys: ['{long_enough}', tiny]}}\n")
    assert found == [
        "reg.yaml: gateway.session_keys[1]: a session key is at least 32 bytes of random material, and this one is"
        " 4: make one with `openssl rand -base64 32`"
    ]
    registry = parse_registry(f"servers: {{}}\ngateway: {{session_keys: ['{long_enough}']}}\n", "r", environ={})
    assert normalized(registry)["gateway"]["session_keys"] == ["***"]


def test_an_empty_variable_is_said_to_be_empty() -> None:
    text = 'servers: {}\ngateway:\n  auth: {api_keys: [{name: ci, key: "${CI_KEY}"}]}\n'
    assert problems(text, {"CI_KEY": ""}) == [
        "reg.yaml: gateway.auth.api_keys[0].key: ${CI_KEY} is set to an empty value in the environment: give it the"
        " value"
    ]


# --- a bind beyond this machine with no credentials: warned at load, refused by `serve` (section 9.16) --------

OPEN_BIND = (
    "reg.yaml: gateway.host: '0.0.0.0' is not loopback and gateway.auth has no credentials: serve refuses to"
    " start there (exit 2); configure gateway.auth.api_keys or gateway.auth.jwt, or set gateway.auth.anonymous:"
    " true to serve every caller on purpose (docs/security.md)"
)


def test_a_non_loopback_host_without_credentials_is_warned_about_in_the_registrys_terms() -> None:
    for gateway in ("{host: 0.0.0.0}", "{host: 0.0.0.0, auth: {}}", "{host: 0.0.0.0, auth: {anonymous: false}}"):
        registry = parse_registry(f"servers: {{}}\ngateway: {gateway}\n", "reg.yaml", environ={})
        assert OPEN_BIND in registry.warnings, gateway


@pytest.mark.parametrize(
    "gateway",
    [
        "{host: 0.0.0.0, auth: {api_keys: [{name: ci, key: " + "k" * 32 + "}]}}",
        "{host: 0.0.0.0, auth: {anonymous: true}}",
        "{host: 127.0.0.1}",
        "{host: '::1'}",
        "{host: localhost}",
        "{}",
    ],
)
def test_credentials_anonymous_or_a_loopback_host_bring_no_open_bind_warning(gateway: str) -> None:
    registry = parse_registry(f"servers: {{}}\ngateway: {gateway}\n", "reg.yaml", environ={})
    assert not [warning for warning in registry.warnings if "gateway.host" in warning], registry.warnings


def test_the_load_warns_exactly_when_serve_would_refuse() -> None:
    """One rule (`Auth.open_door`) for both: the warning names the bind `serve` refuses, and no other."""
    from mcpfleet.gateway.policy import open_door

    for host in ("0.0.0.0", "::", "192.0.2.7", "gateway.example", "127.0.0.1", "::1", "localhost", "[::1]"):
        registry = parse_registry(f"servers: {{}}\ngateway: {{host: '{host}'}}\n", "reg.yaml", environ={})
        warned = any(warning.startswith("reg.yaml: gateway.host: ") for warning in registry.warnings)
        assert warned == (open_door(registry.gateway.auth, host) is not None), host
