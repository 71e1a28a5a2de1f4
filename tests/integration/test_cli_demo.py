"""The CLI as a user runs it (a real process), against the demo servers over stdio and HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from support import free_port, run_cli


def test_servers_lists_the_demo_registry() -> None:
    table = run_cli("servers", "--demo")
    assert table.returncode == 0, table.stderr
    assert "demo-http" in table.stdout and "mcpfleet-demo stdio" in table.stdout
    listed = json.loads(run_cli("servers", "--demo", "--json").stdout)
    assert [s["id"] for s in listed] == ["demo", "demo-http"]
    assert listed[1]["type"] == "http"


def test_tools_resources_prompts_over_stdio() -> None:
    tools = json.loads(run_cli("tools", "demo", "--demo", "--json").stdout)
    assert {t["name"] for t in tools} == {
        "echo",
        "stats",
        "countdown",
        "fail",
        "sleep",
        "crash",
        "confirm",
        "announce",
        "whoami",
    }
    assert tools[0]["inputSchema"]["required"] == ["text"]

    resources = json.loads(run_cli("resources", "demo", "--demo", "--json").stdout)
    assert [r["uri"] for r in resources["resources"]] == ["demo://readme"]
    assert [t["uriTemplate"] for t in resources["templates"]] == ["demo://greeting/{name}"]

    read = run_cli("read", "demo", "demo://greeting/ada", "--demo")
    assert (read.returncode, read.stdout.strip()) == (0, "Hello, ada!")

    prompts = run_cli("prompts", "demo", "--demo")
    assert prompts.returncode == 0 and "review" in prompts.stdout and "code*" in prompts.stdout


def test_call_text_structured_progress_and_arguments() -> None:
    echo = run_cli("call", "demo", "echo", "--arg", "text=42", "--demo")
    assert (echo.returncode, echo.stdout.strip()) == (0, "42")  # a string parameter stays a string

    stats = run_cli("call", "demo", "stats", "--args-json", '{"numbers": [1, 2, 6]}', "--demo", "--json")
    assert stats.returncode == 0
    assert json.loads(stats.stdout)["structuredContent"] == {"count": 3, "total": 9.0, "mean": 3.0}

    countdown = run_cli("call", "demo", "countdown", "--arg", "start=3", "--arg", "interval=0", "--demo")
    assert countdown.returncode == 0 and countdown.stdout.strip() == "counted down from 3"
    assert [line for line in countdown.stderr.splitlines() if line.startswith("progress")] == [
        "progress 1/3 2 left",
        "progress 2/3 1 left",
        "progress 3/3 0 left",
    ]


def test_error_results_and_rejected_arguments_exit_1() -> None:
    fail = run_cli("call", "demo", "fail", "--arg", "message=disk on fire", "--demo")
    assert fail.returncode == 1 and "disk on fire" in fail.stdout
    rejected = run_cli("call", "demo", "stats", "--args-json", '{"numbers": "many"}', "--demo")
    assert rejected.returncode == 1 and "numbers" in rejected.stdout
    unknown = run_cli("call", "demo", "no-such-tool", "--demo")  # not an error result: a name to correct
    assert unknown.returncode == 2 and "unknown tool 'no-such-tool' on server 'demo'" in unknown.stderr


def test_http_replicas_and_stdio_fallback(demo_http: Callable[[str], str], tmp_path: Path) -> None:
    a = demo_http("a")
    registry = tmp_path / "mcpfleet.yaml"
    registry.write_text(
        "servers:\n"
        f"  web: {{endpoints: ['{a}'], command: [mcpfleet-demo, stdio, --replica, local]}}\n"
        f"  down: {{endpoint: 'http://127.0.0.1:{free_port()}', command: [mcpfleet-demo, stdio, --replica, local]}}\n"
    )
    web = run_cli("call", "web", "whoami", "--json", cwd=tmp_path)  # ./mcpfleet.yaml is the default registry
    assert json.loads(web.stdout)["structuredContent"]["replica"] == "a"
    down = run_cli("call", "down", "whoami", "--json", "--registry", str(registry))
    assert json.loads(down.stdout)["structuredContent"] == {
        **json.loads(down.stdout)["structuredContent"],
        "replica": "local",
        "transport": "stdio",
    }


def test_registry_from_environment_variable(tmp_path: Path) -> None:
    registry = tmp_path / "elsewhere.json"
    registry.write_text('{"mcpServers": {"d": {"command": "mcpfleet-demo", "args": ["stdio"]}}}')
    result = run_cli("call", "d", "echo", "--arg", "text=hi", env={"MCPFLEET_REGISTRY": str(registry)}, cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, "hi")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tools", "nope", "--demo"], "unknown server 'nope' (known servers: demo, demo-http)"),
        (["call", "demo", "echo", "--args-json", "{bad", "--demo"], "--args-json is not valid JSON"),
        (["call", "demo", "echo", "--args-json", "[1]", "--demo"], "must be a JSON object"),
        (["call", "demo", "echo", "--arg", "novalue", "--demo"], "write key=value"),
        (["tools", "demo", "--demo", "--gateway", "http://127.0.0.1:1"], "give only one of --demo, --gateway"),
        (["tools", "demo", "--gateway", "ftp://x"], "give the gateway's base URL"),
        (["tools", "demo"], "no registry: give --registry FILE"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(*args, cwd=tmp_path, env={"MCPFLEET_REGISTRY": ""})
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split())


def test_unreachable_gateway_exits_3() -> None:
    result = run_cli("tools", "demo", "--gateway", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 3 and "unreachable" in result.stderr


def test_registry_validate_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers:\n  a: {command: [x], colour: red}\n  b: {endpoint: 'ftp://h'}\n  a2: {type: stdio}\n")
    result = run_cli("registry", "validate", str(bad))
    assert result.returncode == 2
    for expected in (
        "servers.a.colour: unknown field",
        "servers.b.endpoint: malformed URL",
        "servers.a2.command: missing required field",
        "3 problems",
    ):
        assert expected in result.stderr
    as_json = json.loads(run_cli("registry", "validate", str(bad), "--json").stdout)
    assert as_json["valid"] is False and len(as_json["problems"]) == 3
    assert as_json["problems"][0] == {"file": str(bad), "location": "servers.a.colour", "message": "unknown field"}

    good = tmp_path / "good.json"
    good.write_text('{"t": {"type": "stdio", "cmd": ["mcp-server-time"]}}')
    ok = run_cli("registry", "validate", str(good))
    assert ok.returncode == 0 and "valid, 1 server" in ok.stdout


def test_registry_show_masks_secrets(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("servers:\n  g: {endpoint: 'https://h', headers: {Authorization: 'Bearer ${GH_TOKEN}'}}\n")
    shown = run_cli("registry", "show", str(path), env={"GH_TOKEN": "ghp_secret_value"})
    assert shown.returncode == 0 and "Authorization: '***'" in shown.stdout
    as_json = run_cli("registry", "show", str(path), "--json", env={"GH_TOKEN": "ghp_secret_value"})
    assert json.loads(as_json.stdout)["servers"]["g"]["headers"] == {"Authorization": "***"}
    assert "ghp_secret_value" not in shown.stdout + as_json.stdout
    missing = run_cli("registry", "show", str(path))
    assert missing.returncode == 2 and "GH_TOKEN" in missing.stderr and "is not set" in missing.stderr


def test_server_dying_mid_call_exits_3(demo_http: Callable[[str], str], tmp_path: Path) -> None:
    stdio = run_cli("call", "demo", "crash", "--demo")
    assert stdio.returncode == 3, stdio.stderr
    assert "server 'demo'" in stdio.stderr and "Traceback" not in stdio.stderr

    registry = tmp_path / "r.yaml"
    registry.write_text(f"servers:\n  web: {{endpoint: '{demo_http('doomed')}'}}\n")
    http = run_cli("call", "web", "crash", "--registry", str(registry))
    assert http.returncode == 3, http.stderr
    assert "server 'web'" in http.stderr and "Traceback" not in http.stderr


def test_servers_listing_masks_url_passwords(tmp_path: Path) -> None:
    registry = tmp_path / "r.yaml"
    registry.write_text("servers:\n  s: {endpoint: 'https://bob:hunter2@[::1]:8443'}\n")
    listed = run_cli("servers", "--registry", str(registry), "--json")
    assert json.loads(listed.stdout)[0]["target"] == "https://bob:***@[::1]:8443/mcp"
    assert "hunter2" not in run_cli("servers", "--registry", str(registry)).stdout
