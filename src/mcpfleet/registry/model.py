"""The registry's validated, immutable form.

Every entry type is a frozen pydantic model with unknown fields forbidden. The models accept the field
spellings of every registry form the loader recognises (`cmd` for `command`, `url` and Windsurf's
`serverUrl` for `endpoint`, `command` + `args` as the MCP clients write them), so a located error always
names the field the user actually wrote. Checks of one field are field validators, so their errors are
located at that field. Defaults are filled in here, so the normalized form is complete and explicit.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mcpfleet.authority import host_entry_problem, is_loopback_bind, origin_entry_problem
from mcpfleet.masking import Masker, mask, shown_url
from mcpfleet.registry.checks import (
    ANONYMOUS,
    Finding,
    access_findings,
    auth_findings,
    cross_checked,
    digest,
    raise_first,
)
from mcpfleet.registry.fields import empty_message, nullable

SERVER_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# Path segments the gateway serves itself: a server cannot take them as its id.
STATUS_PATHS = frozenset({"healthz", "readyz", "servers", "metrics"})  # /<name>: the gateway's status routes
RESERVED_IDS = STATUS_PATHS | {"admin", ".well-known"}
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110 section 5.6.2)

Seconds = Annotated[float, Field(gt=0)]
Argv = tuple[str, ...]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Keys a file may write besides the fields: other spellings folded by a before-validator, and keys the
    # loader reads itself. Unknown keys get their suggestion from these and the fields.
    other_keys: ClassVar[tuple[str, ...]] = ()
    # What else a file may write in place of the mapping (an endpoint's URL), for "should be a mapping" errors.
    short_form: ClassVar[str | None] = None

    # Fields where null is refused although None is their default: read as "not set", null would silently
    # open access or drop a protection (`jwt:` would serve without authentication).
    never_null: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, value: Any, info: ValidationInfo) -> Any:
        # A key with nothing after it (YAML null): where None is the field's value (`rate_per_principal`,
        # `max_starting`), it means that default; where it is not, or the field is in `never_null`, a group,
        # list or mapping is refused in plain words (Plan Document, section 6.6).
        if value is None and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            message = empty_message(annotation)
            if message is not None and (info.field_name in cls.never_null or not nullable(annotation)):
                raise PydanticCustomError("empty", "{message}", {"message": message})
        return value

    @classmethod
    def cross_checks(cls, data: Mapping[str, Any]) -> list[Finding]:
        """Problems between this mapping's fields (checks.py), located below it. `data`: the values as
        validated, or as written when validation failed (a field that cannot be read is skipped: its own
        error says why). None by default."""
        return []


class Timeouts(_Model):
    """How long to wait, in seconds. Defaults suit slow tools; `idle_stream` stays above the SDK's 15 s ping.

    connect: TCP connect to an HTTP endpoint. startup: a stdio process spawned until its MCP handshake ends.
    first_byte: a request sent until its response starts. idle_stream: silence tolerated on an open stream.
    shutdown: each wait of the stop sequence (after closing stdin, after SIGTERM). drain: how long sessions
    keep being served where new work no longer goes (a replica that left or is not ready, a process of the
    entry's previous command or env, a server removed from the registry); then they end (404).
    """

    connect: Seconds = 10.0
    startup: Seconds = 30.0
    first_byte: Seconds = 300.0
    idle_stream: Seconds = 300.0
    shutdown: Seconds = 2.0
    drain: Seconds = 600.0


class Balancer(_Model):
    strategy: Literal["round_robin", "least_connections", "p2c", "random", "consistent_hash"] = "round_robin"
    # `consistent_hash`: the request's key is this header's value, or the client's address when the header is
    # absent or not set; the same key goes to the same replica while it serves (rendezvous hashing).
    hash_header: str | None = None

    @field_validator("hash_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not HEADER_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an HTTP header name (a token such as X-Tenant-Id: no spaces or separators)"
            )
        return value

    # `pin`: a 2026-07-28 retry carrying `requestState` goes back to the replica that issued it (the SDK seals
    # the state with a per-process key). `any`: spread it like other requests (replicas share the key).
    request_state: Literal["pin", "any"] = "pin"


class Pool(_Model):
    """stdio process pool. `session`: one process per client session; `shared`: many sessions per process."""

    mode: Literal["session", "shared"] = "session"
    min: Annotated[int, Field(ge=0)] = 0
    max: Annotated[int, Field(ge=1)] = 16
    idle_timeout: Seconds = 300.0
    max_lifetime: Seconds | None = None
    max_sessions_per_process: Annotated[int, Field(ge=1)] | None = None
    # A new session waits this long for its process: a free slot, then its turn to start (a burst of cold
    # starts queues: `max_starting` at once). 30 s fits 64 cold starts of a Python SDK server on 2 cores.
    acquire_timeout: Seconds = 30.0
    # Processes in their start-up at once (spawn until the first message); None: one per CPU (measured best).
    max_starting: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Pool:
        if self.min > self.max:
            raise ValueError(f"pool.min ({self.min}) is greater than pool.max ({self.max})")
        return self


class Health(_Model):
    active: bool = False
    interval: Seconds = 30.0
    timeout: Seconds = 5.0
    failures_to_eject: Annotated[int, Field(ge=1)] = 3
    ejection_backoff: Seconds = 5.0
    max_ejection_backoff: Seconds = 300.0


class Resources(_Model):
    """Per-replica CPU and memory, in Kubernetes quantity syntax (`500m`, `256Mi`)."""

    cpu: str | None = None
    memory: str | None = None

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # `cpu: 2` and `memory: 1048576` as YAML writes them: numbers, taken as the quantity they spell.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | None, info: Any) -> str | None:
        if value is not None and not _QUANTITY.match(value):
            examples = "256Mi, 1Gi or 1048576 (bytes)" if info.field_name == "memory" else "500m, 0.5 or 2"
            raise ValueError(f"{value!r} is not a quantity such as {examples}")
        return value


_ENCODE_USERINFO = "percent-encode it ('@' as %40, ':' as %3A, '/' as %2F, '?' as %3F, '#' as %23)"
# What a host name may hold besides letters and digits (any script: an IDN is read as written).
_HOST_PUNCTUATION = frozenset(".-_~%")


def _url_parts(url: str) -> SplitResult:
    """The parts of an http(s) URL with a host; a ValueError says what is wrong in plain words and names the
    URL as `shown_url` shows it (a password and query values masked)."""

    def malformed(why: str) -> ValueError:
        return ValueError(f"malformed URL {shown_url(url)!r}: {why}")

    if any(c.isspace() or not c.isprintable() for c in url):
        raise malformed("it holds a space or a control character (percent-encode one in a path: %20)")
    rest = url.partition("//")[2]
    authority = rest[: min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))]
    if authority.count("@") > 1:  # clients split at the last '@', some servers and proxies at the first
        raise malformed(
            "the user or password holds an '@', which clients and servers split at differently:"
            " percent-encode it as %40"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # urllib's words ("Invalid IPv6 URL", "Port out of range 0-65535") stay here
        text = str(exc)
        if "Port" in text and "@" in rest and not authority.rpartition(":")[2].isdigit():
            # `user:pa#ss@h`, `user:p@ss:w/rd@h`: the password's '#', '/' or '@' ended the host early
            raise malformed(f"the user or password holds a reserved character: {_ENCODE_USERINFO}") from None
        if "Port" in text:
            raise malformed("the port is not a number from 1 to 65535") from None
        if "Invalid IPv6 URL" in text:
            raise malformed("a '[' opens an IPv6 address that no ']' closes (write http://[::1]:8080)") from None
        if "[" in url:
            raise malformed("the host in brackets is not an IPv6 address (write http://[::1]:8080)") from None
        raise malformed("it cannot be read as scheme://host[:port][/path]") from None
    if parts.scheme not in ("http", "https"):
        raise malformed("the scheme must be http or https")
    host = parts.hostname
    if not host:
        raise malformed("it has no host")
    if port == 0:
        raise malformed("the port is not a number from 1 to 65535")
    if "[" not in parts.netloc and not all(c.isalnum() or c in _HOST_PUNCTUATION for c in host):
        raise malformed(f"the host {host!r} is not a host name (letters, digits, '.' and '-') or an IP address")
    return parts


def check_url(url: str) -> str:
    """Accept an absolute http(s) URL with a host and no query or fragment; the message names what is wrong."""
    parts = _url_parts(url)
    if parts.query or parts.fragment or url.rstrip("/").endswith(("?", "#")):
        raise ValueError(
            f"malformed URL {shown_url(url)!r}: a query or fragment is not allowed in an endpoint (a key goes"
            " in 'headers', e.g. Authorization: Bearer ${KEY})"
        )
    return url


class Endpoint(_Model):
    """One replica of an HTTP server: its base URL and its share of new sessions."""

    short_form: ClassVar[str | None] = "a URL"

    url: str
    weight: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _valid_url(self) -> Endpoint:
        check_url(self.url)
        return self


def _merge_command(data: Any) -> Any:
    """Fold the accepted spellings of a command into one argv list under `command`."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "cmd" in data:
        if "command" in data:
            raise ValueError("give either 'cmd' or 'command', not both")
        data["command"] = data.pop("cmd")
    args = data.pop("args", None)
    command = data.get("command")
    if isinstance(command, str):
        command = [command]
    if args is not None:
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError("'args' must be a list of strings")
        if command is None:
            raise ValueError("'args' is given without a 'command'")
        command = [*command, *args] if isinstance(command, list) else command
    if command is not None:
        data["command"] = command
    return data


def _check_argv(argv: Argv | None) -> Argv | None:
    if argv is not None and (not argv or not argv[0].strip()):
        raise ValueError("'command' is empty: give the program to run and its arguments, e.g. [mcp-server-time]")
    return argv


def _check_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{path!r} must start with '/'")
    return path


class _Entry(_Model):
    other_keys: ClassVar[tuple[str, ...]] = ("disabled",)

    id: str
    description: str = ""
    timeouts: Timeouts = Timeouts()
    health: Health = Health()


class _CommandForms(_Model):
    """Entries with a `command`: accept `cmd`, and the clients' `command` + `args`."""

    other_keys: ClassVar[tuple[str, ...]] = ("cmd", "args")

    @model_validator(mode="before")
    @classmethod
    def _command_forms(cls, data: Any) -> Any:
        return _merge_command(data)

    @field_validator("command", check_fields=False)
    @classmethod
    def _argv(cls, argv: Argv | None) -> Argv | None:
        return _check_argv(argv)


class _Spawnable(_CommandForms):
    """Fields of entries the gateway can run as a local stdio child."""

    command: Argv | None = None
    env: Mapping[str, str] = Field(default_factory=dict)
    secret_env: Mapping[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    stateless: bool = False
    pool: Pool = Pool()

    @model_validator(mode="after")
    def _shared_needs_stateless(self) -> _Spawnable:
        if self.pool.mode == "shared" and not self.stateless:
            raise ValueError(
                "pool.mode 'shared' needs 'stateless: true': sessions share a process only when the server keeps"
                " no per-session state"
            )
        return self


class StdioServer(_Spawnable, _Entry):
    type: Literal["stdio"] = "stdio"
    command: Argv

    @property
    def argv(self) -> Argv:
        return self.command


class HttpServer(_Spawnable, _Entry):
    """An MCP server reached over HTTP; with a `command` too, it is spawned over stdio when no endpoint answers."""

    other_keys: ClassVar[tuple[str, ...]] = ("endpoint", "url", "serverUrl")

    type: Literal["http"] = "http"
    endpoints: tuple[Endpoint, ...]
    path: str = "/mcp"
    sse_path: str = "/sse"
    transport: Literal["auto", "streamable-http", "sse"] = "auto"
    headers: Mapping[str, str] = Field(default_factory=dict)
    balancer: Balancer = Balancer()

    @model_validator(mode="before")
    @classmethod
    def _endpoint_forms(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        singles = [key for key in ("endpoint", "url", "serverUrl") if key in data]
        if len(singles) + ("endpoints" in data) > 1:
            written = " and ".join(f"'{key}'" for key in [*singles, "endpoints"] if key in data)
            raise ValueError(f"give one of 'endpoint', 'url' or 'endpoints', not {written}")
        if singles:
            data["endpoints"] = [data.pop(singles[0])]
        endpoints = data.get("endpoints")
        if isinstance(endpoints, list) and not endpoints:
            raise ValueError("'endpoints' is empty: list at least one URL")
        if "path" not in data and isinstance(endpoints, list):
            data.update(_split_paths(endpoints, data.get("transport")))
        return data

    @field_validator("path", "sse_path")
    @classmethod
    def _path(cls, path: str) -> str:
        return _check_path(path)

    def mcp_url(self, endpoint: Endpoint) -> str:
        return endpoint.url.rstrip("/") + self.path

    def sse_url(self, endpoint: Endpoint) -> str:
        return endpoint.url.rstrip("/") + self.sse_path


def _split_paths(endpoints: list[Any], transport: Any) -> dict[str, Any]:
    """An endpoint written as a full MCP URL (`http://h:8080/mcp`) becomes base `http://h:8080` + `path`.

    A path ending in `/sse` names a legacy HTTP+SSE server. Endpoints that disagree on their path must be
    written as base URLs with an explicit `path`.
    """
    urls = [e if isinstance(e, str) else e.get("url") if isinstance(e, dict) else None for e in endpoints]
    if not all(isinstance(u, str) and "?" not in u and "#" not in u for u in urls):
        return {}  # each endpoint's own check says what is wrong (a query is refused), at its field
    try:
        paths = {_url_parts(u).path.rstrip("/") for u in urls if isinstance(u, str)}
    except ValueError:
        return {}  # a malformed URL is reported as written
    if paths == {""}:
        return {}
    if len(paths) > 1:
        raise ValueError("the endpoints have different paths: write them as base URLs and set 'path'")
    path = paths.pop()
    bases = [_origin(u) for u in urls if isinstance(u, str)]
    rebuilt = [b if isinstance(e, str) else {**e, "url": b} for b, e in zip(bases, endpoints, strict=True)]
    if path.endswith("/sse") and transport in (None, "sse"):
        return {"endpoints": rebuilt, "sse_path": path, "transport": "sse"}
    return {"endpoints": rebuilt, "path": path}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


_CAPABILITY = re.compile(r"(CAP_)?[A-Z][A-Z_]*[A-Z]")
# Docker's own rule for container and network names, and a loose image reference (name[:tag][@digest]).
_DOCKER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
# Docker's reference grammar (distribution/reference): [host[:port]/]name[/name...][:tag][@sha256:<64 hex>].
_IMAGE_PART = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?/)?{_IMAGE_PART}(?:/{_IMAGE_PART})*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


class ContainerResources(Resources):
    """Per-replica `cpu` and `memory`, as quantities, meaning the same on both backends (Plan Document,
    section 12.5): Docker makes both hard limits; Kubernetes requests `cpu` (no CPU limit, which would
    throttle) and makes `memory` both the request and the limit."""

    @field_validator("memory")
    @classmethod
    def _bytes(cls, value: str | None) -> str | None:
        if value is not None and value.endswith("m"):
            raise ValueError(
                f"{value!r} is thousandths of a byte: write memory in bytes, k, M, G, Ki, Mi or Gi (256Mi)"
            )
        return value


class DockerResources(ContainerResources):
    """Per-container limits: `cpu` and `memory` as quantities (Docker has no request, so both are hard
    limits), `pids` the most processes and threads the container may have (a fork bomb stops there)."""

    pids: Annotated[int, Field(ge=1)] | None = 256


class Volume(_Model):
    """A mount: a host path (absolute) or a named volume at `target`; read-only unless `read_only: false`.
    The short form `source:target[:rw|:ro]` is accepted."""

    short_form: ClassVar[str | None] = "SOURCE:TARGET[:ro|:rw]"

    source: str
    target: str
    read_only: bool = True

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        parts = data.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ValueError(f"{data!r} is not a volume: write SOURCE:TARGET, SOURCE:TARGET:ro or SOURCE:TARGET:rw")
        return {"source": parts[0], "target": parts[1], "read_only": len(parts) == 2 or parts[2] == "ro"}

    @field_validator("source")
    @classmethod
    def _source(cls, source: str) -> str:
        if not (source.startswith("/") or _DOCKER_NAME.fullmatch(source)):
            raise ValueError(f"{source!r} is neither an absolute host path nor a volume name")
        return source

    @field_validator("target")
    @classmethod
    def _target(cls, target: str) -> str:
        if not target.startswith("/"):
            raise ValueError(f"{target!r} must be an absolute path in the container")
        return target


def _capability(cap: str) -> str:
    if not _CAPABILITY.fullmatch(cap):
        raise ValueError(f"{cap!r} is not a capability name such as NET_BIND_SERVICE")
    return cap.removeprefix("CAP_")


class Security(_Model):
    """How a container is confined. Defaults: no new privileges, every capability dropped, the image's
    user; `read_only: true` makes the root filesystem read-only (a tmpfs at /tmp stays writable)."""

    no_new_privileges: bool = True
    cap_add: tuple[Annotated[str, AfterValidator(_capability)], ...] = ()  # each checked: errors name the index
    read_only: bool = False
    user: str | None = None


class _ContainerEntry(_Entry):
    """The fields a server run from an image has on every backend, meaning the same on Docker and Kubernetes
    (Plan Document, section 12.5); `deploy/container.py` turns them into one container spec for both.

    With a `port` it is an HTTP server: `replicas` replicas, balanced by the gateway. Without one it is a
    stdio server. `command` replaces the image's entrypoint and `args` its command, as in Kubernetes.
    `start: on_boot` starts the replicas with the gateway; `on_demand` at the first request. `idle_timeout`:
    seconds without a request after which every replica stops (scale to zero); the next request starts
    them again and waits up to `timeouts.startup`.
    """

    image: str
    command: Argv | None = None
    args: Argv | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    path: str = "/mcp"
    replicas: Annotated[int, Field(ge=0)] = 1
    env: Mapping[str, str] = Field(default_factory=dict)
    secret_env: Mapping[str, str] = Field(default_factory=dict)
    start: Literal["on_boot", "on_demand"] | None = None
    idle_timeout: Seconds | None = None
    pull: Literal["missing", "never"] = "missing"
    security: Security = Security()
    stateless: bool = False
    balancer: Balancer = Balancer()
    pool: Pool = Pool()

    # Fields only an HTTP server (one with a `port`) takes; subclasses add their own.
    http_fields: ClassVar[frozenset[str]] = frozenset({"replicas", "path", "balancer"})

    @field_validator("image")
    @classmethod
    def _image(cls, image: str | None) -> str | None:
        if image is not None and not _IMAGE.fullmatch(image):
            raise ValueError(f"{image!r} is not an image reference such as mcpfleet/demo:dev or python:3.11-slim")
        return image

    @field_validator("command", "args", mode="before")
    @classmethod
    def _argv_forms(cls, argv: Any) -> Any:
        return [argv] if isinstance(argv, str) else argv

    @field_validator("command")
    @classmethod
    def _command(cls, argv: Argv | None) -> Argv | None:
        return _check_argv(argv)

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        return _check_path(path)

    def _check_kind(self, what: str) -> None:
        """Fields of one kind (HTTP replicas, stdio processes) on the other are errors that say which kind
        takes them. `what` names the stdio server's unit (`container`, `process`)."""
        if self.port is not None:
            if self.pool != Pool() or "stateless" in self.model_fields_set:
                raise ValueError(
                    "'pool' and 'stateless' are for stdio servers (no 'port'): HTTP replicas are set by 'replicas'"
                )
            return
        http_only = sorted(self.http_fields & self.model_fields_set)
        if http_only:
            raise ValueError(
                f"{', '.join(repr(f) for f in http_only)} {'is' if len(http_only) == 1 else 'are'} for HTTP replicas"
                f" (entries with a 'port'): a stdio server runs one {what} per session (see 'pool')"
            )
        if self.pool.mode == "shared" and not self.stateless:
            raise ValueError(
                f"pool.mode 'shared' needs 'stateless: true': sessions share a {what} only when the server keeps"
                " no per-session state"
            )

    @property
    def stdio(self) -> bool:
        """A stdio server (no `port`)."""
        return self.port is None

    @property
    def starts_on_boot(self) -> bool:
        return self.start != "on_demand"


class DockerServer(_ContainerEntry):
    """A server run in Docker containers from `image`. With a `port`, `replicas` containers, each
    publishing `port` on 127.0.0.1 (`host_port` fixes it), balanced by the gateway. Without one, one
    container per session (or per shared process, `pool.mode: shared`), attached to its stdin."""

    type: Literal["docker"] = "docker"
    # The port on 127.0.0.1 that `port` is published on; None: one the engine picks (each replica its own).
    host_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    resources: DockerResources = DockerResources()
    volumes: tuple[Volume, ...] = ()
    network: str | None = None

    http_fields: ClassVar[frozenset[str]] = frozenset({"replicas", "path", "balancer", "host_port"})

    @field_validator("network")
    @classmethod
    def _network(cls, network: str | None) -> str | None:
        if network is not None and not _DOCKER_NAME.fullmatch(network):
            raise ValueError(f"{network!r} is not a Docker network name")
        return network

    @model_validator(mode="after")
    def _kind_fields(self) -> DockerServer:
        if self.port is not None:
            if self.network in ("host", "none"):
                raise ValueError(
                    f"network {self.network!r} publishes no port: an HTTP server (one with a 'port') needs a bridge"
                    " network such as the default"
                )
            if self.host_port is not None and self.replicas > 1:
                raise ValueError(
                    f"'host_port' {self.host_port} fits one replica, and 'replicas' is {self.replicas}: leave"
                    " host_port unset so each replica gets a port of its own"
                )
        elif self.start is not None or self.idle_timeout is not None:
            raise ValueError(
                "'start' and 'idle_timeout' are for HTTP replicas (entries with a 'port'): stdio containers start"
                " per session; keep some warm with pool.min and stop spare ones with pool.idle_timeout"
            )
        self._check_kind("container")
        return self


_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # an RFC 1123 label (namespaces, service accounts)
_LABEL_VALUE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9])?")
_NUMERIC_USER = re.compile(r"[0-9]+(:[0-9]+)?")


