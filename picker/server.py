"""Wires picker together: gRPC ext_proc + health, Prometheus endpoint, background scrapers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from picker import __version__
from picker.config import Config
from picker.datastore import Datastore
from picker.extproc import ExtProcService
from picker.h2server import HealthStatus, serve
from picker.observability import Metrics
from picker.routing import Director
from picker.scheduling.profile import Profile, build_profile

log = logging.getLogger(__name__)

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
HEALTH_SERVICES = ("liveness", "readiness", EXT_PROC_SERVICE)


def _identity(b: bytes) -> bytes:
    return b


def build_profile_for(config: Config) -> Profile:
    """The scheduling profile with every plugin picker knows (prefix scorers included)."""
    from picker.plugins import extra_scorers

    return build_profile(config.scheduler, extra_scorers=extra_scorers())


class PickerServer:
    """One running picker: call ``start``, then ``wait`` or ``stop``."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.metrics.info.info({"version": __version__})
        self.datastore: Datastore = config.datastore()
        self.profile = build_profile_for(config)
        self.director = Director(config, self.datastore, self.profile, self.metrics)
        self.service = ExtProcService(self.director)
        self.health = health.aio.HealthServicer()
        self.health_status = HealthStatus()
        self.grpc_server: grpc.aio.Server | None = None
        self.native_server: asyncio.Server | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self._http: Any = None
        self.scraper: Any = None
        self._ready_task: asyncio.Task[None] | None = None

    async def _set_health(self, names: tuple[str, ...], status: int) -> None:
        for name in names:
            self.health_status.status[name] = status
            if self.grpc_server is not None:
                await self.health.set(name, cast(Any, status))

    async def start(self) -> None:
        cfg = self.config
        self.health_status.status["liveness"] = health_pb2.HealthCheckResponse.SERVING
        for name in ("readiness", EXT_PROC_SERVICE, ""):
            self.health_status.status[name] = health_pb2.HealthCheckResponse.NOT_SERVING
        if cfg.transport == "native":
            self.native_server = await serve(
                self.service, self.health_status, cfg.grpc_host, cfg.grpc_port
            )
            self.grpc_port = self.native_server.sockets[0].getsockname()[1]
        elif cfg.transport == "grpcio":
            await self._start_grpcio()
        else:
            raise ValueError(f"transport must be native or grpcio, not {cfg.transport!r}")

        if cfg.metrics_port >= 0:
            self._http, _ = start_http_server(
                cfg.metrics_port, addr=cfg.metrics_host, registry=self.metrics.registry
            )
            self.metrics_port = self._http.server_port

        if cfg.scrape.enabled:
            from picker.metrics_text import names_from_config
            from picker.scrape import Scraper

            overrides = {p.name: p.metrics for p in cfg.pools}
            s = cfg.scrape
            self.scraper = Scraper(
                self.datastore,
                self.metrics,
                interval=s.interval,
                timeout=s.timeout,
                stale_after=s.stale_after,
                max_failures=s.max_failures,
                path=s.path,
                names_for=lambda pool: names_from_config(
                    pool.model_server, overrides.get(pool.name)
                ),
            )
            await self.scraper.start()
        for scorer, _ in self.profile.scorers:
            start = getattr(scorer, "start", None)
            if start is not None:  # stateful plugins with background tasks (KV events)
                await start()
        self._ready_task = asyncio.create_task(self._become_ready())
        log.info(
            "picker %s serving ext_proc on %s:%d, metrics on :%d, %d pool(s), %d endpoint(s)",
            __version__,
            cfg.grpc_host,
            self.grpc_port,
            self.metrics_port,
            len(self.datastore.pools),
            len(self.datastore.by_address),
        )

    async def _become_ready(self) -> None:
        if self.scraper is not None:
            await self.scraper.first_scrape_done.wait()
        await self._set_health(
            ("readiness", EXT_PROC_SERVICE, ""), health_pb2.HealthCheckResponse.SERVING
        )
        log.info("picker ready")

    async def _start_grpcio(self) -> None:
        cfg = self.config
        limit = cfg.max_body_bytes + (1 << 20)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", 100000),
            ]
        )
        handler = grpc.method_handlers_generic_handler(
            EXT_PROC_SERVICE,
            {
                "Process": grpc.stream_stream_rpc_method_handler(
                    self.service.process,
                    request_deserializer=pb.ProcessingRequest.FromString,
                    response_serializer=_identity,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.grpc_port = server.add_insecure_port(f"{cfg.grpc_host}:{cfg.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC on {cfg.grpc_host}:{cfg.grpc_port}")
        await server.start()
        self.grpc_server = server
        for name, status in self.health_status.status.items():
            await self.health.set(name, cast(Any, status))

    async def stop(self, grace: float = 1.0) -> None:
        if self._ready_task is not None:
            self._ready_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ready_task
        if self.scraper is not None:
            await self.scraper.stop()
        for scorer, _ in self.profile.scorers:
            stop = getattr(scorer, "stop", None)
            if stop is not None:
                await stop()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)
        if self.native_server is not None:
            self.native_server.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
