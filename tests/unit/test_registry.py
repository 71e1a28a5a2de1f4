"""Registry parsing, normalizing and every error path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpfleet.errors import RegistryError, UnknownServerError
from mcpfleet.registry import HttpServer, StdioServer, load_registry, normalized, parse_registry
from mcpfleet.registry.model import DockerServer, KubernetesServer

ENV = {"TOKEN": "tok-123", "HOME": "/home/x"}


def parse(text: str, source: str = "reg.yaml") -> object:
    return parse_registry(text, source, environ=ENV)


def problems(text: str, source: str = "reg.yaml") -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, source, environ=ENV)
    return [str(p) for p in caught.value.problems]


# --- accepted forms -----------------------------------------------------------------------------------


def test_native_form_with_inferred_types() -> None:
    reg = parse_registry("servers:\n  a: {command: [x, --y]}\n  b: {endpoint: 'http://h:1'}\n", "r.yaml", environ={})
    a, b = reg.servers["a"], reg.servers["b"]
    assert isinstance(a, StdioServer) and a.command == ("x", "--y")
    assert isinstance(b, HttpServer) and b.mcp_url(b.endpoints[0]) == "http://h:1/mcp"


def test_flat_form_of_the_requirements_with_cmd() -> None:
    text = (
        '{"gh": {"type": "http", "endpoint": "http://github-server:8080"},'
        ' "fs": {"type": "stdio", "cmd": ["mcp-filesystem-server", "--dir", "/data"]}}'
    )
    reg = parse_registry(text, "r.json", environ={})
    assert isinstance(reg.servers["fs"], StdioServer)
    assert reg.servers["fs"].command == ("mcp-filesystem-server", "--dir", "/data")
    assert isinstance(reg.servers["gh"], HttpServer)


def test_mcpservers_form_command_args_env_and_url() -> None:
    text = """{"mcpServers": {
        "fs": {"command": "npx", "args": ["-y", "pkg"], "env": {"A": "1"}},
        "remote": {"url": "https://mcp.example.com/api/mcp", "headers": {"X-Key": "${TOKEN}"}},
        "off": {"command": "nope", "disabled": true}}}"""
    reg = parse_registry(text, "claude.json", environ=ENV)
    fs, remote = reg.servers["fs"], reg.servers["remote"]
    assert isinstance(fs, StdioServer) and fs.command == ("npx", "-y", "pkg") and fs.env == {"A": "1"}
    assert isinstance(remote, HttpServer)
    assert remote.endpoints[0].url == "https://mcp.example.com" and remote.path == "/api/mcp"
    assert remote.headers == {"X-Key": "tok-123"}
    assert "off" not in reg.servers


def test_vscode_sse_type_and_sse_url_mean_legacy_transport() -> None:
    reg = parse_registry(
        '{"servers": {"a": {"type": "sse", "url": "http://h:1/events"}, "b": {"url": "http://h:2/sse"}}}',
        "mcp.json",
        environ={},
    )
    a, b = reg.servers["a"], reg.servers["b"]
    assert isinstance(a, HttpServer) and a.transport == "sse"
    assert isinstance(b, HttpServer) and b.transport == "sse" and b.sse_url(b.endpoints[0]) == "http://h:2/sse"


def test_replicas_weights_and_explicit_path_keep_prefixes() -> None:
    reg = parse_registry(
        "servers:\n  s:\n    endpoints: ['http://a:1/base', {url: 'http://b:2/base', weight: 3}]\n    path: /rpc\n",
        "r.yaml",
        environ={},
    )
    server = reg.servers["s"]
    assert isinstance(server, HttpServer)
    assert [server.mcp_url(e) for e in server.endpoints] == ["http://a:1/base/rpc", "http://b:2/base/rpc"]
    assert [e.weight for e in server.endpoints] == [1, 3]


def test_docker_and_kubernetes_entries_are_defined() -> None:
    reg = parse_registry(
        "servers:\n  d: {type: docker, image: img, port: 80, replicas: 2}\n"
        "  k: {type: k8s, image: img, port: 8080, namespace: mcp, resources: {cpu: 250m, memory: 128Mi}}\n",
        "r.yaml",
        environ={},
    )
    d, k = reg.servers["d"], reg.servers["k"]
    assert isinstance(d, DockerServer) and d.replicas == 2
    assert isinstance(k, KubernetesServer) and k.type == "kubernetes" and k.resources.cpu == "250m"


def test_snapshot_is_immutable() -> None:
    reg = parse_registry("servers:\n  a: {command: [x]}\n", "r.yaml", environ={})
    with pytest.raises(Exception, match="frozen"):
        reg.servers["a"].description = "changed"  # type: ignore[misc]


def test_unknown_server_names_the_known_ones() -> None:
    reg = parse_registry("servers:\n  a: {command: [x]}\n", "r.yaml", environ={})
    with pytest.raises(UnknownServerError, match=r"'nope'.*known servers: a"):
        reg.server("nope")


def test_an_id_in_other_letter_case_is_suggested_in_lowercase() -> None:
    # A client file's `Time` is served as `time` (with a warning); the id people then type is `Time`.
    reg = parse_registry('{"mcpServers": {"Time": {"command": "x"}}}', "cd.json", environ={})
    with pytest.raises(UnknownServerError) as caught:
        reg.server("Time")
    assert str(caught.value) == "unknown server 'Time' (did you mean 'time'? known servers: time)"


# --- errors: every one located ------------------------------------------------------------------------


def test_all_problems_are_reported_at_once_with_file_server_and_field() -> None:
    found = problems("""
