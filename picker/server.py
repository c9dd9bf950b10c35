"""Wires one picker together: datastore, plugins, director, transport, scrapers, metrics.

Start order: transport (not ready), Prometheus endpoint, scrapers, plugins' ``start``;
ready once every endpoint has had its first scrape. Stop in reverse.

With discovery (``Config.discovery``: an InferencePool or a label selector), endpoints
come and go at run time: discovery starts before the scrapers, readiness waits for its
first sync (pool and pods listed) and then for the first scrape of every pod found, and
goes false while the InferencePool is missing. Each change of the datastore starts and
stops scrapers, and tells plugins (``on_endpoint_removed``) and the metrics to forget a
removed pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server

from picker import __version__
from picker.config import Config
from picker.datalayer.datastore import Datastore, Endpoint
from picker.datalayer.discovery.build import from_config as discovery_from_config
from picker.datalayer.discovery.controller import Discovery
from picker.datalayer.discovery.peers import PeerDiscovery
from picker.datalayer.scrape import Scraper
from picker.handlers.stream import ExtProcService
from picker.observability import Metrics
from picker.requestcontrol.director import Director
from picker.scheduling.framework import Handle
from picker.scheduling.peering import peer_exchange
from picker.scheduling.profile import Profile, build_profile
from picker.scheduling.registry import Registry
from picker.transport.grpcio import GrpcioServer
from picker.transport.h2 import NativeServer, Timeouts
from picker.transport.h2core import Limits
from picker.transport.health import HealthStatus
from picker.transport.tls import ServerTLS

if TYPE_CHECKING:
    from picker.datalayer.peers import PeerExchange

log = logging.getLogger(__name__)


class PickerServer:
    """One running picker: call ``start``, then ``stop``."""

    def __init__(
        self, config: Config, metrics: Metrics | None = None, registry: Registry | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.metrics.info.info({"version": __version__})
        self.datastore: Datastore = config.datastore()
        self.metrics.pin_models(_configured_models(config, self.datastore))
        handle = Handle(self.datastore, self.metrics, config.chars_per_token)
        self.profile: Profile = build_profile(config.scheduler, handle=handle, registry=registry)
        self.director = Director(config, self.datastore, self.profile, self.metrics)
        self.service = ExtProcService(self.director)
        self.health_status = HealthStatus()
        self.grpcio: GrpcioServer | None = None
        self.native: NativeServer | None = None
        self.health_server: NativeServer | None = None  # the health port (plaintext)
        self.grpc_port = 0
        self.health_port = 0
        self.metrics_port = 0
        self._http: Any = None
        self.scraper: Scraper | None = None
        # TLS material is made (self-signed) or loaded here, so a bad file fails at start.
        self.tls = ServerTLS(config.tls) if config.tls.enabled else None
        self._ready_task: asyncio.Task[None] | None = None
        self._draining = False
        self._background: set[asyncio.Task[None]] = set()
        self.peers: PeerExchange | None = None
        if config.peers.enabled:
            self.peers = peer_exchange(
                config.peers, self.datastore, self.metrics, self.profile, self._peers_changed
            )
        self.discovery: Discovery | None = None
        if config.discovery.enabled:
            self.discovery = discovery_from_config(
                config.discovery, self.datastore, self._discovery_ready
            )
            self.datastore.add_listener(self._endpoints_changed)
        self.peer_discovery: PeerDiscovery | None = None
        if self.peers is not None and config.peers.selector:
            if self.discovery is None:
                raise ValueError(
                    "peers.selector finds the replicas in the cluster: it needs discovery "
                    "(--pool-name or --endpoint-selector)"
                )
            self.peer_discovery = PeerDiscovery.of(
                self.discovery, config.peers, self.peers.set_endpoints
            )

    def _endpoints_changed(self, added: Sequence[Endpoint], removed: Sequence[Endpoint]) -> None:
        if removed:
            self.profile.on_endpoints_removed(removed)
            for ep in removed:
                self.metrics.forget_endpoint(ep.address, ep.pod_name, ep.namespace, ep.port_label)
        scraper = self.scraper
        if scraper is not None and scraper.running:
            task = asyncio.get_running_loop().create_task(scraper.sync())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _peers_changed(self, peers: int) -> None:
        """The pods' observation budget is shared by this replica and its live peers."""
        if self.scraper is not None:
            self.scraper.share_budget(peers + 1)

    def _discovery_ready(self, ready: bool) -> None:
        """The pool vanished (not ready) or is back; the first sync is ``_become_ready``'s."""
        if self._ready_task is None or not self._ready_task.done() or self._draining:
            return
        log.warning("picker %s", "ready: the pool is back" if ready else "not ready: no pool")
        self._set_ready(ready)

    def _set_ready(self, ready: bool) -> None:
        self.health_status.set_ready(ready)
        if self.grpcio is not None:
            task = asyncio.get_running_loop().create_task(self.grpcio.sync_health())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        cfg = self.config
        tls = self.tls
        if tls is not None:
            tls.start()
        if cfg.transport == "native":
            self.native = NativeServer(
                self.service, self.health_status, self._limits(), self._timeouts()
            )
            ctx = tls.context if tls is not None else None
            self.grpc_port = await self.native.start(cfg.grpc_host, cfg.grpc_port, ctx)
        elif cfg.transport == "grpcio":
            self.grpcio = GrpcioServer(self.service, self.health_status)
            self.grpc_port = await self.grpcio.start(
                cfg.grpc_host, cfg.grpc_port, cfg.max_body_bytes + (1 << 20), tls
            )
        else:
            raise ValueError(f"transport must be native or grpcio, not {cfg.transport!r}")
        if cfg.grpc_health_port >= 0:
            # gRPC health alone, plaintext, as the EPP's health server: kubelet probes and
            # gateways. It stays up while picker drains (liveness SERVING, readiness not).
            self.health_server = NativeServer(None, self.health_status, timeouts=self._timeouts())
            self.health_port = await self.health_server.start(
                cfg.grpc_host, cfg.grpc_health_port, None
            )

        if cfg.metrics_port >= 0:
            self._http, _ = start_http_server(
                cfg.metrics_port, addr=cfg.metrics_host, registry=self.metrics.registry
            )
            self.metrics_port = self._http.server_port

        if cfg.scrape.enabled:
            self.scraper = Scraper.from_config(cfg, self.datastore, self.metrics)
            if self.discovery is None:
                await self.scraper.start()
        if self.discovery is not None:
            # The scraper starts once discovery has listed the pods (``_become_ready``), so
            # its first scrape of every pod found is what readiness waits for.
            await self.discovery.start()
        await self.profile.start()
        if self.peers is not None:
            await self.peers.start()
        if self.peer_discovery is not None:
            await self.peer_discovery.start()
        self._ready_task = asyncio.create_task(self._become_ready())
        log.info(
            "picker %s serving ext_proc (%s) on %s:%d, health on :%d, metrics on :%d, "
            "%d pool(s), %d endpoint(s)",
            __version__,
            "TLS" if tls is not None else "plaintext",
            cfg.grpc_host,
            self.grpc_port,
            self.health_port,
            self.metrics_port,
            len(self.datastore.pools),
            len(self.datastore.by_address),
        )

    def _limits(self) -> Limits:
        t = self.config.transport_limits
        max_message = self.config.max_body_bytes + (1 << 20)  # a body plus its envelope
        return Limits(
            max_concurrent_streams=t.max_concurrent_streams,
            max_header_block=t.max_header_bytes,
            max_message=max_message,
            max_buffered=4 * max_message,
            max_pending_stream=max(1 << 22, 2 * max_message),
            max_pending=4 * max(1 << 22, 2 * max_message),
            reset_rate=t.resets_per_second,
            reset_burst=t.resets_burst,
        )

    def _timeouts(self) -> Timeouts:
        t = self.config.transport_limits
        return Timeouts(t.handshake_timeout, t.idle_timeout, t.max_connections)

    async def _become_ready(self) -> None:
        if self.discovery is not None:
            await self.discovery.synced.wait()
            if self.scraper is not None:
                await self.scraper.start()
        if self.scraper is not None:
            await self.scraper.first_scrape_done.wait()
        if self.peers is not None:  # the peers' recent picks first (bounded wait)
            await self.peers.warmed.wait()
        if self.discovery is not None and not self.discovery.ready:
            return  # the pool went away meanwhile; ``_discovery_ready`` sets it when back
        self.health_status.set_ready(True)
        if self.grpcio is not None:
            await self.grpcio.sync_health()
        log.info("picker ready")

    async def drain(self, timeout: float) -> int:
        """Graceful shutdown, first half: report not ready, refuse new streams, let open
        ones finish for up to ``timeout`` s. Returns how many were still open."""
        log.info("draining: not ready, finishing open streams (up to %.0f s)", timeout)
        self._draining = True
        self.health_status.set_ready(False)
        if self._ready_task is not None:
            self._ready_task.cancel()
        if self.grpcio is not None:
            await self.grpcio.sync_health()
            await self.grpcio.stop(timeout)
            return 0
        if self.native is not None:
            return await self.native.drain(timeout)
        return 0

    async def stop(self, grace: float = 1.0) -> None:
        if self._ready_task is not None:
            self._ready_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ready_task
        if self.peer_discovery is not None:
            await self.peer_discovery.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.scraper is not None:
            await self.scraper.stop()
        if self.peers is not None:
            await self.peers.stop()
        await self.profile.stop()
        if self.tls is not None:
            await self.tls.stop()
        if self.grpcio is not None:
            await self.grpcio.stop(grace)
        if self.native is not None:
            self.native.close()
        if self.health_server is not None:
            self.health_server.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


def _configured_models(config: Config, datastore: Datastore) -> list[str]:
    """Model names the configuration names: their metric labels are never capped."""
    names = [m for pool in datastore.pools for m in pool.models | pool.adapters]
    names += list(config.criticality)
    for model, rule in config.model_rewrites.items():
        names += [model, *rule.targets]
    return names
