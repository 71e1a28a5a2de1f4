"""Edges of the gateway: HTTPS, upstream timeouts, a backend that never answers."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from support import INIT, RunningGateway, free_port, running

DEMO = f"[{sys.executable}, -m, mcpfleet.demo, stdio]"


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_https_with_a_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    registry = tmp_path / "r.yaml"
    registry.write_text(f"servers:\n  local: {{command: {DEMO}}}\n")
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "mcpfleet",
        "serve",
        "-r",
        str(registry),
        "--port",
        str(port),
        "--tls-certfile",
        str(cert),
        "--tls-keyfile",
        str(key),
    ]
    with running(argv, port):
        url = f"https://127.0.0.1:{port}/local/mcp"
        context = ssl.create_default_context(cafile=str(cert))

        async def call() -> str:
            async with (
                httpx2.AsyncClient(verify=context) as http,
                Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
            ):
                result = await client.call_tool("echo", {"text": "over tls"})
                return result.content[0].text  # type: ignore[union-attr]

        assert anyio.run(call) == "over tls"
        with pytest.raises(httpx2.TransportError):  # plain HTTP on the TLS port gets no HTTP answer
            httpx2.get(f"http://127.0.0.1:{port}/healthz")


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_backend_that_never_answers_gets_504(gateway: Callable[[str], RunningGateway]) -> None:
    with silent_server() as port:
        gw = gateway(f"servers:\n  mute: {{endpoint: 'http://127.0.0.1:{port}', timeouts: {{first_byte: 1}}}}\n")
        response = httpx2.post(
            gw.mcp("mute"), json=INIT, headers={"accept": "application/json, text/event-stream"}, timeout=30
        )
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == -32015 and "timeouts.first_byte" in error["message"]


def test_quiet_relayed_streams_carry_keepalive_comments(gateway: Callable[[str], RunningGateway]) -> None:
    gw = gateway(f"servers:\n  local: {{command: {DEMO}}}\ngateway: {{keepalive_interval: 0.3}}\n")
    accept = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with httpx2.Client(timeout=30) as client:
        session = client.post(gw.mcp("local"), json=INIT, headers=accept).headers["mcp-session-id"]
        for url, headers in (
            (gw.mcp("local"), {"accept": "text/event-stream", "mcp-session-id": session}),  # the GET stream
            (f"{gw.url}/local/sse", {"accept": "text/event-stream"}),  # a legacy SSE client's stream
        ):
            seen = ""
            with client.stream("GET", url, headers=headers) as stream:
                assert stream.status_code == 200
                for text in stream.iter_text():
                    seen += text
                    if seen.count(": keepalive\n\n") >= 2:
                        break
            assert seen.count(": keepalive\n\n") >= 2
