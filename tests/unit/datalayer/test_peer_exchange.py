"""Replicas exchanging pick records over real ZMQ sockets on loopback: picks reach the
peers' prefix index and loads, a late replica learns the recent picks from a replay, a
dead peer's load expires, hostile input is dropped and counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import zmq
import zmq.asyncio

from picker.config import PeersConfig
from picker.datalayer import peer_wire as wire
from picker.datalayer.datastore import Datastore, Endpoint, Pool
from picker.datalayer.peers import PeerExchange
from picker.observability import Metrics
from picker.scheduling.scorers.prefix import PrefixScorer, block_hashes

PODS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]


def free_endpoint() -> str:
    from bench.stack.procs import free_port

    return f"tcp://127.0.0.1:{free_port()}"


class Replica:
    """One replica's datastore, prefix plugin and exchange (no scheduler around them)."""

    def __init__(self, publish: str, endpoints: list[str], **cfg: float) -> None:
        self.pods = [Endpoint(a) for a in PODS]
        self.ds = Datastore([Pool("p", self.pods)])
        self.metrics = Metrics()
        self.prefix = PrefixScorer()
        config = PeersConfig(
            publish=publish,
            endpoints=endpoints,
            id=publish,  # one process: the default (hostname:pid) would be everyone's
            state_interval=cfg.get("state_interval", 0.05),
            peer_timeout=cfg.get("peer_timeout", 0.5),
            warmup=cfg.get("warmup", 2.0),
        )
        config.validate()
        self.ex = PeerExchange(
            config,
            self.ds,
            self.metrics,
            layout=5,
            on_pick=self.prefix.on_peer_pick,
        )

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def matched(self, hashes: list[int]) -> dict[str, int]:
        return self.prefix.index.match(hashes, PODS)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    """Waits for ``cond``; returns how long it took."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


@asynccontextmanager
async def running(*replicas: Replica) -> AsyncIterator[None]:
    for r in replicas:
        await r.ex.start()
    try:
        yield
    finally:
        for r in replicas:
            await r.ex.stop()


def prompt(i: int) -> list[int]:
    return block_hashes(f"system prompt {i} " * 40, 128)


async def test_picks_reach_the_peers_index_and_load_and_dones_take_it_off() -> None:
    ea, eb = free_endpoint(), free_endpoint()
    a, b = Replica(ea, [ea, eb]), Replica(eb, [ea, eb])  # each lists itself too
    async with running(a, b):
        await until(lambda: len(a.ex.table.peers) == 1 and len(b.ex.table.peers) == 1)
        h = prompt(1)
        a.ex.picked(a.pods[1], h, 120)
        await until(lambda: b.pods[1].inflight == 1)
        assert b.matched(h) == {PODS[1]: len(h)}
        assert (b.pods[1].sent_since_scrape, b.pods[1].inflight_tokens) == (1, 120)
        assert a.pods[1].inflight == 0  # a's own accounting is not the exchange's business
        a.ex.done(a.pods[1], 120)
        await until(lambda: b.pods[1].inflight == 0)
        assert b.pods[1].inflight_tokens == 0
        assert a.sample("picker_peer_records_total", direction="sent", kind="pick") == 1
        assert b.sample("picker_peer_records_total", direction="received", kind="done") == 1
        assert b.sample("picker_peers_connected") == 1


async def test_a_burst_of_picks_goes_out_as_one_message() -> None:
    ea = free_endpoint()
    a = Replica(ea, [])
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, wire.LIVE_TOPIC)
    try:
        async with running(a):
            sub.connect(ea)
            await asyncio.sleep(0.2)  # the subscription reaches the publisher
            for i in range(50):  # one event-loop turn: one batch
                a.ex.picked(a.pods[i % 3], prompt(i), 10)
            batches: list[wire.Batch] = []
            while len(batches) < 3:
                batch = wire.decode((await sub.recv_multipart())[1])
                if batch.kind == wire.LIVE:
                    batches.append(batch)
                    if sum(len(b.records) for b in batches) == 50:
                        break
            assert [len(b.records) for b in batches] == [50]
    finally:
        sub.close(linger=0)
        ctx.term()


async def test_a_late_replica_learns_recent_picks_from_the_replay() -> None:
    ea, eb, ec = free_endpoint(), free_endpoint(), free_endpoint()
    a, b = Replica(ea, [ea, eb, ec]), Replica(eb, [ea, eb, ec])
    async with running(a, b):
        await until(lambda: len(a.ex.table.peers) == 1)
        for i in range(20):
            a.ex.picked(a.pods[i % 3], prompt(i), 10)
            b.ex.picked(b.pods[(i + 1) % 3], prompt(100 + i), 10)
            a.ex.done(a.pods[i % 3], 10)
        await asyncio.sleep(0.05)  # sent live, before c subscribes
        c = Replica(ec, [ea, eb, ec])
        t0 = time.monotonic()
        async with running(c):
            await asyncio.wait_for(c.ex.warmed.wait(), 5.0)
            took = time.monotonic() - t0
            for i in range(20):
                assert c.matched(prompt(i)) == {PODS[i % 3]: len(prompt(i))}
                assert c.matched(prompt(100 + i)) == {PODS[(i + 1) % 3]: len(prompt(100 + i))}
            assert sum(p.inflight for p in c.pods) == 0  # a replay is no load
            assert c.sample("picker_peer_records_total", direction="received", kind="replay") == 40
        # Every endpoint replayed (c's own too): ready long before the 2 s warm-up cap.
        assert took < 1.5


async def test_the_replay_is_bounded() -> None:
    ea, eb = free_endpoint(), free_endpoint()
    a = Replica(ea, [])
    a.ex.config.replay_bytes = 2000
    async with running(a):
        for i in range(100):
            a.ex.picked(a.pods[0], prompt(i), 10)
        assert a.ex._ring_bytes <= 2000
        await asyncio.sleep(0.05)  # sent live, to nobody yet
        b = Replica(eb, [ea])
        async with running(b):
            await asyncio.wait_for(b.ex.warmed.wait(), 5.0)
            replayed = b.sample("picker_peer_records_total", direction="received", kind="replay")
            assert 0 < replayed < 100
            assert b.matched(prompt(99))  # the newest are the ones kept
            assert not b.matched(prompt(0))


async def test_a_dead_peers_load_expires() -> None:
    ea, eb = free_endpoint(), free_endpoint()
    a, b = Replica(ea, [eb]), Replica(eb, [ea], peer_timeout=0.3)
    await b.ex.start()
    try:
        async with running(a):
            await until(lambda: len(b.ex.table.peers) == 1)
            a.ex.picked(a.pods[0], [], 5)
            a.ex.picked(a.pods[0], [], 5)
            await until(lambda: b.pods[0].inflight == 2)
            a.pods[0].inflight = 2  # a's accounting: its state messages keep the count
            await asyncio.sleep(0.4)
            assert b.pods[0].inflight == 2
        took = await until(lambda: b.pods[0].inflight == 0)  # a is gone: silent
        assert took < 1.0 and b.ex.table.peers == {}
    finally:
        await b.ex.stop()


async def test_hostile_messages_are_dropped_and_counted() -> None:
    ctx = zmq.asyncio.Context()
    pubs = [ctx.socket(zmq.PUB), ctx.socket(zmq.PUB)]
    ports = []
    for pub in pubs:
        pub.setsockopt(zmq.LINGER, 0)
        ports.append(pub.bind_to_random_port("tcp://127.0.0.1"))
    b = Replica(free_endpoint(), [f"tcp://127.0.0.1:{p}" for p in ports])
    b.ex.config.max_message_bytes = 1 << 17
    evil, other = pubs
    try:
        async with running(b):
            await asyncio.sleep(0.2)
            good = wire.header(wire.LIVE, 5, 9, 1, b"evil") + wire.pick(PODS[0].encode(), 1, [3])
            await evil.send_multipart([b"P", b"\x01" * 40])
            await evil.send_multipart([b"P"])  # one frame
            await evil.send_multipart([b"P", good[:-4]])
            await evil.send_multipart([b"P", b"short"])
            await evil.send_multipart([b"P", good])
            await until(lambda: b.pods[0].inflight == 1)
            assert b.sample("picker_peer_dropped_total", reason="malformed") == 3
            assert b.sample("picker_peer_dropped_total", reason="short") == 1
            assert len(b.ex.table.peers) == 1 and b.matched([3]) == {PODS[0]: 1}
            # Over max_message_bytes: ZMQ closes that connection before anything is kept.
            await evil.send_multipart([b"P", b"\x00" * (1 << 18)])
            await evil.send_multipart([b"P", good.replace(b"evil", b"evi2")])
            await asyncio.sleep(0.3)
            assert len(b.ex.table.peers) == 1
            # ... and the other peers are still heard.
            await other.send_multipart([b"P", good.replace(b"evil", b"good")[:-32]])
            fine = wire.header(wire.LIVE, 5, 10, 1, b"ok") + wire.pick(PODS[1].encode(), 1, [])
            await other.send_multipart([b"P", fine])
            await until(lambda: b.pods[1].inflight == 1)
            assert b.sample("picker_peer_dropped_total", reason="malformed") == 4
    finally:
        for pub in pubs:
            pub.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("bad", ["localhost:5570", "tcp://", "http://x:1"])
def test_endpoints_must_be_zmq_addresses(bad: str) -> None:
    with pytest.raises(ValueError, match="ZMQ endpoint"):
        PeersConfig(endpoints=[bad]).validate()
