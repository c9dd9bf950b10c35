"""TLS on the gRPC port, for both transports: self-signed, mounted and reloaded, mTLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from picker.config import load_config
from picker.server import PickerServer
from picker.transport.tls import ServerTLS, TLSConfig
from tests.unit.transport.certs import CA

TRANSPORTS = ["native", "grpcio"]


async def start(transport: str, tls: dict[str, Any]) -> PickerServer:
    cfg = load_config(
        data={
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_port": -1,
            "transport": transport,
            "models": {"*": ["10.1.0.1:8000"]},
            "scrape": {"enabled": False},
            "tls": {"enabled": True, **tls},
        }
    )
    srv = PickerServer(cfg)
    await srv.start()
    return srv


@pytest.fixture
async def stop_all() -> AsyncIterator[list[PickerServer]]:
    servers: list[PickerServer] = []
    yield servers
    for s in servers:
        await s.stop(0)


async def health(port: int, ca: bytes, client: tuple[bytes, bytes] | None = None) -> int:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=client[1] if client else None,
        certificate_chain=client[0] if client else None,
    )
    opts = [("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        return int(resp.status)


def handshake(port: int, ca: bytes | None = None) -> tuple[str | None, bytes]:
    """A raw TLS handshake: (negotiated ALPN, the server's certificate, DER)."""
    ctx = ssl.create_default_context()
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca.decode())
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return s.selected_alpn_protocol(), der


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_self_signed_by_default(transport: str, stop_all: list[PickerServer]) -> None:
    srv = await start(transport, {})
    stop_all.append(srv)
    assert srv.tls is not None
    assert await health(srv.grpc_port, srv.tls.cert_pem) == 1  # SERVING
    alpn, der = await asyncio.to_thread(handshake, srv.grpc_port)
    assert alpn == "h2"
    cert = x509.load_der_x509_certificate(der)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_mounted_certificate_is_reloaded(
    transport: str, tmp_path: Path, stop_all: list[PickerServer]
) -> None:
    ca = CA()
    ca.write(tmp_path / "certs", "picker-1")
    srv = await start(transport, {"cert_path": str(tmp_path / "certs"), "reload_seconds": 0.1})
    stop_all.append(srv)
    first = x509.load_der_x509_certificate(
        (await asyncio.to_thread(handshake, srv.grpc_port, ca.pem))[1]
    )
    assert first.subject.rfc4514_string() == "CN=picker-1"
    await asyncio.sleep(0.05)  # a new mtime
    ca.write(tmp_path / "certs", "picker-2")
    for _ in range(50):
        await asyncio.sleep(0.1)
        der = (await asyncio.to_thread(handshake, srv.grpc_port, ca.pem))[1]
        if x509.load_der_x509_certificate(der).subject.rfc4514_string() == "CN=picker-2":
            break
    else:
        raise AssertionError("the new certificate was never served")
    assert await health(srv.grpc_port, ca.pem) == 1


async def test_a_broken_replacement_keeps_the_old_certificate(tmp_path: Path) -> None:
    ca = CA()
    ca.write(tmp_path, "picker-1")
    tls = ServerTLS(TLSConfig(enabled=True, cert_path=str(tmp_path)))
    before = tls.cert_pem
    (tmp_path / "tls.key").write_text("not a key")
    assert tls.check() is False and tls.cert_pem == before


def test_unreadable_files_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls: cannot load"):
        ServerTLS(TLSConfig(enabled=True, cert_path=str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match="go together"):
        load_config(data={"tls": {"enabled": True, "cert_file": "a.crt"}})


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_mtls_requires_a_client_certificate(
    transport: str, tmp_path: Path, stop_all: list[PickerServer]
) -> None:
    ca, other = CA(), CA("other-ca")
    ca.write(tmp_path / "server", "picker")
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    srv = await start(
        transport,
        {"cert_path": str(tmp_path / "server"), "client_ca_file": str(tmp_path / "ca.crt")},
    )
    stop_all.append(srv)
    gateway = ca.issue("gateway", client=True)
    assert await health(srv.grpc_port, ca.pem, gateway) == 1
    for client in (None, other.issue("intruder", client=True)):
        with pytest.raises(grpc.aio.AioRpcError):
            await health(srv.grpc_port, ca.pem, client)
