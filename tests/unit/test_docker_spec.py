"""`type: docker` entries: their fields, their errors, and the Engine API bodies made from them (no engine)."""

from __future__ import annotations

import pytest

from mcpfleet.deploy.docker import spec
from mcpfleet.errors import RegistryError, UsageError
from mcpfleet.registry import parse_registry
from mcpfleet.registry.model import DockerServer


def entry(text: str) -> DockerServer:
    server = parse_registry(f"servers:\n  d: {text}\n", "r.yaml", environ={"TOKEN": "s3cret"}).servers["d"]
    assert isinstance(server, DockerServer)
    return server


def problems(text: str) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(f"servers:\n  d: {text}\n", "r.yaml", environ={})
    return [str(p) for p in caught.value.problems]


def test_an_entry_with_a_port_is_an_http_server_and_one_without_a_stdio_server() -> None:
    http = entry("{type: docker, image: demo, port: 8080, replicas: 2, start: on_demand, idle_timeout: 60}")
    assert not http.stdio and http.replicas == 2 and not http.starts_on_boot and http.idle_timeout == 60
    stdio = entry("{type: docker, image: mcpfleet/demo:dev, args: [stdio], pool: {min: 1}}")
    assert stdio.stdio and stdio.args == ("stdio",) and stdio.command is None and stdio.pool.min == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{type: docker, image: 'Bad Image'}", "r.yaml: servers.d.image: 'Bad Image' is not an image reference"),
        ("{type: docker, image: i, port: 70000}", "r.yaml: servers.d.port: should be less than or equal"),
        ("{type: docker, image: i, command: []}", "r.yaml: servers.d.command: 'command' is empty"),
        ("{type: docker, image: i, resources: {pids: 0}}", "r.yaml: servers.d.resources.pids: should be"),
        ("{type: docker, image: i, resources: {cpu: lots}}", "servers.d.resources.cpu: 'lots' is not a quantity"),
        ("{type: docker, image: i, volumes: ['data']}", "r.yaml: servers.d.volumes[0]: 'data' is not a volume"),
        ("{type: docker, image: i, volumes: ['/x:rel']}", "'rel' must be an absolute path in the container"),
        ("{type: docker, image: i, volumes: ['a b:/x']}", "r.yaml: servers.d.volumes[0].source: 'a b' is neither"),
        ("{type: docker, image: i, network: 'x y'}", "r.yaml: servers.d.network: 'x y' is not a Docker network name"),
        ("{type: docker, image: i, port: 80, network: host}", "network 'host' publishes no port"),
        ("{type: docker, image: i, start: on_boot}", "'start' and 'idle_timeout' are for HTTP replicas"),
        ("{type: docker, image: i, port: 80, pool: {min: 2}}", "'pool' and 'stateless' are for stdio servers"),
        ("{type: docker, image: i, port: 80, stateless: true}", "'pool' and 'stateless' are for stdio servers"),
        ("{type: docker, image: i, replicas: 2}", "'replicas' is for HTTP replicas"),
        ("{type: docker, image: i, path: /x, host_port: 1}", "'host_port', 'path' are for HTTP replicas"),
        ("{type: docker, image: i, port: 80, resources: {memory: 500m}}", "'500m' is thousandths of a byte"),
        ("{type: docker, image: i, pool: {mode: shared}}", "pool.mode 'shared' needs 'stateless: true'"),
        ("{type: docker, image: i, start: sometimes}", "r.yaml: servers.d.start: should be 'on_boot' or"),
        ("{type: docker, image: i, security: {cap_add: [net_admin]}}", "'net_admin' is not a capability name"),
        ("{type: docker, image: i, securty: {}}", "servers.d.securty: unknown field (did you mean 'security'?)"),
        ("{type: docker, image: i, idle_timeout: 0, port: 1}", "servers.d.idle_timeout: should be greater"),
        ("{type: docker, image: 'http://mcpfleet/demo'}", "is not an image reference"),
        ("{type: docker, image: 'mcpfleet//demo'}", "is not an image reference"),
        ("{type: docker, image: 'mcpfleet/demo:dev@sha256:abc'}", "is not an image reference"),
        ("{type: docker, image: i, port: 1, resources: {memory: 1g}}", "'1g' is not a quantity such as 256Mi"),
        ("{type: docker, image: i, port: 1, resources: {cpu: fast}}", "'fast' is not a quantity such as 500m"),
    ],
)
def test_each_field_is_checked_and_located(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(text)), problems(text)


def test_volumes_are_read_only_unless_marked() -> None:
    server = entry("{type: docker, image: i, volumes: ['/srv:/data', 'cache:/cache:rw', {source: /a, target: /b}]}")
    assert [(v.source, v.target, v.read_only) for v in server.volumes] == [
        ("/srv", "/data", True),
        ("cache", "/cache", False),
        ("/a", "/b", True),
    ]


