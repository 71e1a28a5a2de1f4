"""The CLI and `serve` at the edges: taken ports, foreign addresses, out-of-range options, pasted URLs, tool
names with a typo, flags in help, docs that list what the demo server has, entries whose `${VAR}` is unset.

Every process is real and on 127.0.0.1; 10.255.255.1 is only ever bound (and refused), never sent to.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main

from mcpfleet.cli import app
from mcpfleet.cli.target import gateway_base
from mcpfleet.errors import ListenError, UsageError
from mcpfleet.gateway.serve import bind

from support import ROOT, run_cli, wait_for_port

FOREIGN_ADDRESS = "10.255.255.1"  # TEST-NET-like private address no test machine is expected to have


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line a failed command printed (and nothing else, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- serve ----------------------------------------------------------------------------------------


def test_serve_on_a_port_in_use_is_one_line_and_exit_4() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("serve", "--demo", "--port", str(port))
    assert result.returncode == 4, result.stderr
    assert one_error_line(result) == (
        f"error: cannot listen on 127.0.0.1:{port}: address already in use (choose another --port)"
    )
    assert result.stdout == ""  # no banner for a gateway that never listened


def test_serve_on_an_address_this_machine_lacks_is_one_line_and_exit_4() -> None:
    code = 0
    with socket.socket() as probe:  # only bound, never connected: nothing is sent to that address
        try:
            probe.bind((FOREIGN_ADDRESS, 0))
        except OSError as exc:
            code = exc.errno or 0
    if code != errno.EADDRNOTAVAIL:
        pytest.skip(f"this machine can bind {FOREIGN_ADDRESS}")
    result = run_cli("serve", "--demo", "--host", FOREIGN_ADDRESS, "--port", "8000")
    assert result.returncode == 4, result.stderr
    assert one_error_line(result) == (
        f"error: cannot listen on {FOREIGN_ADDRESS}:8000: not an address of this machine (choose another --host)"
    )
    assert result.stdout == ""


def test_serve_refuses_a_short_session_key_in_the_environment_before_its_banner() -> None:
    """`$MCPFLEET_SESSION_KEYS` follows the rule `gateway.session_keys` does: each at least 32 bytes."""
    result = run_cli("serve", "--demo", "--port", "0", env={"MCPFLEET_SESSION_KEYS": "tiny,alsotiny"})
    assert result.returncode == 2, result.stderr
    assert one_error_line(result).startswith(
        "error: $MCPFLEET_SESSION_KEYS: key 1 of 2: a session key is at least 32 bytes of random material, and"
        " this one is 4"
    )
    assert result.stdout == ""


def test_two_gateways_bound_to_one_port_the_second_to_listen_is_refused() -> None:
    """SO_REUSEADDR lets two sockets bind one port while neither listens (the banner is printed between
    bind and listen); the second `listen()` is the one-line error, not a traceback."""
    first = bind("127.0.0.1", 0)
    second = bind("127.0.0.1", first.port)
    try:
        first.listen()
        with pytest.raises(ListenError, match=rf"^cannot listen on 127\.0\.0\.1:{first.port}: address already in use"):
            second.listen()
    finally:
        first.close()
        second.close()


HELP = " (see 'mcpfleet serve --help')"  # what the parser's own errors end with


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "error: Invalid value for '--port': Input should be less than or equal to 65535" + HELP),
        (["--port", "-1"], "error: Invalid value for '--port': Input should be greater than or equal to 0" + HELP),
        (["--port", "http"], "error: Invalid value for '--port': Input should be a valid integer"),
        (["--host", ""], "error: --host is empty: give an address, e.g. 127.0.0.1, or 0.0.0.0 for every interface"),
        (["--tls-certfile", "cert.pem"], "error: give both --tls-certfile and --tls-keyfile, or neither"),
        (
            ["--tls-certfile", "no.pem", "--tls-keyfile", "no.pem"],
            "error: --tls-certfile no.pem / --tls-keyfile no.pem",
        ),
        (["--demo", "true"], "error: Got unexpected extra argument(s) (true)" + HELP),
    ],
)
def test_serve_options_are_checked_before_anything_starts(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli("serve", "--demo", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result).startswith(message)
    assert result.stdout == ""


@contextlib.contextmanager
def serving(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`mcpfleet serve ARGS` in its own process group, its stdout in a file (stderr beside it, `stderr`);
    stopped when the block ends."""
    with tempfile.TemporaryDirectory() as directory:
        printed = Path(directory) / "stdout"
        with printed.open("wb") as out, (Path(directory) / "stderr").open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "mcpfleet", "serve", *args],
                stdout=out,
                stderr=err,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            yield process, printed
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