class KubernetesServer(_ContainerEntry):
    """A server run as pods of a Kubernetes Deployment in `namespace`, behind a headless Service whose
    EndpointSlices the gateway watches (Plan Document, section 12.4). With a `port`, each pod serves MCP
    over HTTP there; without one, `command` is a stdio server that each pod runs behind `mcpfleet adapter`
    (the gateway's stdio pool behind Streamable HTTP on port 8080), so the gateway balances across pods
    either way. `chart` installs a Helm chart instead (`mcpfleet deploy`), whose Service the gateway finds by
    its labels. `discovery`: `endpointslices` (watch; default) or `dns` (the headless Service's A/AAAA
    records every 30 s, for a gateway that may not watch). `namespace` None: the namespace of the
    kubeconfig context, or the gateway's own in a cluster."""

    type: Literal["kubernetes"] = "kubernetes"
    image: str | None = None  # type: ignore[assignment]  # a chart may bring its own
    chart: str | None = None
    chart_version: str | None = None
    values: Mapping[str, Any] = Field(default_factory=dict)
    namespace: str | None = None
    service_account: str | None = None
    resources: ContainerResources = ContainerResources()
    discovery: Literal["endpointslices", "dns"] = "endpointslices"

    # A stdio server's pods are HTTP replicas too (the adapter serves it): every field applies.
    http_fields: ClassVar[frozenset[str]] = frozenset()

    @field_validator("namespace", "service_account")
    @classmethod
    def _name(cls, name: str | None, info: Any) -> str | None:
        if name is not None and (len(name) > 63 or not _K8S_NAME.fullmatch(name)):
            what = "namespace" if info.field_name == "namespace" else "service account"
            raise ValueError(
                f"{name!r} is not a valid Kubernetes {what} name (lowercase letters, digits and '-', at most 63)"
            )
        return name

    @field_validator("security")
    @classmethod
    def _user(cls, security: Security) -> Security:
        if security.user is not None and not _NUMERIC_USER.fullmatch(security.user):
            raise ValueError(
                f"user {security.user!r}: Kubernetes runs pods as a numeric user: write UID or UID:GID (10001)"
            )
        return security

    @model_validator(mode="after")
    def _image_or_chart(self) -> KubernetesServer:
        if not _LABEL_VALUE.fullmatch(self.id):
            raise ValueError(
                f"server id {self.id!r} ends with {self.id[-1]!r}: Kubernetes labels carry it, and a label value"
                " must end with a letter or digit"
            )
        if (self.image is None) == (self.chart is None):
            raise ValueError("a kubernetes server needs exactly one of 'image' or 'chart'")
        if self.chart is None and ("values" in self.model_fields_set or self.chart_version is not None):
            raise ValueError("'values' and 'chart_version' are for 'chart' entries")
        if self.chart is not None and self.port is None:
            raise ValueError("a 'chart' entry needs the 'port' its Service serves MCP on")
        if self.chart is not None:
            pod_fields = {"command", "args", "env", "secret_env", "resources", "security", "pull", "service_account"}
            given = sorted(pod_fields & self.model_fields_set)
            if given:
                raise ValueError(
                    f"{', '.join(repr(f) for f in given)}: a 'chart' entry's pods are the chart's; set them in"
                    " 'values' (replicas, start, idle_timeout and timeouts still apply: the gateway scales it)"
                )
        if self.stdio:
            carried = {"mode", "min", "max"}  # what `mcpfleet adapter` takes (deploy/container.py)
            dropped = sorted(set(self.pool.model_fields_set) - carried)
            if dropped:
                raise ValueError(
                    f"pool.{dropped[0]} is not carried to the pods' `mcpfleet adapter`, which takes pool.mode,"
                    " pool.min and pool.max: leave it out of a kubernetes entry"
                )
        if self.image is not None and self.port is None and self.command is None:
            raise ValueError(
                "a stdio server (no 'port') needs 'command': each pod runs it behind `mcpfleet adapter`, which"
                " must know what to start"
            )
        self._check_kind("process")
        return self


