"""The Grafana dashboard and the Prometheus alert rules shipped with charts/mcpfleet: every metric their PromQL
names is one a real gateway exposes (scraped from /metrics after traffic that makes every series appear, and
parsed with prometheus_client's parser), every gateway metric is on the dashboard, the rules file has the
shape Prometheus loads, the dashboard is valid JSON with unique panel ids, and the chart renders both (off
by default) from the same files.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx2
import pytest
import yaml
from chart_support import GATEWAY, documents, template
from prometheus_client.parser import text_string_to_metric_families

from support import ACCEPT, INIT, RunningGateway, demo_argv, free_port, rpc_messages, running, until

DASHBOARD = GATEWAY / "dashboards" / "mcpfleet.json"
RULES = GATEWAY / "alerts" / "mcpfleet.rules.yaml"
DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"
# Series Prometheus makes itself, not the gateway.
PROMETHEUS_OWN = {"up"}
FUNCTIONS_AND_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
FUNCTIONS_AND_KEYWORDS |= {"unless", "offset", "inf", "nan"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label matchers, range and
    subquery brackets, grouping clauses, Grafana variables, function calls and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (matcher values, legend text)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables ($server, ${datasource}, $__rate_interval)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in FUNCTIONS_AND_KEYWORDS and not re.fullmatch(r"e\d*", name):
            names.add(name)
    return names


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (server, le) (rate(mcpfleet_request_duration_seconds_bucket{server=~"a|b",'
        ' instance=~"$instance"}[$__rate_interval]))) / on (server) group_left max by (server) (mcpfleet_pool_max)'
        ' > bool 1 or vector(0) unless up{job="x"} offset 5m'
    )
    assert metric_names(expr) == {"mcpfleet_request_duration_seconds_bucket", "mcpfleet_pool_max", "up"}


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard_panels(dashboard["panels"]) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.sub(r"^label_values\((\w+),.*\)$", r"\1", variable["definition"]))
    return exprs


async def initialize(client: httpx2.AsyncClient, url: str) -> str:
    answer = await client.post(url, json=INIT, headers=ACCEPT)
    assert answer.status_code == 200, answer.text
    session: str = answer.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await client.post(url, json=note, headers={**ACCEPT, "mcp-session-id": session})
    return session


async def tool(client: httpx2.AsyncClient, url: str, session: str, name: str, arguments: dict[str, Any]) -> None:
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    answer = await client.post(url, json=body, headers={**ACCEPT, "mcp-session-id": session})
    assert answer.status_code == 200 and rpc_messages(answer), answer.text


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Family name -> sample names, scraped from a real gateway after traffic that makes every series appear:
    an http server with a dead and a live replica (ejection, failures), a stdio pool with a warm process and a
    crash, an error of the gateway's own, a rejected reload."""
    with running(demo_argv(demo_port := free_port(), "a"), demo_port) as live:
        registry = tmp_path_factory.mktemp("monitoring") / "registry.yaml"
        dead = f"http://127.0.0.1:{free_port()}"
        registry.write_text(
            f"servers:\n  web: {{endpoints: ['{dead}', '{live}'], health: {{failures_to_eject: 1}}}}\n"
            f"  local: {{command: {DEMO}, pool: {{min: 1, max: 2}}}}\n"
        )
        port = free_port()
        argv = [sys.executable, "-m", "mcpfleet", "serve", "--registry", str(registry), "--port", str(port)]
        with running(argv, port) as url:
            gw = RunningGateway(url, registry)
            crashes = "mcpfleet_process_exits_unexpected_total"

            async def traffic() -> None:
                async with httpx2.AsyncClient(timeout=60) as client:
                    web = await initialize(client, gw.mcp("web"))
                    await tool(client, gw.mcp("web"), web, "echo", {"text": "m"})
                    local = await initialize(client, gw.mcp("local"))
                    await tool(client, gw.mcp("local"), local, "echo", {"text": "m"})
                    await client.post(f"{gw.url}/nope/mcp", json=INIT, headers=ACCEPT)  # an error of the gateway's
                    await tool(client, gw.mcp("local"), local, "crash", {})

                    async def crashed() -> bool:
                        return crashes in (await client.get(f"{gw.url}/metrics")).text

                    await until(crashed)

            anyio.run(traffic)
            registry.write_text(registry.read_text() + "  broken: {colour: red}\n")
            assert httpx2.post(f"{gw.url}/admin/reload").status_code == 422
            text = httpx2.get(f"{gw.url}/metrics").text
    # (prometheus_client's `_created` timestamps of counters and histograms parse as families of their own)
    parsed = text_string_to_metric_families(text)
    families = {f.name: {s.name for s in f.samples} for f in parsed if not f.name.endswith("_created")}
    return families