def test_an_http_replica_publishes_its_port_on_loopback_and_is_confined() -> None:
    server = entry(
        "{type: docker, image: mcpfleet/demo:dev, port: 8080, command: [srv], args: [--x], env: {A: '1'},"
        " secret_env: {TOKEN: '${TOKEN}'}, resources: {cpu: 500m, memory: 256Mi},"
        " security: {read_only: true, user: '10001', cap_add: [CAP_NET_BIND_SERVICE]}}"
    )
    body = spec.container_body(server, project="p", name="p-d-1", role="replica", digest="d1")
    host = body["HostConfig"]
    assert body["Entrypoint"] == ["srv"] and body["Cmd"] == ["--x"] and body["User"] == "10001"
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["NET_BIND_SERVICE"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["ReadonlyRootfs"] and "/tmp" in host["Tmpfs"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 256 * 2**20 and host["PidsLimit"] == 256
    assert host["NetworkMode"] == "bridge" and host["RestartPolicy"] == {"Name": "no"}
    assert body["Labels"] == {
        "app.kubernetes.io/managed-by": "mcpfleet",
        "mcpfleet.project": "p",
        "mcpfleet.server": "d",
        "mcpfleet.role": "replica",
        "mcpfleet.spec": "d1",
        "mcpfleet.port": "8080",
    }
    assert "TOKEN=s3cret" in body["Env"]
    shown = spec.masked(body, server)
    assert "TOKEN=***" in shown["Env"] and "A=1" in shown["Env"]
    assert "s3cret" not in str(shown) and "s3cret" not in str(body["Labels"])


def test_a_stdio_container_keeps_stdin_open_and_has_no_network() -> None:
    server = entry("{type: docker, image: mcpfleet/demo:dev, args: [stdio]}")
    body = spec.container_body(server, project="p", name="p-d-s-1", role="session", digest="d2", owner="h:1")
    assert body["OpenStdin"] and body["StdinOnce"] and body["AttachStdin"] and not body["Tty"]
    assert body["HostConfig"]["NetworkMode"] == "none" and "PortBindings" not in body["HostConfig"]
    assert "Entrypoint" not in body and body["Labels"]["mcpfleet.owner"] == "h:1"


def test_the_spec_digest_changes_with_what_runs_only() -> None:
    digest = spec.spec_digest(entry("{type: docker, image: i, port: 80}"))
    same = entry("{type: docker, image: i, port: 80, replicas: 5, balancer: {strategy: p2c}}")
    assert spec.spec_digest(same) == digest
    for changed in (
        "{type: docker, image: j, port: 80}",
        "{type: docker, image: i, port: 81}",
        "{type: docker, image: i, port: 80, env: {A: b}}",
        "{type: docker, image: i, port: 80, args: [x]}",
        "{type: docker, image: i, port: 80, resources: {memory: 1Gi}}",
    ):
        assert spec.spec_digest(entry(changed)) != digest, changed


def test_the_digest_of_a_secret_is_keyed_by_the_engine() -> None:
    # A new secret value rolls the replicas out; the label confirms nothing about it without the engine's ID.
    one = entry("{type: docker, image: i, port: 80, secret_env: {TOKEN: '${TOKEN}'}}")
    other = entry("{type: docker, image: i, port: 80, secret_env: {TOKEN: other}}")
    assert spec.spec_digest(one, b"engine-a") != spec.spec_digest(other, b"engine-a")
    assert spec.spec_digest(one, b"engine-a") != spec.spec_digest(one, b"engine-b")


@pytest.mark.parametrize(
    ("quantity", "cpus", "memory"),
    [("500m", 500_000_000, None), ("2", 2_000_000_000, 2), ("0.5", 500_000_000, None), ("1Gi", None, 2**30)],
)
def test_quantities(quantity: str, cpus: int | None, memory: int | None) -> None:
    if cpus is not None:
        assert spec.cpu_nanos(quantity) == cpus
    if memory is not None:
        assert spec.memory_bytes(quantity) == memory


def test_published_port_is_read_from_inspect() -> None:
    inspected = {"NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]}}}
    assert spec.published_port(inspected, 8080) == 49153
    assert spec.published_port({"NetworkSettings": {"Ports": {}}}, 8080) is None


def test_project_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(spec.PROJECT_ENV, raising=False)
    assert spec.project_name() == "mcpfleet"
    monkeypatch.setenv(spec.PROJECT_ENV, "team-a")
    assert spec.project_name() == "team-a" and spec.project_name("other") == "other"
    with pytest.raises(UsageError, match="MCPFLEET_PROJECT"):
        spec.project_name("Bad Name")


def test_plain_numbers_are_quantities_and_references_with_registries_and_digests_are_images() -> None:
    server = entry(
        "{type: docker, image: 'localhost:5000/team/fetch:1.4', port: 1, resources: {cpu: 2, memory: 1048576}}"
    )
    assert server.resources.cpu == "2" and server.resources.memory == "1048576"
    assert entry("{type: docker, image: 'ghcr.io/x/y@sha256:" + "0" * 64 + "'}").image.endswith("0" * 64)


def test_an_engine_address_without_a_scheme_is_named() -> None:
    from mcpfleet.deploy.docker.engine import Engine
    from mcpfleet.errors import EngineUnavailableError

    for address in ("/var/run/docker.sock", "ssh://user@host", "npipe:////./pipe/docker_engine"):
        with pytest.raises(EngineUnavailableError, match="is not an engine address mcpfleet can use"):
            Engine(address).docker  # noqa: B018 - the client is made on first use