Server = StdioServer | HttpServer | DockerServer | KubernetesServer

SERVER_TYPES: dict[str, type[_Entry]] = {
    "stdio": StdioServer,
    "http": HttpServer,
    "docker": DockerServer,
    "kubernetes": KubernetesServer,
}


_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
PRINCIPAL_KINDS = ("key", "sub", "group", "scope")
# An OAuth scope: RFC 6749 section 3.3 scope-token, 1*( %x21 / %x23-5B / %x5D-7E ). A space or `"` would
# break the `WWW-Authenticate` header that names required scopes.
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def secure_url(url: str) -> bool:
    """Whether `url` may carry what a token is checked against: https, or http to this machine (`localhost`,
    127.0.0.0/8, `::1`), as the MCP authorization spec asks of every authorization server endpoint. A URL
    that cannot be parsed is not."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and host is not None and _loopback(host)


def _loopback(host: str) -> bool:
    """`localhost`, or an IP address in 127.0.0.0/8, `::1` or `::ffff:127.x` (the rule of
    gateway/policy/hosts.py `is_loopback_bind`); never a name that merely starts with `127.`."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _https_url(url: str) -> str:
    """An issuer's, its key set's or an authorization server's URL: https, or http on a loopback host."""
    _url_parts(url)
    if not secure_url(url):
        raise ValueError(
            f"{shown_url(url)!r}: an issuer, its key set and an authorization server are reached over https"
            " (http only on loopback)"
        )
    return url