@pytest.mark.parametrize(("source", "exprs"), [("dashboard", dashboard_exprs), ("alerts", rule_exprs)])
def test_every_metric_named_exists(source: str, exprs: Callable[[], list[str]], exposed: dict[str, set[str]]) -> None:
    samples = set().union(*exposed.values())
    named = set().union(*(metric_names(expr) for expr in exprs()))
    assert named, f"no metric found in the {source}"
    missing = sorted(name for name in named - PROMETHEUS_OWN if name not in samples)
    assert not missing, f"the {source} names metrics the gateway does not expose: {missing}"


def family(sample: str, exposed: dict[str, set[str]]) -> str:
    """The family a sample name belongs to (`_total` of a counter, `_bucket`/`_sum`/`_count` of a histogram)."""
    return next(name for name, samples in exposed.items() if sample in samples)


def test_every_gateway_metric_is_on_the_dashboard_and_every_family_appeared(exposed: dict[str, set[str]]) -> None:
    expected = {
        "mcpfleet_requests",
        "mcpfleet_request_duration_seconds",
        "mcpfleet_errors",
        "mcpfleet_replica_in_flight",
        "mcpfleet_replica_up",
        "mcpfleet_replica_draining",
        "mcpfleet_replica_requests",
        "mcpfleet_replica_connect_failures",
        "mcpfleet_replica_ejections",
        "mcpfleet_processes",
        "mcpfleet_process_starts",
        "mcpfleet_process_exits_unexpected",
        "mcpfleet_pool_waiting",
        "mcpfleet_pool_warm",
        "mcpfleet_pool_max",
        "mcpfleet_sessions",
        "mcpfleet_reloads",
        "mcpfleet_registry_generation",
        "mcpfleet_ready",
    }
    assert {name for name, samples in exposed.items() if samples} == expected  # the traffic made each appear
    on_dashboard = {family(n, exposed) for e in dashboard_exprs() for n in metric_names(e) - PROMETHEUS_OWN}
    assert on_dashboard == expected


def test_the_alert_rules_have_the_shape_prometheus_loads() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    groups = document["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    alerts = [rule for group in groups for rule in group["rules"]]
    assert len({rule["alert"] for rule in alerts}) == len(alerts)
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
        assert re.fullmatch(r"Mcpfleet[A-Z][A-Za-z0-9]+", rule["alert"])
        expr = rule["expr"]
        assert isinstance(expr, str) and expr.strip(), rule["alert"]
        for opening, closing in ("()", "[]", "{}"):
            assert expr.count(opening) == expr.count(closing), (rule["alert"], opening)
        assert "for" not in rule or DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
    # What the operations guide promises is alerted on.
    wanted = {
        "McpfleetGatewayDown",
        "McpfleetGatewayNotReady",
        "McpfleetServerErrorRatioHigh",
        "McpfleetNoHealthyReplica",
        "McpfleetReplicaEjected",
        "McpfleetPoolWaiting",
        "McpfleetPoolSaturated",
        "McpfleetProcessCrashLoop",
        "McpfleetRegistryReloadRejected",
        "McpfleetRequestLatencyHigh",
    }
    assert wanted <= {rule["alert"] for rule in alerts}


def test_the_dashboard_is_valid_with_unique_panel_ids_and_defined_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(dashboard_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance", "server"}
    text = DASHBOARD.read_text()
    used = set(re.findall(r"\$\{?(\w+)\}?", text)) - {"__rate_interval", "__range", "__all"}
    assert used <= variables, used - variables
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # No two panels overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, panel["title"]
        cells |= area


@pytest.mark.usefixtures("helm_available")
def test_the_chart_ships_both_only_when_asked() -> None:
    kinds = {obj["kind"] for obj in documents(template(GATEWAY))}
    assert (
        "PrometheusRule" not in kinds
        and "ServiceMonitor" not in kinds
        and not [obj for obj in documents(template(GATEWAY)) if obj["metadata"]["name"].endswith("-dashboard")]
    )
    rendered = documents(
        template(
            GATEWAY,
            namespace="tools",
            sets=[
                "monitoring.dashboard.enabled=true",
                "monitoring.dashboard.namespace=monitoring",
                "monitoring.prometheusRule.enabled=true",
                "monitoring.prometheusRule.labels.release=kps",
                "monitoring.serviceMonitor.enabled=true",
                "monitoring.serviceMonitor.bearerTokenSecret.name=scrape",
                "monitoring.serviceMonitor.bearerTokenSecret.key=token",
            ],
        )
    )
    dashboard = next(obj for obj in rendered if obj["metadata"]["name"] == "r-mcpfleet-dashboard")
    assert dashboard["kind"] == "ConfigMap" and dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["mcpfleet.json"]) == json.loads(DASHBOARD.read_text())
    rule = next(obj for obj in rendered if obj["kind"] == "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["namespace"] == "tools"
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    monitor = next(obj for obj in rendered if obj["kind"] == "ServiceMonitor")
    assert monitor["metadata"]["name"] == "r-mcpfleet"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["tools"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "scrape", "key": "token"}}
    service = next(obj for obj in rendered if obj["kind"] == "Service" and obj["metadata"]["name"] == "r-mcpfleet")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