servers:
  extra: {command: [x], colour: red}
  nocmd: {type: stdio}
  badurl: {endpoint: "ftp://x"}
  Bad_Id: {command: [x]}
  noenv: {command: [x, "${NOPE}"]}
gateway: {port: 99999}
""")
    assert len(found) == 6
    joined = "\n".join(found)
    assert "reg.yaml: servers.extra.colour: unknown field" in joined
    assert "reg.yaml: servers.nocmd.command: missing required field" in joined
    assert "reg.yaml: servers.badurl.endpoint: malformed URL 'ftp://x'" in joined
    assert "reg.yaml: servers.Bad_Id: server id 'Bad_Id' is not URL-safe" in joined
    # An unset variable alone would only fail its entry; in an invalid registry it is listed with the rest.
    assert "reg.yaml: servers.noenv.command[1]: ${NOPE} is not set (set it in the environment" in joined
    assert "reg.yaml: gateway.port:" in joined


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("servers:\n  a: {command: [x]}\n  a: {command: [y]}\n", "line 3: duplicate key 'a'"),
        ("servers: [\n", "line 2 column 1: invalid YAML"),
        ("servers:\n  a: {cmd: [x], command: [y]}\n", "give either 'cmd' or 'command'"),
        ("servers:\n  a: {command: []}\n", "'command' is empty"),
        ("servers:\n  a: {args: [x], type: stdio}\n", "'args' is given without a 'command'"),
        ("servers:\n  a: {type: stdio, command: x, args: x}\n", "'args' must be a list of strings"),
        ("servers:\n  a: {type: ftp}\n", "servers.a.type: unknown type 'ftp'"),
        ("servers:\n  a: {description: x}\n", "servers.a: cannot tell how to reach this server"),
        ("servers:\n  a: {endpoint: 'http://h', url: 'http://g'}\n", "give one of 'endpoint', 'url' or 'endpoints'"),
        ("servers:\n  a: {endpoints: []}\n", "'endpoints' is empty"),
        ("servers:\n  a: {endpoint: 'http://'}\n", "it has no host"),
        ("servers:\n  a: {endpoint: 'http://h:99999'}\n", "malformed URL"),
        ("servers:\n  a: {endpoints: ['http://a/x', 'http://b/y']}\n", "different paths"),
        ("servers:\n  a: {endpoint: 'http://h', path: mcp}\n", "servers.a.path: 'mcp' must start with '/'"),
        ("servers:\n  a: {command: [x], pool: {min: 3, max: 2}}\n", "pool.min (3) is greater than pool.max (2)"),
        (
            "servers:\n  a: {command: [x], timeouts: {connect: 0}}\n",
            "servers.a.timeouts.connect: should be greater",
        ),
        ("servers:\n  a: {endpoint: 'http://h', balancer: {strategy: fastest}}\n", "servers.a.balancer.strategy"),
        (
            "servers:\n  a: {command: [x], balancer: {strategy: p2c}}\n",
            "servers.a.balancer: applies only to docker, http and kubernetes entries",
        ),
        ("servers:\n  a: {type: docker, image: i, idle_timeout: 60}\n", "'start' and 'idle_timeout' are for HTTP"),
        ("servers:\n  a: {type: k8s}\n", "exactly one of 'image' or 'chart'"),
        ("servers:\n  a: {type: k8s, image: i, namespace: Bad_NS}\n", "not a valid Kubernetes namespace"),
        ("servers:\n  a: {type: docker, image: i, port: 1, resources: {memory: lots}}\n", "is not a quantity"),
        ("servers:\n  a: {command: [x], id: b}\n", "servers.a.id: unknown field"),
        ("servers:\n  a: {command: [x], disabled: maybe}\n", "servers.a.disabled: must be true or false"),
        ("servers:\n  a: {comand: [x], type: stdio}\n", "did you mean 'command'"),
        ("servers:\n  a: [x]\n", "a server entry must be a mapping"),
        ("servers: {}\nextra: 1\n", "extra: unknown top-level field"),
        ("mcpServers: [1]\n", "mcpServers: must be a mapping"),
        ("- a\n- b\n", "the top level must be a mapping, not a list"),
        ("", "the registry is empty"),
        ("gateway: {hots: x}\n", "gateway.hots: unknown field"),
        ("servers:\n  a: {command: [x, '${1X}']}\n", "malformed reference"),
    ],
)
def test_each_error_is_located_and_explained(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(text)), problems(text)


def test_json_errors_carry_line_and_column() -> None:
    found = problems('{"servers": {"a": }}', "reg.json")
    assert found == ["reg.json: line 1 column 19: invalid JSON: Expecting value"]


def test_json_duplicate_ids_are_rejected() -> None:
    found = problems('{"a": {"cmd": ["x"]}, "a": {"cmd": ["y"]}}', "reg.json")
    assert "duplicate key 'a'" in found[0]


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no such file"):
        load_registry(tmp_path / "absent.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RegistryError, match="cannot read the file"):
        load_registry(binary)


# --- secrets ------------------------------------------------------------------------------------------


def test_secrets_are_masked_in_the_normalized_form() -> None:
    reg = parse_registry(
        """