class ApiKey(_Model):
    """One static API key: `name` (what logs, audit lines and `access` rules call its holder), the key's
    SHA-256 (`sha256`, lowercase hex) or the key itself (`key`, usually `${VAR}`: hashed at load and never
    kept), and `groups` it belongs to. Clients send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

    name: str
    sha256: str | None = None
    key: str | None = Field(default=None, exclude=True, repr=False)
    groups: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _KEY_NAME.fullmatch(name):
            raise ValueError(f"{name!r}: a key name is letters, digits, '.', '_', '@' and '-' (at most 128)")
        return name

    @field_validator("key")
    @classmethod
    def _long(cls, key: str | None) -> str | None:
        if key is not None and len(key) < 16:
            raise ValueError("the key is shorter than 16 characters: make it long and random")
        return key

    @field_validator("sha256")
    @classmethod
    def _hex(cls, sha256: str | None) -> str | None:
        if sha256 is not None and not _SHA256.fullmatch(sha256):
            raise ValueError("'sha256' is the key's SHA-256 as 64 lowercase hex digits (sha256sum prints it)")
        return sha256

    @model_validator(mode="after")
    def _hashed(self) -> ApiKey:
        if (self.sha256 is None) == (self.key is None):
            raise ValueError("give exactly one of 'sha256' (the key's SHA-256, hex) or 'key' (the key, e.g. ${VAR})")
        if self.key is not None:
            object.__setattr__(self, "sha256", digest(self.key))
            object.__setattr__(self, "key", None)
        return self


def _scope(scope: str) -> str:
    """An OAuth scope as RFC 6749 section 3.3 defines it: printable ASCII, no space, `"` or `\\`."""
    if not SCOPE_TOKEN.fullmatch(scope):
        raise ValueError(
            f"{scope!r} is not an OAuth scope: printable ASCII without spaces, '\"' or '\\' (RFC 6749 section 3.3)"
        )
    return scope


class Jwt(_Model):
    """Bearer JWTs from an OAuth 2.0 / OIDC issuer, validated against its JWKS (RFC 7519, RFC 9068).

    `issuer`: the `iss` every token must carry. `jwks_url`: the issuer's key set; none: read from the issuer's
    `/.well-known/openid-configuration`, else `/.well-known/oauth-authorization-server` (RFC 8414).
    `audience`: accepted `aud` values; none: the server's own URL at the gateway (`<public_url>/<id>/mcp`,
    the RFC 8707 resource the MCP authorization spec has clients ask for) or that URL without `/mcp`.
    `algorithms`: asymmetric ones only. `leeway`: clock skew allowed on `exp`, `nbf`, `iat`, in seconds.
    `groups_claim`, `scopes_claim`: where groups and scopes are read (a list, or a space-separated string).
    `jwks_refresh`: the key set is fetched again this often, and at once (at most every `jwks_min_refresh`
    seconds) when a token names a key id it does not hold: key rotation needs no restart.
    """

    issuer: str
    jwks_url: str | None = None
    audience: tuple[str, ...] = ()
    algorithms: tuple[
        Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"], ...
    ] = (
        "RS256",
        "ES256",
    )
    leeway: Annotated[float, Field(ge=0, le=600)] = 60.0
    groups_claim: str = "groups"
    scopes_claim: str = "scope"
    jwks_refresh: Seconds = 300.0
    jwks_min_refresh: Annotated[float, Field(ge=0)] = 10.0
    required_scopes: tuple[Annotated[str, AfterValidator(_scope)], ...] = ()

    @field_validator("issuer", "jwks_url")
    @classmethod
    def _https(cls, url: str | None) -> str | None:
        return None if url is None else _https_url(url)


class Auth(_Model):
    """Who may call the gateway (section 9.16 of the Plan Document). With neither `api_keys` nor `jwt`, nobody
    is asked for credentials: allowed on a loopback bind, and elsewhere only with `anonymous: true` (a proxy in
    front authenticates). `/healthz` and `/readyz` are always open; `open` lists what else is (`metrics`:
    `/metrics`; `servers`: `/servers` and the status page `/`)."""

    never_null: ClassVar[frozenset[str]] = frozenset({"api_keys", "jwt"})

    api_keys: tuple[ApiKey, ...] = ()
    jwt: Jwt | None = None
    anonymous: bool = False
    open: tuple[Literal["metrics", "servers"], ...] = ()
    # RFC 9728 `authorization_servers` advertised in the protected-resource metadata; none: the JWT issuer.
    authorization_servers: tuple[Annotated[str, AfterValidator(_https_url)], ...] = ()

    @property
    def required(self) -> bool:
        return bool(self.api_keys) or self.jwt is not None

    def open_door(self, bind_host: str) -> bool:
        """Whether serving on `bind_host` (an address or name, as `gateway.host` or `--host` give it) would
        ask callers for no credentials beyond this machine without `anonymous: true`: the bind `serve` and the
        gateway refuse (gateway/policy/credentials.py `open_door`) and the loader warns about (section 9.16).
        Only `localhost` and loopback IP addresses (authority.py `is_loopback_bind`) count as this machine."""
        return not (self.required or self.anonymous or is_loopback_bind(bind_host))

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Auth:
        if not cross_checked(info):
            raise_first(self.cross_checks(self.model_dump()))
        return self

    @classmethod
    def cross_checks(cls, data: Mapping[str, Any]) -> list[Finding]:
        """checks.py `auth_findings`: api key names and keys used once; `anonymous` without credentials."""
        return auth_findings(data)


def _principal(principal: str) -> str:
    kind, sep, name = principal.partition(":")
    if principal not in ("*", ANONYMOUS) and (not sep or kind not in PRINCIPAL_KINDS or not name):
        raise ValueError(
            f"{principal!r} is not a principal: write key:<name>, sub:<subject>, group:<name>, scope:<scope>,"
            f" {ANONYMOUS} or '*'"
        )
    if kind == "scope":
        _scope(name)
    return principal


_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_GLOB_CLASS = re.compile(r"\[!?\]?[^\]]*\]")  # fnmatch's [seq] and [!seq]: one character each


def _server_pattern(pattern: str) -> str:
    """A server id or glob (`fnmatch`: `*`, `?`, `[seq]`) that some server id could match (section 6.5)."""
    written = _GLOB_CLASS.sub("?", pattern)
    wrong = [repr(c) for c in sorted({c for c in written if c not in _ID_CHARACTERS and c not in "*?"})]
    if wrong and mask(pattern) != pattern:  # no list of characters, which would show some of a `${VAR}` value
        raise ValueError(f"{mask(pattern)!r} can match no server: it holds characters no server id has")
    if wrong:
        listed = wrong[0] if len(wrong) == 1 else ", ".join(wrong[:-1]) + " and " + wrong[-1]
        raise ValueError(
            f"{pattern!r} can match no server: {listed} {'is' if len(wrong) == 1 else 'are'} in no server id"
            " (lowercase letters, digits, '.', '_' and '-'; globs: '*', '?' and [...])"
        )
    if written[:1] in (".", "_", "-"):
        raise ValueError(f"{pattern!r} can match no server: an id starts with a letter or digit")
    if len(written.replace("*", "")) > 63:
        raise ValueError(f"{pattern!r} can match no server: at most 63 characters make an id")
    if pattern in RESERVED_IDS:
        raise ValueError(f"{pattern!r} can match no server: the id is reserved for the gateway's own endpoints")
    return pattern


class AccessRule(_Model):
    """Who may reach what (Plan Document, section 6.5). `principals` (at least one): `key:<name>` (an API
    key), `sub:<subject>` (a JWT's `sub`), `group:<name>`, `scope:<scope>` (an RFC 6749 scope-token),
    `anonymous` (a caller without credentials: on a gateway that asks none, or on an `auth.open` route), `*`
    (anyone the gateway let in, anonymous callers included). `servers` (default `["*"]`, never `[]`): server
    ids or `fnmatch` globs (`*`, `?`, `[seq]`, `[!seq]`), each one some server id could match. `tools`: tool
    names or `fnmatch` globs these principals may list and call on those servers; left out: every tool;
    `[]`: none. Null is refused for all three (`never_null`): it would widen or void the rule."""

    never_null: ClassVar[frozenset[str]] = frozenset({"principals", "servers", "tools"})

    principals: tuple[Annotated[str, AfterValidator(_principal)], ...]
    servers: tuple[Annotated[str, AfterValidator(_server_pattern)], ...] = ("*",)
    tools: tuple[str, ...] | None = None

    @field_validator("principals")
    @classmethod
    def _principals(cls, principals: tuple[str, ...]) -> tuple[str, ...]:
        if not principals:
            raise ValueError("a rule with no principals matches nobody: name at least one ('*' for anyone)")
        return principals

    @field_validator("servers")
    @classmethod
    def _servers(cls, servers: tuple[str, ...]) -> tuple[str, ...]:
        if not servers:
            raise ValueError(
                "a rule with no servers matches nothing: list server ids or globs, or leave the key out for every"
                " server"
            )
        return servers


class RateLimit(_Model):
    """A token bucket: `rps` requests per second on average, up to `burst` at once (default: `rps`, at least 1)."""

    rps: Annotated[float, Field(gt=0)]
    burst: Annotated[int, Field(ge=1)] | None = None

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, int(self.rps))


class Limits(_Model):
    """Per-caller and per-server bounds (section 9.17). A caller is its principal; an anonymous caller is its
    address (the client's, through `trusted_proxies`). Over a rate: 429 with `Retry-After`; over the session
    cap: 429 on `initialize`. `max_stream_duration`: an event stream (a GET stream, a POST answered with a
    stream, a WebSocket, a legacy SSE stream) is ended after this long; clients reconnect and resume.
    A rate left out or null is unlimited; `sessions_per_principal: null` and `max_stream_duration: null` lift
    those."""

    sessions_per_principal: Annotated[int, Field(ge=1)] | None = 1000
    rate_per_principal: RateLimit | None = None
    rate_per_server: RateLimit | None = None
    max_stream_duration: Seconds | None = 86400.0


class Logging(_Model):
    """`format`: `json` (one object a line: time, level, logger, message, request and session ids) or `text`.
    `audit`: one line per tool call (principal, server, tool, outcome, duration); `audit_arguments` adds the
    call's arguments (off: they may hold personal data or secrets)."""

    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"
    audit: bool = True
    audit_arguments: bool = False


class Tracing(_Model):
    """OpenTelemetry (`pip install 'mcpfleet[otel]'`): a span per client request and per upstream call, W3C
    `traceparent` to HTTP backends and in `_meta` to stdio ones. `exporter`: `otlp` (OTLP/HTTP to
    `endpoint`, an http(s) URL checked at load; default `$OTEL_EXPORTER_OTLP_ENDPOINT` or
    http://localhost:4318), `console`, or `none`."""

    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] = "otlp"
    endpoint: str | None = None
    service_name: str = "mcpfleet"
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, url: str | None) -> str | None:
        return None if url is None else check_url(url)


