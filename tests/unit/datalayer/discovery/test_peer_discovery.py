"""Replicas find each other through the API server (``peers.selector``): the peer
exchange follows picker's own pods as they come and go."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from bench.stack.fakekube import FakeKube
from bench.stack.procs import free_port
from picker.config import PeersConfig, load_config
from picker.datalayer.datastore import Datastore, Endpoint, Pool
from picker.datalayer.discovery.client import KubeClient
from picker.datalayer.discovery.kubeconfig import KubeConfig
from picker.datalayer.discovery.peers import PeerDiscovery
from picker.datalayer.discovery.selector import parse
from picker.datalayer.peers import PeerExchange
from picker.observability import Metrics
from picker.scheduling.scorers.prefix import PrefixScorer, block_hashes
from tests.unit.datalayer.discovery.conftest import NS, until

PICKER = {"app.kubernetes.io/name": "picker"}
SELECTOR = "app.kubernetes.io/name=picker"


def discovery(kube: FakeKube, own: str, seen: list[tuple[str, ...]]) -> PeerDiscovery:
    def on_change(endpoints: Sequence[str]) -> None:
        seen.append(tuple(endpoints))

    return PeerDiscovery(
        KubeClient(KubeConfig(kube.url)), NS, parse(SELECTOR), 5570, on_change, own_name=own
    )


async def test_peers_are_the_selected_pods_with_an_ip_but_this_one(kube: FakeKube) -> None:
    kube.add_pod(NS, "picker-a", "10.0.0.1", PICKER)  # this replica
    kube.add_pod(NS, "picker-b", "10.0.0.2", PICKER)
    kube.add_pod(NS, "picker-c", "10.0.0.3", PICKER, ready=False)  # starting: a peer
    kube.add_pod(NS, "vllm-0", "10.0.0.9", {"app": "vllm"})
    seen: list[tuple[str, ...]] = []
    d = discovery(kube, "picker-a", seen)
    await d.start()
    try:
        await until(lambda: bool(seen))
        assert seen[-1] == ("tcp://10.0.0.2:5570", "tcp://10.0.0.3:5570")
        lists = [q for p, q in kube.requests if p.endswith("/pods") and "watch" not in q]
        assert lists[0]["labelSelector"] == SELECTOR
        kube.set_pod(NS, "picker-b", deleting=True)  # terminating: no longer a peer
        await until(lambda: seen[-1] == ("tcp://10.0.0.3:5570",))
        kube.add_pod(NS, "picker-d", "fd00::4", PICKER)
        await until(lambda: seen[-1] == ("tcp://10.0.0.3:5570", "tcp://[fd00::4]:5570"))
        kube.delete_pod(NS, "picker-c")
        kube.delete_pod(NS, "picker-d")
        await until(lambda: seen[-1] == ())
        n = len(seen)
        kube.set_pod(NS, "picker-a", ready=False)  # this pod's own changes: no news
        await asyncio.sleep(0.1)
        assert len(seen) == n
    finally:
        await d.stop()
        await d.reflector.client.close()


class Replica:
    """A replica's exchange whose peers come from the API server."""

    def __init__(self, kube: FakeKube, name: str, ip: str, port: int) -> None:
        self.pods = [Endpoint(a) for a in ("10.1.0.1:8000", "10.1.0.2:8000")]
        self.ds = Datastore([Pool("p", self.pods)])
        self.prefix = PrefixScorer()
        config = PeersConfig(
            publish=f"tcp://{ip}:{port}", selector=SELECTOR, id=name, state_interval=0.05
        )
        config.validate()
        self.ex = PeerExchange(
            config, self.ds, Metrics(), layout=5, on_pick=self.prefix.on_peer_pick
        )
        self.discovery = PeerDiscovery(
            KubeClient(KubeConfig(kube.url)),
            NS,
            parse(SELECTOR),
            port,
            self.ex.set_endpoints,
            own_name=name,
        )

    async def start(self) -> None:
        await self.ex.start()
        await self.discovery.start()

    async def stop(self) -> None:
        await self.discovery.stop()
        await self.discovery.reflector.client.close()
        await self.ex.stop()


async def test_replicas_scale_out_and_in_through_the_api_server(kube: FakeKube) -> None:
    port = free_port()
    kube.add_pod(NS, "picker-a", "127.0.0.2", PICKER)
    a = Replica(kube, "picker-a", "127.0.0.2", port)
    await a.start()
    try:
        await asyncio.wait_for(a.ex.warmed.wait(), 5.0)  # alone: ready once listed
        hashes = block_hashes("a shared system prompt " * 40, 128)
        a.ex.picked(a.pods[1], hashes, 100)
        # Scale out: a second pod appears; each finds the other, the new one starts from
        # the first one's replay (it knows where the prompt went before routing).
        kube.add_pod(NS, "picker-b", "127.0.0.3", PICKER, ready=False)
        b = Replica(kube, "picker-b", "127.0.0.3", port)
        await b.start()
        try:
            await asyncio.wait_for(b.ex.warmed.wait(), 5.0)
            assert b.prefix.index.match(hashes, ["10.1.0.2:8000"]) == {"10.1.0.2:8000": len(hashes)}
            await until(lambda: a.ex.endpoints == {f"tcp://127.0.0.3:{port}"})
            await until(lambda: len(a.ex.table.peers) == 1 and len(b.ex.table.peers) == 1)
            b.ex.picked(b.pods[0], [7, 8, 9], 50)  # live, to a
            await until(lambda: a.pods[0].inflight == 1)
            # Scale in: b's pod is deleted; a stops listening to it and drops its load.
            kube.set_pod(NS, "picker-b", deleting=True)
            await until(lambda: a.ex.endpoints == set())
        finally:
            await b.stop()
        await until(lambda: a.pods[0].inflight == 0)
    finally:
        await a.stop()


def test_selector_config_is_checked() -> None:
    cfg = load_config(data={"peers": {"publish": "tcp://0.0.0.0:5570", "selector": SELECTOR}})
    assert cfg.peers.enabled and cfg.peers.port == 5570
    for bad in (
        {"publish": "tcp://0.0.0.0:5570", "selector": "a in (b"},  # not a selector
        {"publish": "", "selector": SELECTOR},  # no port to dial the peers on
        {"publish": "tcp://0.0.0.0:5570", "selector": SELECTOR, "endpoints": ["tcp://x:1"]},
    ):
        with pytest.raises(ValueError):
            load_config(data={"peers": bad})
