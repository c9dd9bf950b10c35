"""The grpc.aio transport (``transport: grpcio``): the same stream machine, served by
grpc-core. 4-5x the CPU per request of the native server (see README); kept as the
reference implementation the native one is tested against."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health, health_pb2_grpc

from picker.handlers.stream import ExtProcService
from picker.transport.health import EXT_PROC_SERVICE, HealthStatus
from picker.transport.tls import ServerTLS


def _identity(b: bytes) -> bytes:
    return b


async def process_stream(
    service: ExtProcService,
    requests: AsyncIterator[pb.ProcessingRequest],
    context: grpc.aio.ServicerContext[Any, Any],
) -> AsyncIterator[bytes]:
    """Drives one ``StreamProcessor`` from the request iterator."""
    proc = service.stream()
    try:
        async for req in requests:
            for out in proc.handle(req):
                yield out
            while proc.held is not None:
                await asyncio.shield(proc.held.future)
                for out in proc.resume():
                    yield out
            if proc.done:
                return
    finally:
        proc.close()


def _credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """Credentials that pick up a reloaded certificate at the next handshake."""
    ca = tls.client_ca_pem
    served = [tls.version]

    def config() -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(tls.key_pem, tls.cert_pem)], root_certificates=ca
        )

    def fetch() -> Any:
        tls.check()
        if tls.version == served[0]:
            return None
        served[0] = tls.version
        return config()

    return grpc.dynamic_ssl_server_credentials(
        config(), fetch, require_client_authentication=ca is not None
    )


class GrpcioServer:
    """grpc.aio serving ext_proc and health; ``sync_health`` mirrors ``HealthStatus``."""

    def __init__(self, service: ExtProcService, health_status: HealthStatus) -> None:
        self.service = service
        self.health_status = health_status
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(
        self, host: str, port: int, max_message: int, tls: ServerTLS | None = None
    ) -> int:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
                ("grpc.so_reuseport", 0),
            ]
        )
        service = self.service

        async def process(requests: Any, context: Any) -> AsyncIterator[bytes]:
            # grpc.aio needs an async generator function here, not a callable returning one
            async for out in process_stream(service, requests, context):
                yield out

        handler = grpc.method_handlers_generic_handler(
            EXT_PROC_SERVICE,
            {
                "Process": grpc.stream_stream_rpc_method_handler(
                    process,
                    request_deserializer=pb.ProcessingRequest.FromString,
                    response_serializer=_identity,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if tls is None:
            self.port = server.add_insecure_port(f"{host}:{port}")
        else:
            self.port = server.add_secure_port(f"{host}:{port}", _credentials(tls))
        if self.port == 0:
            raise OSError(f"cannot bind gRPC on {host}:{port}")
        await server.start()
        self.server = server
        await self.sync_health()
        return self.port

    async def sync_health(self) -> None:
        for name, status in self.health_status.status.items():
            await self.health.set(name, cast(Any, status))

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)