def _network(proxy: str) -> str:
    try:
        ipaddress.ip_network(proxy)
    except ValueError:
        try:
            network = ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ValueError(f"{proxy!r} is not an IP address or CIDR network (10.0.0.0/8, ::1)") from None
        raise ValueError(f"{proxy!r} has bits set past its prefix: write {network}") from None
    return proxy


SESSION_KEY_BYTES = 32  # the AES-256 key HKDF derives from it: no less random material than that


def session_key_problem(key: str) -> str | None:
    """What is wrong with a session key (`gateway.session_keys`, or one in `$MCPFLEET_SESSION_KEYS`:
    gateway/sealing.py), None when nothing: it must be at least `SESSION_KEY_BYTES` bytes (UTF-8)."""
    if len(key.encode()) >= SESSION_KEY_BYTES:
        return None
    return (
        f"a session key is at least {SESSION_KEY_BYTES} bytes of random material, and this one is"
        f" {len(key.encode())}: make one with `openssl rand -base64 32`"
    )


def _session_key(key: str) -> str:
    """A `gateway.session_keys` entry (`session_key_problem`)."""
    if (problem := session_key_problem(key)) is not None:
        raise ValueError(problem)
    return key


def _allowed_host(entry: str) -> str:
    """A `gateway.allowed_hosts` entry the Host check can match (authority.py), else what to write."""
    problem = host_entry_problem(entry)
    if problem is not None:
        raise ValueError(f"{entry!r} is {problem}" if problem.startswith("a") else f"{entry!r}: {problem}")
    return entry