def banner(process: subprocess.Popen[bytes], printed: Path, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = printed.read_text().splitlines()
        if any(line.strip().startswith("status:") for line in lines):
            return lines
        assert process.poll() is None, f"serve exited with {process.returncode}: {printed.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"no banner after {timeout} s: {printed.read_text()!r}")


def test_port_0_shows_the_port_the_system_chose_and_pasted_urls_work() -> None:
    with serving("--demo", "--port", "0") as (process, printed):
        lines = banner(process, printed)
        head = re.fullmatch(r"mcpfleet gateway on http://127\.0\.0\.1:(\d+) \(.*, 2 servers\)", lines[0])
        assert head is not None, lines
        port = int(head.group(1))
        assert port != 0
        base = f"http://127.0.0.1:{port}"
        assert lines[1:] == [f"  {base}/demo/mcp", f"  {base}/demo-http/mcp", f"  status: {base}/servers"]
        wait_for_port(port, timeout=60)

        # A server's URL, as the banner prints it, is accepted as --gateway: its base is used.
        echoed = run_cli("call", "demo", "echo", "--arg", "text=hi", "--gateway", f"{base}/demo/mcp")
        assert (echoed.returncode, echoed.stdout.strip()) == (0, "hi"), echoed.stderr
        listed = run_cli("servers", "--json", "--gateway", f"{base}/servers")
        assert [s["id"] for s in json.loads(listed.stdout)] == ["demo", "demo-http"], listed.stderr

        # Through the gateway too, a misspelt tool is exit 2 with the close names.
        typo = run_cli("call", "demo", "eho", "--gateway", base)
        assert typo.returncode == 2, typo.stderr
        assert one_error_line(typo).startswith("error: unknown tool 'eho' on server 'demo' (did you mean 'echo'?)")


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/time/mcp", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/time/mcp/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/time/sse", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/time/ws", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/time/messages/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/servers", "http://127.0.0.1:8000"),
        ("https://tools.example.com/mcpfleet", "https://tools.example.com/mcpfleet"),
        ("https://tools.example.com/mcpfleet/time/mcp", "https://tools.example.com/mcpfleet"),
        ("http://[::1]:8000/time/mcp", "http://[::1]:8000"),
    ],
)
def test_gateway_url_forms(given: str, base: str) -> None:
    assert gateway_base(given) == base


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("127.0.0.1:8000", "with its scheme"),
        ("ftp://127.0.0.1", "give the gateway's base URL"),
        ("http://127.0.0.1:8000/time/mcp?x=1", "without '?' or '#' parts"),
    ],
)
def test_gateway_urls_that_name_no_gateway(given: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        gateway_base(given)


# --- call -----------------------------------------------------------------------------------------


def test_unknown_tool_suggests_close_names_and_exits_2() -> None:
    typo = run_cli("call", "demo", "eho", "--demo")
    assert typo.returncode == 2, typo.stderr
    assert one_error_line(typo) == (
        "error: unknown tool 'eho' on server 'demo' (did you mean 'echo'?); tools: echo, stats, countdown, fail,"
        " sleep, crash, confirm, announce, whoami"
    )
    assert typo.stdout == ""  # the server's own "Unknown tool" result is not printed as if it were output

    # With --arg the tool list is read first anyway: the name is checked before any call.
    checked = run_cli("call", "demo", "countdwn", "--arg", "start=1", "--demo")
    assert checked.returncode == 2
    assert "unknown tool 'countdwn' on server 'demo' (did you mean 'countdown'?)" in checked.stderr

    far = run_cli("call", "demo", "xyzzy", "--demo")
    assert far.returncode == 2 and "did you mean" not in far.stderr and "; tools: echo" in far.stderr

    failing = run_cli("call", "demo", "fail", "--demo")  # a known tool's error result stays exit 1
    assert failing.returncode == 1 and "unknown tool" not in failing.stderr


# --- help -----------------------------------------------------------------------------------------


def contexts() -> Iterator[typer.Context]:
    """A context for every command of the CLI, groups included, to render its help in."""
    root = typer.main.get_command(app)
    pending = [typer.Context(root, info_name="mcpfleet")]
    while pending:
        ctx = pending.pop()
        yield ctx
        group: Any = ctx.command
        for name in group.list_commands(ctx) if hasattr(group, "list_commands") else []:
            pending.append(typer.Context(group.get_command(ctx, name), info_name=name, parent=ctx))


def shown_options(help_text: str) -> dict[str, str | None]:
    """Each option in a help text, with the word shown after it (`--port PORT`), or None for none."""
    shown: dict[str, str | None] = {}
    for line in help_text.splitlines():
        left = re.match(r"^  (-\S.*?)(?: {2,}|$)", line)
        for side in left.group(1).split(" / ") if left else []:  # `--watch / --no-watch`
            parts = re.fullmatch(r"(.*?)(?: ([^-\s]\S*))?", side)
            assert parts is not None
            names, metavar = parts.groups()
            for name in names.split(", "):  # `-r, --registry FILE`: the word is for both names
                shown[name] = metavar
    return shown


def test_help_shows_a_value_exactly_for_the_options_that_take_one() -> None:
    checked = 0
    for ctx in contexts():
        command: Any = ctx.command
        text = command.get_help(ctx)
        shown = shown_options(text)
        for option in command.get_params(ctx):
            if option.param_type_name != "option":
                continue
            for name in [*option.opts, *option.secondary_opts]:
                assert name in shown, f"{ctx.command_path} --help does not show {name}:\n{text}"
                assert (shown[name] is None) == option.is_flag, f"{ctx.command_path} --help: {name} {shown[name]}"
                checked += 1
        assert "<bool>" not in text, f"{ctx.command_path} --help:\n{text}"
    assert checked > 40


def test_a_flag_takes_no_value_and_says_so_in_one_line() -> None:
    result = run_cli("tools", "demo", "--demo", "true")
    assert result.returncode == 2
    assert one_error_line(result) == "error: Got unexpected extra argument(s) (true) (see 'mcpfleet tools --help')"
    shown = run_cli("tools", "--help")
    assert shown.returncode == 0 and re.search(r"^  --demo {2,}Use the built-in demo registry", shown.stdout, re.M)


# --- docs -----------------------------------------------------------------------------------------


def doc_output(page: Path, command: str) -> str:
    """The ```text block that follows the ```sh block holding just `command` on `page`."""
    text = page.read_text()
    found = re.search(rf"```sh\n{re.escape(command)}\n```\n\n```text\n(.*?)```\n", text, re.DOTALL)
    assert found is not None, f"{page.name}: no `{command}` example followed by its output"
    return found.group(1)


@pytest.mark.parametrize("command", ["mcpfleet tools demo --demo", "mcpfleet servers --demo"])
def test_getting_started_shows_what_the_cli_prints(command: str) -> None:
    """The page's tables are the CLI's own output at 100 columns: a tool added to the demo server, or a
    description changed, fails here until the page shows it."""
    printed = run_cli(*command.split()[1:], env={"COLUMNS": "100"})
    assert printed.returncode == 0, printed.stderr
    assert doc_output(ROOT / "docs" / "getting-started.md", command) == printed.stdout


def test_demo_readme_names_every_tool() -> None:
    tools = {t["name"] for t in json.loads(run_cli("tools", "demo", "--demo", "--json").stdout)}
    readme = run_cli("read", "demo", "demo://readme", "--demo").stdout
    named = set(re.findall(r"\b[a-z]+\b", readme.split("try the tools", 1)[1]))
    assert tools <= named, f"the readme does not name {sorted(tools - named)}"


# --- entries whose ${VAR} is unset ---------------------------------------------------------------------


def test_an_entry_with_an_unset_variable_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's example: `search` needs SEARCH_TOKEN, which is unset; `time` works all the same. Nothing is
    ever sent to 10.0.0.11: the entry is refused before any connection."""
    (tmp_path / "mcpfleet.yaml").write_text(
        "servers:\n"
        "  time: {command: [mcp-server-time]}\n"
        '  search: {endpoints: [http://10.0.0.11:8080], headers: {Authorization: "Bearer ${SEARCH_TOKEN}"}}\n'
    )
    monkeypatch.delenv("SEARCH_TOKEN", raising=False)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=tmp_path)

    time_now = cli("call", "time", "get_current_time", "--arg", "timezone=Europe/Paris", "--json")
    assert time_now.returncode == 0, time_now.stderr
    assert json.loads(time_now.stdout)["structuredContent"]["timezone"] == "Europe/Paris"

    for args in (["tools", "search"], ["call", "search", "anything"], ["resources", "search"]):
        refused = cli(*args)
        assert refused.returncode == 2, refused.stderr
        line = one_error_line(refused)
        assert line.startswith("error: server 'search' is not usable: ") and "SEARCH_TOKEN" in line, line

    listed = cli("servers", "--json")
    assert listed.returncode == 0 and [s["id"] for s in json.loads(listed.stdout)] == ["time"]
    assert "warning: server 'search' is not usable" in listed.stderr and "SEARCH_TOKEN" in listed.stderr

    validated = cli("registry", "validate", "mcpfleet.yaml")
    assert validated.returncode == 2 and one_error_line(validated).startswith("error: server 'search' is not usable")
    verdict = json.loads(cli("registry", "validate", "mcpfleet.yaml", "--json").stdout)
    assert (
        verdict["valid"] is False and verdict["servers"] == ["time"] and "SEARCH_TOKEN" in verdict["failed"]["search"]
    )

    # Served, the same registry: `search` is left out with a warning, `time` is served.
    with serving("--registry", str(tmp_path / "mcpfleet.yaml"), "--port", "0") as (process, printed):
        lines = banner(process, printed)
        head = re.match(r"mcpfleet gateway on http://127\.0\.0\.1:(\d+) \(.*, 1 server\)$", lines[0])
        assert head is not None, lines
        port = int(head.group(1))
        assert lines[1:] == [f"  http://127.0.0.1:{port}/time/mcp", f"  status: http://127.0.0.1:{port}/servers"]
        warned = (printed.parent / "stderr").read_text()
        assert "warning: server 'search' is not usable: " in warned and "; not served" in warned
        wait_for_port(port, timeout=60)
        gateway = f"http://127.0.0.1:{port}"
        through = cli("call", "time", "get_current_time", "--arg", "timezone=UTC", "--gateway", gateway)
        assert through.returncode == 0 and '"timezone": "UTC"' in through.stdout, through.stderr
        table = cli("servers", "--gateway", gateway)
        assert table.returncode == 0 and "not usable" in table.stdout and "SEARCH_TOKEN" in table.stdout
        refused = cli("tools", "search", "--gateway", gateway)  # the gateway refuses it: exit 3, its reason
        assert refused.returncode == 3 and "SEARCH_TOKEN" in refused.stderr, refused.stderr


def test_an_ipv6_wildcard_bind_still_takes_ipv4_clients() -> None:
    """`--host ::` is dual-stack, as uvicorn binds it: IPv4 clients reach it too."""
    from mcpfleet.gateway.serve import bind

    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    try:
        listener = bind("::", 0)
    except Exception as exc:
        pytest.skip(f"cannot bind [::]: {exc}")
    try:
        [sock] = listener.sockets
        sock.listen()
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        for sock in listener.sockets:
            sock.close()


def test_registry_validate_warns_about_a_bind_serve_would_refuse(tmp_path: Path) -> None:
    """A registry `serve` refuses (non-loopback `gateway.host`, no `gateway.auth`) still validates (exit 0:
    `serve --host` may bind elsewhere), with a warning that says so, so a CI check sees it (section 9.16)."""
    path = tmp_path / "open.yaml"
    path.write_text("servers: {}\ngateway: {host: 0.0.0.0}\n")
    done = run_cli("registry", "validate", str(path))
    assert done.returncode == 0, done.stderr
    assert f"{path}: valid, 0 servers" in done.stdout
    assert (
        f"warning: {path}: gateway.host: '0.0.0.0' is not loopback and gateway.auth has no credentials: serve"
        " refuses to start there (exit 2); configure gateway.auth.api_keys or gateway.auth.jwt, or set"
        " gateway.auth.anonymous: true to serve every caller on purpose (docs/security.md)"
    ) in done.stderr.replace("\n", " ")