servers:
  h: {endpoint: 'https://user:pw@h.example.com', headers: {Authorization: 'Bearer ${TOKEN}'}}
  s: {command: [x], env: {GITHUB_TOKEN: '${TOKEN}', MODE: fast}, secret_env: {DB_URL: 'postgres://u:p@db'}}
""",
        "r.yaml",
        environ=ENV,
    )
    form = normalized(reg)
    text = str(form)
    assert "tok-123" not in text and ":pw@" not in text and "u:p@db" not in text
    assert form["servers"]["h"]["headers"] == {"Authorization": "***"}
    assert form["servers"]["h"]["endpoints"][0]["url"] == "https://user:***@h.example.com"
    assert form["servers"]["s"]["env"] == {"GITHUB_TOKEN": "***", "MODE": "fast"}
    assert normalized(reg, mask=False)["servers"]["s"]["env"]["GITHUB_TOKEN"] == "tok-123"


def test_ids_are_bounded_reserved_and_get_a_suggestion() -> None:
    assert any("e.g. 'github-server'" in p for p in problems('{"mcpServers": {"GitHub Server": {"command": "x"}}}'))
    assert any("is not URL-safe" in p for p in problems("servers:\n  " + "a" * 64 + ": {command: [x]}\n"))
    assert any("reserved" in p for p in problems("servers:\n  metrics: {command: [x]}\n"))


def test_client_only_keys_of_mcpservers_files_are_ignored_with_a_warning() -> None:
    reg = parse_registry(
        '{"mcpServers": {"a": {"command": "x", "autoApprove": ["t"], "timeout": 60},'
        ' "b": {"url": "http://h:1/sse", "transportType": "sse"}}}',
        "cline.json",
        environ={},
    )
    assert reg.warnings == ("cline.json: mcpServers.a: ignored client-only field(s): autoApprove, timeout",)
    b = reg.servers["b"]
    assert isinstance(b, HttpServer) and b.transport == "sse"
    # Only in that form: elsewhere the same key is an unknown field.
    assert any("unknown field" in p for p in problems("servers:\n  a: {command: [x], autoApprove: []}\n"))


def test_servers_and_mcpservers_together_are_refused() -> None:
    assert any("not both" in p for p in problems('{"servers": {}, "mcpServers": {}}'))


def test_explicit_transport_wins_over_an_sse_looking_path() -> None:
    reg = parse_registry("servers:\n  a: {url: 'http://h/sse', transport: streamable-http}\n", "r.yaml", environ={})
    a = reg.servers["a"]
    assert isinstance(a, HttpServer) and a.transport == "streamable-http" and a.path == "/sse"


def test_bare_servers_key_is_an_empty_native_registry() -> None:
    assert parse_registry("servers:\n", "r.yaml", environ={}).servers == {}


def test_transport_type_is_only_read_in_mcpservers_files() -> None:
    assert any("unknown field" in p for p in problems("servers:\n  a: {url: 'http://h/x', transportType: sse}\n"))
    reg = parse_registry(
        '{"mcpServers": {"a": {"url": "http://h/x", "type": "http", "transportType": "sse"}}}', "c.json", environ={}
    )
    assert "'transportType' ignored" in reg.warnings[0]


def test_container_paths_and_ports_are_checked() -> None:
    assert any(
        "servers.a.path: 'x' must start with '/'" in p
        for p in problems("servers:\n  a: {type: docker, image: i, port: 1, path: x}\n")
    )
    assert any(
        "network 'none' publishes no port" in p
        for p in problems("servers:\n  a: {type: docker, image: i, network: none, port: 80}\n")
    )


def test_ipv6_url_passwords_keep_their_brackets() -> None:
    from mcpfleet.masking import shown_url

    assert shown_url("http://u:pw@[::1]:8080/x") == "http://u:***@[::1]:8080/x"
    assert shown_url("http://[::1]:8080") == "http://[::1]:8080"


# --- client files ---------------------------------------------------------------------------------------


def test_windsurf_server_url_is_an_endpoint_and_errors_name_it() -> None:
    reg = parse_registry(
        '{"mcpServers": {"w": {"serverUrl": "https://h.example.com/api/mcp", "headers": {"X-Key": "${TOKEN}"}}}}',
        "mcp_config.json",
        environ=ENV,
    )
    w = reg.servers["w"]
    assert isinstance(w, HttpServer) and w.mcp_url(w.endpoints[0]) == "https://h.example.com/api/mcp"
    assert w.headers == {"X-Key": "tok-123"}
    assert problems('{"mcpServers": {"w": {"serverUrl": "ftp://h"}}}', "c.json") == [
        "c.json: mcpServers.w.serverUrl: malformed URL 'ftp://h': the scheme must be http or https"
    ]
    assert any(
        "give one of 'endpoint', 'url' or 'endpoints', not 'url' and 'serverUrl'" in p
        for p in problems('{"mcpServers": {"w": {"url": "http://a", "serverUrl": "http://b"}}}', "c.json")
    )


def test_claude_code_and_cline_types_and_env_prefix() -> None:
    reg = parse_registry(
        """{"mcpServers": {
        "a": {"type": "stdio", "command": "x", "args": ["${env:TOKEN}"], "env": {}},
        "b": {"type": "http", "url": "https://h/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}},
        "c": {"type": "sse", "url": "http://h:1/events"},
        "d": {"type": "streamableHttp", "url": "http://h:2/mcp", "disabled": false, "autoApprove": []}}}""",
        ".mcp.json",
        environ=ENV,
    )
    a, b, c, d = (reg.servers[k] for k in "abcd")
    assert isinstance(a, StdioServer) and a.command == ("x", "tok-123")
    assert isinstance(b, HttpServer) and b.transport == "auto" and b.headers == {"Authorization": "Bearer tok-123"}
    assert isinstance(c, HttpServer) and c.transport == "sse"
    assert isinstance(d, HttpServer) and d.transport == "streamable-http"


def test_vscode_inputs_are_ignored_and_an_entry_that_uses_one_fails_alone() -> None:
    reg = parse_registry(
        """{"inputs": [{"type": "promptString", "id": "key", "password": true}],
        "servers": {"a": {"type": "stdio", "command": "x", "env": {"K": "${input:key}"}},
                    "b": {"type": "http", "url": "http://h/mcp"}}}""",
        ".vscode/mcp.json",
        environ={},
    )
    assert list(reg.servers) == ["b"]
    assert reg.failed == {
        "a": ".vscode/mcp.json: servers.a.env.K: ${input:key} is a VS Code input, which mcpfleet cannot prompt for"
        " (write ${NAME} instead and set NAME in the environment)"
    }
    assert reg.warnings == (
        ".vscode/mcp.json: inputs: ignored: VS Code prompts for these values, mcpfleet reads ${NAME} from its"
        " environment instead",
    )
    # In a client's `mcpServers` file, every other top-level key is the client's: ignored, with a note.
    client = parse_registry('{"mcpServers": {}, "inputs": []}', "mcp.json", environ={})
    assert client.warnings == ("mcp.json: (top level): ignored, the client's own settings: inputs",)


@pytest.mark.parametrize("form", ['{"servers": {"a": %s}}', '{"mcpServers": {"a": %s}}', '{"a": %s}'])
def test_env_file_is_refused_with_what_to_do_instead(form: str) -> None:
    found = problems(form % '{"command": "x", "envFile": "${workspaceFolder}/.env"}', "mcp.json")
    assert len(found) == 1 and "a.envFile: not read: mcpfleet loads no env files" in found[0]
    assert "copy the variables into 'env'" in found[0]


def test_disabled_entries_are_left_out_with_a_note_and_not_checked() -> None:
    reg = parse_registry(
        '{"mcpServers": {"a": {"command": "x"}, "off": {"command": "${UNSET}", "bogus": 1, "disabled": true}}}',
        "cline.json",
        environ={},
    )
    assert list(reg.servers) == ["a"] and reg.failed == {}
    assert reg.warnings == ("cline.json: mcpServers.off: left out: disabled is true",)


def test_cline_transport_type_errors_are_located_at_transport_type() -> None:
    assert problems('{"mcpServers": {"a": {"transportType": "ssee", "url": "http://h"}}}', "c.json") == [
        "c.json: mcpServers.a.transportType: unknown type 'ssee' (did you mean 'sse'?)"
    ]


# --- unknown keys: every level, with a suggestion --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("servers:\n  a: {comand: [x]}\n", "servers.a.comand: unknown field (did you mean 'command'?)"),
        ("servers:\n  a: {cmnd: [x]}\n", "servers.a.cmnd: unknown field (did you mean 'cmd'?)"),
        (
            "servers:\n  a: {endpionts: ['http://h']}\n",
            "servers.a.endpionts: unknown field (did you mean 'endpoints'?)",
        ),
        ("servers:\n  a: {ulr: 'http://h'}\n", "servers.a.ulr: unknown field (did you mean 'url'?)"),
        (
            '{"mcpServers": {"a": {"serverURL": "http://h"}}}',
            "mcpServers.a.serverURL: unknown field (did you mean 'serverUrl'?)",
        ),
        ("servers:\n  a: {comand: [x], type: stdio}\n", "servers.a.comand: unknown field (did you mean 'command'?)"),
        ("servers:\n  a: {command: [x], arg: [y]}\n", "servers.a.arg: unknown field (did you mean 'args'?)"),
        (
            "servers:\n  a: {command: [x], pool: {max_sessions: 2}}\n",
            "servers.a.pool.max_sessions: unknown field (did you mean 'max_sessions_per_process'?)",
        ),
        (
            "servers:\n  a: {command: [x], timeouts: {conect: 2}}\n",
            "servers.a.timeouts.conect: unknown field (did you mean 'connect'?)",
        ),
        (
            "servers:\n  a: {url: 'http://h', health: {activ: true}}\n",
            "servers.a.health.activ: unknown field (did you mean 'active'?)",
        ),
        (
            "servers:\n  a: {url: 'http://h', balancer: {stratgy: p2c}}\n",
            "servers.a.balancer.stratgy: unknown field (did you mean 'strategy'?)",
        ),
        (
            "servers:\n  a: {endpoints: [{ulr: 'http://h'}]}\n",
            "servers.a.endpoints[0].ulr: unknown field (did you mean 'url'?)",
        ),
        (
            "servers:\n  a: {type: docker, image: i, port: 1, resources: {memroy: 1Gi}}\n",
            "servers.a.resources.memroy: unknown field (did you mean 'memory'?)",
        ),
        ("servers:\n  a: {type: k8s, imag: i}\n", "servers.a.imag: unknown field (did you mean 'image'?)"),
        (
            "servers: {}\ngateway: {alowed_hosts: [x]}\n",
            "gateway.alowed_hosts: unknown field (did you mean 'allowed_hosts'?)",
        ),
        ("gateway: {hots: x}\nservers: {}\n", "gateway.hots: unknown field (did you mean 'host'?)"),
        ("server:\n  a: {command: [x]}\n", "server: unknown top-level field (did you mean 'servers'?)"),
        ("servers: {}\nserver: {}\n", "server: unknown top-level field (did you mean 'servers'?)"),
        ("mcp_servers:\n  a: {command: [x]}\n", "mcp_servers: unknown top-level field (did you mean 'mcpServers'?)"),
        ("gatway: {port: 1}\nservers: {}\n", "gatway: unknown top-level field (did you mean 'gateway'?)"),
        ("gatway: {port: 1}\na: {command: [x]}\n", "gatway: unknown top-level field (did you mean 'gateway'?)"),
        (
            "servers:\n  a: {type: stido, command: [x]}\n",
            "servers.a.type: unknown type 'stido' (did you mean 'stdio'?)",
        ),
    ],
)
def test_every_unknown_key_gets_the_closest_accepted_one(text: str, expected: str) -> None:
    source = "r.json" if text.startswith("{") else "r.yaml"
    assert problems(text, source) == [f"{source}: {expected}"]


def test_an_unknown_key_is_reported_before_what_it_causes() -> None:
    # A suggestion that would decide the type: the typo is the only problem.
    assert problems("servers:\n  a: {comand: [x], description: d}\n") == [
        "reg.yaml: servers.a.comand: unknown field (did you mean 'command'?)"
    ]
    # One that would not: the typo first, then the missing type.
    assert problems("servers:\n  a: {descripton: d}\n") == [
        "reg.yaml: servers.a.descripton: unknown field (did you mean 'description'?)",
        "reg.yaml: servers.a: cannot tell how to reach this server: give 'endpoint' (http), 'command' (stdio),"
        " or a 'type'",
    ]
    # Within a known type, the unknown key comes first and other missing fields are still reported.
    assert problems("servers:\n  a: {type: docker, port: 0, imgae: i}\n") == [
        "reg.yaml: servers.a.imgae: unknown field (did you mean 'image'?)",
        "reg.yaml: servers.a.port: should be greater than or equal to 1",
    ]


def test_nothing_close_means_no_suggestion() -> None:
    assert problems("servers:\n  a: {command: [x], colour: red}\n") == ["reg.yaml: servers.a.colour: unknown field"]
    assert problems("servers:\n  a: {command: [x], pool: {zzz: 1}}\n") == [
        "reg.yaml: servers.a.pool.zzz: unknown field"
    ]
    assert problems("servers: {}\nzzz: 1\n") == ["reg.yaml: zzz: unknown top-level field (allowed: servers, gateway)"]


# --- unset variables fail their entry only ------------------------------------------------------------------

README_EXAMPLE = """\
servers:
  time:
    command: [mcp-server-time]              # stdio: spawned on demand
  search:
    endpoints: [http://10.0.0.11:8080, http://10.0.0.12:8080]   # http: /mcp on each replica
    headers: {Authorization: "Bearer ${SEARCH_TOKEN}"}           # ${VAR} from the environment
"""


def test_readme_example_without_its_token_keeps_the_other_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mcpfleet.yaml"
    path.write_text(README_EXAMPLE)
    monkeypatch.delenv("SEARCH_TOKEN", raising=False)
    reg = load_registry(path)
    assert set(reg.servers) == {"time"}
    assert reg.failed == {
        "search": f"{path}: servers.search.headers.Authorization: ${{SEARCH_TOKEN}} is not set"
        " (set it in the environment, or write $${SEARCH_TOKEN} for a literal)"
    }
    shown = normalized(reg)
    assert list(shown["servers"]) == ["time"] and shown["failed"] == dict(reg.failed)

    monkeypatch.setenv("SEARCH_TOKEN", "abc")
    reg = load_registry(path)
    assert set(reg.servers) == {"time", "search"} and reg.failed == {}
    assert "failed" not in normalized(reg)


@pytest.mark.parametrize(
    "entry",
    [
        "{endpoint: 'http://${HOST}:8080'}",
        "{url: '${URL}'}",
        "{endpoints: [{url: '${URL}', weight: 2}]}",
        "{command: ['${BIN}', --flag]}",
        "{cmd: ['${BIN}']}",
        "{command: '${BIN}', args: [x]}",
        "{url: 'http://h', path: '${MCP_PATH}'}",
        "{type: docker, image: i, port: '${PORT}'}",
        "{type: k8s, image: i, namespace: '${NS}', resources: {cpu: '${CPU}'}}",
        "{command: [x], timeouts: {connect: '${CONNECT}'}}",
    ],
)
def test_what_an_empty_value_causes_is_not_another_problem(entry: str) -> None:
    reg = parse_registry(f"servers:\n  a: {entry}\n  ok: {{command: [x]}}\n", "r.yaml", environ={})
    assert list(reg.servers) == ["ok"] and list(reg.failed) == ["a"]
    assert "is not set (set it in the environment" in reg.failed["a"]


def test_every_unset_variable_of_an_entry_is_on_its_one_line() -> None:
    reg = parse_registry("servers:\n  a: {command: [x, '${A}'], env: {B: '${B}'}}\n", "r.yaml", environ={})
    assert reg.failed["a"] == (
        "r.yaml: servers.a.command[1]: ${A} is not set (set it in the environment, or write $${A} for a literal);"
        " servers.a.env.B: ${B} is not set (set it in the environment, or write $${B} for a literal)"
    )
    assert "\n" not in reg.failed["a"]


def test_defaults_and_disabled_entries_never_fail() -> None:
    reg = parse_registry(
        "servers:\n  a: {command: [x, '${A:-1}', '${E:-}']}\n  b: {command: ['${B}'], disabled: true}\n",
        "r.yaml",
        environ={"E": ""},
    )
    assert list(reg.servers) == ["a"] and reg.failed == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # another problem in the same entry
        ("servers:\n  a: {command: [x], colour: red, env: {A: '${A}'}}\n", "servers.a.colour: unknown field"),
        ("servers:\n  a: {cmd: [x], command: [y], env: {A: '${A}'}}\n", "give either 'cmd' or 'command'"),
        ("servers:\n  a: {command: [x, '${A}', '${1X}']}\n", "malformed reference"),
        # in the gateway settings: the gateway cannot leave itself out
        ("gateway: {port: '${PORT}'}\nservers:\n  a: {command: [x]}\n", "gateway.port: ${PORT} is not set"),
        # anywhere else in the registry
        ("servers:\n  a: {command: [x], env: {A: '${A}'}}\n  b: {type: ftp}\n", "servers.b.type: unknown type"),
    ],
)
def test_an_unset_variable_with_another_problem_is_a_registry_error(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found
    assert any("is not set" in p for p in found), found


def test_an_unset_variable_with_another_problem_drops_only_its_consequences() -> None:
    assert problems("servers:\n  a: {endpoint: 'http://${H}', colour: red}\n") == [
        "reg.yaml: servers.a.endpoint: ${H} is not set (set it in the environment, or write $${H} for a literal)",
        "reg.yaml: servers.a.colour: unknown field",
    ]


def test_a_field_of_another_entry_type_says_which_types_take_it() -> None:
    text = (
        "servers:\n"
        "  a: {endpoints: [http://h], type: stdio, command: [x]}\n"
        "  b: {command: [x], balancer: {strategy: p2c}}\n"
    )
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, "r.yaml", environ={})
    messages = {p.location: p.message for p in caught.value.problems}
    assert messages["servers.a.endpoints"] == "applies only to http entries, and this entry is stdio"
    assert (
        messages["servers.b.balancer"] == "applies only to docker, http and kubernetes entries, and this entry is stdio"
    )


def test_a_hash_header_without_consistent_hash_is_accepted_with_a_warning() -> None:
    text = "servers:\n  web: {endpoint: 'http://h:1', balancer: {strategy: round_robin, hash_header: X-Tenant-Id}}\n"
    reg = parse_registry(text, "fleet.yaml", environ={})
    assert reg.warnings == (
        "fleet.yaml: servers.web.balancer.hash_header: ignored: only strategy consistent_hash reads it, and this"
        " entry's strategy is round_robin",
    )
    hashed = text.replace("round_robin", "consistent_hash")
    assert parse_registry(hashed, "fleet.yaml", environ={}).warnings == ()