def _allowed_origin(entry: str) -> str:
    """A `gateway.allowed_origins` entry the Origin check can match (authority.py), else what to write."""
    problem = origin_entry_problem(entry)
    if problem is not None:
        raise ValueError(f"{entry!r} is not an origin: {problem}")
    return entry


class Gateway(_Model):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # Checked at load (authority.py), each at its index: an entry the gateway could never match is an error.
    allowed_origins: tuple[Annotated[str, AfterValidator(_allowed_origin)], ...] = ()
    allowed_hosts: tuple[Annotated[str, AfterValidator(_allowed_host)], ...] = ()
    # The largest JSON-RPC message, in bytes, on every route and in both directions: request bodies,
    # WebSocket frames, SSE events, stdio lines, bridged HTTP answers. `max_body_bytes` is its older name.
    max_message_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    session_idle_timeout: Seconds = 1800.0
    # A `: keepalive` comment on relayed event streams after this much silence (the SDK pings every 15 s).
    keepalive_interval: Seconds = 15.0
    # Secrets that seal session ids, newest first (rotation: the first seals, all open). Gateways sharing
    # one serve each other's http sessions. Empty: $MCPFLEET_SESSION_KEYS, else a random key per process.
    # Each is the key material HKDF stretches into an AES-256 key (gateway/sealing.py): at least 32 bytes.
    session_keys: tuple[Annotated[str, AfterValidator(_session_key)], ...] = ()
    session_max_age: Seconds = 86400.0
    # After SIGTERM, /readyz answers 503 and serving goes on for this long before the gateway stops taking
    # connections, so a load balancer or Kubernetes sees it leave first (the gateway chart sets 5; 0: stop at once).
    shutdown_delay: Annotated[float, Field(ge=0, le=300)] = 0.0
    # `labels`: serve the Kubernetes Services labelled `mcpfleet.io/server: <id>` that no entry lists, from
    # `discovery_namespaces` (default: the kubeconfig context's, or the gateway's own in a cluster). Read at start.
    discovery: Literal["none", "labels"] = "none"
    discovery_namespaces: tuple[str, ...] = ()
    # The gateway's URL as clients reach it (scheme, host, optional path prefix): the `resource` of each
    # server's protected-resource metadata and the default JWT audience. None: the request's scheme and Host.
    public_url: str | None = None
    auth: Auth = Auth()
    access: tuple[AccessRule, ...] = ()
    never_null: ClassVar[frozenset[str]] = frozenset({"access"})
    limits: Limits = Limits()
    # Peers (addresses or CIDR networks) whose `Forwarded` / `X-Forwarded-*` headers are believed.
    trusted_proxies: tuple[Annotated[str, AfterValidator(_network)], ...] = ()
    logging: Logging = Logging()
    tracing: Tracing = Tracing()

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        try:
            parts = _url_parts(url)
        except ValueError as exc:
            raise ValueError(f"{exc} (public_url is http(s)://host[:port][/prefix])") from None
        if parts.query or parts.fragment:
            raise ValueError(f"{shown_url(url)!r}: public_url is http(s)://host[:port][/prefix], no query or fragment")
        if "@" in parts.netloc:
            raise ValueError(
                f"{shown_url(url)!r}: public_url is published (metadata, token audiences): no user or password"
                " in it (http(s)://host[:port][/prefix])"
            )
        return url.rstrip("/")

    @model_validator(mode="after")
    def _known_keys(self, info: ValidationInfo) -> Gateway:
        if not cross_checked(info):
            raise_first(self.cross_checks(self.model_dump()))
        return self

    @classmethod
    def cross_checks(cls, data: Mapping[str, Any]) -> list[Finding]:
        """checks.py `access_findings`: access rules' principals against `auth`."""
        return access_findings(data)

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_body_bytes" in data:
            if "max_message_bytes" in data:
                raise ValueError("give 'max_message_bytes' only ('max_body_bytes' is its older name)")
            data = {**data, "max_message_bytes": data["max_body_bytes"]}
            del data["max_body_bytes"]
        return data


