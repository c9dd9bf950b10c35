"""PickerServer in cluster mode, in process: the fake API server and simulated pods."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bench.sim.server import SimPodConfig, start_pods
from bench.stack.fakekube import FakeKube
from bench.stack.procs import free_port
from picker.config import load_config
from picker.requestcontrol.director import Rejected, Routed
from picker.scheduling.scorers.prefix import PrefixScorer
from picker.server import PickerServer
from picker.transport.health import NOT_SERVING, SERVING
from tests.unit.datalayer.discovery.conftest import until

NS = "llm"
APP = {"app": "vllm"}
BODY = b'{"model": "any-model", "prompt": "' + b"the same long prefix " * 40 + b'"}'


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fk = FakeKube()
    await fk.start()
    yield fk
    await fk.stop()


def make_server(kube: FakeKube, *, scrape: bool, **discovery: object) -> PickerServer:
    cfg = load_config(
        data={
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_port": -1,
            "discovery": {"api_server": kube.url, "pool_namespace": NS, **discovery},
            "scheduler": {"scorers": {"prefix": 1, "least_inflight": 1}},
        }
    )
    cfg.scrape.enabled = scrape
    return PickerServer(cfg)


async def test_ready_after_first_sync_and_routes_any_model(kube: FakeKube) -> None:
    srv = make_server(kube, scrape=False, pool_name="pool")
    await srv.start()
    try:
        assert srv.health_status.check("readiness") == NOT_SERVING
        assert isinstance(srv.director.decide("/v1/completions", BODY), Rejected)  # 503
        kube.add_pod(NS, "a", "10.0.0.1", APP)
        kube.set_pool(NS, "pool", APP, (8000,))
        await until(lambda: srv.health_status.check("readiness") == SERVING)
        routed = srv.director.decide("/v1/completions", BODY)
        assert isinstance(routed, Routed) and routed.destination == "10.0.0.1:8000"
        prefix = next(p for p in srv.profile.plugins if isinstance(p, PrefixScorer))
        assert prefix.index.blocks_on("10.0.0.1:8000") > 0
        # The pod goes: the prefix index forgets it; its request still finishes.
        kube.set_pod(NS, "a", ready=False)
        await until(lambda: not srv.datastore.by_address)
        assert prefix.index.blocks_on("10.0.0.1:8000") == 0
        srv.director.finish(routed, 200)
        assert routed.served is not None and routed.served.inflight == 0
        # The pool goes: not ready; it comes back: ready.
        kube.delete_pool(NS, "pool")
        await until(lambda: srv.health_status.check("readiness") == NOT_SERVING)
        kube.set_pool(NS, "pool", APP, (8000,))
        kube.set_pod(NS, "a", ready=True)
        await until(lambda: srv.health_status.check("readiness") == SERVING)
    finally:
        await srv.stop(0)


async def test_scrapers_follow_discovered_pods(kube: FakeKube) -> None:
    port = free_port()
    hosts = ["127.0.0.2", "127.0.0.3"]
    cluster = await start_pods(
        [SimPodConfig(host=h, port=port, time_scale=50.0, num_blocks=64) for h in hosts]
    )
    kube.add_pod(NS, "a", hosts[0], APP)
    srv = make_server(kube, scrape=True, endpoint_selector="app=vllm",
                      endpoint_target_ports=[port])  # fmt: skip
    await srv.start()
    try:
        await until(lambda: srv.health_status.check("readiness") == SERVING)
        scraper = srv.scraper
        assert scraper is not None
        a = srv.datastore.by_address[f"{hosts[0]}:{port}"]
        assert a.metrics.scraped_at > 0  # ready came after its first scrape
        kube.add_pod(NS, "b", hosts[1], APP)
        await until(lambda: f"{hosts[1]}:{port}" in srv.datastore.by_address)
        b = srv.datastore.by_address[f"{hosts[1]}:{port}"]
        await until(lambda: b.metrics.scraped_at > 0)  # its scraper started
        kube.delete_pod(NS, "a")
        await until(lambda: set(scraper._targets) == {b.address})  # a's scraper stopped
        scraped = a.metrics.scraped_at
        await until(lambda: b.metrics.scraped_at > scraped + 0.2)
        assert a.metrics.scraped_at == scraped and a.removed
    finally:
        await srv.stop(0)
        await cluster.stop()


def test_static_pools_and_discovery_checks() -> None:
    with pytest.raises(ValueError, match="either"):
        load_config(data={"discovery": {"pool_name": "p", "endpoint_selector": "a=b"}})
    with pytest.raises(ValueError, match="1 to 8"):
        load_config(data={"discovery": {"endpoint_selector": "a=b"}})
    with pytest.raises(ValueError, match="serves"):
        load_config(data={"models": {"*": ["1.2.3.4:80"]}, "discovery": {"pool_name": "p"}})
    cfg = load_config(
        data={"models": {"m": ["1.2.3.4:80"]},
              "discovery": {"endpoint_selector": "a=b", "endpoint_target_ports": "8000,8001"}}
    )  # fmt: skip
    ds = cfg.datastore()
    assert [p.name for p in ds.pools] == ["m", "endpoint-selector"]
    assert ds.pool_for("m") is ds.pools[0] and ds.pool_for("other") is ds.pools[1]
    assert cfg.discovery.endpoint_target_ports == [8000, 8001]
