"""A `${VAR}` value in a stdio command's arguments or an endpoint's query is never shown (trial 2, N2, N3).

`mcpfleet serve` runs a registry whose stdio entry takes a token in `args: ["--token=${T}"]` (served: the
process gets the real value) and whose second entry has a missing binary with the token in its arguments (a
502 whose message and WARNING line name the command). A reload of a file with the token in an endpoint's
query is rejected (`last_reload_error`). `/servers`, `/` (the index and the status page's JSON), the 502's
body, `registry show`, `mcpfleet servers`, `mcpfleet tools` (which starts the missing command itself) and
the gateway's whole log are then searched for the value, as
it is, URL-encoded and JSON-escaped.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx2

from support import ACCEPT, INIT, free_port, run_cli, running

# A stdio server that takes (and ignores) the token argument, as many `mcpServers` entries pass API keys.
DEMO = "import runpy, sys; sys.argv[1:] = ['stdio']; runpy.run_module('mcpfleet.demo', run_name='__main__')"


# A stdio server that dies at once, its token argument on stderr (as a server that rejects its key does).
DIE = "import sys; sys.stderr.write('fatal: bad token ' + sys.argv[-1] + chr(10)); sys.exit(3)"


def registry(extra: str = "") -> str:
    return f"""
gateway:
  logging: {{format: json}}
servers:
  gh:
    command: [{sys.executable}, -c, "{DEMO}"]
    args: ["--token=${{T}}"]
    description: "GitHub, with the token ${{T}}"
  nf:
    command: [no-such-mcp-bin, "--token=${{T}}"]
  die:
    command: [{sys.executable}, -c, "{DIE}"]
    args: ["${{T}}"]
{extra}"""


def forms(value: str) -> set[str]:
    """As is, URL-encoded, JSON-escaped once and twice, in a repr, in any letter case (searched lower-cased)."""
    once = {value, quote(value, safe=""), quote(value), quote_plus(value), json.dumps(value)[1:-1], repr(value)[1:-1]}
    twice = {json.dumps(form)[1:-1] for form in once}
    return {form.lower() for form in once | twice}


def test_a_var_value_in_args_or_a_query_is_shown_nowhere(tmp_path: Path) -> None:
    token = f'ghp_{secrets.token_hex(12)}+/=&"c\\d@#ü'  # a quote and a backslash: a repr doubles one only
    env = {**os.environ, "T": token}
    path = tmp_path / "registry.yaml"
    path.write_text(registry())
    output = tmp_path / "gateway.log"
    port = free_port()
    argv = [sys.executable, "-m", "mcpfleet", "serve", "--registry", str(path), "--port", str(port), "--no-watch"]
    shown: dict[str, str] = {}
    with running(argv, port, env=env, output=output) as url, httpx2.Client(timeout=60) as http:
        served = http.post(f"{url}/gh/mcp", json=INIT, headers=ACCEPT)
        assert served.status_code == 200, served.text  # the process got the real value and serves
        missing = http.post(f"{url}/nf/mcp", json=INIT, headers=ACCEPT)
        assert missing.status_code == 502, missing.text
        assert "command 'no-such-mcp-bin --token=***' was not found" in missing.text
        shown["502"] = missing.text
        died = http.post(f"{url}/die/mcp", json=INIT, headers=ACCEPT)
        assert died.status_code == 502 and "fatal: bad token ***" in died.text, died.text
        shown["502 stderr"] = died.text
        listing = http.get(f"{url}/servers")
        targets = {entry["id"]: entry.get("target") for entry in listing.json()["servers"]}
        described = {entry["id"]: entry.get("description") for entry in listing.json()["servers"]}
        assert described["gh"] == "GitHub, with the token ***", described
        assert targets["gh"].endswith("--token=***") and targets["nf"] == "no-such-mcp-bin --token=***", targets
        shown["/servers"] = listing.text
        shown["/"] = http.get(f"{url}/", headers={"accept": "application/json"}).text
        shown["/ html"] = http.get(f"{url}/", headers={"accept": "text/html"}).text
        # The token in an endpoint's query: the reload is refused, and its error shows no value.
        path.write_text(
            registry(
                '  search: {endpoint: "http://127.0.0.1:19101?api_key=${T}"}\n'
                '  basic: {endpoint: "http://user:${T}@127.0.0.1:19101/mcp"}\n'  # the password holds '@', '/', '#'
            )
        )
        rejected = http.post(f"{url}/admin/reload")
        assert rejected.status_code == 422, rejected.text
        shown["reload"] = rejected.text
        after = http.get(f"{url}/servers").json()
        assert "api_key=***" in " ".join(after["last_reload_error"]), after["last_reload_error"]
        assert "'http://user:***@127.0.0.1:19101/mcp': the user or password" in " ".join(after["last_reload_error"])
        shown["/servers after"] = json.dumps(after)
    path.write_text(registry())
    listed = run_cli("servers", "--registry", str(path), env={"T": token})
    assert listed.returncode == 0 and "--token=***" in listed.stdout, listed.stdout + listed.stderr
    assert "GitHub, with the token ***" in listed.stdout, listed.stdout
    shown["mcpfleet servers"] = listed.stdout + listed.stderr
    show = run_cli("registry", "show", str(path), env={"T": token})
    assert show.returncode == 0 and "--token=***" in show.stdout, show.stdout + show.stderr
    shown["registry show"] = show.stdout + show.stderr
    started = run_cli("tools", "nf", "--registry", str(path), env={"T": token})  # the CLI starts it itself
    assert started.returncode == 3 and "command 'no-such-mcp-bin --token=***'" in started.stderr, started.stderr
    shown["mcpfleet tools"] = started.stdout + started.stderr
    crashed = run_cli("tools", "die", "--registry", str(path), env={"T": token})  # its stderr echoes the token
    assert crashed.returncode != 0 and "fatal: bad token ***" in crashed.stderr, crashed.stderr
    shown["mcpfleet tools die"] = crashed.stdout + crashed.stderr
    log = output.read_text(errors="replace")
    assert "no-such-mcp-bin --token=***" in log  # the WARNING line of the 502, masked
    shown["log"] = log
    leaked = {where: form for where, text in shown.items() for form in forms(token) if form in text.lower()}
    assert not leaked, leaked