class Registry(_Model):
    """One immutable snapshot of the registry: where it came from, the gateway settings, the servers by id.

    `failed`: entries left out because a `${VAR}` they use has no value (and nothing else is wrong with
    them), by id, each with its one-line located error (its advice worded for a running gateway when a
    reload loaded it: `load_registry(running=True)`). An id is in `servers` or `failed`, never both.
    `warnings`: things accepted but ignored (client-only keys, disabled entries, VS Code `inputs`).
    `secrets`: the values `${VAR}` references took from the environment (those `masking.maskable` keeps),
    which every display of an entry and every log line masks (masking.py); never dumped or
    shown in a repr.
    """

    source: str
    gateway: Gateway = Gateway()
    servers: Mapping[str, Server] = Field(default_factory=dict)
    failed: Mapping[str, str] = Field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    secrets: frozenset[str] = Field(default_factory=frozenset, exclude=True, repr=False)

    def __repr__(self) -> str:
        return Masker(self.secrets)(super().__repr__())

    def __str__(self) -> str:
        return Masker(self.secrets)(super().__str__())

    def server(self, server_id: str) -> Server:
        from mcpfleet.errors import UnknownServerError

        try:
            return self.servers[server_id]
        except KeyError:
            raise UnknownServerError(server_id, sorted(self.servers)) from None
